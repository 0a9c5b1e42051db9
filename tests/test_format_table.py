"""tests/test_format_table.py: the format table of csrc/formats.h as lowbit._C lists it, and every
row reachable from every op. For each format x bits x symmetric the table offers: fake_quant
forward and backward (both STEs), quantize and dequantize, the clipping search, the qlinear CPU
layout (pack / unpack) and quant_linear in each accuracy mode (with the packed layout and with
canonical codes, M on the GEMV, integer and GEMM paths) and its backward, each checked against
tests/reference.py (written from FORMATS.md); the CUDA kernels of those ops are registered when
the build has CUDA (and run on a GPU in tests/test_*'s cuda tests). A new row of the table is
picked up here by itself: it fails until tests/reference.py has its reference and every op
takes it. The block rows (llama.cpp's types, FORMATS.md 1.8) are checked against
tests/reference_ggml.py here; their QuantLinear is the ggmlkern engineer's (csrc/cpu/qlinear_ggml*):
until it lands, quant_linear refuses them with a clear error, which test_block_rows_reach_every_op
asserts ("linear: by ggmlkern")."""
import pytest
import torch

import reference_ggml as RG
from _testutil import make_weight, unpack_codes
from reference import ALL_SPECS, LEVELS, ref_codes, ref_fake_quant, ref_params

lowbit = pytest.importorskip("lowbit")
from lowbit import _constants as C  # noqa: E402

_X = lowbit._ops._C
ROWS = _X.formats()
KINDS = _X.kinds()
# every (format, bits, symmetric) the table offers
SPECS_ALL = [(r["name"], b, s) for r in ROWS for b in r["bits"] for s in (False, True)
             if r["kinds"][s] >= 0 and r["symmetric"] in (-1, int(s))]
# the rows stored as codes + scales (FORMATS.md 1.1-1.4), and the block rows (1.8)
SPECS = [t for t in SPECS_ALL if C.FORMATS[t[0]].storage == "codes"]
IDS = [f"{f}{b}{'sym' if s else 'asym'}" for f, b, s in SPECS]
BLOCK_ROWS = [r["name"] for r in ROWS if r["storage"] == "blocks"]


def qspec(fmt, bits, g, sym, sd="float32"):
    return lowbit.QuantSpec(format=fmt, bits=bits, group_size=g, symmetric=sym, scale_dtype=sd)


def rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


def test_table_rows_are_the_reference_specs():
    """The table (through lowbit._C) and the reference (from FORMATS.md) list the same
    formats, widths and symmetric choices; the level tables are FORMATS.md's, bit for bit."""
    assert [r["code"] for r in ROWS] == list(range(len(ROWS)))
    assert sorted(SPECS) == sorted(ALL_SPECS), set(SPECS) ^ set(ALL_SPECS)
    assert sorted(BLOCK_ROWS) == sorted(RG.TYPES)
    for r in ROWS:
        for b, lev in r["levels"].items():
            assert torch.equal(torch.tensor(lev, dtype=torch.float32), LEVELS[(r["name"], b)])
        assert r["storage"] in ("codes", "blocks")
        if r["storage"] == "codes":
            assert r["block"] == r["sub_block"] == r["type_size"] == 0
        else:
            assert r["block"] > 0 and r["type_size"] > 0 and r["block"] % max(r["sub_block"], 1) == 0


def test_python_reads_the_table():
    """lowbit._constants.FORMATS and the names QuantSpec takes are the table's rows; a row's
    kind gives the shapes quantize returns."""
    assert list(C.FORMATS) == [r["name"] for r in ROWS]
    for r in ROWS:
        f = C.FORMATS[r["name"]]
        assert f.code == r["code"] and f.bits == tuple(r["bits"]) and f.storage == r["storage"]
        assert C.FORMAT_BITS[f.name] == f.bits and C.FORMAT_CODES[f.name] == f.code
        for sym, kind in f.kinds.items():
            k = KINDS[r["kinds"][sym]]
            assert (kind.code, kind.scales, kind.zeros, kind.levels) == \
                (k["code"], k["scales"], k["zeros"], k["levels"])
        for b in f.bits:  # the spec takes every width of the row
            lowbit.QuantSpec(f.name, b, f.block or 32)
    with pytest.raises(ValueError, match="format"):
        lowbit.QuantSpec("no-such-format", 4, 32)


def _type_bits(t):
    """The code width of a reference type: the bits its code range needs."""
    return (t.qhi - t.qlo).bit_length()


@pytest.mark.parametrize("fmt", BLOCK_ROWS)
def test_block_rows_are_the_reference_types(fmt):
    """A block row's width, block, sub-block, bytes per block and symmetric are ggml's type
    (tests/reference_ggml.py, itself checked against gguf-py's GGML_QUANT_SIZES), and QuantSpec
    fills them in from the row."""
    f, t = C.FORMATS[fmt], RG.TYPES[fmt]
    assert f.bits == (_type_bits(t),) and f.block == t.block and f.type_size == t.type_size
    assert f.sub_block == t.sub and f.symmetric == (t.kind in ("sym0", "symk"))
    assert f.scale_bits == {"sym0": 0, "asym1": 0, "asymk": (t.cmax + 1).bit_length() - 1,
                            "symk": t.cmax.bit_length()}[t.kind]
    spec = lowbit.QuantSpec(fmt)
    assert (spec.bits, spec.group_size, spec.symmetric) == (f.bits[0], f.block, f.symmetric)
    assert f.bits_per_weight(*f.bits, f.block, f.symmetric) == RG.bits_per_weight(fmt)
    assert f.row_bytes(2 * t.block, f.bits[0]) == 2 * t.type_size


@pytest.mark.parametrize("fmt", BLOCK_ROWS)
def test_block_rows_reach_every_op(fmt, gen):
    """Every op takes a block row or refuses it with an error naming the format (none crashes
    or returns a wrong result): not yet built here are marked in NOT_YET."""
    f = C.FORMATS[fmt]
    spec = lowbit.QuantSpec(fmt)
    w = torch.randn(4, 2 * f.block, generator=gen) * 0.05
    args = f.code, f.bits[0], f.block, f.symmetric
    calls = {
        "fake_quant": lambda: lowbit.fake_quantize(w, spec),
        "quantize": lambda: lowbit.quantize(w, spec),
        "dequantize": lambda: torch.ops.lowbit.dequantize(
            torch.zeros(4, f.row_bytes(w.shape[1], f.bits[0]), dtype=torch.uint8),
            torch.zeros(4, 0), torch.zeros(4, 0, dtype=torch.uint8), *args, w.shape[1], 0),
        "clip_search": lambda: torch.ops.lowbit.clip_search(  # per sub-block
            w, torch.eye(f.sub_block).expand(w.shape[1] // f.sub_block, -1, -1).contiguous(),
            *args, 10, 4, 0),
        "quant_linear": lambda: torch.ops.lowbit.quant_linear(
            torch.randn(2, w.shape[1]), torch.zeros(4, f.row_bytes(w.shape[1], f.bits[0]),
                                                    dtype=torch.uint8),
            torch.zeros(4, 0), torch.zeros(4, 0, dtype=torch.uint8),
            torch.empty(0, 0, dtype=torch.int32), torch.zeros(4), *args, C.QL_ACT_CODES["float"]),
    }
    for op in NOT_YET:
        with pytest.raises(RuntimeError, match=f"format {fmt}: .*does not take llama.cpp block "
                                               f"types yet"):
            calls[op]()
    # the others compute the reference's results (tests/test_fake_quant_ggml.py in depth)
    assert RG.same_bits(calls["fake_quant"](), RG.fake_quant(w, fmt))
    x, xr = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    lowbit.fake_quantize(x, spec).backward(torch.ones_like(w))
    RG.fake_quant(xr, fmt).backward(torch.ones_like(w))
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5 * float(xr.grad.abs().max()))
    qw = calls["quantize"]()
    assert torch.equal(qw.codes, RG.pack(RG.params_and_codes(w, fmt), fmt))
    assert torch.equal(calls["dequantize"](), torch.zeros_like(w))
    assert torch.equal(calls["quant_linear"](), torch.zeros(2, 4))  # zero blocks: W = 0
    assert RG.same_bits(lowbit.dequantize(qw), RG.fake_quant(w, fmt))
    lo, hi = calls["clip_search"]()  # tests/test_clip_search.py: against a brute force
    ws = w.reshape(4, -1, f.sub_block)
    shrunk = torch.tensor([1 - i / 10 for i in range(4)]).reshape(4, 1, 1, 1)
    assert lo.shape == hi.shape == ws.shape[:2]
    assert ((ws.amin(-1) * shrunk == lo).any(0)).all() and ((ws.amax(-1) * shrunk == hi).any(0)).all()


# ops without a path for the block rows yet (each refuses them by name); quant_linear: by
# ggmlkern (csrc/cpu/qlinear_ggml*)
NOT_YET = ()


@pytest.mark.parametrize("fmt,bits,sym", SPECS, ids=IDS)
def test_fake_quant_and_storage(fmt, bits, sym, gen):
    """fake_quant forward and backward (both STEs) and quantize -> dequantize, float32 and
    float16 scales: values bit for bit the reference's, gradients within 1e-5, codes, scales and
    zero points the reference's, in the shapes the row's kind gives."""
    N, K, g = 6, 128, 32
    for sd in ("float32", "float16"):
        w = make_weight((N, K), fmt, bits, g, sym, gen=gen, scale_dtype=sd)
        spec = qspec(fmt, bits, g, sym, sd)
        up = torch.randn(N, K, generator=gen)
        for ste in ("bitdistiller", "identity"):
            x, xr = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
            Q = lowbit.fake_quantize(x, spec, ste=ste)
            Qr = ref_fake_quant(xr, fmt, bits, g, sym, ste, scale_dtype=sd)
            assert torch.equal(Q, Qr), (sd, ste)
            Q.backward(up)
            Qr.backward(up)
            torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5,
                                       atol=1e-6 * float(xr.grad.abs().max().clamp(min=1)))
        qw = lowbit.quantize(w, spec)
        kind = C.FORMATS[fmt].kind(sym)
        assert qw.codes.shape == (N, C.FORMATS[fmt].row_bytes(K, bits))
        assert tuple(qw.scales.shape) == C.FORMATS[fmt].scales_shape(N, K // g, sym)
        assert (qw.zeros is not None) == kind.zeros
        p = ref_params(w, fmt, bits, g, sym, scale_dtype=sd)
        assert torch.equal(qw.scales, p["scales"])
        if kind.zeros:
            assert torch.equal(qw.zeros, p["zeros"])
        assert torch.equal(unpack_codes(qw.codes, K, bits),
                           ref_codes(w, fmt, bits, g, sym, scale_dtype=sd))
        assert torch.equal(lowbit.dequantize(qw), Qr.detach())


@pytest.mark.parametrize("fmt,bits,sym", SPECS, ids=IDS)
def test_clip_search(fmt, bits, sym, gen):
    """The clipping search (lowbit::clip_search): every group's pick is one of its candidates
    with the least output error, the error of each candidate scored by brute force with the
    reference quantizer in float64 (ties within float32 round-off may break either way)."""
    from lowbit.clip_search import group_gram, search_clip

    N, K, g, n_grid, shrink = 6, 64, 32, 10, 4
    G = K // g
    w = torch.randn(N, K, generator=gen) * 0.1
    x = torch.randn(48, K, generator=gen) * torch.linspace(0.2, 3.0, K)
    spec = qspec(fmt, bits, g, sym)
    lo, hi = search_clip(w, spec, group_gram(x, g), n_grid=n_grid, max_shrink=shrink)
    wg = w.reshape(N, G, g)
    cands, errs = [], []
    for i in range(shrink):
        for j in range(shrink):
            c = torch.minimum(torch.maximum(wg, wg.amin(-1, keepdim=True) * (1 - j / n_grid)),
                              wg.amax(-1, keepdim=True) * (1 - i / n_grid)).reshape(N, K)
            d = (ref_fake_quant(c, fmt, bits, g, sym) - w).reshape(N, G, g).double()
            cands.append(c)
            errs.append(torch.einsum("tgi,ngi->ntg", x.reshape(-1, G, g).double(), d)
                        .pow(2).sum(1))
    cands, errs = torch.stack(cands), torch.stack(errs)
    got = torch.minimum(torch.maximum(wg, lo), hi).reshape(N, K)
    match = torch.isclose(cands, got, rtol=1e-6, atol=0).reshape(-1, N, G, g).all(-1)
    assert match.any(0).all(), "a group is none of the candidates"
    got_err = torch.where(match, errs, torch.full_like(errs, float("inf"))).amin(0)
    assert torch.all(got_err <= errs.amin(0) * (1 + 1e-4) + 1e-9 * errs[0].max())


@pytest.fixture
def restore_isa():
    yield
    lowbit.set_cpu_isa("auto")


BOUND = {"float": 1e-5, "auto": 1e-4, "int8": 2e-2}  # FORMATS.md 4


@pytest.mark.parametrize("fmt,bits,sym", SPECS, ids=IDS)
def test_qlinear(fmt, bits, sym, gen, restore_isa):
    """The qlinear CPU layout of the row's codes (pack / unpack, exact), and quant_linear on every
    ISA in every accuracy mode, with the layout and with canonical codes, for M on the GEMV (1),
    integer-dot (3) and GEMM (20) paths, against F.linear of the reference's dequantized weight
    in float64 (FORMATS.md 4's bounds); the input gradient is that of F.linear."""
    N, K, g = 40, 128, 64
    w = make_weight((N, K), fmt, bits, g, sym, gen=gen)
    qw = lowbit.quantize(w, qspec(fmt, bits, g, sym))
    W = ref_fake_quant(w, fmt, bits, g, sym).double()
    packed = torch.ops.lowbit.qlinear_pack(qw.codes, bits, K)
    assert torch.equal(torch.ops.lowbit.qlinear_unpack(packed, N, K, bits), qw.codes)
    bias = torch.randn(N, generator=gen)
    x = torch.randn(20, K, generator=gen)
    args = C.FORMATS[fmt].code, bits, g, sym
    empty_p, empty_c = torch.empty(0, 0, dtype=torch.int32), qw.codes.new_empty(0, 0)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        for M in (1, 3, 20):
            ref = torch.nn.functional.linear(x[:M].double(), W, bias.double())
            for act, code in C.QL_ACT_CODES.items():
                for codes, pk in ((empty_c, packed), (qw.codes, empty_p)):
                    y = torch.ops.lowbit.quant_linear(x[:M], codes, qw.scales, qw.zeros if
                                                      qw.zeros is not None else
                                                      qw.codes.new_empty(N, 0), pk, bias, *args,
                                                      code)
                    err = rel(y, ref)
                    assert err <= BOUND[act], f"{isa} M={M} {act} packed={pk.numel() > 0}: {err:.3g}"
        xg = x[:3].clone().requires_grad_(True)
        lowbit.quant_linear(xg, qw, bias, act="float").backward(torch.ones(3, N))
        torch.testing.assert_close(xg.grad.double(), W.sum(0).expand(3, K), rtol=1e-5, atol=1e-5)


FORMAT_OPS = ("fake_quant", "fake_quant_backward", "quantize", "dequantize", "quant_linear")


@pytest.mark.skipif(not _X.CUDA_BUILT or torch.version.cuda is None,
                    reason="CUDA kernels register when lowbit and torch are both CUDA builds")
@pytest.mark.parametrize("op", FORMAT_OPS)
def test_cuda_kernels_registered(op):
    """The format ops have CUDA kernels (registered with libtorch_cuda, GPU or not); they take
    every row through the same resolved lb_fmt (test_cuda_every_row runs them on a GPU)."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lowbit::{op}", "CUDA")


@pytest.mark.cuda
@pytest.mark.parametrize("fmt,bits,sym", SPECS, ids=IDS)
def test_cuda_every_row(fmt, bits, sym, gen):
    """On a GPU: fake_quant, quantize / dequantize and quant_linear of every row equal the CPU's
    (the CUDA kernels are bit-identical in the forward, float32-close in quant_linear)."""
    N, K, g = 8, 128, 32
    w = make_weight((N, K), fmt, bits, g, sym, gen=gen)
    spec = qspec(fmt, bits, g, sym)
    assert torch.equal(lowbit.fake_quantize(w.cuda(), spec).cpu(), lowbit.fake_quantize(w, spec))
    qc = lowbit.quantize(w.cuda(), spec)
    assert torch.equal(lowbit.dequantize(qc).cpu(), lowbit.dequantize(lowbit.quantize(w, spec)))
    x = torch.randn(5, K, generator=gen)
    ref = torch.nn.functional.linear(x.double(), ref_fake_quant(w, fmt, bits, g, sym).double())
    assert rel(lowbit.quant_linear(x.cuda(), qc, act="float").cpu(), ref) <= 1e-5
