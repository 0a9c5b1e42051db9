"""tests/test_qlinear_ggml_cuda.py: the CUDA linear kernels of llama.cpp's block types
(cuda/qlinear.cu qlc_*<QlcBlocks>, qlc_blk_int8_kernel; launcher lb_ql_forward_blk_cuda): the
block code they run (formats_ggml.h lb_blk_value_at and the int8 mode's lb_blk_codes32 /
lb_blk_dot32, compiled here in plain C and checked against gguf-py on random block bytes), and, on a GPU, quant_linear on CUDA against float64 F.linear of the
dequantized weight (FORMATS.md 4's error bounds)."""
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

import reference_ggml as RG

lowbit = pytest.importorskip("lowbit")
from lowbit import _constants as C  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
TYPES = list(RG.TYPES)


def _random_blocks(fmt, n, gen):
    """n random blocks of fmt (every code and scale-code byte random) with finite fp16 scales
    of either sign, as uint8 (n, type_size)."""
    f = C.FORMATS[fmt]
    raw = torch.randint(0, 256, (n, f.type_size), generator=gen, dtype=torch.uint8)
    for off in f.half_at:
        raw[:, off:off + 2] = (torch.randn(n, 1, generator=gen) * 0.01).half() \
            .view(torch.uint8).reshape(n, 2)
    return raw


@pytest.fixture(scope="module")
def blocks_at(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler")
    exe = str(tmp_path_factory.mktemp("blocks_at") / "blocks_at")
    cmd = [CC, "-std=c11", "-O1", "-ffp-contract=off", "-fno-math-errno", "-Wall",
           "-Wno-unused-function", "-I", os.path.join(ROOT, "csrc"),
           os.path.join(ROOT, "tests", "c", "blocks_at.c"), os.path.join(ROOT, "csrc", "formats.c"),
           "-lm", "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


@pytest.mark.parametrize("fmt", TYPES)
def test_element_decoder_equals_gguf(fmt, gen, tmp_path, blocks_at):
    """On random blocks: lb_blk_value_at(block, i) for every element is bit for bit gguf-py's
    gguf.quants.dequantize of the same bytes, and lb_blk_dequantize's (the reader the CPU and
    the CUDA dequantize use); the int8 mode's per-32-block sum (lb_blk_codes32 + lb_blk_dot32:
    integer sums per sub-block, float epilogue) equals sum_i W_i * x8_i in float64 of those
    values within float32 rounding."""
    gguf = pytest.importorskip("gguf")
    f = C.FORMATS[fmt]
    nb = 64
    raw = _random_blocks(fmt, nb, gen)
    x8 = torch.randint(-127, 128, (nb * f.block,), generator=gen, dtype=torch.int8)
    x8[:64] = 127  # one sign throughout: the sums of x8 the mins multiply are largest
    fcode, bits, _, sym = lowbit.QuantSpec(fmt).op_args(f.block)
    src, xs, dst = tmp_path / "in.bin", tmp_path / "x8.bin", tmp_path / "out.bin"
    src.write_bytes(raw.numpy().tobytes())
    xs.write_bytes(x8.numpy().tobytes())
    r = subprocess.run([blocks_at, str(fcode), str(bits), str(int(sym)), str(nb), str(src),
                        str(xs), str(dst)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = torch.from_numpy(np.fromfile(dst, dtype=np.float32).copy())
    ne = nb * f.block
    ref = torch.from_numpy(gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[
        fmt.upper()]).astype(np.float32)).reshape(-1)
    assert RG.same_bits(out[:ne], ref)
    assert RG.same_bits(out[ne:2 * ne], ref)
    prod = ref.double() * x8.double()
    want = prod.reshape(-1, 32).sum(1)
    scale = prod.abs().reshape(-1, 32).sum(1)
    err = (out[2 * ne:].double() - want).abs()
    assert (err <= 1e-6 * scale + 1e-30).all(), float((err / scale.clamp_min(1e-30)).max())


def _acts(kind, M, K, gen):
    """Gaussian or heavy-tailed (Student-t, 3 dof, a few channels x30) activations, FORMATS 4."""
    if kind == "gauss":
        return torch.randn(M, K, generator=gen)
    t = torch.distributions.StudentT(3.0)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    x = t.sample((M, K))
    x[:, torch.randperm(K, generator=gen)[:4]] *= 30
    return x


def _rel(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


@pytest.mark.cuda
@pytest.mark.parametrize("fmt", TYPES)
def test_cuda_quant_linear_block_types(fmt, gen):
    """quant_linear on CUDA of a block type: act="float" within 1e-5 of float64 F.linear of the
    dequantized weight (+ bias) for float32 x at M = 1, 5, 40 and for bf16 / f16 x (tensor-core
    path at M > 16, against the 16-bit-rounded weight's float64 product at the 16-bit output
    rounding); act="int8" within 2e-2 on Gaussian and heavy-tailed x; a non-finite x row gives
    non-finite outputs in that row only. Needs the glue to call lb_ql_forward_blk_cuda
    (MILESTONES.txt): before that the op refuses block types by name and this test fails."""
    spec = lowbit.QuantSpec(fmt)
    K, N = 2 * max(spec.group_size, 256), 72
    w = torch.randn(N, K, generator=gen) * 0.05
    b = torch.randn(N, generator=gen) * 0.1
    qw = lowbit.quantize(w, spec)
    W = lowbit.dequantize(qw).double()
    qc = qw.to("cuda")
    for kind in ("gauss", "heavy"):
        for M in (1, 5, 40):
            x = _acts(kind, M, K, gen)
            ref = torch.nn.functional.linear(x.double(), W, b.double())
            y = lowbit.quant_linear(x.cuda(), qc, b.cuda(), act="float").cpu()
            assert y.dtype == torch.float32 and _rel(y, ref) <= 1e-5, (kind, M)
            y8 = lowbit.quant_linear(x.cuda(), qc, b.cuda(), act="int8").cpu()
            assert _rel(y8, ref) <= 2e-2, (kind, M)
            for dt in (torch.bfloat16, torch.float16):
                xd = x.to(dt)
                ref16 = torch.nn.functional.linear(xd.double(), W.to(dt).double() if M > 16 else W,
                                                   b.to(dt).double())
                yd = lowbit.quant_linear(xd.cuda(), qc, b.to(dt).cuda(), act="float").cpu()
                tol = 8e-3 if dt == torch.bfloat16 else 1e-3  # the 16-bit output rounding
                assert yd.dtype == dt and _rel(yd, ref16) <= tol, (kind, M, dt)
    x = torch.randn(3, K, generator=gen)
    x[1, 7] = float("inf")
    for act in ("float", "int8"):
        y = lowbit.quant_linear(x.cuda(), qc, act=act).cpu()
        assert torch.isfinite(y[[0, 2]]).all() and not torch.isfinite(y[1]).any(), act


@pytest.mark.cuda
def test_cuda_sanitizer_ggml_qlinear(gen):
    """Small shapes through the block-type linear kernels (device_check.sh runs this under
    compute-sanitizer): the GEMV (M = 1, 3: a partial warp group of outputs, N = 5), the int8
    kernel (K = one 32-block: lanes without a block), and the WMMA kernel (16-bit x, M = 17,
    partial 64 x 64 tiles), each against float64 F.linear of the dequantized weight."""
    for fmt, K in [("q4_0", 32), ("q5_1", 96), ("q4_k", 256), ("q6_k", 512)]:
        spec = lowbit.QuantSpec(fmt)
        qw = lowbit.quantize(torch.randn(5, K, generator=gen) * 0.05, spec)
        W = lowbit.dequantize(qw).double()
        qc = qw.to("cuda")
        for M, dt, act, tol in [(1, torch.float32, "float", 1e-5), (3, torch.float32, "int8", 2e-2),
                                (17, torch.float16, "float", 1e-3),
                                (3, torch.bfloat16, "int8", 2e-2)]:
            x = torch.randn(M, K, generator=gen).to(dt)
            ref = torch.nn.functional.linear(x.double(), W.to(dt).double() if M > 16 else W)
            y = lowbit.quant_linear(x.cuda(), qc, act=act).cpu()
            assert y.dtype == dt and _rel(y, ref) <= tol + (8e-3 if dt == torch.bfloat16 else 0), \
                (fmt, M, dt, act)
