"""Integer arguments of the raw ops: sizes computed from user
integers are overflow-checked and every int64 argument is range-checked before C narrows it, so
each call below raises a RuntimeError naming the argument -- never a crash, a wrap or a silently
different value. The calls run in one child process (a crash must fail the test, not the suite);
it reports each call's outcome as one JSON line, so a crash names the call that caused it."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("lowbit")

# (name, the argument the error must name, code run with torch and lowbit imported)
CASES = [
    # item 1: K * bits wrapped in the row-size helpers, 0 words were allocated and packed
    ("qlinear_pack_huge_K", "K",
     "torch.ops.lowbit.qlinear_pack(torch.empty(32, 0, dtype=torch.uint8), 8, 2**61)"),
    ("qlinear_pack_huge_K_int2", "K",
     "torch.ops.lowbit.qlinear_pack(torch.empty(4, 0, dtype=torch.uint8), 2, 2**62)"),
    ("qlinear_unpack_huge_K", "K",
     "torch.ops.lowbit.qlinear_unpack(torch.empty(2, 0, dtype=torch.int32), 32, 2**62, 8)"),
    # item 2: the same class through qlinear_dequant_t, with huge K or huge K-block ranges
    ("dequant_t_huge_K", "K",
     "torch.ops.lowbit.qlinear_dequant_t(torch.empty(0, 0, dtype=torch.int32), torch.ones(32, 1), "
     "torch.empty(32, 0, dtype=torch.uint8), 0, 8, 2**62, True, 16, 2**62, 0, 1)"),
    ("dequant_t_huge_kb", "kb0",
     "torch.ops.lowbit.qlinear_dequant_t(torch.empty(0, 0, dtype=torch.int32), torch.ones(32, 1), "
     "torch.empty(32, 0, dtype=torch.uint8), 0, 4, 64, True, 16, 64, 2**62, 2**62 + 1)"),
    ("dequant_t_huge_kb1", "kb1",
     "torch.ops.lowbit.qlinear_dequant_t(torch.empty(0, 0, dtype=torch.int32), torch.ones(32, 1), "
     "torch.empty(32, 0, dtype=torch.uint8), 0, 4, 64, True, 16, 64, 0, 2**63 - 1)"),
    ("dequant_t_max_N", "K",
     "torch.ops.lowbit.qlinear_dequant_t(torch.empty(0, 0, dtype=torch.int32), torch.ones(32, 1), "
     "torch.empty(32, 0, dtype=torch.uint8), 0, 8, 32, True, 2**62, 2**40, 0, 1)"),
    ("dequantize_huge_K", "K",
     "torch.ops.lowbit.dequantize(torch.empty(1, 0, dtype=torch.uint8), torch.ones(1, 1), "
     "torch.zeros(1, 1, dtype=torch.uint8), 0, 8, 2**62, False, 2**62, 0)"),
    ("quant_linear_empty_x_huge_K", "K",
     "torch.ops.lowbit.quant_linear(torch.empty(0, 2**61), torch.empty(32, 0, dtype=torch.uint8), "
     "torch.ones(32, 1), torch.zeros(32, 1, dtype=torch.uint8), "
     "torch.empty(0, 0, dtype=torch.int32), torch.empty(0), 0, 8, 2**61, False, 2)"),
    ("quant_linear_act_wrap", "act",
     "torch.ops.lowbit.quant_linear(torch.randn(2, 64), torch.zeros(4, 32, dtype=torch.uint8), "
     "torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.uint8), "
     "torch.empty(0, 0, dtype=torch.int32), torch.empty(0), 0, 4, 32, False, 2**32 + 1)"),
    # item 9: int64 arguments narrowed to C int (2**32 + 4 was taken as 4 bits)
    ("quantize_bits_wrap", "bits",
     "torch.ops.lowbit.quantize(torch.randn(4, 64), 0, 2**32 + 4, 32, False)"),
    ("fake_quant_bits_wrap", "bits",
     "torch.ops.lowbit.fake_quant(torch.randn(4, 64), 0, 2**32 + 4, 32, False, 0)"),
    ("fake_quant_fmt_wrap", "format",
     "torch.ops.lowbit.fake_quant(torch.randn(4, 64), 2**32, 4, 32, False, 0)"),
    ("fake_quant_ste_wrap", "ste",
     "torch.ops.lowbit.fake_quant(torch.randn(4, 64), 0, 4, 32, False, 2**32)"),
    ("dequantize_dtype_wrap", "dtype",
     "torch.ops.lowbit.dequantize(torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 2), "
     "torch.zeros(4, 2, dtype=torch.uint8), 0, 4, 32, False, 64, 2**32)"),
    ("clip_search_n_grid_wrap", "n_grid",
     "torch.ops.lowbit.clip_search(torch.randn(4, 32), torch.eye(32).reshape(1, 32, 32), "
     "0, 4, 32, False, 2**32 + 2, 2)"),
    ("clip_search_shrink_wrap", "shrink",
     "torch.ops.lowbit.clip_search(torch.randn(4, 32), torch.eye(32).reshape(1, 32, 32), "
     "0, 4, 32, False, 20, 2**32 + 2)"),
    # the scale dtype code (FORMATS.md 1.6) of the ops that compute scales
    ("fake_quant_scale_dtype_wrap", "scale_dtype",
     "torch.ops.lowbit.fake_quant(torch.randn(4, 64), 0, 4, 32, False, 0, 2**32 + 2)"),
    ("fake_quant_scale_dtype_bad", "scale_dtype",
     "torch.ops.lowbit.fake_quant(torch.randn(4, 64), 1, 4, 32, False, 0, 3)"),
    ("fake_quant_backward_scale_dtype_bad", "scale_dtype",
     "torch.ops.lowbit.fake_quant_backward(torch.randn(4, 64), torch.randn(4, 64), 0, 4, 32, "
     "False, -1)"),
    ("quantize_scale_dtype_wrap", "scale_dtype",
     "torch.ops.lowbit.quantize(torch.randn(4, 64), 0, 4, 32, False, 2**32 + 1)"),
    ("clip_search_scale_dtype_bad", "scale_dtype",
     "torch.ops.lowbit.clip_search(torch.randn(4, 32), torch.eye(32).reshape(1, 32, 32), "
     "0, 4, 32, False, 20, 2, 2**31)"),
    ("kl_loss_kind_wrap", "kind",
     "torch.ops.lowbit.kl_loss(torch.randn(2, 8), torch.randn(2, 8), torch.zeros(2, dtype=torch.long), "
     "2**32 + 1, 0.5, 0.5, 1.0, -100, False, False, 1.0)"),
]

_CHILD = """
import json, sys, torch, lowbit
cases = json.loads(sys.argv[1])
for name, _, code in cases:
    try:
        eval(code)
        out = {"name": name, "exc": None, "msg": ""}
    except Exception as e:
        out = {"name": name, "exc": type(e).__name__, "msg": str(e).splitlines()[0]}
    print(json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes():
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), json.dumps(CASES)],
                       capture_output=True, text=True, env=env, timeout=300)
    got = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            got[d["name"]] = d
    return got, r


@pytest.mark.parametrize("name,arg,code", CASES, ids=[c[0] for c in CASES])
def test_bad_int_argument_raises_naming_it(outcomes, name, arg, code):
    got, r = outcomes
    assert name in got, (f"the child process died before or during {name!r} "
                         f"(exit {r.returncode}): {r.stderr[-2000:]}")
    d = got[name]
    assert d["exc"] == "RuntimeError", f"{code} -> {d}"
    assert re.search(rf"(^|\W){re.escape(arg)}: ", d["msg"]), f"{code} -> {d['msg']!r}"


def test_valid_calls_still_run():
    """The checks reject only what is out of range: the same ops with sane integers work."""
    import torch

    w = torch.randn(4, 64)
    codes, scales, zeros = torch.ops.lowbit.quantize(w, 0, 4, 32, False)
    back = torch.ops.lowbit.dequantize(codes, scales, zeros, 0, 4, 32, False, 64, 0)
    assert torch.equal(back, torch.ops.lowbit.fake_quant(w, 0, 4, 32, False, 0))
    packed = torch.ops.lowbit.qlinear_pack(codes, 4, 64)
    assert torch.equal(torch.ops.lowbit.qlinear_unpack(packed, 4, 64, 4), codes)
    wt = torch.ops.lowbit.qlinear_dequant_t(packed, scales, zeros, 0, 4, 32, False, 4, 64, 0, 2)
    assert torch.equal(wt[:64, :4].t(), back)
    x = torch.randn(3, 64)
    for act in (0, 1, 2):
        y = torch.ops.lowbit.quant_linear(x, codes[:0], scales, zeros, packed, torch.empty(0), 0,
                                          4, 32, False, act)
        assert y.shape == (3, 4) and torch.isfinite(y).all()
    lo, hi = torch.ops.lowbit.clip_search(w, torch.eye(32).expand(2, 32, 32).contiguous(), 0, 4, 32,
                                          False, 20, 10)
    assert lo.shape == hi.shape == (4, 2)


def test_exported_constants_are_what_the_ops_take():
    """lowbit._C exports the codes and layout sizes Python would otherwise copy: each format's
    bit mask is exactly the set quantize accepts, and the layout constants give the shapes the
    ops return."""
    import torch
    from lowbit import _ops

    C = _ops._C
    w = torch.randn(20, 64)
    for fmt, mask in ((C.FMT_INT, C.FMT_INT_BITS), (C.FMT_NF, C.FMT_NF_BITS),
                      (C.FMT_FP, C.FMT_FP_BITS)):
        for bits in range(1, C.MAX_BITS + 2):
            ok = bool(mask >> bits & 1)
            try:
                codes, scales, zeros = torch.ops.lowbit.quantize(w, fmt, bits, 32, False)
            except RuntimeError as e:
                assert not ok and "bits: " in str(e), (fmt, bits, e)
                continue
            assert ok, (fmt, bits)
            assert codes.shape == (20, (64 * bits + 7) // 8)
            assert scales.dim() == (3 if fmt != C.FMT_INT else 2)
    codes, scales, zeros = torch.ops.lowbit.quantize(w, C.FMT_INT, 3, 32, False)
    packed = torch.ops.lowbit.qlinear_pack(codes, 3, 64)
    nt = -(-20 // C.QL_TILE)
    assert packed.shape == (nt, -(-64 // C.QL_KBLK) * 3 * C.QL_TILE)
    assert (C.ACT_FLOAT, C.ACT_INT8, C.ACT_AUTO) == (0, 1, 2) and C.QL_INT_MAX_M == 16
    back = torch.ops.lowbit.dequantize(codes, scales, zeros, C.FMT_INT, 3, 32, False, 64, C.DT_BF16)
    assert back.dtype == torch.bfloat16
    assert torch.equal(torch.ops.lowbit.fake_quant(w, C.FMT_INT, 3, 32, False, C.STE_IDENTITY),
                       torch.ops.lowbit.fake_quant(w, C.FMT_INT, 3, 32, False,
                                                   C.STE_BITDISTILLER))
    # scale_dtype takes the dtype codes: float16 scales are float16 values, the default float32
    _, s16, _ = torch.ops.lowbit.quantize(w, C.FMT_INT, 3, 32, False, C.DT_F16)
    _, sbf, _ = torch.ops.lowbit.quantize(w, C.FMT_INT, 3, 32, False, C.DT_BF16)
    assert torch.equal(s16.half().float(), s16) and torch.equal(sbf.bfloat16().float(), sbf)
    assert torch.equal(torch.ops.lowbit.quantize(w, C.FMT_INT, 3, 32, False, C.DT_F32)[1], scales)
    assert len({C.ISA_SCALAR, C.ISA_AVX2, C.ISA_AVX512, C.ISA_AVXVNNI, C.ISA_AVX512VNNI}) == 5
    assert C.isa_supported(C.ISA_SCALAR)
    assert C.ISA_NAMES.split(",") == ["scalar", "avx2", "avx512", "avxvnni", "avx512vnni"]
    assert {C.KL_FORWARD, C.KL_REVERSE, C.KL_CAKLD, C.KL_JSD} == {0, 1, 2, 3}
    assert C.S24_GROUP == 4 and C.S24_KEPT == 2 and C.S24_GROUPS_PER_BYTE == 2
