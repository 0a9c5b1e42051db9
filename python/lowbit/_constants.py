"""python/lowbit/_constants.py: every hand-written Python mirror of a C constant — enum codes
(formats, dtypes, STE modes, KL kinds, CPU ISAs) and layout sizes (packed codes, scales, the
qlinear CPU layout, the lb24 meta bytes) — in one file, so that switching to the values lowbit._C
exports is a one-file change. Each value names the C definition it mirrors."""
import torch

# ---- enum codes ----
FORMAT_CODES = {"int": 0, "nf": 1, "fp": 2}                      # formats.h LB_FMT_*
FORMAT_BITS = {"int": (2, 3, 4, 8), "nf": (3, 4), "fp": (3, 4)}  # formats.h level tables
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # formats.h LB_DT_*
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
STE_CODES = {"bitdistiller": 0, "identity": 1}                  # ops/fake_quant.c, arg ste
KL_KINDS = {"forward": 0, "reverse": 1, "cakld": 2, "jsd": 3}   # ops/kl_loss.h LB_KL_*
ISA_CODES = {"scalar": 0, "avx2": 1, "avx512": 2, "avxvnni": 3,  # cpu/lb_cpu.h LB_ISA_*
             "avx512vnni": 4}
QL_ACT_CODES = {"float": 0, "int8": 1, "auto": 2}                # layouts.h LB_ACT_*
QL_SCHEMES = {0: "float", 1: "int8", 2: "int8x2"}                # cpu/qlinear.h LB_QS_*

# ---- layout sizes ----
QL_TILE = 16   # layouts.h LB_QL_TILE: output rows per tile of the CPU layout
QL_KBLK = 32   # layouts.h LB_QL_KBLK: K per block of the CPU layout
QL_INT_MAX_M = 16  # layouts.h LB_QL_INT_MAX_M: the most rows the integer-dot kernels take


def codes_bytes(K, bits):
    """Bytes per row of the canonical codes bitstream (formats.h)."""
    return (K * bits + 7) // 8


def two_scales(fmt, symmetric):
    """Whether a format code stores two scales [s+, s-] per group (NF/FP asymmetric)."""
    return fmt != FORMAT_CODES["int"] and not symmetric


def has_zeros(fmt, symmetric):
    """Whether a format code stores uint8 zero points (INT asymmetric)."""
    return fmt == FORMAT_CODES["int"] and not symmetric


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
    """ops/sparse24.h lb24_meta_bytes: meta bytes per row, one nibble per group of 4."""
    return (K // 4 + 1) // 2
