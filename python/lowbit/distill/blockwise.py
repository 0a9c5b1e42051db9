"""python/lowbit/distill/blockwise.py: block-wise initialisation of a quantize_'d student
(EfficientQAT's Block-AP) — one decoder block at a time trained to reproduce the full-precision
block's outputs (MSE) on cached block inputs, before end-to-end distillation."""
import time

import torch
import torch.nn as nn

from ..qat import clip_parameters
from .batches import model_inputs


class _Stop(Exception):
    """Raised by the capture hook: nothing after the first block is needed."""


def decoder_blocks(model):
    """(qualified name, nn.ModuleList) of the model's decoder blocks: its longest ModuleList
    (``model.layers`` of Hugging Face causal LMs)."""
    best = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 1 and (best is None or len(m) > len(best[1])):
            best = (name, m)
    if best is None:
        raise ValueError(f"student: {type(model).__name__} has no nn.ModuleList of decoder blocks")
    return best


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def _block_inputs(model, blocks, batches):
    """Per batch: the first block's (hidden states, keyword arguments), captured by a hook (the
    model stops there), and the loss weight of each position (attention mask, else 1)."""
    got = []

    def hook(mod, args, kwargs):
        kw = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values",
                                                          "past_key_value")}
        kw["use_cache"] = False
        h = args[0] if args else kw.pop("hidden_states")
        got.append((h.detach(), {k: v for k, v in kw.items()}))
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    was = model.training
    model.eval()
    out = []
    try:
        for b in batches:
            inp = model_inputs(b)
            try:
                model(**inp, use_cache=False)
            except _Stop:
                pass
            if len(got) != len(out) + 1:
                raise ValueError("batches: the model's forward did not reach its first decoder "
                                 "block")
            h, kw = got[-1]
            mask = inp.get("attention_mask")
            wgt = (torch.ones(h.shape[:-1], device=h.device) if mask is None
                   else mask.to(h.device, torch.float32))
            out.append((h, kw, wgt))
    finally:
        handle.remove()
        model.train(was)
    return out


def blockwise_init(student, teacher, batches, steps=20, lr=1e-4, clip_lr=5e-3, progress=True):
    """EfficientQAT's Block-AP, in place: for block i = 0, 1, ... of the decoder, trains all of
    the student block's trainable parameters (weights, norms, learned clipping logits at
    ``clip_lr``) for ``steps`` AdamW steps (one batch each, cycling over ``batches``) to minimise

        MSE(student_block_i(x_i), teacher_block_i(t_i))   over the unmasked positions

    where t_i is the full-precision block input (the teacher's trajectory) and x_i the student's
    own input (the output of its already-trained blocks 0..i-1, so later blocks learn to correct
    the earlier blocks' error). Inputs are captured once at the first block and then carried
    block to block (no full forward per step). ``student`` and ``teacher`` must have the same
    block structure (distill.prepare's pair). Memory: three (batch, sequence, hidden) float32
    tensors per batch (the student's and the teacher's block inputs, the teacher's outputs), so
    pass a few batches, not a whole corpus. Returns [{"block", "loss_first", "loss_last",
    "time_s"}]."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: must be an int >= 1, got {steps!r}")
    for name, v in (("lr", lr), ("clip_lr", clip_lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"{name}: must be a number >= 0, got {v!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches: no batches")
    sname, sblocks = decoder_blocks(student)
    tblocks = teacher.get_submodule(sname) if sname else teacher
    if not isinstance(tblocks, nn.ModuleList) or len(tblocks) != len(sblocks):
        raise ValueError(f"teacher: has no {len(sblocks)}-block ModuleList at {sname!r} like the "
                         "student's")
    cached = _block_inputs(teacher, tblocks, batches)
    t_in = [h for h, _, _ in cached]
    s_in = [h.clone() for h in t_in]  # the embeddings are not quantized: the same first input
    kws = [kw for _, kw, _ in cached]
    wgts = [w.unsqueeze(-1) for _, _, w in cached]
    bar = range(len(sblocks))
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(bar, desc="block-wise init", unit="block")
        except ImportError:
            pass
    report = []
    was = student.training
    for i in bar:
        t0 = time.time()
        sb, tb = sblocks[i], tblocks[i]
        with torch.no_grad():
            t_out = [_first(tb(h, **kw)) for h, kw in zip(t_in, kws)]
        clip = {id(p) for p in clip_parameters(sb)}
        params = [p for p in sb.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) not in clip], "lr": lr},
                  {"params": [p for p in params if id(p) in clip], "lr": clip_lr}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
        sb.train()
        first = last = None
        for s in range(steps):
            j = s % len(batches)
            d = _first(sb(s_in[j], **kws[j])) - t_out[j]
            loss = (d.pow(2) * wgts[j]).sum() / (wgts[j].sum() * d.shape[-1]).clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = loss.item()
            first = last if first is None else first
        sb.eval()
        with torch.no_grad():
            s_in = [_first(sb(h, **kw)) for h, kw in zip(s_in, kws)]
        t_in = t_out
        report.append({"block": i, "loss_first": first, "loss_last": last,
                       "time_s": round(time.time() - t0, 2)})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(mse=f"{first:.3g}->{last:.3g}")
    student.train(was)
    return report
