"""python/lowbit/clip_search.py: the clip_search op family — the search for the best clipping
pair per (row, group) of BitDistiller's asymmetric clipping initialisation (the C op
lowbit::clip_search on CPU, its vectorised-torch twin elsewhere), the per-group Gram matrix it
scores with, and the op's fake kernel. lowbit.calibrate_clip_ (qat.py) is the model verb."""
import torch

from . import _constants as C
from . import _fakes
from . import _ops  # noqa: F401  (loads torch.ops.lowbit.*)
from .fake_quant import fake_quantize


def clip_group(spec, k):
    """The length the clipping search picks one (lo, hi) pair for, on a weight of k input
    features: the spec's group, or for llama.cpp's block types (FORMATS.md 1.8) the sub-block
    (the search runs per sub-block; group_gram(x, clip_group(spec, k)) is its Gram matrix)."""
    g = spec.group_for(k)
    if spec.is_block_type:
        return C.FORMATS[spec.format].sub_block
    return g


def group_gram(x, g):
    """Sum over tokens of x_g x_g^T per group: (G, g, g) float32, from x (T, K)."""
    t, k = x.shape
    xg = x.reshape(t, k // g, g).transpose(0, 1).float()  # (G, T, g)
    return torch.bmm(xg.transpose(1, 2), xg)


@torch.no_grad()
def search_clip_torch(w, spec, gram, n_grid=20, max_shrink=10, chunk_rows=256):
    """Vectorised-torch twin of the C clip_search (used off CPU, and as its test oracle's
    neighbour): the same candidates, quantized on the same grid (fake_quantize with ``spec``, its
    scale_dtype included), the same error d^T H d, first minimum in (i, j) order."""
    if spec.is_block_type:
        return _search_clip_blocks_torch(w, spec, gram, n_grid, max_shrink)
    n, k = w.shape
    g = spec.group_for(k)
    G = k // g
    wg = w.float().reshape(n, G, g)
    mx = wg.amax(-1, keepdim=True)
    mn = wg.amin(-1, keepdim=True)
    best_err = torch.full((n, G, 1), float("inf"), device=w.device)
    best_hi, best_lo = mx.clone(), mn.clone()
    factors = [1 - i / n_grid for i in range(max_shrink)]
    hmat = gram.float().to(w.device)  # (G, g, g)
    for r0 in range(0, n, chunk_rows):
        r1 = min(n, r0 + chunk_rows)
        x = wg[r0:r1]  # (R, G, g)
        for fi in factors:
            hi = mx[r0:r1] * fi
            lo = torch.stack([mn[r0:r1] * fj for fj in factors])  # (J, R, G, 1)
            cand = torch.minimum(torch.maximum(x.unsqueeze(0), lo), hi.unsqueeze(0))
            q = fake_quantize(cand.reshape(-1, k), spec).reshape(cand.shape)
            d = (q - x.unsqueeze(0)).permute(2, 0, 1, 3).reshape(G, -1, g)  # (G, J*R, g)
            err = (torch.bmm(d, hmat) * d).sum(-1)
            err = err.reshape(G, len(factors), r1 - r0).permute(1, 2, 0).unsqueeze(-1)
            e_min, j_best = err.min(0)  # (R, G, 1)
            better = e_min < best_err[r0:r1]
            best_err[r0:r1] = torch.where(better, e_min, best_err[r0:r1])
            best_hi[r0:r1] = torch.where(better, hi, best_hi[r0:r1])
            lo_best = torch.gather(lo, 0, j_best.unsqueeze(0)).squeeze(0)
            best_lo[r0:r1] = torch.where(better, lo_best, best_lo[r0:r1])
    return best_lo, best_hi


def _search_clip_blocks_torch(w, spec, gram, n_grid, max_shrink):
    """The block types' search per sub-block (csrc/cpu/clip_search_impl.h blk_clip_rows) in
    torch: candidate (i, i') of sub-block j clamps that sub-block alone, the whole block is
    fake-quantized, and the block's error is the sum of its sub-blocks' d^T H d; sub-block j of
    every block and row is scored at once."""
    n, k = w.shape
    sub = clip_group(spec, k)
    nsub = spec.group_size // sub
    S = k // sub
    x = w.float().reshape(n, S, sub)
    mx, mn = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)
    hmat = gram.float().to(w.device)  # (S, sub, sub)
    best_err = torch.full((n, S // nsub, nsub), float("inf"), device=w.device)
    best_lo, best_hi = mn.clone(), mx.clone()
    factors = [1 - i / n_grid for i in range(max_shrink)]
    for j in range(nsub):
        sel = (torch.arange(S, device=w.device) % nsub == j).reshape(1, S, 1)
        for fi in factors:
            for fj in factors:
                hi, lo = mx * fi, mn * fj
                cand = torch.where(sel, torch.minimum(torch.maximum(x, lo), hi), x)
                d = (fake_quantize(cand.reshape(n, k), spec).reshape(n, S, sub) - x)
                e = (torch.einsum("nsi,sij->nsj", d, hmat) * d).sum(-1)  # (n, S)
                e = e.reshape(n, S // nsub, nsub).sum(-1)                # the block's error
                better = e < best_err[..., j]
                best_err[..., j] = torch.where(better, e, best_err[..., j])
                bh = best_hi.reshape(n, S // nsub, nsub)
                bl = best_lo.reshape(n, S // nsub, nsub)
                bh[..., j] = torch.where(better, hi.reshape(n, S // nsub, nsub)[..., j], bh[..., j])
                bl[..., j] = torch.where(better, lo.reshape(n, S // nsub, nsub)[..., j], bl[..., j])
    return best_lo, best_hi


def search_clip(w, spec, gram, n_grid=20, max_shrink=10):
    """Clamp bounds (N, G, 1) lo, hi of the best clipping pair per (row, group), candidates
    scored on the grid QAT trains on (``spec`` with its scale_dtype, FORMATS.md 1.6). For
    llama.cpp's block types (FORMATS.md 1.8) per (row, sub-block): bounds (N, K / sub_block, 1),
    gram = group_gram(x, clip_group(spec, K)); sub-block j's candidates clamp it alone, the
    block is quantized by 1.8's rules, and the block's output error is scored."""
    if w.device.type != "cpu":
        return search_clip_torch(w, spec, gram, n_grid, max_shrink)
    fmt, bits, g, sym = spec.op_args(w.shape[1])
    lo, hi = torch.ops.lowbit.clip_search(w.detach().float().contiguous(),
                                          gram.float().contiguous(), fmt, bits, g, sym,
                                          n_grid, max_shrink, spec.scale_code)
    return lo.unsqueeze(-1), hi.unsqueeze(-1)


# ---- fake kernel of the op: csrc/ops/clip_search.c's checks on the metadata (_fakes), so meta /
# torch.compile raise where the CPU op does ----
_fakes.register("clip_search")


__all__ = ["search_clip", "search_clip_torch", "group_gram", "clip_group"]
