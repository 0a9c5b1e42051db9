"""Forward-mode AD and double backward through every differentiable lowbit op:
an exact tangent / second derivative where the op defines one cheaply (the identity STE, the
linear products, the KL loss's first-order tangent, decompress_24), else a RuntimeError naming
the public function -- never a None or zero tangent, never a silent zero second derivative.
References: plain-PyTorch formulas (tests/reference*.py) under torch.func / double backward."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

pytest.importorskip("lowbit")

from reference import ref_fake_quant  # noqa: E402
from reference_kl import ref_loss  # noqa: E402

import lowbit  # noqa: E402
from lowbit import _autograd  # noqa: E402
from lowbit.sparse import Sparse24Weight, compress_24, prune_24, sparse24_linear  # noqa: E402

SPEC = lowbit.QuantSpec("int", 4, 32)
FWD_MSG = "forward-mode AD is not supported by "
TWICE_MSG = "double backward .* is not supported by "


def fwad_jvp(f, primals, tangents):
    """The tangent of f's output through torch.autograd.forward_ad (the non-functorch route)."""
    with fwAD.dual_level():
        out = f(*[fwAD.make_dual(p, t) for p, t in zip(primals, tangents)])
        return fwAD.unpack_dual(out).tangent


def both_jvps(f, primals, tangents):
    """The output tangent by torch.func.jvp and by forward_ad: they must agree, and exist."""
    _, t_func = torch.func.jvp(f, tuple(primals), tuple(tangents))
    t_fw = fwad_jvp(f, primals, tangents)
    assert t_fw is not None, "forward_ad produced no tangent"
    torch.testing.assert_close(t_func, t_fw, rtol=1e-6, atol=1e-7)
    return t_func


def test_every_op_has_an_autograd_kernel():
    assert _autograd.ops_without_autograd() == []
    names = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas()
             if s.name.startswith("lowbit::")}
    assert names <= set(_autograd._REGISTERED), names - set(_autograd._REGISTERED)


# ---- fake_quantize ----
def test_fake_quantize_identity_ste_tangent_is_the_tangent(gen):
    w = torch.randn(8, 64, generator=gen)
    t = torch.randn(8, 64, generator=gen)
    got = both_jvps(lambda w: lowbit.fake_quantize(w, SPEC, ste="identity"), (w,), (t,))
    torch.testing.assert_close(got, t, rtol=0, atol=0)  # FORMATS.md 1.5: dQ/dw = 1


def test_fake_quantize_bitdistiller_forward_ad_raises(gen):
    w, t = torch.randn(8, 64, generator=gen), torch.randn(8, 64, generator=gen)
    f = lambda w: lowbit.fake_quantize(w, SPEC)  # noqa: E731
    with pytest.raises(RuntimeError, match=FWD_MSG + "lowbit.fake_quantize"):
        torch.func.jvp(f, (w,), (t,))
    with pytest.raises(RuntimeError, match=FWD_MSG + "lowbit.fake_quantize"):
        fwad_jvp(f, (w,), (t,))


def test_fake_quantize_double_backward(gen):
    w = torch.randn(8, 64, generator=gen)
    # identity STE: y = sum Q(w)^2 -> dy/dw = 2 Q(w) -> d/dw sum(2 Q(w)) = 2 (exact)
    got = torch.func.grad(lambda w: torch.func.grad(
        lambda v: lowbit.fake_quantize(v, SPEC, ste="identity").pow(2).sum())(w).sum())(w)
    v = w.clone().requires_grad_()
    (g,) = torch.autograd.grad(ref_fake_quant(v, "int", 4, 32, False, "identity").pow(2).sum(),
                               v, create_graph=True)
    (ref,) = torch.autograd.grad(g.sum(), v)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # bitdistiller: the second derivative is not defined here: an error, both ways of asking
    x = w.clone().requires_grad_()
    for loss in (lambda q: q.pow(2).sum(), lambda q: q.sum()):
        (g,) = torch.autograd.grad(loss(lowbit.fake_quantize(x, SPEC)), x, create_graph=True)
        with pytest.raises(RuntimeError, match=TWICE_MSG + "lowbit.fake_quantize"):
            torch.autograd.grad(g.pow(2).sum(), x)
    (g,) = torch.autograd.grad(lowbit.fake_quantize(x, SPEC).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=TWICE_MSG + "lowbit.fake_quantize"):
        g.sum().backward()
    # under torch.func the inner backward's own op refuses (it is the one recorded there)
    with pytest.raises(RuntimeError, match="lowbit::fake_quant_backward is not differentiable"):
        torch.func.grad(lambda w: torch.func.grad(
            lambda v: lowbit.fake_quantize(v, SPEC).pow(2).sum())(w).sum())(w)


# ---- quant_linear ----
def _qlinear_case(gen):
    w = torch.randn(24, 64, generator=gen)
    qw = lowbit.quantize(w, SPEC)
    wq = ref_fake_quant(w, "int", 4, 32, False).double()  # = dequantize(qw) by FORMATS.md 1.7
    x, tx = torch.randn(5, 64, generator=gen), torch.randn(5, 64, generator=gen)
    b, tb = torch.randn(24, generator=gen), torch.randn(24, generator=gen)
    return qw, wq, x, tx, b, tb


def test_quant_linear_tangent_is_the_linear_map(gen):
    qw, wq, x, tx, b, tb = _qlinear_case(gen)
    got = both_jvps(lambda x, b: lowbit.quant_linear(x, qw, b), (x, b), (tx, tb))
    ref = F.linear(tx.double(), wq, tb.double())
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    got_x = both_jvps(lambda x: lowbit.quant_linear(x, qw, b), (x,), (tx,))  # bias fixed
    torch.testing.assert_close(got_x.double(), F.linear(tx.double(), wq), rtol=1e-5, atol=1e-5)
    # a tangent on the packed weight's scales has no formula: refused, not dropped
    scales_t = torch.randn(qw.scales.shape, generator=gen)
    qw2 = lowbit.QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.spec, qw.shape, qw.dtype)
    with pytest.raises(RuntimeError, match=FWD_MSG + "lowbit.quant_linear .*'scales'"):
        with fwAD.dual_level():
            qw2.scales = fwAD.make_dual(qw.scales, scales_t)
            lowbit.quant_linear(x, qw2, b)


def test_quant_linear_double_backward_is_exact(gen):
    qw, wq, x, _, b, _ = _qlinear_case(gen)

    def second(f, x):
        x = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(f(x).pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), x)[0]

    got = second(lambda x: lowbit.quant_linear(x, qw, b, act="float"), x)  # exact float mode
    ref = second(lambda x: F.linear(x, wq, b.double()), x.double())
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


# ---- kl_div_loss ----
@pytest.mark.parametrize("kind", ["forward", "reverse", "cakld", "jsd"])
def test_kl_div_loss_tangent(gen, kind):
    s, t, ts = (torch.randn(6, 40, generator=gen) for _ in range(3))
    labels = torch.randint(0, 40, (6,), generator=gen)
    labels[2] = -100
    kw = dict(kind=kind, gamma=0.3, beta=0.4, temperature=1.5, labels=labels)
    got = both_jvps(lambda s: lowbit.kl_div_loss(s, t, **kw), (s,), (ts,))
    _, ref = torch.func.jvp(lambda s: ref_loss(s, t, **kw), (s.double(),), (ts.double(),))
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    rows = both_jvps(lambda s: lowbit.kl_div_loss(s, t, reduction="none", **kw), (s,), (ts,))
    _, ref_rows = torch.func.jvp(lambda s: ref_loss(s, t, reduction="none", **kw),
                                 (s.double(),), (ts.double(),))
    torch.testing.assert_close(rows.double(), ref_rows, rtol=1e-5, atol=1e-6)


def test_kl_div_loss_second_derivative_raises(gen):
    s, t = torch.randn(4, 16, generator=gen).requires_grad_(), torch.randn(4, 16, generator=gen)
    (g,) = torch.autograd.grad(lowbit.kl_div_loss(s, t, kind="forward"), s, create_graph=True)
    with pytest.raises(RuntimeError, match=TWICE_MSG + "lowbit.kl_div_loss"):
        torch.autograd.grad(g.pow(2).sum(), s)
    # the raw op's teacher is a constant: a tangent on it is refused, not dropped
    lab = torch.empty(0, dtype=torch.int64)
    # with_grad=True returns d loss / d S: differentiating that output is a second derivative
    _, gs = torch.ops.lowbit.kl_loss(s, t, lab, 0, 0., .5, 1., -100, False, True, 1.0)
    with pytest.raises(RuntimeError, match=TWICE_MSG + "lowbit.kl_div_loss"):
        gs.pow(2).sum().backward()
    with pytest.raises(RuntimeError, match=FWD_MSG + "lowbit.kl_div_loss .*'teacher'"):
        fwad_jvp(lambda t: torch.ops.lowbit.kl_loss(s.detach(), t, lab, 0, 0., .5, 1., -100,
                                                    False, False, 1.0)[0], (t,), (t,))


def test_fused_linear_kl_loss_second_derivative_raises(gen):
    """The same clear error as kl_div_loss, whichever input the second derivative is taken
    with respect to (torch's own once_differentiable gave a generic 'does not require grad')."""
    h = torch.randn(5, 8, generator=gen).requires_grad_()
    w = torch.randn(12, 8, generator=gen).requires_grad_()
    b = torch.randn(12, generator=gen).requires_grad_()
    t = torch.randn(5, 12, generator=gen)
    loss = lowbit.fused_linear_kl_loss(h, w, t, student_bias=b, kind="forward", chunk_size=2)
    grads = torch.autograd.grad(loss, (h, w, b), create_graph=True)
    for g in grads:
        for wrt in (h, w, b):
            with pytest.raises(RuntimeError, match=TWICE_MSG + "lowbit.fused_linear_kl_loss"):
                torch.autograd.grad(g.pow(2).sum(), wrt, retain_graph=True)
    with pytest.raises(RuntimeError, match=TWICE_MSG + "lowbit.fused_linear_kl_loss"):
        grads[0].sum().backward()
    # first derivatives are unchanged by the guard
    hr, wr, br = (v.detach().double().requires_grad_() for v in (h, w, b))
    ref = ref_loss(F.linear(hr, wr, br), t.double(), kind="forward")
    for g, r in zip(grads, torch.autograd.grad(ref, (hr, wr, br))):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-6)


# ---- sparse24 ----
def _sparse_case(gen):
    w = torch.randn(16, 32, generator=gen)
    sw = compress_24(prune_24(w)[0])
    x, tx = torch.randn(3, 32, generator=gen), torch.randn(3, 32, generator=gen)
    b, tb = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    tv = torch.randn(sw.values.shape, generator=gen)
    return sw, x, tx, b, tb, tv


def _dense(values, sw):
    """Reference scatter of the kept values to (N, K), from the 2:4 mask (not from lowbit)."""
    n, k = sw.shape
    mask = prune_24(lowbit.sparse.decompress_24(sw))[1]
    return torch.zeros(n, k, dtype=values.dtype).masked_scatter(mask, values)


def test_sparse24_linear_tangent_is_bilinear(gen):
    sw, x, tx, b, tb, tv = _sparse_case(gen)

    def f(x, v, b):
        return sparse24_linear(x, Sparse24Weight(v, sw.meta, sw.shape, sw.dtype), b)

    got = both_jvps(f, (x, sw.values, b), (tx, tv, tb))
    wd, twd = _dense(sw.values.double(), sw), _dense(tv.double(), sw)
    ref = tx.double() @ wd.t() + x.double() @ twd.t() + tb.double()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    # quantized kept values: linear in x and bias
    sq = sw.quantize(lowbit.QuantSpec("int", 4, 16))
    wq = lowbit.sparse.decompress_24(sq).double()
    got = both_jvps(lambda x, b: sparse24_linear(x, sq, b), (x, b), (tx, tb))
    torch.testing.assert_close(got.double(), tx.double() @ wq.t() + tb.double(), rtol=1e-5,
                               atol=1e-5)


def test_sparse24_double_backward_raises(gen):
    sw, x, *_ = _sparse_case(gen)
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(sparse24_linear(x, sw).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=TWICE_MSG + "lowbit.sparse.sparse24_linear"):
        torch.autograd.grad(g.pow(2).sum(), x)


def test_decompress_24_is_differentiable(gen):
    sw, *_, tv = _sparse_case(gen)
    v = sw.values.clone().requires_grad_()
    d = lowbit.sparse.decompress_24(Sparse24Weight(v, sw.meta, sw.shape, sw.dtype))
    up = torch.randn(d.shape, generator=gen)
    (gv,) = torch.autograd.grad((d * up).sum(), v)
    mask = prune_24(d.detach())[1]
    torch.testing.assert_close(gv, up[mask].reshape(v.shape), rtol=0, atol=0)
    got = both_jvps(lambda v: lowbit.sparse.decompress_24(
        Sparse24Weight(v, sw.meta, sw.shape, sw.dtype)), (sw.values,), (tv,))
    torch.testing.assert_close(got, _dense(tv, sw), rtol=0, atol=0)


# ---- ops without a gradient formula ----
def test_ops_without_a_formula_refuse_gradients_and_tangents(gen):
    w = torch.randn(4, 64, generator=gen).requires_grad_()
    codes, scales, zeros = torch.ops.lowbit.quantize(w, 0, 4, 32, False)
    assert not codes.requires_grad and scales.requires_grad
    with pytest.raises(RuntimeError, match="lowbit::quantize is not differentiable"):
        scales.sum().backward()
    with pytest.raises(RuntimeError, match=FWD_MSG + "lowbit::dequantize"):
        fwad_jvp(lambda s: torch.ops.lowbit.dequantize(codes, s, zeros, 0, 4, 32, False, 64, 0),
                 (scales.detach(),), (torch.ones_like(scales),))
