"""lowbit.quant_linear / lowbit.nn.QuantLinear (packed low-bit inference) against
F.linear(x, dequantize(qw)) for every format, group size, M, dtype and CPU ISA path; gradients
of x and bias; torch.compile; bad input; QuantLinear state_dict round trip and repr; CUDA.

Tolerance: the kernels accumulate in float32 in a different order than F.linear, so outputs are
compared with an error bound relative to |x| @ |W|^T (rtol 1e-4 of that scale) rather than bit
for bit; 16-bit x additionally allows the final rounding to x's dtype.
"""
import pytest
import torch
import torch.nn.functional as F

from reference import ALL_SPECS

lowbit = pytest.importorskip("lowbit")

SPEC_IDS = [f"{f}{b}{'sym' if s else 'asym'}" for f, b, s in ALL_SPECS]
GROUPS = [32, 64, 128, -1]
MS = [1, 2, 3, 7, 16, 33, 128]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f32", "bf16", "f16"]
EPS = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def qspec(fmt, bits, g, sym):
    return lowbit.QuantSpec(format=fmt, bits=bits, group_size=g, symmetric=sym)


@pytest.fixture
def restore_isa():
    yield
    lowbit.set_cpu_isa("auto")


def dequant_f32(qw):
    """The exact float32 values of the codes (dequantize(qw) rounds them to qw.dtype; the
    kernels use the float32 values whatever dtype the weight was quantized from)."""
    return lowbit.dequantize(lowbit.QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.spec,
                                                    qw.shape, torch.float32))


def reference(x, qw, bias=None):
    w = dequant_f32(qw)
    y = F.linear(x.float(), w, None if bias is None else bias.float())
    scale = F.linear(x.float().abs(), w.abs()) + (0 if bias is None else bias.float().abs())
    return y, scale


def check(y, x, qw, bias=None, what=""):
    ref, scale = reference(x, qw, bias)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], qw.shape[0]), what
    err = (y.float() - ref).abs()
    tol = 1e-4 * scale + 1e-6 + 2 * EPS[x.dtype] * ref.abs()
    bad = err > tol
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} outside tolerance, max err "
                           f"{err.max().item():.3g}")


def make(N, K, spec, gen, dtype=torch.float32):
    w = torch.randn(N, K, generator=gen) * 0.05
    return lowbit.quantize(w.to(dtype), spec)


# ---- every format x group size x M x ISA (small K keeps the cross product fast) ----
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_matches_dequant_linear_every_isa(fmt, bits, sym, group_size, gen, restore_isa):
    K = 256 if group_size != -1 else 200  # -1 with K not a multiple of 32: padded blocks
    qw = make(40, K, qspec(fmt, bits, group_size, sym), gen)  # 40 rows: a partial 16-row tile
    assert qw.packed is None  # quantize does not build the kernel layout; quant_linear does
    bias = torch.randn(40, generator=gen)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        for M in MS:
            x = torch.randn(M, K, generator=gen)
            check(lowbit.quant_linear(x, qw, bias if M % 2 else None), x, qw,
                  bias if M % 2 else None, f"{isa} M={M}")
            assert qw.packed is not None


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_dtypes_and_3d_inputs(fmt, bits, sym, dtype, gen, restore_isa):
    qw = make(33, 128, qspec(fmt, bits, 64, sym), gen, dtype)
    bias = torch.randn(33, generator=gen).to(dtype)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        for shape in [(1, 1, 128), (2, 3, 128), (4, 9, 128), (128,)]:
            x = torch.randn(*shape, generator=gen).to(dtype)
            check(lowbit.quant_linear(x, qw, bias), x, qw, bias, f"{isa} {shape}")


@pytest.mark.parametrize("g,K", [(8, 64), (24, 96), (48, 96)])
def test_group_sizes_without_fast_layout(g, K, gen, restore_isa):
    """Group sizes that are not multiples of 32 run on the canonical codes."""
    for spec in (qspec("int", 4, g, False), qspec("nf", 3, g, False), qspec("fp", 4, g, True)):
        qw = make(20, K, spec, gen)
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            for M in (1, 5):
                x = torch.randn(M, K, generator=gen)
                check(lowbit.quant_linear(x, qw), x, qw, None, f"{spec.name} {isa} M={M}")
                assert qw.packed is None


def test_larger_shapes(gen):
    for spec in (qspec("int", 4, 128, False), qspec("int", 2, 64, False), qspec("nf", 3, 128, False)):
        qw = make(300, 1024, spec, gen)
        for M in (1, 4, 5, 70):
            x = torch.randn(M, 1024, generator=gen)
            check(lowbit.quant_linear(x, qw), x, qw, None, f"{spec.name} M={M}")


def test_thread_count_does_not_change_results(gen):
    qw = make(100, 512, qspec("int", 4, 128, False), gen)
    x1, x2 = torch.randn(1, 512, generator=gen), torch.randn(40, 512, generator=gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a1, a2 = lowbit.quant_linear(x1, qw), lowbit.quant_linear(x2, qw)
        torch.set_num_threads(2)
        b1, b2 = lowbit.quant_linear(x1, qw), lowbit.quant_linear(x2, qw)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)


def test_empty_batch(gen):
    qw = make(16, 64, qspec("int", 4, 32, False), gen)
    assert lowbit.quant_linear(torch.randn(0, 64), qw).shape == (0, 16)


# ---- gradients ----
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt,bits,sym", [("int", 4, False), ("nf", 3, False), ("fp", 4, True)])
def test_grad_x_and_bias(fmt, bits, sym, dtype, gen):
    qw = make(24, 128, qspec(fmt, bits, 32, sym), gen, dtype)
    x = torch.randn(2, 5, 128, generator=gen).to(dtype).requires_grad_()
    bias = torch.randn(24, generator=gen).to(dtype).requires_grad_()
    up = torch.randn(2, 5, 24, generator=gen).to(dtype)
    lowbit.quant_linear(x, qw, bias).backward(up)
    xr = x.detach().float().requires_grad_()
    br = bias.detach().float().requires_grad_()
    F.linear(xr, dequant_f32(qw), br).backward(up.float())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x.grad.float(), xr.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(bias.grad.float(), br.grad, rtol=tol, atol=tol)
    assert x.grad.dtype == dtype and bias.grad.dtype == dtype


def test_grad_x_in_k_chunks(gen, monkeypatch):
    monkeypatch.setattr(lowbit.qlinear, "GRAD_CHUNK_BYTES", 32 * 4 * 48)  # one 32-block per chunk
    for spec in (qspec("int", 4, 32, False), qspec("nf", 3, -1, False)):
        qw = make(40, 200 if spec.group_size == -1 else 160, spec, gen)
        K = qw.shape[1]
        x = torch.randn(3, K, generator=gen, requires_grad=True)
        up = torch.randn(3, 40, generator=gen)
        (gx,) = torch.autograd.grad(lowbit.quant_linear(x, qw), x, up)
        torch.testing.assert_close(gx, up @ dequant_f32(qw), rtol=1e-5, atol=1e-5)


def test_gradcheck_float64_free_path(gen):
    """torch.autograd.gradcheck-style check in float32 with a loose tolerance (the op is linear
    in x, so finite differences are exact up to rounding)."""
    qw = make(8, 64, qspec("int", 3, 32, False), gen)
    x = torch.randn(3, 64, generator=gen, requires_grad=True)
    y = lowbit.quant_linear(x, qw)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, lowbit.dequantize(qw).sum(0).expand(3, 64), rtol=1e-5,
                               atol=1e-5)


def test_quantlinear_frozen_weight_gets_no_grad(gen):
    lin = torch.nn.Linear(64, 32)
    m = lowbit.nn.QuantLinear.from_linear(lin, qspec("int", 4, 32, False))
    x = torch.randn(4, 64, generator=gen, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and m.bias.grad is not None
    assert all(not b.requires_grad for b in m.buffers())


# ---- torch.compile ----
def test_torch_compile_fullgraph(gen):
    lin = torch.nn.Linear(128, 48)
    m = lowbit.nn.QuantLinear.from_linear(lin, qspec("nf", 4, 64, False))
    x = torch.randn(3, 128, generator=gen, requires_grad=True)
    eager = m(x)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = cm(x)
    torch.testing.assert_close(out, eager)
    (g1,) = torch.autograd.grad(out.sum(), x)
    (g2,) = torch.autograd.grad(eager.sum(), x)
    torch.testing.assert_close(g1, g2)
    qw = m.qweight
    b = m.bias.detach()
    f = torch.compile(lambda t: lowbit.quant_linear(t, qw, b) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x.detach()), 2 * eager.detach())


def test_compile_on_a_weight_without_layout(gen):
    """quantize no longer builds the CPU layout; under torch.compile quant_linear does not build
    it either (no op in the graph, no mutation): it runs on the canonical codes, and the next
    eager call builds it."""
    qw = make(24, 64, qspec("nf", 3, 32, False), gen)
    x = torch.randn(3, 64, generator=gen)
    torch._dynamo.reset()
    f = torch.compile(lambda t: lowbit.quant_linear(t, qw), fullgraph=True, backend="eager")
    check(f(x), x, qw, None, "compiled, canonical codes")
    assert qw.packed is None
    check(lowbit.quant_linear(x, qw), x, qw, None, "eager")
    assert qw.packed is not None
    check(f(x), x, qw, None, "compiled, kernel layout")


def test_fake_kernel_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    qw = lowbit.quantize(torch.randn(20, 64), qspec("int", 4, 32, False))
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 3, 64, dtype=torch.bfloat16)
        y = lowbit.quant_linear(x, qw)
        assert y.shape == (2, 3, 20) and y.dtype == torch.bfloat16


# ---- bad input ----
def test_bad_inputs(gen):
    qw = make(16, 64, qspec("int", 4, 32, False), gen)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match=r"^x:.*K = 64"):
        lowbit.quant_linear(torch.randn(2, 63), qw)
    with pytest.raises(TypeError, match=r"^x:.*dtype"):
        lowbit.quant_linear(torch.randn(2, 64).double(), qw)
    with pytest.raises(TypeError, match=r"^x:"):
        lowbit.quant_linear([1.0] * 64, qw)
    with pytest.raises(TypeError, match=r"^qw:.*QuantizedWeight"):
        lowbit.quant_linear(x, torch.randn(16, 64))
    with pytest.raises(ValueError, match=r"^bias:.*\(16,\)"):
        lowbit.quant_linear(x, qw, torch.randn(15))
    with pytest.raises(TypeError, match=r"^bias:.*dtype"):
        lowbit.quant_linear(x, qw, torch.randn(16).half())
    with pytest.raises(TypeError, match=r"^bias:"):
        lowbit.quant_linear(x, qw, 1.0)
    m = lowbit.nn.QuantLinear(64, 16, qspec("int", 4, 32, False))
    with pytest.raises(ValueError, match=r"^x:.*in_features = 64"):
        m(torch.randn(2, 32))
    with pytest.raises(TypeError, match=r"^x:.*dtype"):
        m(torch.randn(2, 64, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^linear:"):
        lowbit.nn.QuantLinear.from_linear(torch.nn.Conv1d(2, 2, 1), qspec_default())
    with pytest.raises(TypeError, match=r"^qat_linear:"):
        lowbit.nn.QuantLinear.from_qat(torch.nn.ReLU())
    lowbit.qlinear.ensure_kernel_layout(qw)  # the raw op takes the layout quant_linear builds
    with pytest.raises(RuntimeError, match=r"x:.*dtype"):  # the op checks again
        torch.ops.lowbit.quant_linear(torch.randn(2, 64).double(), qw.codes[:0], qw.scales,
                                      qw.zeros, qw.packed, torch.empty(0), 0, 4, 32, False, 2)
    with pytest.raises(RuntimeError, match=r"packed:"):
        torch.ops.lowbit.quant_linear(x, qw.codes[:0], qw.scales, qw.zeros, qw.packed[:, :5],
                                      torch.empty(0), 0, 4, 32, False, 2)
    with pytest.raises(RuntimeError, match=r"codes:.*empty"):  # one form of the codes
        torch.ops.lowbit.quant_linear(x, qw.codes, qw.scales, qw.zeros, qw.packed,
                                      torch.empty(0), 0, 4, 32, False, 2)
    with pytest.raises(RuntimeError, match=r"act"):
        torch.ops.lowbit.quant_linear(x, qw.codes, qw.scales, qw.zeros, qw.packed[:0],
                                      torch.empty(0), 0, 4, 32, False, 3)
    for bad in ("fast", None, 1):
        with pytest.raises(ValueError, match=r"^act:"):
            lowbit.quant_linear(x, qw, act=bad)
        with pytest.raises(ValueError, match=r"^act:"):
            lowbit.nn.QuantLinear(64, 16, qspec_default(), act=bad)


def qspec_default():
    return qspec("int", 4, 32, False)


# ---- QuantLinear ----
def test_quantlinear_from_linear_state_dict_round_trip_and_repr(gen, tmp_path):
    for spec in (qspec("int", 3, 32, False), qspec("nf", 4, 64, False), qspec("fp", 3, -1, True),
                 qspec("int", 2, 8, True)):
        lin = torch.nn.Linear(64, 24)
        m = lowbit.nn.QuantLinear.from_linear(lin, spec)
        x = torch.randn(5, 64, generator=gen)
        y = m(x)
        check(y, x, m.qweight, m.bias.detach(), spec.name)
        torch.testing.assert_close(lowbit.dequantize(m.qweight),
                                   lowbit.fake_quantize(lin.weight.detach(), spec))
        path = tmp_path / f"{spec.name}.pt"
        torch.save(m.state_dict(), path)
        m2 = lowbit.nn.QuantLinear(64, 24, spec)
        m2.load_state_dict(torch.load(path))
        torch.testing.assert_close(m2(x), y, rtol=0, atol=0)
        r = repr(m2)
        for part in (f"format={spec.format}", f"bits={spec.bits}",
                     f"group_size={spec.group_size}", "bytes=", "bits_per_weight="):
            assert part in r, r
        assert m.nbytes == m.qweight.nbytes


def test_quantlinear_no_bias_and_to(gen):
    lin = torch.nn.Linear(96, 20, bias=False)
    m = lowbit.nn.QuantLinear.from_linear(lin, qspec("nf", 3, 32, False)).to(torch.device("cpu"))
    assert m.bias is None
    x = torch.randn(3, 96, generator=gen)
    check(m(x), x, m.qweight)


def test_quantlinear_from_qat_duck_typed(gen):
    class FakeQAT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(16, 64, generator=gen))
            self.bias = torch.nn.Parameter(torch.randn(16, generator=gen))
            self.spec = qspec("int", 2, 32, False)
            self.ste = "bitdistiller"

        def forward(self, x):
            return F.linear(x, lowbit.fake_quantize(self.weight, self.spec, self.ste), self.bias)

    q = FakeQAT()
    m = lowbit.nn.QuantLinear.from_qat(q, act="float")  # float: equal up to float32 rounding
    x = torch.randn(4, 64, generator=gen)
    torch.testing.assert_close(m(x), q(x).detach(), rtol=1e-4, atol=1e-4)
    m.act = "auto"  # within 1e-4 of it in relative Frobenius norm (FORMATS.md 4)
    ref = q(x).detach().double()
    assert ((m(x).double() - ref).norm() / ref.norm()).item() <= 1e-4


def test_quantized_weight_lazy_layout_and_to(gen):
    qw = make(16, 64, qspec("int", 4, 32, False), gen)
    qw2 = lowbit.QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.spec, qw.shape, qw.dtype)
    x = torch.randn(2, 64, generator=gen)
    torch.testing.assert_close(lowbit.quant_linear(x, qw2), lowbit.quant_linear(x, qw))
    assert qw2.packed is not None and torch.equal(qw2.packed, qw.packed)
    qw3 = qw.to("cpu")  # a copy: its layout is built from its own codes on first use
    assert qw3.packed is None
    torch.testing.assert_close(lowbit.quant_linear(x, qw3), lowbit.quant_linear(x, qw))
    assert torch.equal(qw3.packed, qw.packed)


# ---- CUDA ----
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_cuda_matches_dequant_linear(fmt, bits, sym, dtype, gen):
    for g, K in ((32, 256), (128, 256), (-1, 200), (8, 64)):
        qw = make(72, K, qspec(fmt, bits, g, sym), gen).to("cuda")
        bias = torch.randn(72, generator=gen).to(dtype).cuda()
        for M in MS:
            x = torch.randn(M, K, generator=gen).to(dtype).cuda()
            y = lowbit.quant_linear(x, qw, bias)
            ref, scale = reference(x, qw, bias)
            err = (y.float() - ref).abs()
            # the tensor-core path rounds dequantised weights to x's 16-bit dtype
            tol = 1e-4 * scale + 1e-5 + 4 * EPS[dtype] * (ref.abs() + scale)
            assert (err <= tol).all(), f"g={g} M={M}: max err {err.max().item():.3g}"


@pytest.mark.cuda
def test_cuda_sanitizer_small_qlinear(gen):
    for spec in (qspec("int", 4, 32, False), qspec("nf", 3, 64, False), qspec("int", 2, -1, True)):
        qw = make(40, 128, spec, gen).to("cuda")
        for dtype in DTYPES:
            for M in (1, 3, 40):
                x = torch.randn(M, 128, generator=gen).to(dtype).cuda().requires_grad_()
                y = lowbit.quant_linear(x, qw)
                y.sum().backward()
                torch.cuda.synchronize()
                assert x.grad is not None and torch.isfinite(y).all()
                if dtype == torch.float32:
                    check(y.detach(), x.detach(), qw, None, f"{spec.name} M={M}")


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_packed_layout_dequantizes_exactly(fmt, bits, sym, gen, restore_isa):
    """The input-gradient path dequantises W^T from the packed layout: bit-identical to
    dequantize (float32) on every ISA, padding aside."""
    for g, K in ((32, 128), (-1, 72)):
        qw = lowbit.qlinear.ensure_kernel_layout(make(21, K, qspec(fmt, bits, g, sym), gen))
        f, b, gg, s = qw.spec.op_args(K)
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            nb = (K + 31) // 32
            z = qw.zeros if qw.zeros is not None else torch.empty(21, 0, dtype=torch.uint8)
            wt = torch.ops.lowbit.qlinear_dequant_t(qw.packed, qw.scales, z, f, b, gg, s, 21, K, 0,
                                                    nb)
            assert wt.shape == (nb * 32, 32)
            assert torch.equal(wt[:K, :21].t(), dequant_f32(qw)), isa
            if nb > 1:
                part = torch.ops.lowbit.qlinear_dequant_t(qw.packed, qw.scales, z, f, b, gg, s, 21,
                                                          K, 1, nb)
                assert torch.equal(torch.ops.lowbit.qlinear_unpack(qw.packed, 21, K, b), qw.codes)
                assert torch.equal(part, wt[32:]), isa


try:
    from hypothesis import given
    from hypothesis import strategies as st

    @st.composite
    def ql_cases(draw):
        fmt, bits, sym = draw(st.sampled_from(ALL_SPECS))
        g = draw(st.sampled_from([32, 64, -1, 16]))
        K = draw(st.integers(1, 6)) * (64 if g != -1 else 1) + (draw(st.integers(0, 40)) if g == -1 else 0)
        N = draw(st.integers(1, 50))
        M = draw(st.integers(0, 40))
        isa = draw(st.sampled_from(lowbit.available_cpu_isas()))
        dtype = draw(st.sampled_from(DTYPES))
        return fmt, bits, sym, g, K, N, M, isa, dtype, draw(st.booleans()), draw(st.integers(0, 2**31 - 1))

    @given(ql_cases())
    def test_property_quant_linear(case):
        fmt, bits, sym, g, K, N, M, isa, dtype, use_bias, seed = case
        gen = torch.Generator().manual_seed(seed)
        qw = make(N, K, qspec(fmt, bits, g, sym), gen)
        x = torch.randn(M, K, generator=gen).to(dtype)
        bias = torch.randn(N, generator=gen).to(dtype) if use_bias else None
        try:
            lowbit.set_cpu_isa(isa)
            y = lowbit.quant_linear(x, qw, bias)
        finally:
            lowbit.set_cpu_isa("auto")
        if M:
            check(y, x, qw, bias, str(case))
        else:
            assert y.shape == (0, N)
except ImportError:  # hypothesis is optional
    pass
