"""Every Python-visible table of C codes and layout sizes (lowbit._constants, read from what
lowbit._C exports) agrees with what the raw ops accept and return: each format's bit widths are
exactly those quantize takes, each dtype code gives that dtype, each STE / KL kind / ISA code is
taken (and the next one is not), and the shape helpers give the shapes the ops return."""
import pytest
import torch

pytest.importorskip("lowbit")

from reference import LEVELS, ref_fake_quant  # noqa: E402
from reference_kl import ref_rows  # noqa: E402

import lowbit  # noqa: E402
from lowbit import _constants as C  # noqa: E402


def test_constants_are_the_exported_ones_not_copies():
    src = open(C.__file__).read()
    # no enum value is written as a number: the tables are built from lowbit._C's names
    for line in src.splitlines():
        if line.startswith(("FORMAT_CODES", "DTYPE_CODES", "STE_CODES", "KL_KINDS", "ISA_CODES")):
            assert "_X." in line and not any(f": {d}" in line for d in "0123456789"), line


# the formats stored as codes + scales; the block rows (llama.cpp's types, FORMATS.md 1.8) fix
# their widths, groups and symmetric: tests/test_fake_quant_ggml.py checks those rows
CODE_FORMATS = sorted(n for n, f in C.FORMATS.items() if f.storage == "codes")


@pytest.mark.parametrize("name", CODE_FORMATS)
def test_format_bits_are_what_quantize_takes(name):
    fmt = C.FORMAT_CODES[name]
    w = torch.randn(6, 64)
    taken = []
    for bits in range(0, C._X.MAX_BITS + 3):
        try:
            codes, scales, zeros = torch.ops.lowbit.quantize(w, fmt, bits, 32, False)
        except RuntimeError as e:
            assert "bits: " in str(e)
            continue
        taken.append(bits)
        assert codes.shape == (6, C.codes_bytes(64, bits))
        assert scales.shape == C.scales_shape(6, 2, fmt, False)
        assert zeros.shape == (6, 2 if C.has_zeros(fmt, False) else 0)
        sym = torch.ops.lowbit.quantize(w, fmt, bits, 32, True)
        assert sym[1].shape == C.scales_shape(6, 2, fmt, True)
        assert sym[2].shape == (6, 2 if C.has_zeros(fmt, True) else 0)
    assert tuple(taken) == C.FORMAT_BITS[name]
    if name != "int":  # the level formats are exactly the level tables of FORMATS.md
        assert set(taken) == {b for (f, b) in LEVELS if f == name}


def test_format_codes_compute_their_format():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    for name in CODE_FORMATS:
        fmt = C.FORMAT_CODES[name]
        got = torch.ops.lowbit.fake_quant(w, fmt, 4, 32, False, C.STE_CODES["bitdistiller"])
        ref = ref_fake_quant(w, name, 4, 32, False).float()
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6), name
    with pytest.raises(RuntimeError, match="format: "):
        torch.ops.lowbit.fake_quant(w, max(C.FORMAT_CODES.values()) + 1, 4, 32, False, 0)


def test_dtype_codes_give_their_dtype():
    w = torch.randn(4, 64)
    codes, scales, zeros = torch.ops.lowbit.quantize(w, 0, 4, 32, False)
    for dtype, code in C.DTYPE_CODES.items():
        out = torch.ops.lowbit.dequantize(codes, scales, zeros, 0, 4, 32, False, 64, code)
        assert out.dtype == dtype and C.CODE_DTYPES[code] == dtype
    with pytest.raises(RuntimeError, match="dtype: "):
        torch.ops.lowbit.dequantize(codes, scales, zeros, 0, 4, 32, False, 64,
                                    max(C.DTYPE_CODES.values()) + 1)


def test_ste_codes_are_the_two_gradients():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    grads = {}
    for name, code in C.STE_CODES.items():
        x = w.clone().requires_grad_()
        torch.ops.lowbit.fake_quant(x, 0, 2, 32, False, code).pow(2).sum().backward()
        grads[name] = x.grad
    q = ref_fake_quant(w, "int", 2, 32, False).float()
    assert torch.allclose(grads["identity"], 2 * q, rtol=1e-6)  # dQ/dw = 1
    assert not torch.allclose(grads["bitdistiller"], grads["identity"])
    with pytest.raises(RuntimeError, match="ste: "):
        torch.ops.lowbit.fake_quant(w, 0, 4, 32, False, max(C.STE_CODES.values()) + 1)


def test_kl_kinds_compute_their_kind():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    lab = torch.empty(0, dtype=torch.int64)
    for name, code in C.KL_KINDS.items():
        rows, _ = torch.ops.lowbit.kl_loss(s, t, lab, code, 0.3, 0.4, 1.0, -100, False, False, 1.0)
        ref = ref_rows(s, t, name, gamma=0.3, beta=0.4)
        assert torch.allclose(rows.double(), ref, rtol=1e-5, atol=1e-6), name
    with pytest.raises(RuntimeError, match="kind: "):
        torch.ops.lowbit.kl_loss(s, t, lab, max(C.KL_KINDS.values()) + 1, 0.3, 0.4, 1.0, -100,
                                 False, False, 1.0)


def test_isa_codes_round_trip():
    was = lowbit.get_cpu_isa()
    try:
        for name in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(name)
            assert lowbit.get_cpu_isa() == name and C._X.get_isa() == C.ISA_CODES[name]
    finally:
        lowbit.set_cpu_isa(was)
    assert "scalar" in lowbit.available_cpu_isas()
    with pytest.raises(ValueError, match="isa: "):
        C._X.set_isa(max(C.ISA_CODES.values()) + 1)


@pytest.mark.parametrize("K", [4, 8, 12, 20, 64])
def test_lb24_meta_bytes_is_the_meta_shape(K):
    w = torch.randn(3, K)
    sw = lowbit.sparse.compress_24(lowbit.sparse.prune_24(w)[0])
    assert sw.meta.shape == (3, C.lb24_meta_bytes(K))
    torch.ops.lowbit.sparse24_decompress(sw.values, sw.meta)
    with pytest.raises(RuntimeError, match="meta: "):
        torch.ops.lowbit.sparse24_decompress(sw.values, sw.meta[:, :-1].contiguous())
