"""python/lowbit/_fake_checks.py: the C glue's argument checks (csrc/ops/lb_check.c and the ops'
glue, csrc/ops/*.c) repeated in Python for the fake (meta / FakeTensor / torch.compile) kernels,
so that a fake raises where the real op raises: the same RuntimeError, "<arg>: <what is wrong>".

Only metadata checks live here: a fake kernel cannot read values (NaN/Inf in a weight, a 2:4
meta's content), those stay the real kernels' own. A meta tensor stands for a CPU one (the CPU-only
checks pass on meta); a FakeTensor carries its real device and is checked as such. Each function
names the C function it mirrors; keep them in step when the glue changes."""
import torch

from . import _constants as C
from . import _ops

_X = _ops._C
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
INT_MAX = (1 << 31) - 1  # C int: the kernels narrow some counts to it
_FMT_MASKS = {C.FORMAT_CODES[name]: sum(1 << b for b in bits)
              for name, bits in C.FORMAT_BITS.items()}
QL_PACK_BITS = (2, 3, 4, 8)  # csrc/ops/qlinear.c: the bit widths of the packed CPU layout


def fail(msg):
    """The error the C glue raises (lb_raise: a torch RuntimeError)."""
    raise RuntimeError(msg)


def _mul64(a, b):
    """a * b, or None where int64 overflows (layouts.h lb_mul64)."""
    r = a * b
    return r if _I64_MIN <= r <= _I64_MAX else None


def _cdiv(a, b):
    return a // b + (a % b != 0)


def describe(*named):
    """lb_describe of each (name, tensor): at most MAX_DIM dimensions."""
    for name, t in named:
        if t.dim() > _X.MAX_DIM:
            fail(f"{name}: at most {_X.MAX_DIM} dimensions are supported, got {t.dim()}")


def on_cpu(t):
    """Whether t is (or, on the meta device, stands for) a CPU tensor."""
    return t.device.type in ("cpu", "meta")


def check_int(v, name, lo, hi):
    """lb_check_int."""
    if v < lo or v > hi:
        fail(f"{name}: must be in [{lo}, {hi}], got {v}")


def check_dtype_code(dt, name):
    """lb_check_dtype_code."""
    if dt < 0 or dt >= len(C.DTYPE_CODES):
        fail(f"{name}: unknown dtype code {dt} (0 float32, 1 bfloat16, 2 float16)")


def check_spec(fmt, bits, g, sym, K):
    """lb_check_spec: (fmt, bits, group_size, symmetric) against K columns; the format kind."""
    if fmt < 0 or fmt >= len(C.FORMAT_CODES):
        fail(f"format: unknown format code {fmt}")
    if bits < 1 or bits > _X.MAX_BITS or not (_FMT_MASKS[fmt] >> bits) & 1:
        fail(f"bits: {bits} bits is not supported for format code {fmt}")
    if g <= 0 or K % g != 0:
        fail(f"group_size: {g} must be positive and divide K = {K}")
    return C.fmt_kind(fmt, sym)


def check_float(t, name):
    """lb_check_float."""
    if t.dtype not in C.DTYPE_CODES:
        fail(f"{name}: dtype must be float32, bfloat16 or float16")


def check_weight(t, name):
    """lb_check_weight: 2-D, non-empty, contiguous, float."""
    check_float(t, name)
    if t.dim() != 2:
        fail(f"{name}: expected a 2-D (out_features, in_features) tensor, got {t.dim()}-D")
    if t.numel() == 0:
        fail(f"{name}: empty tensor")
    if not t.is_contiguous():
        fail(f"{name}: must be contiguous (the Python wrapper makes it so)")


def check_same_device(b, name, a, aname):
    """lb_check_same_device."""
    if b.device != a.device:
        fail(f"{name}: must be on the device of {aname}")


def row_bytes(K, bits):
    """layouts.h lb_row_bytes_checked: bytes of a row of K codes, None on overflow."""
    kb = _mul64(K, bits) if K >= 0 and bits >= 0 else None
    return None if kb is None else _cdiv(kb, 8)


QWEIGHT_NAMES = ("codes", "scales", "zeros")


def check_qweight(c, s, z, kind, bits, K, g, names=QWEIGHT_NAMES):
    """lb_check_qweight: the packed weight (codes, scales, zeros) of K columns; returns N."""
    two = kind == _X.KIND_LVL2
    G = K // g
    GZ = G if kind == _X.KIND_INT_ASYM else 0
    rb = row_bytes(K, bits)
    if rb is None:
        fail(f"K: {K} columns of {bits} bits overflow the row size")
    N = c.shape[0] if c.dim() == 2 else -1
    if c.dtype != torch.uint8 or c.dim() != 2 or not c.is_contiguous() or N <= 0 or \
            c.shape[1] != rb:
        fail(f"{names[0]}: expected a contiguous uint8 (N, {rb}) tensor, N > 0, for K = {K}")
    if s.dtype != torch.float32 or not s.is_contiguous() or s.dim() != (3 if two else 2) or \
            s.shape[0] != N or s.shape[1] != G or (two and s.shape[2] != 2):
        fail(f"{names[1]}: expected a contiguous float32 ({N}, {G}{', 2' if two else ''}) "
             f"tensor")
    if z.dtype != torch.uint8 or z.dim() != 2 or not z.is_contiguous() or z.shape[0] != N or \
            z.shape[1] != GZ:
        fail(f"{names[2]}: expected a contiguous uint8 ({N}, {GZ}) tensor")
    check_same_device(s, names[1], c, names[0])
    check_same_device(z, names[2], c, names[0])
    return N


def call_qweight(c, s, z, fmt, bits, g, sym, K):
    """lb_call_qweight: describes the packed weight, checks K > 0, the spec and the weight;
    returns (kind, N)."""
    describe(*zip(QWEIGHT_NAMES, (c, s, z)))
    if K <= 0:
        fail(f"K: must be positive, got {K}")
    kind = check_spec(fmt, bits, g, sym, K)
    return kind, check_qweight(c, s, z, kind, bits, K, g)


def check_bias(b, x, N):
    """lb_check_bias: numel 0 is none (False), else (N,) of x's dtype, contiguous, on x's
    device (True)."""
    if b.numel() == 0:
        return False
    if b.dim() != 1 or b.shape[0] != N or b.dtype != x.dtype or not b.is_contiguous() or \
            b.device != x.device:
        fail(f"bias: expected a contiguous ({N},) tensor of x's dtype and device")
    return True


def check_numel(sizes, elem_size, name):
    """lb_check_numel: the product of sizes (elements of elem_size bytes) fits in int64."""
    acc = elem_size
    for s in sizes:
        acc = _mul64(acc, s) if s >= 0 else None
        if acc is None:
            fail(f"{name}: the result of this size does not fit in memory")


# ---- the qlinear CPU layout (csrc/ops/qlinear.c) ----
def ql_packed_shape(N, K, bits):
    """qlinear.c ql_packed_shape: the packed layout's (NT, KB*bits*16), overflow-checked."""
    words = None
    if N >= 0 and K >= 0 and bits >= 0:
        a = _mul64(C.ql_tiles(N), C.ql_kblocks(K))
        words = None if a is None else _mul64(a, bits * C.QL_TILE)
    if words is None:
        fail(f"K: the kernel layout of a ({N}, {K}) weight overflows")
    nt = C.ql_tiles(N)
    return (nt, words // nt if nt else 0)


def ql_check_packed(p, shape):
    """qlinear.c ql_check_packed."""
    if p.dtype != torch.int32 or not p.is_contiguous() or p.dim() != 2 or \
            tuple(p.shape) != tuple(shape):
        fail(f"packed: expected a contiguous int32 ({shape[0]}, {shape[1]}) tensor")


def ql_check_params(s, z, kind, K, g):
    """qlinear.c ql_check_params: scales / zeros of K columns without the codes; returns N."""
    two = kind == _X.KIND_LVL2
    G = K // g
    GZ = G if kind == _X.KIND_INT_ASYM else 0
    N = s.shape[0] if s.dim() >= 1 else -1
    if s.dtype != torch.float32 or not s.is_contiguous() or s.dim() != (3 if two else 2) or \
            N <= 0 or s.shape[1] != G or (two and s.shape[2] != 2):
        fail(f"scales: expected a contiguous float32 (N, {G}{', 2' if two else ''}) tensor, "
             f"N > 0")
    if z.dtype != torch.uint8 or z.dim() != 2 or not z.is_contiguous() or z.shape[0] != N or \
            z.shape[1] != GZ:
        fail(f"zeros: expected a contiguous uint8 ({N}, {GZ}) tensor")
    check_same_device(z, "zeros", s, "scales")
    return N


def ql_check_bits(bits):
    if bits not in QL_PACK_BITS:
        fail(f"bits: must be 2, 3, 4 or 8, got {bits}")
