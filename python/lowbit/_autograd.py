"""python/lowbit/_autograd.py: how every torch.ops.lowbit.* op meets autograd — the one
registration helper the op families use instead of torch.library.register_autograd. On top of
the backward formula it gives each op a forward-mode (jvp) rule or a clear "not supported"
error, refuses double backward where the backward is not itself differentiable (instead of
torch's silent zero), and covers every op without a formula so a gradient or tangent reaching
it raises instead of vanishing. The errors name the public function (e.g. lowbit.kl_div_loss).

torch.library.register_autograd builds an autograd.Function without a jvp, and its kernel
bypasses the Function whenever no input requires grad, so dual tensors (forward AD,
torch.func.jvp) ran straight through: a None or all-zero tangent. Here the kernel also enters
the Function when an input carries a tangent, and the Function has setup_context / jvp, so
both torch.autograd.forward_ad and torch.func transforms reach the rule."""
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import _C
from torch._functorch.utils import enable_single_level_autograd_function

from . import _ops  # noqa: F401  (the ops must exist before their kernels are registered)

_LIB = torch.library.Library("lowbit", "IMPL")  # kept for the process: deleting deregisters
_REGISTERED = {}  # op name -> public name, for cover_unregistered and the tests


@dataclass
class _Meta:
    keyset: object
    tangents: tuple  # per input: whether it carries a forward-AD tangent (None: none does)
    functorch: bool  # called inside a torch.func transform's layer


def _tangent_mask(args):
    """Which inputs carry a tangent. The C++ Function hands jvp zeros for every other float
    input, so the mask is taken here, where the duals are still visible."""
    if fwAD._current_level < 0:
        return None
    mask = tuple(isinstance(a, torch.Tensor) and fwAD.unpack_dual(a).tangent is not None
                 for a in args)
    return mask if any(mask) else None


def forward_ad_error(public, why=""):
    return RuntimeError(f"forward-mode AD is not supported by {public}{why} (torch.func.jvp / "
                        f"torch.autograd.forward_ad would otherwise get a wrong tangent)")


def _delay_error(grads, msg, links=()):
    """grads, each made to raise ``msg`` if it is differentiated again (the mechanism of
    torch.autograd.function.once_differentiable, with a message naming the op). ``links``: the
    tensors the grads really depend on (the incoming grads, the saved inputs); the error node
    takes them as inputs too, so torch.autograd.grad(g, w) finds a path to w and raises
    instead of calling w unused."""
    single = not isinstance(grads, tuple)
    outs = (grads,) if single else grads

    def fake_requires_grad(v):
        if isinstance(v, torch.Tensor):
            v = v.detach()
            v.requires_grad = True
        return v

    links = [t for t in links if isinstance(t, torch.Tensor) and t.requires_grad]
    err = _C._functions.DelayedError(msg.encode(), len(outs) + len(links))
    res = err(*[fake_requires_grad(v) for v in outs], *links)
    res = (res if isinstance(res, tuple) else (res,))[:len(outs)]
    return res[0] if single else tuple(res)


def _links(ctx, grads):
    # ctx.lb_links: inputs a Function's gradients depend on without saving them
    return [*grads, *ctx.saved_tensors, *getattr(ctx, "lb_links", ())]


def _apply(fn, *args):
    if not args[-1].functorch:
        return super(torch.autograd.Function, fn).apply(*args)
    # inside a torch.func transform's layer: a single-level Function per layer, as functorch's
    # own autograd.Function support does once it reaches a layer
    # (torch/_functorch/autograd_function.py, generate_single_level_function). The class must
    # be a _SingleLevelFunction, not a Function: from torch 2.14 the C apply itself routes a
    # Function under active transforms to custom_function_call, which has no kernel here.
    with enable_single_level_autograd_function():
        return fn._lb_single.apply(*args)


def register(name, public, backward=None, setup_context=None, *, jvp=None, double_backward=False):
    """Registers the Autograd kernel of lowbit::``name`` (``public``: the function users call).

    backward(ctx, *grads) / setup_context(ctx, inputs, output): as for
    torch.library.register_autograd; backward None: the op is not differentiable, and a
    gradient reaching it raises. jvp(inputs, tangents) -> the output tangent(s) (tangents[i] is
    None where input i has none); None: forward AD raises. double_backward: True when the
    backward is itself differentiable exactly (built from differentiable torch ops), False to
    raise on a second derivative, or a predicate of ctx."""
    op = getattr(torch.ops.lowbit, name).default
    no_grad_msg = f"{public} is not differentiable (lowbit::{name} has no gradient formula)"
    twice_msg = (f"double backward (a second derivative) is not supported by {public}: its "
                 f"backward is not itself differentiable")

    def forward(*args):
        meta = args[-1]
        if meta.functorch:  # the layers below must still record (Function.apply turned it off)
            with torch.enable_grad(), fwAD._set_fwd_grad_enabled(True), \
                    _C._AutoDispatchBelowAutograd():
                return op.redispatch(meta.keyset & _C._after_autograd_keyset, *args[:-1])
        with _C._AutoDispatchBelowAutograd():
            return op.redispatch(meta.keyset & _C._after_autograd_keyset, *args[:-1])

    def setup(ctx, inputs, output):
        ctx.lb_functorch = inputs[-1].functorch
        if inputs[-1].tangents is not None:
            ctx.lb_inputs, ctx.lb_tangent_mask = inputs[:-1], inputs[-1].tangents
        if setup_context is not None:
            setup_context(ctx, inputs[:-1], output)

    def backward_fn(ctx, *grads):
        if backward is None:
            raise RuntimeError(no_grad_msg)
        twice = double_backward(ctx) if callable(double_backward) else double_backward
        prev = ctx.needs_input_grad
        ctx.needs_input_grad = prev[:-1]
        try:
            if twice or not torch.is_grad_enabled():
                res = backward(ctx, *grads)
            elif ctx.lb_functorch:
                # torch.func.grad of a grad: the layer below records this backward's ops, and
                # its raw ops (fake_quant_backward, kl_loss_backward, ...) are the covered,
                # not-differentiable ones, so the outer derivative raises there
                res = backward(ctx, *grads)
            else:  # create_graph: the results must refuse a second differentiation
                with torch.no_grad():
                    res = backward(ctx, *grads)
                res = _delay_error(res, twice_msg, _links(ctx, grads))
        finally:
            ctx.needs_input_grad = prev
        return (*res, None) if isinstance(res, tuple) else (res, None)

    def jvp_fn(ctx, *tangents):
        if jvp is None:
            raise forward_ad_error(public)
        tangents = [t if m else None for t, m in zip(tangents, ctx.lb_tangent_mask)]
        return jvp(ctx.lb_inputs, tangents)

    methods = {"forward": staticmethod(forward), "setup_context": staticmethod(setup),
               "backward": staticmethod(backward_fn), "jvp": staticmethod(jvp_fn)}
    fn = type(f"LowbitAutograd_{name}", (torch.autograd.Function,), dict(methods))
    fn._lb_single = type(f"LowbitAutograd_{name}_single",
                         (torch.autograd.function._SingleLevelFunction,), dict(methods))

    def kernel(keyset, *args):
        fw = _tangent_mask(args)
        if fw is not None and jvp is None:  # before any work
            raise forward_ad_error(public)
        if fw is not None or (_C.is_grad_enabled() and _C._any_requires_grad(*args)):
            # the plain Function.apply: at the Autograd key the torch.func layers have already
            # been entered, so the functorch route (custom_function_call) has no kernel here;
            # the C++ apply takes forward AD (jvp) and backward at the current level
            return _apply(fn, *args, _Meta(keyset, fw, _C._are_functorch_transforms_active()))
        with _C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & _C._after_autograd_keyset, *args)

    _LIB.impl(name, kernel, "Autograd", with_keyset=True)
    _REGISTERED[name] = public


def once_differentiable(public):
    """Decorator for the backward of a torch.autograd.Function: a second derivative through it
    raises naming ``public`` (torch's own decorator's message names no op)."""
    msg = (f"double backward (a second derivative) is not supported by {public}: its backward "
           f"is not itself differentiable")

    def wrap(fn):
        def backward(ctx, *grads):
            if not torch.is_grad_enabled():
                return fn(ctx, *grads)
            with torch.no_grad():
                res = fn(ctx, *grads)
            return _delay_error(res, msg, _links(ctx, grads))
        return backward
    return wrap


def check_tangents(name, public, tangents, allowed):
    """Raises unless only the inputs at positions ``allowed`` carry a tangent."""
    for i, t in enumerate(tangents):
        if t is not None and i not in allowed:
            arg = getattr(torch.ops.lowbit, name).default._schema.arguments[i].name
            raise forward_ad_error(public, f" with respect to its argument {arg!r}")


def linear_jvp(name, positions, public, fixed=None):
    """The jvp of an op that is linear in the inputs at ``positions`` jointly (y = x W^T + b:
    x and bias) and takes no tangent elsewhere: the op itself applied to the tangents (zeros
    where an input at ``positions`` has none; an empty "absent" tensor stays empty). ``fixed``:
    {position: value} arguments replaced in that call (e.g. an accuracy mode forced to exact
    float arithmetic, so the tangent is the exact linear map even if the forward's mode is not)."""
    op = getattr(torch.ops.lowbit, name).default
    pos = frozenset(positions)
    fixed = dict(fixed or {})

    def jvp(inputs, tangents):
        check_tangents(name, public, tangents, pos)
        args = [(tangents[i] if tangents[i] is not None else torch.zeros_like(a))
                if i in pos else fixed.get(i, a) for i, a in enumerate(inputs)]
        return op(*args)

    return jvp


def ops_without_autograd():
    """Names of the lowbit ops with no Autograd kernel (after cover_unregistered: none)."""
    names = [s.name.split("::", 1)[1] for s in _C._jit_get_all_schemas()
             if s.name.startswith("lowbit::")]
    return sorted(n for n in set(names)
                  if not _C._dispatch_has_kernel_for_dispatch_key(f"lowbit::{n}", "Autograd"))


def cover_unregistered():
    """Gives every lowbit op still without an Autograd kernel the not-differentiable one (run
    once, after every family registered its formulas): a gradient or a tangent reaching such an
    op raises naming it, instead of torch's warning and a silent zero / None."""
    for n in ops_without_autograd():
        register(n, f"lowbit::{n}")
