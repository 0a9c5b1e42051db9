"""python/lowbit/qlinear.py: the qlinear op family — packed low-bit inference: ``quant_linear(x,
qw, bias)`` (y = x W^T + bias with W a QuantizedWeight, differentiable with respect to x and
bias, never W), the ``QuantLinear`` module (``lowbit.nn.QuantLinear``), the CPU kernel layout
builder, and the fake kernels and autograd formula of lowbit::qlinear_pack, qlinear_unpack,
qlinear_dequant_t and quant_linear.

Numerics: y equals ``F.linear(x.float(), dequantize(qw).float(), bias.float())`` up to float32
accumulation order; bfloat16/float16 x is converted to float32, accumulated in float32 and the
result rounded once to x's dtype (the CUDA tensor-core path for M > 16 rounds the dequantised
weights to x's 16-bit dtype first, as a 16-bit F.linear does). The CPU kernels read a regrouped
copy of the codes (``QuantizedWeight.packed`` / ``QuantLinear.packed``, layout in
csrc/layouts.h), built on the first eager CPU call and rebuilt when the codes change; ``codes``
stays the canonical format and the stored state, and scales / zero points are read canonical.
Accuracy modes (``act``, FORMATS.md 4): see quant_linear.
"""
import operator

import torch
from torch import nn

from . import _autograd
from . import _constants as C
from . import _fakes
from . import _ops  # noqa: F401  (loads the ops registered below)
from ._checks import check_activation, check_bias, check_device
from .fake_quant import quantize
from .qweight import QuantizedWeight, check_qweight
from .spec import QuantSpec, check_spec

GRAD_CHUNK_BYTES = 8 << 20  # W^T chunk of the CPU input-gradient path
ACTS = tuple(C.QL_ACT_CODES)


def check_act(act, name="act"):
    """The accuracy mode of FORMATS.md 4: "auto" (default), "float" or "int8"."""
    if not isinstance(act, str) or act not in C.QL_ACT_CODES:
        raise ValueError(f"{name}: must be one of {list(ACTS)}, got {act!r}")
    return act


def build_kernel_layout(codes, spec, K):
    """The packed CPU layout of canonical codes (csrc/layouts.h; returned on the codes' device),
    or None where the group size has none. Scales and zero points have no kernel copy."""
    fmt, bits, g, sym = spec.op_args(K)
    # llama.cpp's block types have none: their kernels read the GGUF blocks in place
    if spec.is_block_type or not C.ql_packable(K, g) or codes.device.type == "meta":
        return None
    with torch.no_grad():
        packed = torch.ops.lowbit.qlinear_pack(codes.detach().cpu().contiguous(), bits, K)
    return packed.to(codes.device)


def _layout(holder, codes, spec, K):
    """holder.packed, the layout of ``codes``, rebuilt whenever the codes tensor was replaced,
    moved or edited in place since it was built (keyed on its storage, shape and version
    counter), so it is never served stale. None off the CPU, under torch.compile (the kernels
    then read the canonical codes: same result, slower) and for group sizes without a layout."""
    if codes.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    # the tensor object itself (an address or id may be reused by a replacement; the current
    # codes are held anyway, so the reference costs nothing until they are replaced), its shape
    # and its version counter
    key = getattr(holder, "_packed_key", None)
    if (holder.packed is None or key is None or key[0] is not codes
            or key[1:] != (tuple(codes.shape), codes._version)):
        holder.packed = build_kernel_layout(codes, spec, K)
        holder._packed_key = (codes, tuple(codes.shape), codes._version)
    return holder.packed


def ensure_kernel_layout(qw):
    """Builds (or rebuilds, if stale) qw.packed (CPU weights only); returns qw."""
    _layout(qw, qw.codes, qw.spec, qw.shape[1])
    return qw


def _check_args(x, qw, bias):
    check_qweight(qw)
    n, k = qw.shape
    check_activation(x, k)
    check_device(x, "x")
    if x.device != qw.device:
        raise ValueError(f"x: is on {x.device} but qw is on {qw.device}")
    check_bias(bias, x, n)


def _run(x, codes, scales, zeros, packed, bias, spec, K, act):
    fmt, bits, g, sym = spec.op_args(K)
    empty_u8 = codes.new_empty((codes.shape[0], 0))
    if x.device.type != "cpu" or packed is None:
        packed = codes.new_empty((0, 0), dtype=torch.int32)
    else:
        codes = codes.new_empty((0, 0))  # one form of the codes: the layout
    b = bias if bias is not None else x.new_empty((0,))
    return torch.ops.lowbit.quant_linear(x.contiguous(), codes, scales,
                                         zeros if zeros is not None else empty_u8, packed,
                                         b.contiguous(), fmt, bits, g, sym, C.QL_ACT_CODES[act])


def quant_linear(x, qw, bias=None, act="auto"):
    """y = x @ dequantize(qw).T + bias for x (..., K) float32/bfloat16/float16 -> (..., N) of
    x's dtype. Gradients flow to x and bias, never to the packed weight. ``act``: the accuracy
    mode of FORMATS.md 4 on the CPU — "float" (float32 products), "auto" (default: the fastest
    kernel within 1e-4 relative error of float; integer dot products with an int8 activation
    plus an int8 residual for INT/FP weights, float for NF), "int8" (int8 activations per
    32-block, llama.cpp's accuracy, within 2e-2). On the CPU the integer modes serve every M
    (the activations quantized once per call); on CUDA they serve M <= 16 and larger batches
    compute in float. llama.cpp's block types (q8_0 .. q6_k): the CPU kernels read the GGUF
    blocks in place; "int8" is integer at every M, "auto" is int8 + residual up to 3 rows and
    float beyond (csrc/cpu/qlinear_blk.h). The first eager call on a CPU weight builds its kernel
    layout (rebuilt if the codes change)."""
    _check_args(x, qw, bias)
    check_act(act)
    return _run(x, qw.codes, qw.scales, qw.zeros, _layout(qw, qw.codes, qw.spec, qw.shape[1]),
                bias, qw.spec, qw.shape[1], act)


def _check_features(v, name):
    try:
        n = operator.index(v) if not isinstance(v, bool) else None
    except TypeError:
        n = None
    if n is None or n <= 0:
        raise ValueError(f"{name}: must be a positive int, got {v!r}")
    return n


class QuantLinear(nn.Module):
    """A frozen linear layer stored packed (``lowbit.nn.QuantLinear``).

    Buffers (so ``.to(device)`` and ``state_dict`` carry them): ``codes``, ``scales``, ``zeros``
    (None unless INT asymmetric): exactly what save_quantized stores. llama.cpp's block types
    (FORMATS.md 1.8): ``codes`` holds the GGUF blocks (their kernels read them in place, no
    kernel layout) and ``scales`` is an empty (N, 0) buffer outside the state. ``bias`` is a Parameter (or
    None). ``act``: quant_linear's accuracy mode. The CPU kernel layout ``packed`` is a derived
    attribute, not state: built on the first CPU forward and rebuilt whenever ``codes`` is
    replaced or edited in place; the kernels read ``scales``/``zeros`` directly. Casting the
    module (``.to(torch.bfloat16)``, ``.half()``) casts the bias only: codes and float32 scales
    are kept, 16-bit activations run, the output has the activation's dtype.
    ``QuantLinear(in, out, spec)`` builds a zero skeleton of the right shapes for
    ``load_state_dict``; ``from_linear`` / ``from_qat`` quantize a trained layer.
    """

    _made_by = "convert_"  # the model verb that makes these layers (lowbit._walk)
    _KEEP_DTYPE = ("codes", "scales", "zeros")  # buffers a dtype cast must not touch

    def __init__(self, in_features, out_features, spec, bias=True, dtype=torch.float32,
                 device=None, act="auto"):
        super().__init__()
        check_spec(spec)
        K = _check_features(in_features, "in_features")
        N = _check_features(out_features, "out_features")
        self.act = check_act(act)
        fmt, bits, g, sym = spec.op_args(K)
        self.in_features, self.out_features, self.spec, self.weight_dtype = K, N, spec, dtype
        G = K // g

        def zeros(shape, dtype):
            return torch.zeros(shape, dtype=dtype, device=device)

        row = C.FORMATS[spec.format]  # the stored form's sizes are the format row's
        self.register_buffer("codes", zeros((N, row.row_bytes(K, bits)), torch.uint8))
        # llama.cpp's block types keep their scales inside the GGUF blocks in codes: their
        # scales buffer is (N, 0), carried but not state (a checkpoint stores the blocks only;
        # zero-size tensors would all look like one shared storage to safetensors writers)
        self.register_buffer("scales", zeros(C.scales_shape(N, G, fmt, sym), torch.float32),
                             persistent=not spec.is_block_type)
        self.register_buffer("zeros", zeros((N, G), torch.uint8) if C.has_zeros(fmt, sym)
                             else None)
        self.packed = None
        self.bias = nn.Parameter(torch.zeros(N, dtype=dtype, device=device)) if bias else None

    def _apply(self, fn, *args, **kwargs):
        # nn.Module.to(dtype) / .half() would cast the float32 scales: keep every stored tensor's
        # dtype and take only the device move from fn
        old = {n: self._buffers.get(n) for n in self._KEEP_DTYPE}
        out = super()._apply(fn, *args, **kwargs)
        for n, t in old.items():
            new = self._buffers.get(n)
            if t is not None and new is not None and new.dtype != t.dtype:
                self._buffers[n] = t.to(new.device)
        return out

    def kernel_layout(self):
        """The CPU kernel layout of the current codes (built or rebuilt now if missing or stale;
        None off the CPU or for group sizes without one)."""
        return _layout(self, self.codes, self.spec, self.in_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state dicts saved before the layout stopped being state carry it: it is derived, drop it
        for b in ("packed", "params") + (("scales",) if self.spec.is_block_type else ()):
            state_dict.pop(prefix + b, None)
        # the values a checkpoint holds are checked against the spec (zero points <= qmax,
        # scales finite, > 0, exact in scale_dtype) before they are copied in; shapes and
        # dtypes are torch's own load checks against the buffers
        from .qweight import check_packed_values

        got = {f: state_dict.get(prefix + f) for f in ("scales", "zeros")}
        check_packed_values(*(t if isinstance(t, torch.Tensor) else None for t in got.values()),
                            self.spec, {f: prefix + f for f in got})
        self.packed = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _load_qw(self, qw):
        self.codes, self.scales, self.zeros = qw.codes, qw.scales, qw.zeros
        self.packed = None

    @classmethod
    def from_weight(cls, weight, spec, bias=None, act="auto"):
        """From a float (out_features, in_features) weight and an optional bias."""
        N, K = weight.shape
        m = cls(K, N, spec, bias=bias is not None, dtype=weight.dtype, device="meta", act=act)
        m._load_qw(quantize(weight.detach(), spec))
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        return m

    @classmethod
    def from_linear(cls, linear, spec, act="auto"):
        """Quantizes an nn.Linear (its bias kept as is)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        return cls.from_weight(linear.weight, spec, linear.bias, act=act)

    @classmethod
    def from_qat(cls, qat_linear, act="auto"):
        """Packs a trained QAT layer: any module with ``.weight`` (full precision), ``.spec``
        (QuantSpec) and ``.bias`` (Tensor or None), e.g. lowbit.nn.QATLinear. The packed weight
        dequantizes to exactly the fake-quantized weight the QAT layer used."""
        for attr in ("weight", "spec"):
            if not hasattr(qat_linear, attr):
                raise TypeError(f"qat_linear: expected a QAT layer with .weight and .spec, "
                                f"{type(qat_linear).__name__} has no .{attr}")
        return cls.from_weight(qat_linear.weight, check_spec(qat_linear.spec, "qat_linear.spec"),
                               getattr(qat_linear, "bias", None), act=act)

    @property
    def qweight(self):
        """The packed weight as a QuantizedWeight (sharing this module's buffers)."""
        qw = QuantizedWeight(self.codes, self.scales, self.zeros, self.spec,
                             (self.out_features, self.in_features), self.weight_dtype)
        qw.packed, qw._packed_key = self.packed, getattr(self, "_packed_key", None)
        return qw

    def forward(self, x):
        check_activation(x, self.in_features, k_label="in_features")
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return _run(x, self.codes, self.scales, self.zeros, self.kernel_layout(), bias, self.spec,
                    self.in_features, check_act(self.act, "act (QuantLinear.act)"))

    @property
    def nbytes(self):
        """Bytes of the packed weight (codes + scales + zero points; bias not included)."""
        return self.qweight.nbytes

    def extra_repr(self):
        s = self.spec
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={s.format}, bits={s.bits}, "
                f"group_size={s.group_size}, symmetric={s.symmetric}, act={self.act}, "
                f"bytes={self.nbytes}, "
                f"bits_per_weight={self.nbytes * 8 / (self.in_features * self.out_features):.3f}")


# ---- fake kernels and autograd of the ops ----
# The fakes run csrc/ops/qlinear.c's own checks on the arguments' metadata (_fakes), so the meta
# device and torch.compile raise where the real kernels do; x's leading dims stay symbolic.
for _name in ("qlinear_pack", "qlinear_unpack", "qlinear_dequant_t"):
    _fakes.register(_name)
_fakes.register("quant_linear", batch={0: -1})


def _quant_linear_setup(ctx, inputs, output):
    x, codes, scales, zeros, packed, bias, fmt, bits, group_size, symmetric, act = inputs
    ctx.args = (fmt, bits, group_size, symmetric, x.shape[-1])
    ctx.x_dtype = x.dtype
    ctx.has_bias = bias.numel() > 0
    ctx.save_for_backward(codes, scales, zeros, packed)


def _quant_linear_backward(ctx, grad):
    """grad_x = grad_y @ W in float32 (the frozen weight gets no gradient), W from the packed CPU
    layout (SIMD dequantisation of W^T) when there is one, else from dequantize;
    grad_bias = grad_y summed over the leading dimensions."""
    codes, scales, zeros, packed = ctx.saved_tensors
    fmt, bits, g, sym, k = ctx.args
    gx = gb = None
    n = scales.shape[0]
    g2 = grad.reshape(-1, n)
    if ctx.needs_input_grad[0]:
        gf = g2.float()
        if packed.numel() > 0 and packed.device.type == "cpu":
            # K-chunks of about 8 MB of W^T: never a full float copy of W (a fresh 64 MB buffer
            # costs more in page faults than the whole product), chunks reused by the allocator
            nb, kblk = C.ql_kblocks(k), C.QL_KBLK
            step = max(1, GRAD_CHUNK_BYTES // (kblk * 4 * C.ql_tiles(n) * C.QL_TILE))
            parts = []
            for kb0 in range(0, nb, step):
                kb1 = min(nb, kb0 + step)
                wt = torch.ops.lowbit.qlinear_dequant_t(packed, scales, zeros, fmt, bits, g, sym,
                                                        n, k, kb0, kb1)
                parts.append(gf @ wt[:min(k, kb1 * kblk) - kb0 * kblk, :n].t())
            gx = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        else:
            w = torch.ops.lowbit.dequantize(codes, scales, zeros, fmt, bits, g, sym, k,
                                            C.DTYPE_CODES[torch.float32])
            gx = gf @ w
        gx = gx.to(ctx.x_dtype).reshape(*grad.shape[:-1], k)
    if ctx.has_bias and ctx.needs_input_grad[5]:
        gb = g2.float().sum(0).to(ctx.x_dtype)
    return gx, None, None, None, None, gb, None, None, None, None, None


_ARGS = [a.name for a in torch.ops.lowbit.quant_linear.default._schema.arguments]
_BIAS_ARG, _ACT_ARG = _ARGS.index("bias"), _ARGS.index("act")  # the tangent is the exact float map
_autograd.register("quant_linear", "lowbit.quant_linear", _quant_linear_backward,
                   _quant_linear_setup, double_backward=True,
                   jvp=_autograd.linear_jvp("quant_linear", (0, _BIAS_ARG), "lowbit.quant_linear",
                                            fixed={_ACT_ARG: C.QL_ACT_CODES["float"]}))

__all__ = ["quant_linear", "QuantLinear", "QuantSpec", "build_kernel_layout"]
