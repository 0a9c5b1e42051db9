"""python/lowbit/distill.py: self-distillation QAT (BitDistiller's method) as a library — the
teacher's own training text (generate_data: batched sampling with the KV cache, cached to
safetensors), a frozen full-precision teacher copy, a quantize_'d student, the confidence-aware
KL loss (optionally through the fused LM head, never materialising the logits), LR schedules and
a small trainer (gradient accumulation, autocast, checkpoint/resume, progress bar, CSV log, PNG
plot) that a user's own loop can also drive one step at a time.

    # 1. all in one
    train = lowbit.distill.generate_data(model, tok, text_or_prompts, out="runs/gen.safetensors")
    student, teacher = lowbit.distill.prepare(model, lowbit.QATConfig(spec))
    trainer = lowbit.distill.DistillTrainer(student, teacher, lr=2e-5, kind="cakld", gamma="auto",
                                            fused_head=True, scheduler="cosine", warmup_steps=5)
    trainer.fit(train, steps=200, eval_batches=eval_batches, out_dir="runs/int2")

    # 2. your own loop
    for batch in loader:
        loss = trainer.step(batch)          # forward both models, loss, backward, optimizer
"""
import copy
import csv
import hashlib
import json
import math
import numbers
import os
import random
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .qat import QATConfig, calibrate_clip_, quantize_

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
        calibrate_clip_(student, [_inputs(b) for b in calibration_batches],
                        max_tokens=calibrate_tokens, progress=progress, **calibrate_kwargs)
    return student, teacher


# ---------------------------------------------------------------------------------------------
# batches: a tensor of token ids, or a dict with input_ids (+ attention_mask, labels)
# ---------------------------------------------------------------------------------------------
def _ids(batch):
    """The batch's token ids, the batch checked first: a 2-D integer tensor, or a dict with
    one under "input_ids" (and attention_mask / labels of the same shape when given)."""
    if isinstance(batch, dict):
        if "input_ids" not in batch:
            raise ValueError(f"batch: a dict batch needs 'input_ids' (got keys {sorted(batch)})")
        ids, what = batch["input_ids"], "batch['input_ids']"
    elif isinstance(batch, torch.Tensor):
        ids, what = batch, "batch"
    else:
        raise TypeError(f"batch: expected a tensor of token ids or a dict, got "
                        f"{type(batch).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or \
            ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        got = (f"a {ids.dim()}-D {ids.dtype} tensor" if isinstance(ids, torch.Tensor)
               else type(ids).__name__)
        raise ValueError(f"{what}: expected a 2-D integer tensor of token ids (batch, "
                         f"sequence), got {got}")
    if isinstance(batch, dict):
        for key in ("attention_mask", "labels"):
            v = batch.get(key)
            if v is not None and (not isinstance(v, torch.Tensor) or v.shape != ids.shape):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"batch: {key} {got} does not match input_ids "
                                 f"{tuple(ids.shape)}")
    return ids


def _inputs(batch):
    """The model's keyword inputs of a batch (labels are not passed: the loss is ours)."""
    ids = _ids(batch)
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k != "labels"}
    return {"input_ids": ids}


def _labels(batch, ignore_index):
    """Next-token labels aligned with logits[:, :-1]: batch["labels"][:, 1:] when given, else the
    ids shifted. A position is ignored when its target is ignore_index or padding, or when the
    position itself is padding (attention_mask 0), so padded rows contribute nothing."""
    ids = _ids(batch)
    if isinstance(batch, dict) and batch.get("labels") is not None:
        labels = batch["labels"][:, 1:].clone()
    else:
        labels = ids[:, 1:].clone()
    if isinstance(batch, dict) and batch.get("attention_mask") is not None:
        m = batch["attention_mask"]
        labels[(m[:, 1:] == 0) | (m[:, :-1] == 0)] = ignore_index
    return labels


def _logits(model, batch):
    out = model(**_inputs(batch))
    return out.logits if hasattr(out, "logits") else out


# ---------------------------------------------------------------------------------------------
# the teacher's own data (BitDistiller: sampled at temperature 0.7 from text prefixes)
# ---------------------------------------------------------------------------------------------
def prompts_from_text(text, n=None, prompt_chars=128, min_chars=512, seed=0):
    """BitDistiller's WikiText-style prompts: the first ``prompt_chars`` characters of every
    paragraph (blank-line separated; lines when there are no blank lines) longer than
    ``min_chars``; with ``n``, a seeded random choice of n of them."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    for name, v in (("prompt_chars", prompt_chars), ("min_chars", min_chars)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name}: must be a positive int, got {v!r}")
    paras = re.split(r"\n\s*\n", text) if re.search(r"\n\s*\n", text) else text.split("\n")
    paras = [p.strip() for p in paras]
    long = [p[:prompt_chars] for p in paras if len(p) > min_chars]
    if not long:
        raise ValueError(f"text: no paragraph longer than min_chars={min_chars} characters")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n: must be a positive int or None, got {n!r}")
        if n < len(long):
            long = random.Random(seed).sample(long, n)
    return long


class _Progress:
    """A transformers LogitsProcessor that only advances a progress bar once per new token."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids, scores):
        self.bar.update(1)
        return scores


def _digest_model(model):
    """A fingerprint of the model's weights and buffers (names, shapes, dtypes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in list(model.state_dict().items()):
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _model_identity(model):
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        cfg = json.loads(cfg.to_json_string(use_diff=False))
        cfg.pop("transformers_version", None)
    return {"class": type(model).__name__, "config": cfg, "weights": _digest_model(model)}


def _eos_ids(model, tokenizer):
    ids = set()
    gc = getattr(model, "generation_config", None)
    for v in (getattr(gc, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return sorted(ids)


def _check_generate_args(max_new_tokens, temperature, top_p, batch_size, seed, train_batch_size):
    def pos_int(name, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name}: must be a positive int, got {v!r}")

    pos_int("max_new_tokens", max_new_tokens)
    pos_int("batch_size", batch_size)
    if train_batch_size is not None:
        pos_int("train_batch_size", train_batch_size)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
            not (0 < float(temperature) < math.inf):
        raise ValueError(f"temperature: must be a finite float > 0, got {temperature!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                              or not (0 < float(top_p) <= 1)):
        raise ValueError(f"top_p: must be None or a float in (0, 1], got {top_p!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")


def pad_batches(sequences, batch_size, pad_id, ignore_index=-100):
    """Training batches from lists of token ids: ``batch_size`` sequences per batch (in order),
    right-padded to the longest of the batch; dicts of input_ids, attention_mask and labels
    (input_ids with padding set to ignore_index)."""
    out = []
    for s in range(0, len(sequences), batch_size):
        chunk = sequences[s:s + batch_size]
        L = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
            mask[i, :len(x)] = 1
        labels = ids.masked_fill(mask == 0, ignore_index)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _load_cache(path, digest):
    from safetensors import safe_open

    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("lowbit_generate_digest") != digest:
                return None
            ids, lengths = f.get_tensor("input_ids"), f.get_tensor("lengths")
    except Exception:  # not a readable cache: regenerate over it
        return None
    return [ids[i, :int(n)].tolist() for i, n in enumerate(lengths)]


def _save_cache(path, sequences, pad_id, key, digest):
    from safetensors.torch import save_file

    L = max(len(x) for x in sequences)
    ids = torch.full((len(sequences), L), pad_id, dtype=torch.long)
    for i, x in enumerate(sequences):
        ids[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
    lengths = torch.tensor([len(x) for x in sequences], dtype=torch.long)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    save_file({"input_ids": ids, "lengths": lengths}, tmp,
              metadata={"lowbit_generate_digest": digest, "lowbit_generate_key": json.dumps(key)})
    os.replace(tmp, path)  # a cache is either complete or absent


@torch.no_grad()
def generate_data(teacher, tokenizer, prompts, *, max_new_tokens=256, temperature=0.7,
                  top_p=None, batch_size=8, seed=0, out=None, num_prompts=None,
                  prompt_chars=128, train_batch_size=None, ignore_index=-100, progress=True):
    """BitDistiller's distillation data: the teacher's own continuations of ``prompts``.

    ``prompts``: a list of strings, or a text to cut prompts from (prompts_from_text: the first
    ``prompt_chars`` characters of each long paragraph, ``num_prompts`` of them chosen with
    ``seed``). Sampling (temperature, optional nucleus ``top_p``, no top-k) runs ``batch_size``
    prompts at a time through ``teacher.generate`` (left padding, attention masks, KV cache),
    seeded per batch from ``seed`` (deterministic on CPU for the same inputs and thread count),
    without touching the caller's RNG state; a sequence ends at its first EOS (kept) or after
    ``max_new_tokens``. Returns training batches of ``train_batch_size`` (default batch_size)
    sequences, prompt + continuation, right-padded: dicts of input_ids, attention_mask and
    labels (padding = ignore_index).

    ``out``: a .safetensors path. When it holds data generated with the same key — the
    teacher's class, config and weights, the tokenized prompts, every sampling argument and the
    seed — it is loaded instead of generating; otherwise it is (re)generated and written."""
    from transformers import GenerationConfig, LogitsProcessorList

    _check_generate_args(max_new_tokens, temperature, top_p, batch_size, seed, train_batch_size)
    if out is not None:
        if not isinstance(out, (str, os.PathLike)):
            raise TypeError(f"out: expected None or a .safetensors file path, got "
                            f"{type(out).__name__}")
        out = os.fspath(out)
        if os.path.isdir(out):
            raise ValueError(f"out: {out} is a directory; expected a .safetensors file path")
    if isinstance(prompts, str):
        prompts = prompts_from_text(prompts, n=num_prompts, prompt_chars=prompt_chars, seed=seed)
    elif num_prompts is not None:
        prompts = list(prompts)[:num_prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or \
            not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts: expected a text or a non-empty list of non-empty strings")
    if not callable(getattr(teacher, "generate", None)):
        raise TypeError(f"teacher: expected a causal LM with .generate(), got "
                        f"{type(teacher).__name__}")
    eos = _eos_ids(teacher, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    enc = [tokenizer(p).input_ids for p in prompts]
    if any(len(e) == 0 for e in enc):
        raise ValueError("prompts: a prompt tokenizes to no tokens")
    key = {"format": 1, "teacher": _model_identity(teacher) if out else None,
           "prompts_sha": hashlib.sha256(json.dumps(enc).encode()).hexdigest(),
           "n_prompts": len(enc), "max_new_tokens": int(max_new_tokens),
           "temperature": float(temperature), "top_p": None if top_p is None else float(top_p),
           "batch_size": int(batch_size), "seed": int(seed), "eos": eos, "pad": int(pad_id)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    tb = train_batch_size or batch_size
    if out is not None:
        seqs = _load_cache(out, digest)
        if seqs is not None:
            if progress:
                print(f"generate_data: {len(seqs)} sequences loaded from {out}")
            return pad_batches(seqs, tb, pad_id, ignore_index)

    device = next(teacher.parameters()).device
    gcfg = GenerationConfig(do_sample=True, temperature=float(temperature),
                            top_p=1.0 if top_p is None else float(top_p), top_k=0,
                            max_new_tokens=int(max_new_tokens), pad_token_id=pad_id,
                            eos_token_id=eos or None, num_beams=1)
    n_batches = (len(enc) + batch_size - 1) // batch_size
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_batches * max_new_tokens, desc=f"generate ({len(enc)} "
                       f"prompts, {batch_size} at a time)", unit="step")
        except ImportError:
            bar = None
    procs = LogitsProcessorList([_Progress(bar)]) if bar is not None else None
    was = teacher.training
    teacher.eval()
    seqs = []
    devices = [device] if device.type == "cuda" else []
    try:
        for bi in range(n_batches):
            chunk = enc[bi * batch_size:(bi + 1) * batch_size]
            L = max(len(e) for e in chunk)
            ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for i, e in enumerate(chunk):  # left padding: every prompt ends at the same column
                ids[i, L - len(e):] = torch.as_tensor(e)
                mask[i, L - len(e):] = 1
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(seed) * 1_000_003 + bi)
                res = teacher.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=gcfg, logits_processor=procs)
            res = res.cpu()
            new = res[:, L:]
            for i, e in enumerate(chunk):
                cont = new[i].tolist()
                for j, t in enumerate(cont):
                    if t in eos:
                        cont = cont[:j + 1]
                        break
                seqs.append(list(e) + cont)
            if bar is not None:  # a batch that stopped early (every row hit EOS)
                bar.update(max_new_tokens - new.shape[1])
    finally:
        teacher.train(was)
        if bar is not None:
            bar.close()
    if out is not None:
        _save_cache(out, seqs, pad_id, key, digest)
    return pad_batches(seqs, tb, pad_id, ignore_index)


# ---------------------------------------------------------------------------------------------
# evaluation helpers
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def estimate_gamma_from(teacher, batches, method="target", ignore_index=-100):
    """CAKLD's confidence coefficient: the teacher's mean probability of the label token
    ("target") or its mean max probability ("max"), over unmasked positions of ``batches``."""
    from .kl_loss import GammaEstimator

    est = GammaEstimator(method=method, ignore_index=ignore_index)
    for b in batches:
        logits = _logits(teacher, b)[:, :-1]
        est.update(logits, _labels(b, ignore_index))
    return est.value


@torch.no_grad()
def perplexity(model, batches, ignore_index=-100):
    """Token-level perplexity of a causal LM over ``batches`` (next-token cross-entropy over the
    unmasked positions)."""
    was = model.training
    model.eval()
    nll, count = 0.0, 0
    for b in batches:
        logits = _logits(model, b)[:, :-1].float()
        labels = _labels(b, ignore_index)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=ignore_index, reduction="sum")
        nll += loss.item()
        count += int((labels != ignore_index).sum())
    model.train(was)
    return math.exp(nll / max(count, 1))


# ---------------------------------------------------------------------------------------------
# the fused LM head: last hidden states + head weights instead of logits
# ---------------------------------------------------------------------------------------------
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
    from .nn import QATLinear

    w = head.quantized_weight() if isinstance(head, QATLinear) else head.weight
    return w, head.bias


def _hidden_and_head(model, batch, role):
    body, head = _body_and_head(model, role)
    out = body(**_inputs(batch))
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    w, b = _head_weight(head)
    return h, w, b


@torch.no_grad()
def _check_head_matches(model, batch, role):
    """Once per model: its logits must be head(body(x)) — models that rescale or soft-cap their
    logits cannot use the fused head (the loss would be silently wrong)."""
    inp = {k: v[:1, :8] if isinstance(v, torch.Tensor) and v.dim() == 2 else v
           for k, v in _inputs(batch).items()}
    was = model.training
    model.eval()
    try:
        ref = _logits(model, inp).float()
        h, w, b = _hidden_and_head(model, inp, role)
        got = F.linear(h, w, b).float()
    finally:
        model.train(was)
    scale = ref.abs().amax().clamp_min(1.0)
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-2, atol=1e-3 * scale):
        raise ValueError(f"fused_head: the {role}'s logits are not lm_head(last hidden state) "
                         f"({type(model).__name__} transforms them, e.g. scaling or soft-capping)"
                         "; use fused_head=False")


# ---------------------------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------------------------
def make_scheduler(optimizer, name, total_steps, warmup_steps=0):
    """A LambdaLR: linear warmup from lr/warmup_steps to lr over ``warmup_steps`` steps, then
    "constant" or "cosine" (half a cosine from lr to 0 at ``total_steps``)."""
    if name not in ("constant", "cosine"):
        raise ValueError(f"scheduler: must be 'constant', 'cosine' or a torch LR scheduler, "
                         f"got {name!r}")
    w = int(warmup_steps)

    def factor(s):
        if s < w:
            return (s + 1) / w
        if name == "constant":
            return 1.0
        span = max(1, total_steps - w)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - w) / span)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _default_optimizer(model, lr):
    """AdamW(lr, weight_decay=0) over the trainable parameters, torch's fused kernel where it
    has one for every parameter's device and dtype (on CPU 3x faster than the default
    for-loop form for SmolLM2's 135M parameters; the same update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        ok = set(_get_fused_kernels_supported_devices())
    except ImportError:
        ok = set()
    fused = bool(params) and all(p.device.type in ok and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)


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
    trainable parameters (default AdamW(lr, weight_decay=0), fused where torch has the kernel).
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
                 warmup_steps=0, total_steps=None, cache_teacher=False):
        from .kl_loss import kl_div_loss  # noqa: F401  (fail early if the loss is missing)

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
        self.optimizer = optimizer or _default_optimizer(student, lr)
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
        from .kl_loss import fused_linear_kl_loss, kl_div_loss

        labels = _labels(batch, self.ignore_index)
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
            s = _logits(self.student, batch)[:, :-1]
        return kl_div_loss(s, t[:, :-1], **kw)

    @torch.no_grad()
    def _teacher_out(self, batch):
        """The teacher's (last hidden states, head weight, head bias) with fused_head, else its
        logits. With cache_teacher the hidden states / logits are kept per batch object and
        reused while its tensors are unchanged (same objects, same version counters): the
        frozen teacher gives the same output for the same batch."""
        key = None
        if self.cache_teacher:
            ids = _ids(batch)
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
            out = keep = _logits(self.teacher, batch)
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


def plot_history(history, path):
    """PNG of training loss and held-out perplexity; silently skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(steps, [r["loss"] for r in history])
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("distillation loss")
    ax[0].set_yscale("log")
    ev = [(r["step"], r["eval_ppl"]) for r in history if r.get("eval_ppl") not in ("", None)]
    if ev:
        ax[1].plot([s for s, _ in ev], [p for _, p in ev], marker="o")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("held-out perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["make_teacher", "prepare", "generate_data", "prompts_from_text", "pad_batches",
           "estimate_gamma_from", "perplexity", "make_scheduler", "DistillTrainer",
           "plot_history"]
