"""python/lowbit/qweight.py: QuantizedWeight, the packed low-bit weight (canonical codes + scales
+ zero points, and a slot for the CPU kernel layout that lowbit.qlinear builds on first use),
and PackedWeight, the storage accounting it shares with the 2:4 Sparse24Weight."""
import torch

from .spec import check_spec


class PackedWeight:
    """What every compressed weight of lowbit reports: ``shape`` (of the dense weight it stands
    for), ``device``, ``tensors()`` (the stored tensors), ``nbytes`` and ``bits_per_weight``."""

    def tensors(self):
        raise NotImplementedError

    @property
    def device(self):
        return self.tensors()[0].device

    @property
    def nbytes(self):
        """Bytes of the stored tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def bits_per_weight(self):
        """Storage per original weight, scales, zero points and indices included."""
        return self.nbytes * 8 / (self.shape[0] * self.shape[1])


class QuantizedWeight(PackedWeight):
    """A packed weight: ``codes`` (uint8, per row a little-endian bitstream of ``bits``-bit codes,
    see csrc/formats.h), ``scales`` (float32 (N, G), or (N, G, 2) = [s+, s-] for two-scale
    NF/FP), ``zeros`` (uint8 (N, G) zero points for asymmetric INT, else None), the ``spec``, the
    original ``shape`` (N, K) and ``dtype``. ``packed``: the CPU kernel layout of the codes for
    lowbit.quant_linear (csrc/layouts.h), derived: None until quant_linear first runs on the
    weight, rebuilt there whenever ``codes`` was replaced or edited in place (an edit through
    ``codes.data`` bypasses torch's version counter and is not seen: edit ``codes`` itself), and
    never part of ``nbytes``."""

    def __init__(self, codes, scales, zeros, spec, shape, dtype):
        self.packed = None
        self._packed_key = None
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
        def move(t):
            return None if t is None else t.to(device)

        return QuantizedWeight(self.codes.to(device), self.scales.to(device), move(self.zeros),
                               self.spec, self.shape, self.dtype)

    def __repr__(self):
        return (f"QuantizedWeight({self.spec.name}, shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={self.device}, {self.bits_per_weight:.3f} bits/weight)")


def check_qweight(qw, name="qw"):
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"{name}: expected a lowbit.QuantizedWeight, got {type(qw).__name__}")
    return qw


__all__ = ["QuantizedWeight", "PackedWeight", "check_qweight"]
