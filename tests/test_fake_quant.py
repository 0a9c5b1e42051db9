"""lowbit weight fake quantization / quantize / dequantize against tests/reference.py, with the
scales in float32 and rounded to float16 / bfloat16 (QuantSpec.scale_dtype, FORMATS.md 1.6).

The reference (FORMATS.md section 1, plain PyTorch autograd) is the oracle; data comes from
_testutil.make_weight, which keeps every element away from rounding boundaries so that correct
implementations with different float32 round-off can never disagree on a code.
"""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from _testutil import (
    assert_within_ulps,
    describe_mismatch,
    grad_scale,
    make_weight,
    near_tie_masks,
    packed_row_bytes,
    resolve_group,
    unpack_codes,
)
from reference import (
    ALL_SPECS,
    SCALE_DTYPES,
    STE_MODES,
    ref_codes,
    ref_decode,
    ref_fake_quant,
    ref_params,
    round_scale,
)

lowbit = pytest.importorskip("lowbit")

FMT_CODE = {"int": 0, "nf": 1, "fp": 2}
STE_CODE = {"bitdistiller": 0, "identity": 1}
SPEC_IDS = [f"{f}{b}{'sym' if s else 'asym'}" for f, b, s in ALL_SPECS]
GROUPS = [32, 64, 128, -1]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f32", "bf16", "f16"]
SHAPES = [(3, 128), (17, 256), (64, 384)]


def qspec(fmt, bits, group_size, sym, sd="float32"):
    return lowbit.QuantSpec(format=fmt, bits=bits, group_size=group_size, symmetric=sym,
                            scale_dtype=sd)


def run_impl(w, spec, ste="bitdistiller", up=None):
    x = w.detach().clone().requires_grad_(True)
    Q = lowbit.fake_quantize(x, spec, ste=ste)
    if up is None:
        return Q.detach(), None
    Q.backward(up)
    return Q.detach(), x.grad


def run_ref(w, fmt, bits, g, sym, ste="bitdistiller", up=None, sd="float32"):
    x = w.detach().cpu().clone().requires_grad_(True)
    Q = ref_fake_quant(x, fmt, bits, g, sym, ste, scale_dtype=sd)
    if up is None:
        return Q.detach(), None
    Q.backward(up.cpu())
    return Q.detach(), x.grad


def check_forward(got, exp, dtype, what):
    assert got.dtype == dtype, f"{what}: dtype {got.dtype} != {dtype}"
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    got = got.cpu()
    if dtype == torch.float32:
        torch.testing.assert_close(
            got, exp, rtol=1e-5, atol=1e-6 * grad_scale(exp), equal_nan=True,
            msg=lambda m: f"{what}: forward: {m}\n{describe_mismatch(got, exp)}",
        )
    else:
        assert_within_ulps(got, exp, dtype, n_ulp=1, what=f"{what}: forward")


def check_grad(got, exp, dtype, what):
    assert got is not None, f"{what}: no gradient reached w"
    assert got.dtype == dtype, f"{what}: grad dtype {got.dtype} != {dtype}"
    got = got.cpu()
    scale = grad_scale(exp)
    if dtype == torch.float32:
        torch.testing.assert_close(
            got, exp, rtol=1e-5, atol=1e-6 * scale,
            msg=lambda m: f"{what}: grad: {m}\n{describe_mismatch(got, exp)}",
        )
    else:
        assert_within_ulps(got, exp, dtype, n_ulp=2, extra_atol=1e-5 * scale, what=f"{what}: grad")


# =============================================================================================
# Registration / metadata
# =============================================================================================
def test_ops_registered():
    for name in ("fake_quant", "quantize", "dequantize"):
        assert hasattr(torch.ops.lowbit, name), f"torch.ops.lowbit.{name} missing"


def test_build_info():
    info = lowbit.build_info()
    assert isinstance(info, dict)
    for key in ("version", "torch_version", "cuda_built", "cuda_archs", "cpu_isa"):
        assert key in info, f"build_info() lacks {key!r}: {info}"
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["torch_version"], str) and info["torch_version"]
    assert isinstance(info["cuda_built"], bool)
    assert isinstance(info["cuda_archs"], (list, tuple, str))
    assert isinstance(info["cpu_isa"], str) and info["cpu_isa"]
    if not info["cuda_built"]:
        assert not info["cuda_archs"]


def test_quantspec_defaults_and_frozen():
    s = lowbit.QuantSpec()
    assert (s.format, s.bits, s.group_size, s.symmetric) == ("int", 4, 128, False)
    assert dataclasses.is_dataclass(s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bits = 3
    assert lowbit.QuantSpec("nf", 4, 64, True) == qspec("nf", 4, 64, True)
    hash(s)


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_quantspec_accepts_table(fmt, bits, sym):
    for g in (-1, 1, 32, 128, 96):
        qspec(fmt, bits, g, sym)


# =============================================================================================
# Forward / backward vs reference: the full cross product
# =============================================================================================
@pytest.mark.parametrize("ste", STE_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_fake_quant_matches_reference(fmt, bits, sym, group_size, dtype, ste, gen):
    spec = qspec(fmt, bits, group_size, sym)
    for shape in SHAPES:
        what = f"{fmt}{bits} sym={sym} g={group_size} {dtype} ste={ste} shape={shape}"
        w = make_weight(shape, fmt, bits, group_size, sym, dtype=dtype, gen=gen)
        w_before = w.clone()
        up = torch.randn(shape, generator=gen).to(dtype)
        Qi, gi = run_impl(w, spec, ste, up)
        Qr, gr = run_ref(w, fmt, bits, group_size, sym, ste, up)
        assert torch.equal(w, w_before), f"{what}: input modified"
        check_forward(Qi, Qr, dtype, what)
        check_grad(gi, gr, dtype, what)


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_fake_quant_float32_exact_on_tie_free_data(fmt, bits, sym, gen):
    """Stricter than the contract (1e-5) but what formats.h promises: IEEE float32 arithmetic in
    FORMATS.md's order gives the reference's forward values bit for bit."""
    for shape, g in (((17, 256), 64), ((8, 384), -1)):
        w = make_weight(shape, fmt, bits, g, sym, gen=gen)
        Qi, _ = run_impl(w, qspec(fmt, bits, g, sym))
        Qr, _ = run_ref(w, fmt, bits, g, sym)
        assert torch.equal(Qi, Qr), describe_mismatch(Qi, Qr)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_identity_ste_gradient_is_upstream(fmt, bits, sym, dtype, gen):
    spec = qspec(fmt, bits, 32, sym)
    w = make_weight((9, 160), fmt, bits, 32, sym, dtype=dtype, gen=gen)
    up = torch.randn(9, 160, generator=gen).to(dtype)
    Qi, gi = run_impl(w, spec, "identity", up)
    Qb, _ = run_impl(w, spec, "bitdistiller", None)
    assert torch.equal(gi, up)
    assert torch.equal(Qi, Qb), "ste must not change the forward values"


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_bitdistiller_gradient_reaches_group_extremes(fmt, bits, sym, gen):
    """The max/min (or max|.|) elements receive the scale gradient, not just the upstream one."""
    N, K, g = 6, 128, 32
    spec = qspec(fmt, bits, g, sym)
    w = make_weight((N, K), fmt, bits, g, sym, gen=gen)
    up = torch.randn(N, K, generator=gen)
    _, gi = run_impl(w, spec, "bitdistiller", up)
    _, gr = run_ref(w, fmt, bits, g, sym, "bitdistiller", up)
    xg = w.reshape(N, K // g, g)
    if sym:
        ext = [xg.abs().argmax(-1)]
    else:
        ext = [xg.argmax(-1), xg.argmin(-1)]
    gig, grg, upg = (t.reshape(N, K // g, g) for t in (gi, gr, up))
    n_checked = 0
    for idx in ext:
        a = gig.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        b = grg.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        u = upg.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * grad_scale(gr))
        moved = (b - u).abs() > 1e-4 * grad_scale(gr)  # reference: scale gradient is there
        n_checked += int(moved.sum())
        assert torch.all((a - u).abs()[moved] > 0), "scale gradient missing at a group extreme"
    assert n_checked > 0


# =============================================================================================
# Edge data: exact ties (R / rne), IEEE division, tiny and zero groups, duplicated extremes.
# make_weight avoids rounding boundaries, so these cases are built by hand.
# =============================================================================================
INT_SPECS = [(b, s) for b in (2, 3, 4, 8) for s in (False, True)]


def _exact_tie_weight(bits, sym, gen, N=8):
    """Groups of 32 with power-of-two scales s and elements at exact half-integers of s, so that
    x / s is exactly k + 0.5 (R rounds half away from zero) and, for asym, -min/s is exactly
    k0 + 0.5 (the zero point rounds half to even)."""
    g = 32
    rows = []
    for _ in range(N):
        e = int(torch.randint(-6, 3, (1,), generator=gen))
        s = 2.0**e
        if sym:
            qpos = 2 ** (bits - 1) - 1
            amax = qpos * s
            j = torch.randint(-qpos, qpos, (g,), generator=gen).double() + 0.5
            x = j * s
            x[0] = amax
            x[1] = -amax if qpos > 1 else x[1]
        else:
            qmax = 2**bits - 1
            k0 = int(torch.randint(0, qmax, (1,), generator=gen))
            mn = -(k0 + 0.5) * s
            mx = mn + qmax * s
            j = torch.randint(-(k0 + 1), qmax - k0, (g,), generator=gen).double() + 0.5
            x = torch.clamp(j * s, mn, mx)
            x[0], x[1] = mn, mx
        rows.append(x[torch.randperm(g, generator=gen)])
    return torch.stack(rows).float()


@pytest.mark.parametrize("bits,sym", INT_SPECS)
def test_int_exact_ties_round_half_away_zero_point_half_even(bits, sym, gen):
    w = _exact_tie_weight(bits, sym, gen)
    up = torch.randn(w.shape, generator=gen)
    spec = qspec("int", bits, 32, sym)
    Qi, gi = run_impl(w, spec, "bitdistiller", up)
    Qr, gr = run_ref(w, "int", bits, 32, sym, "bitdistiller", up)
    assert torch.equal(Qi, Qr), f"int{bits} sym={sym}: " + describe_mismatch(Qi, Qr)
    check_grad(gi, gr, torch.float32, f"int{bits} sym={sym} exact ties")
    qw = lowbit.quantize(w, spec)
    assert torch.equal(unpack_codes(qw.codes, 32, bits), ref_codes(w, "int", bits, 32, sym))
    if not sym:
        assert torch.equal(qw.zeros, ref_params(w, "int", bits, 32, sym)["zeros"])
    assert torch.equal(lowbit.dequantize(qw), Qi)


def _near_tie_weight(bits, sym, gen, N=16, g=64):
    """Non-power-of-two scales and elements within a few float32 ulps of (k + 0.5) * s."""
    w = torch.randn(N, g, generator=gen) * torch.pow(10.0, torch.empty(N, 1).uniform_(-2, 1, generator=gen))
    with torch.no_grad():
        if sym:
            qpos = 2 ** (bits - 1) - 1
            s = w.abs().amax(-1, keepdim=True).clamp(min=1e-5) / qpos
        else:
            qmax = 2**bits - 1
            mx, mn = w.amax(-1, keepdim=True), w.amin(-1, keepdim=True)
            s = (mx - mn).clamp(min=1e-5) / qmax
        k = torch.round(w / s + 0.5) - 0.5  # nearest half-integer
        cand = (k * s).float()
        steps = torch.randint(-3, 4, cand.shape, generator=gen).float()
        cand = cand + steps * torch.abs(cand) * 2.0**-23
        is_ext = (w == w.amax(-1, keepdim=True)) | (w == w.amin(-1, keepdim=True))
        if sym:
            is_ext = w.abs() == w.abs().amax(-1, keepdim=True)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        ok = ~is_ext & (cand > lo) & (cand < hi)
        if sym:
            ok = ok & (cand.abs() < w.abs().amax(-1, keepdim=True))
    return torch.where(ok, cand, w)


@pytest.mark.parametrize("bits,sym", INT_SPECS)
def test_int_near_ties_follow_ieee_division(bits, sym, gen):
    """Stricter than the 1e-5 contract: FORMATS.md writes x / s in float32 and formats.h promises
    IEEE division; elements a few ulps from a rounding boundary must round exactly like the
    reference's float32 division (a reciprocal multiply would flip some codes)."""
    w = _near_tie_weight(bits, sym, gen)
    spec = qspec("int", bits, 64, sym)
    Qi, _ = run_impl(w, spec)
    Qr, _ = run_ref(w, "int", bits, 64, sym)
    assert torch.equal(Qi, Qr), f"int{bits} sym={sym}: " + describe_mismatch(Qi, Qr)
    assert torch.equal(unpack_codes(lowbit.quantize(w, spec).codes, 64, bits), ref_codes(w, "int", bits, 64, sym))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_tiny_and_zero_groups(fmt, bits, sym, dtype, gen):
    """Scale floors (1e-5 INT, 1e-8 levels): groups of magnitude 1e-10..1e-4 and all-zero groups."""
    g = 32
    rows = []
    for mag in (1e-10, 1e-8, 3e-7, 1e-6, 1e-5, 1e-4):
        rows.append(make_weight((1, 4 * g), fmt, bits, g, sym, dtype=dtype, gen=gen, scale=mag))
    w = torch.cat(rows)
    w[2, :g] = 0  # an all-zero group
    w[3, g:2 * g] = w[3, g:2 * g].abs()  # an all-positive group
    w[4, 2 * g:3 * g] = -w[4, 2 * g:3 * g].abs()  # an all-negative group
    up = torch.randn(w.shape, generator=gen).to(dtype)
    spec = qspec(fmt, bits, g, sym)
    for ste in STE_MODES:
        what = f"{fmt}{bits} sym={sym} {dtype} ste={ste} tiny groups"
        Qi, gi = run_impl(w, spec, ste, up)
        Qr, gr = run_ref(w, fmt, bits, g, sym, ste, up)
        assert torch.equal(Qi, Qr), f"{what}: " + describe_mismatch(Qi, Qr)
        check_grad(gi, gr, dtype, what)
    assert torch.equal(lowbit.dequantize(lowbit.quantize(w, spec)), Qi)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_gradient_ties_at_group_extremes(fmt, bits, sym, dtype, gen):
    """amax/amin split the scale gradient evenly among tied extremes (FORMATS.md 1.5)."""
    N, K, g = 6, 128, 32
    w = make_weight((N, K), fmt, bits, g, sym, dtype=dtype, gen=gen).float().reshape(N, K // g, g)
    mx, mn = w.amax(-1), w.amin(-1)
    w[:, :, 5] = mx
    w[:, :, 9] = mx
    w[:, :, 11] = mn
    if sym:
        w[:, :, 13] = -torch.where(mx.abs() >= mn.abs(), mx, mn)  # |.| tie of opposite sign
    w = w.reshape(N, K).to(dtype)
    up = torch.randn(N, K, generator=gen).to(dtype)
    spec = qspec(fmt, bits, g, sym)
    Qi, gi = run_impl(w, spec, "bitdistiller", up)
    Qr, gr = run_ref(w, fmt, bits, g, sym, "bitdistiller", up)
    check_forward(Qi, Qr, dtype, f"{fmt}{bits} sym={sym} tied extremes")
    check_grad(gi, gr, dtype, f"{fmt}{bits} sym={sym} tied extremes")


# =============================================================================================
# Scale precision: QuantSpec.scale_dtype (FORMATS.md 1.6). Every scale is computed in float32
# with its floor, then rounded to the scale dtype; z, codes and Q(w) use the rounded value.
# =============================================================================================
SCALE_DTS = ["float16", "bfloat16"]
SD_GROUPS = [1, 2, 8, 32, 64, 128, -1]
SD_CASES = [((9, 128), torch.float32), ((5, 256), torch.bfloat16), ((4, 128), torch.float16)]


def test_quantspec_scale_dtype():
    C = lowbit._ops._C
    assert lowbit.QuantSpec().scale_dtype == "float32"
    assert lowbit.QuantSpec("int", 4, 128).name == "int4-g128-asym"  # float32: name unchanged
    assert qspec("int", 2, 64, False, "float16").name == "int2-g64-asym-f16scale"
    assert qspec("nf", 3, -1, False, "bfloat16").name == "nf3-gK-bf16scale"
    assert qspec("fp", 4, 32, True, "float16").name == "fp4-g32-sym-f16scale"
    # a torch dtype is stored as its name (so the spec stays JSON-serialisable)
    assert lowbit.QuantSpec(scale_dtype=torch.float16) == qspec("int", 4, 128, False, "float16")
    assert lowbit.QuantSpec(scale_dtype=torch.bfloat16).scale_dtype == "bfloat16"
    assert lowbit.QuantSpec(scale_dtype=torch.float32) == lowbit.QuantSpec()
    assert qspec("int", 4, 128, False, "float16") != lowbit.QuantSpec()
    assert [qspec("int", 4, 128, False, sd).scale_code for sd in SCALE_DTYPES] == \
        [C.DT_F32, C.DT_F16, C.DT_BF16]
    assert [qspec("int", 4, 128, False, sd).scale_torch_dtype for sd in SCALE_DTYPES] == \
        list(SCALE_DTYPES.values())
    assert dataclasses.asdict(qspec("nf", 4, 64, True, "float16"))["scale_dtype"] == "float16"


@pytest.mark.parametrize("bad,exc", [(16, ValueError), (None, ValueError), (b"float16", ValueError),
                                     (torch.float64, ValueError), (torch.int8, ValueError),
                                     ("half", ValueError), ("fp16", ValueError),
                                     ("Float16", ValueError), ("float64", ValueError)])
def test_quantspec_rejects_scale_dtype(bad, exc):
    with pytest.raises(exc, match=r"\bscale_dtype\b"):
        lowbit.QuantSpec(scale_dtype=bad)


def _check_scale_dtype_case(w, fmt, bits, g, sym, sd, dtype, gen, what):
    """fake_quantize (both STEs, values and gradients) against the reference with scale_dtype,
    and quantize: scales/zeros/codes the reference's, scales exact in sd, and
    dequantize(quantize(w)) == fake_quantize(w) bit for bit."""
    spec = qspec(fmt, bits, g, sym, sd)
    up = torch.randn(w.shape, generator=gen).to(dtype)
    for ste in STE_MODES:
        Qi, gi = run_impl(w, spec, ste, up)
        Qr, gr = run_ref(w, fmt, bits, g, sym, ste, up, sd)
        if dtype == torch.float32:  # same float32 expression, same rounded scale: bit for bit
            assert torch.equal(Qi, Qr), f"{what} ste={ste}: " + describe_mismatch(Qi, Qr)
        else:
            check_forward(Qi, Qr, dtype, f"{what} ste={ste}")
        check_grad(gi, gr, dtype, f"{what} ste={ste}")
    qw = lowbit.quantize(w, spec)
    assert qw.spec == spec, what
    p = ref_params(w, fmt, bits, g, sym, scale_dtype=sd)
    assert torch.equal(qw.scales, p["scales"]), f"{what}: scales " + describe_mismatch(qw.scales, p["scales"])
    assert torch.equal(qw.scales.to(SCALE_DTYPES[sd]).float(), qw.scales), f"{what}: scales not exact in {sd}"
    assert bool((qw.scales > 0).all()), f"{what}: a scale is 0"
    if p["zeros"] is not None:
        assert torch.equal(qw.zeros, p["zeros"]), f"{what}: zeros"
    codes = unpack_codes(qw.codes, w.shape[1], bits)
    assert torch.equal(codes, ref_codes(w, fmt, bits, g, sym, scale_dtype=sd)), f"{what}: codes"
    D = lowbit.dequantize(qw)
    assert torch.equal(D, Qi), f"{what}: dequantize(quantize(w)) != fake_quantize(w): " + describe_mismatch(D, Qi)
    return qw


@pytest.mark.parametrize("sd", SCALE_DTS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_scale_dtype_matches_reference(fmt, bits, sym, sd, gen):
    """Every format x bits x group size (1 .. K) x scale dtype, weights in float32/bf16/f16."""
    for g in SD_GROUPS:
        for shape, dtype in SD_CASES:
            what = f"{fmt}{bits} sym={sym} g={g} scale_dtype={sd} {dtype} shape={shape}"
            w = make_weight(shape, fmt, bits, g, sym, dtype=dtype, gen=gen, scale_dtype=sd)
            _check_scale_dtype_case(w, fmt, bits, g, sym, sd, dtype, gen, what)


@pytest.mark.parametrize("sd", SCALE_DTS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_scale_dtype_tiny_groups(fmt, bits, sym, sd, gen):
    """Groups of magnitude 1e-12 .. 1e-4 (below, at and above the scale floors), all-zero, all-
    positive and all-negative groups, in groups of 4 and 32. In float16 a scale at or below
    2^-25 rounds to 0 and becomes 2^-24, the smallest subnormal (the level formats' floor 1e-8
    does; the INT floors 1e-5/qmax stay above it and round to a subnormal multiple of 2^-24)."""
    for g in (4, 32):
        rows = [make_weight((1, 4 * g), fmt, bits, g, sym, gen=gen, scale=mag, scale_dtype=sd)
                for mag in (1e-12, 1e-9, 2e-8, 1e-7, 1e-6, 1e-5, 1e-4)]
        w = torch.cat(rows)
        w[2, :g] = 0
        w[3, g:2 * g] = w[3, g:2 * g].abs()
        w[4, 2 * g:3 * g] = -w[4, 2 * g:3 * g].abs()
        qw = _check_scale_dtype_case(w, fmt, bits, g, sym, sd, torch.float32, gen,
                                     f"{fmt}{bits} sym={sym} g={g} scale_dtype={sd} tiny groups")
        s32 = ref_params(w, fmt, bits, g, sym)["scales"]
        under = s32 <= 2.0 ** -25
        if sd == "float16" and fmt != "int":
            assert bool(under.any()), "no scale underflowed: the case tests nothing"
            assert bool((qw.scales[under] == 2.0 ** -24).all()), qw.scales[under]
        if sd == "float16" and fmt == "int":
            assert not bool(under.any())  # the INT floors keep every scale above 2^-25
            assert bool((qw.scales < 2.0 ** -14).any())  # ... but some are float16 subnormals


# A scale above its dtype's largest finite value is clamped to it (FORMATS.md 1.6), so u = x / s
# leaves [-1, 1] (u = 4.6 for a group max of 3e5 and a float16 s+ of 65504): the snap must take
# the end level (FORMATS.md 1.3), never an index past the table.
def test_saturated_float16_scale_snaps_to_the_nearest_level():
    w = torch.tensor([[-1.0, 3e5, -2.0, 0.5] * 8])
    for fmt, bits in (("nf", 3), ("fp", 3), ("fp", 4), ("nf", 4)):
        spec = qspec(fmt, bits, 32, False, "float16")
        qw = lowbit.quantize(w, spec)
        D = lowbit.dequantize(qw)
        assert D[0, 2].item() == -2.0 and D[0, 1].item() == 65504.0, (fmt, bits, D[0, :4])
        assert torch.equal(D, lowbit.fake_quantize(w, spec)), (fmt, bits)
        assert torch.equal(D, ref_fake_quant(w, fmt, bits, 32, False, scale_dtype="float16"))
        codes = unpack_codes(qw.codes, 32, bits)
        assert int(codes.max()) < 2 ** bits, (fmt, bits, codes)
        assert torch.equal(codes, ref_codes(w, fmt, bits, 32, False, scale_dtype="float16"))


@pytest.mark.parametrize("sd", SCALE_DTS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_scale_dtype_saturated_groups(fmt, bits, sym, sd, gen, restore_isa):
    """Groups whose scale saturates at the scale dtype's largest value, every format x bits x
    symmetric, on every ISA: values, gradients, codes and scales the reference's. float16:
    magnitudes 1e4 .. 1e30 (s = 65504 for the level formats from about 6.6e4, for INT where
    the range over qmax passes it); bfloat16: a group extreme of 3.4e38 rounds past 3.3895e38
    (the level formats; an INT scale is the range over qmax and cannot get there)."""
    g = 32
    if sd == "float16":
        w = torch.cat([make_weight((1, 4 * g), fmt, bits, g, sym, gen=gen, scale=mag,
                                   scale_dtype=sd) for mag in (1e4, 5e4, 1e5, 1e7, 1e30)])
    else:
        w = make_weight((4, 4 * g), fmt, bits, g, sym, gen=gen, scale=1e36, scale_dtype=sd)
        if fmt != "int":
            w.view(4, 4, g)[:, :, 0] = torch.tensor([3.4e38, -3.4e38]).repeat(8).view(4, 4)
            bad, bad_g = near_tie_masks(w.view(4, 4, g), fmt, bits, sym, scale_dtype=sd)
            w.view(4, 4, g)[bad & ~(w.view(4, 4, g).abs() == 3.4e38)] = 0.0  # 0: no tie
    s32 = ref_params(w, fmt, bits, g, sym)["scales"]
    assert bool((s32 > torch.finfo(SCALE_DTYPES[sd]).max).any()) or (fmt == "int" and sd == "bfloat16"), \
        "no scale saturates: the case tests nothing"
    spec = qspec(fmt, bits, g, sym, sd)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        what = f"{fmt}{bits} sym={sym} scale_dtype={sd} saturated ({isa})"
        if sd == "float16":
            qw = _check_scale_dtype_case(w, fmt, bits, g, sym, sd, torch.float32, gen, what)
        else:  # near 3.4e38 the float32 reference's autograd overflows (s^2): values only
            Q = lowbit.fake_quantize(w, spec)
            assert torch.equal(Q, ref_fake_quant(w, fmt, bits, g, sym, scale_dtype=sd)), what
            qw = lowbit.quantize(w, spec)
            assert torch.equal(qw.scales, ref_params(w, fmt, bits, g, sym, scale_dtype=sd)["scales"])
            assert torch.equal(unpack_codes(qw.codes, w.shape[1], bits),
                               ref_codes(w, fmt, bits, g, sym, scale_dtype=sd)), what
            assert torch.equal(lowbit.dequantize(qw), Q), what
            _, gi = run_impl(w, spec, "bitdistiller", torch.randn(w.shape, generator=gen))
            assert bool(torch.isfinite(gi).all()), f"{what}: a gradient is not finite"
        assert int(unpack_codes(qw.codes, w.shape[1], bits).max()) < 2 ** bits, what


def _one_scale_rows(values):
    """nf4-sym weight rows whose single group's scale is exactly each value (s = max|x|, the
    value itself; the other elements are 0)."""
    w = torch.zeros(len(values), 32)
    w[:, 0] = torch.tensor(values, dtype=torch.float32)
    return w


# float32 values at and around every rounding boundary of each scale dtype
EDGE_SCALES = {
    "float16": [1.0, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 / 3, 2.0 ** -14, 2.0 ** -14 * (1 - 2.0 ** -12),
                2.0 ** -25, 2.0 ** -25 * (1 + 2.0 ** -20), 3 * 2.0 ** -25, 2.0 ** -24, 1e-8, 6.1e-5,
                65504.0, 65519.0, 65520.0, 7e4, 1e30, 3.4e38],
    "bfloat16": [1.0, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1 / 3, 1e-8, 1.17549435e-38 * 1e31, 3.3e38,
                 3.39e38, 3.4e38, 3.4028234e38],
}


@pytest.mark.parametrize("sd", SCALE_DTS)
def test_scale_rounding_at_dtype_boundaries(sd, gen, restore_isa):
    """The rounding itself (formats.h lb_round_scale) against torch's conversion (the reference's
    round_scale): ties to even, the float16 subnormal range, underflow to the smallest subnormal,
    overflow (saturating at the largest finite value) and a log-uniform sweep over float32's
    range; on every CPU ISA, and fake_quantize uses the rounded scale (Q of each group's max is
    the scale itself where the rounding moved it less than the top level's half-gap)."""
    sweep = torch.pow(10.0, torch.empty(2000).uniform_(-8, 38.5, generator=gen)).clamp(max=3.4e38)
    vals = EDGE_SCALES[sd] + sweep.tolist()
    w = _one_scale_rows(vals)
    exp = round_scale(torch.tensor(vals, dtype=torch.float32).clamp(min=1e-8), sd)
    assert bool(torch.isfinite(exp).all()) and bool((exp > 0).all())
    spec = qspec("nf", 4, 32, True, sd)
    Qr = ref_fake_quant(w, "nf", 4, 32, True, scale_dtype=sd)
    # where the rounded scale is at most the value (rounded down, or saturated: u = x/s >= 1 is
    # past the top level's midpoint) Q is the scale itself; the reference's argmin snap cannot
    # tell -1 from 1 for u ~ 1e30, so those rows are set here
    down = w[:, 0] >= exp
    Qr[:, 0] = torch.where(down, exp, Qr[:, 0])
    assert bool(down.any()) and bool((~down).any())
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        qw = lowbit.quantize(w, spec)
        assert torch.equal(qw.scales[:, 0], exp), f"isa={isa}: " + describe_mismatch(qw.scales[:, 0], exp)
        Q = lowbit.fake_quantize(w, spec)
        assert torch.equal(Q, Qr), f"isa={isa}: " + describe_mismatch(Q, Qr)
        assert torch.equal(lowbit.dequantize(qw), Q)


def test_float16_and_bfloat16_grids_differ(gen):
    """The two dtypes round differently (11 vs 8 significant bits): each spec's scales are exact
    in its own dtype, within half an ulp of the float32 scale, and not those of the other."""
    w = make_weight((16, 256), "int", 4, 32, False, gen=gen)
    s = {sd: lowbit.quantize(w, qspec("int", 4, 32, False, sd)).scales for sd in SCALE_DTYPES}
    assert torch.equal(s["float16"].half().float(), s["float16"])
    assert torch.equal(s["bfloat16"].bfloat16().float(), s["bfloat16"])
    rel = {sd: ((s[sd] - s["float32"]).abs() / s["float32"]) for sd in SCALE_DTS}
    assert rel["float16"].max() <= 2.0 ** -11 and rel["bfloat16"].max() <= 2.0 ** -8
    # (a float32 scale rounds to the same value in both about one time in eight, and is exact in
    # float16 about one time in 8192: over 128 groups some always differ)
    assert bool((s["float16"] != s["bfloat16"]).any()) and bool((s["float16"] != s["float32"]).any())
    Q = {sd: lowbit.fake_quantize(w, qspec("int", 4, 32, False, sd)) for sd in SCALE_DTYPES}
    assert not torch.equal(Q["float16"], Q["bfloat16"]) and not torch.equal(Q["float16"], Q["float32"])
    # float32 (the default) is exactly the spec without the field
    assert torch.equal(Q["float32"], lowbit.fake_quantize(w, lowbit.QuantSpec("int", 4, 32)))


def test_scale_dtype_rounding_has_identity_gradient(gen):
    """ste="bitdistiller" with scale_dtype: the gradient is FORMATS.md 1.5's with the rounded
    scale in the forward expressions and the scale gradient passed through the rounding: the
    analytic gradient of the group extremes is that of the float32 spec evaluated on the rounded
    grid, not zero (a detached rounding would drop it)."""
    w = make_weight((8, 64), "nf", 3, 32, False, gen=gen, scale_dtype="float16")
    up = torch.randn(8, 64, generator=gen)
    _, g16 = run_impl(w, qspec("nf", 3, 32, False, "float16"), "bitdistiller", up)
    _, gid = run_impl(w, qspec("nf", 3, 32, False, "float16"), "identity", up)
    _, gr = run_ref(w, "nf", 3, 32, False, "bitdistiller", up, "float16")
    check_grad(g16, gr, torch.float32, "nf3 f16 scales")
    xg = w.reshape(8, 2, 32)
    ext = (xg == xg.amax(-1, keepdim=True)) | (xg == xg.amin(-1, keepdim=True))
    moved = ((g16 - gid).reshape(8, 2, 32).abs() > 1e-6)
    assert bool(moved[ext].any()) and not bool(moved[~ext].any())


# =============================================================================================
# Property test (hypothesis)
# =============================================================================================
pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def fq_cases(draw):
    fmt, bits, sym = draw(st.sampled_from(ALL_SPECS))
    g = draw(st.sampled_from([1, 2, 3, 8, 16, 24, 32, 48, 64, 128, -1]))
    N = draw(st.integers(1, 9))
    K = draw(st.integers(1, 300)) if g == -1 else g * draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([None, 1e-3, 0.05, 1.0, 40.0]))
    ste = draw(st.sampled_from(STE_MODES))
    sd = draw(st.sampled_from(list(SCALE_DTYPES)))
    seed = draw(st.integers(0, 2**31 - 1))
    return fmt, bits, sym, g, N, K, dtype, scale, ste, sd, seed


@given(fq_cases())
def test_property_fake_quant_and_pack(case):
    fmt, bits, sym, g, N, K, dtype, scale, ste, sd, seed = case
    what = f"{fmt}{bits} sym={sym} g={g} ({N},{K}) {dtype} scale={scale} ste={ste} scale_dtype={sd}"
    gen = torch.Generator().manual_seed(seed)
    w = make_weight((N, K), fmt, bits, g, sym, dtype=dtype, gen=gen, scale=scale, scale_dtype=sd)
    up = torch.randn(N, K, generator=gen).to(dtype)
    spec = qspec(fmt, bits, g, sym, sd)
    Qi, gi = run_impl(w, spec, ste, up)
    Qr, gr = run_ref(w, fmt, bits, g, sym, ste, up, sd)
    check_forward(Qi, Qr, dtype, what)
    check_grad(gi, gr, dtype, what)
    qw = lowbit.quantize(w, spec)
    D = lowbit.dequantize(qw)
    assert D.dtype == dtype and D.shape == w.shape
    assert torch.equal(D, Qi), f"{what}: dequantize(quantize(w)) != fake_quantize(w): " + describe_mismatch(D, Qi)
    codes = unpack_codes(qw.codes, K, bits)
    assert torch.equal(codes, ref_codes(w, fmt, bits, g, sym, scale_dtype=sd)), f"{what}: codes"


# =============================================================================================
# Packed storage
# =============================================================================================
def check_packed(qw, w, fmt, bits, g, sym, what):
    N, K = w.shape
    G = K // resolve_group(K, g)
    assert isinstance(qw, lowbit.QuantizedWeight)
    assert qw.shape == torch.Size((N, K)) and isinstance(qw.shape, torch.Size), what
    assert qw.dtype == w.dtype, what
    assert qw.codes.dtype == torch.uint8, f"{what}: codes dtype {qw.codes.dtype}"
    assert tuple(qw.codes.shape) == (N, packed_row_bytes(K, bits)), f"{what}: codes shape {tuple(qw.codes.shape)}"
    assert qw.scales.dtype == torch.float32, f"{what}: scales dtype {qw.scales.dtype}"
    ref_p = ref_params(w.cpu(), fmt, bits, g, sym)
    exp_scale_shape = (N, G, 2) if (fmt != "int" and not sym) else (N, G)
    assert tuple(qw.scales.shape) == exp_scale_shape, f"{what}: scales shape {tuple(qw.scales.shape)}"
    torch.testing.assert_close(qw.scales.cpu(), ref_p["scales"], rtol=1e-6, atol=0, msg=lambda m: f"{what}: scales: {m}")
    if fmt == "int" and not sym:
        assert qw.zeros is not None and qw.zeros.dtype == torch.uint8, f"{what}: zeros"
        assert tuple(qw.zeros.shape) == (N, G), f"{what}: zeros shape {tuple(qw.zeros.shape)}"
        assert torch.equal(qw.zeros.cpu(), ref_p["zeros"]), f"{what}: zeros: " + describe_mismatch(qw.zeros.cpu(), ref_p["zeros"])
    else:
        assert qw.zeros is None, f"{what}: zeros should be None"
    codes = unpack_codes(qw.codes.cpu(), K, bits)
    rc = ref_codes(w.cpu(), fmt, bits, g, sym)
    assert torch.equal(codes, rc), f"{what}: codes: " + describe_mismatch(codes, rc)
    nbytes = sum(t.numel() * t.element_size() for t in (qw.codes, qw.scales, qw.zeros) if t is not None)
    assert qw.nbytes == nbytes, f"{what}: nbytes {qw.nbytes} != {nbytes}"
    assert qw.bits_per_weight == pytest.approx(nbytes * 8 / (N * K)), what


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_pack_round_trip(fmt, bits, sym, group_size, dtype, gen):
    spec = qspec(fmt, bits, group_size, sym)
    for shape in SHAPES + [(5, 640)]:
        what = f"{fmt}{bits} sym={sym} g={group_size} {dtype} shape={shape}"
        w = make_weight(shape, fmt, bits, group_size, sym, dtype=dtype, gen=gen)
        qw = lowbit.quantize(w, spec)
        assert qw.spec == spec
        check_packed(qw, w, fmt, bits, group_size, sym, what)
        D = lowbit.dequantize(qw)
        F = lowbit.fake_quantize(w, spec)
        assert D.dtype == dtype and D.shape == w.shape, what
        assert torch.equal(D, F), f"{what}: dequantize != fake_quantize: " + describe_mismatch(D, F)
        # and both equal the reference decode of the reference codes (cast to dtype)
        R = ref_decode(ref_codes(w, fmt, bits, group_size, sym), ref_params(w, fmt, bits, group_size, sym),
                       fmt, bits, group_size, sym, dtype=dtype)
        check_forward(D, R, dtype, what)
        # .to() keeps everything
        qw2 = qw.to("cpu")
        assert torch.equal(lowbit.dequantize(qw2), D), what


def test_bits_per_weight_int4_g128(gen):
    w = torch.randn(256, 1024, generator=gen)
    qw = lowbit.quantize(w, lowbit.QuantSpec("int", 4, 128, False))
    exp_bytes = 256 * 512 + 256 * 8 * 4 + 256 * 8
    assert qw.nbytes == exp_bytes
    assert qw.bits_per_weight == pytest.approx(exp_bytes * 8 / (256 * 1024))
    assert qw.bits_per_weight == pytest.approx(4.3125)


def test_packed_odd_k_pads_rows(gen):
    """3-bit codes straddle bytes and K*3 is not a multiple of 8: rows are padded independently."""
    for fmt, bits, sym in (("int", 3, False), ("nf", 3, False), ("fp", 3, True)):
        w = make_weight((7, 13), fmt, bits, -1, sym, gen=gen)
        qw = lowbit.quantize(w, qspec(fmt, bits, -1, sym))
        assert tuple(qw.codes.shape) == (7, 5)
        assert torch.equal(unpack_codes(qw.codes, 13, 3), ref_codes(w, fmt, bits, -1, sym))
        assert torch.equal(lowbit.dequantize(qw), lowbit.fake_quantize(w, qw.spec))


# =============================================================================================
# Layouts, threads, ISAs
# =============================================================================================
def _noncontiguous_views(w):
    N, K = w.shape
    t = w.t().contiguous().t()  # column-major
    big = torch.zeros(N, 2 * K, dtype=w.dtype, device=w.device)
    big[:, ::2] = w
    stepped = big[:, ::2]  # stride 2 along K
    big2 = torch.zeros(2 * N + 1, K + 3, dtype=w.dtype, device=w.device)
    big2[1::2, 3:] = w
    offset = big2[1::2, 3:]  # storage offset + row stride
    for v in (t, stepped, offset):
        assert not v.is_contiguous() and torch.equal(v, w)
    return {"transposed": t, "stepped": stepped, "offset": offset}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_non_contiguous_inputs(fmt, bits, sym, dtype, gen):
    g = 32
    spec = qspec(fmt, bits, g, sym)
    w = make_weight((6, 96), fmt, bits, g, sym, dtype=dtype, gen=gen)
    up = torch.randn(6, 96, generator=gen).to(dtype)
    Q0, g0 = run_impl(w, spec, "bitdistiller", up)
    D0 = lowbit.dequantize(lowbit.quantize(w, spec))
    for name, v in _noncontiguous_views(w).items():
        x = v.detach().requires_grad_(True)
        Q = lowbit.fake_quantize(x, spec)
        Q.backward(_noncontiguous_views(up)[name])
        assert torch.equal(Q, Q0), f"{name}: forward " + describe_mismatch(Q, Q0)
        assert torch.equal(x.grad, g0), f"{name}: grad " + describe_mismatch(x.grad, g0)
        D = lowbit.dequantize(lowbit.quantize(v, spec))
        assert torch.equal(D, D0), f"{name}: dequantize"


def _everything(w, spec, up):
    out = {}
    for ste in STE_MODES:
        Q, gr = run_impl(w, spec, ste, up)
        out[f"fq_{ste}"] = Q
        out[f"grad_{ste}"] = gr
    qw = lowbit.quantize(w, spec)
    out["codes"] = qw.codes
    out["scales"] = qw.scales
    if qw.zeros is not None:
        out["zeros"] = qw.zeros
    out["deq"] = lowbit.dequantize(qw)
    return out


ISA_CASES = [((7, 96), 32), ((5, 200), -1), ((3, 120), 24), ((4, 1056), 352), ((2, 1), -1), ((64, 256), 128)]
# the same with scales rounded (FORMATS.md 1.6), tiny magnitudes included (float16 subnormals)
ISA_SD_CASES = [((7, 96), 32, "float16", None), ((3, 120), 24, "bfloat16", None),
                ((6, 64), 8, "float16", 1e-7)]


@pytest.fixture
def restore_isa():
    yield
    lowbit.set_cpu_isa("auto")


def test_cpu_isa_api(restore_isa):
    isas = lowbit.available_cpu_isas()
    assert isinstance(isas, (list, tuple)) and "scalar" in isas
    assert set(isas) <= {"scalar", "avx2", "avx512", "avxvnni", "avx512vnni"}
    for name in isas:
        lowbit.set_cpu_isa(name)
        assert lowbit.get_cpu_isa() == name
    lowbit.set_cpu_isa("auto")
    assert lowbit.get_cpu_isa() in isas
    with pytest.raises(ValueError, match=r"\bname\b|isa|ISA"):
        lowbit.set_cpu_isa("sse9")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_cpu_isas_bit_identical(fmt, bits, sym, dtype, gen, restore_isa):
    isas = lowbit.available_cpu_isas()
    cases = []
    for shape, g, sd, mag in [(sh, g, "float32", None) for sh, g in ISA_CASES] + ISA_SD_CASES:
        w = make_weight(shape, fmt, bits, g, sym, dtype=dtype, gen=gen, scale=mag, scale_dtype=sd)
        up = torch.randn(shape, generator=gen).to(dtype)
        cases.append((w, qspec(fmt, bits, g, sym, sd), up))
    lowbit.set_cpu_isa("scalar")
    base = [_everything(*c) for c in cases]
    for isa in isas:
        if isa == "scalar":
            continue
        lowbit.set_cpu_isa(isa)
        for (w, spec, _), b, c in zip(cases, base, [_everything(*c) for c in cases]):
            for key in b:
                assert torch.equal(c[key], b[key]), (
                    f"isa={isa} {spec} shape={tuple(w.shape)} {key}: " + describe_mismatch(c[key], b[key])
                )


def test_cpu_isa_env_var():
    code = "import lowbit; print(lowbit.get_cpu_isa())"
    env = dict(os.environ, LOWBIT_CPU_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "scalar"


def test_thread_count_does_not_change_results(gen):
    n0 = torch.get_num_threads()
    w = make_weight((64, 512), "nf", 4, 64, False, gen=gen)
    up = torch.randn(64, 512, generator=gen)
    spec = qspec("nf", 4, 64, False)
    try:
        torch.set_num_threads(1)
        a = _everything(w, spec, up)
        torch.set_num_threads(max(2, n0))
        b = _everything(w, spec, up)
    finally:
        torch.set_num_threads(n0)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# =============================================================================================
# Bad input
# =============================================================================================
@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(format="int", bits=5), "bits"),
        (dict(format="int", bits=1), "bits"),
        (dict(format="int", bits=16), "bits"),
        (dict(format="nf", bits=2), "bits"),
        (dict(format="nf", bits=8), "bits"),
        (dict(format="fp", bits=8), "bits"),
        (dict(format="mx", bits=4), "format"),
        (dict(format="INT8", bits=4), "format"),
        (dict(format=4, bits=4), "format"),
        (dict(group_size=0), "group_size"),
        (dict(group_size=-2), "group_size"),
        (dict(group_size=32.0), "group_size"),
    ],
)
def test_quantspec_rejects(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        lowbit.QuantSpec(**kwargs)


def _both_entry_points():
    return [
        pytest.param(lambda w, s: lowbit.fake_quantize(w, s), id="fake_quantize"),
        pytest.param(lambda w, s: lowbit.quantize(w, s), id="quantize"),
    ]


@pytest.mark.parametrize("call", _both_entry_points())
def test_group_size_must_divide_k(call):
    with pytest.raises(ValueError, match=r"group_size"):
        call(torch.randn(4, 100), lowbit.QuantSpec("int", 4, 32, False))
    with pytest.raises(ValueError, match=r"group_size"):
        call(torch.randn(4, 64), lowbit.QuantSpec("int", 4, 128, False))  # K < g


@pytest.mark.parametrize("call", _both_entry_points())
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: torch.randint(-8, 8, (4, 64), dtype=torch.int32), id="int32"),
        pytest.param(lambda: torch.randint(0, 8, (4, 64), dtype=torch.uint8), id="uint8"),
        pytest.param(lambda: torch.randn(4, 64, dtype=torch.complex64), id="complex64"),
        pytest.param(lambda: torch.zeros(4, 64, dtype=torch.bool), id="bool"),
        pytest.param(lambda: torch.randn(64), id="1d"),
        pytest.param(lambda: torch.randn(2, 4, 64), id="3d"),
        pytest.param(lambda: torch.randn(()), id="0d"),
        pytest.param(lambda: torch.randn(0, 64), id="empty_rows"),
        pytest.param(lambda: torch.randn(4, 0), id="empty_cols"),
        pytest.param(lambda: [[1.0] * 32] * 2, id="list"),
    ],
)
def test_bad_w(make, call):
    spec = lowbit.QuantSpec("int", 4, -1, False)
    with pytest.raises((ValueError, TypeError), match=r"\bw\b"):
        call(make(), spec)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_quantize_rejects_non_finite(bad, dtype):
    w = torch.randn(4, 64).to(dtype)
    w[2, 17] = bad
    with pytest.raises(ValueError, match=r"\bw\b"):
        lowbit.quantize(w, lowbit.QuantSpec("int", 4, 32, False))


@pytest.mark.parametrize("call", _both_entry_points())
@pytest.mark.parametrize(
    "spec",
    [None, {"format": "int", "bits": 4}, ("int", 4, 128, False), "int4", 4],
    ids=["None", "dict", "tuple", "str", "int"],
)
def test_bad_spec(spec, call):
    with pytest.raises(TypeError, match=r"\bspec\b"):
        call(torch.randn(4, 128), spec)


@pytest.mark.parametrize("ste", ["foo", "", "BitDistiller ", None, 0])
def test_bad_ste(ste):
    with pytest.raises((ValueError, TypeError), match=r"\bste\b"):
        lowbit.fake_quantize(torch.randn(4, 128), lowbit.QuantSpec(), ste=ste)


def test_dequantize_rejects_non_quantized_weight():
    with pytest.raises(TypeError, match=r"\bqw\b|QuantizedWeight"):
        lowbit.dequantize(torch.randn(4, 128))


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_nan_in_group_poisons_only_that_group(fmt, bits, sym, gen):
    g = 32
    w = make_weight((3, 96), fmt, bits, g, sym, gen=gen)
    w[1, 40] = float("nan")
    up = torch.randn(3, 96, generator=gen)
    x = w.clone().requires_grad_(True)
    Q = lowbit.fake_quantize(x, qspec(fmt, bits, g, sym))
    Q.backward(up)  # must not crash
    Qr, gr = run_ref(w, fmt, bits, g, sym, "bitdistiller", up)
    assert torch.isnan(Q[1, 32:64]).all(), f"NaN group not all NaN: {Q[1, 32:64]}"
    finite = torch.ones(3, 96, dtype=torch.bool)
    finite[1, 32:64] = False
    torch.testing.assert_close(Q.detach()[finite], Qr[finite], rtol=1e-5, atol=1e-6 * grad_scale(Qr[finite]))
    torch.testing.assert_close(x.grad[finite], gr[finite], rtol=1e-5, atol=1e-6 * grad_scale(gr[finite]))


def test_no_grad_and_plain_tensor(gen):
    w = torch.randn(4, 128, generator=gen)
    spec = lowbit.QuantSpec("int", 4, 32, False)
    with torch.no_grad():
        a = lowbit.fake_quantize(w.clone().requires_grad_(True), spec)
    b = lowbit.fake_quantize(w, spec)
    assert not a.requires_grad and not b.requires_grad
    assert torch.equal(a, b)


# =============================================================================================
# torch.compile / opcheck
# =============================================================================================
def _compile_check(backend, gen):
    torch._dynamo.reset()
    specs = [qspec("int", 4, 32, False), qspec("nf", 3, -1, False)]
    for spec in specs:
        def f(w):
            return lowbit.fake_quantize(w * 1.0, spec) * 2.0

        cf = torch.compile(f, backend=backend, fullgraph=True)
        for shape in ((8, 64), (12, 96)):  # second shape: recompile / dynamic shapes
            w = make_weight(shape, spec.format, spec.bits, spec.group_size, spec.symmetric, gen=gen)
            up = torch.randn(shape, generator=gen)
            a = w.clone().requires_grad_(True)
            b = w.clone().requires_grad_(True)
            ya, yb = f(a), cf(b)
            ya.backward(up)
            yb.backward(up)
            assert torch.equal(ya, yb), f"{backend} {spec} {shape}: forward " + describe_mismatch(yb, ya)
            assert torch.equal(a.grad, b.grad), f"{backend} {spec} {shape}: grad " + describe_mismatch(b.grad, a.grad)


def test_torch_compile_aot_eager(gen):
    _compile_check("aot_eager", gen)


def test_torch_compile_inductor(gen):
    _compile_check("inductor", gen)


def _fake_quant_op():
    return torch.ops.lowbit.fake_quant.default


def test_fake_quant_op_schema():
    s = str(_fake_quant_op()._schema)
    assert s.startswith("lowbit::fake_quant(Tensor w, int fmt, int bits, int group_size, bool symmetric, int ste, "
                        "int scale_dtype=0)"), s


@pytest.mark.parametrize(
    "fmt,bits,g,sym,ste",
    [("int", 4, 32, False, "bitdistiller"), ("int", 8, -1, True, "identity"),
     ("nf", 4, 64, False, "bitdistiller"), ("fp", 3, 32, True, "bitdistiller")],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_opcheck_fake_quant(fmt, bits, g, sym, ste, dtype, gen):
    w = make_weight((8, 128), fmt, bits, g, sym, dtype=dtype, gen=gen).requires_grad_(True)
    args = (w, FMT_CODE[fmt], bits, resolve_group(128, g), sym, STE_CODE[ste])
    torch.library.opcheck(_fake_quant_op(), args)
    # the op called directly agrees with the public wrapper
    assert torch.equal(_fake_quant_op()(*args), lowbit.fake_quantize(w, qspec(fmt, bits, g, sym), ste=ste))


@pytest.mark.parametrize("fmt,bits,g,sym,sd", [("int", 3, 32, False, "float16"),
                                               ("nf", 3, 64, False, "bfloat16")])
def test_opcheck_scale_dtype(fmt, bits, g, sym, sd, gen):
    """The ops with their scale_dtype argument: fake kernels, autograd registration, schema."""
    spec = qspec(fmt, bits, g, sym, sd)
    w = make_weight((8, 128), fmt, bits, g, sym, gen=gen, scale_dtype=sd).requires_grad_(True)
    args = (w, FMT_CODE[fmt], bits, resolve_group(128, g), sym, STE_CODE["bitdistiller"], spec.scale_code)
    torch.library.opcheck(_fake_quant_op(), args)
    assert torch.equal(_fake_quant_op()(*args), lowbit.fake_quantize(w, spec))
    qargs = (w.detach(), FMT_CODE[fmt], bits, resolve_group(128, g), sym, spec.scale_code)
    torch.library.opcheck(torch.ops.lowbit.quantize.default, qargs)
    torch.library.opcheck(torch.ops.lowbit.fake_quant_backward.default,
                          (torch.randn(8, 128, generator=gen),) + qargs)


# =============================================================================================
# CUDA (skipped without a GPU)
# =============================================================================================
CUDA_CASES = [(f, b, s, g) for f, b, s in ALL_SPECS for g in (32, -1)]
CUDA_IDS = [f"{f}{b}{'sym' if s else 'asym'}-g{g}" for f, b, s, g in CUDA_CASES]


@pytest.mark.cuda
@pytest.mark.parametrize("ste", STE_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt,bits,sym,group_size", CUDA_CASES, ids=CUDA_IDS)
def test_cuda_fake_quant_matches_reference(fmt, bits, sym, group_size, dtype, ste, gen):
    spec = qspec(fmt, bits, group_size, sym)
    for shape in SHAPES + [(300, 2048)]:
        what = f"cuda {fmt}{bits} sym={sym} g={group_size} {dtype} ste={ste} shape={shape}"
        w = make_weight(shape, fmt, bits, group_size, sym, dtype=dtype, gen=gen)
        up = torch.randn(shape, generator=gen).to(dtype)
        Qi, gi = run_impl(w.cuda(), spec, ste, up.cuda())
        assert Qi.device.type == "cuda" and gi.device.type == "cuda", what
        Qr, gr = run_ref(w, fmt, bits, group_size, sym, ste, up)
        check_forward(Qi, Qr, dtype, what)
        check_grad(gi, gr, dtype, what)
        # same float32 arithmetic on both devices: forward values identical to the CPU kernels
        Qc, _ = run_impl(w, spec, ste)
        assert torch.equal(Qi.cpu(), Qc), f"{what}: cuda != cpu: " + describe_mismatch(Qi.cpu(), Qc)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt,bits,sym,group_size", CUDA_CASES, ids=CUDA_IDS)
def test_cuda_pack_round_trip(fmt, bits, sym, group_size, dtype, gen):
    spec = qspec(fmt, bits, group_size, sym)
    for shape in SHAPES + [(5, 640)]:
        what = f"cuda {fmt}{bits} sym={sym} g={group_size} {dtype} shape={shape}"
        w = make_weight(shape, fmt, bits, group_size, sym, dtype=dtype, gen=gen)
        qw = lowbit.quantize(w.cuda(), spec)
        assert qw.codes.device.type == "cuda" and qw.scales.device.type == "cuda", what
        check_packed(qw, w, fmt, bits, group_size, sym, what)
        D = lowbit.dequantize(qw)
        F = lowbit.fake_quantize(w.cuda(), spec)
        assert D.device.type == "cuda"
        assert torch.equal(D, F), f"{what}: dequantize != fake_quantize: " + describe_mismatch(D.cpu(), F.cpu())
        # cross-device: CPU-packed weight moved to the GPU decodes the same
        qc = lowbit.quantize(w, spec)
        assert torch.equal(qc.codes, qw.codes.cpu()), f"{what}: codes differ cpu/cuda"
        assert torch.equal(lowbit.dequantize(qc.to("cuda")).cpu(), lowbit.dequantize(qc)), what
        assert torch.equal(lowbit.dequantize(qw.to("cpu")), D.cpu()), what


@pytest.mark.cuda
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_cuda_non_contiguous(fmt, bits, sym, gen):
    spec = qspec(fmt, bits, 32, sym)
    w = make_weight((6, 96), fmt, bits, 32, sym, gen=gen)
    up = torch.randn(6, 96, generator=gen)
    Q0, g0 = run_impl(w.cuda(), spec, "bitdistiller", up.cuda())
    ups = _noncontiguous_views(up.cuda())
    for name, v in _noncontiguous_views(w.cuda()).items():
        x = v.detach().requires_grad_(True)
        Q = lowbit.fake_quantize(x, spec)
        Q.backward(ups[name])
        assert torch.equal(Q, Q0), name
        assert torch.equal(x.grad, g0), name


@pytest.mark.cuda
def test_cuda_nan_group(gen):
    for fmt, bits, sym in ALL_SPECS:
        w = make_weight((3, 96), fmt, bits, 32, sym, gen=gen)
        w[1, 40] = float("nan")
        Q = lowbit.fake_quantize(w.cuda(), qspec(fmt, bits, 32, sym)).cpu()
        assert torch.isnan(Q[1, 32:64]).all(), (fmt, bits, sym)
        Qc = lowbit.fake_quantize(w, qspec(fmt, bits, 32, sym))
        assert torch.equal(torch.nan_to_num(Q), torch.nan_to_num(Qc)), (fmt, bits, sym)


@pytest.mark.cuda
def test_cuda_torch_compile(gen):
    torch._dynamo.reset()
    spec = qspec("int", 4, 32, False)

    def f(w):
        return lowbit.fake_quantize(w, spec) * 2.0

    cf = torch.compile(f, fullgraph=True)
    w = make_weight((16, 128), "int", 4, 32, False, gen=gen).cuda()
    up = torch.randn(16, 128, generator=gen).cuda()
    a = w.clone().requires_grad_(True)
    b = w.clone().requires_grad_(True)
    f(a).backward(up)
    yb = cf(b)
    yb.backward(up)
    assert torch.equal(yb, f(w))
    assert torch.equal(a.grad, b.grad)


@pytest.mark.cuda
def test_cuda_opcheck(gen):
    w = make_weight((8, 128), "nf", 4, 32, False, gen=gen).cuda().requires_grad_(True)
    torch.library.opcheck(_fake_quant_op(), (w, 1, 4, 32, False, 0))


@pytest.mark.cuda
@pytest.mark.parametrize("fmt,bits,sym", [("int", 3, False), ("nf", 3, False), ("fp", 4, True)],
                         ids=["int3asym", "nf3", "fp4sym"])
def test_cuda_sanitizer_small(fmt, bits, sym, gen):
    """Small, odd-sized shapes through every CUDA kernel (device_check.sh runs this under
    compute-sanitizer): 3-bit codes straddling bytes, a group smaller than a warp, bf16."""
    for shape, g, dtype in [((5, 24), 8, torch.float32), ((3, 40), 40, torch.bfloat16),
                            ((7, 96), 48, torch.float16)]:
        spec = qspec(fmt, bits, g, sym)
        w = make_weight(shape, fmt, bits, g, sym, gen=gen).to(dtype)
        up = torch.randn(shape, generator=gen).to(dtype)
        Qd, gd = run_impl(w.cuda(), spec, "bitdistiller", up.cuda())
        Qc, gc = run_impl(w, spec, "bitdistiller", up)
        assert torch.equal(Qd.cpu(), Qc), (fmt, bits, shape, dtype)
        torch.testing.assert_close(gd.cpu().float(), gc.float(), rtol=1e-2, atol=1e-3)
        qw = lowbit.quantize(w.cuda(), spec)
        assert torch.equal(qw.codes.cpu(), lowbit.quantize(w, spec).codes)
        assert torch.equal(lowbit.dequantize(qw).cpu(), Qc)


@pytest.mark.cuda
@pytest.mark.parametrize("sd", SCALE_DTS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_cuda_scale_dtype(fmt, bits, sym, sd, gen):
    """The scale_dtype paths of the CUDA kernels (FORMATS.md 1.6): forward, codes, scales and
    zero points bit-identical to the CPU kernels, gradients the reference's, dequantize(quantize)
    == fake_quantize; tiny groups whose float16 scales underflow; the rounding boundaries."""
    for shape, g, dtype, mag in [((9, 128), 32, torch.float32, None), ((300, 2048), -1, torch.bfloat16, None),
                                 ((5, 96), 8, torch.float16, None), ((6, 64), 4, torch.float32, 1e-9),
                                 ((6, 64), 16, torch.float32, 1e-7)]:
        what = f"cuda {fmt}{bits} sym={sym} g={g} scale_dtype={sd} {dtype} shape={shape} mag={mag}"
        spec = qspec(fmt, bits, g, sym, sd)
        w = make_weight(shape, fmt, bits, g, sym, dtype=dtype, gen=gen, scale=mag, scale_dtype=sd)
        up = torch.randn(shape, generator=gen).to(dtype)
        Qd, gd = run_impl(w.cuda(), spec, "bitdistiller", up.cuda())
        Qc, _ = run_impl(w, spec, "bitdistiller")
        assert torch.equal(Qd.cpu(), Qc), f"{what}: cuda != cpu: " + describe_mismatch(Qd.cpu(), Qc)
        Qr, gr = run_ref(w, fmt, bits, g, sym, "bitdistiller", up, sd)
        check_forward(Qd, Qr, dtype, what)
        check_grad(gd, gr, dtype, what)
        qd, qc = lowbit.quantize(w.cuda(), spec), lowbit.quantize(w, spec)
        assert torch.equal(qd.scales.cpu(), qc.scales), f"{what}: scales cuda != cpu"
        assert torch.equal(qd.codes.cpu(), qc.codes), f"{what}: codes cuda != cpu"
        if qc.zeros is not None:
            assert torch.equal(qd.zeros.cpu(), qc.zeros), f"{what}: zeros cuda != cpu"
        assert torch.equal(lowbit.dequantize(qd), Qd), f"{what}: dequantize != fake_quantize"
    vals = EDGE_SCALES[sd] + torch.pow(10.0, torch.empty(500).uniform_(-8, 38.5, generator=gen)).clamp(max=3.4e38).tolist()
    w = _one_scale_rows(vals)
    s1 = qspec("nf", 4, 32, True, sd)
    assert torch.equal(lowbit.quantize(w.cuda(), s1).scales.cpu(), lowbit.quantize(w, s1).scales)
    assert torch.equal(lowbit.fake_quantize(w.cuda(), s1).cpu(), lowbit.fake_quantize(w, s1))
