"""python/lowbit/qlinear.py: the qlinear op family — packed low-bit inference: ``quant_linear(x,
qw, bias)`` (y = x W^T + bias with W a QuantizedWeight, differentiable with respect to x and
bias, never W), the ``QuantLinear`` module (``lowbit.nn.QuantLinear``), the CPU kernel layout
builder, and the fake kernels and autograd formula of lowbit::qlinear_pack, qlinear_dequant_t
and quant_linear.

Numerics: y equals ``F.linear(x.float(), dequantize(qw).float(), bias.float())`` up to float32
accumulation order; bfloat16/float16 x is converted to float32, accumulated in float32 and the
result rounded once to x's dtype (the CUDA tensor-core path for M > 16 rounds the dequantised
weights to x's 16-bit dtype first, as a 16-bit F.linear does). The CPU kernels read a regrouped
copy of the codes (``QuantizedWeight.packed`` / ``.params``, layout in csrc/ops/qlinear.h),
built on the first eager quant_linear call (QuantLinear builds it when it is made); ``codes``
stays the canonical format.
"""
import torch
from torch import nn

from . import _autograd
from . import _constants as C
from . import _ops  # noqa: F401  (loads the ops registered below)
from ._checks import check_activation, check_bias, check_device
from .fake_quant import quantize
from .qweight import QuantizedWeight, check_qweight
from .spec import QuantSpec, check_spec

GRAD_CHUNK_BYTES = 8 << 20  # W^T chunk of the CPU input-gradient path


def build_kernel_layout(codes, scales, zeros, spec, K):
    """(packed, params) of the CPU kernels for canonical tensors (on any device; returned on the
    same device), or (None, None) where the group size has no fast layout."""
    fmt, bits, g, sym = spec.op_args(K)
    if not C.ql_packable(K, g) or codes.device.type == "meta":
        return None, None
    dev = codes.device
    z = zeros if zeros is not None else codes.new_empty((codes.shape[0], 0))
    with torch.no_grad():
        packed, params = torch.ops.lowbit.qlinear_pack(codes.cpu(), scales.cpu(), z.cpu(), fmt,
                                                       bits, g, sym, K)
    return packed.to(dev), params.to(dev)


def ensure_kernel_layout(qw):
    """Builds qw.packed / qw.params if missing (CPU weights only); returns qw."""
    if getattr(qw, "packed", None) is None and qw.device.type == "cpu":
        qw.packed, qw.params = build_kernel_layout(qw.codes, qw.scales, qw.zeros, qw.spec,
                                                   qw.shape[1])
    return qw


def _check_args(x, qw, bias):
    check_qweight(qw)
    n, k = qw.shape
    check_activation(x, k)
    check_device(x, "x")
    if x.device != qw.device:
        raise ValueError(f"x: is on {x.device} but qw is on {qw.device}")
    check_bias(bias, x, n)


def _run(x, codes, scales, zeros, packed, params, bias, spec, K):
    fmt, bits, g, sym = spec.op_args(K)
    empty_u8 = codes.new_empty((codes.shape[0], 0))
    if x.device.type != "cpu" or packed is None:
        packed = codes.new_empty((0,), dtype=torch.int32)
        params = codes.new_empty((0,), dtype=torch.float32)
    b = bias if bias is not None else x.new_empty((0,))
    return torch.ops.lowbit.quant_linear(x.contiguous(), codes, scales,
                                         zeros if zeros is not None else empty_u8, packed, params,
                                         b.contiguous(), fmt, bits, g, sym)


def quant_linear(x, qw, bias=None):
    """y = x @ dequantize(qw).T + bias for x (..., K) float32/bfloat16/float16 -> (..., N) of
    x's dtype. Gradients flow to x and bias, never to the packed weight. The first eager call
    on a CPU weight builds its kernel layout (under torch.compile a weight without one runs on
    the canonical codes: same result, slower)."""
    _check_args(x, qw, bias)
    if not torch.compiler.is_compiling():
        ensure_kernel_layout(qw)
    return _run(x, qw.codes, qw.scales, qw.zeros, getattr(qw, "packed", None),
                getattr(qw, "params", None), bias, qw.spec, qw.shape[1])


class QuantLinear(nn.Module):
    """A frozen linear layer stored packed (``lowbit.nn.QuantLinear``).

    Buffers (so ``.to(device)`` and ``state_dict`` carry them): ``codes``, ``scales``, ``zeros``
    (None unless INT asymmetric) and the CPU kernel layout ``packed`` / ``params`` (None for
    group sizes without one). ``bias`` is a Parameter (or None). ``QuantLinear(in, out, spec)``
    builds a zero skeleton of the right shapes for ``load_state_dict``; ``from_linear`` /
    ``from_qat`` quantize a trained layer.
    """

    _made_by = "convert_"  # the model verb that makes these layers (lowbit._walk)

    def __init__(self, in_features, out_features, spec, bias=True, dtype=torch.float32,
                 device=None):
        super().__init__()
        check_spec(spec)
        K, N = int(in_features), int(out_features)
        fmt, bits, g, sym = spec.op_args(K)
        self.in_features, self.out_features, self.spec, self.weight_dtype = K, N, spec, dtype
        G = K // g

        def zeros(shape, dtype):
            return torch.zeros(shape, dtype=dtype, device=device)

        self.register_buffer("codes", zeros((N, C.codes_bytes(K, bits)), torch.uint8))
        self.register_buffer("scales", zeros(C.scales_shape(N, G, fmt, sym), torch.float32))
        self.register_buffer("zeros", zeros((N, G), torch.uint8) if C.has_zeros(fmt, sym)
                             else None)
        packable = C.ql_packable(K, g)
        self.register_buffer("packed", zeros(C.ql_packed_shape(N, K, bits), torch.int32)
                             if packable else None)
        self.register_buffer("params", zeros(C.ql_params_shape(N, G), torch.float32)
                             if packable else None)
        self.bias = nn.Parameter(torch.zeros(N, dtype=dtype, device=device)) if bias else None

    def _load_qw(self, qw):
        self.codes, self.scales, self.zeros = qw.codes, qw.scales, qw.zeros
        self.packed, self.params = build_kernel_layout(qw.codes, qw.scales, qw.zeros, qw.spec,
                                                       qw.shape[1])

    @classmethod
    def from_weight(cls, weight, spec, bias=None):
        """From a float (out_features, in_features) weight and an optional bias."""
        N, K = weight.shape
        m = cls(K, N, spec, bias=bias is not None, dtype=weight.dtype, device="meta")
        m._load_qw(quantize(weight.detach(), spec))
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        return m

    @classmethod
    def from_linear(cls, linear, spec):
        """Quantizes an nn.Linear (its bias kept as is)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        return cls.from_weight(linear.weight, spec, linear.bias)

    @classmethod
    def from_qat(cls, qat_linear):
        """Packs a trained QAT layer: any module with ``.weight`` (full precision), ``.spec``
        (QuantSpec) and ``.bias`` (Tensor or None), e.g. lowbit.nn.QATLinear. The packed weight
        dequantizes to exactly the fake-quantized weight the QAT layer used."""
        for attr in ("weight", "spec"):
            if not hasattr(qat_linear, attr):
                raise TypeError(f"qat_linear: expected a QAT layer with .weight and .spec, "
                                f"{type(qat_linear).__name__} has no .{attr}")
        return cls.from_weight(qat_linear.weight, check_spec(qat_linear.spec, "qat_linear.spec"),
                               getattr(qat_linear, "bias", None))

    @property
    def qweight(self):
        """The packed weight as a QuantizedWeight (sharing this module's buffers)."""
        return QuantizedWeight(self.codes, self.scales, self.zeros, self.spec,
                               (self.out_features, self.in_features), self.weight_dtype,
                               self.packed, self.params)

    def forward(self, x):
        check_activation(x, self.in_features, k_label="in_features")
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return _run(x, self.codes, self.scales, self.zeros, self.packed, self.params, bias,
                    self.spec, self.in_features)

    @property
    def nbytes(self):
        """Bytes of the packed weight (codes + scales + zero points; bias not included)."""
        return self.qweight.nbytes

    def extra_repr(self):
        s = self.spec
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={s.format}, bits={s.bits}, "
                f"group_size={s.group_size}, symmetric={s.symmetric}, bytes={self.nbytes}, "
                f"bits_per_weight={self.nbytes * 8 / (self.in_features * self.out_features):.3f}")


# ---- fake kernels and autograd of the ops ----
@torch.library.register_fake("lowbit::qlinear_pack")
def _qlinear_pack_fake(codes, scales, zeros, fmt, bits, group_size, symmetric, K):
    n = codes.shape[0]
    return (codes.new_empty(C.ql_packed_shape(n, K, bits), dtype=torch.int32),
            codes.new_empty(C.ql_params_shape(n, K // group_size), dtype=torch.float32))


@torch.library.register_fake("lowbit::qlinear_dequant_t")
def _qlinear_dequant_t_fake(packed, params, fmt, bits, group_size, symmetric, N, K, kb0, kb1):
    return packed.new_empty(((kb1 - kb0) * C.QL_KBLK, C.ql_tiles(N) * C.QL_TILE),
                            dtype=torch.float32)


@torch.library.register_fake("lowbit::quant_linear")
def _quant_linear_fake(x, codes, scales, zeros, packed, params, bias, fmt, bits, group_size,
                       symmetric):
    return x.new_empty((*x.shape[:-1], codes.shape[0]))


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
            nb, kblk = C.ql_kblocks(k), C.QL_KBLK
            step = max(1, GRAD_CHUNK_BYTES // (kblk * 4 * C.ql_tiles(n) * C.QL_TILE))
            parts = []
            for kb0 in range(0, nb, step):
                kb1 = min(nb, kb0 + step)
                wt = torch.ops.lowbit.qlinear_dequant_t(packed, params, fmt, bits, g, sym, n, k,
                                                        kb0, kb1)
                parts.append(gf @ wt[:min(k, kb1 * kblk) - kb0 * kblk, :n].t())
            gx = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        else:
            w = torch.ops.lowbit.dequantize(codes, scales, zeros, fmt, bits, g, sym, k,
                                            C.DTYPE_CODES[torch.float32])
            gx = gf @ w
        gx = gx.to(ctx.x_dtype).reshape(*grad.shape[:-1], k)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        gb = g2.float().sum(0).to(ctx.x_dtype)
    return gx, None, None, None, None, None, gb, None, None, None, None


_autograd.register("quant_linear", "lowbit.quant_linear", _quant_linear_backward,
                   _quant_linear_setup, double_backward=True,
                   jvp=_autograd.linear_jvp("quant_linear", (0, 6), "lowbit.quant_linear"))

__all__ = ["quant_linear", "QuantLinear", "QuantSpec", "build_kernel_layout"]
