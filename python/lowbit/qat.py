"""python/lowbit/qat.py: the QAT model verbs — QATLinear (full-precision weight, fused
fake-quant in forward), QATConfig, quantize_ (nn.Linear -> QATLinear in place), convert_
(QATLinear -> packed QuantLinear) and calibrate_clip_ (BitDistiller's asymmetric clipping
initialisation, searched on a per-group Gram matrix of calibration activations)."""
import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fake_quant import STE_CODES, fake_quantize
from .spec import QuantSpec, check_spec


class QATLinear(nn.Linear):
    """nn.Linear whose weight is fake-quantized to ``spec`` in every forward (the fused
    lowbit op; straight-through gradients, ``ste`` as in lowbit.fake_quantize). The weight stays
    a normal full-precision Parameter, so optimizers, FSDP/DDP and checkpoints see a plain
    linear layer."""

    def __init__(self, in_features, out_features, bias=True, spec=None, ste="bitdistiller",
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.spec = check_spec(spec if spec is not None else QuantSpec())
        if ste not in STE_CODES:
            raise ValueError(f"ste: must be one of {sorted(STE_CODES)}, got {ste!r}")
        self.ste = ste
        self.spec.group_for(in_features)  # fail early if the group size does not divide K

    @classmethod
    def from_linear(cls, linear, spec, ste="bitdistiller"):
        """A QATLinear sharing nothing with ``linear`` but its values: weight, bias, dtype and
        device are kept (the tensors are the same Parameters, moved over, not copied)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        check_spec(spec)
        w = linear.weight
        with torch.device("meta"):
            m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    spec=spec, ste=ste, dtype=w.dtype)
        m.weight = linear.weight
        if linear.bias is not None:
            m.bias = linear.bias
        return m

    def quantized_weight(self):
        """Q(weight). Without autograd (eval, no_grad) it is cached until the weight changes
        (its version counter), so evaluation does not re-quantize every forward."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            self._q_cache = None
            return fake_quantize(self.weight, self.spec, ste=self.ste)
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device, self.weight.dtype)
        cache = getattr(self, "_q_cache", None)
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, fake_quantize(self.weight, self.spec, ste=self.ste))
            self._q_cache = cache
        return cache[1]

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, spec={self.spec.name}, ste={self.ste}")


@dataclass
class QATConfig:
    """What quantize_ does: ``spec`` for every nn.Linear whose qualified name matches no pattern
    of ``skip``; ``overrides`` maps name patterns (fnmatch, e.g. "*.mlp.down_proj") to their own
    QuantSpec (first match wins; a value of None skips the layer). ``indivisible``: what to do
    with a layer whose in_features the group size does not divide — "error" (default) or "gcd"
    (use group size gcd(in_features, group_size) for that layer, e.g. 64 for K=576 at g128)."""

    spec: QuantSpec = field(default_factory=QuantSpec)
    skip: tuple = ("lm_head",)
    overrides: dict = field(default_factory=dict)
    ste: str = "bitdistiller"
    indivisible: str = "error"

    def __post_init__(self):
        check_spec(self.spec, "spec")
        if isinstance(self.skip, str):
            self.skip = (self.skip,)
        if not all(isinstance(p, str) for p in self.skip):
            raise TypeError("skip: expected a tuple of name patterns")
        for pat, sp in self.overrides.items():
            if not isinstance(pat, str):
                raise TypeError(f"overrides: keys must be name patterns, got {pat!r}")
            if sp is not None:
                check_spec(sp, f"overrides[{pat!r}]")
        if self.ste not in STE_CODES:
            raise ValueError(f"ste: must be one of {sorted(STE_CODES)}, got {self.ste!r}")
        if self.indivisible not in ("error", "gcd"):
            raise ValueError(f"indivisible: must be 'error' or 'gcd', got {self.indivisible!r}")

    def spec_for(self, name):
        """The spec for the layer called ``name``, or None to leave it alone."""
        if _matches(name, self.skip):
            return None
        for pat, sp in self.overrides.items():
            if _matches(name, (pat,)):
                return sp
        return self.spec


def _matches(name, patterns):
    """A pattern matches the full qualified name or its last component(s)."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p)
               for p in patterns)


def _swap(model, name, new):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_(model, config):
    """Swaps every matching nn.Linear of ``model`` for a QATLinear, in place; returns the model.
    Refuses a model that already holds QAT or packed layers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(config, QATConfig):
        raise TypeError(f"config: expected a lowbit.QATConfig, got {type(config).__name__}")
    from .qlinear import QuantLinear

    for name, mod in model.named_modules():
        if isinstance(mod, (QATLinear, QuantLinear)):
            raise ValueError(f"model: already quantized ({name} is a {type(mod).__name__}); "
                             "quantize_ applies once")
    todo = []
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear:
            spec = config.spec_for(name)
            if spec is not None:
                k = mod.in_features
                if spec.group_size != -1 and k % spec.group_size:
                    if config.indivisible != "gcd":
                        raise ValueError(f"group_size: {spec.group_size} does not divide "
                                         f"in_features {k} of {name} (QATConfig(indivisible="
                                         f"'gcd') uses gcd(in_features, group_size) there)")
                    spec = dataclasses.replace(spec, group_size=math.gcd(k, spec.group_size))
                todo.append((name, mod, spec))
    for name, mod, spec in todo:
        _swap(model, name, QATLinear.from_linear(mod, spec, ste=config.ste))
    return model


def convert_(model):
    """Replaces every QATLinear by the packed QuantLinear of its current weight, in place;
    returns the model. Outputs equal the QAT model's up to float32 rounding."""
    from .qlinear import QuantLinear

    todo = [(n, m) for n, m in model.named_modules() if isinstance(m, QATLinear)]
    if not todo:
        raise ValueError("model: holds no QATLinear layers (run lowbit.quantize_ first)")
    for name, mod in todo:
        _swap(model, name, QuantLinear.from_qat(mod))
    return model


# ---- asymmetric clipping calibration (BitDistiller's clip initialisation) ----

def _group_gram(x, g):
    """Sum over tokens of x_g x_g^T per group: (G, g, g) float32, from x (T, K)."""
    t, k = x.shape
    xg = x.reshape(t, k // g, g).transpose(0, 1).float()  # (G, T, g)
    return torch.bmm(xg.transpose(1, 2), xg)


@torch.no_grad()
def _search_clip_torch(w, spec, gram, n_grid=20, max_shrink=10, chunk_rows=256):
    """Vectorised-torch twin of the C clip_search (used off CPU, and as its test oracle's
    neighbour): the same candidates, the same error d^T H d, first minimum in (i, j) order."""
    n, k = w.shape
    g = spec.group_for(k)
    G = k // g
    wg = w.float().reshape(n, G, g)
    mx = wg.amax(-1, keepdim=True)
    mn = wg.amin(-1, keepdim=True)
    best_err = torch.full((n, G, 1), float("inf"), device=w.device)
    best_hi, best_lo = mx.clone(), mn.clone()
    factors = [1 - i / n_grid for i in range(max_shrink)]
    hmat = gram.float().to(w.device)  # (G, g, g)
    for r0 in range(0, n, chunk_rows):
        r1 = min(n, r0 + chunk_rows)
        x = wg[r0:r1]  # (R, G, g)
        for fi in factors:
            hi = mx[r0:r1] * fi
            lo = torch.stack([mn[r0:r1] * fj for fj in factors])  # (J, R, G, 1)
            cand = torch.minimum(torch.maximum(x.unsqueeze(0), lo), hi.unsqueeze(0))
            q = fake_quantize(cand.reshape(-1, k), spec).reshape(cand.shape)
            d = (q - x.unsqueeze(0)).permute(2, 0, 1, 3).reshape(G, -1, g)  # (G, J*R, g)
            err = (torch.bmm(d, hmat) * d).sum(-1)
            err = err.reshape(G, len(factors), r1 - r0).permute(1, 2, 0).unsqueeze(-1)
            e_min, j_best = err.min(0)  # (R, G, 1)
            better = e_min < best_err[r0:r1]
            best_err[r0:r1] = torch.where(better, e_min, best_err[r0:r1])
            best_hi[r0:r1] = torch.where(better, hi, best_hi[r0:r1])
            lo_best = torch.gather(lo, 0, j_best.unsqueeze(0)).squeeze(0)
            best_lo[r0:r1] = torch.where(better, lo_best, best_lo[r0:r1])
    return best_lo, best_hi


def _search_clip(w, spec, gram, n_grid=20, max_shrink=10):
    """Clamp bounds (N, G, 1) lo, hi of the best clipping pair per (row, group)."""
    if w.device.type != "cpu":
        return _search_clip_torch(w, spec, gram, n_grid, max_shrink)
    fmt, bits, g, sym = spec.op_args(w.shape[1])
    lo, hi = torch.ops.lowbit.clip_search(w.detach().float().contiguous(),
                                          gram.float().contiguous(), fmt, bits, g, sym,
                                          n_grid, max_shrink)
    return lo.unsqueeze(-1), hi.unsqueeze(-1)


@torch.no_grad()
def calibrate_clip_(model, batches, max_tokens=4096, progress=True, n_grid=20, max_shrink=10):
    """BitDistiller's asymmetric clipping initialisation, in place: for every QATLinear, per
    output channel and group, tries max*(1 - i/20) x min*(1 - j/20) for i, j in 0..9, keeps the
    pair minimising the group's output MSE on calibration activations, and clamps the weights
    once. ``batches``: an iterable of model inputs (tensors of token ids, or dicts of kwargs).
    The output error of a group is dw^T (X_g^T X_g) dw, so activations are reduced to one
    g x g Gram matrix per group (exact, and independent of the token count)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QATLinear)]
    if not layers:
        raise ValueError("model: holds no QATLinear layers (run lowbit.quantize_ first)")
    grams = {}
    seen = {}
    hooks = []

    def hook(name, g):
        def fn(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            left = max_tokens - seen.get(name, 0)
            if left <= 0:
                return
            x = x[:left]
            seen[name] = seen.get(name, 0) + x.shape[0]
            gm = _group_gram(x, g).cpu() if x.device.type != "cpu" else _group_gram(x, g)
            grams[name] = gm if name not in grams else grams[name] + gm
        return fn

    for name, m in layers:
        hooks.append(m.register_forward_pre_hook(hook(name, m.spec.group_for(m.in_features))))
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            if isinstance(b, dict):
                model(**b)
            else:
                model(b)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    it = layers
    if progress:
        try:
            from tqdm.auto import tqdm
            it = tqdm(layers, desc="calibrate clip", unit="layer")
        except ImportError:
            pass
    for name, m in it:
        if name not in grams:
            continue
        lo, hi = _search_clip(m.weight, m.spec, grams[name], n_grid=n_grid,
                              max_shrink=max_shrink)
        n, k = m.weight.shape
        g = m.spec.group_for(k)
        wg = m.weight.detach().float().reshape(n, k // g, g)
        clipped = torch.minimum(torch.maximum(wg, lo.to(wg.device)), hi.to(wg.device)).reshape(n, k)
        m.weight.copy_(clipped.to(m.weight.dtype))
    return model


__all__ = ["QATLinear", "QATConfig", "quantize_", "convert_", "calibrate_clip_"]
