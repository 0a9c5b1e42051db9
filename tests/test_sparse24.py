"""lowbit's 2:4 structured sparsity (FORMATS.md section 3) against an independent reference.

The reference here never calls lowbit: pruning by a stable sort of -|w| in each group of 4
(so ties keep the lower index), and the product as a float64 dense matmul of the pruned weight.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

lowbit = pytest.importorskip("lowbit")
from lowbit.sparse import (Sparse24Weight, SparseLinear24, compress_24, decompress_24,  # noqa: E402
                           prune_24, sparse24_linear)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f32", "bf16", "f16"]


# ---- reference (independent of lowbit) ----
def ref_mask_24(w):
    n, k = w.shape
    a = w.detach().abs().double().reshape(n, k // 4, 4)
    a = torch.where(torch.isnan(a), torch.full_like(a, float("inf")), a)
    order = torch.sort(-a, dim=-1, stable=True).indices[..., :2]
    mask = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, order, True)
    return mask.reshape(n, k)


def ref_prune_24(w):
    m = ref_mask_24(w)
    return w * m, m


def ref_linear(x, wp, b=None):
    y = x.double() @ wp.double().t()
    if b is not None:
        y = y + b.double()
    return y


def tol(dtype, K):
    # float32: reassociated sums of K/2 products; 16-bit: one rounding of the output
    return {torch.float32: 1e-5 * (1 + K ** 0.5), torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]


def check_close(y, ref, dtype, K, what):
    scale = ref.abs().max().clamp(min=1.0)
    err = ((y.double() - ref).abs().max() / scale).item()
    assert err <= tol(dtype, K), f"{what}: relative error {err:.3g}"


@pytest.fixture
def restore_isa():
    yield
    lowbit.set_cpu_isa("auto")


# ---------------------------------------------------------------------------------------------
# prune / compress / decompress
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(1, 4), (7, 12), (33, 96), (16, 1028)])
def test_prune_matches_reference(shape, dtype, gen):
    w = torch.randn(shape, generator=gen).to(dtype)
    # plenty of ties: integer values in a small range, with zeros and both signs
    wt = torch.randint(-2, 3, shape, generator=gen).to(dtype)
    for ww in (w, wt):
        p, m = prune_24(ww)
        pr, mr = ref_prune_24(ww)
        assert m.dtype == torch.bool and torch.equal(m, mr)
        assert p.dtype == dtype and torch.equal(p, pr)
        assert torch.equal(m.reshape(shape[0], -1, 4).sum(-1), torch.full((shape[0], shape[1] // 4), 2))


def test_prune_ties_keep_lower_index():
    rows = [[1, 1, 1, 1], [0, 0, 0, 0], [-2, 2, 1, -2], [1, 3, 3, 3], [0, 0, 5, 0],
            [-1, 0.5, -0.5, 1], [float("nan"), 1, 2, float("nan")]]
    keep = [[0, 1], [0, 1], [0, 1], [1, 2], [0, 2], [0, 3], [0, 3]]
    w = torch.tensor(rows)
    _, m = prune_24(w)
    for r, k in enumerate(keep):
        assert m[r].nonzero().flatten().tolist() == k, rows[r]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(1, 4), (5, 12), (17, 100), (32, 256)])
def test_compress_round_trip(shape, dtype, gen):
    w = torch.randn(shape, generator=gen).to(dtype)
    p, m = prune_24(w)
    sw = compress_24(p)
    n, k = shape
    assert isinstance(sw, Sparse24Weight)
    assert sw.values.shape == (n, k // 2) and sw.values.dtype == dtype
    assert sw.meta.shape == (n, (k // 4 + 1) // 2) and sw.meta.dtype == torch.uint8
    assert torch.equal(sw.values, p[m].reshape(n, k // 2))  # kept values in order along K
    assert torch.equal(decompress_24(sw), p)
    # a weight with fewer than 2 nonzeros in some groups is 2:4-sparse too
    z = p.clone()
    z[:, 0:4] = 0
    z[:, -3] = 0
    assert torch.equal(decompress_24(compress_24(z)), z)


def test_meta_layout_documented():
    # group 0 keeps indices (1, 3), group 1 keeps (0, 2), group 2 keeps (2, 3)
    w = torch.tensor([[0, 5, 0, 6, 7, 0, 8, 0, 0, 0, 9, 10.0]])
    sw = compress_24(w)
    assert sw.values.tolist() == [[5, 6, 7, 8, 9, 10]]
    nib = [1 | (3 << 2), 0 | (2 << 2), 2 | (3 << 2)]
    assert sw.meta.tolist() == [[nib[0] | (nib[1] << 4), nib[2]]]


def test_compress_rejects_dense_weight():
    w = torch.ones(4, 8)
    w[2, 4:8] = torch.tensor([1.0, 0, 0, 0])
    p, _ = prune_24(w)
    p[3, 6] = 0.5  # a third nonzero in row 3, columns 4..7
    with pytest.raises(ValueError, match=r"^w: is not 2:4-sparse: row 3, columns 4"):
        compress_24(p)


@pytest.mark.parametrize("fn", [prune_24, compress_24])
def test_bad_weights(fn):
    with pytest.raises(ValueError, match=r"^w: .*multiple of 4"):
        fn(torch.randn(3, 10))
    with pytest.raises(ValueError, match=r"^w: expected a 2-D"):
        fn(torch.randn(16))
    with pytest.raises(TypeError, match=r"^w: dtype"):
        fn(torch.ones(4, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"^w: expected a torch.Tensor"):
        fn([[1.0, 2.0, 3.0, 4.0]])


# ---------------------------------------------------------------------------------------------
# sparse24_linear
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("M", [1, 5, 64, 300])
def test_linear_matches_dense_of_pruned(M, dtype, gen, restore_isa):
    for (N, K) in [(48, 256), (19, 36), (8, 100)]:
        w = torch.randn(N, K, generator=gen).to(dtype)
        b = torch.randn(N, generator=gen).to(dtype)
        x = torch.randn(M, K, generator=gen).to(dtype)
        p, _ = ref_prune_24(w)
        sw = compress_24(prune_24(w)[0])
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            for bias in (None, b):
                y = sparse24_linear(x, sw, bias)
                assert y.shape == (M, N) and y.dtype == dtype
                check_close(y, ref_linear(x, p, bias), dtype, K, f"{isa} M={M} N={N} K={K}")


@pytest.mark.parametrize("M", [2, 3, 4, 7, 65])
def test_linear_batch_shapes_and_paths(M, gen, restore_isa):
    """Both CPU paths (small M <= 4 and large M) and the m-block tails, with a 3-D x."""
    w = torch.randn(40, 160, generator=gen)
    x = torch.randn(2, M, 160, generator=gen)
    p, _ = prune_24(w)
    sw = compress_24(p)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        y = sparse24_linear(x, sw)
        assert y.shape == (2, M, 40)
        check_close(y, ref_linear(x, p), torch.float32, 160, isa)


def test_linear_non_contiguous_x(gen):
    w = torch.randn(16, 64, generator=gen)
    sw = compress_24(prune_24(w)[0])
    x = torch.randn(64, 10, generator=gen).t()
    check_close(sparse24_linear(x, sw), ref_linear(x, decompress_24(sw)), torch.float32, 64, "t")


def test_linear_backward(gen):
    w = torch.randn(24, 64, generator=gen)
    p, _ = prune_24(w)
    sw = compress_24(p)
    sw.values.requires_grad_(True)
    for M in (1, 9):
        x = torch.randn(M, 64, generator=gen, requires_grad=True)
        b = torch.randn(24, generator=gen, requires_grad=True)
        up = torch.randn(M, 24, generator=gen)
        (sparse24_linear(x, sw, b) * up).sum().backward()
        xr = x.detach().double().requires_grad_(True)
        wr = p.double().requires_grad_(True)
        br = b.detach().double().requires_grad_(True)
        (F.linear(xr, wr, br) * up.double()).sum().backward()
        torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.grad.double(), br.grad, rtol=1e-5, atol=1e-5)
        _, m = prune_24(w)
        torch.testing.assert_close(sw.values.grad.double(), wr.grad[m].reshape(24, 32),
                                   rtol=1e-5, atol=1e-5)
        sw.values.grad = None


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_backward_to_x_paths(dtype, gen, restore_isa):
    """grad_x = grad_y @ W_pruned: the op over the compressed weight (M <= 8) and the chunked
    decompress + matmul (larger M, and weights over the 16 MB chunk), every ISA."""
    from lowbit.sparse.sparse24 import _grad_x
    for (N, K) in [(37, 20), (64, 256), (2100, 2048)]:
        w = torch.randn(N, K, generator=gen).to(dtype)
        p, _ = ref_prune_24(w)
        sw = compress_24(p)
        for M in (1, 3, 8, 9):
            g = torch.randn(M, N, generator=gen).to(dtype)
            for isa in lowbit.available_cpu_isas():
                lowbit.set_cpu_isa(isa)
                got = _grad_x(g, sw.values, sw.meta)
                assert got.shape == (M, K) and got.dtype == dtype
                check_close(got, g.double() @ p.double(), dtype, N, f"{isa} {N}x{K} M={M}")
    x = torch.randn(2, 8, generator=gen)
    torch.library.opcheck(torch.ops.lowbit.sparse24_grad_x.default,
                          (x, compress_24(prune_24(torch.randn(8, 16))[0]).values,
                           compress_24(prune_24(torch.randn(8, 16))[0]).meta))


# ---- inf / NaN activations (FORMATS.md 4: they propagate as F.linear's would) ----
SPECIALS = (float("nan"), float("inf"), float("-inf"), 1e38)


def with_specials(x, gen):
    """x with rows 0..3 holding NaN, +inf, -inf, 1e38 (inf in float16) at a random column each;
    the rows after stay finite. Each column is pruned in about half the weight's rows."""
    x = x.clone()
    for r, v in enumerate(SPECIALS[:x.shape[0]]):
        x[r, int(torch.randint(0, x.shape[1], (1,), generator=gen))] = v
    return x


def check_nonfinite(y, ref, dtype, K, what):
    """NaN and +-inf exactly where the float64 reference (rounded to dtype: an overflow is inf
    there too) has them; elsewhere close relative to the row's largest value."""
    r = ref.to(dtype).double()
    g = y.double()
    assert torch.equal(torch.isnan(g), torch.isnan(r)), \
        f"{what}: NaN at {int(torch.isnan(g).sum())} outputs, F.linear at " \
        f"{int(torch.isnan(r).sum())}"
    inf = torch.isinf(r)
    assert torch.equal(g[inf], r[inf]) and not bool(torch.isinf(g[~inf]).any()), \
        f"{what}: infinities differ from F.linear's"
    fin = torch.isfinite(r)
    g, r = torch.where(fin, g, 0.0), torch.where(fin, r, 0.0)
    scale = r.abs().amax(-1, keepdim=True).clamp(min=1.0)
    err = ((g - r).abs() / scale).max().item()
    assert err <= tol(dtype, K), f"{what}: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("M", [1, 2, 4, 8, 9, 70])
def test_linear_nonfinite_x_matches_f_linear(M, dtype, gen, restore_isa):
    """A NaN or inf in x that meets a pruned weight makes the output NaN (0 * inf), as F.linear of
    the pruned weight does: the gather path (M <= 8), the transposed-x path, the low-bit kept
    values, every ISA; bias or not."""
    spec = lowbit.QuantSpec("int", 4, 16)
    for (N, K) in [(24, 64), (19, 36)]:
        w = torch.randn(N, K, generator=gen).to(dtype)
        b = torch.randn(N, generator=gen).to(dtype)
        x = with_specials(torch.randn(M, K, generator=gen).to(dtype), gen)
        p, _ = ref_prune_24(w)
        sw = compress_24(prune_24(w)[0])
        sq = sw.quantize(spec) if K % 32 == 0 else None
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            for bias in (None, b):
                y = sparse24_linear(x, sw, bias)
                check_nonfinite(y, ref_linear(x, p, bias), dtype, K, f"{isa} M={M} {N}x{K}")
                if sq is not None:
                    yq = sparse24_linear(x, sq, bias)
                    check_nonfinite(yq, ref_linear(x, decompress_24(sq), bias), dtype, K,
                                    f"int4 {isa} M={M} {N}x{K}")
        if M >= 2:  # a whole row of NaN: every output of it
            x[1] = float("nan")
            assert bool(torch.isnan(sparse24_linear(x, sw)[1]).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_backward_to_x_nonfinite_grad(dtype, gen, restore_isa):
    """grad_x = g @ W_pruned with a NaN/inf in g: NaN at the positions its row of W prunes, as the
    dense product gives; the compressed-form op (M <= 8) and the dense path (M > 8)."""
    from lowbit.sparse.sparse24 import _grad_x
    N, K = 20, 48
    w = torch.randn(N, K, generator=gen).to(dtype)
    p, _ = ref_prune_24(w)
    sw = compress_24(p)
    for M in (1, 4, 8, 9):
        g = with_specials(torch.randn(M, N, generator=gen).to(dtype), gen)
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            check_nonfinite(_grad_x(g, sw.values, sw.meta), g.double() @ p.double(), dtype, N,
                            f"{isa} M={M}")
    # through autograd: an inf upstream gradient
    x = torch.randn(3, K, generator=gen).to(dtype).requires_grad_(True)
    up = torch.randn(3, N, generator=gen).to(dtype)
    up[1, 2] = float("inf")
    sparse24_linear(x, sw).backward(up)
    check_nonfinite(x.grad, up.double() @ p.double(), dtype, N, "autograd")


def test_linear_opcheck_and_compile(gen):
    w = torch.randn(32, 64, generator=gen)
    sw = compress_24(prune_24(w)[0])
    x = torch.randn(5, 64, generator=gen, requires_grad=True)
    b = torch.randn(32, generator=gen)
    torch.library.opcheck(torch.ops.lowbit.sparse24_linear.default, (x, sw.values, sw.meta, b))
    torch.library.opcheck(torch.ops.lowbit.sparse24_decompress.default, (sw.values, sw.meta))
    q = sw.quantize(lowbit.QuantSpec("int", 4, 16))
    qz = q.qvalues
    torch.library.opcheck(torch.ops.lowbit.sparse24_qlinear.default,
                          (x, qz.codes, qz.scales, qz.zeros, q.meta, b, 0, 4, 16, False))

    def f(x):
        return torch.relu(sparse24_linear(x, sw, b)).sum()

    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = cf(x)
    out.backward()
    g1 = x.grad.clone()
    x.grad = None
    f(x).backward()
    torch.testing.assert_close(out, f(x))
    torch.testing.assert_close(g1, x.grad)


def test_linear_bad_inputs(gen):
    w = torch.randn(8, 16, generator=gen)
    sw = compress_24(prune_24(w)[0])
    with pytest.raises(TypeError, match=r"^sw: "):
        sparse24_linear(torch.randn(2, 16), w)
    with pytest.raises(TypeError, match=r"^x: dtype"):
        sparse24_linear(torch.randn(2, 16, dtype=torch.float64), sw)
    with pytest.raises(TypeError, match=r"^x: dtype .* differs"):
        sparse24_linear(torch.randn(2, 16, dtype=torch.bfloat16), sw)
    with pytest.raises(ValueError, match=r"^x: last dimension"):
        sparse24_linear(torch.randn(2, 12), sw)
    with pytest.raises(ValueError, match=r"^bias: "):
        sparse24_linear(torch.randn(2, 16), sw, torch.randn(7))
    with pytest.raises(TypeError, match=r"^bias: "):
        sparse24_linear(torch.randn(2, 16), sw, torch.randn(8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^backend: "):
        sparse24_linear(torch.randn(2, 16), sw, backend="magic")
    with pytest.raises(ValueError, match=r"^backend: "):
        sparse24_linear(torch.randn(2, 16), sw, backend="cusparselt")
    # the C glue checks again, naming the argument
    with pytest.raises(RuntimeError, match=r"meta: expected"):
        torch.ops.lowbit.sparse24_linear(torch.randn(2, 16), sw.values, sw.meta[:, :1].clone(),
                                         torch.empty(0))
    with pytest.raises(RuntimeError, match=r"x: in_features"):
        torch.ops.lowbit.sparse24_linear(torch.randn(2, 18), sw.values, sw.meta, torch.empty(0))
    with pytest.raises(RuntimeError, match=r"values: expected"):
        torch.ops.lowbit.sparse24_linear(torch.randn(2, 16), sw.values.double(), sw.meta,
                                         torch.empty(0))


# ---- the small-M kernels, path by path (csrc/cpu/sparse24_impl.h: 4 output rows per step at
# M = 1, 2 at M = 2, 1 above; kept values read in place, 4-bit codes decoded in registers, other
# codes through a row buffer) against the float64 product of the reference's pruned weight ----
KEPT_KINDS = [None, ("int", 4, 128, False), ("int", 4, 32, True), ("nf", 4, 64, False),
              ("fp", 4, 16, False), ("nf", 4, -1, True), ("int", 3, 64, False)]
KEPT_IDS = ["float", "int4-g128", "int4-sym-g32", "nf4-g64", "fp4-g16", "nf4-sym-row", "int3-g64"]


def unpack_codes(packed, bits, k):
    """(N, k) int64 codes of the per-row LSB-first bitstream of FORMATS.md 1.7."""
    n = packed.shape[0]
    bitv = (packed.long().unsqueeze(-1) >> torch.arange(8)) & 1  # (N, bytes, 8), LSB first
    bitv = bitv.reshape(n, -1)[:, : k * bits].reshape(n, k, bits)
    return (bitv << torch.arange(bits)).sum(-1)


def ref_kept_dense(w, sw):
    """The dense float32 weight a (possibly quantized) 2:4 weight stands for, from the references:
    the reference mask, and the kept values or, when quantized, the stored codes decoded by
    tests/reference.py (FORMATS.md 1), scattered back in order."""
    p, m = ref_prune_24(w)
    if sw.qvalues is None:
        return p.float()
    from reference import ref_decode
    q = sw.qvalues
    n, k = w.shape
    sp = q.spec
    codes = unpack_codes(q.codes, sp.bits, k // 2)
    kept = ref_decode(codes, {"scales": q.scales, "zeros": q.zeros}, sp.format, sp.bits,
                      sp.group_size, sp.symmetric)
    out = torch.zeros(n, k)
    out[m] = kept.reshape(-1)
    return out


@pytest.mark.parametrize("kind", KEPT_KINDS, ids=KEPT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_small_m_kernels_every_isa(kind, dtype, gen, restore_isa):
    """M in {1, 2, 5, 17} (17: the large-M path), odd N (steps of 4 rows, then single rows, and
    a 16-row task cut short), K a multiple of the 32-element step and K with a tail, bias or
    not, 16-bit x, non-contiguous and 3-D x, every ISA this CPU has, each kept-value source."""
    shapes = [(37, 512), (21, 1056), (5, 96)] if kind is None or kind[2] != 128 else [(37, 512)]
    if kind is None:
        shapes.append((19, 100))  # K/2 = 50: a tail of 2 kept values past the 16-value steps
    for (N, K) in shapes:
        w = torch.randn(N, K, generator=gen).to(dtype)
        b = torch.randn(N, generator=gen).to(dtype)
        sw = compress_24(prune_24(w)[0])
        if kind is not None:
            g = kind[2] if kind[2] == -1 or (K // 2) % kind[2] == 0 else -1
            spec = (kind[0], kind[1], g, kind[3])
            sw = sw.quantize(lowbit.QuantSpec(*spec))
        wd = ref_kept_dense(w, sw)
        for M in (1, 2, 5, 17):
            x = torch.randn(K, M, generator=gen).to(dtype).t()  # non-contiguous
            for isa in lowbit.available_cpu_isas():
                lowbit.set_cpu_isa(isa)
                for bias in (None, b):
                    y = sparse24_linear(x, sw, bias)
                    assert y.shape == (M, N) and y.dtype == dtype
                    check_close(y, ref_linear(x, wd, bias), dtype, K,
                                f"{isa} {kind} M={M} {N}x{K} bias={bias is not None}")
                y3 = sparse24_linear(x.reshape(1, M, K), sw)
                check_close(y3[0], ref_linear(x, wd), dtype, K, f"{isa} 3-D M={M}")


@pytest.mark.parametrize("K", [4096 + 64, 36], ids=["K%8==0", "K%8==4"])
def test_forward_kernels_name_the_first_bad_meta_row(K, gen, restore_isa):
    """The CPU forward kernels check meta as they read it (no pass of its own): a bad group deep
    in a row of a middle task -- near the end of a long row (the vector check's tail) or, for
    K % 8 == 4, a non-zero padding nibble -- is reported with its row, on every ISA and path
    (the float sources, 4-bit codes, the row buffer; small and large M; M = 0)."""
    N = 40
    sw = compress_24(prune_24(torch.randn(N, K, generator=gen))[0])
    q4 = lowbit.quantize(sw.values, lowbit.QuantSpec("int", 4, -1))
    q3 = lowbit.quantize(sw.values, lowbit.QuantSpec("int", 3, -1))
    empty = torch.empty(0)
    for row in (21, 39):
        bad = sw.meta.clone()
        if K % 8:
            bad[row, -1] |= 0x30  # the padding nibble
        else:
            bad[row, -2] = (bad[row, -2] & 0xF0) | 0x05  # a group keeping index 1 twice
        bad[row + 1:, 0] = 0x00 if row + 1 < N else bad[row + 1:, 0]  # later bad rows too
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            for M in (0, 1, 2, 5, 17):
                x = torch.randn(M, K, generator=gen)
                calls = [lambda: torch.ops.lowbit.sparse24_linear(x, sw.values, bad, empty)]
                calls += [lambda q=q: torch.ops.lowbit.sparse24_qlinear(
                    x, q.codes, q.scales, q.zeros, bad, empty, 0, q.spec.bits, K // 2, False)
                    for q in (q4, q3)]
                for call in calls:
                    with pytest.raises(RuntimeError, match=rf"meta: row {row} holds an invalid"):
                        call()


# ---------------------------------------------------------------------------------------------
# 2:4 + low bits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("fmt,bits,g,sym", [("int", 4, 128, False), ("int", 3, 64, False),
                                            ("nf", 4, 32, False), ("int", 2, -1, True),
                                            ("fp", 4, 16, False), ("int", 8, 64, False)])
def test_quantized_kept_values(fmt, bits, g, sym, dtype, gen, restore_isa):
    spec = lowbit.QuantSpec(fmt, bits, g, sym)
    N, K = 24, 512
    w = torch.randn(N, K, generator=gen).to(dtype)
    sw = compress_24(prune_24(w)[0])
    sq = sw.quantize(spec)
    q = lowbit.quantize(sw.values, spec)
    wd = decompress_24(Sparse24Weight(lowbit.dequantize(q), sw.meta, sw.shape, dtype))
    assert torch.equal(decompress_24(sq), wd)
    b = torch.randn(N, generator=gen).to(dtype)
    for M in (1, 5, 64, 300):
        x = torch.randn(M, K, generator=gen).to(dtype)
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            y = sparse24_linear(x, sq, b)
            check_close(y, ref_linear(x, wd, b), dtype, K, f"{spec.name} {isa} M={M}")


def test_quantized_bits_per_weight_and_backward(gen):
    w = torch.randn(64, 1024, generator=gen)
    sq = compress_24(prune_24(w)[0]).quantize(lowbit.QuantSpec("int", 4, 128))
    # 4 bits per kept value (2 per weight) + 1 bit of indices + scale and zero per 128 kept
    assert abs(sq.bits_per_weight - (2 + 1 + 40 / 256)) < 1e-9
    x = torch.randn(3, 1024, generator=gen, requires_grad=True)
    sparse24_linear(x, sq).sum().backward()
    torch.testing.assert_close(x.grad, decompress_24(sq).sum(0).expand(3, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"self: already quantized"):
        sq.quantize(lowbit.QuantSpec("int", 4, 128))
    with pytest.raises(TypeError, match=r"^spec: "):
        compress_24(prune_24(w)[0]).quantize("int4")


# ---------------------------------------------------------------------------------------------
# SparseLinear24
# ---------------------------------------------------------------------------------------------
def _lin(gen, n=16, k=32, bias=True):
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=gen))
    return lin


def test_train_mode_forward_and_masked_grads(gen):
    lin = _lin(gen)
    m = SparseLinear24.from_linear(lin, ste=False, mask_update_interval=0)
    x = torch.randn(6, 32, generator=gen, requires_grad=True)
    up = torch.randn(6, 16, generator=gen)
    (m(x) * up).sum().backward()
    w = lin.weight.detach().clone().requires_grad_(True)
    mask = ref_mask_24(w)
    xr = x.detach().clone().requires_grad_(True)
    b = lin.bias.detach().clone().requires_grad_(True)
    (F.linear(xr, w * mask, b) * up).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(m.weight.grad, w.grad)  # zero at pruned positions
    torch.testing.assert_close(m.bias.grad, b.grad)
    assert torch.equal(m.mask, mask)


def test_train_mode_ste_and_srste(gen):
    lin = _lin(gen)
    lam = 0.1
    m = SparseLinear24.from_linear(lin, srste_decay=lam)
    x = torch.randn(6, 32, generator=gen)
    up = torch.randn(6, 16, generator=gen)
    (m(x) * up).sum().backward()
    w = lin.weight.detach()
    mask = ref_mask_24(w)
    dense_grad = up.t() @ x  # straight through: the gradient of the dense product
    torch.testing.assert_close(m.weight.grad, dense_grad + lam * (~mask) * w)


def test_mask_update_interval(gen):
    lin = _lin(gen)
    m = SparseLinear24.from_linear(lin, mask_update_interval=3)
    x = torch.randn(2, 32, generator=gen)
    m.train()
    masks = []
    for step in range(7):
        with torch.no_grad():
            m.weight.copy_(torch.randn(16, 32, generator=gen))
        w_now = m.weight.detach().clone()
        y = m(x)
        masks.append(m.mask.clone())
        if step % 3 == 0:  # recomputed from this step's weight, before the product
            assert torch.equal(m.mask, ref_mask_24(w_now))
            torch.testing.assert_close(y, F.linear(x, w_now * ref_mask_24(w_now), m.bias))
        else:
            assert torch.equal(masks[-1], masks[-2])
    assert int(m.step) == 7
    m.eval()
    with torch.no_grad():
        m.weight.copy_(torch.randn(16, 32, generator=gen))
    before = m.mask.clone()
    m(x)
    assert torch.equal(m.mask, before) and int(m.step) == 7


@pytest.mark.parametrize("spec", [None, lowbit.QuantSpec("int", 4, 16)], ids=["float", "int4"])
def test_inference_mode_and_state_dict(spec, gen):
    lin = _lin(gen, n=16, k=64)
    m = SparseLinear24.from_linear(lin, mode="inference", spec=spec)
    x = torch.randn(3, 5, 64, generator=gen)
    p, _ = ref_prune_24(lin.weight.detach())
    if spec is None:
        check_close(m(x), ref_linear(x, p, lin.bias.detach()), torch.float32, 64, "inference")
        assert torch.equal(m.pruned_weight(), p)
    else:
        check_close(m(x), ref_linear(x, m.pruned_weight(), lin.bias.detach()), torch.float32, 64, "q")
    sd = m.state_dict()
    assert "meta" in sd and ("values" in sd if spec is None else "codes" in sd)
    fresh = SparseLinear24(64, 16, mode="inference", spec=spec)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), m(x))
    assert all(not t.requires_grad for t in m.buffers())


def test_to_inference_after_training(gen):
    lin = _lin(gen)
    m = SparseLinear24.from_linear(lin)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(4, 32, generator=gen)
    for _ in range(3):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    m.eval()
    inf = m.to_inference()
    torch.testing.assert_close(inf(x), m(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x), F.linear(x, m.pruned_weight(), m.bias))


def test_module_bad_arguments(gen):
    with pytest.raises(ValueError, match=r"^mode: "):
        SparseLinear24.from_linear(_lin(gen), mode="fast")
    with pytest.raises(TypeError, match=r"^linear: "):
        SparseLinear24.from_linear(nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match=r"^linear.weight: .*multiple of 4"):
        SparseLinear24.from_linear(nn.Linear(10, 4))
    with pytest.raises(ValueError, match=r"^spec: "):
        SparseLinear24.from_linear(_lin(gen), spec=lowbit.QuantSpec())
    with pytest.raises(ValueError, match=r"^srste_decay: "):
        SparseLinear24.from_linear(_lin(gen), srste_decay=-1)


_NAN, _INF = float("nan"), float("inf")
BAD_MODULE_ARGS = [  # (override of SparseLinear24(8, 4)'s arguments, error type, named argument)
    (dict(out_features=-3), ValueError, "out_features"),
    (dict(out_features=0), ValueError, "out_features"),
    (dict(out_features=True), TypeError, "out_features"),
    (dict(out_features=4.0), TypeError, "out_features"),
    (dict(in_features=-8), ValueError, "in_features"),
    (dict(in_features=6), ValueError, "in_features"),
    (dict(in_features="8"), TypeError, "in_features"),
    (dict(srste_decay="a"), TypeError, "srste_decay"),
    (dict(srste_decay=_NAN), ValueError, "srste_decay"),
    (dict(srste_decay=_INF), ValueError, "srste_decay"),
    (dict(srste_decay=-0.1), ValueError, "srste_decay"),
    (dict(srste_decay=None), TypeError, "srste_decay"),
    (dict(mask_update_interval=-1), ValueError, "mask_update_interval"),
    (dict(mask_update_interval=2.5), TypeError, "mask_update_interval"),
    (dict(mask_update_interval=True), TypeError, "mask_update_interval"),
    (dict(mode="fast"), ValueError, "mode"),
    (dict(mode=None), ValueError, "mode"),
    (dict(ste="no"), TypeError, "ste"),
    (dict(bias="yes"), TypeError, "bias"),
    (dict(spec="int4"), TypeError, "spec"),
    (dict(spec=lowbit.QuantSpec("int", 4, 16)), ValueError, "spec"),  # train mode
    (dict(mode="inference", spec=lowbit.QuantSpec("int", 4, 32)), ValueError, "spec"),  # 32 > K/2
    (dict(dtype=torch.int32), TypeError, "dtype"),
    (dict(dtype=torch.float64), TypeError, "dtype"),
    (dict(dtype="float32"), TypeError, "dtype"),
    (dict(device="nodevice"), ValueError, "device"),
    (dict(device=1.5), TypeError, "device"),
]


@pytest.mark.parametrize("override,exc,name", BAD_MODULE_ARGS,
                         ids=[f"{a[2]}-{i}" for i, a in enumerate(BAD_MODULE_ARGS)])
def test_module_constructor_arguments_are_checked(override, exc, name):
    """Every constructor argument of SparseLinear24 is checked, the error naming it (no torch
    negative-dimension error, no bare float() error, no NaN decay or empty layer accepted)."""
    kw = dict(dict(in_features=8, out_features=4), **override)
    with pytest.raises(exc, match=f"^{name}: "):
        SparseLinear24(**kw)
    # the options of from_linear and sparsify_ go through the same checks
    opts = {k: v for k, v in override.items()
            if k in ("mode", "srste_decay", "mask_update_interval", "ste", "spec")}
    if opts:
        with pytest.raises(exc, match=f"^{name}: "):
            SparseLinear24.from_linear(nn.Linear(8, 4), **opts)
        model = nn.Sequential(nn.Linear(8, 4))
        with pytest.raises(exc, match=f"^{name}: "):
            lowbit.sparsify_(model, **opts)
        assert type(model[0]) is nn.Linear  # nothing replaced


def test_sparsify_arguments_are_checked():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    for kw, exc, name in [(dict(skip=5), TypeError, "skip"),
                          (dict(include=[1]), TypeError, "include"),
                          (dict(skip=["0", None]), TypeError, "skip"),
                          (dict(maks_update_interval=2), TypeError, "maks_update_interval"),
                          (dict(mode="inference", spec=lowbit.QuantSpec("int", 4, 8)), ValueError,
                           "spec")]:
        with pytest.raises(exc, match=f"^{name}: "):
            lowbit.sparsify_(model, **kw)
        assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear, kw
    # valid values of the same arguments still work
    lowbit.sparsify_(model, skip=None, include=("0",), srste_decay=torch.tensor(0.5), ste=False,
                     mask_update_interval=None)
    assert isinstance(model[0], SparseLinear24) and type(model[2]) is nn.Linear
    assert model[0].srste_decay == 0.5 and model[0].mask_update_interval == 0


# ---------------------------------------------------------------------------------------------
# sparsify_
# ---------------------------------------------------------------------------------------------
def test_sparsify_sequential(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 32)),
                          nn.Linear(32, 8))
    x = torch.randn(4, 32, generator=gen)
    ws = [model[0].weight.detach().clone(), model[2][0].weight.detach().clone()]
    out = lowbit.sparsify_(model, skip=("3",), mode="inference")
    assert out is model
    assert isinstance(model[0], SparseLinear24) and isinstance(model[2][0], SparseLinear24)
    assert type(model[3]) is nn.Linear
    h = F.relu(F.linear(x, ref_prune_24(ws[0])[0], model[0].bias))
    ref = model[3](F.linear(h, ref_prune_24(ws[1])[0], model[2][0].bias))
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"^model: already"):
        lowbit.sparsify_(model)
    with pytest.raises(ValueError, match=r"^model: layer '0'"):
        lowbit.sparsify_(nn.Sequential(nn.Linear(6, 4)))
    with pytest.raises(ValueError, match=r"^mode: "):
        lowbit.sparsify_(nn.Sequential(nn.Linear(8, 4)), mode="x")


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_sparsify_shared_module_keeps_sharing(mode, gen):
    """A Linear used twice becomes ONE SparseLinear24 used twice."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    lowbit.sparsify_(model, skip=(), mode=mode)
    assert isinstance(model[0], SparseLinear24) and model[0] is model[2]
    assert len(list(model.parameters())) == (2 if mode == "train" else 1)
    x = torch.randn(3, 64, generator=gen)
    wp = ref_prune_24(w)[0]
    ref = ref_linear(F.relu(ref_linear(x, wp, b)).float(), wp, b)
    check_close(model(x).detach(), ref, torch.float32, 64, mode)
    with pytest.raises(ValueError, match=r"^model: one Linear is used at several places"):
        lowbit.sparsify_(nn.Sequential(lin, lin), skip=("1",))


def test_sparsify_llama_mlp_only():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    lowbit.sparsify_(model, skip=("lm_head",), include=("mlp.*",), mode="train")
    names = [n for n, m in model.named_modules() if isinstance(m, SparseLinear24)]
    assert sorted(names) == sorted(f"model.layers.{i}.mlp.{p}" for i in range(2)
                                   for p in ("gate_proj", "up_proj", "down_proj"))
    assert type(model.lm_head) is nn.Linear
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    model.train()
    out = model(ids, labels=ids)
    out.loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None
    # the inference form computes the same function
    model.eval()
    with torch.no_grad():
        ref = model(ids).logits
    model2 = transformers.LlamaForCausalLM(cfg).eval()
    model2.load_state_dict({k: v for k, v in model.state_dict().items()
                            if not k.endswith((".mask", ".step"))})
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, SparseLinear24):
                model2.get_submodule(name).weight.copy_(mod.pruned_weight())
    lowbit.sparsify_(model2, include=("mlp.*",), mode="inference")
    with torch.no_grad():
        torch.testing.assert_close(model2(ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_cusparselt_probe_is_bool():
    assert isinstance(lowbit.sparse.cusparselt_available(), bool)


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_linear_matches_cpu(dtype, gen):
    for (N, K), M in [((64, 256), 1), ((64, 256), 64), ((19, 36), 5), ((128, 512), 300)]:
        w = torch.randn(N, K, generator=gen).to(dtype)
        x = torch.randn(M, K, generator=gen).to(dtype)
        b = torch.randn(N, generator=gen).to(dtype)
        p, _ = ref_prune_24(w)
        sw = compress_24(prune_24(w.cuda())[0])
        assert torch.equal(decompress_24(sw).cpu(), p)
        for backend in ("lowbit", "auto"):
            y = sparse24_linear(x.cuda(), sw, b.cuda(), backend=backend)
            check_close(y.cpu(), ref_linear(x, p, b), dtype, K, f"cuda {backend} M={M}")
        xg = x.cuda().requires_grad_(True)
        sparse24_linear(xg, sw).sum().backward()
        torch.testing.assert_close(xg.grad.cpu().float(), p.float().sum(0).expand(M, -1),
                                   rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_cusparselt(dtype, gen):
    if not lowbit.sparse.cusparselt_available():
        with pytest.raises(RuntimeError, match="cuSPARSELt"):
            sw = compress_24(prune_24(torch.randn(64, 128, device="cuda", dtype=dtype))[0])
            sparse24_linear(torch.randn(8, 128, device="cuda", dtype=dtype), sw,
                            backend="cusparselt")
        pytest.skip("cuSPARSELt not installed")
    N, K, M = 256, 512, 64
    w = torch.randn(N, K, generator=gen).to(dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype)
    p, _ = ref_prune_24(w)
    sw = compress_24(p.cuda())
    y = sparse24_linear(x.cuda(), sw, b.cuda(), backend="cusparselt")
    check_close(y.cpu(), ref_linear(x, p, b), dtype, K, "cusparselt")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_nonfinite_x_matches_f_linear(dtype, gen):
    """NaN/inf in x at pruned positions on CUDA: lowbit's gather kernel (any M), the low-bit
    kept values (dequantized, then that kernel) and cuSPARSELt (16-bit, when installed)."""
    N, K = 64, 256
    w = torch.randn(N, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype)
    p, _ = ref_prune_24(w)
    sw = compress_24(p.cuda())
    sq = sw.quantize(lowbit.QuantSpec("int", 4, 16))
    backends = ["lowbit"]
    if dtype != torch.float32 and lowbit.sparse.cusparselt_available():
        backends.append("cusparselt")
    for M in (1, 5, 64):
        x = with_specials(torch.randn(M, K, generator=gen).to(dtype), gen)
        for backend in backends:
            if backend == "cusparselt" and M % 8:
                continue
            for bias in (None, b):
                y = sparse24_linear(x.cuda(), sw, None if bias is None else bias.cuda(),
                                    backend=backend)
                check_nonfinite(y.cpu(), ref_linear(x, p, bias), dtype, K, f"{backend} M={M}")
        yq = sparse24_linear(x.cuda(), sq)
        check_nonfinite(yq.cpu(), ref_linear(x, decompress_24(sq).cpu()), dtype, K, f"q M={M}")


@pytest.mark.cuda
def test_cuda_sanitizer_small_sparse24(gen):
    """Small odd shapes through every CUDA kernel of the family (device_check.sh runs this under
    compute-sanitizer): an odd number of groups, M not a multiple of 4, all dtypes."""
    for dtype in DTYPES:
        for (N, K), M in [((3, 12), 1), ((5, 20), 3), ((9, 36), 7)]:
            w = torch.randn(N, K, generator=gen).to(dtype)
            x = torch.randn(M, K, generator=gen).to(dtype)
            p, _ = ref_prune_24(w)
            sw = compress_24(p.cuda())
            assert torch.equal(decompress_24(sw).cpu(), p)
            y = sparse24_linear(x.cuda(), sw, backend="lowbit")
            torch.cuda.synchronize()
            check_close(y.cpu(), ref_linear(x, p), dtype, K, f"cuda small {N}x{K} M={M}")


# ---------------------------------------------------------------------------------------------
# meta content and 16-bit casts of quantized layers
# ---------------------------------------------------------------------------------------------
def _nibble_ok(nb):
    return (nb & 3) < (nb >> 2)  # the two in-group indices strictly increasing


def test_every_meta_byte_is_refused_or_agrees(gen):
    """K = 8: one meta byte per row (two groups). For each of the 256 bytes either every entry
    point refuses it (Sparse24Weight: ValueError; each raw CPU op: RuntimeError naming meta) or
    sparse24_linear, sparse24_grad_x and decompress_24 agree with the reference scatter."""
    values = torch.randn(1, 4, generator=gen)
    x = torch.randn(3, 8, generator=gen)
    q = lowbit.quantize(values, lowbit.QuantSpec("int", 4, -1))
    empty = torch.empty(0)
    for byte in range(256):
        meta = torch.tensor([[byte]], dtype=torch.uint8)
        raw = [lambda: torch.ops.lowbit.sparse24_linear(x, values, meta, empty),
               lambda: torch.ops.lowbit.sparse24_decompress(values, meta),
               lambda: torch.ops.lowbit.sparse24_grad_x(torch.ones(2, 1), values, meta),
               lambda: torch.ops.lowbit.sparse24_qlinear(x, q.codes, q.scales, q.zeros, meta,
                                                         empty, 0, 4, 4, False)]
        if not (_nibble_ok(byte & 15) and _nibble_ok(byte >> 4)):
            with pytest.raises(ValueError, match=r"^meta: row 0 holds an invalid 2:4 group"):
                Sparse24Weight(values, meta, (1, 8), torch.float32)
            for call in raw:
                with pytest.raises(RuntimeError, match=r"meta: row 0 holds an invalid"):
                    call()
            continue
        dense = torch.zeros(1, 8)
        for grp in range(2):
            nb = (byte >> (4 * grp)) & 15
            dense[0, 4 * grp + (nb & 3)] = values[0, 2 * grp]
            dense[0, 4 * grp + (nb >> 2)] = values[0, 2 * grp + 1]
        sw = Sparse24Weight(values, meta, (1, 8), torch.float32)
        assert torch.equal(decompress_24(sw), dense)
        check_close(sparse24_linear(x, sw), ref_linear(x, dense), torch.float32, 8, f"{byte}")
        torch.testing.assert_close(torch.ops.lowbit.sparse24_grad_x(torch.ones(2, 1), values, meta),
                                   dense.expand(2, 8), rtol=0, atol=0)


def test_meta_padding_nibble_and_parts_are_checked(gen):
    w = torch.randn(4, 12, generator=gen)  # K/4 = 3 groups: the last byte's high nibble pads
    sw = compress_24(prune_24(w)[0])
    bad = sw.meta.clone()
    bad[2, 1] |= 0x40
    with pytest.raises(ValueError, match=r"^meta: row 2 holds an invalid"):
        Sparse24Weight(sw.values, bad, sw.shape, sw.dtype)
    with pytest.raises(RuntimeError, match=r"meta: row 2 holds an invalid"):
        torch.ops.lowbit.sparse24_decompress(sw.values, bad)
    with pytest.raises(ValueError, match=r"^meta: expected a uint8 tensor of shape \(4, 2\)"):
        Sparse24Weight(sw.values, sw.meta[:, :1], sw.shape, sw.dtype)
    with pytest.raises(ValueError, match=r"^values: expected shape \(4, 6\)"):
        Sparse24Weight(sw.values[:, :4], sw.meta, sw.shape, sw.dtype)
    with pytest.raises(TypeError, match=r"^values: dtype"):
        Sparse24Weight(sw.values, sw.meta, sw.shape, torch.float16)
    with pytest.raises(ValueError, match=r"^shape: "):
        Sparse24Weight(sw.values, sw.meta, (4, 13), sw.dtype)
    # a module loaded from a state_dict is checked like any user tensors
    m = SparseLinear24.from_linear(_lin(gen, n=16, k=64), mode="inference")
    sd = m.state_dict()
    sd["meta"] = sd["meta"].clone()
    sd["meta"][5, 3] = 0x00  # both groups keep index 0 twice
    with pytest.raises(ValueError, match=r"^meta: row 5 holds an invalid"):
        SparseLinear24(64, 16, mode="inference").load_state_dict(sd)
    # an unloaded skeleton holds a valid meta (its forward runs, on zero values)
    assert torch.equal(SparseLinear24(64, 16, mode="inference")(torch.ones(2, 64)),
                       torch.zeros(2, 16))


@pytest.mark.parametrize("cast", ["half", "to_bf16", "model_to_bf16"])
def test_quantized_layer_keeps_packing_under_16_bit_casts(cast, gen):
    spec = lowbit.QuantSpec("int", 4, 16)
    lin = _lin(gen, n=16, k=64)
    m = SparseLinear24.from_linear(lin, mode="inference", spec=spec)
    codes, scales, zeros, meta = (t.clone() for t in (m.codes, m.scales, m.zeros, m.meta))
    w32 = m.pruned_weight()  # the float32 weight the codes stand for
    dt = torch.float16 if cast == "half" else torch.bfloat16
    if cast == "half":
        m2 = m.half()
    elif cast == "to_bf16":
        m2 = m.to(torch.bfloat16)
    else:
        m2 = nn.Sequential(nn.Identity(), m).to(torch.bfloat16)[1]
    assert m2 is m
    assert m.scales.dtype == torch.float32 and torch.equal(m.scales, scales)
    for a, b in ((m.codes, codes), (m.zeros, zeros), (m.meta, meta)):
        assert torch.equal(a, b)
    assert m.bias.dtype == dt and m.state_dict()["scales"].dtype == torch.float32
    x = torch.randn(5, 64, generator=gen)
    y = m(x.to(dt))
    assert y.dtype == dt
    ref = ref_linear(x.to(dt), w32, m.bias.detach())
    check_close(y, ref, dt, 64, cast)
    y32 = m(x)  # float32 activations still work and come back float32
    assert y32.dtype == torch.float32
    check_close(y32, ref_linear(x, w32, m.bias.detach().float()), torch.float32, 64, cast)
    assert m.pruned_weight().dtype == dt
