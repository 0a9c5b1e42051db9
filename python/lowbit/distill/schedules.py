"""python/lowbit/distill/schedules.py: the learning-rate schedules of DistillTrainer (linear
warmup, then constant or cosine)."""
import math

import torch


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
