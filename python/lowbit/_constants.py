"""python/lowbit/_constants.py: the format table (FORMATS: one Format per row of csrc/formats.h,
read from lowbit._C.formats()), the enum codes (formats, dtypes, STE modes, KL kinds, CPU ISAs)
and layout sizes (packed codes, scales, the lb24 meta bytes) Python needs, read from what
lowbit._C exports (csrc/module.c lists them) — never hand-copied numbers or lists, so C and
Python cannot drift apart. The qlinear CPU layout helpers below (ql_*) are the qlinear family's."""
from dataclasses import dataclass
from typing import Optional

import torch

from . import _ops

_X = _ops._C


# ---- the format table ----
@dataclass(frozen=True)
class Kind:
    """A row of the kind table (csrc/formats.h lb_kinds): the group math a (format, symmetric)
    resolves to and what a group stores beside its codes."""
    code: int
    name: str
    scales: int     # float32 scales per group: 1, 2 ([s+, s-]) or 0 (inside the blocks)
    zeros: bool     # a uint8 zero point per group
    levels: bool    # codes index a level table (else they are integers)


@dataclass(frozen=True)
class Format:
    """A row of the format table (csrc/formats.h lb_formats): everything Python needs to know
    about one weight format."""
    name: str                  # QuantSpec.format
    code: int                  # the `fmt` int of the ops
    bits: tuple                # the code widths it takes
    storage: str               # "codes" (bitstream + scales + zeros) or "blocks" (GGUF blocks)
    block: int                 # "blocks": elements per block, the fixed group; else 0
    sub_block: int             # elements per sub-block (0: none)
    type_size: int             # "blocks": bytes per block
    scale_bits: int            # "blocks" with sub-blocks (k types): bits of a sub-block scale code
    half_at: tuple             # "blocks": byte offsets of the fp16 scales (d, dmin / m) in a block
    symmetric: Optional[bool]  # None: either value; else the only one it takes
    kinds: dict                # {symmetric: Kind} for the values it takes
    levels: dict               # {bits: level table (tuple of floats)} of the level kinds

    def kind(self, symmetric):
        """The Kind of this format with ``symmetric``."""
        return self.kinds[bool(symmetric)]

    def row_bytes(self, K, bits):
        """Bytes of the stored form of one row of K weights."""
        if self.storage == "blocks":
            return K // self.block * self.type_size
        return (K * bits + 7) // 8

    def scales_shape(self, N, G, symmetric):
        k = self.kind(symmetric)
        return (N, G, 2) if k.scales == 2 else (N, G if k.scales else 0)

    def bits_per_weight(self, bits, group_size, symmetric):
        """Stored bits per weight: codes, scales and zero points (blocks: the block's bytes)."""
        if self.storage == "blocks":
            return 8 * self.type_size / self.block
        k = self.kind(symmetric)
        return bits + (32 * k.scales + 8 * k.zeros) / group_size


KINDS = tuple(Kind(d["code"], d["name"], d["scales"], d["zeros"], d["levels"])
              for d in _X.kinds())


def _format(d):
    sym = None if d["symmetric"] < 0 else bool(d["symmetric"])
    kinds = {s: KINDS[k] for s, k in ((False, d["kinds"][0]), (True, d["kinds"][1]))
             if k >= 0 and (sym is None or s == sym)}
    return Format(d["name"], d["code"], tuple(d["bits"]), d["storage"], d["block"],
                  d["sub_block"], d["type_size"], d["scale_bits"],
                  tuple(o for o in d["half_at"] if o >= 0) if d["storage"] == "blocks" else (),
                  sym, kinds, dict(d["levels"]))


FORMATS = {f.name: f for f in map(_format, _X.formats())}
_BY_CODE = {f.code: f for f in FORMATS.values()}

# ---- enum codes ----
FORMAT_CODES = {d["name"]: d["code"] for d in _X.formats()}
# the bit widths each format supports
FORMAT_BITS = {name: f.bits for name, f in FORMATS.items()}


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
ISA_CODES = {name: code for code, name in enumerate(_X.ISA_NAMES.split(","))}
QL_ACT_CODES = {"float": _X.ACT_FLOAT, "int8": _X.ACT_INT8, "auto": _X.ACT_AUTO}
QL_SCHEMES = {_X.QS_FLOAT: "float", _X.QS_INT8: "int8", _X.QS_INT8X2: "int8x2"}

# ---- layout sizes ----
QL_TILE = _X.QL_TILE            # layouts.h: output rows per tile of the CPU layout
QL_KBLK = _X.QL_KBLK            # layouts.h: K per block of the CPU layout
QL_INT_MAX_M = _X.QL_INT_MAX_M  # layouts.h: the most rows the integer-dot kernels take


def codes_bytes(K, bits):
    """Bytes per row of the canonical codes bitstream (formats.h: ceil(K * bits / 8))."""
    return (K * bits + 7) // 8


def format_of(fmt):
    """The Format of a format code (KeyError for an unknown one)."""
    return _BY_CODE[fmt]


def fmt_kind(fmt, symmetric):
    """The KIND_* code a (fmt, symmetric) pair resolves to (the format's row)."""
    return _BY_CODE[fmt].kind(symmetric).code


def two_scales(fmt, symmetric):
    """Whether a format code stores two scales [s+, s-] per group (NF/FP asymmetric)."""
    return _BY_CODE[fmt].kind(symmetric).scales == 2


def has_zeros(fmt, symmetric):
    """Whether a format code stores uint8 zero points (INT asymmetric)."""
    return _BY_CODE[fmt].kind(symmetric).zeros


def scales_shape(N, G, fmt, symmetric):
    return _BY_CODE[fmt].scales_shape(N, G, symmetric)


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
