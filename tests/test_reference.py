"""Sanity tests of tests/reference.py itself, from hand-computed cases of FORMATS.md section 1."""
import pytest
import torch

import reference
from _testutil import (
    grad_scale,
    make_weight,
    near_tie_masks,
    pack_codes,
    packed_row_bytes,
    unpack_codes,
)
from reference import (
    ALL_SPECS,
    LEVELS,
    STE_MODES,
    ref_codes,
    ref_decode,
    ref_fake_quant,
    ref_params,
    round_half_away,
    round_scale,
)

f32 = torch.float32


def t(*vals, dtype=f32):
    return torch.tensor([list(vals)], dtype=dtype)


# ------------------------------------------------------------------------------------------
# Level tables
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,n", [(("nf", 3), 8), (("nf", 4), 16), (("fp", 3), 7), (("fp", 4), 15)]
)
def test_level_tables_shape(key, n):
    L = LEVELS[key]
    assert L.dtype == f32 and L.shape == (n,)
    assert torch.all(L[1:] > L[:-1]), "sorted, distinct"
    assert L[0].item() == -1.0 and L[-1].item() == 1.0
    assert (L == 0).sum().item() == 1


def test_fp_tables_values():
    fp4 = sorted({v * s / 6 for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6) for s in (1, -1)})
    torch.testing.assert_close(LEVELS[("fp", 4)], torch.tensor(fp4, dtype=f32), rtol=0, atol=0)
    fp3 = [-1, -0.5, -0.25, 0, 0.25, 0.5, 1]
    assert LEVELS[("fp", 3)].tolist() == fp3
    # float32 division, as C would do it
    assert LEVELS[("fp", 4)][8].item() == (torch.tensor(0.5, dtype=f32) / 6).item()


def test_nf_tables_values():
    assert LEVELS[("nf", 3)][4].item() == torch.tensor(0.1833375245332718, dtype=f32).item()
    assert LEVELS[("nf", 4)][1].item() == torch.tensor(-0.6961928009986877, dtype=f32).item()


# ------------------------------------------------------------------------------------------
# Rounding primitives
# ------------------------------------------------------------------------------------------
def test_round_half_away():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.49, 3.2])
    assert round_half_away(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, 0, 3]


# ------------------------------------------------------------------------------------------
# INT asymmetric (1.1), hand-computed
# ------------------------------------------------------------------------------------------
def test_int2_asym_hand():
    w = t(-1.0, 0.2, 0.5, 2.0)  # range 3 -> s = 1, z = rne(1) = 1
    Q = ref_fake_quant(w, "int", 2, -1, False)
    assert Q.tolist() == [[-1.0, 0.0, 1.0, 2.0]]  # 0.5 rounds half away from zero -> 1
    assert ref_codes(w, "int", 2, -1, False).tolist() == [[0, 1, 2, 3]]
    p = ref_params(w, "int", 2, -1, False)
    assert p["scales"].tolist() == [[1.0]] and p["zeros"].tolist() == [[1]]
    assert p["zeros"].dtype == torch.uint8


def test_int2_asym_zero_point_rounds_half_even():
    w = t(-2.5, -1.2, 0.2, 0.5)  # s = 1, -min/s = 2.5 -> z = rne(2.5) = 2 (R would give 3)
    p = ref_params(w, "int", 2, -1, False)
    assert p["zeros"].tolist() == [[2]]
    # q = clamp(R(x)+2, 0, 3) = [clamp(-1), 1, 2, 3] = [0, 1, 2, 3]
    assert ref_codes(w, "int", 2, -1, False).tolist() == [[0, 1, 2, 3]]
    assert ref_fake_quant(w, "int", 2, -1, False).tolist() == [[-2.0, -1.0, 0.0, 1.0]]


def test_int_asym_two_groups_and_scale():
    w = t(-0.5, 0.25, 0.75, 1.0, 0.0, 0.125, 0.25, 0.375)  # g=4: s=[0.5, 0.125]
    p = ref_params(w, "int", 2, 4, False)
    assert p["scales"].tolist() == [[0.5, 0.125]]
    assert p["zeros"].tolist() == [[1, 0]]
    # group 0: x/s = [-1, .5, 1.5, 2] -> R = [-1, 1, 2, 2] + 1 -> clamp [0, 2, 3, 3]
    assert ref_codes(w, "int", 2, 4, False).tolist() == [[0, 2, 3, 3, 0, 1, 2, 3]]
    Q = ref_fake_quant(w, "int", 2, 4, False)
    assert Q.tolist() == [[-0.5, 0.5, 1.0, 1.0, 0.0, 0.125, 0.25, 0.375]]


def test_int_asym_constant_group_uses_scale_floor():
    # max - min = 0 -> s = 1e-5 / qmax; a positive constant group saturates at qmax*s = 1e-5
    w = t(0.3, 0.3, 0.3, 0.3)
    Q = ref_fake_quant(w, "int", 8, -1, False)
    s = torch.tensor(1e-5, dtype=f32) / 255
    assert ref_params(w, "int", 8, -1, False)["zeros"].tolist() == [[0]]
    assert torch.equal(Q, torch.full_like(w, (255 * s).item()))


def test_int_asym_analytic_gradient(gen):
    bits, g = 3, 16
    w = make_weight((1, g), "int", bits, -1, False, gen=gen, scale=1.0)
    x = w.clone().requires_grad_(True)
    up = torch.randn(1, g, generator=gen)
    ref_fake_quant(x, "int", bits, -1, False).backward(up)
    qmax = 2**bits - 1
    xv = w[0]
    mx, mn = xv.max(), xv.min()
    s = (mx - mn) / qmax
    z = torch.round(-mn / s).clamp(0, qmax)
    r = round_half_away(xv / s) + z
    m = ((r >= 0) & (r <= qmax)).float()  # torch.clamp's inclusive mask
    q = r.clamp(0, qmax)
    dQ_ds = (q - z) - m * xv / s
    S = (up[0] * dQ_ds).sum()
    k, j = int(xv.argmax()), int(xv.argmin())
    exp = up[0] * m
    exp[k] += S / qmax
    exp[j] -= S / qmax
    torch.testing.assert_close(x.grad[0], exp, rtol=1e-5, atol=1e-6)
    assert m[k] == 1 and x.grad[0, k] != up[0, k], "max element gets the scale gradient"


# ------------------------------------------------------------------------------------------
# INT symmetric (1.2)
# ------------------------------------------------------------------------------------------
def test_int4_sym_hand():
    w = t(-3.5, 0.75, 1.25, 0.25)  # s = 3.5/7 = 0.5; x/s = [-7, 1.5, 2.5, 0.5]
    Q = ref_fake_quant(w, "int", 4, -1, True)
    assert Q.tolist() == [[-3.5, 1.0, 1.5, 0.5]]
    assert ref_codes(w, "int", 4, -1, True).tolist() == [[1, 10, 11, 9]]  # q + 8
    p = ref_params(w, "int", 4, -1, True)
    assert p["scales"].tolist() == [[0.5]] and p["zeros"] is None


def test_int2_sym_negative_code():
    # b=2: s = max|x| / 1, q in [-2, 1]
    w = t(1.0, -0.6, 0.4, -1.0)
    assert ref_codes(w, "int", 2, -1, True).tolist() == [[3, 1, 2, 1]]
    assert ref_fake_quant(w, "int", 2, -1, True).tolist() == [[1.0, -1.0, 0.0, -1.0]]


def test_int_sym_analytic_gradient(gen):
    bits, g = 4, 32
    w = make_weight((1, g), "int", bits, -1, True, gen=gen, scale=1.0)
    x = w.clone().requires_grad_(True)
    up = torch.randn(1, g, generator=gen)
    ref_fake_quant(x, "int", bits, -1, True).backward(up)
    qpos = 2 ** (bits - 1) - 1
    xv = w[0]
    k = int(xv.abs().argmax())
    s = xv.abs().max() / qpos
    r = round_half_away(xv / s)
    m = ((r >= -qpos - 1) & (r <= qpos)).float()
    q = r.clamp(-qpos - 1, qpos)
    S = (up[0] * (q - m * xv / s)).sum()
    exp = up[0] * m
    exp[k] += S / qpos * torch.sign(xv[k])
    torch.testing.assert_close(x.grad[0], exp, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Level formats (1.3 / 1.4)
# ------------------------------------------------------------------------------------------
def test_nf3_two_scale_hand():
    w = t(4.0, -2.0, 0.7, -0.5, 2.0, 0.0)  # s+ = 4, s- = 2
    L = LEVELS[("nf", 3)]
    idx = [7, 0, 4, 2, 5, 3]
    assert ref_codes(w, "nf", 3, -1, False).tolist() == [idx]
    sc = torch.tensor([4.0, 2.0, 4.0, 2.0, 4.0, 4.0])
    exp = (L[idx] * sc).unsqueeze(0)
    assert torch.equal(ref_fake_quant(w, "nf", 3, -1, False), exp)
    torch.testing.assert_close(
        exp, t(4.0, -2.0, 0.7333501, -0.4938628, 1.5279758, 0.0), rtol=1e-6, atol=0
    )
    assert ref_params(w, "nf", 3, -1, False)["scales"].tolist() == [[[4.0, 2.0]]]


def test_fp4_one_scale_hand():
    w = t(6.0, -3.1, 0.2, 1.24, -4.6, 2.6)  # s = 6: snap x to {0, .5, 1, 1.5, 2, 3, 4, 6}
    assert ref_codes(w, "fp", 4, -1, True).tolist() == [[14, 2, 7, 9, 1, 12]]
    torch.testing.assert_close(
        ref_fake_quant(w, "fp", 4, -1, True), t(6.0, -3.0, 0.0, 1.0, -4.0, 3.0), rtol=1e-6, atol=0
    )
    assert ref_params(w, "fp", 4, -1, True)["scales"].tolist() == [[6.0]]


def test_fp3_one_scale_hand():
    w = t(4.0, -1.4, 0.4, 2.9)  # u = [1, -.35, .1, .725]
    assert ref_codes(w, "fp", 3, -1, True).tolist() == [[6, 2, 3, 5]]
    assert ref_fake_quant(w, "fp", 3, -1, True).tolist() == [[4.0, -1.0, 0.0, 2.0]]


def test_fp4_two_scale_hand():
    w = t(3.0, -6.0, 1.4, -1.4)  # s+ = 3, s- = 6: u = [1, -1, .4667, -.2333]
    # FP4/6 levels: .4667 -> 3/6 (mid .4167/.5833); -.2333 -> -1.5/6 (mid -.2083/-.2917)
    assert ref_codes(w, "fp", 4, -1, False).tolist() == [[14, 0, 12, 4]]
    torch.testing.assert_close(
        ref_fake_quant(w, "fp", 4, -1, False), t(3.0, -6.0, 1.5, -1.5), rtol=1e-6, atol=0
    )


def test_level_two_scale_all_positive_group():
    w = t(0.5, 1.0, 0.25, 0.75)  # s- floors at 1e-8, unused
    p = ref_params(w, "fp", 3, -1, False)
    assert p["scales"][0, 0, 0].item() == 1.0
    assert p["scales"][0, 0, 1].item() == torch.tensor(1e-8, dtype=f32).item()
    assert ref_fake_quant(w, "fp", 3, -1, False).tolist() == [[0.5, 1.0, 0.25, 0.5]]


@pytest.mark.parametrize("fmt,bits", [("nf", 3), ("nf", 4), ("fp", 3), ("fp", 4)])
def test_level_two_scale_analytic_gradient(fmt, bits, gen):
    g = 32
    w = make_weight((1, g), fmt, bits, -1, False, gen=gen, scale=1.0)
    x = w.clone().requires_grad_(True)
    up = torch.randn(1, g, generator=gen)
    ref_fake_quant(x, fmt, bits, -1, False).backward(up)
    L = LEVELS[(fmt, bits)]
    xv = w[0]
    sp, sn = xv.max(), -xv.min()
    pos = xv >= 0
    u = torch.where(pos, xv / sp, xv / sn)
    c = L[(u.unsqueeze(-1) - L).abs().argmin(-1)]
    k, j = int(xv.argmax()), int(xv.argmin())
    exp = up[0].clone()
    exp[k] += (up[0] * (c - u))[pos].sum()
    exp[j] -= (up[0] * (c - u))[~pos].sum()
    torch.testing.assert_close(x.grad[0], exp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt,bits", [("nf", 3), ("nf", 4), ("fp", 3), ("fp", 4)])
def test_level_one_scale_analytic_gradient(fmt, bits, gen):
    g = 32
    w = make_weight((1, g), fmt, bits, -1, True, gen=gen, scale=1.0)
    x = w.clone().requires_grad_(True)
    up = torch.randn(1, g, generator=gen)
    ref_fake_quant(x, fmt, bits, -1, True).backward(up)
    L = LEVELS[(fmt, bits)]
    xv = w[0]
    s = xv.abs().max()
    u = xv / s
    c = L[(u.unsqueeze(-1) - L).abs().argmin(-1)]
    k = int(xv.abs().argmax())
    exp = up[0].clone()
    exp[k] += (up[0] * (c - u)).sum() * torch.sign(xv[k])
    torch.testing.assert_close(x.grad[0], exp, rtol=1e-5, atol=1e-6)


def test_ties_at_max_split_gradient_evenly():
    w = t(1.0, 1.0, -1.0, 0.3)
    x = w.clone().requires_grad_(True)
    up = t(0.0, 0.0, 0.0, 1.0)
    ref_fake_quant(x, "int", 4, -1, False).backward(up)
    assert x.grad[0, 0] == x.grad[0, 1] != 0


# ------------------------------------------------------------------------------------------
# The gradient conventions of FORMATS.md 1.5, pinned on hand-computed cases. The expected
# numbers are worked out by hand in the comments (never by torch.clamp's autograd, whose
# behaviour at the bounds changed in torch 2.14), so these hold on every torch version.
# ------------------------------------------------------------------------------------------
def _grad(w, fmt, bits, sym, up, ste="bitdistiller"):
    x = w.clone().requires_grad_(True)
    ref_fake_quant(x, fmt, bits, -1, sym, ste).backward(up)
    return x.grad


UP = t(1.0, 2.0, 3.0, 4.0)


def test_clamp_building_block_inclusive_mask():
    x = torch.tensor([-1.0, 0.0, 1.5, 3.0, 4.0, float("nan")], requires_grad=True)
    reference._clamp(x, 0, 3).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # bounds included, NaN 0
    for lo, hi, exp in ((0.0, None, [0, 1, 1, 1, 1, 0]), (None, 3.0, [1, 1, 1, 1, 0, 0])):
        x = torch.tensor([-1.0, 0.0, 1.5, 3.0, 4.0, float("nan")], requires_grad=True)
        y = reference._clamp(x, lo, hi)
        y.sum().backward()
        assert x.grad.tolist() == exp
        assert torch.equal(y[:5], torch.clamp(x[:5].detach(), lo, hi))


def test_extreme_and_abs_building_blocks():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, -2.0]], requires_grad=True)
    (reference._amax(x) * 6).sum().backward()
    assert x.grad.tolist() == [[0.0, 2.0, 2.0, 0.0, 2.0, 0.0]]  # 6 split over 3 ties
    x = torch.tensor([[-2.0, 1.0, -2.0, 0.0]], requires_grad=True)
    reference._amin(x).sum().backward()
    assert x.grad.tolist() == [[0.5, 0.0, 0.5, 0.0]]
    x = torch.tensor([-1.5, 0.0, 2.0], requires_grad=True)
    reference._abs(x).sum().backward()
    assert x.grad.tolist() == [-1.0, 0.0, 1.0]


def test_int_asym_gradient_at_both_clamp_bounds_hand():
    # w = [-1, .2, .5, 2]: s = 3/3 = 1, z = rne(1) = 1, v = R(x/s) + z = [0, 1, 2, 3]: the min
    # element sits exactly on the lower clamp bound and the max on the upper one (mask 1 both).
    # dQ/ds = (q - z) - m * x/s = [-1+1, 0-.2, 1-.5, 2-2] = [0, -.2, .5, 0];
    # S = sum(up * dQ/ds) = -.4 + 1.5 = 1.1; ds/dmax = 1/3, ds/dmin = -1/3.
    g = _grad(t(-1.0, 0.2, 0.5, 2.0), "int", 2, False, UP)
    exp = t(1 - 1.1 / 3, 2.0, 3.0, 4 + 1.1 / 3)
    torch.testing.assert_close(g, exp, rtol=1e-6, atol=1e-6)
    # (an open-interval clamp, torch >= 2.14's own, would give [-8.1/3, 2, 3, 8.1/3])


def test_int_asym_gradient_outside_clamp_and_zero_point_hand():
    # w = [-2.5, -1.2, .2, .5]: s = 1, z = rne(2.5) = 2; v = R(x) + 2 = [-1, 1, 2, 3]: the min
    # element is clamped (mask 0, no direct gradient), the max sits on the upper bound (mask 1).
    # dQ/ds = (q - z) - m x/s = [-2 - 0, -1 + 1.2, 0 - .2, 1 - .5] = [-2, .2, -.2, .5];
    # S = -2 + .4 - .6 + 2 = -.2. z has zero gradient (rne): nothing else reaches the min.
    g = _grad(t(-2.5, -1.2, 0.2, 0.5), "int", 2, False, UP)
    exp = t(0.2 / 3, 2.0, 3.0, 4 - 0.2 / 3)
    torch.testing.assert_close(g, exp, rtol=1e-6, atol=1e-6)


def test_int_asym_tied_maxima_split_scale_gradient_hand():
    # w = [2, 2, -1, .5]: s = 1, z = 1, v = [3, 3, 0, 2] (all inside [0, 3], bounds included);
    # dQ/ds = [2-2, 2-2, -1+1, 1-.5] = [0, 0, 0, .5]; S = 2: the max gets S/3 = 2/3, split
    # evenly between its two ties (+1/3 each); the min gets -2/3.
    g = _grad(t(2.0, 2.0, -1.0, 0.5), "int", 2, False, UP)
    exp = t(1 + 1 / 3, 2 + 1 / 3, 3 - 2 / 3, 4.0)
    torch.testing.assert_close(g, exp, rtol=1e-6, atol=1e-6)


def test_int_sym_abs_tie_of_opposite_sign_at_clamp_bound_hand():
    # int2 sym: qpos = 1, q in [-2, 1]. w = [1, -1, .4, 0]: s = max|x| / 1 = 1, q = [1, -1, 0, 0]
    # (the first element on the upper bound: mask 1). dQ/ds = q - m x/s = [0, 0, -.4, 0];
    # S = -1.2 split over the two |x| maxima, times sign(x): [-.6, +.6]. The zero element
    # takes no part in max|x| (and |x|'s gradient there is 0 anyway).
    g = _grad(t(1.0, -1.0, 0.4, 0.0), "int", 2, True, UP)
    exp = t(1 - 0.6, 2 + 0.6, 3.0, 4.0)
    torch.testing.assert_close(g, exp, rtol=1e-6, atol=1e-6)


def test_level_snap_identity_ste_and_scale_gradient_hand():
    # fp3 one-scale (levels {0, +-.25, +-.5, +-1} * s): w = [4, -1.4, .4, 2.9]: s = 4,
    # u = [1, -.35, .1, .725] -> c = [1, -.25, 0, .5]. The snap has identity gradient (du/dx =
    # 1/s, times s): each element gets up; the |x| maximum also gets sum(up * (c - u)) =
    # 0 + 2*.1 + 3*(-.1) + 4*(-.225) = -1.
    g = _grad(t(4.0, -1.4, 0.4, 2.9), "fp", 3, True, UP)
    torch.testing.assert_close(g, t(0.0, 2.0, 3.0, 4.0), rtol=1e-5, atol=1e-5)
    # nf3 two-scale: w = [4, -2, .7, -.5]: s+ = 4, s- = 2; u = [1, -1, .175, -.25] ->
    # c = [1, -1, .18334, -.24693] (NF3 table). The max gets sum over x >= 0 of up*(c-u) =
    # 3*(.1833375 - .175); the min gets -(sum over x < 0) = -(4*(-.2469314 + .25)).
    L = LEVELS[("nf", 3)]
    g = _grad(t(4.0, -2.0, 0.7, -0.5), "nf", 3, False, UP)
    exp = t(1 + 3 * (L[4].item() - 0.175), 2 - 4 * (L[2].item() + 0.25), 3.0, 4.0)
    torch.testing.assert_close(g, exp, rtol=1e-5, atol=1e-6)


def test_scale_floor_is_inclusive_hand():
    # max|x| exactly at the level-format floor 1e-8 (float32): the floor's clamp mask is 1 there
    # (bounds included), so the |x| maximum still receives the scale gradient.
    f = torch.tensor(1e-8, dtype=f32).item()
    w = t(f, -0.3 * f, 0.6 * f, 0.1 * f)
    u = w / f
    L = LEVELS[("fp", 3)]
    c = L[(u.unsqueeze(-1) - L).abs().argmin(-1)]
    g = _grad(w, "fp", 3, True, UP)
    exp = UP.clone()
    exp[0, 0] += (UP * (c - u)).sum()
    torch.testing.assert_close(g, exp, rtol=1e-5, atol=1e-6)
    assert exp[0, 0] != UP[0, 0]
    # and below the floor nothing reaches the scale: a zero group gets just the upstream
    torch.testing.assert_close(_grad(t(0.0, 0.0, 0.0, 0.0), "fp", 3, True, UP), UP)


def test_identity_ste_hand():
    assert _grad(t(-1.0, 0.2, 0.5, 2.0), "int", 2, False, UP, ste="identity").tolist() == UP.tolist()


# ------------------------------------------------------------------------------------------
# Scale precision (1.6), hand-computed from the IEEE formats: float16 has 11 significant bits,
# normals from 2^-14, subnormals multiples of 2^-24, largest 65504; bfloat16 has 8 significant
# bits and float32's exponent range (largest (2 - 2^-7) * 2^127).
# ------------------------------------------------------------------------------------------
BF16_MAX = (2 - 2.0 ** -7) * 2.0 ** 127


@pytest.mark.parametrize("sd,val,exp", [
    ("float16", 1 / 3, 1365 / 4096),                        # 1.0101010101|01.. x 2^-2: down
    ("float16", 1 + 2.0 ** -11, 1.0),                       # tie: to the even 1.0
    ("float16", 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -9),         # tie: to the even neighbour above
    ("float16", 2.0 ** -14 * (1 - 2.0 ** -12), 2.0 ** -14),  # subnormal range rounds up to 2^-14
    ("float16", 3 * 2.0 ** -25, 2.0 ** -23),                # subnormal tie: to the even 2 * 2^-24
    ("float16", 5 * 2.0 ** -26, 2.0 ** -24),                # 1.25 quanta
    ("float16", 2.0 ** -25, 2.0 ** -24),                    # tie to 0 -> smallest subnormal
    ("float16", 1e-8, 2.0 ** -24),                          # the level floor underflows
    ("float16", 65519.0, 65504.0),
    ("float16", 65520.0, 65504.0),                          # rounds to inf: the largest finite
    ("float16", 1e30, 65504.0),
    ("bfloat16", 1 / 3, 171 / 512),                         # 1.0101010|1010.. x 2^-2: up
    ("bfloat16", 1 + 2.0 ** -8, 1.0),
    ("bfloat16", 1 + 3 * 2.0 ** -8, 1 + 2.0 ** -6),
    ("bfloat16", 1e-8, 43 * 2.0 ** -32),                    # 1.0101011|11.. x 2^-27: up
    ("bfloat16", 3.4e38, BF16_MAX),                         # past the last midpoint: saturates
    ("float32", 1 / 3, 1 / 3),
])
def test_round_scale_hand(sd, val, exp):
    s = torch.tensor([val], dtype=f32)
    r = round_scale(s, sd)
    assert r.dtype == f32 and r.item() == torch.tensor(exp, dtype=f32).item(), (val, r.item(), exp)
    assert round_scale(s, getattr(torch, sd)).item() == r.item()


def test_round_scale_identity_gradient():
    s = torch.tensor([1 / 3, 1e-8, 7e4], requires_grad=True)
    up = torch.tensor([0.5, -2.0, 3.0])
    round_scale(s, "float16").backward(up)
    assert torch.equal(s.grad, up)


def test_scale_dtype_hand():
    # int2 asym, range 1: s = 1/3 in float32 -> 1365/4096 in float16; z = rne(0.25 / s) = 1
    w = t(-0.25, 0.1, 0.4, 0.75)
    s16 = 1365 / 4096
    p = ref_params(w, "int", 2, -1, False, scale_dtype="float16")
    assert p["scales"].item() == s16 and p["zeros"].item() == 1
    q = [min(max(round_half_away(torch.tensor(x / s16)).item() + 1, 0), 3) for x in w[0].tolist()]
    assert ref_codes(w, "int", 2, -1, False, scale_dtype="float16")[0].tolist() == q == [0, 1, 2, 3]
    Q = ref_fake_quant(w, "int", 2, -1, False, scale_dtype="float16")
    assert Q[0].tolist() == [(c - 1) * s16 for c in q]
    # bfloat16: 171/512; and the two-scale format rounds s+ and s- each
    assert ref_params(w, "int", 2, -1, False, scale_dtype="bfloat16")["scales"].item() == 171 / 512
    w2 = t(1 / 3, -1 / 3, 0.0, 0.1)
    sc = ref_params(w2, "nf", 3, -1, False, scale_dtype="float16")["scales"]
    assert sc.tolist() == [[[1365 / 4096, 1365 / 4096]]]
    # a tiny level-format group: both scales are the float16 smallest subnormal
    sc = ref_params(t(3e-9, -1e-9, 0.0, 0.0), "nf", 3, -1, False, scale_dtype="float16")["scales"]
    assert sc.tolist() == [[[2.0 ** -24, 2.0 ** -24]]]
    with pytest.raises(ValueError, match="scale_dtype"):
        ref_fake_quant(w, "int", 2, -1, False, scale_dtype="float64")


# ------------------------------------------------------------------------------------------
# Whole-reference properties
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fake_quant_equals_decode_of_codes(fmt, bits, sym, dtype, gen):
    """Q(W) = decode(codes, params) bit-exactly (what dequantize(quantize(W)) must reproduce)."""
    for g in (32, -1):
        w = make_weight((5, 96), fmt, bits, g, sym, dtype=dtype, gen=gen)
        Q = ref_fake_quant(w, fmt, bits, g, sym)
        assert Q.dtype == dtype and Q.shape == w.shape
        D = ref_decode(ref_codes(w, fmt, bits, g, sym), ref_params(w, fmt, bits, g, sym),
                       fmt, bits, g, sym, dtype=dtype)
        assert torch.equal(Q, D)
        codes = ref_codes(w, fmt, bits, g, sym)
        ncodes = 2**bits if fmt == "int" else LEVELS[(fmt, bits)].numel()
        assert codes.min() >= 0 and codes.max() < ncodes


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS)
def test_identity_ste(fmt, bits, sym, gen):
    w = make_weight((4, 64), fmt, bits, 32, sym, gen=gen)
    a = w.clone().requires_grad_(True)
    b = w.clone().requires_grad_(True)
    up = torch.randn(4, 64, generator=gen)
    Qa = ref_fake_quant(a, fmt, bits, 32, sym, ste="identity")
    Qb = ref_fake_quant(b, fmt, bits, 32, sym, ste="bitdistiller")
    assert torch.equal(Qa, Qb)
    Qa.backward(up)
    Qb.backward(up)
    assert torch.equal(a.grad, up)
    assert not torch.equal(b.grad, up)


def test_group_minus_one_is_k(gen):
    for fmt, bits, sym in ALL_SPECS:
        w = make_weight((3, 64), fmt, bits, -1, sym, gen=gen)
        assert torch.equal(ref_fake_quant(w, fmt, bits, -1, sym), ref_fake_quant(w, fmt, bits, 64, sym))


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS)
def test_nan_poisons_only_its_group(fmt, bits, sym, gen):
    w = make_weight((2, 64), fmt, bits, 32, sym, gen=gen)
    w[1, 40] = float("nan")
    Q = ref_fake_quant(w, fmt, bits, 32, sym)
    assert torch.isnan(Q[1, 32:]).all()
    assert torch.isfinite(Q[0]).all() and torch.isfinite(Q[1, :32]).all()


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS)
@pytest.mark.parametrize("ste", STE_MODES)
def test_float64_run_agrees_within_test_tolerance(fmt, bits, sym, ste, gen):
    """Calibration: a correct implementation with different float rounding (here float64) stays
    inside the tolerances used by test_fake_quant.py on tie-free data."""
    for shape, g in (((17, 256), 64), ((8, 384), -1)):
        w = make_weight(shape, fmt, bits, g, sym, gen=gen)
        up = torch.randn(shape, generator=gen)
        a = w.clone().requires_grad_(True)
        b = w.double().requires_grad_(True)
        Qa = ref_fake_quant(a, fmt, bits, g, sym, ste)
        Qb = ref_fake_quant(b, fmt, bits, g, sym, ste, compute_dtype=torch.float64)
        Qa.backward(up)
        Qb.backward(up.double())
        torch.testing.assert_close(Qa, Qb.float(), rtol=1e-5, atol=1e-6 * grad_scale(Qb))
        torch.testing.assert_close(a.grad, b.grad.float(), rtol=1e-5, atol=1e-6 * grad_scale(b.grad))


# ------------------------------------------------------------------------------------------
# Test helpers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("K", [1, 5, 32, 33, 100])
def test_pack_helpers_round_trip(bits, K, gen):
    codes = torch.randint(0, 2**bits, (3, K), generator=gen)
    p = pack_codes(codes, bits)
    assert p.shape == (3, packed_row_bytes(K, bits)) and p.dtype == torch.uint8
    assert torch.equal(unpack_codes(p, K, bits), codes)


def test_pack_helper_layout():
    # 3-bit codes 1..5: bitstream little-endian -> byte0 = 1 | 2<<3 | (3&3)<<6
    p = pack_codes(torch.tensor([[1, 2, 3, 4, 5]]), 3)
    assert p.tolist() == [[1 | (2 << 3) | ((3 & 3) << 6), (3 >> 2) | (4 << 1) | (5 << 4)]]


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS)
def test_make_weight_avoids_ties(fmt, bits, sym, gen):
    for dtype in (torch.float32, torch.bfloat16):
        for sd in ("float32", "float16", "bfloat16"):
            w = make_weight((8, 128), fmt, bits, 32, sym, dtype=dtype, gen=gen, scale_dtype=sd)
            bad, bad_g = near_tie_masks(w.float().reshape(8, 4, 32), fmt, bits, sym,
                                        scale_dtype=sd)
            assert not bad.any() and not bad_g.any()
