"""python/lowbit/sparse24.py: 2:4 structured sparsity (FORMATS.md section 3).

    pruned, mask = prune_24(w)             # keep the 2 largest |w| of every 4 along K (ties: lower index)
    sw = compress_24(pruned)               # Sparse24Weight: kept values (N, K/2) + 2-bit indices
    w2 = decompress_24(sw)                 # == pruned
    y = sparse24_linear(x, sw, bias)       # == F.linear(x, pruned, bias) within float32 rounding
    sq = sw.quantize(QuantSpec("int", 4, 128))   # 2:4 + int4 over the kept values (~3.2 bits/weight)
    lowbit.nn.SparseLinear24.from_linear(linear, mode="train" | "inference")
    lowbit.sparsify_(model, skip=("lm_head",), include=None, mode="train")

The compressed layout ("lb24") is documented in csrc/ops/sparse24.h. The ops
(torch.ops.lowbit.sparse24_*) get their fake kernels and autograd formulas here, next to their
wrappers. On CUDA, float16/bfloat16 products go through cuSPARSELt (libcusparseLt loaded at run
time, see _cusparselt_path) when the shape suits it; lowbit's own gather kernel does the rest.
"""
import ctypes
import fnmatch
import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import nn

from . import _ops
from .fake_quant import QuantizedWeight, check_device, dequantize, quantize
from .spec import QuantSpec, check_spec

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MODES = ("train", "inference")
BACKENDS = ("auto", "lowbit", "cusparselt")


# ---------------------------------------------------------------------------------------------
# argument checks (each names the argument)
# ---------------------------------------------------------------------------------------------
def _check_tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _check_24_weight(w, name="w"):
    _check_tensor(w, name)
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32, bfloat16 or float16, got {w.dtype}")
    if w.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (out_features, in_features) tensor, "
                         f"got shape {tuple(w.shape)}")
    if w.shape[1] % 4 != 0 or w.shape[1] == 0 or w.shape[0] == 0:
        raise ValueError(f"{name}: in_features K = {w.shape[1]} must be a positive multiple of 4 "
                         f"(2:4 groups run along K), shape {tuple(w.shape)}")
    check_device(w, name)


# ---------------------------------------------------------------------------------------------
# prune / compress / decompress
# ---------------------------------------------------------------------------------------------
def _mask_24(w):
    """Bool mask (N, K): per group of 4 along K, the 2 largest |w| (ties: lower index; NaN
    counts as +inf so exactly 2 are always kept)."""
    n, k = w.shape
    a = w.detach().abs().float().reshape(n, k // 4, 4)
    a = torch.where(torch.isnan(a), torch.full_like(a, float("inf")), a)
    cols = [a[..., i] for i in range(4)]
    keep = []
    for i in range(4):
        # rank of element i: elements strictly larger, plus equal ones at a lower index
        rank = torch.zeros_like(cols[i], dtype=torch.int8)
        for j in range(4):
            if j == i:
                continue
            beats = cols[j] > cols[i] if j > i else cols[j] >= cols[i]
            rank += beats.to(torch.int8)
        keep.append(rank < 2)
    return torch.stack(keep, -1).reshape(n, k)


def prune_24(w):
    """(pruned, mask): in each run of 4 consecutive elements along K (the last dim of a 2-D
    (N, K) weight) keep the 2 with the largest |w|, the lower index on ties; ``pruned`` has w's
    dtype with zeros elsewhere, ``mask`` is bool. Not differentiable (use SparseLinear24)."""
    _check_24_weight(w)
    with torch.no_grad():
        mask = _mask_24(w)
        pruned = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
    return pruned, mask


def _meta_from_mask(mask):
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


def _indices_from_meta(meta, k):
    """int64 (N, K/2) in-group indices of the kept values, decoded from meta."""
    n = meta.shape[0]
    nib = torch.stack([meta & 15, meta >> 4], -1).reshape(n, -1)[:, : k // 4]
    return torch.stack([nib & 3, nib >> 2], -1).reshape(n, k // 2).long()


class Sparse24Weight:
    """A 2:4-compressed (N, K) weight in lowbit's lb24 layout (csrc/ops/sparse24.h):
    ``values`` (N, K/2) in ``dtype`` — the kept values in order along K — and ``meta`` uint8
    (N, ceil(K/8)) — their 2-bit in-group indices, one nibble per group of 4. With low bits,
    ``qvalues`` (a QuantizedWeight of the (N, K/2) kept values) replaces ``values``."""

    def __init__(self, values, meta, shape, dtype, qvalues=None):
        if (values is None) == (qvalues is None):
            raise ValueError("values: give exactly one of values and qvalues")
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
                                  self.qvalues.to(device))
        return Sparse24Weight(self.values.to(device), self.meta.to(device), self.shape, self.dtype)

    @property
    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def bits_per_weight(self):
        """Storage per original weight (kept values or codes + scales, and the indices)."""
        return self.nbytes * 8 / (self.shape[0] * self.shape[1])

    def kept_values(self):
        """The (N, K/2) kept values in ``dtype`` (dequantized when quantized)."""
        return dequantize(self.qvalues) if self.qvalues is not None else self.values

    def quantize(self, spec):
        """The same sparsity pattern with its kept values quantized by ``spec`` (groups count kept
        values: group_size 128 = 128 kept values = 256 original columns)."""
        check_spec(spec)
        if self.qvalues is not None:
            raise ValueError("self: already quantized")
        return Sparse24Weight(None, self.meta, self.shape, self.dtype, quantize(self.values, spec))

    def __repr__(self):
        q = f", {self.qvalues.spec.name} kept values" if self.qvalues is not None else ""
        return (f"Sparse24Weight(shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={self.device}{q}, {self.bits_per_weight:.3f} bits/weight)")


def compress_24(w):
    """Sparse24Weight of a 2:4-sparse (N, K) weight (at most 2 nonzeros in every group of 4
    along K, e.g. prune_24(w)[0]). Raises ValueError if w is not 2:4-sparse."""
    _check_24_weight(w)
    with torch.no_grad():
        mask = _mask_24(w)
        dropped = w.detach()[~mask]
        if w.device.type != "meta" and bool((dropped != 0).any()):
            n, k = w.shape
            bad = ((w.detach() != 0) & ~mask).reshape(n, k // 4, 4).any(-1).nonzero()[0].tolist()
            raise ValueError(f"w: is not 2:4-sparse: row {bad[0]}, columns {4 * bad[1]}..."
                             f"{4 * bad[1] + 3} hold more than 2 nonzeros (prune it first with "
                             f"lowbit.sparse.prune_24)")
        n, k = w.shape
        values = w.detach()[mask].reshape(n, k // 2).contiguous()
        meta = _meta_from_mask(mask)
    return Sparse24Weight(values, meta, w.shape, w.dtype)


def _check_sw(sw, name="sw"):
    if not isinstance(sw, Sparse24Weight):
        raise TypeError(f"{name}: expected a lowbit.sparse.Sparse24Weight, got {type(sw).__name__}")


def decompress_24(sw):
    """The dense (N, K) weight (zeros where pruned) a Sparse24Weight stands for."""
    _check_sw(sw)
    return torch.ops.lowbit.sparse24_decompress(sw.kept_values().contiguous(), sw.meta)


# ---------------------------------------------------------------------------------------------
# cuSPARSELt discovery (the C side dlopens $LOWBIT_CUSPARSELT_LIB, then the system's)
# ---------------------------------------------------------------------------------------------
_CSLT_NAMES = ("libcusparseLt.so.0", "libcusparseLt.so")


def _cusparselt_path():
    """Path of libcusparseLt.so.0 from the nvidia-cusparselt-cu13 (or -cu12) wheel, or None."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        for sub in ("cu13/lib", "cusparselt/lib", "cu12/lib"):
            for name in _CSLT_NAMES:
                p = os.path.join(root, sub, name)
                if os.path.exists(p):
                    return p
    return None


_cslt_state = {}


def cusparselt_available():
    """Whether libcusparseLt can be loaded (the wheel's copy, $LOWBIT_CUSPARSELT_LIB, or the
    system's). Only says the library is there; CUDA kernels need a lowbit CUDA build and a GPU."""
    if "ok" not in _cslt_state:
        if not os.environ.get("LOWBIT_CUSPARSELT_LIB"):
            p = _cusparselt_path()
            if p:
                os.environ["LOWBIT_CUSPARSELT_LIB"] = p
        cands = [os.environ.get("LOWBIT_CUSPARSELT_LIB")] + list(_CSLT_NAMES)
        ok = False
        for c in cands:
            if not c:
                continue
            try:
                ctypes.CDLL(c)
                ok = True
                break
            except OSError:
                continue
        _cslt_state["ok"] = ok
    return _cslt_state["ok"]


def _cslt_shape_ok(x2, n, k):
    # cuSPARSELt's 16-bit sizes: structured dims multiples of 32/64 here (conservative), dense
    # leading dims multiples of 8, 16-byte aligned pointers; smaller or odd batches take
    # lowbit's kernel (no padding)
    m = x2.shape[0]
    return n % 32 == 0 and k % 64 == 0 and m % 8 == 0 and m >= 8 and x2.data_ptr() % 16 == 0


def _cslt_packed(sw):
    dev = sw.device
    if sw._cslt is None or sw._cslt[0] != dev:
        sw._cslt = (dev, torch.ops.lowbit.sparse24_cslt_compress(decompress_24(sw)))
    return sw._cslt[1]


class _CsltLinear(torch.autograd.Function):
    """cuSPARSELt forward; backward to x (and bias) through the decompressed weight."""

    @staticmethod
    def forward(ctx, x2, b, sw):
        ctx.sw = sw
        ctx.has_bias = b.numel() > 0
        # the bias is added here rather than through cuSPARSELt's bias pointer (whose dtype rules
        # vary across versions); the op supports it too
        y = torch.ops.lowbit.sparse24_cslt_linear(x2, _cslt_packed(sw), x2.new_empty(0),
                                                  sw.shape[0])
        return y.add_(b) if ctx.has_bias else y

    @staticmethod
    def backward(ctx, g):
        gx = _grad_x(g, ctx.sw.kept_values(), ctx.sw.meta) if ctx.needs_input_grad[0] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return gx, gb, None


# ---------------------------------------------------------------------------------------------
# the product
# ---------------------------------------------------------------------------------------------
def sparse24_linear(x, sw, bias=None, backend="auto"):
    """y = x @ W^T (+ bias) for a Sparse24Weight W of shape (N, K): x (..., K) -> (..., N), in
    x's dtype (which must be W's dtype). Equals F.linear(x, decompress_24(sw), bias) within
    float32 rounding. Differentiable with respect to x, bias and (unquantized) kept values.

    backend (CUDA, float16/bfloat16): "auto" takes cuSPARSELt when it is installed and the shape
    suits it (N % 32, K % 64, M % 8 == 0), else lowbit's gather kernel; "cusparselt" insists
    (RuntimeError naming the library when it is absent); "lowbit" never uses it.
    """
    _check_sw(sw)
    _check_tensor(x, "x")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x: dtype must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dtype != sw.dtype:
        raise TypeError(f"x: dtype {x.dtype} differs from the weight's {sw.dtype}")
    n, k = sw.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x: last dimension must be in_features = {k}, got shape {tuple(x.shape)}")
    if x.device != sw.device:
        raise ValueError(f"x: on {x.device} but the weight is on {sw.device}")
    check_device(x, "x")
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias: dtype {bias.dtype} differs from x's {x.dtype}")
        if bias.shape != (n,) or bias.device != x.device:
            raise ValueError(f"bias: expected shape ({n},) on {x.device}, got "
                             f"{tuple(bias.shape)} on {bias.device}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {BACKENDS}, got {backend!r}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    b = bias.contiguous() if bias is not None else x.new_empty(0)
    if sw.qvalues is not None:
        q = sw.qvalues
        if x.device.type == "cpu":
            fmt, bits, g, sym = q.spec.op_args(k // 2)
            zeros = q.zeros if q.zeros is not None else q.codes.new_empty((n, 0))
            y = torch.ops.lowbit.sparse24_qlinear(x2, q.codes, q.scales, zeros, sw.meta, b, fmt,
                                                  bits, g, sym)
        else:  # no fused CUDA kernel for low-bit kept values: dequantize, then the float path
            y = torch.ops.lowbit.sparse24_linear(x2, dequantize(q), sw.meta, b)
        return y.reshape(*lead, n)
    use_cslt = False
    if x.device.type == "cuda" and backend != "lowbit" and x.dtype != torch.float32:
        if backend == "cusparselt":
            if not cusparselt_available():
                raise RuntimeError("lowbit: cuSPARSELt (libcusparseLt.so.0) is not installed: "
                                   "pip install nvidia-cusparselt-cu13, or set "
                                   "LOWBIT_CUSPARSELT_LIB to the library's path")
            use_cslt = True
        else:
            use_cslt = _cslt_shape_ok(x2, n, k) and cusparselt_available()
    elif backend == "cusparselt":
        raise ValueError("backend: 'cusparselt' needs a float16/bfloat16 CUDA x")
    if use_cslt:
        y = _CsltLinear.apply(x2, b, sw)
    else:
        y = torch.ops.lowbit.sparse24_linear(x2, sw.values, sw.meta, b)
    return y.reshape(*lead, n)


# ---- fake kernels and autograd of the ops ----
@torch.library.register_fake("lowbit::sparse24_linear")
def _linear_fake(x, values, meta, bias):
    return x.new_empty((x.shape[0], values.shape[0]))


@torch.library.register_fake("lowbit::sparse24_qlinear")
def _qlinear_fake(x, codes, scales, zeros, meta, bias, fmt, bits, group_size, symmetric):
    return x.new_empty((x.shape[0], codes.shape[0]))


@torch.library.register_fake("lowbit::sparse24_grad_x")
def _grad_x_fake(g, values, meta):
    return g.new_empty((g.shape[0], 2 * values.shape[1]))


@torch.library.register_fake("lowbit::sparse24_decompress")
def _decompress_fake(values, meta):
    return values.new_empty((values.shape[0], 2 * values.shape[1]))


@torch.library.register_fake("lowbit::sparse24_cslt_compress")
def _cslt_compress_fake(dense):
    ctx = torch.library.get_ctx()
    return dense.new_empty((ctx.new_dynamic_size(),), dtype=torch.uint8)


@torch.library.register_fake("lowbit::sparse24_cslt_linear")
def _cslt_linear_fake(x, packed, bias, N):
    return x.new_empty((x.shape[0], N))


def _linear_setup(ctx, inputs, output):
    x, values, meta, bias = inputs
    ctx.has_bias = bias.numel() > 0
    ctx.save_for_backward(x if values.requires_grad else None, values, meta)


_GRAD_CHUNK_BYTES = 16 << 20
_GRAD_X_OP_MAX_M = 8  # M at or below: lowbit::sparse24_grad_x over the compressed weight


def _grad_x(g, values, meta):
    """grad_y @ W_pruned. On CPU with M <= 8 rows: an op over the compressed weight. Else the
    weight is decompressed (on CPU in row chunks of <= 16 MB, so the
    scratch is reused by the allocator instead of a fresh (page-faulting) N x K buffer per call;
    measured in benchmarks/bench_sparse24.py."""
    n, k2 = values.shape
    if values.device.type == "cpu" and g.shape[0] <= _GRAD_X_OP_MAX_M:
        return torch.ops.lowbit.sparse24_grad_x(g.to(values.dtype).contiguous(), values, meta)
    rows = max(1, _GRAD_CHUNK_BYTES // (2 * k2 * values.element_size()))
    if values.device.type != "cpu" or rows >= n:
        return g @ torch.ops.lowbit.sparse24_decompress(values, meta)
    gx = None
    for r0 in range(0, n, rows):
        wd = torch.ops.lowbit.sparse24_decompress(values[r0:r0 + rows], meta[r0:r0 + rows])
        part = g[:, r0:r0 + rows] @ wd
        gx = part if gx is None else gx.add_(part)
    return gx


def _linear_backward(ctx, g):
    x, values, meta = ctx.saved_tensors
    gx = gv = gb = None
    if ctx.needs_input_grad[0]:
        gx = _grad_x(g, values, meta)
    if ctx.needs_input_grad[1]:
        n, k2 = values.shape
        gw = (g.t() @ x).reshape(n, k2 // 2, 4)
        idx = _indices_from_meta(meta, 2 * k2).reshape(n, k2 // 2, 2)
        gv = gw.gather(-1, idx).reshape(n, k2)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        gb = g.sum(0)
    return gx, gv, None, gb


torch.library.register_autograd("lowbit::sparse24_linear", _linear_backward,
                                setup_context=_linear_setup)


def _qlinear_setup(ctx, inputs, output):
    x, codes, scales, zeros, meta, bias, fmt, bits, group_size, symmetric = inputs
    ctx.has_bias = bias.numel() > 0
    ctx.qargs = (fmt, bits, group_size, symmetric, x.shape[1] // 2, x.dtype)
    ctx.save_for_backward(codes, scales, zeros, meta)


def _qlinear_backward(ctx, g):
    codes, scales, zeros, meta = ctx.saved_tensors
    fmt, bits, group_size, symmetric, k2, dtype = ctx.qargs
    gx = gb = None
    if ctx.needs_input_grad[0]:
        vals = torch.ops.lowbit.dequantize(codes, scales, zeros, fmt, bits, group_size, symmetric,
                                           k2, _ops.DTYPE_CODES[dtype])
        gx = _grad_x(g, vals, meta)
    if ctx.has_bias and ctx.needs_input_grad[5]:
        gb = g.sum(0)
    return gx, None, None, None, None, gb, None, None, None, None


torch.library.register_autograd("lowbit::sparse24_qlinear", _qlinear_backward,
                                setup_context=_qlinear_setup)


# ---------------------------------------------------------------------------------------------
# module and model verb
# ---------------------------------------------------------------------------------------------
class _MaskedWeight(torch.autograd.Function):
    """w * mask forward; backward: the dense gradient (ste=True, straight through to pruned
    weights) or the masked one (ste=False), plus srste_decay * (1 - mask) * w (SR-STE)."""

    @staticmethod
    def forward(ctx, w, mask, ste, decay):
        ctx.save_for_backward(w, mask)
        ctx.ste = ste
        ctx.decay = decay
        return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))

    @staticmethod
    def backward(ctx, g):
        w, mask = ctx.saved_tensors
        gw = g if ctx.ste else torch.where(mask, g, torch.zeros((), dtype=g.dtype, device=g.device))
        if ctx.decay:
            gw = gw + ctx.decay * torch.where(mask, torch.zeros((), dtype=w.dtype, device=w.device), w)
        return gw, None, None, None


class SparseLinear24(nn.Module):
    """A 2:4-sparse nn.Linear.

    mode="train" (default): holds the dense ``weight`` Parameter and a bool ``mask`` buffer; the
    forward uses weight * mask. In training, the mask is recomputed from |weight| (prune_24) every
    ``mask_update_interval`` forward calls (None or 0: fixed). The weight gradient is the dense
    one (``ste=True``, straight through to the pruned weights, so they can come back at the
    next mask update) or the masked one (``ste=False``); ``srste_decay`` lambda adds
    lambda * (1 - mask) * weight to it (SR-STE). x gets its gradient either way.

    mode="inference": holds the compressed weight as buffers ``values`` (N, K/2) and ``meta``
    (lb24 layout), or with ``spec`` the kept values quantized (``codes``, ``scales``, ``zeros``);
    the forward runs sparse24_linear. Buffers round-trip through state_dict.
    """

    def __init__(self, in_features, out_features, bias=True, mode="train",
                 mask_update_interval=1, srste_decay=0.0, ste=True, spec=None, device=None,
                 dtype=None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
        if not isinstance(in_features, int) or in_features <= 0 or in_features % 4:
            raise ValueError(f"in_features: must be a positive multiple of 4, got {in_features!r}")
        if mask_update_interval is not None and (not isinstance(mask_update_interval, int)
                                                 or mask_update_interval < 0):
            raise ValueError(f"mask_update_interval: must be a non-negative int or None, got "
                             f"{mask_update_interval!r}")
        if float(srste_decay) < 0:
            raise ValueError(f"srste_decay: must be >= 0, got {srste_decay!r}")
        if spec is not None:
            check_spec(spec)
            if mode != "inference":
                raise ValueError("spec: quantized kept values need mode='inference'")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.mask_update_interval = mask_update_interval or 0
        self.srste_decay = float(srste_decay)
        self.ste = bool(ste)
        self.spec = spec
        fk = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        n, k = out_features, in_features
        if mode == "train":
            self.weight = nn.Parameter(torch.empty(n, k, **fk))
            nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
            self.register_buffer("mask", _mask_24(self.weight))
            self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=device))
        else:
            mb = (k // 4 + 1) // 2
            self.register_buffer("meta", torch.zeros(n, mb, dtype=torch.uint8, device=device))
            if spec is None:
                self.register_buffer("values", torch.zeros(n, k // 2, **fk))
            else:
                proto = quantize(torch.zeros(n, k // 2, dtype=torch.float32, device="meta"), spec)
                self.register_buffer("codes", torch.zeros(proto.codes.shape, dtype=torch.uint8,
                                                          device=device))
                self.register_buffer("scales", torch.zeros(proto.scales.shape, device=device))
                zs = (n, 0) if proto.zeros is None else tuple(proto.zeros.shape)
                self.register_buffer("zeros", torch.zeros(zs, dtype=torch.uint8, device=device))
            self._wdtype = fk["dtype"]
        self.bias = nn.Parameter(torch.zeros(n, **fk)) if bias else None

    @classmethod
    def from_linear(cls, linear, mode="train", mask_update_interval=1, srste_decay=0.0, ste=True,
                    spec=None):
        """A SparseLinear24 holding linear's weight pruned 2:4 (prune_24) and its bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        _check_24_weight(w.detach(), "linear.weight")
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                mode=mode, mask_update_interval=mask_update_interval, srste_decay=srste_decay,
                ste=ste, spec=spec, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
            if mode == "train":
                m.weight.copy_(w)
                m.mask.copy_(_mask_24(w))
            else:
                m._load_compressed(compress_24(prune_24(w.detach())[0]))
        return m

    def _load_compressed(self, sw):
        self.meta.copy_(sw.meta)
        if self.spec is None:
            self.values.copy_(sw.values)
        else:
            q = quantize(sw.values, self.spec)
            self.codes.copy_(q.codes)
            self.scales.copy_(q.scales)
            if q.zeros is not None:
                self.zeros.copy_(q.zeros)

    def sparse_weight(self):
        """The inference-mode weight as a Sparse24Weight (views of the buffers)."""
        if self.mode != "inference":
            raise ValueError("self: sparse_weight() needs mode='inference' (see to_inference)")
        shape = (self.out_features, self.in_features)
        if self.spec is None:
            sw = Sparse24Weight(self.values, self.meta, shape, self.values.dtype)
        else:
            z = self.zeros if self.zeros.shape[1] > 0 else None
            q = QuantizedWeight(self.codes, self.scales, z, self.spec,
                                (self.out_features, self.in_features // 2), self._wdtype)
            sw = Sparse24Weight(None, self.meta, shape, self._wdtype, q)
        cache = getattr(self, "_cslt_cache", None)
        key = (self.values.data_ptr(), self.values.device) if self.spec is None else None
        if cache is not None and cache[0] == key:
            sw._cslt = cache[1]
        return sw

    def pruned_weight(self):
        """The effective dense weight (weight * mask, or the decompressed weight)."""
        if self.mode == "train":
            return torch.where(self.mask, self.weight.detach(),
                               torch.zeros((), dtype=self.weight.dtype, device=self.weight.device))
        return decompress_24(self.sparse_weight())

    @torch.no_grad()
    def update_mask(self):
        """Recomputes the 2:4 mask from the current |weight| (train mode)."""
        self.mask.copy_(_mask_24(self.weight))

    def to_inference(self, spec=None):
        """A new inference-mode SparseLinear24 with this module's pruned weight (and bias)."""
        w = self.pruned_weight()
        m = SparseLinear24(self.in_features, self.out_features, bias=self.bias is not None,
                           mode="inference", spec=spec, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            if self.bias is not None:
                m.bias.copy_(self.bias)
            m._load_compressed(compress_24(w))
        return m

    def forward(self, x):
        if self.mode == "train":
            if self.training and self.mask_update_interval:
                if int(self.step) % self.mask_update_interval == 0:
                    self.update_mask()
                self.step += 1
            w = _MaskedWeight.apply(self.weight, self.mask, self.ste, self.srste_decay)
            return F.linear(x, w, self.bias)
        sw = self.sparse_weight()
        y = sparse24_linear(x, sw, self.bias)
        if sw._cslt is not None and self.spec is None:
            self._cslt_cache = ((self.values.data_ptr(), self.values.device), sw._cslt)
        return y

    def extra_repr(self):
        s = (f"in_features={self.in_features}, out_features={self.out_features}, "
             f"bias={self.bias is not None}, mode={self.mode!r}")
        if self.mode == "train":
            s += (f", mask_update_interval={self.mask_update_interval}, ste={self.ste}, "
                  f"srste_decay={self.srste_decay}")
        elif self.spec is not None:
            s += f", spec={self.spec.name}"
        return s


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p)
               for p in patterns)


def sparsify_(model, skip=("lm_head",), include=None, mode="train", **kwargs):
    """Replaces, in place, every nn.Linear of ``model`` by a SparseLinear24 (from_linear with
    ``mode`` and ``kwargs``: mask_update_interval, srste_decay, ste, spec) and returns the model.

    ``skip`` / ``include``: fnmatch patterns over qualified module names ("model.layers.0.mlp.
    up_proj"); a pattern also matches any dotted suffix, so "lm_head" skips "lm_head" and
    "model.lm_head", and include=("mlp.*",) selects only the MLP projections of a Llama-family
    model. Raises ValueError if the model already holds a SparseLinear24 (no second application)
    or if a selected layer's in_features is not a multiple of 4 (skip it).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    skip = (skip,) if isinstance(skip, str) else tuple(skip or ())
    include = (include,) if isinstance(include, str) else (None if include is None else tuple(include))
    if isinstance(model, nn.Linear):
        raise ValueError("model: is itself an nn.Linear; use SparseLinear24.from_linear")
    if any(isinstance(m, SparseLinear24) for m in model.modules()):
        raise ValueError("model: already holds SparseLinear24 layers; sparsify_ applies once")
    targets = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or _matches(name, skip):
            continue
        if include is not None and not _matches(name, include):
            continue
        if mod.in_features % 4:
            raise ValueError(f"model: layer {name!r} has in_features={mod.in_features}, not a "
                             f"multiple of 4; add it to skip")
        targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SparseLinear24.from_linear(getattr(parent, child), mode=mode,
                                                          **kwargs))
    return model


__all__ = ["prune_24", "compress_24", "decompress_24", "sparse24_linear", "Sparse24Weight",
           "SparseLinear24", "sparsify_", "cusparselt_available"]
