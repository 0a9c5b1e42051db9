"""Independent plain-PyTorch reference of FORMATS.md 1.8 (llama.cpp's block types as lowbit formats).

Written from FORMATS.md 1.8 and ggml's own sources (ggml-common.h for the block byte layouts,
ggml-quants.c's dequantize_row_* for dequantization); torch and numpy only, never lowbit. For every
type of TYPES:

  params_and_codes(w, fmt)  the block parameters and codes by the rules of 1.8
  pack(p, fmt)              -> the GGUF block bytes, uint8 (N, K / block * type_size)
  dequantize(blocks, fmt)   -> float32 (N, K), as dequantize_row_* computes it
  fake_quant(w, fmt, ste)   Q(w) as an autograd expression with 1.8's gradient rules; its forward
                            equals dequantize(pack(params_and_codes(w))) in float32

Codes are the q of 1.8 as written there: q8_0 in [-127, 127]; q4_0 / q5_0 the stored offset code
in [0, 15] / [0, 31] (value q - 8 / q - 16); q4_1, q5_1, q2_k, q4_k, q5_k in [0, qmax]; q3_k in
[-4, 3]; q6_k in [-32, 31]. Scale codes: sc (and mc) in [0, cmax] for the asymmetric k types,
sc in [-cmax, cmax - 1] for q3_k / q6_k. pack adds the storage offsets (q3_k: +4 and +32, q6_k:
+32 and int8 scales).

Readings of 1.8 where it is silent or loose (the choices below; see the report of this work):
  * fp16(v) is torch's float32 -> float16 conversion (round to nearest even, subnormals kept),
    then clamped to +-65504; a v that rounds to 0 gives d = 0 (1.6's "never 0" floor is NOT
    applied: "a block scale of exactly 0 stays 0", and ggml's own GGML_FP32_TO_FP16 gives 0).
  * R(t) = sign(t) * floor(|t| + 0.5) evaluated in float32, as lowbit's formats.h and
    tests/reference.py do (so the float just below 0.5 rounds to 1).
  * q3_k / q6_k: 1.8 gives no zero rule; as for the asymmetric types, sc_j = 0 where d = 0 and
    q = 0 (the zero value) where S_j = 0, so no 0/0 appears.
  * amax-signed's gradient: its value equals max(x) or min(x); the gradient is split evenly among
    the elements equal to it, as amax / amin split theirs. max|x| (q8_0) is torch.amax(|x|) with
    |x|' = sign(x). min(min(x_j), 0) passes the gradient of min(x_j) where min(x_j) <= 0 (the
    inclusive mask of 1.5's clamp).
  * The lattice rounding (fp16 of d, dmin, m; sc_j, mc_j) has identity gradient: d and m of the
    32-blocks carry the gradient of the value before fp16, S_j / M_j the gradient of s_j / m_j.
  * Straight-through values are written value - (v.detach() - v): the forward is exactly `value`
    (its sign of zero included) and the gradient is that of v.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reference import _abs, _amax, _amin, _clamp, round_half_away

__all__ = ["TYPES", "GGMLType", "fp16", "params_and_codes", "pack", "dequantize", "fake_quant",
           "dequantize_params", "bits_per_weight", "same_bits"]

QK_K = 256


@dataclass(frozen=True)
class GGMLType:
    name: str          # FORMATS 1.8 format name (= ggml type name, lower case)
    block: int         # weights per block (32) or super-block (256)
    type_size: int     # bytes per block, ggml-common.h
    kind: str          # "sym0" (q8_0, q4_0, q5_0), "asym1" (q4_1, q5_1), "asymk", "symk"
    sub: int = 32      # sub-block size (k types), = block for the 32-blocks
    qlo: int = 0       # code range of q (1.8)
    qhi: int = 0
    zero: int = 0      # the zero code of the _0 types (q - zero is the value)
    divisor: float = 0.0   # d = stat / divisor for the _0 types
    cmax: int = 0      # scale code range of the k types

    @property
    def nsub(self):
        return self.block // self.sub

    @property
    def gguf_name(self):
        return self.name.upper()


TYPES = {t.name: t for t in (
    GGMLType("q8_0", 32, 34, "sym0", 32, -127, 127, 0, 127.0),
    GGMLType("q4_0", 32, 18, "sym0", 32, 0, 15, 8, -8.0),
    GGMLType("q5_0", 32, 22, "sym0", 32, 0, 31, 16, -16.0),
    GGMLType("q4_1", 32, 20, "asym1", 32, 0, 15),
    GGMLType("q5_1", 32, 24, "asym1", 32, 0, 31),
    GGMLType("q2_k", QK_K, 84, "asymk", 16, 0, 3, cmax=15),
    GGMLType("q4_k", QK_K, 144, "asymk", 32, 0, 15, cmax=63),
    GGMLType("q5_k", QK_K, 176, "asymk", 32, 0, 31, cmax=63),
    GGMLType("q3_k", QK_K, 110, "symk", 16, -4, 3, cmax=32),
    GGMLType("q6_k", QK_K, 210, "symk", 16, -32, 31, cmax=128),
)}


def bits_per_weight(fmt: str) -> float:
    t = TYPES[fmt]
    return t.type_size * 8 / t.block


def _type(fmt):
    if fmt not in TYPES:
        raise ValueError(f"reference_ggml: unknown type {fmt!r}")
    return TYPES[fmt]


def _blocks_of(w, t):
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError("reference_ggml: w must be a 2-D tensor")
    N, K = w.shape
    if K % t.block:
        raise ValueError(f"reference_ggml: K={K} is not a multiple of {t.name}'s block {t.block}")
    return N, K, K // t.block


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def fp16(v: torch.Tensor) -> torch.Tensor:
    """1.8's fp16(v), values only: round to nearest even float16, clamped to +-65504, as float32."""
    return v.to(torch.float16).to(torch.float32).clamp(-65504.0, 65504.0)


def _ste(v, value):
    """Forward exactly `value` (sign of zero included), gradient that of v."""
    return value - (v.detach() - v)


def _R(t):
    return _ste(t, round_half_away(t.detach()))


class _AmaxSigned(torch.autograd.Function):
    """amax-signed over the last dim (keepdim): the element with the largest |x|, the first on
    ties, with its sign. Gradient split evenly among the elements equal to the result."""

    @staticmethod
    def forward(ctx, t):
        idx = t.abs().argmax(dim=-1, keepdim=True)  # torch documents: the first maximal index
        r = t.gather(-1, idx)
        ctx.save_for_backward(t, r)
        return r

    @staticmethod
    def backward(ctx, g):
        t, r = ctx.saved_tensors
        ties = (t == r).to(g.dtype)
        return g / ties.sum(dim=-1, keepdim=True) * ties


def _amax_signed(t):
    return _AmaxSigned.apply(t)


def _nonzero_or_one(d):
    return torch.where(d == 0, torch.ones_like(d), d)


# ---------------------------------------------------------------------------------------------
# The quantizers on x of shape (N, nb, nsub, sub), float32, with autograd. Each returns (Q, p):
# Q the fake-quantized values (same shape), p the parameters and codes (detached).
# ---------------------------------------------------------------------------------------------
def _q_sym0(x, t):
    a = _amax(_abs(x)) if t.name == "q8_0" else _amax_signed(x)
    dv = a / t.divisor
    d = _ste(dv, fp16(dv.detach()))
    dz = d.detach() == 0
    c = _clamp(_R(x / _nonzero_or_one(d)) + t.zero, t.qlo, t.qhi)
    c = torch.where(dz, torch.full_like(c, float(t.zero)), c)
    Q = d * (c - t.zero)
    return Q, {"d": d.detach()[..., 0, 0], "q": c.detach()}


def _q_asym1(x, t):
    mx, mn = _amax(x), _amin(x)
    dv = (mx - mn) / t.qhi
    d = _ste(dv, fp16(dv.detach()))
    m = _ste(mn, fp16(mn.detach()))
    dz = d.detach() == 0
    c = _clamp(_R((x - m) / _nonzero_or_one(d)), 0, t.qhi)
    c = torch.where(dz, torch.zeros_like(c), c)
    Q = d * c + m
    return Q, {"d": d.detach()[..., 0, 0], "m": m.detach()[..., 0, 0], "q": c.detach()}


def _q_asymk(x, t):
    qmax = t.qhi
    mx, mn = _amax(x), _amin(x)                       # (N, nb, nsub, 1)
    lo = _clamp(mn, None, 0.0)                        # min(min(x_j), 0)
    s = (mx - lo) / qmax
    m = -lo
    sv, mv = s.detach(), m.detach()
    d = fp16(sv.amax(dim=-2, keepdim=True) / t.cmax)  # (N, nb, 1, 1)
    dmin = fp16(mv.amax(dim=-2, keepdim=True) / t.cmax)
    sc = torch.where(d == 0, torch.zeros_like(sv),
                     torch.round(sv / _nonzero_or_one(d)).clamp(0, t.cmax))
    mc = torch.where(dmin == 0, torch.zeros_like(mv),
                     torch.round(mv / _nonzero_or_one(dmin)).clamp(0, t.cmax))
    S = _ste(s, d * sc)
    M = _ste(m, dmin * mc)
    Sz = S.detach() == 0
    c = _clamp(_R((x + M) / _nonzero_or_one(S)), 0, qmax)
    c = torch.where(Sz, torch.zeros_like(c), c)
    Q = S * c - M
    p = {"d": d[..., 0, 0], "dmin": dmin[..., 0, 0], "sc": sc[..., 0], "mc": mc[..., 0],
         "q": c.detach()}
    return Q, p


def _q_symk(x, t):
    a = _amax_signed(x)                               # (N, nb, nsub, 1)
    s = a / t.qlo
    sv = s.detach()
    tt = _amax_signed(sv[..., 0])                     # (N, nb, 1): the s_j of largest |s_j|
    d = fp16(tt / -t.cmax)[..., None]                 # (N, nb, 1, 1)
    sc = torch.where(d == 0, torch.zeros_like(sv),
                     torch.round(sv / _nonzero_or_one(d)).clamp(-t.cmax, t.cmax - 1))
    S = _ste(s, d * sc)
    Sz = S.detach() == 0
    c = _clamp(_R(x / _nonzero_or_one(S)), t.qlo, t.qhi)
    c = torch.where(Sz, torch.zeros_like(c), c)
    Q = S * c
    return Q, {"d": d[..., 0, 0], "sc": sc[..., 0], "q": c.detach()}


_QUANTIZERS = {"sym0": _q_sym0, "asym1": _q_asym1, "asymk": _q_asymk, "symk": _q_symk}


def _run(w, fmt):
    t = _type(fmt)
    N, K, nb = _blocks_of(w, t)
    x = w.to(torch.float32).reshape(N, nb, t.nsub, t.sub)
    Q, p = _QUANTIZERS[t.kind](x, t)
    return Q.reshape(N, K), p, (N, K, nb)


def params_and_codes(w: torch.Tensor, fmt: str) -> dict:
    """1.8's parameters and codes of w (N, K): float32 "d" (N, nb) (+ "m" for q4_1/q5_1,
    "dmin" for q2_k/q4_k/q5_k), int64 "sc" (N, nb, nsub) (+ "mc") for the k types, int64 "q"
    (N, K). Every d / dmin / m is an fp16 value held in float32."""
    with torch.no_grad():
        _, p, (N, K, _) = _run(w.detach(), fmt)
    out = {k: v.contiguous() for k, v in p.items() if k in ("d", "m", "dmin")}
    for k in ("sc", "mc"):
        if k in p:
            out[k] = p[k].to(torch.int64).contiguous()
    out["q"] = p["q"].reshape(N, K).to(torch.int64)
    return out


def fake_quant(w: torch.Tensor, fmt: str, ste: str = "bitdistiller") -> torch.Tensor:
    """Q(w) in float32 arithmetic (returned in w.dtype) with 1.8's gradient; ste="identity":
    dQ/dw = 1."""
    if ste not in ("bitdistiller", "identity"):
        raise ValueError(f"reference_ggml: unknown ste {ste!r}")
    Q, _, _ = _run(w, fmt)
    if ste == "identity":
        x = w.to(torch.float32)
        Q = _ste(x, Q.detach())
    return Q.to(w.dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit equality of two float32 tensors, treating -0.0 and +0.0 as equal (a code carries no
    sign of zero: ggml gives +0 or -0 by the sign of the scale, the fake quantizer by the
    rounding path)."""
    a = torch.as_tensor(a).to(torch.float32) + 0.0
    b = torch.as_tensor(b).to(torch.float32) + 0.0
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


# ---------------------------------------------------------------------------------------------
# pack: the block bytes of ggml-common.h, little endian
# ---------------------------------------------------------------------------------------------
def _half_bytes(v):
    """(..., ) float32 fp16 values -> (..., 2) uint8 (ggml_half, little endian)."""
    return v.to(torch.float16).contiguous().view(torch.int16).unsqueeze(-1).view(torch.uint8)


def _u8(v):
    return v.to(torch.int64).to(torch.uint8)


def _nibbles32(q):
    """32 codes (..., 32) -> 16 bytes: q[j] | q[j + 16] << 4 (block_q4_0/1's qs)."""
    return _u8((q[..., :16] & 15) | ((q[..., 16:] & 15) << 4))


def _high_bits32(q):
    """bit 4 of the 32 codes -> uint32 qh (bit j = code j), 4 bytes little endian."""
    h = (q >> 4) & 1
    word = (h << torch.arange(32, dtype=torch.int64)).sum(-1)
    return torch.stack([(word >> (8 * i)) & 255 for i in range(4)], dim=-1).to(torch.uint8)


def _crumbs256(L):
    """256 2-bit values -> 64 bytes: byte 32*h + l holds L[128h + l + 32*k] at bits 2k."""
    L = L.reshape(*L.shape[:-1], 2, 4, 32)
    b = L[..., 0, :] | (L[..., 1, :] << 2) | (L[..., 2, :] << 4) | (L[..., 3, :] << 6)
    return _u8(b.reshape(*L.shape[:-3], 64))


def _scales_k4(sc, mc):
    """8 6-bit scales and mins -> the 12 bytes of block_q4_K/q5_K (get_scale_min_k4's layout)."""
    out = torch.zeros(*sc.shape[:-1], 12, dtype=torch.int64)
    out[..., 0:4] = sc[..., 0:4] | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = mc[..., 0:4] | ((mc[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 15) | ((mc[..., 4:8] & 15) << 4)
    return _u8(out)


def _scales_q3(l):
    """16 6-bit codes (sc + 32) -> the 12 bytes of block_q3_K: low nibbles of 0..7 / 8..15 in
    bytes 0..7 (low / high half), the top 2 bits of code j in byte 8 + j % 4 at bits 2*(j // 4)."""
    out = torch.zeros(*l.shape[:-1], 12, dtype=torch.int64)
    out[..., 0:8] = (l[..., 0:8] & 15) | ((l[..., 8:16] & 15) << 4)
    hi = (l >> 4) & 3
    for j in range(16):
        out[..., 8 + j % 4] |= hi[..., j] << (2 * (j // 4))
    return _u8(out)


def pack(p: dict, fmt: str) -> torch.Tensor:
    """The GGUF block bytes (N, K / block * type_size) uint8 of params_and_codes' output."""
    t = _type(fmt)
    q = p["q"].to(torch.int64)
    N, K = q.shape
    nb = K // t.block
    qb = q.reshape(N, nb, t.block)
    d = _half_bytes(p["d"])
    if t.name == "q8_0":
        parts = [d, q.reshape(N, nb, 32).to(torch.int8).view(torch.uint8)]
    elif t.name == "q4_0":
        parts = [d, _nibbles32(qb)]
    elif t.name == "q4_1":
        parts = [d, _half_bytes(p["m"]), _nibbles32(qb)]
    elif t.name == "q5_0":
        parts = [d, _high_bits32(qb), _nibbles32(qb)]
    elif t.name == "q5_1":
        parts = [d, _half_bytes(p["m"]), _high_bits32(qb), _nibbles32(qb)]
    elif t.name == "q2_k":
        scales = _u8(p["sc"] | (p["mc"] << 4))
        parts = [scales, _crumbs256(qb), d, _half_bytes(p["dmin"])]
    elif t.name == "q3_k":
        L = qb + 4                                    # [0, 7]; bit 2 goes to hmask
        hbit = (L >> 2) & 1
        hmask = (hbit.reshape(N, nb, 8, 32) << torch.arange(8).reshape(8, 1)).sum(-2)
        parts = [_u8(hmask), _crumbs256(L & 3), _scales_q3(p["sc"] + 32), d]
    elif t.name in ("q4_k", "q5_k"):
        Lc = qb.reshape(N, nb, 4, 2, 32)              # chunk c of 64: low 32 / high 32
        ql = _u8((Lc[..., 0, :] & 15) | ((Lc[..., 1, :] & 15) << 4)).reshape(N, nb, 128)
        parts = [d, _half_bytes(p["dmin"]), _scales_k4(p["sc"], p["mc"])]
        if t.name == "q5_k":
            h = (Lc >> 4) & 1                         # (N, nb, 4, 2, 32): bit 2c + half
            shifts = (2 * torch.arange(4).reshape(4, 1, 1) + torch.arange(2).reshape(1, 2, 1))
            parts.append(_u8((h << shifts).sum(dim=(-3, -2))))
        parts.append(ql)
    elif t.name == "q6_k":
        L = (qb + 32).reshape(N, nb, 2, 4, 32)        # half h, quarter k, l
        lo, hi = L & 15, L >> 4
        ql = torch.cat([lo[..., 0, :] | (lo[..., 2, :] << 4),
                        lo[..., 1, :] | (lo[..., 3, :] << 4)], dim=-1)   # (N, nb, 2, 64)
        qh = hi[..., 0, :] | (hi[..., 1, :] << 2) | (hi[..., 2, :] << 4) | (hi[..., 3, :] << 6)
        parts = [_u8(ql).reshape(N, nb, 128), _u8(qh).reshape(N, nb, 64),
                 p["sc"].to(torch.int8).view(torch.uint8), d]
    else:  # pragma: no cover - TYPES and this switch list the same names
        raise AssertionError(t.name)
    out = torch.cat([x.reshape(N, nb, -1) for x in parts], dim=-1)
    assert out.shape[-1] == t.type_size, (t.name, out.shape)
    return out.reshape(N, nb * t.type_size).contiguous()


# ---------------------------------------------------------------------------------------------
# dequantize: ggml-quants.c's dequantize_row_*, one float32 op at a time (torch never fuses)
# ---------------------------------------------------------------------------------------------
def _half(b):
    """(..., 2) uint8 -> float32 of the ggml_half."""
    return b.contiguous().view(torch.int16).view(torch.float16).to(torch.float32)[..., 0]


def _scale_min_k4(s):
    """get_scale_min_k4 for j = 0..7 from the 12 scale bytes (as int64)."""
    s = s.to(torch.int64)
    sc = torch.cat([s[..., 0:4] & 63, (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)], -1)
    mn = torch.cat([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], -1)
    return sc, mn


def _q3_scales(s):
    """the 16 signed scales (- 32 applied) of block_q3_K, as dequantize_row_q3_K's aux words."""
    s = s.to(torch.int64)
    out = []
    for j in range(16):
        low = (s[..., j] & 15) if j < 8 else (s[..., j - 8] >> 4)
        high = (s[..., 8 + j % 4] >> (2 * (j // 4))) & 3
        out.append((low | (high << 4)) - 32)
    return torch.stack(out, -1)


def dequantize(blocks, fmt: str) -> torch.Tensor:
    """GGUF block bytes (N, nbytes) uint8 (torch or numpy) -> float32 (N, K)."""
    t = _type(fmt)
    b = torch.as_tensor(np.ascontiguousarray(blocks) if isinstance(blocks, np.ndarray) else blocks)
    if b.dtype != torch.uint8 or b.dim() != 2 or b.shape[1] % t.type_size:
        raise ValueError(f"reference_ggml: blocks must be uint8 (N, nb * {t.type_size})")
    N = b.shape[0]
    nb = b.shape[1] // t.type_size
    x = b.reshape(N, nb, t.type_size)
    i64 = x.to(torch.int64)
    f = torch.float32
    if t.name == "q8_0":
        d = _half(x[..., 0:2])[..., None]
        y = x[..., 2:34].contiguous().view(torch.int8).to(f) * d
    elif t.name in ("q4_0", "q4_1", "q5_0", "q5_1"):
        d = _half(x[..., 0:2])[..., None]
        off = 2
        if t.name.endswith("_1"):
            m = _half(x[..., 2:4])[..., None]
            off = 4
        five = t.name[1] == "5"
        qs = i64[..., off + 4 * five:off + 4 * five + 16]
        q = torch.cat([qs & 15, qs >> 4], -1)                  # element j, j + 16
        if five:
            qh = (i64[..., off:off + 4] << (8 * torch.arange(4))).sum(-1, keepdim=True)
            q = q | (((qh >> torch.arange(32)) & 1) << 4)
        if t.name.endswith("_0"):
            y = (q - t.zero).to(f) * d
        else:
            y = q.to(f) * d + m
    elif t.name == "q2_k":
        sc, qs = i64[..., 0:16], i64[..., 16:80]
        d, dmin = _half(x[..., 80:82])[..., None], _half(x[..., 82:84])[..., None]
        dl = (d * (sc & 15).to(f))[..., None]                  # (N, nb, 16, 1)
        ml = (dmin * (sc >> 4).to(f))[..., None]
        q = (qs.reshape(N, nb, 2, 1, 32) >> (2 * torch.arange(4)).reshape(4, 1)) & 3
        y = dl * q.reshape(N, nb, 16, 16).to(f) - ml
    elif t.name == "q3_k":
        hm, qs, sc = i64[..., 0:32], i64[..., 32:96], x[..., 96:108]
        d = _half(x[..., 108:110])[..., None]
        dl = (d * _q3_scales(sc).to(f))[..., None]
        low = (qs.reshape(N, nb, 2, 1, 32) >> (2 * torch.arange(4)).reshape(4, 1)) & 3
        high = (hm.reshape(N, nb, 1, 32) >> torch.arange(8).reshape(8, 1)) & 1   # (N,nb,8,32)
        q = low.reshape(N, nb, 8, 32) - torch.where(high == 1, 0, 4)
        y = dl * q.reshape(N, nb, 16, 16).to(f)
    elif t.name in ("q4_k", "q5_k"):
        d, dmin = _half(x[..., 0:2])[..., None], _half(x[..., 2:4])[..., None]
        sc, mn = _scale_min_k4(x[..., 4:16])
        d1 = (d * sc.to(f))[..., None]                         # (N, nb, 8, 1)
        m1 = (dmin * mn.to(f))[..., None]
        qs = i64[..., -128:].reshape(N, nb, 4, 1, 32)
        q = (qs >> torch.tensor([0, 4]).reshape(2, 1)) & 15   # (N, nb, 4, 2, 32)
        if t.name == "q5_k":
            qh = i64[..., 16:48].reshape(N, nb, 1, 1, 32)
            shifts = (2 * torch.arange(4).reshape(4, 1, 1) + torch.arange(2).reshape(1, 2, 1))
            q = q + torch.where(((qh >> shifts) & 1) == 1, 16, 0)
        y = d1 * q.reshape(N, nb, 8, 32).to(f) - m1
    elif t.name == "q6_k":
        ql, qh = i64[..., 0:128], i64[..., 128:192]
        sc = x[..., 192:208].contiguous().view(torch.int8).to(f)
        d = _half(x[..., 208:210])[..., None]
        ql = ql.reshape(N, nb, 2, 2, 32)                       # half, first/second 32 bytes
        qh = qh.reshape(N, nb, 2, 1, 32)
        low = torch.stack([ql[..., 0, :] & 15, ql[..., 1, :] & 15,
                           ql[..., 0, :] >> 4, ql[..., 1, :] >> 4], dim=-2)  # (N,nb,2,4,32)
        high = (qh >> (2 * torch.arange(4)).reshape(4, 1)) & 3
        q = (low | (high << 4)) - 32
        y = (d * sc)[..., None] * q.reshape(N, nb, 16, 16).to(f)
    else:  # pragma: no cover
        raise AssertionError(t.name)
    return y.reshape(N, nb * t.block)


def dequantize_params(p: dict, fmt: str) -> torch.Tensor:
    """dequantize(pack(p, fmt), fmt): the weights that p describes."""
    return dequantize(pack(p, fmt), fmt)
