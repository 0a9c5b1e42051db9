"""lowbit.kl_div_loss / fused_linear_kl_loss / GammaEstimator against tests/reference_kl.py.

The reference (FORMATS.md section 2 written the composite way, float64 autograd) is the oracle;
lowbit's float32 kernels must match it to 1e-5 in values and gradients. bf16/fp16 inputs are fed
to the reference exactly (upcast), so only the gradient's final rounding to the input dtype adds
error (checked to that dtype's precision).
"""
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from reference_kl import KINDS, REDUCTIONS, ref_gamma, ref_loss

lowbit = pytest.importorskip("lowbit")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f32", "bf16", "f16"]
# relative precision of a gradient stored in the dtype (half an ulp at 1.0, plus the kernel's)
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-8 + 1e-5, torch.float16: 2.0**-11 + 1e-5}
ISAS = lowbit.available_cpu_isas()


def kind_args(kind):
    return {"gamma": 0.3} if kind == "cakld" else ({"beta": 0.4} if kind == "jsd" else {})


def make_logits(shape, dtype, gen, scale=3.0):
    s = (torch.randn(*shape, generator=gen) * scale).to(dtype)
    # the teacher: correlated with the student, as in self-distillation
    t = (s.float() + torch.randn(*shape, generator=gen) * scale * 0.5).to(dtype)
    return s, t


def run_impl(s, t, **kw):
    x = s.detach().clone().requires_grad_(True)
    loss = lowbit.kl_div_loss(x, t, **kw)
    up = torch.randn(loss.shape, generator=torch.Generator().manual_seed(7)) + 2.0 \
        if loss.dim() else torch.tensor(1.5)
    loss.backward(up)
    return loss.detach(), x.grad, up


def run_ref(s, t, up, **kw):
    x = s.detach().double().clone().requires_grad_(True)
    loss = ref_loss(x, t.double(), **kw)
    loss.backward(up.double())
    return loss.detach(), x.grad


def check_close(got, exp, rtol, what):
    """NaN and +-inf exactly where the reference has them; elsewhere
    |got - exp| <= rtol * (|exp| + max(max|exp|, 1e-2)) elementwise."""
    g = got.double()
    e = exp.double()
    assert g.shape == e.shape, f"{what}: shape {tuple(g.shape)} != {tuple(e.shape)}"
    nan_g, nan_e = torch.isnan(g), torch.isnan(e)
    assert torch.equal(nan_g, nan_e), (
        f"{what}: NaN at {nan_g.nonzero()[:4].tolist()} where the reference has "
        f"{nan_e.nonzero()[:4].tolist()} ({int(nan_g.sum())} vs {int(nan_e.sum())})")
    inf_e = torch.isinf(e)
    assert torch.equal(g[inf_e], e[inf_e]) and not bool(torch.isinf(g[~inf_e]).any()), \
        f"{what}: infinities differ from the reference's"
    fin = torch.isfinite(e)
    g, e = torch.where(fin, g, 0.0), torch.where(fin, e, 0.0)
    scale = e.abs().max().item() if e.numel() else 0.0
    scale = max(scale, 1e-2)  # values near 0: an absolute floor of rtol * 1e-2
    err = (g - e).abs()
    tol = rtol * (e.abs() + scale)
    ok = err <= tol
    if not bool(ok.all()):
        i = (~ok).nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int((~ok).sum())}/{ok.numel()} beyond rtol {rtol}; first "
                             f"at {i}: got {g[tuple(i)].item()!r} expected {e[tuple(i)].item()!r}"
                             f" (max err {err.max().item():.3g}, scale {scale:.3g})")


def check_all(s, t, dtype=torch.float32, loss_rtol=1e-5, **kw):
    loss, grad, up = run_impl(s, t, **kw)
    rloss, rgrad = run_ref(s, t, up, **kw)
    assert loss.dtype == torch.float32
    assert grad.dtype == s.dtype
    check_close(loss, rloss, loss_rtol, "loss")
    check_close(grad, rgrad, GRAD_RTOL[dtype], "grad")
    return loss, grad


# ---------------------------------------------------------------------------------------------
# the grid: kind x reduction x dtype x temperature
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_grid(kind, reduction, dtype, temperature, gen):
    s, t = make_logits((3, 5, 257), dtype, gen)
    labels = torch.randint(0, 257, (3, 5), generator=gen)
    labels[0, 1] = labels[2, 4] = -100
    check_all(s, t, dtype, kind=kind, temperature=temperature, labels=labels,
              reduction=reduction, **kind_args(kind))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("V", [1, 7, 1003, 50257])
def test_vocab_sizes(kind, V, gen):
    rows = 3 if V > 5000 else 9
    s, t = make_logits((rows, V), torch.float32, gen)
    loss, grad = check_all(s, t, kind=kind, reduction="sum", **kind_args(kind))
    if V == 1:
        assert loss.item() == 0.0 and bool((grad == 0).all())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_cpu_isa(isa, kind, gen):
    s, t = make_logits((6, 2051), torch.float32, gen)
    labels = torch.randint(0, 2051, (6,), generator=gen)
    labels[3] = -100
    lowbit.set_cpu_isa(isa)
    try:
        for dtype in DTYPES:
            check_all(s.to(dtype), t.to(dtype), dtype, kind=kind, labels=labels,
                      temperature=1.7, **kind_args(kind))
    finally:
        lowbit.set_cpu_isa("auto")


def test_isa_variants_agree(gen):
    """The SIMD variants use polynomial exp/log, the scalar twin libm: not bit-identical, but
    within a few float32 ulps of each other."""
    s, t = make_logits((4, 3000), torch.float32, gen)
    outs = []
    for isa in ISAS:
        lowbit.set_cpu_isa(isa)
        try:
            outs.append(run_impl(s, t, kind="cakld", gamma=0.6, reduction="sum")[:2])
        finally:
            lowbit.set_cpu_isa("auto")
    for loss, grad in outs[1:]:
        check_close(loss, outs[0][0], 1e-6, "loss across ISAs")
        check_close(grad, outs[0][1], 1e-6, "grad across ISAs")


# ---------------------------------------------------------------------------------------------
# masking, degenerate and extreme inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_masked(kind, reduction, gen):
    s, t = make_logits((2, 4, 50), torch.float32, gen)
    labels = torch.full((2, 4), -7)
    loss, grad, _ = run_impl(s, t, kind=kind, labels=labels, ignore_index=-7,
                             reduction=reduction, **kind_args(kind))
    assert bool((loss == 0).all())
    assert bool((grad == 0).all())


def test_masked_rows_zero_grad(gen):
    s, t = make_logits((8, 100), torch.float32, gen)
    labels = torch.randint(0, 100, (8,), generator=gen)
    labels[::3] = -100
    loss, grad = check_all(s, t, kind="cakld", gamma=0.5, labels=labels)
    assert bool((grad[::3] == 0).all())
    assert bool((grad[1] != 0).any())
    rows = lowbit.kl_div_loss(s, t, kind="forward", labels=labels, reduction="none")
    assert bool((rows[::3] == 0).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_extreme_logits(kind, dtype, gen):
    big = 1e4 if dtype != torch.float16 else 6e4  # f16's range
    s = (torch.rand(4, 300, generator=gen) * 2 - 1) * big
    t = s + torch.randn(4, 300, generator=gen) * 3
    s[0, :] = big                      # a flat row at the extreme
    t[1, 5] = big                      # a teacher spike
    s, t = s.to(dtype), t.to(dtype)
    check_all(s, t, dtype, kind=kind, reduction="sum", **kind_args(kind))
    loss, _ = check_all(s, t, dtype, kind=kind, reduction="sum", temperature=50.0,
                        **kind_args(kind))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_neg_inf_in_both(kind, dtype, gen):
    s, t = make_logits((5, 301), dtype, gen)
    mask = torch.rand(5, 301, generator=gen) < 0.3
    mask[:, 0] = False
    s = s.masked_fill(mask, float("-inf"))
    t = t.masked_fill(mask, float("-inf"))
    _, grad = check_all(s, t, dtype, kind=kind, reduction="sum", **kind_args(kind))
    assert bool((grad[mask] == 0).all()), "masked vocabulary entries must get exactly 0"


def test_neg_inf_one_side(gen):
    """Student-only -inf: RKL ignores it (q = 0); teacher-only -inf: FKL ignores it (p = 0)."""
    s, t = make_logits((4, 64), torch.float32, gen)
    m = torch.zeros(4, 64, dtype=torch.bool)
    m[:, 3:9] = True
    _, g = check_all(s.masked_fill(m, float("-inf")), t, kind="reverse", reduction="sum")
    assert bool((g[m] == 0).all())
    check_all(s, t.masked_fill(m, float("-inf")), kind="forward", reduction="sum")


def _dead_rows_case(gen, dtype=torch.float32):
    """Rows without a distribution next to live ones: 1 student all -inf, 2 teacher all -inf,
    3 both, 4 teacher all -inf but its last logit (a finite row: reverse KL +inf), 5 like 2
    but masked by its label, 6 student all -inf but one."""
    s, t = make_logits((7, 20), dtype, gen)
    s[1] = t[2] = s[3] = t[3] = t[5] = float("-inf")
    t[4, :19] = float("-inf")
    s[6, 1:] = float("-inf")
    labels = torch.arange(7)
    labels[5] = -100
    return s, t, labels


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_rows_without_finite_logits_are_nan(kind, reduction, gen):
    """A row with no finite logit in the student or in the teacher has no softmax: its loss and
    its gradient are NaN (torch's softmax gives NaN there), never 0, and the row still counts in
    "mean"; a masked row stays 0. Against the reference on every CPU kernel variant and dtype."""
    for isa in ISAS:
        lowbit.set_cpu_isa(isa)
        try:
            for dtype in DTYPES:
                s, t, labels = _dead_rows_case(gen, dtype)
                loss, grad = check_all(s, t, dtype, kind=kind, labels=labels,
                                       reduction=reduction, **kind_args(kind))
                # (row 4's reverse KL is +inf: its gradient is NaN too, as the reference says)
                live = [0, 5, 6]
                assert bool(torch.isnan(grad[1:4]).all()) and bool((grad[5] == 0).all()), isa
                assert not bool(torch.isnan(grad[live]).any()), isa
                if reduction == "none":
                    assert bool(torch.isnan(loss[1:4]).all()), isa
                    assert not bool(torch.isnan(loss[live]).any()), isa
                else:
                    assert torch.isnan(loss), isa
        finally:
            lowbit.set_cpu_isa("auto")


def test_rows_without_finite_logits_are_continuous(gen):
    """Masking the last finite teacher logit of a row moves reverse KL from +inf to NaN (no
    finite distribution left), not to 0; every kind, endpoint and temperature says NaN."""
    s, t, _ = _dead_rows_case(gen)
    rows = lowbit.kl_div_loss(s, t, kind="reverse", reduction="none")
    assert rows[4].item() == float("inf")
    t[4, 19] = float("-inf")
    for kw in (dict(kind="forward"), dict(kind="reverse"), dict(kind="cakld", gamma=0.0),
               dict(kind="cakld", gamma=1.0), dict(kind="cakld", gamma=0.4),
               dict(kind="jsd", beta=0.0), dict(kind="jsd", beta=1.0), dict(kind="jsd"),
               dict(kind="forward", temperature=0.5), dict(kind="jsd", temperature=3.0)):
        rows = lowbit.kl_div_loss(s, t, reduction="none", **kw)
        assert torch.isnan(rows[1:6]).all() and not torch.isnan(rows[0]), kw
        ref = torch.tensor([float(r) for r in __import__("reference_kl").ref_rows(
            s, t, kw["kind"], kw.get("gamma"), kw.get("beta", 0.5), kw.get("temperature", 1.0))])
        assert torch.isnan(ref[1:6]).all(), kw  # the reference agrees


@pytest.mark.parametrize("teacher", ["logits", "hidden"])
def test_fused_linear_rows_without_finite_logits(teacher, gen):
    """fused_linear_kl_loss: a teacher (or, through an inf weight, student) row without finite
    logits gives a NaN loss and the NaN gradients torch's autograd gives for the composite."""
    B, H, V = 6, 8, 30
    h = torch.randn(B, H, generator=gen)
    w = torch.randn(V, H, generator=gen) * 0.3
    th = torch.randn(B, 5, generator=gen)
    tw = torch.randn(V, 5, generator=gen) * 0.3
    tb = torch.zeros(V)
    t_logits = torch.nn.functional.linear(th, tw, tb)
    t_logits[2] = float("-inf")
    tb = tb if teacher == "logits" else torch.full((V,), float("-inf"))
    labels = torch.arange(B)
    labels[4] = -100
    kw = dict(kind="cakld", gamma=0.3, labels=labels, reduction="mean")
    x, wx = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    if teacher == "logits":
        loss = lowbit.fused_linear_kl_loss(x, wx, t_logits, chunk_size=4, **kw)
    else:  # every teacher row is -inf: all NaN, unless masked
        loss = lowbit.fused_linear_kl_loss(x, wx, teacher_hidden=th, teacher_weight=tw,
                                           teacher_bias=tb, chunk_size=4, **kw)
    loss.backward()
    tl = t_logits if teacher == "logits" else torch.nn.functional.linear(th, tw, tb)
    rl, rh, rw, _ = _fused_ref(h, w, None, None, None, None, tl, 1.0, **kw)
    assert torch.isnan(loss)
    check_close(loss, rl, 1e-5, "loss")
    check_close(x.grad, rh, 1e-5, "grad hidden")
    check_close(wx.grad, rw, 1e-5, "grad weight")
    assert bool(torch.isnan(x.grad[2]).all()) and bool((x.grad[4] == 0).all())


def test_nan_propagates():
    s = torch.randn(3, 20)
    t = torch.randn(3, 20)
    s[1, 4] = float("nan")
    rows = lowbit.kl_div_loss(s, t, kind="forward", reduction="none")
    assert torch.isnan(rows[1]) and not torch.isnan(rows[0]) and not torch.isnan(rows[2])


def test_cakld_endpoints_and_jsd_endpoints(gen):
    s, t = make_logits((4, 77), torch.float32, gen)
    f = lowbit.kl_div_loss(s, t, kind="forward", reduction="none")
    r = lowbit.kl_div_loss(s, t, kind="reverse", reduction="none")
    assert torch.equal(lowbit.kl_div_loss(s, t, kind="cakld", gamma=0.0, reduction="none"), f)
    assert torch.equal(lowbit.kl_div_loss(s, t, kind="cakld", gamma=1.0, reduction="none"), r)
    for b in (0.0, 1.0):
        check_all(s, t, kind="jsd", beta=b, reduction="sum")


def test_mixed_dtypes(gen):
    s, t = make_logits((4, 500), torch.float32, gen)
    for sd, td in [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                   (torch.float16, torch.bfloat16)]:
        check_all(s.to(sd), t.to(td), sd, kind="cakld", gamma=0.2)


def test_empty_rows():
    s = torch.zeros(0, 10, requires_grad=True)
    t = torch.zeros(0, 10)
    for red in ("mean", "sum", "batchmean"):
        loss = lowbit.kl_div_loss(s, t, kind="forward", reduction=red)
        assert loss.item() == 0.0
    loss.backward()
    assert s.grad.shape == (0, 10)


def test_one_dim_input(gen):
    s, t = make_logits((33,), torch.float32, gen)
    for red in ("mean", "sum", "batchmean"):
        check_all(s, t, kind="forward", reduction=red)


def test_noncontiguous_input(gen):
    s, t = make_logits((4, 6, 40), torch.float32, gen)
    check_all(s.transpose(0, 1), t.transpose(0, 1), kind="cakld", gamma=0.5)


def test_labels_int32(gen):
    s, t = make_logits((5, 30), torch.float32, gen)
    labels = torch.tensor([1, -100, 3, 4, -100], dtype=torch.int32)
    a = lowbit.kl_div_loss(s, t, kind="forward", labels=labels)
    b = lowbit.kl_div_loss(s, t, kind="forward", labels=labels.long())
    assert torch.equal(a, b)


def test_teacher_gets_no_grad(gen):
    s, t = make_logits((3, 30), torch.float32, gen)
    t = t.clone().requires_grad_(True)
    x = s.clone().requires_grad_(True)
    lowbit.kl_div_loss(x, t, kind="reverse").backward()
    assert t.grad is None and x.grad is not None


def test_double_backward_path_and_gradcheck_like(gen):
    """Finite differences in float64-ish terms on a tiny case (float32 op, loose tol)."""
    s, t = make_logits((2, 5), torch.float32, gen)
    x = s.clone().requires_grad_(True)
    loss = lowbit.kl_div_loss(x, t, kind="jsd", beta=0.3, reduction="sum")
    loss.backward()
    eps = 1e-2
    for i in range(2):
        for j in range(5):
            xp, xm = s.clone(), s.clone()
            xp[i, j] += eps
            xm[i, j] -= eps
            fd = (lowbit.kl_div_loss(xp, t, kind="jsd", beta=0.3, reduction="sum") -
                  lowbit.kl_div_loss(xm, t, kind="jsd", beta=0.3, reduction="sum")) / (2 * eps)
            assert abs(fd.item() - x.grad[i, j].item()) < 2e-3


# ---------------------------------------------------------------------------------------------
# module form, torch.compile
# ---------------------------------------------------------------------------------------------
def test_distill_loss_module(gen):
    s, t = make_logits((2, 3, 64), torch.float32, gen)
    labels = torch.randint(0, 64, (2, 3), generator=gen)
    crit = lowbit.nn.DistillLoss(kind="cakld", gamma=0.25, temperature=2.0)
    assert "cakld" in repr(crit)
    a = crit(s, t, labels)
    b = lowbit.kl_div_loss(s, t, kind="cakld", gamma=0.25, temperature=2.0, labels=labels)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="gamma"):
        lowbit.nn.DistillLoss(kind="cakld")


def test_torch_compile_fullgraph(gen):
    s, t = make_logits((2, 4, 128), torch.float32, gen)
    labels = torch.randint(0, 128, (2, 4), generator=gen)
    labels[1, 2] = -100

    def f(x, y, lab):
        return lowbit.kl_div_loss(x * 1.0, y, kind="cakld", gamma=0.4, labels=lab) * 2.0

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    x1 = s.clone().requires_grad_(True)
    x2 = s.clone().requires_grad_(True)
    l1 = f(x1, t, labels)
    l2 = cf(x2, t, labels)
    l1.backward()
    l2.backward()
    assert torch.allclose(l1, l2)
    assert torch.allclose(x1.grad, x2.grad)


def test_opcheck(gen):
    s, t = make_logits((3, 40), torch.float32, gen)
    lab = torch.tensor([1, -100, 5])
    torch.library.opcheck(torch.ops.lowbit.kl_loss.default,
                          (s, t, lab, 2, 0.5, 0.5, 1.0, -100, True, False, 1.0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(torch.ops.lowbit.kl_loss.default,
                          (s, t, lab, 3, 0.5, 0.5, 1.0, -100, True, True, 1.0),
                          test_utils=("test_schema", "test_faketensor"))


def test_stored_gradient_path_matches(gen):
    """with_grad=True (gradient stored by the forward) gives what kl_loss_backward recomputes."""
    s, t = make_logits((5, 333), torch.float32, gen)
    lab = torch.tensor([1, -100, 5, 6, 7])
    _, g_stored = torch.ops.lowbit.kl_loss(s, t, lab, 2, 0.3, 0.5, 1.5, -100, True, True, 0.25)
    g_re = torch.ops.lowbit.kl_loss_backward(torch.full((5,), 0.25), s, t, lab, 2, 0.3, 0.5, 1.5,
                                             -100, True)
    assert torch.allclose(g_stored, g_re, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# fused LM head
# ---------------------------------------------------------------------------------------------
def _fused_ref(h, w, bias, th, tw, tb, t_logits, up, **kw):
    hh = h.detach().double().requires_grad_(True)
    ww = w.detach().double().requires_grad_(True)
    bb = None if bias is None else bias.detach().double().requires_grad_(True)
    logits = torch.nn.functional.linear(hh, ww, bb)
    if t_logits is None:
        t_logits = torch.nn.functional.linear(th.double(), tw.double(),
                                              None if tb is None else tb.double())
    loss = ref_loss(logits, t_logits.double(), **kw)
    loss.backward(torch.tensor(up, dtype=torch.float64))
    return loss.detach(), hh.grad, ww.grad, None if bb is None else bb.grad


@pytest.mark.parametrize("teacher", ["logits", "hidden"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear(teacher, reduction, with_bias, gen):
    B, T_, H, V = 2, 9, 24, 301
    h = torch.randn(B, T_, H, generator=gen)
    w = torch.randn(V, H, generator=gen) * 0.3
    bias = torch.randn(V, generator=gen) if with_bias else None
    th = torch.randn(B, T_, 16, generator=gen)
    tw = torch.randn(V, 16, generator=gen) * 0.3
    tb = torch.randn(V, generator=gen) if with_bias else None
    labels = torch.randint(0, V, (B, T_), generator=gen)
    labels[0, :3] = -100
    t_logits = torch.nn.functional.linear(th, tw, tb)
    kw = dict(kind="cakld", gamma=0.35, temperature=1.3, labels=labels, reduction=reduction)
    x = h.clone().requires_grad_(True)
    wx = w.clone().requires_grad_(True)
    bx = None if bias is None else bias.clone().requires_grad_(True)
    if teacher == "logits":
        loss = lowbit.fused_linear_kl_loss(x, wx, t_logits, student_bias=bx, chunk_size=4, **kw)
    else:
        loss = lowbit.fused_linear_kl_loss(x, wx, teacher_hidden=th, teacher_weight=tw,
                                           teacher_bias=tb, student_bias=bx, chunk_size=5, **kw)
    loss.backward(torch.tensor(1.7))
    rl, rh, rw, rb = _fused_ref(h, w, bias, th, tw, tb, t_logits, 1.7, **kw)
    check_close(loss, rl, 1e-5, "loss")
    check_close(x.grad, rh, 1e-5, "grad hidden")
    check_close(wx.grad, rw, 1e-5, "grad weight")
    if with_bias:
        check_close(bx.grad, rb, 1e-5, "grad bias")
    # and the same as the unfused lowbit path
    lo = lowbit.kl_div_loss(torch.nn.functional.linear(h, w, bias), t_logits, **kw)
    check_close(loss.detach(), lo.detach(), 1e-6, "fused vs unfused")


def test_fused_linear_bf16_and_default_chunk(gen):
    h = torch.randn(40, 32, generator=gen).bfloat16()
    w = (torch.randn(500, 32, generator=gen) * 0.2).bfloat16()
    t = torch.randn(40, 500, generator=gen).bfloat16()
    x = h.clone().requires_grad_(True)
    wx = w.clone().requires_grad_(True)
    loss = lowbit.fused_linear_kl_loss(x, wx, t, kind="forward")
    loss.backward()
    assert x.grad.dtype == torch.bfloat16 and wx.grad.dtype == torch.bfloat16
    logits = torch.nn.functional.linear(h, w)  # bf16 logits, exactly as the fused path makes them
    xl = logits.double().requires_grad_(True)
    rl = ref_loss(xl, t.double(), kind="forward")
    rl.backward()
    check_close(loss.detach(), rl.detach(), 1e-5, "loss")
    check_close(wx.grad.float(), (xl.grad.t() @ h.double()).float(), 2**-7, "grad weight")


def test_fused_linear_bad_input(gen):
    h = torch.randn(4, 8)
    w = torch.randn(10, 8)
    t = torch.randn(4, 10)
    with pytest.raises(ValueError, match="lm_head_weight"):
        lowbit.fused_linear_kl_loss(h, torch.randn(10, 7), t, kind="forward")
    with pytest.raises(ValueError, match="teacher_logits"):
        lowbit.fused_linear_kl_loss(h, w, torch.randn(4, 11), kind="forward")
    with pytest.raises(ValueError, match="teacher_logits"):
        lowbit.fused_linear_kl_loss(h, w, kind="forward")
    with pytest.raises(ValueError, match="teacher_weight"):
        lowbit.fused_linear_kl_loss(h, w, teacher_hidden=torch.randn(4, 3), kind="forward")
    with pytest.raises(ValueError, match="reduction"):
        lowbit.fused_linear_kl_loss(h, w, t, kind="forward", reduction="none")
    with pytest.raises(ValueError, match="chunk_size"):
        lowbit.fused_linear_kl_loss(h, w, t, kind="forward", chunk_size=0)


# ---------------------------------------------------------------------------------------------
# gamma estimation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["target", "max"])
def test_gamma_estimator(method, gen):
    est = lowbit.GammaEstimator(method=method)
    all_t, all_l = [], []
    for _ in range(3):
        t = torch.randn(2, 7, 50, generator=gen) * 2
        lab = torch.randint(0, 50, (2, 7), generator=gen)
        lab[:, -2:] = -100     # padding must not count
        est.update(t, lab)
        all_t.append(t)
        all_l.append(lab)
    exp = ref_gamma(torch.cat(all_t), torch.cat(all_l), method)
    assert abs(est.value - exp) < 1e-6
    assert est.count == 3 * 2 * 5


def test_gamma_estimator_bad_input():
    with pytest.raises(ValueError, match="method"):
        lowbit.GammaEstimator(method="mean")
    est = lowbit.GammaEstimator()
    with pytest.raises(ValueError, match="labels"):
        est.update(torch.randn(3, 5))
    with pytest.raises(ValueError, match="labels"):
        est.update(torch.randn(3, 5), torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError, match="no unmasked"):
        lowbit.GammaEstimator().value


def test_estimate_gamma_with_model(gen):
    V = 40
    emb = torch.nn.Embedding(V, V)

    class Out:
        def __init__(self, logits):
            self.logits = logits

    def model(input_ids, attention_mask=None):
        return Out(emb(input_ids))

    batches = []
    for _ in range(2):
        ids = torch.randint(0, V, (3, 6), generator=gen)
        lab = ids.clone()
        lab[0, 4:] = -100
        batches.append({"input_ids": ids, "labels": lab})
    g = lowbit.estimate_gamma(model, batches)
    with torch.no_grad():
        ts = torch.cat([emb(b["input_ids"])[:, :-1] for b in batches])
        ls = torch.cat([b["labels"][:, 1:] for b in batches])
    assert abs(g - ref_gamma(ts, ls)) < 1e-6


_DIST_SCRIPT = r"""
import sys, torch, torch.distributed as dist, lowbit
rank, world, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=world)
g = torch.Generator().manual_seed(100 + rank)
t = torch.randn(5 + 3 * rank, 30, generator=g)
lab = torch.randint(0, 30, (5 + 3 * rank,), generator=g)
lab[: rank + 1] = -100
est = lowbit.GammaEstimator().update(t, lab)
print(repr(est.value))
dist.destroy_process_group()
"""


def test_gamma_estimator_distributed():
    """Two gloo ranks with different numbers of unmasked positions: the global mean over the
    true count, identical on both ranks (not the mean of the two per-rank means)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "store")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        procs = [subprocess.Popen([sys.executable, "-c", _DIST_SCRIPT, str(r), "2", path],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  text=True) for r in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
    vals = []
    for (o, e), p in zip(outs, procs):
        assert p.returncode == 0, e
        vals.append(float(o.strip().splitlines()[-1]))
    ts, ls = [], []
    for rank in range(2):
        g = torch.Generator().manual_seed(100 + rank)
        t = torch.randn(5 + 3 * rank, 30, generator=g)
        lab = torch.randint(0, 30, (5 + 3 * rank,), generator=g)
        lab[: rank + 1] = -100
        ts.append(t)
        ls.append(lab)
    exp = ref_gamma(torch.cat(ts), torch.cat(ls))
    assert vals[0] == vals[1]
    assert abs(vals[0] - exp) < 1e-6


# ---------------------------------------------------------------------------------------------
# bad input: ValueError / TypeError naming the argument
# ---------------------------------------------------------------------------------------------
def _s():
    return torch.randn(2, 3, 10)


BAD = [
    (lambda: lowbit.kl_div_loss(_s(), torch.randn(2, 3, 11), kind="forward"), ValueError,
     "teacher_logits"),
    (lambda: lowbit.kl_div_loss(torch.randn(2, 0), torch.randn(2, 0), kind="forward"),
     ValueError, "student_logits"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), gamma=1.5), ValueError, "gamma"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), gamma=-0.1), ValueError, "gamma"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), gamma=float("nan")), ValueError, "gamma"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), gamma="0.5"), TypeError, "gamma"),
    (lambda: lowbit.kl_div_loss(_s(), _s()), ValueError, "gamma"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="jsd", beta=2.0), ValueError, "beta"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="jsd", beta=float("nan")), ValueError, "beta"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="forward", temperature=0.0), ValueError,
     "temperature"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="forward", temperature=-1.0), ValueError,
     "temperature"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="forward", temperature=float("nan")),
     ValueError, "temperature"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="kl"), ValueError, "kind"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="forward", reduction="avg"), ValueError,
     "reduction"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="forward", labels=torch.zeros(2, 4).long()),
     ValueError, "labels"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="forward", labels=torch.zeros(2, 3)),
     TypeError, "labels"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="forward",
                                labels=torch.zeros(2, 3, dtype=torch.bool)), TypeError, "labels"),
    (lambda: lowbit.kl_div_loss(torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5),
                                kind="forward"), TypeError, "student_logits"),
    (lambda: lowbit.kl_div_loss(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.int32),
                                kind="forward"), TypeError, "teacher_logits"),
    (lambda: lowbit.kl_div_loss(torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 5),
                                kind="forward"), TypeError, "student_logits"),
    (lambda: lowbit.kl_div_loss([1.0], torch.zeros(1), kind="forward"), TypeError,
     "student_logits"),
    (lambda: lowbit.kl_div_loss(_s(), _s(), kind="forward", ignore_index=1.5), TypeError,
     "ignore_index"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input(i):
    fn, exc, name = BAD[i]
    with pytest.raises(exc, match=name):
        fn()


def test_op_level_checks():
    """The C glue checks again (direct torch.ops calls), naming the argument."""
    s = torch.randn(3, 8)
    lab = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="teacher_logits"):
        torch.ops.lowbit.kl_loss(s, torch.randn(3, 9), lab, 0, 0.5, 0.5, 1.0, -100, True,
                                 False, 1.0)
    with pytest.raises(RuntimeError, match="gamma"):
        torch.ops.lowbit.kl_loss(s, s, lab, 2, 1.5, 0.5, 1.0, -100, True, False, 1.0)
    with pytest.raises(RuntimeError, match="kind"):
        torch.ops.lowbit.kl_loss(s, s, lab, 9, 0.5, 0.5, 1.0, -100, True, False, 1.0)
    with pytest.raises(RuntimeError, match="temperature"):
        torch.ops.lowbit.kl_loss(s, s, lab, 0, 0.5, 0.5, 0.0, -100, True, False, 1.0)
    with pytest.raises(RuntimeError, match="labels"):
        torch.ops.lowbit.kl_loss(s, s, lab.int(), 0, 0.5, 0.5, 1.0, -100, True, False, 1.0)
    with pytest.raises(RuntimeError, match="grad_loss"):
        torch.ops.lowbit.kl_loss_backward(torch.ones(2), s, s, lab, 0, 0.5, 0.5, 1.0, -100, True)


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_cuda_sanitizer_small_kl(gen):
    """Small shapes on every path (block and warp kernels, masks, -inf), for compute-sanitizer."""
    for V in (1, 7, 1003, 5000):
        s, t = make_logits((5, V), torch.float32, gen)
        lab = torch.tensor([0, -100, 0, 0, 0])
        for kind in KINDS:
            x = s.cuda().requires_grad_(True)
            loss = lowbit.kl_div_loss(x, t.cuda(), kind=kind, labels=lab.cuda(),
                                      **kind_args(kind))
            loss.backward()
            torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("V", [1, 7, 1003, 50257])
def test_cuda_vs_reference(kind, dtype, V, gen):
    rows = 3 if V > 5000 else 17
    s, t = make_logits((rows, V), dtype, gen)
    mask = torch.rand(rows, V, generator=gen) < 0.1
    mask[:, 0] = False
    s = s.masked_fill(mask, float("-inf"))
    t = t.masked_fill(mask, float("-inf"))
    lab = torch.randint(0, V, (rows,), generator=gen)
    lab[1] = -100
    kw = dict(kind=kind, labels=lab, temperature=1.3, **kind_args(kind))
    x = s.cuda().requires_grad_(True)
    loss = lowbit.kl_div_loss(x, t.cuda(), **dict(kw, labels=lab.cuda()))
    loss.backward()
    rl, rg = run_ref(s, t, torch.tensor(1.0), **kw)
    check_close(loss.cpu(), rl, 1e-5, "cuda loss")
    check_close(x.grad.cpu(), rg, GRAD_RTOL[dtype], "cuda grad")
    assert bool((x.grad.cpu()[mask] == 0).all())


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_rows_without_finite_logits_are_nan(kind, gen):
    """The CUDA kernel's rule for rows without finite logits: NaN loss and gradient (both the
    warp and the block kernel: V <= 2048 and above)."""
    for V in (20, 3000):
        s, t, labels = _dead_rows_case(gen)
        s, t = torch.cat([s, s.new_zeros(7, V - 20)], 1), torch.cat([t, t.new_zeros(7, V - 20)], 1)
        s[[1, 3, 6], 20:] = t[[2, 3, 4, 5], 20:] = float("-inf")
        kw = dict(kind=kind, labels=labels, reduction="none", **kind_args(kind))
        x = s.cuda().requires_grad_(True)
        loss = lowbit.kl_div_loss(x, t.cuda(), **dict(kw, labels=labels.cuda()))
        up = torch.full(loss.shape, 1.5)
        loss.backward(up.cuda())
        rl, rg = run_ref(s, t, up, **kw)
        check_close(loss.cpu(), rl, 1e-5, "cuda loss")
        check_close(x.grad.cpu(), rg, 1e-5, "cuda grad")
        assert bool(torch.isnan(loss[1:4].cpu()).all())


@pytest.mark.cuda
def test_cuda_fused_linear_and_extremes(gen):
    h = torch.randn(64, 32, generator=gen)
    w = torch.randn(1000, 32, generator=gen) * 0.3
    t = torch.randn(64, 1000, generator=gen)
    x = h.cuda().requires_grad_(True)
    loss = lowbit.fused_linear_kl_loss(x, w.cuda(), t.cuda(), kind="cakld", gamma=0.5,
                                       chunk_size=24)
    loss.backward()
    xr = h.clone().requires_grad_(True)
    lr = lowbit.fused_linear_kl_loss(xr, w, t, kind="cakld", gamma=0.5, chunk_size=24)
    lr.backward()
    check_close(loss.cpu(), lr.detach(), 1e-5, "loss")
    check_close(x.grad.cpu(), xr.grad, 1e-5, "grad")
    s = (torch.rand(4, 300, generator=gen) * 2 - 1) * 1e4
    check_close(lowbit.kl_div_loss(s.cuda(), s.cuda() + 1.0, kind="jsd").cpu(),
                ref_loss(s.double(), s.double() + 1.0, kind="jsd"), 1e-5, "extreme")


def test_fused_linear_no_grad(gen):
    """Under no_grad (evaluation) only the loss is computed; it equals the training value."""
    h = torch.randn(30, 16, generator=gen)
    w = torch.randn(200, 16, generator=gen) * 0.3
    t = torch.randn(30, 200, generator=gen)
    with torch.no_grad():
        a = lowbit.fused_linear_kl_loss(h, w, t, kind="cakld", gamma=0.5, chunk_size=7)
    b = lowbit.fused_linear_kl_loss(h.clone().requires_grad_(True), w, t, kind="cakld",
                                    gamma=0.5, chunk_size=7)
    assert torch.equal(a, b.detach())
    b.backward()
    with pytest.raises(RuntimeError, match="once"):
        b.backward()


# ---------------------------------------------------------------------------------------------
# tiny temperatures and out-of-range arguments
# ---------------------------------------------------------------------------------------------
def test_temperature_whose_inverse_overflows_is_refused(gen):
    s, t = make_logits((3, 8), torch.float32, gen)
    for tau in (1e-39, 1e-44, 2.9e-39):
        with pytest.raises(ValueError, match=r"^temperature: .*1 / temperature overflows"):
            lowbit.kl_div_loss(s, t, kind="forward", temperature=tau)
        with pytest.raises(ValueError, match=r"^temperature: "):
            lowbit.nn.DistillLoss(kind="forward", temperature=tau)
        with pytest.raises(RuntimeError, match=r"temperature: .*1 / temperature overflows"):
            torch.ops.lowbit.kl_loss(s, t, torch.empty(0, dtype=torch.int64), 0, 0.0, 0.5, tau,
                                     -100, False, False, 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_temperature_never_nan(kind, gen):
    """Each tau gives a finite loss equal to the float64 reference and a gradient without NaN,
    or a ValueError naming temperature when logits / tau leave float32's range -- never NaN.
    Gradients are compared where they are well conditioned: FKL's (q - p) / tau at every tau;
    the others subtract log-ratios of size |logit| / tau and scale the rest by 1 / tau, which
    leaves float64 itself no digits at tiny tau."""
    s, t = make_logits((4, 32), torch.float32, gen, scale=1.0)
    raised = []
    for tau in (1e-38, 1e-35, 1e-30, 1e-20, 1e-8, 1e-3, 0.25):
        try:
            loss, grad, up = run_impl(s, t, kind=kind, temperature=tau, **kind_args(kind))
        except ValueError as e:
            assert str(e).startswith("temperature: ") and "too small for these logits" in str(e)
            raised.append(tau)
            continue
        assert torch.isfinite(loss).all() and not torch.isnan(grad).any(), tau
        rloss, rgrad = run_ref(s, t, up, kind=kind, temperature=tau, **kind_args(kind))
        check_close(loss, rloss, 1e-5, f"loss at tau={tau}")
        if kind == "forward" or tau >= 0.25:
            check_close(grad, rgrad, 1e-5, f"grad at tau={tau}")
    assert raised == [1e-38]  # |logit| < 5 here: logit / tau > 2^124 only at 1e-38
    # the same logits scaled with tau: the loss is scale-free, so tau = 1e-30 is just fine
    a = lowbit.kl_div_loss(s * 1e-30, t * 1e-30, kind=kind, temperature=1e-30, **kind_args(kind))
    b = lowbit.kl_div_loss(s, t, kind=kind, temperature=1.0, **kind_args(kind))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ignore_index_and_chunk_rows_ranges():
    s = torch.randn(2, 8)
    for ign in (2 ** 70, -2 ** 64, 2 ** 63):
        with pytest.raises(ValueError, match=r"^ignore_index: must fit in int64"):
            lowbit.kl_div_loss(s, s, kind="forward", ignore_index=ign)
        with pytest.raises(ValueError, match=r"^ignore_index: "):
            lowbit.GammaEstimator(ignore_index=ign)
    lowbit.kl_div_loss(s, s, kind="forward", ignore_index=-2 ** 63)  # the int64 ends are fine
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^chunk_rows: must be a positive int"):
            lowbit.GammaEstimator(chunk_rows=bad)
    for bad in (1.5, True, "8"):
        with pytest.raises(TypeError, match=r"^chunk_rows: "):
            lowbit.GammaEstimator(chunk_rows=bad)


def test_fused_linear_refuses_mismatched_parts(gen):
    """Mismatched dtypes, a wrongly shaped teacher_bias (it used to broadcast)
    and tensors on other devices raise naming the argument, before any work."""
    h = torch.randn(2, 3, 16, generator=gen)
    w = torch.randn(24, 16, generator=gen)
    th, tw = torch.randn(2, 3, 8, generator=gen), torch.randn(24, 8, generator=gen)
    ok = dict(teacher_hidden=th, teacher_weight=tw, kind="forward")
    with pytest.raises(TypeError, match=r"^lm_head_weight: dtype torch.bfloat16 differs from "
                                        r"student_hidden"):
        lowbit.fused_linear_kl_loss(h, w.bfloat16(), **ok)
    with pytest.raises(TypeError, match=r"^student_bias: dtype torch.float16"):
        lowbit.fused_linear_kl_loss(h, w, student_bias=torch.zeros(24, dtype=torch.float16), **ok)
    with pytest.raises(TypeError, match=r"^teacher_weight: dtype torch.bfloat16 differs from "
                                        r"teacher_hidden"):
        lowbit.fused_linear_kl_loss(h, w, teacher_hidden=th, teacher_weight=tw.bfloat16())
    with pytest.raises(TypeError, match=r"^teacher_bias: dtype"):
        lowbit.fused_linear_kl_loss(h, w, teacher_bias=torch.zeros(24).half(), **ok)
    for shape in ((1,), (24, 1), (1, 24), (23,)):
        with pytest.raises(ValueError, match=r"^teacher_bias: expected shape \(24,\)"):
            lowbit.fused_linear_kl_loss(h, w, teacher_bias=torch.zeros(shape), **ok)
    for name in ("lm_head_weight", "student_bias", "teacher_hidden", "teacher_weight",
                 "teacher_bias"):
        args = dict(lm_head_weight=w, student_bias=torch.zeros(24), teacher_hidden=th,
                    teacher_weight=tw, teacher_bias=torch.zeros(24))
        args[name] = args[name].to("meta")
        with pytest.raises(ValueError, match=rf"^{name}: is on meta but student_hidden is on cpu"):
            lowbit.fused_linear_kl_loss(h, kind="forward", **args)
    with pytest.raises(ValueError, match=r"^teacher_logits: is on meta"):
        lowbit.fused_linear_kl_loss(h, w, torch.randn(2, 3, 24).to("meta"), kind="forward")
    # a right-shaped teacher_bias is used as given; under autocast the dtypes may differ
    tb = torch.randn(24, generator=gen)
    ref = lowbit.kl_div_loss(h @ w.T, th @ tw.T + tb, kind="forward")
    got = lowbit.fused_linear_kl_loss(h, w, teacher_bias=tb, **ok)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(lowbit.fused_linear_kl_loss(h, w.bfloat16(), **ok))
