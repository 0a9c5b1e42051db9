"""python/lowbit/sparse/sparse24_weight.py: the compressed 2:4 weight — Sparse24Weight (the lb24
layout of csrc/ops/sparse24.h: kept values + 2-bit in-group indices), prune_24, compress_24,
decompress_24, the meta encode/decode, and the checks of a 2:4 weight argument."""
import torch

from .._checks import FLOAT_DTYPES, check_2d_float, check_device
from .._constants import lb24_meta_bytes
from ..fake_quant import dequantize, quantize
from ..qweight import PackedWeight
from ..spec import check_spec
from .sparse24_mask import apply_mask, mask_24


def check_24_weight(w, name="w"):
    """A 2-D float (N, K) tensor, K a positive multiple of 4, on a device lowbit runs on."""
    check_2d_float(w, name)
    if w.shape[1] % 4 != 0 or w.shape[1] == 0 or w.shape[0] == 0:
        raise ValueError(f"{name}: in_features K = {w.shape[1]} must be a positive multiple of 4 "
                         f"(2:4 groups run along K), shape {tuple(w.shape)}")
    check_device(w, name)


def prune_24(w):
    """(pruned, mask): in each run of 4 consecutive elements along K (the last dim of a 2-D
    (N, K) weight) keep the 2 with the largest |w|, the lower index on ties; ``pruned`` has w's
    dtype with zeros elsewhere, ``mask`` is bool. Not differentiable (use SparseLinear24)."""
    check_24_weight(w)
    with torch.no_grad():
        mask = mask_24(w)
        pruned = apply_mask(w, mask)
    return pruned, mask


def meta_from_mask(mask):
    """uint8 (N, ceil(K/8)) meta bytes of the lb24 layout from a 2:4 mask (exactly 2 per group)."""
    n, k = mask.shape
    g = k // 4
    pos = torch.arange(4, device=mask.device, dtype=torch.uint8).expand(n, g, 4)
    idx = pos[mask.reshape(n, g, 4)].reshape(n, g, 2)
    nib = idx[..., 0] | (idx[..., 1] << 2)
    if g % 2:
        nib = torch.cat([nib, nib.new_zeros(n, 1)], 1)
    nib = nib.reshape(n, -1, 2)
    return (nib[..., 0] | (nib[..., 1] << 4)).contiguous()


def meta_bad_rows(meta, k):
    """Bool (N,): rows of meta with an invalid group — two 2-bit indices not strictly
    increasing (a duplicate or out of order) — or a non-zero padding nibble (odd K/4). The
    same rule as the C glue's check (csrc/ops/sparse24.c), on any device."""
    n, g = meta.shape[0], k // 4
    m = meta.to(torch.int16)
    nib = torch.stack([m & 15, m >> 4], -1).reshape(n, -1)
    grp = nib[:, :g]
    bad = ((grp & 3) >= (grp >> 2)).any(-1)
    if nib.shape[1] > g:
        bad = bad | (nib[:, g:] != 0).any(-1)
    return bad


def check_meta(meta, n, k, name="meta"):
    """meta: a uint8 (n, ceil(k/8)) tensor of valid 2:4 groups (ValueError naming ``name``)."""
    if not isinstance(meta, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(meta).__name__}")
    if meta.dtype != torch.uint8 or tuple(meta.shape) != meta_shape(n, k):
        raise ValueError(f"{name}: expected a uint8 tensor of shape {meta_shape(n, k)} for a "
                         f"({n}, {k}) weight, got {meta.dtype} {tuple(meta.shape)}")
    if meta.device.type != "meta" and meta.numel():
        bad = meta_bad_rows(meta, k)
        if bool(bad.any()):
            raise ValueError(f"{name}: row {int(bad.nonzero()[0, 0])} holds an invalid 2:4 group "
                             f"(each group's two 2-bit indices must be strictly increasing, as "
                             f"compress_24 writes them; padding nibbles zero)")


def indices_from_meta(meta, k):
    """int64 (N, K/2) in-group indices of the kept values, decoded from meta."""
    n = meta.shape[0]
    nib = torch.stack([meta & 15, meta >> 4], -1).reshape(n, -1)[:, : k // 4]
    return torch.stack([nib & 3, nib >> 2], -1).reshape(n, k // 2).long()


class Sparse24Weight(PackedWeight):
    """A 2:4-compressed (N, K) weight in lowbit's lb24 layout (csrc/ops/sparse24.h):
    ``values`` (N, K/2) in ``dtype`` — the kept values in order along K — and ``meta`` uint8
    (N, ceil(K/8)) — their 2-bit in-group indices, one nibble per group of 4. With low bits,
    ``qvalues`` (a QuantizedWeight of the (N, K/2) kept values) replaces ``values``."""

    def __init__(self, values, meta, shape, dtype, qvalues=None, check=True):
        """Validates what it is given (shapes, dtypes, devices and meta's content, the latter
        one pass over meta); ``check=False`` is for tensors lowbit built or checked itself."""
        if (values is None) == (qvalues is None):
            raise ValueError("values: give exactly one of values and qvalues")
        if check:
            _check_parts(values, meta, shape, dtype, qvalues)
        self.values = values
        self.qvalues = qvalues
        self.meta = meta
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self._cslt = None  # (device, packed buffer) cache of the cuSPARSELt form

    @property
    def device(self):
        return self.meta.device

    @property
    def is_quantized(self):
        return self.qvalues is not None

    def tensors(self):
        return ([self.values] if self.values is not None else self.qvalues.tensors()) + [self.meta]

    def to(self, device):
        if self.qvalues is not None:
            return Sparse24Weight(None, self.meta.to(device), self.shape, self.dtype,
                                  self.qvalues.to(device), check=False)
        return Sparse24Weight(self.values.to(device), self.meta.to(device), self.shape,
                              self.dtype, check=False)

    def kept_values(self):
        """The (N, K/2) kept values in ``dtype`` (dequantized when quantized)."""
        return dequantize(self.qvalues) if self.qvalues is not None else self.values

    def quantize(self, spec):
        """The same sparsity pattern with its kept values quantized by ``spec`` (groups count kept
        values: group_size 128 = 128 kept values = 256 original columns)."""
        check_spec(spec)
        if self.qvalues is not None:
            raise ValueError("self: already quantized")
        return Sparse24Weight(None, self.meta, self.shape, self.dtype,
                              quantize(self.values, spec), check=False)

    def __repr__(self):
        q = f", {self.qvalues.spec.name} kept values" if self.qvalues is not None else ""
        return (f"Sparse24Weight(shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={self.device}{q}, {self.bits_per_weight:.3f} bits/weight)")


def _check_parts(values, meta, shape, dtype, qvalues):
    from ..qweight import check_qweight

    if len(tuple(shape)) != 2:
        raise ValueError(f"shape: expected (N, K), got {tuple(shape)}")
    n, k = (int(s) for s in shape)
    if n <= 0 or k <= 0 or k % 4:
        raise ValueError(f"shape: expected N > 0 and K a positive multiple of 4, got {(n, k)}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype: must be float32, bfloat16 or float16, got {dtype}")
    if values is not None:
        check_2d_float(values, "values")
        if tuple(values.shape) != (n, k // 2):
            raise ValueError(f"values: expected shape {(n, k // 2)} for shape {(n, k)}, got "
                             f"{tuple(values.shape)}")
        if values.dtype != dtype:
            raise TypeError(f"values: dtype {values.dtype} differs from dtype {dtype}")
        dev = values.device
    else:
        check_qweight(qvalues, "qvalues")
        if tuple(qvalues.shape) != (n, k // 2):
            raise ValueError(f"qvalues: expected the ({n}, {k // 2}) kept values, got shape "
                             f"{tuple(qvalues.shape)}")
        dev = qvalues.device
    check_meta(meta, n, k)
    if meta.device != dev:
        raise ValueError(f"meta: is on {meta.device} but the kept values are on {dev}")


def compress_24(w):
    """Sparse24Weight of a 2:4-sparse (N, K) weight (at most 2 nonzeros in every group of 4
    along K, e.g. prune_24(w)[0]). Raises ValueError if w is not 2:4-sparse."""
    check_24_weight(w)
    with torch.no_grad():
        mask = mask_24(w)
        dropped = w.detach()[~mask]
        if w.device.type != "meta" and bool((dropped != 0).any()):
            n, k = w.shape
            bad = ((w.detach() != 0) & ~mask).reshape(n, k // 4, 4).any(-1).nonzero()[0].tolist()
            raise ValueError(f"w: is not 2:4-sparse: row {bad[0]}, columns {4 * bad[1]}..."
                             f"{4 * bad[1] + 3} hold more than 2 nonzeros (prune it first with "
                             f"lowbit.sparse.prune_24)")
        n, k = w.shape
        values = w.detach()[mask].reshape(n, k // 2).contiguous()
        meta = meta_from_mask(mask)
    return Sparse24Weight(values, meta, w.shape, w.dtype, check=False)


def check_sw(sw, name="sw"):
    if not isinstance(sw, Sparse24Weight):
        raise TypeError(f"{name}: expected a lowbit.sparse.Sparse24Weight, got {type(sw).__name__}")


def decompress_24(sw):
    """The dense (N, K) weight (zeros where pruned) a Sparse24Weight stands for."""
    check_sw(sw)
    return torch.ops.lowbit.sparse24_decompress(sw.kept_values().contiguous(), sw.meta)


def meta_shape(N, K):
    """Shape of the meta bytes of an (N, K) weight."""
    return (N, lb24_meta_bytes(K))
