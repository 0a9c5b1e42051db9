"""python/lowbit/_fakes.py: the fake (meta / FakeTensor / torch.compile) kernel of every lowbit op.
It holds no argument check of its own: it describes the arguments' metadata (dtype, device,
contiguity, sizes) and runs the op's own C glue on them as a check-only call (lowbit._C.check,
see csrc/lb_ops.h), so a fake raises exactly the RuntimeError the real op raises, naming the same
argument, from the one copy of the checks; then it allocates the results that call reports.
A fake cannot read values: the checks of contents (a 2:4 meta's groups, NaN in a weight to
quantize, logits too large for a small temperature) stay the real kernels' own.

Devices: a meta tensor stands for a CPU one (the CPU-only checks pass on meta); a FakeTensor
carries its real device and is checked as such. Symbolic sizes (torch.compile with dynamic
shapes) are specialized (guarded) before the C checks see them, except an op's batch dimensions
(``batch``), which only flow through to its results: those are checked at their hint and stay
symbolic in the results."""
import torch

from . import _ops

_X = _ops._C
_DEVICES = {"cpu": "cpu", "meta": "cpu", "cuda": "cuda"}


def _size(s, free):
    """A size as the C checks see it: the hint of a free (batch) SymInt, else the int (a guard
    for a SymInt)."""
    if isinstance(s, torch.SymInt):
        hint = s.node.hint
        return int(hint) if free and hint is not None else int(s)
    return s


def _tensor(t, nfree):
    shape = t.shape
    return ("t", str(t.dtype).rsplit(".", 1)[-1], _DEVICES.get(t.device.type, "other"),
            -1 if t.device.index is None else t.device.index, bool(t.is_contiguous()),
            tuple(_size(s, i < nfree) for i, s in enumerate(shape)))


def _scalar(typ, v):
    if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        v = {"int": int, "float": float, "bool": bool}[typ](v)
    return {"int": ("i", v), "float": ("f", v), "bool": ("b", v)}[typ]


def _nfree(n, t):
    """How many leading dims of t are free: n is 1 (the first) or -1 (all but the last)."""
    return t.dim() - 1 if n == -1 else min(n, t.dim())


def register(name, batch=None, results=None):
    """Registers the fake kernel of lowbit::name. batch: {argument index: 1 | -1} when the
    leading dimensions of those tensor arguments (the first one, or all but the last) are the
    op's batch dimensions, which its results carry in front (the first listed argument's);
    results(args, reported): the results themselves, for an op whose sizes no check can know
    (reported: the (sizes, dtype, argument) the call gave)."""
    op = getattr(torch.ops.lowbit, name).default
    schema = op._schema.arguments
    types = [str(a.type) for a in schema]
    batch = batch or {}

    @torch.library.register_fake(f"lowbit::{name}")
    def fake(*args, **kwargs):
        full = list(args)
        for a in schema[len(args):]:
            full.append(kwargs[a.name] if a.name in kwargs else a.default_value)
        described = [_tensor(v, _nfree(batch[i], v) if i in batch else 0) if typ == "Tensor"
                     else _scalar(typ, v) for i, (typ, v) in enumerate(zip(types, full))]
        reported = _X.check(name, described)
        if results is not None:
            return results(full, reported)
        lead = hints = ()
        if batch:
            bi = min(batch)
            n = _nfree(batch[bi], full[bi])
            lead, hints = tuple(full[bi].shape[:n]), described[bi][5][:n]
        outs = []
        for sizes, dtype, like in reported:
            if lead and tuple(sizes[:len(lead)]) == hints:
                sizes = lead + tuple(sizes[len(lead):])  # the batch dims, symbolic or not
            outs.append(full[like].new_empty(sizes, dtype=getattr(torch, dtype)))
        return outs[0] if len(outs) == 1 else tuple(outs)

    return fake
