"""python/lowbit/_constants.py: the enum codes (formats, dtypes, STE modes, KL kinds, CPU ISAs)
and layout sizes (packed codes, scales, the lb24 meta bytes) Python needs, read from what
lowbit._C exports (csrc/module.c lists them) — never hand-copied numbers, so C and Python cannot
drift apart. The qlinear CPU layout helpers below (ql_*) are the qlinear family's."""
import torch

from . import _ops

_X = _ops._C

# ---- enum codes ----
FORMAT_CODES = {"int": _X.FMT_INT, "nf": _X.FMT_NF, "fp": _X.FMT_FP}
_FORMAT_MASKS = {"int": _X.FMT_INT_BITS, "nf": _X.FMT_NF_BITS, "fp": _X.FMT_FP_BITS}
# the bit widths each format supports: bit b of the exported mask is set iff b bits are
FORMAT_BITS = {name: tuple(b for b in range(1, _X.MAX_BITS + 1) if mask >> b & 1)
               for name, mask in _FORMAT_MASKS.items()}


class _DtypeCodes(dict):
    """dtype -> code; any other dtype is a TypeError naming it (a QuantizedWeight of dtype
    float64 fails at use with this, never a KeyError)."""

    def __missing__(self, dtype):
        raise TypeError(f"dtype: must be float32, bfloat16 or float16, got {dtype}")


class _CodeDtypes(dict):
    """code -> dtype; an unknown code is the RuntimeError the C glue raises for it (so fake
    kernels that look codes up fail like the real ones)."""

    def __missing__(self, code):
        raise RuntimeError(f"dtype: unknown dtype code {code} (0 float32, 1 bfloat16, "
                           f"2 float16)")


DTYPE_CODES = _DtypeCodes({torch.float32: _X.DT_F32, torch.bfloat16: _X.DT_BF16,
                           torch.float16: _X.DT_F16})
CODE_DTYPES = _CodeDtypes({v: k for k, v in DTYPE_CODES.items()})
STE_CODES = {"bitdistiller": _X.STE_BITDISTILLER, "identity": _X.STE_IDENTITY}
KL_KINDS = {"forward": _X.KL_FORWARD, "reverse": _X.KL_REVERSE, "cakld": _X.KL_CAKLD,
            "jsd": _X.KL_JSD}
ISA_CODES = {"scalar": _X.ISA_SCALAR, "avx2": _X.ISA_AVX2, "avx512": _X.ISA_AVX512,
             "avxvnni": _X.ISA_AVXVNNI, "avx512vnni": _X.ISA_AVX512VNNI}
QL_ACT_CODES = {"float": _X.ACT_FLOAT, "int8": _X.ACT_INT8, "auto": _X.ACT_AUTO}
QL_SCHEMES = {_X.QS_FLOAT: "float", _X.QS_INT8: "int8", _X.QS_INT8X2: "int8x2"}

# ---- layout sizes ----
QL_TILE = _X.QL_TILE            # layouts.h: output rows per tile of the CPU layout
QL_KBLK = _X.QL_KBLK            # layouts.h: K per block of the CPU layout
QL_INT_MAX_M = _X.QL_INT_MAX_M  # layouts.h: the most rows the integer-dot kernels take


def codes_bytes(K, bits):
    """Bytes per row of the canonical codes bitstream (formats.h: ceil(K * bits / 8))."""
    return (K * bits + 7) // 8


def fmt_kind(fmt, symmetric):
    """The KIND_* a (fmt, symmetric) pair resolves to (formats.h lb_fmt_init)."""
    if fmt == _X.FMT_INT:
        return _X.KIND_INT_SYM if symmetric else _X.KIND_INT_ASYM
    return _X.KIND_LVL1 if symmetric else _X.KIND_LVL2


def two_scales(fmt, symmetric):
    """Whether a format code stores two scales [s+, s-] per group (NF/FP asymmetric)."""
    return fmt_kind(fmt, symmetric) == _X.KIND_LVL2


def has_zeros(fmt, symmetric):
    """Whether a format code stores uint8 zero points (INT asymmetric)."""
    return fmt_kind(fmt, symmetric) == _X.KIND_INT_ASYM


def scales_shape(N, G, fmt, symmetric):
    return (N, G, 2) if two_scales(fmt, symmetric) else (N, G)


def ql_packable(K, g):
    """layouts.h lb_ql_packable: the CPU layout exists for these group sizes."""
    return g % QL_KBLK == 0 or g == K


def ql_tiles(N):
    return (N + QL_TILE - 1) // QL_TILE


def ql_kblocks(K):
    return (K + QL_KBLK - 1) // QL_KBLK


def ql_packed_shape(N, K, bits):
    """int32 shape of the packed codes (layouts.h lb_ql_packed_words)."""
    return (ql_tiles(N), ql_kblocks(K) * bits * QL_TILE)


def lb24_meta_bytes(K):
    """meta bytes per row of the lb24 layout (layouts.h): one nibble per group of S24_GROUP."""
    groups = K // _X.S24_GROUP
    return -(-groups // _X.S24_GROUPS_PER_BYTE)
