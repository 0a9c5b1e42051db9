"""tests/test_fake_quant_ggml.py: the fake_quant family on llama.cpp's block types (FORMATS.md 1.8,
the block rows of the format table): QuantSpec of a block type, and the model verbs' errors for
shapes and layers a type cannot take. Checked against tests/reference_ggml.py (an independent
plain-PyTorch reading of 1.8, itself checked against gguf-py in tests/test_reference_ggml.py)."""
import numpy as np
import pytest
import torch

import reference_ggml as RG

lowbit = pytest.importorskip("lowbit")
from lowbit import _constants as C  # noqa: E402

TYPES = list(RG.TYPES)


# ---- QuantSpec ----
@pytest.mark.parametrize("fmt", TYPES)
def test_spec_takes_the_type_fixed(fmt):
    """QuantSpec("q4_k"): bits, group_size, symmetric come from the row; the same values given
    explicitly are the same spec; any other value, or another scale_dtype, is a ValueError naming
    the field."""
    f = C.FORMATS[fmt]
    spec = lowbit.QuantSpec(fmt)
    assert (spec.bits, spec.group_size, spec.symmetric, spec.scale_dtype) == \
        (f.bits[0], f.block, f.symmetric, "float32")
    assert spec == lowbit.QuantSpec(fmt, f.bits[0], f.block, f.symmetric)
    assert spec.name == fmt and spec.is_block_type
    assert hash(spec) == hash(lowbit.QuantSpec(format=fmt, group_size=f.block))
    bad = {"bits": f.bits[0] + 1, "group_size": f.block // 2 if f.block > 32 else 64,
           "symmetric": not f.symmetric, "scale_dtype": "float16"}
    for name, v in bad.items():
        with pytest.raises(ValueError, match=f"^{name}: "):
            lowbit.QuantSpec(fmt, **{name: v})
    with pytest.raises(ValueError, match="^group_size: "):
        lowbit.QuantSpec(fmt, group_size=-1)
    with pytest.raises(ValueError, match="^bits: "):
        lowbit.QuantSpec(fmt, bits=True)


def test_spec_defaults_of_other_formats_unchanged():
    """Leaving bits / group_size / symmetric out still means 4 / 128 / False for the code
    formats."""
    assert lowbit.QuantSpec() == lowbit.QuantSpec("int", 4, 128, False)
    assert lowbit.QuantSpec("nf", 3) == lowbit.QuantSpec("nf", 3, 128, False)
    assert not lowbit.QuantSpec("fp").is_block_type


@pytest.mark.parametrize("fmt", TYPES)
def test_in_features_not_a_multiple_of_the_block(fmt):
    """K not a multiple of the block: ValueError naming in_features (spec, fake_quantize,
    quantize, QATLinear) or the layer (quantize_)."""
    spec = lowbit.QuantSpec(fmt)
    K = spec.group_size + 16
    with pytest.raises(ValueError, match="^in_features: "):
        spec.group_for(K)
    w = torch.randn(3, K)
    for fn in (lowbit.fake_quantize, lowbit.quantize):
        with pytest.raises(ValueError, match="^in_features: "):
            fn(w, spec)
    with pytest.raises(ValueError, match="^in_features: "):
        lowbit.nn.QATLinear(K, 4, spec=spec)
    model = torch.nn.Sequential(torch.nn.Linear(K, 4))
    for mode in ("error", "gcd"):
        with pytest.raises(ValueError, match=f"in_features: {K} of 0 is not a multiple"):
            lowbit.quantize_(model, lowbit.QATConfig(spec, indivisible=mode))


def test_convert_block_types_and_the_bare_errors():
    """convert_ of a QAT model on a block type packs it (QuantLinear holding the GGUF blocks;
    tests/test_qlinear_ggml.py in depth); a bare QATLinear, and not a module at all, get the
    verbs' own errors, as for any format."""
    model = torch.nn.Sequential(torch.nn.Linear(256, 8), torch.nn.Linear(8, 4))
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("q4_k"),
                                             overrides={"1": None}))
    with pytest.raises(ValueError, match="^model: is itself a QATLinear"):
        lowbit.convert_(model[0])
    with pytest.raises(TypeError, match="^model: expected an nn.Module"):
        lowbit.convert_(5)
    lowbit.convert_(model)
    assert isinstance(model[0], lowbit.nn.QuantLinear) and model[0].spec.format == "q4_k"
    assert type(model[1]) is torch.nn.Linear


@pytest.mark.parametrize("fmt", TYPES)
def test_convert_every_block_type(fmt):
    """Every block type, in a model that also holds an int layer: convert_ packs both, and the
    outputs equal the QAT model's within act="float"'s bound (FORMATS.md 4)."""
    gen = torch.Generator().manual_seed(19)
    K = lowbit.QuantSpec(fmt).group_size
    model = torch.nn.Sequential(torch.nn.Linear(128, K), torch.nn.Linear(K, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 128),
                                             overrides={"1": lowbit.QuantSpec(fmt)}))
    x = torch.randn(2, 128, generator=gen)
    y = model(x).detach().double()
    lowbit.convert_(model, act="float")
    assert all(type(m) is lowbit.nn.QuantLinear for m in model)
    assert model[1].spec.format == fmt
    assert ((model(x).double() - y).norm() / y.norm()).item() <= 1e-5


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_quant_linear_op_takes_block_types(device):
    """The quant_linear op (its C glue on the CPU, its fake on meta) reads a block type's GGUF
    blocks (tests/test_qlinear_ggml.py in depth): F.linear of the dequantized weight."""
    spec = lowbit.QuantSpec("q4_k")
    qw = lowbit.quantize(torch.randn(8, 256, generator=torch.Generator().manual_seed(3)), spec)
    fmt, bits, g, sym = spec.op_args(256)
    x = torch.randn(2, 256)
    y = torch.ops.lowbit.quant_linear(
        x.to(device), qw.codes.to(device), qw.scales.to(device),
        torch.empty((8, 0), dtype=torch.uint8, device=device),
        torch.empty((0, 0), dtype=torch.int32, device=device),
        torch.empty((0,), device=device), fmt, bits, g, sym, 0)
    assert y.shape == (2, 8) and y.device.type == device
    if device == "cpu":
        ref = torch.nn.functional.linear(x.double(), lowbit.dequantize(qw).double())
        assert ((y.double() - ref).norm() / ref.norm()).item() <= 1e-5


# ---- weights: one row per kind of block content ----
def _weights(gen, K=512, reps=1):
    """(12 * reps, K) float32: Gaussian, heavy-tailed, all-positive, all-negative, constant
    blocks, zero blocks, tiny (d = 0 in fp16), huge (d past 65504: the fp16 clamp), exact
    ties (+-0.75; max == -min), sub-blocks of very different sizes (S_j = 0), outliers, and
    half-integer ratios (R's ties)."""
    def randn(*s):
        return torch.randn(*s, generator=gen)

    out = []
    for _ in range(reps):
        g = randn(K) * 0.02
        heavy = randn(K) / (torch.rand(K, generator=gen) + 0.05) * 0.01
        const = torch.repeat_interleave(randn(K // 32) * 0.05, 32)
        const[:256] = 0.125
        zeros = torch.cat([torch.zeros(256), randn(K - 256) * 0.03])
        zeros[256:288] = 0
        huge = randn(K) * 3e3
        huge[32:64] *= 3e4
        ties = torch.where(torch.rand(K, generator=gen) < 0.5, -0.75, 0.75)
        ties[64:96] = torch.linspace(-1, 1, 32)
        mixed = randn(K) * 0.02 * torch.repeat_interleave(
            10.0 ** (torch.arange(K // 16) % 5 - 2.0), 16)
        mixed[0:16] *= 1e-6
        outlier = randn(K) * 0.01
        outlier[torch.randint(0, K, (6,), generator=gen)] = 0.5
        halves = torch.randint(-254, 255, (K,), generator=gen).float() / 2
        halves[::32] = 127.0
        out += [g, heavy, g.abs(), -g.abs(), const, zeros, randn(K) * 1e-9, huge, ties, mixed,
                outlier, halves]
    return torch.stack(out).contiguous()


def _grad_close(got, ref):
    """Gradients within 1e-5 of the reference, relative to its largest entry (FORMATS.md 1.5)."""
    scale = float(ref.abs().max().clamp(min=1e-30))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture
def restore_isa():
    yield
    lowbit.set_cpu_isa("auto")


# ---- fake_quantize forward and backward ----
@pytest.mark.parametrize("fmt", TYPES)
def test_fake_quant_forward_is_the_reference(fmt, gen, restore_isa):
    """Q(w) bit for bit the reference's (1.8's rules, ggml's dequantization), on every ISA,
    for float32 inputs and for bfloat16 / float16 inputs (upcast, result cast back)."""
    w = _weights(gen)
    spec = lowbit.QuantSpec(fmt)
    ref = RG.fake_quant(w, fmt)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        assert RG.same_bits(lowbit.fake_quantize(w, spec), ref), isa
    for dt in (torch.bfloat16, torch.float16):
        wd = (w * (1e-4 if dt == torch.float16 else 1.0)).to(dt)  # float16: no inf inputs
        got = lowbit.fake_quantize(wd, spec)
        assert got.dtype == dt
        assert RG.same_bits(got.float(), RG.fake_quant(wd, fmt).float()), dt


@pytest.mark.parametrize("fmt", TYPES)
@pytest.mark.parametrize("ste", ["bitdistiller", "identity"])
def test_fake_quant_backward_is_the_reference(fmt, ste, gen, restore_isa):
    """dL/dw of both STEs against the reference's autograd (1.8's gradient rules), on every
    ISA (bit-identical across ISAs), and for bfloat16 / float16 inputs."""
    w = _weights(gen)
    spec = lowbit.QuantSpec(fmt)
    up = torch.randn(w.shape, generator=gen)
    xr = w.clone().requires_grad_(True)
    RG.fake_quant(xr, fmt, ste).backward(up)
    first = None
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        x = w.clone().requires_grad_(True)
        lowbit.fake_quantize(x, spec, ste=ste).backward(up)
        _grad_close(x.grad, xr.grad)
        first = x.grad if first is None else first
        assert torch.equal(x.grad, first), isa
    lowbit.set_cpu_isa("auto")
    for dt in (torch.bfloat16, torch.float16):
        wd = (w * 1e-4).to(dt)
        x, xr = wd.clone().requires_grad_(True), wd.clone().requires_grad_(True)
        lowbit.fake_quantize(x, spec, ste=ste).backward(up.to(dt))
        RG.fake_quant(xr, fmt, ste).backward(up.to(dt))
        assert x.grad.dtype == dt
        tol = 1e-2 if dt == torch.bfloat16 else 2e-3  # one rounding to dt on each side
        scale = float(xr.grad.float().abs().max())
        torch.testing.assert_close(x.grad.float(), xr.grad.float(), rtol=tol, atol=tol * scale)


def test_backward_routes_the_scale_gradient(gen):
    """The gradient is not the identity STE's, and where it differs is where 1.8 routes the
    scale gradient: q4_0 moves only the direct term and each block's amax-signed element; q4_k
    only each sub-block's max and min. A zero q4_0 block gets none (d = 0: constant codes), a
    zero q4_k block 1 through its min (Q = -M_j follows min(x_j))."""
    w = _weights(gen)[:1]
    for fmt, sub in (("q4_0", 32), ("q4_k", 32)):
        x = w.clone().requires_grad_(True)
        lowbit.fake_quantize(x, lowbit.QuantSpec(fmt)).sum().backward()
        xi = w.clone().requires_grad_(True)
        lowbit.fake_quantize(xi, lowbit.QuantSpec(fmt), ste="identity").sum().backward()
        xs = w.reshape(-1, sub)
        ext = (xs == xs.amax(-1, keepdim=True)) | (xs == xs.amin(-1, keepdim=True))
        moved = (x.grad != xi.grad).reshape(-1, sub)
        assert moved.any()
        # elsewhere only the clamp mask moves a gradient (to 0)
        assert torch.all(x.grad.reshape(-1, sub)[moved & ~ext] == 0), fmt
    z = torch.zeros(2, 256, requires_grad=True)
    lowbit.fake_quantize(z, lowbit.QuantSpec("q4_0")).sum().backward()
    assert torch.equal(z.grad, torch.zeros(2, 256))
    z.grad = None
    lowbit.fake_quantize(z, lowbit.QuantSpec("q4_k")).sum().backward()
    assert torch.equal(z.grad, torch.ones(2, 256))


@pytest.mark.parametrize("fmt", TYPES)
def test_nan_inf_blocks(fmt, gen):
    """A block holding NaN or Inf gives NaN values and NaN gradients in that block only (as
    the other formats do per group); quantize refuses it with ValueError naming w."""
    spec = lowbit.QuantSpec(fmt)
    B = spec.group_size
    w = torch.randn(3, 2 * B, generator=gen) * 0.1
    w[0, 3] = float("nan")
    w[2, B + 1] = float("inf")
    x = w.clone().requires_grad_(True)
    q = lowbit.fake_quantize(x, spec)
    q.sum().backward()
    bad = torch.zeros(3, 2 * B, dtype=torch.bool)
    bad[0, :B] = True
    bad[2, B:] = True
    assert torch.isnan(q[bad]).all() and torch.isnan(x.grad[bad]).all()
    ok = w.clone()
    ok[bad] = 0.5
    assert RG.same_bits(q[~bad], RG.fake_quant(ok, fmt)[~bad])
    assert torch.isfinite(x.grad[~bad]).all()
    with pytest.raises(ValueError, match="^w: contains NaN or Inf"):
        lowbit.quantize(w, spec)


def test_meta_and_fake_tensors():
    """The fakes run the glue's checks: shapes of fake_quant and quantize on the meta device,
    and the block-multiple check, as the real kernels."""
    spec = lowbit.QuantSpec("q6_k")
    w = torch.empty(4, 512, device="meta")
    assert lowbit.fake_quantize(w, spec).shape == (4, 512)
    codes, scales, zeros = torch.ops.lowbit.quantize(w, *spec.op_args(512), spec.scale_code)
    assert codes.shape == (4, 2 * 210) and codes.dtype == torch.uint8
    assert scales.shape == (4, 0) and zeros.shape == (4, 0)
    with pytest.raises(RuntimeError, match="group_size: "):
        torch.ops.lowbit.fake_quant(w, C.FORMAT_CODES["q6_k"], 6, 32, True, 0)


# ---- quantize / dequantize: the GGUF block bytes ----
@pytest.mark.parametrize("fmt", TYPES)
def test_quantize_writes_the_gguf_blocks(fmt, gen, restore_isa):
    """quantize's codes are the reference's GGUF block bytes (ggml-common.h layout) on every
    ISA; dequantize of them equals fake_quantize bit for bit, the reference's dequantize, and
    gguf-py's own gguf.quants.dequantize of the same bytes; other output dtypes are the float32
    result cast."""
    gguf = pytest.importorskip("gguf")
    w = _weights(gen)
    spec = lowbit.QuantSpec(fmt)
    f = C.FORMATS[fmt]
    ref_bytes = RG.pack(RG.params_and_codes(w, fmt), fmt)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        qw = lowbit.quantize(w, spec)
        assert torch.equal(qw.codes, ref_bytes), isa
    assert qw.scales.shape == (w.shape[0], 0) and qw.zeros is None
    assert qw.bits_per_weight == RG.bits_per_weight(fmt)
    back = lowbit.dequantize(qw)
    assert RG.same_bits(back, lowbit.fake_quantize(w, spec))
    assert RG.same_bits(back, RG.dequantize(qw.codes, fmt))
    gq = gguf.quants.dequantize(qw.codes.numpy(), gguf.GGMLQuantizationType[fmt.upper()])
    assert RG.same_bits(back, torch.from_numpy(gq.astype(np.float32)))
    for dt in (torch.bfloat16, torch.float16):
        q2 = lowbit.QuantizedWeight(qw.codes, qw.scales, None, spec, qw.shape, dt)
        assert torch.equal(lowbit.dequantize(q2), back.to(dt))
    # the row's fp16 scale offsets are where the blocks hold d (and dmin / m)
    p = RG.params_and_codes(w, fmt)
    blocks = qw.codes.reshape(w.shape[0], -1, f.type_size)
    for off, key in zip(f.half_at, ("d", "dmin" if "dmin" in p else "m")):
        h = blocks[..., off:off + 2].contiguous().view(torch.float16)[..., 0].float()
        assert torch.equal(h, p[key])


@pytest.mark.parametrize("fmt", TYPES)
def test_dequantize_reads_any_blocks(fmt, gen):
    """dequantize of arbitrary block bytes (random codes and scale codes, finite fp16 scales)
    equals gguf-py's dequantize of the same bytes: the reader is ggml's, not only the inverse
    of lowbit's writer."""
    gguf = pytest.importorskip("gguf")
    f = C.FORMATS[fmt]
    spec = lowbit.QuantSpec(fmt)
    N, nb = 5, 3
    raw = torch.randint(0, 256, (N, nb, f.type_size), generator=gen, dtype=torch.uint8)
    for off in f.half_at:  # finite fp16 scales of either sign
        raw[..., off:off + 2] = (torch.randn(N, nb, 1, generator=gen) * 0.01).half() \
            .view(torch.uint8).reshape(N, nb, 2)
    raw = raw.reshape(N, nb * f.type_size)
    qw = lowbit.QuantizedWeight(raw, torch.zeros(N, 0), None, spec, (N, nb * f.block),
                                torch.float32)
    gq = gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[fmt.upper()])
    assert RG.same_bits(lowbit.dequantize(qw), torch.from_numpy(gq.astype(np.float32)))


@pytest.mark.parametrize("fmt", ["q8_0", "q4_1", "q3_k", "q4_k"])
def test_quantized_weight_checks_blocks(fmt, gen):
    """QuantizedWeight of a block type: codes of the wrong byte count, scales other than
    float32 (N, 0), zeros given, or an fp16 scale inside a block that is inf / NaN are
    ValueError / TypeError naming the field."""
    spec = lowbit.QuantSpec(fmt)
    f = C.FORMATS[fmt]
    w = torch.randn(3, 2 * f.block, generator=gen)
    qw = lowbit.quantize(w, spec)
    mk = lowbit.QuantizedWeight
    with pytest.raises(ValueError, match="^codes: expected shape"):
        mk(qw.codes[:, :-1].contiguous(), qw.scales, None, spec, w.shape, w.dtype)
    with pytest.raises(ValueError, match="^scales: expected shape"):
        mk(qw.codes, torch.zeros(3, 2), None, spec, w.shape, w.dtype)
    with pytest.raises(ValueError, match="^zeros: must be None"):
        mk(qw.codes, qw.scales, torch.zeros(3, 2, dtype=torch.uint8), spec, w.shape, w.dtype)
    for off in f.half_at:
        for v in (float("inf"), float("nan")):
            bad = qw.codes.clone().reshape(3, 2, f.type_size)
            bad[1, 1, off:off + 2] = torch.tensor([v]).half().view(torch.uint8)
            with pytest.raises(ValueError, match=f"^codes: block 1 of row 1 .* at byte {off}"):
                mk(bad.reshape(3, -1), qw.scales, None, spec, w.shape, w.dtype)
    mk(qw.codes, qw.scales, None, spec, w.shape, w.dtype)  # the good parts pass


# ---- CUDA (cuda/fake_quant.cu fq_blk_*_kernel: one thread per block, the same LB_HD code) ----
@pytest.mark.cuda
@pytest.mark.parametrize("fmt", TYPES)
def test_cuda_block_types_equal_the_cpu(fmt, gen):
    """On a GPU: fake_quant forward, quantize's block bytes and dequantize equal the CPU's bit
    for bit, for float32 / bfloat16 / float16 inputs; the backward (both STEs) equals the
    CPU's within float32 round-off; NaN blocks give NaN and quantize refuses them."""
    w = _weights(gen)
    spec = lowbit.QuantSpec(fmt)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        wd = (w * (1e-4 if dt == torch.float16 else 1.0)).to(dt)
        assert RG.same_bits(lowbit.fake_quantize(wd.cuda(), spec).cpu().float(),
                            lowbit.fake_quantize(wd, spec).float())
        qc, qh = lowbit.quantize(wd.cuda(), spec), lowbit.quantize(wd, spec)
        assert torch.equal(qc.codes.cpu(), qh.codes)
        assert RG.same_bits(lowbit.dequantize(qc).cpu().float(), lowbit.dequantize(qh).float())
    up = torch.randn(w.shape, generator=gen)
    for ste in ("bitdistiller", "identity"):
        xc, xh = w.cuda().requires_grad_(True), w.clone().requires_grad_(True)
        lowbit.fake_quantize(xc, spec, ste=ste).backward(up.cuda())
        lowbit.fake_quantize(xh, spec, ste=ste).backward(up)
        torch.testing.assert_close(xc.grad.cpu(), xh.grad, rtol=1e-6, atol=1e-7)
    bad = w.clone()
    bad[1, 5] = float("nan")
    assert torch.isnan(lowbit.fake_quantize(bad.cuda(), spec)[1, :spec.group_size]).all()
    with pytest.raises(ValueError, match="^w: contains NaN or Inf"):
        lowbit.quantize(bad.cuda(), spec)


@pytest.mark.cuda
def test_cuda_sanitizer_ggml_fake_quant(gen):
    """Small shapes through every block-type CUDA kernel of the fake_quant family (forward,
    backward, quantize, dequantize; device_check.sh runs this under compute-sanitizer): one
    block per row, an odd row count, 16-bit inputs, a grid of fewer blocks than threads."""
    for fmt, shape, dt in [("q8_0", (3, 32), torch.float32), ("q5_1", (5, 64), torch.bfloat16),
                           ("q3_k", (1, 256), torch.float16), ("q4_k", (3, 512), torch.float32),
                           ("q6_k", (2, 256), torch.bfloat16), ("q2_k", (1, 256), torch.float32)]:
        spec = lowbit.QuantSpec(fmt)
        w = (torch.randn(shape, generator=gen) * 0.05).to(dt)
        up = torch.randn(shape, generator=gen).to(dt)
        xc, xh = w.cuda().requires_grad_(True), w.clone().requires_grad_(True)
        qc, qh = lowbit.fake_quantize(xc, spec), lowbit.fake_quantize(xh, spec)
        qc.backward(up.cuda())
        qh.backward(up)
        assert RG.same_bits(qc.detach().cpu().float(), qh.detach().float()), fmt
        torch.testing.assert_close(xc.grad.cpu().float(), xh.grad.float(), rtol=1e-2, atol=1e-3)
        wc = lowbit.quantize(w.cuda(), spec)
        assert torch.equal(wc.codes.cpu(), lowbit.quantize(w, spec).codes), fmt
        assert RG.same_bits(lowbit.dequantize(wc).cpu().float(), qh.detach().float()), fmt
