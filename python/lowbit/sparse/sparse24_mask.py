"""python/lowbit/sparse/sparse24_mask.py: the 2:4 mask — choosing it (the 2 largest |w| of
every 4 along K, FORMATS.md section 3) and applying it in training (the straight-through /
SR-STE masked-weight autograd of SparseLinear24)."""
import torch


def mask_24(w):
    """Bool mask (N, K): per group of 4 along K, the 2 largest |w| (ties: lower index; NaN
    counts as +inf so exactly 2 are always kept)."""
    n, k = w.shape
    a = w.detach().abs().float().reshape(n, k // 4, 4)
    a = torch.where(torch.isnan(a), torch.full_like(a, float("inf")), a)
    cols = [a[..., i] for i in range(4)]
    keep = []
    for i in range(4):
        # rank of element i: elements strictly larger, plus equal ones at a lower index
        rank = torch.zeros_like(cols[i], dtype=torch.int8)
        for j in range(4):
            if j == i:
                continue
            beats = cols[j] > cols[i] if j > i else cols[j] >= cols[i]
            rank += beats.to(torch.int8)
        keep.append(rank < 2)
    return torch.stack(keep, -1).reshape(n, k)


def apply_mask(w, mask):
    """w where mask holds, zero elsewhere (w's dtype and device)."""
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))


class MaskedWeight(torch.autograd.Function):
    """w * mask forward; backward: the dense gradient (ste=True, straight through to pruned
    weights) or the masked one (ste=False), plus srste_decay * (1 - mask) * w (SR-STE)."""

    @staticmethod
    def forward(ctx, w, mask, ste, decay):
        ctx.save_for_backward(w, mask)
        ctx.ste = ste
        ctx.decay = decay
        return apply_mask(w, mask)

    @staticmethod
    def backward(ctx, g):
        w, mask = ctx.saved_tensors
        gw = g if ctx.ste else apply_mask(g, mask)
        if ctx.decay:
            gw = gw + ctx.decay * apply_mask(w, ~mask)
        return gw, None, None, None
