"""Independent plain-PyTorch reference for lowbit's weight fake quantization.

Written from /work/shared/FORMATS.md section 1 only; it never imports lowbit.

Conventions (FORMATS.md 1.5):
  * arithmetic is float32 (w is upcast, the result is cast back to w.dtype);
  * R(t) = sign(t) * floor(|t| + 0.5) with identity gradient; rne = torch.round with zero gradient;
  * amax/amin (gradient split evenly among ties), clamp with the inclusive mask (gradient 1 on
    [lo, hi], bounds included), |x| with gradient sign(x) (0 at 0);
  * scales are NOT detached for ste="bitdistiller";
  * level formats snap with an identity STE and the two-scale branch is chosen by the sign of x;
  * scale_dtype (FORMATS.md 1.6): every scale, computed in float32 with its floor, is rounded to
    that dtype by torch's own conversion (round to nearest even) and back, with identity
    gradient; a scale that rounds to 0 becomes the dtype's smallest positive subnormal, and one
    that overflows to inf the dtype's largest finite value (lowbit's rule where 1.6 is silent).

Every non-smooth piece is written out here (_clamp, _amax/_amin, _abs, _R, _rne, _snap_ste) with
the gradient FORMATS.md fixes, instead of taking whatever the installed torch's autograd gives:
torch >= 2.14 changed torch.clamp's backward at the bounds (0 with scalar bounds, 0.5 with tensor
bounds, where <= 2.13 gave 1), and an oracle must not move with the torch version. Only selection
(torch.where), arithmetic and division are left to torch's autograd.

Straight-through expressions are written as ``t - t.detach() + value`` rather than
``t + (value - t).detach()``: both have exactly the same gradient (identity w.r.t. t), but the
first one's forward value is exactly ``value`` (t - t.detach() is exactly 0), while the second one
can be one float32 ulp away from it (u + (c - u) != c in floating point).  The forward values of a
fake quantizer must equal dequantize(quantize(w)) bit-exactly, so the exact form is the right one.
"""
from __future__ import annotations

import torch

__all__ = [
    "LEVELS",
    "FORMAT_BITS",
    "ALL_SPECS",
    "STE_MODES",
    "ref_fake_quant",
    "ref_codes",
    "ref_params",
    "ref_decode",
    "round_half_away",
    "round_scale",
    "SCALE_DTYPES",
]

# ---------------------------------------------------------------------------------------------
# Level tables (FORMATS.md 1.3), float32, sorted ascending, endpoints -1 and 1.
# ---------------------------------------------------------------------------------------------
_NF3 = [
    -1.0,
    -0.5350227355957031,
    -0.2469314038753510,
    0.0,
    0.1833375245332718,
    0.3819939494132996,
    0.6229856610298157,
    1.0,
]
_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def _fp_table(magnitudes, divisor):
    # Division done in float32 (correctly rounded), exactly like `m / divisor` in C with floats.
    mags = torch.tensor(sorted(set(magnitudes)), dtype=torch.float32)
    vals = torch.cat([-mags, mags]) / torch.tensor(float(divisor), dtype=torch.float32)
    return torch.unique(vals)  # sorted; -0 and +0 collapse to one value


LEVELS = {
    ("nf", 3): torch.tensor(_NF3, dtype=torch.float32),
    ("nf", 4): torch.tensor(_NF4, dtype=torch.float32),
    ("fp", 3): _fp_table([0, 1, 2, 4], 4),  # E2M0: 7 values
    ("fp", 4): _fp_table([0, 0.5, 1, 1.5, 2, 3, 4, 6], 6),  # E2M1: 15 values
}

FORMAT_BITS = {"int": (2, 3, 4, 8), "nf": (3, 4), "fp": (3, 4)}
# every (format, bits, symmetric) triple of the FORMATS.md table
ALL_SPECS = [(f, b, s) for f, bs in FORMAT_BITS.items() for b in bs for s in (False, True)]
STE_MODES = ("bitdistiller", "identity")

_INT_SCALE_FLOOR = 1e-5
_LEVEL_SCALE_FLOOR = 1e-8

SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def round_half_away(t: torch.Tensor) -> torch.Tensor:
    """R(t) = sign(t) * floor(|t| + 0.5), values only."""
    return torch.sign(t) * torch.floor(t.abs() + 0.5)


def _R(t: torch.Tensor) -> torch.Tensor:
    """R with identity gradient (exact forward value)."""
    return t - t.detach() + round_half_away(t.detach())


class _ClampInclusive(torch.autograd.Function):
    """clamp(t, lo, hi) (either bound may be None) with the inclusive mask: gradient 1 where
    lo <= t <= hi, bounds included, else 0 (NaN: 0) -- torch <= 2.13's clamp backward."""

    @staticmethod
    def forward(ctx, t, lo, hi):
        ctx.save_for_backward(t)
        ctx.bounds = (lo, hi)
        return torch.clamp(t, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        inside = torch.ones_like(t, dtype=torch.bool)
        if lo is not None:
            inside &= t >= lo
        if hi is not None:
            inside &= t <= hi
        return torch.where(inside, g, torch.zeros_like(g)), None, None


def _clamp(t: torch.Tensor, lo=None, hi=None) -> torch.Tensor:
    """clamp with the inclusive mask of FORMATS.md 1.5 (lo/hi: python numbers or None)."""
    return _ClampInclusive.apply(t, lo, hi)


class _ExtremeTieSplit(torch.autograd.Function):
    """amax (largest=True) or amin over `dim`, keepdim; the gradient is split evenly among the
    elements equal to the result: g / count * mask, as torch's amax/amin backward has always
    done (a group with a NaN has no element equal to its NaN result: 0 / 0 gives NaN)."""

    @staticmethod
    def forward(ctx, t, dim, largest):
        m = t.amax(dim=dim, keepdim=True) if largest else t.amin(dim=dim, keepdim=True)
        ctx.save_for_backward(t, m)
        ctx.dim = dim
        return m

    @staticmethod
    def backward(ctx, g):
        t, m = ctx.saved_tensors
        ties = (t == m).to(g.dtype)
        return g / ties.sum(dim=ctx.dim, keepdim=True) * ties, None, None


def _amax(t: torch.Tensor) -> torch.Tensor:
    """max over the last dim, keepdim, gradient split evenly among tied maxima."""
    return _ExtremeTieSplit.apply(t, -1, True)


def _amin(t: torch.Tensor) -> torch.Tensor:
    """min over the last dim, keepdim, gradient split evenly among tied minima."""
    return _ExtremeTieSplit.apply(t, -1, False)


class _Abs(torch.autograd.Function):
    """|t| with gradient sign(t) (0 at t == 0)."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return t.abs()

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return g * torch.sign(t)


def _abs(t: torch.Tensor) -> torch.Tensor:
    return _Abs.apply(t)


def _scale_dtype(scale_dtype) -> torch.dtype:
    if isinstance(scale_dtype, torch.dtype) and scale_dtype in SCALE_DTYPES.values():
        return scale_dtype
    if isinstance(scale_dtype, str) and scale_dtype in SCALE_DTYPES:
        return SCALE_DTYPES[scale_dtype]
    raise ValueError(f"reference: unknown scale_dtype {scale_dtype!r}")


def round_scale(s: torch.Tensor, scale_dtype) -> torch.Tensor:
    """FORMATS.md 1.6: s rounded to scale_dtype (torch's .to(), round to nearest even) and back
    to s's dtype; 0 -> the dtype's smallest positive subnormal (bit pattern 1); a finite s that
    becomes inf -> the dtype's largest finite value. Identity gradient (exact forward value)."""
    dt = _scale_dtype(scale_dtype)
    if dt == torch.float32:
        return s
    v = s.detach()
    r = v.to(dt).to(v.dtype)
    tiny = torch.tensor(1, dtype=torch.int16).view(dt).to(v.dtype)
    r = torch.where(r == 0, tiny, r)
    r = torch.where(torch.isinf(r) & torch.isfinite(v), torch.finfo(dt).max, r)
    return s - v + r


def _rne(t: torch.Tensor) -> torch.Tensor:
    """Round half to even with zero gradient."""
    return torch.round(t.detach())


def _snap_ste(u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Value c, gradient identity w.r.t. u (= u + (c - u).detach(), exact forward)."""
    return u - u.detach() + c


def _nearest_index(u: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level of `table` to each element of u clamped to [-1, 1] (no
    gradient). FORMATS.md 1.3 has u in [-1, 1]; after the scale rounding of 1.6 it may leave that
    range (a scale rounded below the group's extreme, or clamped to the dtype's largest value),
    and the clamp keeps the snap on the table's end levels. The straight-through u of the
    gradient (_snap_ste) is the unclamped x / s."""
    d = (u.detach().clamp(-1.0, 1.0).unsqueeze(-1) - table.to(u.device)).abs()
    return d.argmin(dim=-1)


def _check(w, fmt, bits, group_size, symmetric, ste="bitdistiller"):
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError("reference: w must be a 2-D tensor")
    if fmt not in FORMAT_BITS:
        raise ValueError(f"reference: unsupported format {fmt!r}")
    if bits not in FORMAT_BITS[fmt]:
        raise ValueError(f"reference: unsupported bits {bits} for format {fmt!r}")
    if ste not in STE_MODES:
        raise ValueError(f"reference: unknown ste {ste!r}")
    K = w.shape[1]
    g = K if group_size == -1 else group_size
    if not isinstance(g, int) or g <= 0 or K % g != 0:
        raise ValueError(f"reference: group_size {group_size} does not divide K={K}")
    return g


def _groups(x: torch.Tensor, g: int) -> torch.Tensor:
    N, K = x.shape
    return x.reshape(N, K // g, g)


# ---------------------------------------------------------------------------------------------
# The quantizers, on grouped float tensors x of shape (N, G, g).
# Each returns (Q, codes, params) where params is a dict of the per-group parameters.
# ---------------------------------------------------------------------------------------------
def _int_asym(x, bits, sd):
    qmax = 2**bits - 1
    mx = _amax(x)
    mn = _amin(x)
    s = round_scale(_clamp(mx - mn, lo=_INT_SCALE_FLOOR) / qmax, sd)
    z = _rne(-mn / s).clamp(0, qmax)  # detached: no gradient flows through z
    q = _clamp(_R(x / s) + z, 0, qmax)
    Q = (q - z) * s
    return Q, q.detach(), {"scales": s.squeeze(-1), "zeros": z.squeeze(-1)}


def _int_sym(x, bits, sd):
    qpos = 2 ** (bits - 1) - 1
    qneg = -(2 ** (bits - 1))
    s = round_scale(_clamp(_amax(_abs(x)), lo=_INT_SCALE_FLOOR) / qpos, sd)
    q = _clamp(_R(x / s), qneg, qpos)
    Q = q * s
    return Q, (q.detach() + 2 ** (bits - 1)), {"scales": s.squeeze(-1), "zeros": None}


def _level_two_scale(x, table, sd):
    sp = round_scale(_clamp(_amax(x), lo=_LEVEL_SCALE_FLOOR), sd)
    sn = round_scale(_clamp(-_amin(x), lo=_LEVEL_SCALE_FLOOR), sd)
    pos = x >= 0
    u = torch.where(pos, x / sp, x / sn)
    idx = _nearest_index(u, table)
    c = table.to(x.device)[idx]
    cst = _snap_ste(u, c)
    Q = torch.where(pos, cst * sp, cst * sn)
    scales = torch.stack([sp.squeeze(-1), sn.squeeze(-1)], dim=-1)  # (N, G, 2) = [s+, s-]
    return Q, idx, {"scales": scales, "zeros": None}


def _level_one_scale(x, table, sd):
    s = round_scale(_clamp(_amax(_abs(x)), lo=_LEVEL_SCALE_FLOOR), sd)
    u = x / s
    idx = _nearest_index(u, table)
    c = table.to(x.device)[idx]
    Q = _snap_ste(u, c) * s
    return Q, idx, {"scales": s.squeeze(-1), "zeros": None}


def _quantize_groups(x, fmt, bits, symmetric, sd):
    if fmt == "int":
        return _int_sym(x, bits, sd) if symmetric else _int_asym(x, bits, sd)
    table = LEVELS[(fmt, bits)]
    return _level_one_scale(x, table, sd) if symmetric else _level_two_scale(x, table, sd)


# ---------------------------------------------------------------------------------------------
# Public reference functions
# ---------------------------------------------------------------------------------------------
def ref_fake_quant(
    w: torch.Tensor,
    fmt: str,
    bits: int,
    group_size: int,
    symmetric: bool,
    ste: str = "bitdistiller",
    *,
    scale_dtype="float32",
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fake-quantize a 2-D weight (N, K) per FORMATS.md section 1.

    Differentiable through plain autograd; the gradient is FORMATS.md 1.5's.
    `scale_dtype` ("float32" | "float16" | "bfloat16" or the torch dtype): FORMATS.md 1.6.
    `compute_dtype` exists only to calibrate tolerances (float64 run); the contract is float32.
    """
    g = _check(w, fmt, bits, group_size, symmetric, ste)
    sd = _scale_dtype(scale_dtype)
    N, K = w.shape
    x = w.to(compute_dtype)
    xg = _groups(x, g)
    Q, _, _ = _quantize_groups(xg, fmt, bits, symmetric, sd)
    Q = Q.reshape(N, K)
    if ste == "identity":
        Q = x - x.detach() + Q.detach()
    return Q.to(w.dtype)


def ref_codes(w, fmt, bits, group_size, symmetric, *, scale_dtype="float32") -> torch.Tensor:
    """Integer codes (N, K) int64: q (int asym), q + 2^(b-1) (int sym), index into LEVELS (nf/fp)."""
    g = _check(w, fmt, bits, group_size, symmetric)
    sd = _scale_dtype(scale_dtype)
    N, K = w.shape
    with torch.no_grad():
        _, codes, _ = _quantize_groups(_groups(w.float(), g), fmt, bits, symmetric, sd)
    return codes.reshape(N, K).to(torch.int64)


def ref_params(w, fmt, bits, group_size, symmetric, *, scale_dtype="float32") -> dict:
    """Per-group parameters in lowbit's documented storage layout.

    scales float32: (N, G) for one-scale formats (int asym, int sym, nf/fp symmetric),
    (N, G, 2) = [s+, s-] for two-scale nf/fp (rounded to scale_dtype, held in float32);
    zeros: uint8 (N, G) for int asym, else None.
    """
    g = _check(w, fmt, bits, group_size, symmetric)
    sd = _scale_dtype(scale_dtype)
    with torch.no_grad():
        _, _, p = _quantize_groups(_groups(w.float(), g), fmt, bits, symmetric, sd)
    zeros = p["zeros"]
    return {
        "scales": p["scales"].contiguous(),
        "zeros": None if zeros is None else zeros.to(torch.uint8).contiguous(),
    }


def ref_decode(codes, params, fmt, bits, group_size, symmetric, dtype=torch.float32):
    """Dequantize reference codes/params (as returned by ref_codes/ref_params) to (N, K) `dtype`."""
    N, K = codes.shape
    g = K if group_size == -1 else group_size
    cg = codes.reshape(N, K // g, g).to(torch.float32)
    s = params["scales"]
    if fmt == "int":
        if symmetric:
            Q = (cg - 2 ** (bits - 1)) * s.unsqueeze(-1)
        else:
            Q = (cg - params["zeros"].to(torch.float32).unsqueeze(-1)) * s.unsqueeze(-1)
    else:
        c = LEVELS[(fmt, bits)][codes.reshape(N, K // g, g)]
        if symmetric:
            Q = c * s.unsqueeze(-1)
        else:
            Q = torch.where(c >= 0, c * s[..., 0:1], c * s[..., 1:2])
    return Q.reshape(N, K).to(dtype)
