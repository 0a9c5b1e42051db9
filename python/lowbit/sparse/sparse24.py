"""python/lowbit/sparse/sparse24.py: the sparse24 op family's product — sparse24_linear (y = x
W^T + bias for a 2:4 Sparse24Weight W: lowbit's kernels, or cuSPARSELt on CUDA), its backward to
x, and the fake kernels and autograd formulas of every lowbit::sparse24_* op.

The compressed layout ("lb24") is documented in csrc/ops/sparse24.h and lives in Python in
sparse24_weight.py. On CUDA, float16/bfloat16 products go through cuSPARSELt (loaded at run time,
see cusparselt.py) when the shape suits it; lowbit's own gather kernel does the rest.
"""
import torch

from .. import _constants as C
from .. import _autograd
from .. import _fakes
from .. import _ops  # noqa: F401  (loads the ops registered below)
from .._checks import check_activation, check_bias, check_device
from ..fake_quant import dequantize
from . import cusparselt
from .sparse24_weight import check_sw, decompress_24, indices_from_meta

BACKENDS = ("auto", "lowbit", "cusparselt")


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
        ctx.m, ctx.dtype = x2.shape[0], x2.dtype
        # the bias is added here rather than through cuSPARSELt's bias pointer (whose dtype rules
        # vary across versions); the op supports it too
        # sw.meta: the op sets the outputs a NaN/inf of x at a pruned position makes NaN
        y = torch.ops.lowbit.sparse24_cslt_linear(x2, _cslt_packed(sw), sw.meta,
                                                  x2.new_empty(0), sw.shape[0])
        return y.add_(b) if ctx.has_bias else y

    @staticmethod
    @_autograd.once_differentiable("lowbit.sparse.sparse24_linear")
    def backward(ctx, g):
        gx = _grad_x(g, ctx.sw.kept_values(), ctx.sw.meta) if ctx.needs_input_grad[0] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return gx, gb, None

    @staticmethod
    def jvp(ctx, tx, tb, _):
        """Linear in (x, bias): the same product on the tangents."""
        n = ctx.sw.shape[0]
        y = torch.zeros((ctx.m, n), dtype=ctx.dtype, device=ctx.sw.device)
        if tx is not None:
            y = torch.ops.lowbit.sparse24_cslt_linear(tx.contiguous(), _cslt_packed(ctx.sw),
                                                      ctx.sw.meta, tx.new_empty(0), n)
        return y + tb if tb is not None and ctx.has_bias else y


def sparse24_linear(x, sw, bias=None, backend="auto"):
    """y = x @ W^T (+ bias) for a Sparse24Weight W of shape (N, K): x (..., K) -> (..., N), in
    x's dtype (which must be W's dtype). Equals F.linear(x, decompress_24(sw), bias) within
    float32 rounding, inf/NaN included: a non-finite x that meets a pruned weight gives NaN
    (0 * inf) as F.linear does, on every path (cuSPARSELt included).
    Differentiable with respect to x, bias and (unquantized) kept values.

    backend (CUDA, float16/bfloat16): "auto" takes cuSPARSELt when it is installed and the shape
    suits it (N % 32, K % 64, M % 8 == 0), else lowbit's gather kernel; "cusparselt" insists
    (RuntimeError naming the library when it is absent); "lowbit" never uses it.
    """
    check_sw(sw)
    n, k = sw.shape
    check_activation(x, k, k_label="in_features")
    if x.dtype != sw.dtype:
        raise TypeError(f"x: dtype {x.dtype} differs from the weight's {sw.dtype}")
    if x.device != sw.device:
        raise ValueError(f"x: on {x.device} but the weight is on {sw.device}")
    check_device(x, "x")
    check_bias(bias, x, n)
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
            cusparselt.require()
            use_cslt = True
        else:
            use_cslt = _cslt_shape_ok(x2, n, k) and cusparselt.cusparselt_available()
    elif backend == "cusparselt":
        raise ValueError("backend: 'cusparselt' needs a float16/bfloat16 CUDA x")
    if use_cslt:
        y = _CsltLinear.apply(x2, b, sw)
    else:
        y = torch.ops.lowbit.sparse24_linear(x2, sw.values, sw.meta, b)
    return y.reshape(*lead, n)


# ---- fake kernels and autograd of the ops ----
# The fakes run the C glue's own argument checks (csrc/ops/sparse24.c) on the arguments' metadata
# (_fakes; meta's content aside, which a fake cannot read), so the meta device and torch.compile
# raise where the real kernels do; x's rows stay symbolic.
for _name, _batch in (("sparse24_linear", {0: 1}), ("sparse24_qlinear", {0: 1}),
                      ("sparse24_grad_x", None), ("sparse24_decompress", None),
                      ("sparse24_cslt_linear", {0: 1})):
    _fakes.register(_name, batch=_batch)


def _cslt_compress_results(args, reported):
    """cuSPARSELt's compressed size is the library's business: a dynamic size."""
    ctx = torch.library.get_ctx()
    return args[0].new_empty((ctx.new_dynamic_size(),), dtype=torch.uint8)


_fakes.register("sparse24_cslt_compress", results=_cslt_compress_results)


def _linear_setup(ctx, inputs, output):
    x, values, meta, bias = inputs
    ctx.has_bias = bias.numel() > 0
    ctx.save_for_backward(x if values.requires_grad else None, values, meta)


_GRAD_CHUNK_BYTES = 16 << 20
_GRAD_X_OP_MAX_M = _ops._C.S24_GRAD_X_MAX_M  # M at or below: sparse24_grad_x (compressed form)


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
        idx = indices_from_meta(meta, 2 * k2).reshape(n, k2 // 2, 2)
        gv = gw.gather(-1, idx).reshape(n, k2)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        gb = g.sum(0)
    return gx, gv, None, gb


def _linear_jvp(inputs, tangents):
    """y is bilinear in (x, values) and linear in bias: dy = op(dx, v, db) + op(x, dv)."""
    x, values, meta, bias = inputs
    tx, tv, _, tb = tangents
    _autograd.check_tangents("sparse24_linear", "lowbit.sparse.sparse24_linear", tangents,
                             (0, 1, 3))
    op = torch.ops.lowbit.sparse24_linear
    y = None
    if tx is not None or tb is not None:
        y = op(tx if tx is not None else torch.zeros_like(x), values, meta,
               tb if tb is not None else torch.zeros_like(bias))
    if tv is not None:
        yv = op(x, tv, meta, x.new_empty(0))
        y = yv if y is None else y + yv
    return y


_autograd.register("sparse24_linear", "lowbit.sparse.sparse24_linear", _linear_backward,
                   _linear_setup, jvp=_linear_jvp)


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
                                           k2, C.DTYPE_CODES[dtype])
        gx = _grad_x(g, vals, meta)
    if ctx.has_bias and ctx.needs_input_grad[5]:
        gb = g.sum(0)
    return gx, None, None, None, None, gb, None, None, None, None


_autograd.register("sparse24_qlinear", "lowbit.sparse.sparse24_linear", _qlinear_backward,
                   _qlinear_setup, jvp=_autograd.linear_jvp("sparse24_qlinear", (0, 5),
                                                            "lowbit.sparse.sparse24_linear"))


def _decompress_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _decompress_backward(ctx, g):
    """The dense gradient gathered at the kept positions (decompress is a scatter)."""
    (meta,) = ctx.saved_tensors
    n, k = g.shape
    idx = indices_from_meta(meta, k).reshape(n, k // 4, 2)
    return g.reshape(n, k // 4, 4).gather(-1, idx).reshape(n, k // 2), None


_autograd.register("sparse24_decompress", "lowbit.sparse.decompress_24", _decompress_backward,
                   _decompress_setup, double_backward=True,
                   jvp=_autograd.linear_jvp("sparse24_decompress", (0,),
                                            "lowbit.sparse.decompress_24"))

__all__ = ["sparse24_linear", "BACKENDS"]
