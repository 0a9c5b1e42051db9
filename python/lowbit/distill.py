"""python/lowbit/distill.py: self-distillation QAT (BitDistiller's method) as a library — a
frozen full-precision teacher copy, a quantize_'d student, the confidence-aware KL loss, and a
small trainer (gradient accumulation, autocast, checkpoint/resume, progress bar, CSV log, PNG plot)
that a user's own loop can also drive one step at a time.

Two ways to use it:

    # 1. all in one
    student, teacher = lowbit.distill.prepare(model, lowbit.QATConfig(spec))
    trainer = lowbit.distill.DistillTrainer(student, teacher, lr=2e-5, kind="cakld", gamma="auto")
    trainer.fit(train_batches, steps=200, eval_batches=eval_batches, out_dir="runs/int2")

    # 2. your own loop
    for batch in loader:
        loss = trainer.step(batch)          # forward both models, loss, backward, optimizer
"""
import copy
import csv
import math
import os
import time

import torch
import torch.nn as nn

from .qat import QATConfig, calibrate_clip_, quantize_


def make_teacher(model):
    """A frozen deep copy (no shared parameters) in eval mode."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def prepare(model, config, calibration_batches=None, calibrate_tokens=4096, progress=True):
    """Returns (student, teacher): the teacher is a frozen copy of ``model`` taken first; the
    student is ``model`` itself with quantize_(config) applied and, when calibration batches are
    given, BitDistiller's asymmetric clipping initialisation (calibrate_clip_)."""
    if not isinstance(config, QATConfig):
        raise TypeError(f"config: expected a lowbit.QATConfig, got {type(config).__name__}")
    teacher = make_teacher(model)
    student = quantize_(model, config)
    if calibration_batches is not None:
        calibrate_clip_(student, calibration_batches, max_tokens=calibrate_tokens,
                        progress=progress)
    return student, teacher


def _logits(model, batch):
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    return out.logits if hasattr(out, "logits") else out


def _ids(batch):
    return batch["input_ids"] if isinstance(batch, dict) else batch


def _labels(batch, ignore_index):
    """Next-token labels aligned with logits[:, :-1]; padding (attention_mask 0) is ignored."""
    ids = _ids(batch)
    labels = ids[:, 1:].clone()
    if isinstance(batch, dict) and "attention_mask" in batch:
        labels[batch["attention_mask"][:, 1:] == 0] = ignore_index
    return labels


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
    """Token-level perplexity of a causal LM over ``batches`` (next-token cross-entropy)."""
    was = model.training
    model.eval()
    nll, count = 0.0, 0
    for b in batches:
        logits = _logits(model, b)[:, :-1].float()
        labels = _labels(b, ignore_index)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           labels.reshape(-1), ignore_index=ignore_index,
                                           reduction="sum")
        nll += loss.item()
        count += int((labels != ignore_index).sum())
    model.train(was)
    return math.exp(nll / max(count, 1))


class DistillTrainer:
    """Trains ``student`` to match ``teacher`` with lowbit.kl_div_loss.

    kind: "cakld" (default), "forward", "reverse" or "jsd"; gamma: a float in [0, 1] or "auto"
    (estimated from the teacher on the first batches given to fit, or set ``trainer.gamma``).
    grad_accum: micro-batches per optimizer step. autocast: None (bf16 on CUDA, off on CPU),
    True or False. optimizer: any torch optimizer over the student's trainable parameters
    (default AdamW(lr, weight_decay=0))."""

    def __init__(self, student, teacher, lr=2e-5, kind="cakld", gamma="auto", beta=0.5,
                 temperature=1.0, grad_accum=1, optimizer=None, autocast=None,
                 max_grad_norm=1.0, ignore_index=-100):
        from .kl_loss import kl_div_loss  # noqa: F401  (fail early if the loss is missing)

        if grad_accum < 1:
            raise ValueError(f"grad_accum: must be >= 1, got {grad_accum}")
        if not (gamma == "auto" or (isinstance(gamma, (int, float)) and 0 <= gamma <= 1)):
            raise ValueError(f"gamma: must be 'auto' or in [0, 1], got {gamma!r}")
        self.student, self.teacher = student, teacher
        self.kind, self.gamma, self.beta, self.temperature = kind, gamma, beta, temperature
        self.grad_accum, self.max_grad_norm, self.ignore_index = grad_accum, max_grad_norm, ignore_index
        params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        dev = next(student.parameters()).device
        self.autocast = (dev.type == "cuda") if autocast is None else autocast
        self.device_type = dev.type
        self.step_count = 0
        self._micro = 0
        self.history = []

    def loss(self, batch):
        """The distillation loss of one batch (student graph kept for backward)."""
        from .kl_loss import kl_div_loss

        if self.gamma == "auto" and self.kind == "cakld":
            self.gamma = estimate_gamma_from(self.teacher, [batch], ignore_index=self.ignore_index)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            with torch.no_grad():
                t = _logits(self.teacher, batch)[:, :-1]
            s = _logits(self.student, batch)[:, :-1]
        gamma = self.gamma if self.kind == "cakld" else None
        return kl_div_loss(s, t, kind=self.kind, gamma=gamma, beta=self.beta,
                           temperature=self.temperature,
                           labels=_labels(batch, self.ignore_index),
                           ignore_index=self.ignore_index, reduction="mean")

    def step(self, batch):
        """One micro-batch: loss, backward; an optimizer step every grad_accum micro-batches.
        Returns the loss (float)."""
        self.student.train()
        loss = self.loss(batch)
        (loss / self.grad_accum).backward()
        self._micro += 1
        if self._micro % self.grad_accum == 0:
            if self.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step_count += 1
        return loss.item()

    # ---- checkpoint / resume ----
    def save_checkpoint(self, path):
        torch.save({"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "step": self.step_count, "micro": self._micro, "gamma": self.gamma,
                    "history": self.history, "rng": torch.get_rng_state()}, path)

    def load_checkpoint(self, path):
        ck = torch.load(path, map_location="cpu", weights_only=False)
        self.student.load_state_dict(ck["student"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.step_count, self._micro, self.gamma = ck["step"], ck["micro"], ck["gamma"]
        self.history = ck["history"]
        torch.set_rng_state(ck["rng"])

    def fit(self, batches, steps, eval_batches=None, eval_every=None, out_dir=None,
            resume=True, progress=True, log_every=1):
        """Runs until ``steps`` optimizer steps are done, cycling over ``batches`` (a list or a
        re-iterable). With out_dir: checkpoint.pt (resumed from when present and resume=True),
        log.csv and curves.png. Returns the history (list of dicts)."""
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
                   "lr": self.optimizer.param_groups[0]["lr"], "eval_ppl": ""}
            if eval_batches is not None and (self.step_count % eval_every == 0
                                             or self.step_count == steps):
                rec["eval_ppl"] = perplexity(self.student, eval_batches, self.ignore_index)
            self.history.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if out_dir and (self.step_count % eval_every == 0 or self.step_count == steps):
                self.save_checkpoint(ckpt)
                self.write_log(out_dir)
        if bar is not None:
            bar.close()
        if out_dir:
            self.write_log(out_dir)
        return self.history

    def write_log(self, out_dir):
        """log.csv and curves.png (loss and held-out perplexity against steps)."""
        path = os.path.join(out_dir, "log.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "eval_ppl", "lr", "time_s"])
            w.writeheader()
            for r in self.history:
                w.writerow({k: r.get(k, "") for k in w.fieldnames})
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


__all__ = ["make_teacher", "prepare", "estimate_gamma_from", "perplexity", "DistillTrainer",
           "plot_history"]
