"""python/lowbit/fake_quant.py: the public wrappers of the fake_quant op family —
fake_quantize (differentiable, for QAT), quantize -> QuantizedWeight (packed codes + scales),
dequantize — with argument checks that name the bad argument before anything reaches C."""
import torch

from . import _ops
from .spec import QuantSpec, check_spec

STE_CODES = {"bitdistiller": 0, "identity": 1}
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_weight(w, name="w"):
    """A 2-D, non-empty float32/bfloat16/float16 tensor on a device lowbit runs on."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32, bfloat16 or float16, got {w.dtype}")
    if w.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (out_features, in_features) tensor, "
                         f"got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(w.shape)}")
    check_device(w, name)


def check_device(t, name):
    dev = t.device.type
    if dev == "cuda" and not _ops._C.CUDA_BUILT:
        raise ValueError(f"{name}: is on CUDA but this lowbit build has no CUDA kernels "
                         f"(rebuild with LOWBIT_CUDA=1)")
    if dev not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name}: device {t.device} is not supported (cpu or cuda)")


def fake_quantize(w, spec, ste="bitdistiller"):
    """Q(w) of FORMATS.md section 1, differentiable.

    ``ste="bitdistiller"``: the exact autograd of the plain-PyTorch quantizer (scales not
    detached: each group's max/min elements receive the scale gradient); ``ste="identity"``:
    dQ/dw = 1. Returns a tensor of w's shape and dtype.
    """
    check_spec(spec)
    if not isinstance(ste, str) or ste not in STE_CODES:
        raise ValueError(f"ste: must be one of {sorted(STE_CODES)}, got {ste!r}")
    check_weight(w)
    fmt, bits, g, sym = spec.op_args(w.shape[1])
    return torch.ops.lowbit.fake_quant(w.contiguous(), fmt, bits, g, sym, STE_CODES[ste])


class QuantizedWeight:
    """A packed weight: ``codes`` (uint8, per row a little-endian bitstream of ``bits``-bit codes,
    see csrc/formats.h), ``scales`` (float32 (N, G), or (N, G, 2) = [s+, s-] for two-scale
    NF/FP), ``zeros`` (uint8 (N, G) zero points for asymmetric INT, else None), the ``spec``, the
    original ``shape`` (N, K) and ``dtype``. ``packed`` / ``params``: the CPU kernel layout of
    lowbit.quant_linear (csrc/ops/qlinear.h), built from the codes at quantize time (None where
    not built; quant_linear builds it on first use)."""

    def __init__(self, codes, scales, zeros, spec, shape, dtype, packed=None, params=None):
        self.packed = packed
        self.params = params
        self.codes = codes
        self.scales = scales
        self.zeros = zeros
        self.spec = check_spec(spec)
        self.shape = torch.Size(shape)
        self.dtype = dtype

    @property
    def device(self):
        return self.codes.device

    def tensors(self):
        return [t for t in (self.codes, self.scales, self.zeros) if t is not None]

    def to(self, device):
        """A copy of the packed tensors on ``device`` (dtype of the dequantized output kept)."""
        z = None if self.zeros is None else self.zeros.to(device)
        p = None if self.packed is None else self.packed.to(device)
        q = None if self.params is None else self.params.to(device)
        return QuantizedWeight(self.codes.to(device), self.scales.to(device), z, self.spec,
                               self.shape, self.dtype, p, q)

    @property
    def nbytes(self):
        """Bytes of the packed representation: codes + scales + zero points."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def bits_per_weight(self):
        """Storage per original weight, scales and zero points included."""
        return self.nbytes * 8 / (self.shape[0] * self.shape[1])

    def __repr__(self):
        return (f"QuantizedWeight({self.spec.name}, shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={self.device}, {self.bits_per_weight:.3f} bits/weight)")


def quantize(w, spec):
    """Packs ``w`` into a QuantizedWeight such that ``dequantize(quantize(w, spec))`` equals
    ``fake_quantize(w, spec)`` bit for bit. NaN/Inf in w raise ValueError."""
    check_spec(spec)
    check_weight(w)
    fmt, bits, g, sym = spec.op_args(w.shape[1])
    if w.device.type != "meta" and not bool(torch.isfinite(w).all()):
        raise ValueError("w: contains NaN or Inf; cannot quantize")
    with torch.no_grad():
        codes, scales, zeros = torch.ops.lowbit.quantize(w.contiguous(), fmt, bits, g, sym)
    if not (fmt == 0 and not sym):
        zeros = None
    qw = QuantizedWeight(codes, scales, zeros, spec, w.shape, w.dtype)
    if w.device.type == "cpu":  # the CPU kernel layout of quant_linear (see qlinear.py)
        from .qlinear import ensure_kernel_layout
        ensure_kernel_layout(qw)
    return qw


def dequantize(qw):
    """The float tensor (qw.shape, qw.dtype) the packed weight stands for."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw: expected a lowbit.QuantizedWeight, got {type(qw).__name__}")
    n, k = qw.shape
    fmt, bits, g, sym = qw.spec.op_args(k)
    zeros = qw.zeros if qw.zeros is not None else qw.codes.new_empty((n, 0))
    return torch.ops.lowbit.dequantize(qw.codes, qw.scales, zeros, fmt, bits, g, sym, k,
                                       _ops.DTYPE_CODES[qw.dtype])


__all__ = ["QuantSpec", "QuantizedWeight", "fake_quantize", "quantize", "dequantize"]
