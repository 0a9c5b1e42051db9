"""python/lowbit/fake_quant.py: the fake_quant op family — its public wrappers fake_quantize
(differentiable, for QAT), quantize -> QuantizedWeight and dequantize, with argument checks that
name the bad argument, and the fake (meta) kernels and autograd formula of its ops
(lowbit::fake_quant, fake_quant_backward, quantize, dequantize)."""
import torch

from . import _autograd
from . import _constants as C
from . import _fakes
from . import _ops  # noqa: F401  (loads the ops registered below)
from ._checks import check_weight
from .qweight import QuantizedWeight, check_qweight
from .spec import QuantSpec, check_spec

STE_CODES = C.STE_CODES


def fake_quantize(w, spec, ste="bitdistiller"):
    """Q(w) of FORMATS.md section 1, differentiable.

    ``ste="bitdistiller"`` (default): the gradient of BitDistiller's plain-PyTorch quantizer as
    FORMATS.md 1.5 pins it: round with identity gradient, the zero point (rne) with none, scales
    not detached (each group's max/min, or max|w|, elements receive the scale gradient, split
    evenly among ties), and the code clamp with the inclusive mask, so a weight whose code is an
    end code (0 or 2^b - 1; -2^(b-1) or 2^(b-1) - 1 when symmetric) keeps its gradient. That is
    torch.clamp's backward up to torch 2.13, the one BitDistiller was trained with. torch >= 2.14
    changed torch.clamp's backward to an open interval, so the same plain-PyTorch code run on
    torch >= 2.14 gets a different gradient: none for every weight on an end code (about 20% of
    the weights at int2-g128) and a different scale gradient at the group extremes. lowbit's
    kernels do not use torch's clamp: the gradient is the same on every torch version.
    ``ste="identity"``: dQ/dw = 1 (scales detached), as torchao does.
    The scales are rounded to ``spec.scale_dtype`` (FORMATS.md 1.6) with identity gradient.
    Returns a tensor of w's shape and dtype.
    """
    check_spec(spec)
    if not isinstance(ste, str) or ste not in STE_CODES:
        raise ValueError(f"ste: must be one of {sorted(STE_CODES)}, got {ste!r}")
    check_weight(w)
    fmt, bits, g, sym = spec.op_args(w.shape[1])
    return torch.ops.lowbit.fake_quant(w.contiguous(), fmt, bits, g, sym, STE_CODES[ste],
                                       spec.scale_code)


def quantize(w, spec):
    """Packs ``w`` into a QuantizedWeight such that ``dequantize(quantize(w, spec))`` equals
    ``fake_quantize(w, spec)`` bit for bit. NaN/Inf in w raise ValueError. The scales are stored
    in float32 holding values exact in ``spec.scale_dtype``. The CPU kernel layout of quant_linear
    is not built here (quant_linear / QuantLinear build it when they need it)."""
    check_spec(spec)
    check_weight(w)
    fmt, bits, g, sym = spec.op_args(w.shape[1])
    try:  # the kernel finds NaN/Inf in its pass over w (a separate isfinite pass cost as much)
        with torch.no_grad():
            codes, scales, zeros = torch.ops.lowbit.quantize(w.contiguous(), fmt, bits, g, sym,
                                                             spec.scale_code)
    except RuntimeError as exc:
        if not str(exc).startswith("w: contains NaN or Inf"):
            raise
        raise ValueError(str(exc)) from None
    if not C.has_zeros(fmt, sym):
        zeros = None
    return QuantizedWeight(codes, scales, zeros, spec, w.shape, w.dtype)


def dequantize(qw):
    """The float tensor (qw.shape, qw.dtype) the packed weight stands for."""
    check_qweight(qw)
    n, k = qw.shape
    fmt, bits, g, sym = qw.spec.op_args(k)
    zeros = qw.zeros if qw.zeros is not None else qw.codes.new_empty((n, 0))
    return torch.ops.lowbit.dequantize(qw.codes, qw.scales, zeros, fmt, bits, g, sym, k,
                                       C.DTYPE_CODES[qw.dtype])


# ---- fake kernels and autograd of the ops ----
# The fakes run the glue's own checks (csrc/ops/fake_quant.c) on the arguments' metadata
# (_fakes), so the meta device and torch.compile raise where the real kernels do.
for _name in ("fake_quant", "fake_quant_backward", "quantize", "dequantize"):
    _fakes.register(_name)


def _fake_quant_setup(ctx, inputs, output):
    w, fmt, bits, group_size, symmetric, ste, *rest = inputs  # scale_dtype may be defaulted
    scale_dtype = rest[0] if rest else 0
    ctx.args = (fmt, bits, group_size, symmetric, scale_dtype)
    ctx.ste = ste
    if ste == STE_CODES["bitdistiller"]:
        ctx.save_for_backward(w)


def _fake_quant_backward(ctx, grad):
    if ctx.ste == STE_CODES["identity"]:  # dQ/dw = 1
        gw = grad
    else:
        (w,) = ctx.saved_tensors
        gw = torch.ops.lowbit.fake_quant_backward(grad.to(w.dtype).contiguous(), w, *ctx.args)
    return gw, None, None, None, None, None, None


def _fake_quant_jvp(inputs, tangents):  # the identity STE's derivative is dQ/dw = 1
    if inputs[_STE_ARG] != STE_CODES["identity"]:
        raise _autograd.forward_ad_error("lowbit.fake_quantize", " with ste='bitdistiller' "
                                         "(ste='identity' supports it)")
    return tangents[0]


_STE_ARG = [a.name for a in torch.ops.lowbit.fake_quant.default._schema.arguments].index("ste")
_autograd.register("fake_quant", "lowbit.fake_quantize", _fake_quant_backward, _fake_quant_setup,
                   jvp=_fake_quant_jvp, double_backward=lambda ctx: ctx.ste == STE_CODES["identity"])

__all__ = ["QuantSpec", "QuantizedWeight", "fake_quantize", "quantize", "dequantize"]
