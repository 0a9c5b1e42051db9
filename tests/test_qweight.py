"""lowbit.QuantizedWeight checked against itself: a hand-built packed weight (codes, scales, zero
points, spec, shape, dtype) whose parts disagree with each other or with FORMATS.md 1.1-1.7 is
refused on construction, and a checkpoint holding such parts is refused when it is loaded into
a QuantLinear (or a quantized SparseLinear24), the error naming the field.

The expectations are written from FORMATS.md, not read from lowbit's tables: codes hold
ceil(K * bits / 8) bytes per row; one scale per group (two, [s+, s-], for asymmetric NF/FP);
uint8 zero points for asymmetric INT only, each in [0, 2^bits - 1]; every scale is floored
above 0 (1.1-1.4) and exact in scale_dtype (1.6)."""
import pytest
import torch
from torch import nn

lowbit = pytest.importorskip("lowbit")

SPECS = [("int", 2, 32, False), ("int", 3, 32, False), ("int", 4, 16, False),
         ("int", 8, 32, False), ("int", 4, 32, True), ("nf", 3, 32, False), ("nf", 4, 16, True),
         ("fp", 4, 32, False), ("fp", 3, -1, True)]
IDS = ["-".join(map(str, s)) for s in SPECS]
N, K = 6, 64


def _qw(spec, gen, scale_dtype="float32"):
    spec = lowbit.QuantSpec(*spec, scale_dtype=scale_dtype)
    w = torch.randn(N, K, generator=gen)
    return spec, lowbit.quantize(w, spec)


def expected(spec):
    """(codes shape, scales shape, zeros shape or None) from FORMATS.md (1.1-1.4, 1.7)."""
    g = K if spec.group_size == -1 else spec.group_size
    two = spec.format != "int" and not spec.symmetric
    return ((N, -(-K * spec.bits // 8)), (N, K // g, 2) if two else (N, K // g),
            (N, K // g) if spec.format == "int" and not spec.symmetric else None)


def build(qw, **over):
    parts = dict(codes=qw.codes, scales=qw.scales, zeros=qw.zeros, spec=qw.spec, shape=qw.shape,
                 dtype=qw.dtype)
    parts.update(over)
    return lowbit.QuantizedWeight(**parts)


@pytest.mark.parametrize("s", SPECS, ids=IDS)
def test_valid_parts_are_accepted_and_layout_is_formats(s, gen):
    spec, qw = _qw(s, gen)
    c, sc, z = expected(spec)
    assert tuple(qw.codes.shape) == c and tuple(qw.scales.shape) == sc
    assert (qw.zeros is None) == (z is None) and (z is None or tuple(qw.zeros.shape) == z)
    again = build(qw, shape=list(qw.shape))
    assert torch.equal(lowbit.dequantize(again), lowbit.dequantize(qw))


@pytest.mark.parametrize("s", SPECS, ids=IDS)
def test_shape_that_disagrees_with_the_parts_is_refused(s, gen):
    spec, qw = _qw(s, gen)
    g = K if spec.group_size == -1 else spec.group_size
    for shape in ((N, 2 * K), (N + 1, K), (N - 1, K)):
        with pytest.raises(ValueError, match=r"^(codes|scales): expected shape"):
            build(qw, shape=shape)
    if g < K:
        with pytest.raises(ValueError, match=r"^shape: in_features .* group_size"):
            build(qw, shape=(N, K + 1))
    for shape in ((N,), (N, K, 1), (0, K), (N, -K), (N, 64.0), "NK"):
        with pytest.raises((ValueError, TypeError), match=r"^shape: "):
            build(qw, shape=shape)


@pytest.mark.parametrize("s", SPECS, ids=IDS)
def test_parts_of_the_wrong_kind_are_refused(s, gen):
    spec, qw = _qw(s, gen)
    bad = [("codes", qw.codes.to(torch.int16), TypeError), ("codes", qw.codes[:, :-1], ValueError),
           ("codes", qw.codes.t().contiguous().t(), ValueError),
           ("codes", qw.codes.tolist(), TypeError),
           ("scales", qw.scales.double(), TypeError), ("scales", qw.scales[:-1], ValueError),
           ("scales", qw.scales.to("meta"), ValueError)]
    if qw.zeros is None:
        bad.append(("zeros", torch.zeros(N, qw.scales.shape[1], dtype=torch.uint8), ValueError))
    else:
        bad += [("zeros", None, TypeError), ("zeros", qw.zeros.to(torch.int32), TypeError),
                ("zeros", qw.zeros[:, :1], ValueError)]
    for field, value, exc in bad:
        with pytest.raises(exc, match=f"^{field}: "):
            build(qw, **{field: value})
    with pytest.raises(TypeError, match=r"^dtype: "):
        build(qw, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^spec: "):
        build(qw, spec="int4")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_zero_points_above_qmax_are_refused(bits, gen):
    spec, qw = _qw(("int", bits, 32, False), gen)
    qmax = 2 ** bits - 1
    z = qw.zeros.clone()
    z[N - 1, 1] = qmax
    build(qw, zeros=z)  # qmax itself is a zero point quantize can write (FORMATS.md 1.1)
    for v in (qmax + 1, 255):
        z[N - 1, 1] = v
        with pytest.raises(ValueError, match=rf"^zeros: zero point {v} .* qmax = {qmax}"):
            build(qw, zeros=z)


@pytest.mark.parametrize("s", SPECS, ids=IDS)
def test_scales_must_be_finite_and_positive(s, gen):
    spec, qw = _qw(s, gen)
    for v in (0.0, -0.5, float("nan"), float("inf"), float("-inf")):
        sc = qw.scales.clone()
        sc.view(-1)[int(torch.randint(0, sc.numel(), (1,), generator=gen))] = v
        with pytest.raises(ValueError, match=r"^scales: scale .* finite number > 0"):
            build(qw, scales=sc)


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
def test_scales_must_be_exact_in_scale_dtype(scale_dtype, gen):
    spec, qw = _qw(("int", 4, 32, False), gen, scale_dtype)
    dt = getattr(torch, scale_dtype)
    assert torch.equal(qw.scales.to(dt).float(), qw.scales)  # what quantize stores (1.6)
    sc = qw.scales.clone()
    sc[0, 0] = torch.nextafter(sc[0, 0], torch.tensor(2.0))  # one float32 ulp off the grid
    with pytest.raises(ValueError, match=rf"^scales: .* not exact in .*{scale_dtype}"):
        build(qw, scales=sc)
    # the same scales are fine for a float32-scale spec
    build(qw, scales=sc, spec=lowbit.QuantSpec("int", 4, 32))


def test_meta_parts_are_checked_by_shape_only():
    spec = lowbit.QuantSpec("int", 4, 32)
    qw = lowbit.quantize(torch.zeros(N, K, device="meta"), spec)
    build(qw)
    with pytest.raises(ValueError, match=r"^codes: expected shape"):
        build(qw, shape=(N, 2 * K))


# ---- checkpoints ----
def _layer(spec, gen):
    return lowbit.nn.QuantLinear.from_weight(torch.randn(N, K, generator=gen), spec,
                                             bias=torch.randn(N, generator=gen))


def test_quant_linear_refuses_a_state_dict_with_bad_values(gen):
    spec = lowbit.QuantSpec("int", 4, 32)
    model = nn.Sequential(nn.ReLU(), _layer(spec, gen))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    for key, edit, what in [("1.zeros", lambda t: t.fill_(16), "zero point 16"),
                            ("1.scales", lambda t: t.view(-1)[3:4].fill_(0.0), "scale 0.0"),
                            ("1.scales", lambda t: t.view(-1)[0:1].fill_(float("nan")), "nan")]:
        fresh = nn.Sequential(nn.ReLU(), lowbit.nn.QuantLinear(K, N, spec))
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        sd = {k: v.clone() for k, v in good.items()}
        edit(sd[key])
        with pytest.raises(ValueError, match=rf"^{key}: .*{what}"):
            fresh.load_state_dict(sd)
        for k, v in fresh.state_dict().items():  # nothing was copied in
            assert torch.equal(v, before[k]), k
    # an int64 zero point that the cast to uint8 would wrap into range (259 -> 3) is compared
    # before the cast
    sd = {k: v.clone() for k, v in good.items()}
    sd["1.zeros"] = sd["1.zeros"].long()
    sd["1.zeros"][0, 0] = 259
    with pytest.raises(ValueError, match=r"^1.zeros: zero point 259"):
        nn.Sequential(nn.ReLU(), lowbit.nn.QuantLinear(K, N, spec)).load_state_dict(sd)
    fresh = nn.Sequential(nn.ReLU(), lowbit.nn.QuantLinear(K, N, spec))
    fresh.load_state_dict(good)  # the untouched checkpoint still loads
    x = torch.randn(3, K, generator=gen)
    assert torch.equal(fresh(x), model(x))


def test_load_quantized_refuses_a_file_with_bad_zero_points(tmp_path, gen):
    from safetensors.torch import load_file, save_file

    spec = lowbit.QuantSpec("int", 3, 32)
    model = nn.Sequential(_layer(spec, gen))
    lowbit.save_quantized(model, str(tmp_path))
    path = tmp_path / "model.safetensors"
    sd = load_file(str(path))
    sd["0.zeros"][1, 0] = 8
    save_file(sd, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"^0.zeros: zero point 8 .* qmax = 7"):
        lowbit.load_quantized(nn.Sequential(nn.Linear(K, N)), str(tmp_path))


def test_sparse_quantized_layer_refuses_bad_values(gen):
    spec = lowbit.QuantSpec("int", 4, 16)
    m = lowbit.nn.SparseLinear24.from_linear(nn.Linear(K, N), mode="inference", spec=spec)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["zeros"][0, 0] = 200
    fresh = lowbit.nn.SparseLinear24(K, N, mode="inference", spec=spec)
    with pytest.raises(ValueError, match=r"^zeros: zero point 200"):
        fresh.load_state_dict(sd)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["scales"][1, 0] = -1.0
    with pytest.raises(ValueError, match=r"^scales: scale -1.0"):
        fresh.load_state_dict(sd)
    fresh.load_state_dict(m.state_dict())
