"""python/lowbit/qweight.py: QuantizedWeight, the packed low-bit weight (canonical codes + scales
+ zero points, and a slot for the CPU kernel layout that lowbit.qlinear builds on first use),
and PackedWeight, the storage accounting it shares with the 2:4 Sparse24Weight."""
import numbers

import torch

from . import _constants as C
from ._checks import FLOAT_DTYPES
from .spec import check_spec

FIELDS = ("codes", "scales", "zeros")


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
    never part of ``nbytes``.

    The parts are checked against each other on construction (check_packed: shapes, dtypes and
    device of codes / scales / zeros against ``spec`` and ``shape``, zero points <= qmax, scales
    finite, positive and exact in spec.scale_dtype), ValueError/TypeError naming the field;
    ``check=False`` is for parts lowbit made itself (quantize, .to)."""

    def __init__(self, codes, scales, zeros, spec, shape, dtype, check=True):
        check_spec(spec)
        if check:
            check_packed(codes, scales, zeros, spec, shape, dtype)
        self.packed = None
        self._packed_key = None
        self.codes = codes
        self.scales = scales
        self.zeros = zeros
        self.spec = spec
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
                               self.spec, self.shape, self.dtype, check=False)

    def __repr__(self):
        return (f"QuantizedWeight({self.spec.name}, shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={self.device}, {self.bits_per_weight:.3f} bits/weight)")


def _parts_layout(spec, shape):
    """(N, K, G) of a packed (N, K) weight, ValueError naming shape where spec cannot hold it."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape: expected (out_features, in_features), got "
                        f"{type(shape).__name__}") from None
    if len(dims) != 2 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral)
                             for d in dims):
        raise ValueError(f"shape: expected two ints (out_features, in_features), got {shape!r}")
    n, k = (int(d) for d in dims)
    if n <= 0 or k <= 0:
        raise ValueError(f"shape: both sizes must be positive, got {(n, k)}")
    g = k if spec.group_size == -1 else spec.group_size
    if k % g:
        raise ValueError(f"shape: in_features {k} is not a multiple of the spec's group_size "
                         f"{spec.group_size}")
    return n, k, k // g


def check_packed(codes, scales, zeros, spec, shape, dtype, names=None):
    """The parts of a packed (N, K) = ``shape`` weight of ``spec`` (FORMATS.md 1.7; the layout
    lowbit.quantize writes): codes uint8 (N, ceil(K * bits / 8)), for a llama.cpp block type
    (FORMATS.md 1.8) the GGUF blocks (N, K / block * type_size) whose fp16 scales are finite, with
    scales float32 (N, 0) and zeros None; scales float32 (N, G), or
    (N, G, 2) = [s+, s-] for two-scale NF/FP, every one finite, > 0 (each scale of FORMATS.md
    1.1-1.4 is floored above 0) and exact in spec.scale_dtype (1.6); zeros uint8 (N, G) with
    values <= qmax = 2^bits - 1 for asymmetric INT, else None; all contiguous, on one device;
    dtype a float dtype. ``names``: how the errors call codes / scales / zeros (state-dict keys).
    Values are not read on the meta device, in FakeTensors or under torch.compile."""
    names = dict(zip(FIELDS, FIELDS), **(names or {}))
    check_spec(spec)
    n, k, groups = _parts_layout(spec, shape)
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype: must be float32, bfloat16 or float16, got {dtype}")
    fmt, bits, _, sym = spec.op_args(k)
    want = {"codes": (torch.uint8, (n, C.format_of(fmt).row_bytes(k, bits))),
            "scales": (torch.float32, C.scales_shape(n, groups, fmt, sym)),
            "zeros": (torch.uint8, (n, groups)) if C.has_zeros(fmt, sym) else None}
    parts = {"codes": codes, "scales": scales, "zeros": zeros}
    for f in FIELDS:
        t, w, name = parts[f], want[f], names[f]
        if w is None:
            if t is not None:
                raise ValueError(f"{name}: must be None for {spec.name} (only asymmetric INT "
                                 f"stores zero points)")
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a {w[0]} {w[1]} tensor for {spec.name}, got "
                            f"{type(t).__name__}")
        if t.dtype != w[0]:
            raise TypeError(f"{name}: dtype must be {w[0]}, got {t.dtype}")
        if tuple(t.shape) != w[1]:
            raise ValueError(f"{name}: expected shape {w[1]} for {spec.name} and shape "
                             f"{(n, k)}, got {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: must be contiguous (call .contiguous())")
        if t.device != codes.device:
            raise ValueError(f"{name}: is on {t.device} but {names['codes']} is on "
                             f"{codes.device}")
    if spec.is_block_type:
        check_block_scales(codes, spec, names["codes"])
    else:
        check_packed_values(scales, zeros, spec, names)


def check_block_scales(codes, spec, name="codes"):
    """The fp16 scales inside the GGUF blocks of a block type (FORMATS.md 1.8: d, and dmin or
    m) are finite (fp16() clamps every scale lowbit computes to +-65504): ValueError naming the
    block otherwise. The block bytes come from the format's row (lowbit._C)."""
    row = C.FORMATS[spec.format]
    if torch.compiler.is_compiling() or not _has_values(codes):
        return
    blocks = codes.reshape(codes.shape[0], -1, row.type_size)
    for off in row.half_at:
        h = blocks[..., off:off + 2].contiguous().view(torch.float16)[..., 0]
        bad = ~torch.isfinite(h)
        if bool(bad.any()):
            r, b = bad.nonzero()[0].tolist()
            raise ValueError(f"{name}: block {b} of row {r} holds the fp16 scale {h[r, b].item()} "
                             f"at byte {off} (every scale of {spec.format} is finite)")


def _has_values(t):
    """Whether t's values can be read here (not a meta tensor, not a FakeTensor of tracing)."""
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type != "meta" and t.numel() > 0 and not is_fake(t)


def check_packed_values(scales, zeros, spec, names=None):
    """The value rules of check_packed on scales and zeros (either may be None), in whatever
    dtype they come (a zero point is compared before any cast to uint8 could wrap it)."""
    names = dict(zip(FIELDS, FIELDS), **(names or {}))
    if torch.compiler.is_compiling():
        return
    if isinstance(zeros, torch.Tensor) and _has_values(zeros):
        qmax = (1 << spec.bits) - 1
        z = zeros if not zeros.dtype.is_floating_point else zeros.double()
        bad = (z < 0) | (z > qmax) | (z != z.round() if zeros.dtype.is_floating_point else False)
        if bool(bad.any()):
            i = tuple(bad.nonzero()[0].tolist())
            raise ValueError(f"{names['zeros']}: zero point {zeros[i].item()} at {list(i)} is "
                             f"outside [0, qmax = {qmax}] of {spec.name}")
    if isinstance(scales, torch.Tensor) and _has_values(scales):
        sf = scales.float() if scales.dtype.is_floating_point else scales.double()
        bad = ~(torch.isfinite(sf) & (sf > 0))
        if bool(bad.any()):
            i = tuple(bad.nonzero()[0].tolist())
            raise ValueError(f"{names['scales']}: scale {scales[i].item()} at {list(i)} is not "
                             f"a finite number > 0 (every scale of {spec.name} is)")
        sd = spec.scale_torch_dtype
        if sd != torch.float32:
            off = sf.to(sd).float() != sf
            if bool(off.any()):
                i = tuple(off.nonzero()[0].tolist())
                raise ValueError(f"{names['scales']}: scale {scales[i].item()!r} at {list(i)} is "
                                 f"not exact in the spec's scale_dtype {spec.scale_dtype} (packed "
                                 f"scales are the rounded ones, FORMATS.md 1.6)")


def check_qweight(qw, name="qw"):
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"{name}: expected a lowbit.QuantizedWeight, got {type(qw).__name__}")
    return qw


__all__ = ["QuantizedWeight", "PackedWeight", "check_qweight", "check_packed"]
