"""python/lowbit/_ops.py: loads lowbit._C into PyTorch's dispatcher (torch first, then the
extension) and registers, for every op, its fake (meta) kernel and, where differentiable, its
autograd formula. Importing this module is what makes ``torch.ops.lowbit.*`` exist."""
import os
import re

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("lowbit needs PyTorch >= 2.11, and torch is not installed "
                      "(pip install torch)") from exc

MIN_TORCH = (2, 11)


def _version_tuple(v):
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


if _version_tuple(torch.__version__) < MIN_TORCH:
    raise ImportError(f"lowbit needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (its stable C ABI); "
                      f"found torch {torch.__version__}")

from . import _C  # noqa: E402  (after torch: the extension resolves symbols from libtorch)

_libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
_cuda_lib = os.path.join(_libdir, "libtorch_cuda.so")
_C.load(os.path.join(_libdir, "libtorch_cpu.so"),
        _cuda_lib if os.path.exists(_cuda_lib) else None, torch.__version__)

# ---- fake_quant family ----


@torch.library.register_fake("lowbit::fake_quant")
def _fake_quant_fake(w, fmt, bits, group_size, symmetric, ste):
    return torch.empty_like(w, memory_format=torch.contiguous_format)


@torch.library.register_fake("lowbit::fake_quant_backward")
def _fake_quant_backward_fake(grad, w, fmt, bits, group_size, symmetric):
    return torch.empty_like(w, memory_format=torch.contiguous_format)


@torch.library.register_fake("lowbit::quantize")
def _quantize_fake(w, fmt, bits, group_size, symmetric):
    n, k = w.shape
    g = k // group_size
    codes = w.new_empty((n, (k * bits + 7) // 8), dtype=torch.uint8)
    two_scale = fmt != 0 and not symmetric
    scales = w.new_empty((n, g, 2) if two_scale else (n, g), dtype=torch.float32)
    zeros = w.new_empty((n, g if (fmt == 0 and not symmetric) else 0), dtype=torch.uint8)
    return codes, scales, zeros


DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


@torch.library.register_fake("lowbit::dequantize")
def _dequantize_fake(codes, scales, zeros, fmt, bits, group_size, symmetric, K, dtype):
    return codes.new_empty((codes.shape[0], K), dtype=CODE_DTYPES[dtype])


def _fake_quant_setup(ctx, inputs, output):
    w, fmt, bits, group_size, symmetric, ste = inputs
    ctx.args = (fmt, bits, group_size, symmetric)
    ctx.ste = ste
    if ste == 0:
        ctx.save_for_backward(w)


def _fake_quant_backward(ctx, grad):
    if ctx.ste == 1:  # identity STE: dQ/dw = 1
        gw = grad
    else:
        (w,) = ctx.saved_tensors
        gw = torch.ops.lowbit.fake_quant_backward(grad.to(w.dtype).contiguous(), w, *ctx.args)
    return gw, None, None, None, None, None


torch.library.register_autograd("lowbit::fake_quant", _fake_quant_backward,
                                setup_context=_fake_quant_setup)

# ---- kl_loss family ----


@torch.library.register_fake("lowbit::kl_loss")
def _kl_loss_fake(student, teacher, labels, kind, gamma, beta, temperature, ignore_index,
                  has_labels, with_grad, grad_scale):
    loss = student.new_empty((student.shape[0],), dtype=torch.float32)
    grad = student.new_empty(tuple(student.shape) if with_grad else (0,))
    return loss, grad


@torch.library.register_fake("lowbit::kl_loss_backward")
def _kl_loss_backward_fake(grad_loss, student, teacher, labels, kind, gamma, beta, temperature,
                           ignore_index, has_labels):
    return student.new_empty(tuple(student.shape))


def _kl_loss_setup(ctx, inputs, output):
    (student, teacher, labels, kind, gamma, beta, temperature, ignore_index, has_labels,
     with_grad, grad_scale) = inputs
    ctx.args = (kind, gamma, beta, temperature, ignore_index, has_labels)
    ctx.with_grad = with_grad
    ctx.grad_scale = grad_scale
    if with_grad:  # gradient stored by the forward (grad_scale * d loss_row / d student)
        ctx.save_for_backward(output[1])
    else:          # recomputed by kl_loss_backward, with the per-row scale folded in
        ctx.save_for_backward(student, teacher, labels)


def _kl_loss_backward(ctx, grad_loss, grad_grad):
    g = grad_loss.to(torch.float32).contiguous()
    if ctx.with_grad:
        (stored,) = ctx.saved_tensors
        gs = (stored.float() * (g / ctx.grad_scale).unsqueeze(1)).to(stored.dtype)
    else:
        student, teacher, labels = ctx.saved_tensors
        gs = torch.ops.lowbit.kl_loss_backward(g, student, teacher, labels, *ctx.args)
    return gs, None, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("lowbit::kl_loss", _kl_loss_backward,
                                setup_context=_kl_loss_setup)

# ---- qat family ----


@torch.library.register_fake("lowbit::clip_search")
def _clip_search_fake(w, gram, fmt, bits, group_size, symmetric, n_grid, shrink):
    shape = (w.shape[0], w.shape[1] // group_size)
    return w.new_empty(shape, dtype=torch.float32), w.new_empty(shape, dtype=torch.float32)

# ---- qlinear family ----


@torch.library.register_fake("lowbit::qlinear_pack")
def _qlinear_pack_fake(codes, scales, zeros, fmt, bits, group_size, symmetric, K):
    n = codes.shape[0]
    nt, kb, g = (n + 15) // 16, (K + 31) // 32, K // group_size
    return (codes.new_empty((nt, kb * bits * 16), dtype=torch.int32),
            codes.new_empty((nt, g * 32), dtype=torch.float32))


@torch.library.register_fake("lowbit::qlinear_dequant_t")
def _qlinear_dequant_t_fake(packed, params, fmt, bits, group_size, symmetric, N, K, kb0, kb1):
    return packed.new_empty(((kb1 - kb0) * 32, (N + 15) // 16 * 16), dtype=torch.float32)


@torch.library.register_fake("lowbit::quant_linear")
def _quant_linear_fake(x, codes, scales, zeros, packed, params, bias, fmt, bits, group_size,
                       symmetric):
    return x.new_empty((*x.shape[:-1], codes.shape[0]))


GRAD_CHUNK_BYTES = 8 << 20  # W^T chunk of the CPU input-gradient path


def _quant_linear_setup(ctx, inputs, output):
    x, codes, scales, zeros, packed, params, bias, fmt, bits, group_size, symmetric = inputs
    ctx.args = (fmt, bits, group_size, symmetric, x.shape[-1])
    ctx.x_dtype = x.dtype
    ctx.has_bias = bias.numel() > 0
    ctx.save_for_backward(codes, scales, zeros, packed, params)


def _quant_linear_backward(ctx, grad):
    """grad_x = grad_y @ W in float32 (the frozen weight gets no gradient), W from the packed CPU
    layout (SIMD dequantisation of W^T) when there is one, else from dequantize;
    grad_bias = grad_y summed over the leading dimensions."""
    codes, scales, zeros, packed, params = ctx.saved_tensors
    fmt, bits, g, sym, k = ctx.args
    gx = gb = None
    n = codes.shape[0]
    g2 = grad.reshape(-1, n)
    if ctx.needs_input_grad[0]:
        gf = g2.float()
        if packed.numel() > 0 and packed.device.type == "cpu":
            # K-chunks of about 8 MB of W^T: never a full float copy of W (a fresh 64 MB buffer
            # costs more in page faults than the whole product), chunks reused by the allocator
            nb = (k + 31) // 32
            step = max(1, GRAD_CHUNK_BYTES // (32 * 4 * ((n + 15) // 16 * 16)))
            parts = []
            for kb0 in range(0, nb, step):
                kb1 = min(nb, kb0 + step)
                wt = torch.ops.lowbit.qlinear_dequant_t(packed, params, fmt, bits, g, sym, n, k,
                                                        kb0, kb1)
                parts.append(gf @ wt[:min(k, kb1 * 32) - kb0 * 32, :n].t())
            gx = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        else:
            w = torch.ops.lowbit.dequantize(codes, scales, zeros, fmt, bits, g, sym, k, 0)
            gx = gf @ w
        gx = gx.to(ctx.x_dtype).reshape(*grad.shape[:-1], k)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        gb = g2.float().sum(0).to(ctx.x_dtype)
    return gx, None, None, None, None, None, gb, None, None, None, None


torch.library.register_autograd("lowbit::quant_linear", _quant_linear_backward,
                                setup_context=_quant_linear_setup)
