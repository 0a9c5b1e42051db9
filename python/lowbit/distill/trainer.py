"""python/lowbit/distill/trainer.py: the distillation trainer — prepare (a frozen teacher copy
and a quantize_'d student, optionally clip-calibrated), DistillTrainer (gradient accumulation,
autocast, checkpoint/resume, progress bar, CSV log; one step at a time for a user's own loop)
and the fused LM head (last hidden states + head weights instead of logits)."""
import copy
import csv
import numbers
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kl_loss import fused_linear_kl_loss, kl_div_loss
from ..qat import QATConfig, QATLinear, calibrate_clip_, clip_parameters, quantize_
from .batches import batch_ids, model_inputs, model_logits, next_token_labels
from .evaluate import estimate_gamma_from, perplexity
from .plot import plot_history
from .schedules import make_scheduler

KINDS = ("forward", "reverse", "cakld", "jsd")


def make_teacher(model):
    """A frozen deep copy (no shared parameters) in eval mode."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def prepare(model, config, calibration_batches=None, calibrate_tokens=4096, progress=True,
            **calibrate_kwargs):
    """Returns (student, teacher): the teacher is a frozen copy of ``model`` taken first; the
    student is ``model`` itself with quantize_(config) applied and, when calibration batches are
    given, BitDistiller's asymmetric clipping initialisation (calibrate_clip_; extra keyword
    arguments such as n_grid / max_shrink go to it)."""
    if not isinstance(config, QATConfig):
        raise TypeError(f"config: expected a lowbit.QATConfig, got {type(config).__name__}")
    teacher = make_teacher(model)
    student = quantize_(model, config)
    if calibration_batches is not None:
        calibrate_clip_(student, [model_inputs(b) for b in calibration_batches],
                        max_tokens=calibrate_tokens, progress=progress, **calibrate_kwargs)
    return student, teacher


def _body_and_head(model, role):
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        raise ValueError(f"fused_head: the {role} must be a Hugging Face-style causal LM with "
                         f"base_model and get_output_embeddings() (got {type(model).__name__}); "
                         "use fused_head=False")
    if not isinstance(head, nn.Linear):
        raise ValueError(f"fused_head: the {role}'s output embedding is a "
                         f"{type(head).__name__}, not an nn.Linear / QATLinear")
    return body, head


def _head_weight(head):
    """(weight, bias) the head applies: a QATLinear's fake-quantized weight, else its own."""
    w = head.quantized_weight() if isinstance(head, QATLinear) else head.weight
    return w, head.bias


def _hidden_and_head(model, batch, role):
    body, head = _body_and_head(model, role)
    out = body(**model_inputs(batch))
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    w, b = _head_weight(head)
    return h, w, b


@torch.no_grad()
def _check_head_matches(model, batch, role):
    """Once per model: its logits must be head(body(x)) — models that rescale or soft-cap their
    logits cannot use the fused head (the loss would be silently wrong)."""
    inp = {k: v[:1, :8] if isinstance(v, torch.Tensor) and v.dim() == 2 else v
           for k, v in model_inputs(batch).items()}
    was = model.training
    model.eval()
    try:
        ref = model_logits(model, inp).float()
        h, w, b = _hidden_and_head(model, inp, role)
        got = F.linear(h, w, b).float()
    finally:
        model.train(was)
    scale = ref.abs().amax().clamp_min(1.0)
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-2, atol=1e-3 * scale):
        raise ValueError(f"fused_head: the {role}'s logits are not lm_head(last hidden state) "
                         f"({type(model).__name__} transforms them, e.g. scaling or soft-capping)"
                         "; use fused_head=False")


def _default_optimizer(model, lr, clip_lr=None):
    """AdamW(lr, weight_decay=0) over the trainable parameters, torch's fused kernel where it
    has one for every parameter's device and dtype (on CPU 3x faster than the default
    for-loop form for SmolLM2's 135M parameters; the same update). Learned clipping logits
    (QATConfig(learn="clip")) form a second group at ``clip_lr``: they are logits of factors
    in (0, 1], which an AdamW step of a weight's lr (~1e-5 per step) would hardly move."""
    clip = {id(p) for p in clip_parameters(model)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in clip]}]
    if clip:
        groups.append({"params": [p for p in params if id(p) in clip],
                       "lr": lr if clip_lr is None else clip_lr})
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        ok = set(_get_fused_kernels_supported_devices())
    except ImportError:
        ok = set()
    fused = bool(params) and all(p.device.type in ok and p.is_floating_point() for p in params)
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, fused=fused or None)


class DistillTrainer:
    """Trains ``student`` to match ``teacher`` with lowbit's distillation losses.

    kind: "cakld" (default), "forward", "reverse" or "jsd"; gamma: a float in [0, 1] or "auto"
    (estimated from the teacher on the first batches given to fit, or set ``trainer.gamma``).
    Batches: token-id tensors or dicts with input_ids and optionally attention_mask and labels
    (e.g. generate_data's); padded or ignore_index positions contribute nothing, to the loss or
    to gamma. fused_head: compute the loss from the last hidden states and the LM heads
    (fused_linear_kl_loss) instead of materialising both B x T x V logits — for Hugging Face
    causal LMs (tied or untied heads; a QATLinear head is used fake-quantized; the teacher's own
    head, which may differ). grad_accum: micro-batches per optimizer step. autocast: None (bf16
    on CUDA, off on CPU), True or False. optimizer: any torch optimizer over the student's
    trainable parameters (default AdamW(lr, weight_decay=0), fused where torch has the kernel;
    learned clipping logits of QATConfig(learn="clip") at ``clip_lr``, default 5e-3).
    scheduler: "constant" (default), "cosine" (to 0 at ``total_steps``, which defaults to
    fit's ``steps``) or any torch LR scheduler over ``optimizer``; warmup_steps: linear warmup
    of the named schedules. The scheduler steps once per optimizer step; its state is
    checkpointed. cache_teacher: keep the teacher's output of every batch object seen (last
    hidden states with fused_head, B x T x H; else the logits, B x T x V) and reuse it when the
    same batch comes again (epochs over a fixed list): the frozen teacher's forward then runs
    once per batch."""

    def __init__(self, student, teacher, lr=2e-5, kind="cakld", gamma="auto", beta=0.5,
                 temperature=1.0, grad_accum=1, optimizer=None, autocast=None,
                 max_grad_norm=1.0, ignore_index=-100, fused_head=False, scheduler="constant",
                 warmup_steps=0, total_steps=None, cache_teacher=False, clip_lr=5e-3):
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {list(KINDS)}, got {kind!r}")
        if isinstance(grad_accum, bool) or not isinstance(grad_accum, numbers.Integral) or \
                grad_accum < 1:
            raise ValueError(f"grad_accum: must be an int >= 1, got {grad_accum!r}")
        if not (gamma == "auto" or (isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
                                    and 0 <= gamma <= 1)):
            raise ValueError(f"gamma: must be 'auto' or in [0, 1], got {gamma!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) or \
                warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be an int >= 0, got {warmup_steps!r}")
        if total_steps is not None and (isinstance(total_steps, bool) or
                                        not isinstance(total_steps, numbers.Integral) or
                                        total_steps < 1):
            raise ValueError(f"total_steps: must be a positive int or None, got {total_steps!r}")
        self.student, self.teacher = student, teacher
        self.kind, self.gamma, self.beta, self.temperature = kind, gamma, beta, temperature
        self.grad_accum, self.max_grad_norm, self.ignore_index = grad_accum, max_grad_norm, ignore_index
        self.fused_head = bool(fused_head)
        if self.fused_head:
            _body_and_head(student, "student")
            _body_and_head(teacher, "teacher")
        self._head_checked = False
        self.cache_teacher = bool(cache_teacher)
        self._teacher_cache = {}
        if not (isinstance(clip_lr, (int, float)) and not isinstance(clip_lr, bool)
                and clip_lr >= 0):
            raise ValueError(f"clip_lr: must be a number >= 0, got {clip_lr!r}")
        self.optimizer = optimizer or _default_optimizer(student, lr, clip_lr)
        if isinstance(scheduler, str):
            if scheduler not in ("constant", "cosine"):
                raise ValueError(f"scheduler: must be 'constant', 'cosine' or a torch LR "
                                 f"scheduler, got {scheduler!r}")
            self._sched_name, self.scheduler = scheduler, None
        elif scheduler is None or hasattr(scheduler, "step") and hasattr(scheduler, "state_dict"):
            if scheduler is not None and getattr(scheduler, "optimizer", self.optimizer) \
                    is not self.optimizer:
                raise ValueError("scheduler: must schedule the trainer's optimizer")
            self._sched_name, self.scheduler = None, scheduler
        else:
            raise TypeError(f"scheduler: expected 'constant', 'cosine' or a torch LR scheduler, "
                            f"got {type(scheduler).__name__}")
        self.warmup_steps, self.total_steps = int(warmup_steps), total_steps
        dev = next(student.parameters()).device
        self.autocast = (dev.type == "cuda") if autocast is None else autocast
        self.device_type = dev.type
        self.step_count = 0
        self._micro = 0
        self.last_lr = None  # the learning rate of the last optimizer step
        self.history = []

    def _ensure_scheduler(self):
        if self.scheduler is None and self._sched_name is not None:
            if self._sched_name == "cosine" and self.total_steps is None:
                raise ValueError("total_steps: required for scheduler='cosine' (fit sets it to "
                                 "its steps; pass it when driving step() yourself)")
            self.scheduler = make_scheduler(self.optimizer, self._sched_name,
                                            self.total_steps or 1, self.warmup_steps)
        return self.scheduler

    def loss(self, batch):
        """The distillation loss of one batch (student graph kept for backward)."""
        labels = next_token_labels(batch, self.ignore_index)
        if self.gamma == "auto" and self.kind == "cakld":
            self.gamma = estimate_gamma_from(self.teacher, [batch], ignore_index=self.ignore_index)
        gamma = self.gamma if self.kind == "cakld" else None
        kw = dict(kind=self.kind, gamma=gamma, beta=self.beta, temperature=self.temperature,
                  labels=labels, ignore_index=self.ignore_index, reduction="mean")
        if self.fused_head and not self._head_checked:
            _check_head_matches(self.student, batch, "student")
            _check_head_matches(self.teacher, batch, "teacher")
            self._head_checked = True
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            t = self._teacher_out(batch)
            if self.fused_head:
                th, tw, tb = t
                sh, sw, sb = _hidden_and_head(self.student, batch, "student")
                return fused_linear_kl_loss(sh[:, :-1], sw, teacher_hidden=th[:, :-1],
                                            teacher_weight=tw, student_bias=sb,
                                            teacher_bias=tb, **kw)
            s = model_logits(self.student, batch)[:, :-1]
        return kl_div_loss(s, t[:, :-1], **kw)

    @torch.no_grad()
    def _teacher_out(self, batch):
        """The teacher's (last hidden states, head weight, head bias) with fused_head, else its
        logits. With cache_teacher the hidden states / logits are kept per batch object and
        reused while its tensors are unchanged (same objects, same version counters): the
        frozen teacher gives the same output for the same batch."""
        key = None
        if self.cache_teacher:
            ids = batch_ids(batch)
            mask = batch.get("attention_mask") if isinstance(batch, dict) else None
            key = (ids, ids._version, mask, None if mask is None else mask._version)
            hit = self._teacher_cache.get(id(ids))
            if hit is not None and all(a is b if isinstance(a, torch.Tensor) or a is None
                                       else a == b for a, b in zip(hit[0], key)):
                if not self.fused_head:
                    return hit[1]
                return (hit[1],) + _head_weight(_body_and_head(self.teacher, "teacher")[1])
        if self.fused_head:
            out = _hidden_and_head(self.teacher, batch, "teacher")
            keep = out[0]
        else:
            out = keep = model_logits(self.teacher, batch)
        if key is not None:
            self._teacher_cache[id(key[0])] = (key, keep)
        return out

    def step(self, batch):
        """One micro-batch: loss, backward; an optimizer step (and a scheduler step) every
        grad_accum micro-batches. Returns the loss (float)."""
        sched = self._ensure_scheduler()
        self.student.train()
        loss = self.loss(batch)
        (loss / self.grad_accum).backward()
        self._micro += 1
        if self._micro % self.grad_accum == 0:
            if self.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.max_grad_norm)
            self.last_lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
            self.step_count += 1
        return loss.item()

    # ---- checkpoint / resume ----
    def save_checkpoint(self, path):
        sched = self.scheduler
        tmp = path + ".tmp"
        torch.save({"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": None if sched is None else sched.state_dict(),
                    "step": self.step_count, "micro": self._micro, "gamma": self.gamma,
                    "history": self.history, "rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, path)  # an interrupted save never leaves half a checkpoint

    def load_checkpoint(self, path):
        ck = torch.load(path, map_location="cpu", weights_only=False)
        self.student.load_state_dict(ck["student"])
        # the scheduler first: building one sets the optimizer's lr, which the optimizer's
        # state (saved mid-schedule) must then overwrite
        sched = self._ensure_scheduler()
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scheduler") is not None and sched is not None:
            sched.load_state_dict(ck["scheduler"])
        self.step_count, self._micro, self.gamma = ck["step"], ck["micro"], ck["gamma"]
        self.history = ck["history"]
        torch.set_rng_state(ck["rng"])

    def fit(self, batches, steps, eval_batches=None, eval_every=None, out_dir=None,
            resume=True, progress=True, log_every=1):
        """Runs until ``steps`` optimizer steps are done, cycling over ``batches`` (a list or a
        re-iterable). With out_dir: checkpoint.pt (resumed from when present and resume=True),
        log.csv (with the learning rate of every step) and curves.png. Returns the history
        (list of dicts)."""
        if self.total_steps is None:
            self.total_steps = steps
        ckpt = os.path.join(out_dir, "checkpoint.pt") if out_dir else None
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            if resume and os.path.exists(ckpt):
                self.load_checkpoint(ckpt)
        batches = list(batches)
        if not batches:
            raise ValueError("batches: no training batches")
        if self.gamma == "auto" and self.kind == "cakld":
            self.gamma = estimate_gamma_from(self.teacher, batches[:4],
                                             ignore_index=self.ignore_index)
        eval_every = eval_every or max(1, steps // 4)
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm
                bar = tqdm(total=steps, initial=self.step_count, desc=f"distill {self.kind}",
                           unit="step")
            except ImportError:
                bar = None
        t0 = time.time()
        i = self._micro
        while self.step_count < steps:
            before = self.step_count
            loss = self.step(batches[i % len(batches)])
            i += 1
            if self.step_count == before:
                continue
            rec = {"step": self.step_count, "loss": loss, "time_s": round(time.time() - t0, 2),
                   "lr": self.last_lr, "eval_ppl": ""}
            if eval_batches is not None and (self.step_count % eval_every == 0
                                             or self.step_count == steps):
                rec["eval_ppl"] = perplexity(self.student, eval_batches, self.ignore_index)
            self.history.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if out_dir and (self.step_count % eval_every == 0 or self.step_count == steps):
                self.save_checkpoint(ckpt)
                self.write_log(out_dir, plot=False)  # the plot once, at the end
        if bar is not None:
            bar.close()
        if out_dir:
            self.write_log(out_dir)
        return self.history

    def write_log(self, out_dir, plot=True):
        """log.csv and (with plot) curves.png (loss and held-out perplexity against steps)."""
        path = os.path.join(out_dir, "log.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "eval_ppl", "lr", "time_s"])
            w.writeheader()
            for r in self.history:
                w.writerow({k: r.get(k, "") for k in w.fieldnames})
        if plot:
            plot_history(self.history, os.path.join(out_dir, "curves.png"))
