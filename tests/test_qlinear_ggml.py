"""tests/test_qlinear_ggml.py: the CPU quant_linear of llama.cpp's block types (FORMATS.md 1.8,
csrc/cpu/qlinear_blk*): every type x accuracy mode x CPU ISA against float64 F.linear of
gguf-py's own dequantize of the blocks (independent of lowbit), on Gaussian and heavy-tailed
activations (FORMATS.md 4); the int8 mode also against a plain-PyTorch emulation of its
activation quantization (per row and 32-block, d = max|x| / 127 in float32, round half to
even); inf / nan / huge rows; bias, non-contiguous and 16-bit x, N not a multiple of the row
tiles; the check-only (meta / FakeTensor) path; bad input.

Bounds (FORMATS.md 4): "float" 1e-5 and "auto" 1e-4 per M; "int8" 2e-2 over all M of one input
kind together (as test_qlinear_modes.py; one M's few outputs are too noisy for a bound) and
1e-5 against its emulation, per M.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference_ggml as RG

lowbit = pytest.importorskip("lowbit")
gguf = pytest.importorskip("gguf")

TYPES = list(RG.TYPES)
ACTS = ("float", "auto", "int8")
BOUND = {"float": 1e-5, "auto": 1e-4, "int8": 2e-2}
MS = (1, 3, 17, 64)
N = 37  # not a multiple of the x86 kernels' 4-row tiles


@pytest.fixture
def restore_isa():
    yield
    lowbit.set_cpu_isa("auto")


def heavy_tailed(M, K, gen):
    """Student-t with 3 degrees of freedom, every 128th channel (from 5) times 30."""
    chi2 = (torch.randn(M, K, 3, generator=gen) ** 2).sum(-1) / 3
    x = torch.randn(M, K, generator=gen) / chi2.clamp_min(1e-6).sqrt()
    x[:, 5::128] *= 30
    return x


def gguf_weight(qw):
    """W as gguf-py dequantizes the GGUF blocks lowbit stored, float64 (N, K)."""
    n, k = qw.shape
    t = getattr(gguf.GGMLQuantizationType, qw.spec.format.upper())
    w = gguf.quants.dequantize(qw.codes.numpy(), t).reshape(n, k)
    return torch.from_numpy(w.astype(np.float64))


def emulate_int8(x, W, bias=None):
    """y of the int8 mode: x quantized per row and 32-block (FORMATS.md 4), then the exact sum
    over blocks of d_b * (q_b . W_b), float64."""
    M, K = x.shape
    xb = x.float().reshape(M, K // 32, 32)
    am = xb.abs().amax(-1, keepdim=True)
    d = am / 127.0
    q = torch.where(am > 0, torch.round(xb / torch.where(am > 0, d, 1.0)), 0.0)
    y = torch.einsum("mbi,nbi->mn", (q.double() * d.double()), W.reshape(-1, K // 32, 32))
    return y if bias is None else y + bias.double()


def rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


def make(fmt, n, k, gen):
    return lowbit.quantize(torch.randn(n, k, generator=gen) * 0.05, lowbit.QuantSpec(fmt))


@pytest.mark.parametrize("fmt", TYPES)
def test_modes_within_their_bounds_every_isa(fmt, gen, restore_isa):
    K = 512
    qw = make(fmt, N, K, gen)
    W = gguf_weight(qw)
    bias = torch.randn(N, generator=gen)
    inputs = {"gauss": torch.randn(64, K, generator=gen), "heavy": heavy_tailed(64, K, gen)}
    for kind, x in inputs.items():
        ref = F.linear(x.double(), W, bias.double())
        em = emulate_int8(x, W, bias)
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            e2 = r2 = 0.0
            for M in MS:
                for act in ACTS:
                    y = lowbit.quant_linear(x[:M], qw, bias, act=act)
                    assert y.shape == (M, N) and y.dtype == torch.float32
                    what = f"{fmt} {isa} {kind} M={M} {act}"
                    if act == "int8":
                        e2 += (y.double() - ref[:M]).square().sum().item()
                        r2 += ref[:M].square().sum().item()
                        # the emulation is tight: only float32 epilogue rounding remains
                        assert rel(y, em[:M]) <= 1e-5, f"{what} vs emulation: {rel(y, em[:M]):.3g}"
                        continue
                    err = rel(y, ref[:M])
                    assert err <= BOUND[act], f"{what}: {err:.3g}"
            err = (e2 / r2) ** 0.5
            assert err <= BOUND["int8"], f"{fmt} {isa} {kind} int8: {err:.3g}"


@pytest.mark.parametrize("fmt", ["q4_k", "q2_k", "q3_k", "q6_k", "q8_0", "q4_0", "q5_1"])
def test_layouts_the_variants_see(fmt, gen, restore_isa):
    """16-bit x (bf16 / fp16, result rounded once to x's dtype), non-contiguous x, no bias, a
    3-D x and a K of 3 blocks (k types) or 3 chunks (32-blocks): every ISA, every mode."""
    blk = lowbit.QuantSpec(fmt).group_size
    K = 3 * blk
    qw = make(fmt, 21, K, gen)
    W = gguf_weight(qw)
    base = torch.randn(2, 5, 2 * K, generator=gen)
    x = base[..., ::2]  # non-contiguous (..., K)
    ref = F.linear(x.double(), W)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        for act in ACTS:
            y = lowbit.quant_linear(x, qw, act=act)
            assert y.shape == (2, 5, 21)
            assert rel(y, ref) <= BOUND[act], f"{isa} {act}: {rel(y, ref):.3g}"
            for dt in (torch.bfloat16, torch.float16):
                x16 = x.to(dt)
                y16 = lowbit.quant_linear(x16, qw, act=act)
                assert y16.dtype == dt
                r16 = F.linear(x16.double(), W)
                # one rounding to 16 bits on top of the mode's own error
                tol = BOUND[act] + (2 ** -8 if dt == torch.bfloat16 else 2 ** -11)
                assert rel(y16, r16) <= tol, f"{isa} {act} {dt}: {rel(y16, r16):.3g}"


@pytest.mark.parametrize("act", ACTS)
def test_inf_nan_and_huge_inputs_behave_as_f_linear(act, gen, restore_isa):
    """Inf / nan in a row give F.linear's inf / nan outputs for that row; a row of 1e30 gives
    finite, accurate outputs (the integer modes run it in float); other rows are unaffected."""
    for fmt in ("q4_k", "q8_0", "q3_k"):
        qw = make(fmt, 12, 256, gen)
        W = gguf_weight(qw).float()
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            for M in (1, 3):
                for special in ("inf", "-inf", "nan", "huge"):
                    x = torch.randn(M, 256, generator=gen)
                    r = M // 2
                    if special == "huge":
                        x[r] *= 1e30
                    else:
                        x[r, 7] = float(special)
                    y = lowbit.quant_linear(x, qw, act=act)
                    ref32 = F.linear(x, W)
                    what = f"{fmt} {isa} {act} M={M} {special}"
                    assert torch.equal(torch.isnan(y), torch.isnan(ref32)), what
                    inf = torch.isinf(ref32)
                    assert torch.equal(torch.isinf(y), inf), what
                    assert torch.equal(y[inf], ref32[inf]), what
                    ref = F.linear(x.double(), W.double())
                    scale = F.linear(x.double().abs(), W.double().abs())
                    fin = torch.isfinite(ref)
                    bound = torch.where(torch.arange(M)[:, None] == r, 1e-5, BOUND[act] * 10)
                    assert ((y.double() - ref).abs()[fin] <= (bound * scale)[fin]).all(), what


def test_every_isa_agrees_with_the_scalar_twin_and_threads(gen, restore_isa):
    """Each ISA's result does not depend on the thread count; every ISA is within the mode's
    bound of the scalar twin (they sum in different orders)."""
    qw = make("q4_k", 67, 1024, gen)
    x = torch.randn(5, 1024, generator=gen)
    old = torch.get_num_threads()
    try:
        lowbit.set_cpu_isa("scalar")
        twin = {act: lowbit.quant_linear(x, qw, act=act).double() for act in ACTS}
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            for act in ACTS:
                torch.set_num_threads(1)
                one = lowbit.quant_linear(x, qw, act=act)
                torch.set_num_threads(2)
                assert torch.equal(lowbit.quant_linear(x, qw, act=act), one), f"{isa} {act}"
                assert rel(one, twin[act]) <= 1e-5, f"{isa} {act}"
    finally:
        torch.set_num_threads(old)


def test_check_only_path_and_fake_tensors(gen):
    """meta and FakeTensor inputs get the output's shape and dtype from the C checks, and their
    errors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    qw = make("q6_k", 20, 256, gen)
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = lowbit.quant_linear(torch.empty(2, 3, 256, dtype=torch.bfloat16), qw)
        assert y.shape == (2, 3, 20) and y.dtype == torch.bfloat16
    meta = lowbit.QuantizedWeight(qw.codes.to("meta"), qw.scales.to("meta"), None, qw.spec,
                                  qw.shape, torch.float32)
    y = lowbit.quant_linear(torch.empty(4, 256, device="meta"), meta, act="int8")
    assert y.shape == (4, 20) and y.device.type == "meta"
    bad = torch.empty(20, 200, dtype=torch.uint8, device="meta")
    with pytest.raises(RuntimeError, match="codes"):
        torch.ops.lowbit.quant_linear(torch.empty(4, 256, device="meta"), bad,
                                      qw.scales.to("meta"), bad[:, :0],
                                      torch.empty(0, 0, dtype=torch.int32, device="meta"),
                                      torch.empty(0, device="meta"),
                                      *qw.spec.op_args(256), 0)


def test_bad_inputs(gen):
    qw = make("q4_0", 16, 64, gen)
    x = torch.randn(2, 64)
    fmt, bits, g, sym = qw.spec.op_args(64)
    empty_pk = torch.empty(0, 0, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^x:.*K = 64"):
        lowbit.quant_linear(torch.randn(2, 63), qw)
    with pytest.raises(TypeError, match=r"^x:.*dtype"):
        lowbit.quant_linear(x.double(), qw)
    with pytest.raises(ValueError, match=r"^bias:.*\(16,\)"):
        lowbit.quant_linear(x, qw, torch.randn(15))
    with pytest.raises(ValueError, match=r"^act:"):
        lowbit.quant_linear(x, qw, act="int4")

    def op(codes=qw.codes, packed=empty_pk, g=g, act=0, x=x):
        return torch.ops.lowbit.quant_linear(x, codes, qw.scales, qw.codes[:, :0], packed,
                                             torch.empty(0), fmt, bits, g, sym, act)

    torch.testing.assert_close(op(), lowbit.quant_linear(x, qw, act="float"), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="packed: format q4_0 has no packed CPU layout"):
        op(packed=torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="codes: expected a contiguous uint8"):
        op(codes=qw.codes[:, :-1].contiguous())
    with pytest.raises(RuntimeError, match="group_size: format q4_0 has blocks of 32"):
        op(g=64)
    with pytest.raises(RuntimeError, match="act: must be in"):
        op(act=7)
    with pytest.raises(RuntimeError, match="group_size"):
        op(x=torch.randn(2, 48), codes=torch.zeros(16, 27, dtype=torch.uint8))


# ---- QuantLinear on the block types: from_linear / from_qat / convert_, state, checkpoints ----
@pytest.mark.parametrize("fmt", TYPES)
def test_quantlinear_from_linear_and_from_qat(fmt, gen):
    """QuantLinear.from_linear / from_qat of a block type: codes = lowbit.quantize's GGUF blocks
    (scales (N, 0), no zeros), the forward = F.linear of gguf-py's dequantize within the mode's
    bound, the input gradient grad_y @ W, and a state_dict round trip into a skeleton."""
    spec = lowbit.QuantSpec(fmt)
    K = spec.group_size * 2
    lin = torch.nn.Linear(K, 19)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(19, K, generator=gen) * 0.05)
    ql = lowbit.nn.QuantLinear.from_linear(lin, spec, act="float")
    assert torch.equal(ql.codes, lowbit.quantize(lin.weight, spec).codes)
    assert ql.scales.shape == (19, 0) and ql.zeros is None and ql.kernel_layout() is None
    qat = lowbit.nn.QATLinear.from_linear(lin, spec)
    assert torch.equal(lowbit.nn.QuantLinear.from_qat(qat).codes, ql.codes)
    W = gguf_weight(ql.qweight)
    x = torch.randn(3, K, generator=gen, requires_grad=True)
    y = ql(x)
    ref = F.linear(x.detach().double(), W, lin.bias.detach().double())
    assert rel(y, ref) <= BOUND["float"]
    g = torch.randn(3, 19, generator=gen)
    y.backward(g)
    gref = g.double() @ W
    assert rel(x.grad, gref) <= 1e-5
    skel = lowbit.nn.QuantLinear(K, 19, spec, act="float")
    skel.load_state_dict(ql.state_dict())
    assert torch.equal(skel(x.detach()), y.detach())


def _recipe_llama(ftype, tied):
    transformers = pytest.importorskip("transformers")  # noqa: F841
    from _hfutil import tiny_llama

    model = tiny_llama(19, tied=tied, hidden=256, inter=512, layers=2, heads=4, kv=2)
    lowbit.quantize_(model, lowbit.gguf.recipe(model, ftype))
    return model


@pytest.mark.parametrize("ftype,tied", [("Q4_K_M", False), ("Q2_K", True), ("Q4_0", False)])
def test_convert_of_a_recipe_model(ftype, tied, gen, tmp_path):
    """convert_ of a tiny Llama quantized on lowbit.gguf.recipe(model, ftype): every QATLinear
    becomes a QuantLinear whose bytes are lowbit.quantize's blocks of the trained weight; the
    logits equal the QAT model's within the mode's bound (float, auto); save_quantized /
    load_quantized (the layer table) give the same logits back."""
    model = _recipe_llama(ftype, tied)
    ids = torch.randint(0, 300, (2, 9), generator=gen)
    with torch.no_grad():
        ref = model(ids).logits.double()
    qat = {n: (m.weight.detach().clone(), m.spec) for n, m in model.named_modules()
           if isinstance(m, lowbit.nn.QATLinear)}
    assert any(s.is_block_type for _, s in qat.values())
    for act in ("float", "auto"):
        conv = _recipe_llama(ftype, tied)
        conv.load_state_dict(model.state_dict())
        lowbit.convert_(conv, act=act)
        qls = {n: m for n, m in conv.named_modules() if isinstance(m, lowbit.nn.QuantLinear)}
        assert set(qls) == set(qat)
        for n, m in qls.items():
            w, spec = qat[n]
            assert m.spec == spec, n
            assert torch.equal(m.codes, lowbit.quantize(w, spec).codes), n
        with torch.no_grad():
            got = conv(ids).logits
        # two decoder layers compound the per-layer bound a little
        assert rel(got, ref) <= 2 * BOUND[act], f"{act}: {rel(got, ref):.3g}"
    d = tmp_path / "ckpt"
    lowbit.save_quantized(conv, str(d))
    back = lowbit.load_quantized(str(d))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, got)
