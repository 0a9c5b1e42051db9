"""python/lowbit/_walk.py: the one module-walking helper of the model verbs (quantize_,
convert_, sparsify_): a Swap says, torchao-handler style, which modules a verb targets, what each
qualified name asks for and how to build the replacement; swap_modules_ finds every use of every
target (a module used twice is found twice), builds ONE replacement per module object and sets
it at every use, so weight sharing survives; it refuses a bare target and a layer that another
verb made and this one cannot compose with."""
import fnmatch
from dataclasses import dataclass
from typing import Callable

from torch import nn


def matches(name, patterns):
    """A pattern (fnmatch) matches the full qualified name or its last component(s)."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p)
               for p in patterns)


def made_by(module):
    """The lowbit verb that made ``module`` ("quantize_", "convert_", "sparsify_"), or None."""
    return getattr(type(module), "_made_by", None)


@dataclass(frozen=True)
class Swap:
    """One verb's rules. ``target(module)``: a module of the kind it replaces;
    ``choose(name, module)``: what it does with the target at qualified ``name`` (e.g. its
    QuantSpec; None leaves it); ``build(module, choice)``: the replacement; ``bare_hint``: what to
    call instead on a bare target (an in-place verb cannot replace the object the caller holds);
    ``refuses``: verbs whose layers this one cannot compose with (a selected one is an error,
    ``why`` says what to do instead)."""

    verb: str
    target: Callable
    choose: Callable
    build: Callable
    bare_hint: str
    refuses: tuple = ()
    why: str = ""


def check_model(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")


def _uses(model):
    """(qualified name, parent, attribute, child) for every use of every submodule: a module
    registered at two places (nn.Sequential(lin, act, lin)) is listed at both."""
    for pname, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if child is not None:
                yield (f"{pname}.{attr}" if pname else attr), parent, attr, child


def _describe(choice):
    return getattr(choice, "name", None) or repr(choice)


def _refusal(what, module, swap):
    return (f"{what} a {type(module).__name__} (made by lowbit.{made_by(module)}), which "
            f"{swap.verb} would replace, dropping what it holds; {swap.why}")


def swap_modules_(model, swap):
    """Applies ``swap`` to ``model`` in place; returns the number of module objects replaced."""
    check_model(model)
    if made_by(model) in swap.refuses:
        raise ValueError(_refusal("model: is", model, swap))
    if swap.target(model):
        raise ValueError(f"model: is itself a {type(model).__name__}; {swap.verb} replaces "
                         f"submodules in place and cannot replace the object you pass: use "
                         f"{swap.bare_hint}")
    groups = {}  # id(child) -> (child, [(name, parent, attr)])
    for name, parent, attr, child in _uses(model):
        groups.setdefault(id(child), (child, []))[1].append((name, parent, attr))
    plan = []
    for child, places in groups.values():
        foreign = made_by(child) in swap.refuses
        if not foreign and not swap.target(child):
            continue
        choices = [(name, swap.choose(name, child)) for name, _, _ in places]
        picked = [(n, c) for n, c in choices if c is not None]
        if not picked:
            continue
        if foreign:
            raise ValueError(_refusal(f"model: layer {picked[0][0]!r} is", child, swap))
        if len(picked) < len(choices) or any(c != picked[0][1] for _, c in picked):
            seen = ", ".join(f"{n!r}: {'left alone' if c is None else _describe(c)}"
                             for n, c in choices)
            raise ValueError(f"model: one {type(child).__name__} is used at several places that "
                             f"{swap.verb} treats differently ({seen}); a shared module gets one "
                             f"replacement, so make the patterns agree on all its names")
        plan.append((child, picked[0][1], places))
    for child, choice, places in plan:
        new = swap.build(child, choice)
        for _, parent, attr in places:
            setattr(parent, attr, new)
    return len(plan)
