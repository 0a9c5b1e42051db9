"""python/lowbit/kl_loss.py: the self-distillation losses of FORMATS.md section 2 — forward KL,
reverse KL, confidence-aware KL (CAKLD, BitDistiller) and JSD — computed per row in one fused
kernel (torch.ops.lowbit.kl_loss, CPU and CUDA), the fused LM-head variant that never
materialises the student logits, and the CAKLD confidence estimator.

Conventions (all kinds):
  * p = softmax(teacher / tau), q = softmax(student / tau), in float32 whatever the input dtype;
    the gradient flows to the student only (the teacher is a constant) and has no tau^2 factor.
  * Student and teacher may have different float dtypes; the gradient has the student's dtype;
    the loss is a float32 tensor.
  * Rows whose label equals ignore_index contribute 0 and get zero gradient.
  * An entry that is -inf in both student and teacher (a masked vocabulary entry) contributes
    nothing and gets exactly zero gradient. A row whose student or teacher logits are -inf
    everywhere has no distribution (softmax is 0/0): its loss and gradient are NaN, as torch's
    softmax gives, whatever the kind, gamma or beta (mask such rows with labels = ignore_index
    instead), and it still counts in "mean". A NaN in a row makes that row's loss and gradient
    NaN; +inf logits give NaN.
  * CAKLD with gamma 0 or 1 is exactly FKL or RKL; JSD with beta 0 or 1 is exactly 0 (on rows
    that have a distribution).
"""
import math
import numbers

import torch

from . import _autograd
from . import _fakes
from . import _ops  # noqa: F401  (loads torch.ops.lowbit.*)
from ._checks import FLOAT_DTYPES as _FLOAT_DTYPES
from ._checks import check_device
from ._constants import KL_KINDS as KINDS

REDUCTIONS = ("mean", "sum", "batchmean", "none")
_FLT_MAX = float(torch.finfo(torch.float32).max)


# ---------------------------------------------------------------------------------------------
# fake kernels and autograd of the ops (lowbit::kl_loss, kl_loss_backward)
# ---------------------------------------------------------------------------------------------
# The fakes run csrc/ops/kl_loss.c's own checks (kl_check) on the arguments' metadata (_fakes):
# on the meta device / under torch.compile the op raises where the real one does. The rows are
# batch dimensions (symbolic under dynamic shapes). The data-dependent check (logit / temperature
# out of range) cannot be made there.
_fakes.register("kl_loss", batch={0: 1, 1: 1, 2: 1})
_fakes.register("kl_loss_backward", batch={0: 1, 1: 1, 2: 1, 3: 1})


def _kl_loss_setup(ctx, inputs, output):
    (student, teacher, labels, kind, gamma, beta, temperature, ignore_index, has_labels,
     with_grad, grad_scale) = inputs
    ctx.args = (kind, gamma, beta, temperature, ignore_index, has_labels)
    ctx.with_grad = with_grad
    ctx.grad_scale = grad_scale
    ctx.set_materialize_grads(False)  # a gradient into the stored-gradient output must show
    if with_grad:  # gradient stored by the forward (grad_scale * d loss_row / d student)
        ctx.save_for_backward(output[1])
    else:          # recomputed by kl_loss_backward, with the per-row scale folded in
        ctx.save_for_backward(student, teacher, labels)


def _kl_loss_backward(ctx, grad_loss, grad_grad):
    if grad_grad is not None:  # differentiating the returned gradient needs the Hessian
        raise RuntimeError("double backward (a second derivative) is not supported by "
                           "lowbit.kl_div_loss: the gradient output of lowbit::kl_loss is not "
                           "differentiable")
    if grad_loss is None:
        return (None,) * 11
    g = grad_loss.to(torch.float32).contiguous()
    if ctx.with_grad:
        (stored,) = ctx.saved_tensors
        gs = (stored.float() * (g / ctx.grad_scale).unsqueeze(1)).to(stored.dtype)
    else:
        student, teacher, labels = ctx.saved_tensors
        gs = torch.ops.lowbit.kl_loss_backward(g, student, teacher, labels, *ctx.args)
    return gs, None, None, None, None, None, None, None, None, None, None


def _kl_loss_jvp(inputs, tangents):
    """Tangent of the row losses: sum_v (d loss_row / d S_v) * dS_v, with the exact row gradient
    the kernel forms (the teacher is a constant of the loss, as in the backward)."""
    _autograd.check_tangents("kl_loss", "lowbit.kl_div_loss", tangents, (0,))
    if inputs[9]:  # with_grad: the stored gradient's own tangent would need the Hessian
        raise _autograd.forward_ad_error("lowbit.kl_div_loss", " with with_grad=True")
    student = inputs[0]
    _, g = torch.ops.lowbit.kl_loss(*inputs[:9], True, 1.0)
    return (g.float() * tangents[0].float()).sum(-1), student.new_empty((0,))


_autograd.register("kl_loss", "lowbit.kl_div_loss", _kl_loss_backward, _kl_loss_setup,
                   jvp=_kl_loss_jvp)


# ---------------------------------------------------------------------------------------------
# argument checks (each error names the argument)
# ---------------------------------------------------------------------------------------------
def _unit_float(name, v):
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.dtype.is_floating_point:
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1], got {type(v).__name__}")
    v = float(v)
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise ValueError(f"{name}: must be in [0, 1], got {v}")
    return v


def _check_logits(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32, bfloat16 or float16, got {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"{name}: expected a (..., V) tensor, got a 0-d tensor")
    if t.shape[-1] == 0:
        raise ValueError(f"{name}: the vocabulary dimension V must be > 0, got shape "
                         f"{tuple(t.shape)}")
    check_device(t, name)


def _check_args(kind, gamma, beta, temperature, ignore_index, reduction):
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind: must be one of {list(KINDS)}, got {kind!r}")
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {list(REDUCTIONS)}, got {reduction!r}")
    if kind == "cakld":
        if gamma is None:
            raise ValueError("gamma: required for kind='cakld' (the teacher's mean confidence; "
                             "estimate it with lowbit.estimate_gamma / lowbit.GammaEstimator)")
        gamma = _unit_float("gamma", gamma)
    else:
        gamma = 0.0 if gamma is None else _unit_float("gamma", gamma)
    beta = _unit_float("beta", beta)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature: expected a float > 0, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not (temperature > 0.0) or math.isinf(temperature):
        raise ValueError(f"temperature: must be a finite number > 0, got {temperature}")
    if 1.0 / temperature > _FLT_MAX:  # the kernels multiply by 1/temperature in float32
        raise ValueError(f"temperature: {temperature} is too small: 1 / temperature overflows "
                         f"float32 (temperature must be >= {1 / _FLT_MAX:.5g})")
    return KINDS[kind], gamma, beta, temperature, _check_ignore_index(ignore_index)


def _check_ignore_index(ignore_index):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    if not -2 ** 63 <= int(ignore_index) < 2 ** 63:  # compared with int64 labels
        raise ValueError(f"ignore_index: must fit in int64 (labels are int64), got "
                         f"{ignore_index}")
    return int(ignore_index)


def _run_kl(*args):
    """torch.ops.lowbit.kl_loss; a temperature too small for these logits (the kernel's
    data-dependent check) becomes a ValueError naming temperature, like the others."""
    try:
        return torch.ops.lowbit.kl_loss(*args)
    except RuntimeError as exc:
        if "temperature: " not in str(exc):
            raise
        msg = str(exc)
        raise ValueError(msg[msg.index("temperature: "):].splitlines()[0]) from None


def _check_labels(labels, lead_shape, device):
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels: expected a torch.Tensor or None, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels: dtype must be an integer type (int64), got {labels.dtype}")
    if tuple(labels.shape) != tuple(lead_shape):
        raise ValueError(f"labels: expected shape {tuple(lead_shape)} (the logits' shape without "
                         f"V), got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels: must be on the logits' device {device}, got {labels.device}")
    return labels.reshape(-1).to(torch.int64).contiguous()


def _rows(t):
    return t.reshape(-1, t.shape[-1]).contiguous()


def _denominator(reduction, n_rows, first_dim, lab, ignore_index):
    """What the summed row losses are divided by (a python number or a 0-d tensor)."""
    if reduction == "sum":
        return 1
    if reduction == "batchmean":
        return max(int(first_dim), 1)
    # mean over unmasked rows, 0 if none (sum of zeros / 1)
    if lab is None:
        return max(int(n_rows), 1)
    return (lab != ignore_index).sum().clamp_min(1).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------
def kl_div_loss(student_logits, teacher_logits, kind="cakld", gamma=None, beta=0.5,
                temperature=1.0, labels=None, ignore_index=-100, reduction="mean"):
    """Distillation loss between student and teacher logits of shape (..., V), FORMATS.md 2.

    kind: "forward" (KL(p||q)), "reverse" (KL(q||p)), "cakld" (gamma * RKL + (1 - gamma) * FKL;
    ``gamma`` is required — BitDistiller estimates it once beforehand with
    :func:`lowbit.estimate_gamma`; passing None raises ValueError rather than guessing 0.5), or
    "jsd" (``beta`` weights the teacher: m = beta p + (1 - beta) q). ``temperature`` divides
    both logits; no tau^2 factor. ``labels`` (shape (...), integer) masks rows equal to
    ``ignore_index``. reduction: "mean" (over unmasked rows; 0 if there are none), "sum",
    "batchmean" (divided by the first dimension's size, BitDistiller's convention for (B, T, V);
    a 1-D input is one row) or "none" (per-row losses of shape (...)). Returns float32.

    Differentiable with respect to ``student_logits`` only; works under torch.compile
    (fullgraph) since the op has fake and autograd kernels.

    Hugging Face ``Trainer`` drop-in (self-distillation against a frozen teacher)::

        import lowbit, torch, transformers

        class DistillTrainer(transformers.Trainer):
            def __init__(self, *args, teacher, gamma, **kwargs):
                super().__init__(*args, **kwargs)
                self.teacher, self.gamma = teacher.eval(), gamma

            def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
                labels = inputs.pop("labels")
                with torch.no_grad():
                    t_logits = self.teacher(**inputs).logits
                outputs = model(**inputs)
                # causal LM: position i predicts token i+1 — shift the labels, not the logits
                # (slicing the logits would copy them); the last position is masked
                shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
                loss = lowbit.kl_div_loss(outputs.logits, t_logits, kind="cakld",
                                          gamma=self.gamma, labels=shifted)
                return (loss, outputs) if return_outputs else loss

        gamma = lowbit.estimate_gamma(teacher, calibration_batches)   # once, before training
    """
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits: shape {tuple(teacher_logits.shape)} does not match "
                         f"student_logits {tuple(student_logits.shape)}")
    if teacher_logits.device != student_logits.device:
        raise ValueError(f"teacher_logits: must be on the student's device "
                         f"{student_logits.device}, got {teacher_logits.device}")
    k, g, b, tau, ign = _check_args(kind, gamma, beta, temperature, ignore_index, reduction)
    lab = _check_labels(labels, student_logits.shape[:-1], student_logits.device)
    s2 = _rows(student_logits)
    t2 = _rows(teacher_logits.detach())
    lab_arg = lab if lab is not None else s2.new_empty((0,), dtype=torch.int64)
    loss_rows, _ = _run_kl(s2, t2, lab_arg, k, g, b, tau, ign, lab is not None, False, 1.0)
    if reduction == "none":
        return loss_rows.reshape(student_logits.shape[:-1])
    first = student_logits.shape[0] if student_logits.dim() >= 2 else 1
    return loss_rows.sum() / _denominator(reduction, s2.shape[0], first, lab, ign)


# ---------------------------------------------------------------------------------------------
# fused LM head + loss
# ---------------------------------------------------------------------------------------------
# Rows of the kl_loss op per call inside a chunk: its gradient output (sub x V) is copied over
# the chunk's own logits, so a chunk holds two R x V buffers (student, teacher) plus this.
_OP_ROWS = 16

# Rows per chunk by default. The chunk's GEMMs have R rows, and CPU GEMMs lose efficiency below
# ~128 (measured at H=576, V=49152, BT=2048, one thread: 64 rows 9% slower than materialising
# the logits, 128 rows as fast; the old 2^21-logit chunks, 42 rows, 1.3x slower). Memory is
# two R x V buffers + the weight gradient, which both scale with V like the materialised path's,
# so the ratio to it does not depend on V.
_CHUNK_ROWS = 128


def _linear_into(x, w, b, buf):
    """F.linear(x, w, b) written into buf[:rows] (one buffer reused by every chunk: no allocator
    churn, a fixed peak); plain F.linear under autocast, whose dtype rules out= would bypass."""
    if torch.is_autocast_enabled(x.device.type) or buf.dtype != x.dtype or w.dtype != x.dtype \
            or (b is not None and b.dtype != x.dtype):
        return torch.nn.functional.linear(x, w, b).contiguous()
    out = buf[:x.shape[0]]
    if b is None:
        return torch.mm(x, w.t(), out=out)
    return torch.addmm(b, x, w.t(), out=out)


class _FusedLinearKL(torch.autograd.Function):
    """Loss and gradients for (hidden, weight, bias) computed chunk by chunk in the forward; the
    backward only scales them by the upstream (scalar) gradient.

    Per chunk of R rows: student logits S = h W^T + b and teacher logits T (R x V each, one GEMM
    of R rows — small-M GEMMs are what costs time on CPU), the kl_loss op over sub-blocks of
    _OP_ROWS rows writing each block's logit gradient over S in place, then grad_h = G W and
    grad_W += G^T h. Nothing is recomputed: 4 GEMMs of N x V x H, like materialising (a
    vocabulary-blocked two-pass form would need 6)."""

    @staticmethod
    def forward(ctx, h, w, bias, t_logits, t_h, t_w, t_bias, lab, k, g, b, tau, ign, reduction,
                first, chunk):
        n, _ = h.shape
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], \
            bias is not None and ctx.needs_input_grad[2]
        need_any = need_h or need_w or need_b  # no gradient wanted (e.g. evaluation): loss only
        denom = _denominator(reduction, n, first, lab, ign)
        scale = (1.0 / denom) if not isinstance(denom, torch.Tensor) else None
        if scale is None:
            scale = float(1.0 / denom)  # one host sync per call (mean over unmasked rows)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        empty_lab = h.new_empty((0,), dtype=torch.int64)
        rows = min(n, chunk)
        s_buf = h.new_empty((rows, w.shape[0]))
        t_buf = None if t_logits is not None else t_h.new_empty((rows, t_w.shape[0]))
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            hc = h[s:e]
            logits = _linear_into(hc, w, bias, s_buf)
            if t_logits is not None:
                tl = t_logits[s:e]
            else:
                tl = _linear_into(t_h[s:e], t_w, t_bias, t_buf)
            for u in range(0, e - s, _OP_ROWS):
                v = min(e - s, u + _OP_ROWS)
                lc = lab[s + u:s + v] if lab is not None else empty_lab
                loss_rows, gl = torch.ops.lowbit.kl_loss(logits[u:v], tl[u:v], lc, k, g, b, tau,
                                                         ign, lab is not None, need_any, scale)
                total += loss_rows.sum()
                if need_any:
                    logits[u:v] = gl  # these logits are consumed: reuse their memory
                del gl
            del tl
            if not need_any:
                continue
            gl = logits
            if need_h:
                if gl.dtype == w.dtype == grad_h.dtype:
                    torch.mm(gl, w, out=grad_h[s:e])
                else:  # autocast / mixed dtypes: let mm pick its dtype, then cast on copy
                    grad_h[s:e] = gl @ w
            if need_w:
                if gl.dtype == torch.float32 and hc.dtype == torch.float32:
                    grad_w.addmm_(gl.t(), hc)
                else:
                    grad_w.addmm_(gl.t().float(), hc.float())
            if need_b:
                grad_b += gl.float().sum(0)
            del gl, logits
        del s_buf, t_buf
        # kept on ctx, not saved: the backward scales them in place (no second weight-sized
        # buffer) and drops them, so a second backward through the same graph is refused
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (w.dtype, None if bias is None else bias.dtype)
        # what the gradients depend on, for the error of a second derivative (references only:
        # nothing is recomputed from them, so no saved-tensor version check either)
        ctx.lb_links = tuple(t for t in (h, w, bias) if t is not None and t.requires_grad)
        return total * scale

    @staticmethod
    @_autograd.once_differentiable("lowbit.fused_linear_kl_loss")
    def backward(ctx, go):
        if ctx.grads is None:
            raise RuntimeError("fused_linear_kl_loss: backward can run only once per forward "
                               "(its gradients are formed in the forward and consumed here)")
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None
        wdt, bdt = ctx.dtypes
        gh = None if grad_h is None else grad_h.mul_(go.to(grad_h.dtype))
        gw = None if grad_w is None else grad_w.mul_(go).to(wdt)
        gb = None if grad_b is None else grad_b.mul_(go).to(bdt)
        return (gh, gw, gb) + (None,) * 13


def _check_fused_parts(student_hidden, lm_head_weight, student_bias, teacher_logits,
                       teacher_hidden, teacher_weight, teacher_bias):
    """What fused_linear_kl_loss's body takes for granted: every tensor on
    student_hidden's device; outside autocast each linear's input, weight and bias of one dtype
    (F.linear's message names none of them); teacher_bias of shape (V,) (a (1,) or (V, 1) bias
    would otherwise broadcast silently). Runs before the per-argument checks below."""
    parts = {"lm_head_weight": lm_head_weight, "student_bias": student_bias,
             "teacher_logits": teacher_logits, "teacher_hidden": teacher_hidden,
             "teacher_weight": teacher_weight, "teacher_bias": teacher_bias}
    if not isinstance(student_hidden, torch.Tensor):
        return  # _check_logits names it
    for name, t in parts.items():
        if isinstance(t, torch.Tensor) and t.device != student_hidden.device:
            raise ValueError(f"{name}: is on {t.device} but student_hidden is on "
                             f"{student_hidden.device} (every tensor must be on one device)")
    if not torch.is_autocast_enabled(student_hidden.device.type):  # autocast casts them itself
        for inp, names in ((student_hidden, ("lm_head_weight", "student_bias")),
                           (teacher_hidden, ("teacher_weight", "teacher_bias"))):
            for name in names:
                t = parts[name]
                if isinstance(inp, torch.Tensor) and isinstance(t, torch.Tensor) and \
                        t.dtype != inp.dtype:
                    src = "student_hidden" if inp is student_hidden else "teacher_hidden"
                    raise TypeError(f"{name}: dtype {t.dtype} differs from {src}'s {inp.dtype} "
                                    f"(cast them to one dtype, or run under torch.autocast)")
    if isinstance(teacher_bias, torch.Tensor) and isinstance(lm_head_weight, torch.Tensor) and \
            tuple(teacher_bias.shape) != (lm_head_weight.shape[0],):
        raise ValueError(f"teacher_bias: expected shape ({lm_head_weight.shape[0]},), got "
                         f"{tuple(teacher_bias.shape)}")


def fused_linear_kl_loss(student_hidden, lm_head_weight, teacher_logits=None, *,
                         teacher_hidden=None, teacher_weight=None, student_bias=None,
                         teacher_bias=None, kind="cakld", gamma=None, beta=0.5, temperature=1.0,
                         labels=None, ignore_index=-100, reduction="mean", chunk_size=None):
    """``kl_div_loss(F.linear(student_hidden, lm_head_weight, student_bias), teacher, ...)``
    without ever materialising the full student logits: tokens are processed ``chunk_size``
    rows at a time (default 128), each chunk's loss and its gradients for the hidden states, the
    head weight (accumulated in float32) and the bias are computed in the forward, and the
    backward scales them by the upstream gradient. Peak extra memory: two chunk_size x V logit
    buffers plus the float32 weight gradient (smaller chunks: less memory, slower GEMMs).

    The teacher is either ``teacher_logits`` (..., V), or ``teacher_hidden`` (..., H_t) with
    ``teacher_weight`` (V, H_t) (and optional ``teacher_bias``), whose logits are also made one
    chunk at a time. student_hidden: (..., H); lm_head_weight: (V, H). reduction: "mean", "sum"
    or "batchmean" ("none" is not available here: the gradients are formed in the forward).
    Other arguments as in :func:`kl_div_loss`. Returns a float32 scalar.
    """
    _check_fused_parts(student_hidden, lm_head_weight, student_bias, teacher_logits,
                       teacher_hidden, teacher_weight, teacher_bias)
    _check_logits(student_hidden, "student_hidden")
    _check_logits(lm_head_weight, "lm_head_weight")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(f"lm_head_weight: expected (V, {student_hidden.shape[-1]}), got "
                         f"{tuple(lm_head_weight.shape)}")
    V = lm_head_weight.shape[0]
    if V == 0:
        raise ValueError("lm_head_weight: the vocabulary dimension V must be > 0")
    if student_bias is not None:
        _check_logits(student_bias, "student_bias")
        if tuple(student_bias.shape) != (V,):
            raise ValueError(f"student_bias: expected shape ({V},), got "
                             f"{tuple(student_bias.shape)}")
    lead = student_hidden.shape[:-1]
    if (teacher_logits is None) == (teacher_hidden is None):
        raise ValueError("teacher_logits: give either teacher_logits or teacher_hidden + "
                         "teacher_weight (exactly one)")
    if teacher_logits is not None:
        _check_logits(teacher_logits, "teacher_logits")
        if tuple(teacher_logits.shape) != tuple(lead) + (V,):
            raise ValueError(f"teacher_logits: expected shape {tuple(lead) + (V,)}, got "
                             f"{tuple(teacher_logits.shape)}")
        t_logits, t_h, t_w, t_b = _rows(teacher_logits.detach()), None, None, None
    else:
        _check_logits(teacher_hidden, "teacher_hidden")
        if teacher_weight is None:
            raise ValueError("teacher_weight: required with teacher_hidden")
        _check_logits(teacher_weight, "teacher_weight")
        if tuple(teacher_hidden.shape[:-1]) != tuple(lead):
            raise ValueError(f"teacher_hidden: expected leading shape {tuple(lead)}, got "
                             f"{tuple(teacher_hidden.shape)}")
        if teacher_weight.dim() != 2 or tuple(teacher_weight.shape) != \
                (V, teacher_hidden.shape[-1]):
            raise ValueError(f"teacher_weight: expected ({V}, {teacher_hidden.shape[-1]}), got "
                             f"{tuple(teacher_weight.shape)}")
        if teacher_bias is not None:
            _check_logits(teacher_bias, "teacher_bias")
        t_logits = None
        t_h = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
        t_w = teacher_weight.detach()
        t_b = None if teacher_bias is None else teacher_bias.detach()
    k, g, b, tau, ign = _check_args(kind, gamma, beta, temperature, ignore_index, reduction)
    if reduction == "none":
        raise ValueError("reduction: 'none' is not supported by fused_linear_kl_loss "
                         "(use 'mean', 'sum' or 'batchmean')")
    lab = _check_labels(labels, lead, student_hidden.device)
    if chunk_size is None:
        chunk_size = _CHUNK_ROWS
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or \
            chunk_size <= 0:
        raise ValueError(f"chunk_size: must be a positive int, got {chunk_size!r}")
    h2 = student_hidden.reshape(-1, student_hidden.shape[-1])
    first = student_hidden.shape[0] if student_hidden.dim() >= 2 else 1
    return _FusedLinearKL.apply(h2, lm_head_weight, student_bias, t_logits, t_h, t_w, t_b, lab,
                                k, g, b, tau, ign, reduction, first, int(chunk_size))


# ---------------------------------------------------------------------------------------------
# CAKLD confidence
# ---------------------------------------------------------------------------------------------
class GammaEstimator:
    """Streaming estimate of the CAKLD confidence gamma (FORMATS.md section 2).

    ``update(teacher_logits, labels)`` per batch ((..., V) logits; labels (...) already aligned
    with the logits, positions equal to ``ignore_index`` excluded); ``value`` is the mean over
    every unmasked position seen of p_T(label) (method "target", the paper's definition) or of
    max_v p_T(v) (method "max"; labels optional then). When torch.distributed is initialised,
    ``value`` all-reduces the sum and the count over the ranks first, so every rank gets the
    global mean over the true number of positions (not a mean of per-rank means).
    """

    def __init__(self, method="target", ignore_index=-100, chunk_rows=4096):
        if method not in ("target", "max"):
            raise ValueError(f"method: must be 'target' or 'max', got {method!r}")
        self.ignore_index = _check_ignore_index(ignore_index)
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral):
            raise TypeError(f"chunk_rows: expected an int, got {type(chunk_rows).__name__}")
        if chunk_rows <= 0:
            raise ValueError(f"chunk_rows: must be a positive int, got {chunk_rows}")
        self.method = method
        self.chunk_rows = int(chunk_rows)
        self.reset()

    def reset(self):
        self._sum = None
        self._count = None

    @torch.no_grad()
    def update(self, teacher_logits, labels=None):
        _check_logits(teacher_logits, "teacher_logits")
        if labels is None and self.method == "target":
            raise ValueError("labels: required for method='target'")
        V = teacher_logits.shape[-1]
        t2 = teacher_logits.detach().reshape(-1, V)
        lab = _check_labels(labels, teacher_logits.shape[:-1], teacher_logits.device)
        if self._sum is None:
            self._sum = torch.zeros((), dtype=torch.float64, device=t2.device)
            self._count = torch.zeros((), dtype=torch.float64, device=t2.device)
        for s in range(0, t2.shape[0], self.chunk_rows):
            tc = t2[s:s + self.chunk_rows].float()
            lse = torch.logsumexp(tc, dim=-1)
            if lab is not None:
                lc = lab[s:s + self.chunk_rows]
                keep = lc != self.ignore_index
                if self.method == "target":
                    bad = keep & ((lc < 0) | (lc >= V))
                    if bool(bad.any()):
                        raise ValueError(f"labels: values must be in [0, {V}) or ignore_index")
            else:
                keep = torch.ones(tc.shape[0], dtype=torch.bool, device=tc.device)
            if self.method == "target":
                top = tc.gather(1, lc.clamp(0, V - 1).unsqueeze(1)).squeeze(1)
            else:
                top = tc.amax(dim=-1)
            conf = torch.exp(top - lse).double()
            self._sum += torch.where(keep, conf, torch.zeros_like(conf)).sum()
            self._count += keep.sum().double()
        return self

    @property
    def count(self):
        """Unmasked positions seen (on this rank)."""
        return 0 if self._count is None else int(self._count.item())

    @property
    def value(self):
        s = torch.zeros((), dtype=torch.float64) if self._sum is None else self._sum
        c = torch.zeros((), dtype=torch.float64) if self._count is None else self._count
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dev = s.device
            if dist.get_backend() == "nccl":
                dev = torch.device("cuda", torch.cuda.current_device())
            buf = torch.stack([s, c]).to(dev)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            s, c = buf[0], buf[1]
        if float(c) == 0:
            raise ValueError("GammaEstimator: no unmasked positions seen; call update() first")
        return float(s / c)


@torch.no_grad()
def estimate_gamma(model, batches, method="target", ignore_index=-100, shift_labels=True):
    """gamma for CAKLD from a teacher and some batches: for each batch (a dict of model inputs
    holding "labels", or an (inputs_dict, labels) pair), runs ``model(**inputs)`` (labels not
    passed), takes ``.logits`` (or the output itself / its first element), aligns the labels for
    a causal LM when ``shift_labels`` (logits[:, :-1] predict labels[:, 1:]), and feeds a
    :class:`GammaEstimator`. Returns the float; averaged across ranks under torch.distributed."""
    est = GammaEstimator(method=method, ignore_index=ignore_index)
    for batch in batches:
        if isinstance(batch, dict):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            labels = batch.get("labels")
        else:
            inputs, labels = batch
        out = model(**inputs)
        logits = getattr(out, "logits", None)
        if logits is None:
            logits = out[0] if isinstance(out, (tuple, list)) else out
        if shift_labels and labels is not None:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        est.update(logits, labels)
    return est.value


class DistillLoss(torch.nn.Module):
    """Module form of :func:`lowbit.kl_div_loss`: the loss settings are fixed at construction,
    ``forward(student_logits, teacher_logits, labels=None)`` returns the loss.

        crit = lowbit.nn.DistillLoss(kind="cakld", gamma=0.7, temperature=1.0)
        loss = crit(student_logits, teacher_logits, labels)
    """

    def __init__(self, kind="cakld", gamma=None, beta=0.5, temperature=1.0, ignore_index=-100,
                 reduction="mean"):
        super().__init__()
        from .kl_loss import _check_args

        _check_args(kind, gamma, beta, temperature, ignore_index, reduction)  # fail early
        self.kind, self.gamma, self.beta = kind, gamma, beta
        self.temperature, self.ignore_index, self.reduction = temperature, ignore_index, reduction

    def forward(self, student_logits, teacher_logits, labels=None):
        return kl_div_loss(student_logits, teacher_logits, kind=self.kind, gamma=self.gamma,
                           beta=self.beta, temperature=self.temperature, labels=labels,
                           ignore_index=self.ignore_index, reduction=self.reduction)

    def extra_repr(self):
        return (f"kind={self.kind!r}, gamma={self.gamma}, beta={self.beta}, "
                f"temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")


__all__ = ["kl_div_loss", "fused_linear_kl_loss", "GammaEstimator", "estimate_gamma",
           "DistillLoss"]
