"""python/lowbit/qlinear.py: packed low-bit inference — ``quant_linear(x, qw, bias)`` (y = x W^T +
bias with W a QuantizedWeight, differentiable with respect to x and bias, never W) and the
``QuantLinear`` module (``lowbit.nn.QuantLinear``).

Numerics: y equals ``F.linear(x.float(), dequantize(qw).float(), bias.float())`` up to float32
accumulation order; bfloat16/float16 x is converted to float32, accumulated in float32 and the
result rounded once to x's dtype (the CUDA tensor-core path for M > 16 rounds the dequantised
weights to x's 16-bit dtype first, as a 16-bit F.linear does). The CPU kernels read a regrouped
copy of the codes (``QuantizedWeight.packed`` / ``.params``, layout in csrc/ops/qlinear.h)
built at quantize time; ``codes`` stays the canonical format.
"""
import torch
from torch import nn

from . import _ops
from .fake_quant import _FLOAT_DTYPES, QuantizedWeight, check_device, quantize
from .spec import QuantSpec, check_spec


def _packable(K, g):
    return g % 32 == 0 or g == K


def build_kernel_layout(codes, scales, zeros, spec, K):
    """(packed, params) of the CPU kernels for canonical tensors (on any device; returned on the
    same device), or (None, None) where the group size has no fast layout."""
    fmt, bits, g, sym = spec.op_args(K)
    if not _packable(K, g) or codes.device.type == "meta":
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
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw: expected a lowbit.QuantizedWeight, got {type(qw).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x: dtype must be float32, bfloat16 or float16, got {x.dtype}")
    n, k = qw.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x: last dimension must equal in_features K = {k}, "
                         f"got shape {tuple(x.shape)}")
    check_device(x, "x")
    if x.device != qw.device:
        raise ValueError(f"x: is on {x.device} but qw is on {qw.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias: dtype {bias.dtype} must match x's dtype {x.dtype}")
        if bias.shape != (n,):
            raise ValueError(f"bias: expected shape ({n},), got {tuple(bias.shape)}")
        if bias.device != x.device:
            raise ValueError(f"bias: is on {bias.device} but x is on {x.device}")


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
    x's dtype. Gradients flow to x and bias, never to the packed weight."""
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

    def __init__(self, in_features, out_features, spec, bias=True, dtype=torch.float32,
                 device=None):
        super().__init__()
        check_spec(spec)
        K, N = int(in_features), int(out_features)
        fmt, bits, g, sym = spec.op_args(K)
        self.in_features, self.out_features, self.spec, self.weight_dtype = K, N, spec, dtype
        G = K // g
        self.register_buffer("codes", torch.zeros(N, (K * bits + 7) // 8, dtype=torch.uint8,
                                                  device=device))
        two = spec.format != "int" and not spec.symmetric
        self.register_buffer("scales", torch.zeros((N, G, 2) if two else (N, G),
                                                   dtype=torch.float32, device=device))
        self.register_buffer("zeros", torch.zeros(N, G, dtype=torch.uint8, device=device)
                             if spec.format == "int" and not spec.symmetric else None)
        if _packable(K, g):
            nt, kb = (N + 15) // 16, (K + 31) // 32
            self.register_buffer("packed", torch.zeros(nt, kb * bits * 16, dtype=torch.int32,
                                                       device=device))
            self.register_buffer("params", torch.zeros(nt, G * 32, dtype=torch.float32,
                                                       device=device))
        else:
            self.register_buffer("packed", None)
            self.register_buffer("params", None)
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
        qw = QuantizedWeight(self.codes, self.scales, self.zeros, self.spec,
                             (self.out_features, self.in_features), self.weight_dtype)
        qw.packed, qw.params = self.packed, self.params
        return qw

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"x: dtype must be float32, bfloat16 or float16, got {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: last dimension must equal in_features = {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return _run(x, self.codes, self.scales, self.zeros, self.packed, self.params, bias,
                    self.spec, self.in_features)

    @property
    def nbytes(self):
        """Bytes of the packed weight (codes + scales + zero points; bias not included)."""
        return sum(t.numel() * t.element_size()
                   for t in (self.codes, self.scales, self.zeros) if t is not None)

    def extra_repr(self):
        s = self.spec
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={s.format}, bits={s.bits}, "
                f"group_size={s.group_size}, symmetric={s.symmetric}, bytes={self.nbytes}, "
                f"bits_per_weight={self.nbytes * 8 / (self.in_features * self.out_features):.3f}")


__all__ = ["quant_linear", "QuantLinear", "QuantSpec", "build_kernel_layout"]
