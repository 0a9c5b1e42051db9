"""quant_linear's accuracy modes (FORMATS.md 4) and the derived-state rules of
QuantLinear: every mode against a float64 reference on Gaussian and
heavy-tailed activations for every format, bits and group kind, M in {1, 2, 3, 5, 8, 16, 17},
each CPU ISA forced in turn; inf / nan / 1e35 inputs; determinism; the kernel layout never
stale; 16-bit casts of QuantLinear; bad sizes and modes.

Errors are ||y - y_ref||_F / ||y_ref||_F with y_ref = F.linear in float64 over the float32
values of the codes (FORMATS.md 4). Bounds: "float" 1e-5 and "auto" 1e-4 at every M; "int8"
2e-2 over the rows of all M of one input kind together (its error is ~1e-2; on the 48 outputs of
one M alone the estimate would be too noisy to hold a bound).
"""
import pytest
import torch
import torch.nn.functional as F

from _testutil import heavy_tailed, rel_err as rel
from reference import ALL_SPECS

lowbit = pytest.importorskip("lowbit")

SPEC_IDS = [f"{f}{b}{'sym' if s else 'asym'}" for f, b, s in ALL_SPECS]
MS = (1, 2, 3, 5, 8, 16, 17)
BOUND = {"float": 1e-5, "auto": 1e-4, "int8": 2e-2}
N = 48


@pytest.fixture
def restore_isa():
    yield
    lowbit.set_cpu_isa("auto")


def qspec(fmt, bits, g, sym):
    return lowbit.QuantSpec(format=fmt, bits=bits, group_size=g, symmetric=sym)


def w_f32(qw):
    return lowbit.dequantize(lowbit.QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.spec,
                                                    qw.shape, torch.float32))


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_modes_within_their_bounds_every_isa(fmt, bits, sym, gen, restore_isa):
    # 384 / 64 = 6 groups: the 4-group transposes of the tile parameters and their tail
    for g, K in ((64, 384), (-1, 200)):  # 200: a whole-row group with a padded K-block
        qw = lowbit.quantize(torch.randn(N, K, generator=gen), qspec(fmt, bits, g, sym))
        bias = torch.randn(N, generator=gen)
        W = w_f32(qw).double()
        inputs = {"gauss": torch.randn(17, K, generator=gen), "heavy": heavy_tailed(17, K, gen)}
        for kind, x in inputs.items():
            ref = F.linear(x.double(), W, bias.double())
            for isa in lowbit.available_cpu_isas():
                lowbit.set_cpu_isa(isa)
                e2 = r2 = 0.0
                # the scalar twin is ~100x slower: its M set keeps each kernel path (GEMV,
                # integer row chunks, the batched passes and float GEMM past 16 rows)
                for M in (MS if isa != "scalar" else (1, 3, 8, 17)):
                    for act in ("float", "auto", "int8"):
                        y = lowbit.quant_linear(x[:M], qw, bias, act=act)
                        assert y.shape == (M, N) and y.dtype == torch.float32
                        if act == "int8":
                            e2 += (y.double() - ref[:M]).square().sum().item()
                            r2 += ref[:M].square().sum().item()
                            continue
                        err = rel(y, ref[:M])
                        assert err <= BOUND[act], f"{isa} g={g} {kind} M={M} {act}: {err:.3g}"
                err = (e2 / r2) ** 0.5
                assert err <= BOUND["int8"], f"{isa} g={g} {kind} int8: {err:.3g}"


@pytest.mark.parametrize("spec", [("int", 4, 128, False), ("int", 2, 64, False),
                                  ("fp", 4, 64, False), ("nf", 4, 64, True)],
                         ids=lambda s: f"{s[0]}{s[1]}g{s[2]}")
def test_modes_on_a_larger_layer(spec, gen):
    """The default ISA on 1024 -> 256 (many K-blocks per row): the same bounds."""
    qw = lowbit.quantize(torch.randn(256, 1024, generator=gen), qspec(*spec))
    W = w_f32(qw).double()
    for x in (torch.randn(16, 1024, generator=gen), heavy_tailed(16, 1024, gen)):
        for M in (1, 4, 16):
            ref = F.linear(x[:M].double(), W)
            for act, bound in BOUND.items():
                err = rel(lowbit.quant_linear(x[:M], qw, act=act), ref)
                assert err <= bound, f"M={M} {act}: {err:.3g}"


@pytest.mark.parametrize("act", ["float", "auto", "int8"])
def test_inf_nan_and_huge_inputs_behave_as_f_linear(act, gen, restore_isa):
    """Inf / nan in a row give F.linear's inf / nan outputs for that row (never
    a whole row of nan where F.linear has inf, never a finite wrong number); a row of 1e35 gives
    finite, accurate outputs; the other rows are unaffected."""
    qw = lowbit.quantize(torch.randn(40, 128, generator=gen), qspec("int", 4, 32, False))
    W = w_f32(qw)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        for M in (1, 3, 8):
            for special in ("inf", "-inf", "nan", "huge"):
                x = torch.randn(M, 128, generator=gen)
                r = M // 2
                if special == "huge":
                    x[r] *= 1e35
                else:
                    x[r, 7] = float(special)
                y = lowbit.quant_linear(x, qw, act=act)
                check_like_f_linear(y, x, W, torch.arange(M) == r, act,
                                    f"{isa} {act} M={M} {special}")


def check_like_f_linear(y, x, W, special, act, what):
    """y = quant_linear(x) has F.linear(x, W)'s nan / inf outputs (the same infs), and its finite
    outputs are within 1e-5 (rows flagged special: they take the exact path) or 10x the mode's
    bound of the float64 result, relative to sum |x| |W|."""
    ref32 = F.linear(x, W)
    assert torch.equal(torch.isnan(y), torch.isnan(ref32)), what
    inf = torch.isinf(ref32)
    assert torch.equal(torch.isinf(y), inf) and torch.equal(y[inf], ref32[inf]), what
    ref = F.linear(x.double(), W.double())
    fin = torch.isfinite(ref)
    scale = F.linear(x.double().abs(), W.double().abs())
    bound = torch.where(special[:, None], 1e-5, BOUND[act] * 10)
    assert ((y.double() - ref).abs()[fin] <= (bound * scale)[fin]).all(), what


def test_deterministic_across_runs_and_threads(gen):
    qw = lowbit.quantize(torch.randn(100, 512, generator=gen), qspec("int", 4, 128, False))
    old = torch.get_num_threads()
    try:
        for M in (1, 5, 16):
            x = torch.randn(M, 512, generator=gen)
            for act in ("auto", "int8"):
                torch.set_num_threads(1)
                a = lowbit.quant_linear(x, qw, act=act)
                torch.set_num_threads(2)
                b, c = lowbit.quant_linear(x, qw, act=act), lowbit.quant_linear(x, qw, act=act)
                assert torch.equal(a, b) and torch.equal(b, c), (M, act)
    finally:
        torch.set_num_threads(old)


def test_act_argument_and_module_modes(gen):
    qw = lowbit.quantize(torch.randn(16, 64, generator=gen), qspec("int", 4, 32, False))
    x = torch.randn(2, 64, generator=gen)
    for bad in ("fast", "INT8", None, 0, 1.0):
        with pytest.raises(ValueError, match=r"^act:"):
            lowbit.quant_linear(x, qw, act=bad)
        with pytest.raises(ValueError, match=r"^act:"):
            lowbit.nn.QuantLinear(64, 16, qw.spec, act=bad)
    lin = torch.nn.Linear(64, 16)
    for act in ("float", "int8", "auto"):
        m = lowbit.nn.QuantLinear.from_linear(lin, qw.spec, act=act)
        assert m.act == act and f"act={act}" in repr(m)
        torch.testing.assert_close(m(x), lowbit.quant_linear(x, m.qweight, m.bias.detach(),
                                                             act=act), rtol=0, atol=0)
    model = lowbit.quantize_(torch.nn.Sequential(torch.nn.Linear(64, 16)),
                             lowbit.QATConfig(spec=qw.spec))
    with pytest.raises(ValueError, match=r"^act:"):
        lowbit.convert_(model, act="int4")
    lowbit.convert_(model, act="int8")
    assert model[0].act == "int8"


# ---- derived state ----
def test_layout_follows_in_place_edits(gen):
    spec = qspec("int", 4, 32, False)
    qw = lowbit.quantize(torch.randn(24, 96, generator=gen), spec)
    x = torch.randn(3, 96, generator=gen)

    def check():
        ref = F.linear(x.double(), w_f32(qw).double())
        assert rel(lowbit.quant_linear(x, qw, act="float"), ref) <= 1e-5

    check()  # builds the layout
    qw.scales.mul_(3)  # the kernels read the canonical scales: nothing to rebuild
    check()
    qw.zeros[0].fill_(3)
    check()
    other = lowbit.quantize(torch.randn(24, 96, generator=gen), spec)
    qw.codes.copy_(other.codes)  # codes: the layout is rebuilt (version counter)
    check()
    qw.codes[5, :4] = 0x11
    check()
    qw.codes = other.codes.clone()  # a new tensor: rebuilt as well
    check()
    # replacements whose storage may land where an earlier codes tensor was freed (same address,
    # shape and version 0): the layout is keyed on the tensor object, not its address
    for i in range(4):
        qw.codes = lowbit.quantize(torch.randn(24, 96, generator=gen), spec).codes
        qw.codes = lowbit.quantize(torch.randn(24, 96, generator=gen), spec).codes
        check()

    m = lowbit.nn.QuantLinear.from_linear(torch.nn.Linear(96, 24), spec)
    y0 = m(x)
    m.scales.mul_(0.5)
    torch.testing.assert_close(m(x) - m.bias, (y0 - m.bias) * 0.5, rtol=1e-5, atol=1e-5)
    m.codes.copy_(other.codes)
    ref = F.linear(x.double(), w_f32(m.qweight).double(), m.bias.double())
    assert rel(m(x), ref) <= 1e-4


def test_load_state_dict_of_a_save_quantized_file(gen, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    spec = qspec("int", 3, 32, False)
    model = lowbit.convert_(lowbit.quantize_(torch.nn.Sequential(torch.nn.Linear(64, 20)),
                                             lowbit.QATConfig(spec=spec)))
    x = torch.randn(4, 64, generator=gen)
    y = model(x)
    lowbit.save_quantized(model, tmp_path)
    sd = {k.split(".", 1)[1]: v for k, v in load_file(tmp_path / "model.safetensors").items()}
    assert "packed" not in sd and "params" not in sd
    m = lowbit.nn.QuantLinear(64, 20, spec)
    m(x)  # a layout of the zero skeleton exists now: it must not survive the load
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not missing and not unexpected
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)
    old = dict(sd, packed=torch.zeros(1, dtype=torch.int32), params=torch.zeros(1))
    m2 = lowbit.nn.QuantLinear(64, 20, spec)
    m2.load_state_dict(old)  # state dicts from before the layout stopped being state
    torch.testing.assert_close(m2(x), y, rtol=0, atol=0)


# ---- 16-bit casts and bad sizes ----
@pytest.mark.parametrize("cast", ["bf16", "half", "model"])
def test_16_bit_casts_keep_the_packed_weight(cast, gen):
    spec = qspec("nf", 4, 64, False)
    lin = torch.nn.Linear(128, 40)
    m = lowbit.nn.QuantLinear.from_linear(lin, spec)
    x = torch.randn(3, 128, generator=gen)
    y32 = m(x)
    codes, scales = m.codes.clone(), m.scales.clone()
    if cast == "bf16":
        m, dt = m.to(torch.bfloat16), torch.bfloat16
    elif cast == "half":
        m, dt = m.half(), torch.float16
    else:
        m, dt = torch.nn.Sequential(m, torch.nn.ReLU()).to(torch.bfloat16)[0], torch.bfloat16
    assert m.scales.dtype == torch.float32 and torch.equal(m.scales, scales)
    assert m.codes.dtype == torch.uint8 and torch.equal(m.codes, codes)
    assert m.bias.dtype == dt
    y = m(x.to(dt))
    assert y.dtype == dt
    ref = F.linear(x.to(dt).double(), w_f32(m.qweight).double(), m.bias.double())
    assert rel(y, ref) <= 2 * 2.0 ** -8
    torch.testing.assert_close(y.float(), y32, rtol=2e-2, atol=2e-2)
    assert m.float()(x).dtype == torch.float32


@pytest.mark.parametrize("K,N,name", [(0, 4, "in_features"), (-3, 4, "in_features"),
                                      (64, 0, "out_features"), (64, -1, "out_features"),
                                      (64.0, 4, "in_features"), (True, 4, "in_features")])
def test_bad_sizes_name_the_argument(K, N, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        lowbit.nn.QuantLinear(K, N, qspec("int", 4, 32, False))
