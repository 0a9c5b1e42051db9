"""Test helpers shared by the lowbit tests (data generation, packed-code decoding, comparisons).

Never imports lowbit.
"""
from __future__ import annotations

import math
import zlib

import torch

from reference import LEVELS, round_half_away, round_scale

# Relative margin kept between any pre-rounding value and a rounding boundary. Float32 round-off
# in a differently ordered (but correct) implementation is a few ulps (~1e-7 relative); 1e-5
# keeps both sides of every comparison on the same side of every boundary.
TIE_MARGIN = 1e-5


def seed_from(text: str) -> int:
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def resolve_group(K: int, group_size: int) -> int:
    return K if group_size == -1 else group_size


# ---------------------------------------------------------------------------------------------
# Near-tie detection (the reference and an implementation must never disagree because of 1-ulp
# differences at exact rounding boundaries; FORMATS.md says tests must avoid midpoints).
# ---------------------------------------------------------------------------------------------
def _near_half(t: torch.Tensor, margin: float) -> torch.Tensor:
    """|t| within margin*max(1,|t|) of an odd multiple of 0.5 (a rounding boundary of R/rne)."""
    a = t.abs()
    frac = a - torch.floor(a)
    return (frac - 0.5).abs() < margin * torch.clamp(a, min=1.0)


def near_tie_masks(xg: torch.Tensor, fmt: str, bits: int, symmetric: bool, margin=TIE_MARGIN,
                   scale_dtype="float32"):
    """xg: float32 (N, G, g). Returns (bad_elements (N,G,g) bool, bad_groups (N,G) bool), the
    boundaries those of the grid with scales rounded to scale_dtype (FORMATS.md 1.6)."""
    N, G, g = xg.shape
    bad_group = torch.zeros(N, G, dtype=torch.bool)
    with torch.no_grad():
        if fmt == "int":
            if symmetric:
                qpos = 2 ** (bits - 1) - 1
                s = round_scale(xg.abs().amax(-1, keepdim=True).clamp(min=1e-5) / qpos, scale_dtype)
                t = xg / s
                bad = _near_half(t, margin) & (t.abs() < qpos + 1.5)
            else:
                qmax = 2**bits - 1
                mx = xg.amax(-1, keepdim=True)
                mn = xg.amin(-1, keepdim=True)
                s = round_scale((mx - mn).clamp(min=1e-5) / qmax, scale_dtype)
                t0 = -mn / s
                bad_group = (_near_half(t0, margin) & (t0 > -1.5) & (t0 < qmax + 1.5)).squeeze(-1)
                z = torch.round(t0).clamp(0, qmax)
                t = xg / s
                r = round_half_away(t) + z
                bad = _near_half(t, margin) & (r > -1.5) & (r < qmax + 1.5)
                # the clamp boundary itself must not be ambiguous either (q == 0 / qmax vs beyond
                # is decided by integers, so only the rounding matters: covered above)
        else:
            table = LEVELS[(fmt, bits)]
            mids = (table[1:] + table[:-1]) / 2
            if symmetric:
                s = round_scale(xg.abs().amax(-1, keepdim=True).clamp(min=1e-8), scale_dtype)
                u = xg / s
            else:
                sp = round_scale(xg.amax(-1, keepdim=True).clamp(min=1e-8), scale_dtype)
                sn = round_scale((-xg.amin(-1, keepdim=True)).clamp(min=1e-8), scale_dtype)
                u = torch.where(xg >= 0, xg / sp, xg / sn)
            d = (u.unsqueeze(-1) - mids).abs().amin(-1)
            bad = d < margin
    # an ambiguous group extreme cannot be resampled alone (it sets the scale): redo the group
    is_ext = (xg == xg.amax(-1, keepdim=True)) | (xg == xg.amin(-1, keepdim=True))
    bad_group = bad_group | (bad & is_ext).any(-1)
    bad = bad & ~is_ext
    return bad, bad_group


def make_weight(
    shape,
    fmt,
    bits,
    group_size,
    symmetric,
    *,
    dtype=torch.float32,
    gen: torch.Generator,
    scale=None,
    avoid_ties=True,
    max_iter=100,
    scale_dtype="float32",
):
    """Random (N, K) weight in `dtype` with per-row magnitudes spread over several decades,
    resampled so that no element sits within TIE_MARGIN of a rounding boundary of the spec (its
    grid with scales rounded to scale_dtype)."""
    N, K = shape
    g = resolve_group(K, group_size)
    if scale is None:
        row_scale = torch.pow(10.0, torch.empty(N, 1).uniform_(-2.5, 1.0, generator=gen))
    else:
        row_scale = torch.full((N, 1), float(scale))
    w = torch.randn(N, K, generator=gen) * row_scale
    # a few outliers make the scales interesting
    if K >= 8:
        out = torch.rand(N, K, generator=gen) < 0.01
        w = torch.where(out, w * 8, w)
    w = w.to(dtype).float()
    if not avoid_ties:
        return w.to(dtype)
    for _ in range(max_iter):
        xg = w.reshape(N, K // g, g)
        bad, bad_group = near_tie_masks(xg, fmt, bits, symmetric, scale_dtype=scale_dtype)
        if not bad.any() and not bad_group.any():
            return w.to(dtype)
        xg = xg.clone()
        if bad_group.any():
            fresh = torch.randn(N, K // g, g, generator=gen) * row_scale.unsqueeze(-1)
            xg = torch.where(bad_group.unsqueeze(-1), fresh, xg)
        if bad.any():
            mx = xg.amax(-1, keepdim=True)
            mn = xg.amin(-1, keepdim=True)
            r = torch.rand(N, K // g, g, generator=gen) * 0.98 + 0.01
            fresh = mn + (mx - mn) * r
            xg = torch.where(bad & ~bad_group.unsqueeze(-1), fresh, xg)
        w = xg.reshape(N, K).to(dtype).float()
    raise RuntimeError("make_weight: could not avoid rounding ties")


# ---------------------------------------------------------------------------------------------
# Packed layout (lowbit's documented choice): per row a little-endian bitstream, code j in bits
# [j*b, (j+1)*b), rows padded to whole bytes -> codes (N, ceil(K*b/8)) uint8.
# ---------------------------------------------------------------------------------------------
def packed_row_bytes(K: int, bits: int) -> int:
    return (K * bits + 7) // 8


def unpack_codes(packed: torch.Tensor, K: int, bits: int) -> torch.Tensor:
    N, nb = packed.shape
    p = packed.to(torch.int64)
    bit_idx = torch.arange(8, dtype=torch.int64)
    allbits = ((p.unsqueeze(-1) >> bit_idx) & 1).reshape(N, nb * 8)
    b = allbits[:, : K * bits].reshape(N, K, bits)
    weights = (1 << torch.arange(bits, dtype=torch.int64))
    return (b * weights).sum(-1)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of unpack_codes (used to self-test the decoder)."""
    N, K = codes.shape
    nb = packed_row_bytes(K, bits)
    c = codes.to(torch.int64)
    bitsarr = ((c.unsqueeze(-1) >> torch.arange(bits)) & 1).reshape(N, K * bits)
    pad = torch.zeros(N, nb * 8 - K * bits, dtype=torch.int64)
    bitsarr = torch.cat([bitsarr, pad], 1).reshape(N, nb, 8)
    return (bitsarr << torch.arange(8)).sum(-1).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------
_MANT = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}
_MIN_SUB = {torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24, torch.float32: 2.0**-149}


def ulp_of(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of `dtype` at |x| (x given in float32)."""
    a = x.float().abs()
    _, e = torch.frexp(a)  # a = m * 2^e, m in [0.5, 1)
    u = torch.ldexp(torch.ones_like(a), (e - 1 - _MANT[dtype]).to(torch.int32))
    return torch.clamp(u, min=_MIN_SUB[dtype])


def assert_within_ulps(got, expected, dtype, n_ulp=1, extra_atol=0.0, what=""):
    g = got.float()
    e = expected.float()
    assert g.shape == e.shape, f"{what}: shape {tuple(g.shape)} != {tuple(e.shape)}"
    both_nan = torch.isnan(g) & torch.isnan(e)
    diff = (g - e).abs()
    tol = n_ulp * ulp_of(e, dtype) + extra_atol
    ok = (diff <= tol) | both_nan | (g == e)
    if not bool(ok.all()):
        idx = (~ok).nonzero()
        first = tuple(idx[0].tolist())
        msg = (
            f"{what}: {int((~ok).sum())}/{ok.numel()} elements beyond {n_ulp} ulp(s) of {dtype}"
            f" (+{extra_atol:.3g}); first at {first}: got {g[first].item()!r},"
            f" expected {e[first].item()!r}; max abs diff {diff[~ok].max().item():.6g}"
        )
        raise AssertionError(msg)


def describe_mismatch(got, expected, max_items=5):
    ne = ~((got == expected) | (torch.isnan(got.float()) & torch.isnan(expected.float())))
    idx = ne.nonzero()[:max_items]
    items = [
        f"{tuple(i.tolist())}: got {got[tuple(i)].item()!r} expected {expected[tuple(i)].item()!r}"
        for i in idx
    ]
    return f"{int(ne.sum())}/{ne.numel()} differ; " + "; ".join(items)


def grad_scale(t: torch.Tensor) -> float:
    m = t.detach().float().abs().max().item() if t.numel() else 0.0
    return m if m > 0 and math.isfinite(m) else 1.0


def heavy_tailed(M: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """FORMATS.md 4's heavy-tailed activations: Student-t with 3 degrees of freedom, every 128th
    channel (from 5) times 30."""
    chi2 = (torch.randn(M, K, 3, generator=gen) ** 2).sum(-1) / 3
    x = torch.randn(M, K, generator=gen) / chi2.clamp_min(1e-6).sqrt()
    x[:, 5::128] *= 30
    return x


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref||_F / ||ref||_F in float64 (FORMATS.md 4's error)."""
    return ((y.double() - ref).norm() / ref.norm()).item()
