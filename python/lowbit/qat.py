"""python/lowbit/qat.py: the QAT model verbs — QATLinear (full-precision weight, fused
fake-quant in forward), QATEmbedding (the same for a token embedding, tied heads kept tied),
QATConfig, quantize_ (nn.Linear -> QATLinear in place), convert_
(QATLinear -> packed QuantLinear), calibrate_clip_ (BitDistiller's asymmetric clipping
initialisation, searched by lowbit.clip_search on a per-group Gram matrix of calibration
activations) and LearnedClip (QATConfig(learn="clip"): OmniQuant-style trainable clipping)."""
import contextlib
import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._walk import Swap, check_model, matches, swap_modules_
from .clip_search import clip_group, group_gram, search_clip
from .fake_quant import STE_CODES, fake_quantize
from .qlinear import QuantLinear, check_act
from .spec import QuantSpec, check_spec

LEARN = (None, "clip")


def _clip_factor(a):
    """f(a) = min(1, 1.25 * sigmoid(a)) forward; df/da = 1.25 * sigmoid'(a) everywhere (the
    min passes the gradient straight through, so a factor at 1 can still shrink later)."""
    s = 1.25 * torch.sigmoid(a)
    return s.detach().clamp(max=1.0) + (s - s.detach())


def _clip_logit(f):
    """The logit a with f(a) = f for f in (0, 1] (f = 1: a little past the point where
    1.25 * sigmoid(a) reaches 1, so f(a) is exactly 1)."""
    f = f.float().clamp(0.05, 1.0)
    a = torch.logit(f / 1.25)
    return torch.where(f >= 1.0, torch.full_like(a, math.log(4.0) + 0.01), a)


class LearnedClip(nn.Module):
    """Trainable clipping of a QATLinear's weight (QATConfig(learn="clip"); OmniQuant's learnable
    weight clipping), registered as a torch.nn.utils.parametrize parametrization of ``weight``:
    the layer's ``.weight`` IS the clipped weight, so fake-quant, convert_, export and anything
    else that reads ``.weight`` deploy the trained grid, and the raw weight lives in
    ``parametrizations.weight.original``. Per output row n and clipping block j (clip_group):
    two Parameters ``hi_logit``, ``lo_logit`` of shape (N, K / block), float32.

    Forward (x = W[n, block j], the raw weight):

        f(a)  = min(1, 1.25 * sigmoid(a))                  # in (0, 1]
        hi    = f(hi_logit[n, j]) * max(x)                 # float32
        lo    = f(lo_logit[n, j]) * min(x)
        x_c   = hi where x > hi;  lo where x < lo;  x elsewhere
        W'    = x_c (the layer's .weight); the layer computes Q(W') (FORMATS.md 1.1-1.4, 1.8),
                whose scales come from max(x_c) = hi and min(x_c) = lo (when they clip)

    Gradient (ste="bitdistiller"): plain autograd through these expressions and FORMATS.md 1.5,
    except the min of f, whose gradient is the identity (df/da = 1.25 sigmoid(a)(1 - sigmoid(a))
    also where f = 1): a clipped element passes its gradient to hi (resp. lo), an element in
    [lo, hi] to x; Q's scale gradient reaches the group max/min of x_c (ties split evenly, as
    amax does), i.e. hi and lo; hi passes f * that to max(x) (ties split evenly) and
    max(x) * f'(a) to its logit; lo likewise. With ste="identity" Q passes dQ/dW' = 1 and the
    logits learn only from the clipped elements.

    Folded: with every f = 1 the clip is the identity (max(x)*1 = max(x) exactly), so
    convert_ of a trained layer packs exactly Q(W'), and a later quantize_ of W' alone gives
    the same grid."""

    def __init__(self, n, k, spec, dtype=None, device=None):
        super().__init__()
        self.block = clip_group(spec, k)
        if k % self.block:
            raise ValueError(f"learn: clipping block {self.block} does not divide in_features {k}")
        shape = (n, k // self.block)
        init = torch.full(shape, math.log(4.0) + 0.01, device=device)
        self.hi_logit = nn.Parameter(init.clone())
        self.lo_logit = nn.Parameter(init.clone())

    def bounds(self, w):
        """(lo, hi), each (N, K / block, 1) float32, for the raw weight ``w``."""
        n, k = w.shape
        wg = w.float().reshape(n, k // self.block, self.block)
        hi = _clip_factor(self.hi_logit).unsqueeze(-1) * wg.amax(-1, keepdim=True)
        lo = _clip_factor(self.lo_logit).unsqueeze(-1) * wg.amin(-1, keepdim=True)
        return lo, hi

    def forward(self, w):
        n, k = w.shape
        lo, hi = self.bounds(w)
        wg = w.float().reshape(n, k // self.block, self.block)
        wc = torch.where(wg > hi, hi, torch.where(wg < lo, lo, wg))
        return wc.reshape(n, k).to(w.dtype)

    @torch.no_grad()
    def set_factors(self, w, lo, hi):
        """Sets the logits so that the bounds are (about) ``lo``, ``hi`` (N, G, 1) for the raw
        weight ``w``: f = hi / max(x), lo / min(x) (1 where the bound does not clip)."""
        n, k = w.shape
        wg = w.float().reshape(n, k // self.block, self.block)
        mx, mn = wg.amax(-1), wg.amin(-1)
        hi, lo = hi.reshape(mx.shape).float().to(mx.device), lo.reshape(mn.shape).float().to(mn.device)
        one = torch.ones_like(mx)
        f_hi = torch.where((mx > 0) & (hi < mx), hi / torch.where(mx > 0, mx, one), one)
        f_lo = torch.where((mn < 0) & (lo > mn), lo / torch.where(mn < 0, mn, one), one)
        self.hi_logit.copy_(_clip_logit(f_hi))
        self.lo_logit.copy_(_clip_logit(f_lo))

    def extra_repr(self):
        return f"block={self.block}, groups={tuple(self.hi_logit.shape)}"


def learned_clip(layer):
    """The LearnedClip of a QATLinear, or None."""
    p = getattr(layer, "parametrizations", None)
    if p is None or "weight" not in p:
        return None
    return next((m for m in p.weight if isinstance(m, LearnedClip)), None)


def raw_weight(layer):
    """The Parameter the optimizer trains as the layer's weight (the unclipped one under
    learn="clip")."""
    return layer.parametrizations.weight.original if learned_clip(layer) is not None \
        else layer.weight


def add_learned_clip(layer):
    """Gives a QATLinear trainable clipping (LearnedClip, factors 1 = no clipping); returns
    the layer. Refuses a layer that already has it."""
    from torch.nn.utils import parametrize

    if not isinstance(layer, QATLinear):
        raise TypeError(f"layer: expected a QATLinear, got {type(layer).__name__}")
    if learned_clip(layer) is not None:
        raise ValueError("layer: already has a learned clip")
    w = layer.weight
    parametrize.register_parametrization(
        layer, "weight", LearnedClip(layer.out_features, layer.in_features, layer.spec,
                                     device=w.device))
    return layer


def clip_parameters(model):
    """The LearnedClip logits of every layer of ``model`` (for their own optimizer group)."""
    return [p for m in model.modules() if isinstance(m, LearnedClip) for p in m.parameters()]


class QATLinear(nn.Linear):
    """nn.Linear whose weight is fake-quantized to ``spec`` in every forward (the fused
    lowbit op; straight-through gradients, ``ste`` as in lowbit.fake_quantize). The weight stays
    a normal full-precision Parameter, so optimizers, FSDP/DDP and checkpoints see a plain
    linear layer."""

    _made_by = "quantize_"  # the model verb that makes these layers (lowbit._walk)

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
        """Q(weight), computed from the current weight, spec and ste at every call. There is no
        implicit cache: an edit through ``weight.data`` changes neither the tensor's version
        counter nor anything else a cache could key on, so no implicit cache could be proven
        fresh. For repeated evaluation of frozen weights, :func:`cache_quantized_weights`
        computes Q(W) once per block on the caller's promise that nothing changes inside it."""
        cache = getattr(self, "_q_cache", None)
        if cache is None or (torch.is_grad_enabled() and raw_weight(self).requires_grad):
            return fake_quantize(self.weight, self.spec, ste=self.ste)
        # inside cache_quantized_weights: still keyed on everything that is observable
        w = raw_weight(self)  # .weight of a learned clip is a new tensor at every access
        clip = learned_clip(self)
        extra = () if clip is None else tuple((p.data_ptr(), p._version)
                                              for p in clip.parameters())
        key = (w.data_ptr(), w._version, w.device, w.dtype, tuple(w.shape), self.spec, self.ste,
               extra)
        if cache.get("key") != key:
            w = self.weight
            with torch.no_grad():
                cache["q"] = fake_quantize(w, self.spec, ste=self.ste)
            cache["key"] = key
        return cache["q"]

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, spec={self.spec.name}, ste={self.ste}")


class QATEmbedding(nn.Embedding):
    """nn.Embedding whose weight is fake-quantized to ``spec`` in every forward (each row is one
    weight row of groups / blocks along embedding_dim, as a linear layer's). The weight stays the
    same full-precision Parameter, so a head tied to it (lm_head.weight is embed_tokens.weight,
    quantize_ makes that head a QATLinear of the same spec) keeps sharing it, and both uses
    read the same fake-quantized values. Only the looked-up rows are fake-quantized: rows are
    quantized independently, so that equals F.embedding(ids, fake_quantize(weight)) exactly."""

    _made_by = "quantize_"

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, spec=None,
                 ste="bitdistiller", device=None, dtype=None, **kwargs):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, device=device,
                         dtype=dtype, **kwargs)
        self.spec = check_spec(spec if spec is not None else QuantSpec())
        if ste not in STE_CODES:
            raise ValueError(f"ste: must be one of {sorted(STE_CODES)}, got {ste!r}")
        if self.max_norm is not None:
            raise ValueError("max_norm: an embedding that renormalizes its rows in forward "
                             "has no fixed quantized weight; QATEmbedding needs max_norm=None")
        self.ste = ste
        self.spec.group_for(embedding_dim)

    @classmethod
    def from_embedding(cls, emb, spec, ste="bitdistiller"):
        """A QATEmbedding holding ``emb``'s own weight Parameter (ties are kept)."""
        if not isinstance(emb, nn.Embedding):
            raise TypeError(f"emb: expected an nn.Embedding, got {type(emb).__name__}")
        check_spec(spec)
        if emb.max_norm is not None:
            raise ValueError("emb: max_norm is set; QATEmbedding needs max_norm=None")
        with torch.device("meta"):
            m = cls(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx,
                    spec=spec, ste=ste, dtype=emb.weight.dtype,
                    scale_grad_by_freq=emb.scale_grad_by_freq, sparse=emb.sparse)
        m.weight = emb.weight
        return m

    def quantized_weight(self):
        """Q(weight), the whole table (what a tied head multiplies with)."""
        return fake_quantize(self.weight, self.spec, ste=self.ste)

    def forward(self, ids):
        rows = F.embedding(ids, self.weight, self.padding_idx, None, 2.0,
                           self.scale_grad_by_freq, self.sparse)
        flat = rows.reshape(-1, self.embedding_dim)
        if flat.shape[0] == 0:
            return rows
        return fake_quantize(flat, self.spec, ste=self.ste).reshape(rows.shape)

    def extra_repr(self):
        return f"{super().extra_repr()}, spec={self.spec.name}, ste={self.ste}"


@contextlib.contextmanager
def cache_quantized_weights(model):
    """Evaluation helper: inside ``with lowbit.cache_quantized_weights(model):`` each QATLinear
    of ``model`` fake-quantizes its weight once, on its first forward without autograd, and
    reuses that Q(W) for the rest of the block; on exit the cache is dropped. Use it for eval
    loops (perplexity, generation) where the weights are frozen.

    Your promise: no weight, spec or ste of these layers changes inside the block. An assignment
    of spec / ste, a new weight tensor and in-place edits through the Parameter itself are
    still seen (the key holds them and the version counter), but an edit through
    ``weight.data`` (``m.weight.data.mul_(3)``, ``.copy_``) is invisible to lowbit and would
    leave the cached Q(W) stale. A forward that needs gradients never uses the cache."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    layers = [m for m in model.modules() if isinstance(m, QATLinear)]
    prev = [getattr(m, "_q_cache", None) for m in layers]
    for m in layers:
        m._q_cache = {}
    try:
        yield model
    finally:
        for m, p in zip(layers, prev):
            m._q_cache = p  # nested blocks: the outer one's cache comes back


@dataclass
class QATConfig:
    """What quantize_ does: ``spec`` for every nn.Linear whose qualified name matches no pattern
    of ``skip``; ``overrides`` maps name patterns (fnmatch, e.g. "*.mlp.down_proj") to their own
    QuantSpec (first match wins; a value of None skips the layer). ``indivisible``: what to do
    with a layer whose in_features the group size does not divide — "error" (default) or "gcd"
    (use group size gcd(in_features, group_size) for that layer, e.g. 64 for K=576 at g128).
    ``embeddings``: also swap nn.Embedding modules (QATEmbedding; same name rules; off by
    default). ``ftype``: the llama.cpp ftype this config is the recipe of (lowbit.gguf.recipe
    sets it; quantize_ records it on the model for the GGUF export's general.file_type).
    ``learn``: None (default; the weights alone are trained) or "clip" — every QATLinear gets a
    LearnedClip (per row and clipping block, trainable max/min clipping factors, initialised
    by calibrate_clip_; DistillTrainer trains them with their own ``clip_lr``)."""

    spec: QuantSpec = field(default_factory=QuantSpec)
    skip: tuple = ("lm_head",)
    overrides: dict = field(default_factory=dict)
    ste: str = "bitdistiller"
    indivisible: str = "error"
    embeddings: bool = False
    ftype: str = None
    learn: str = None

    def __post_init__(self):
        # every field is checked here, so a bad config fails where it is written, not later
        # inside quantize_
        check_spec(self.spec, "spec")
        if isinstance(self.skip, str):
            self.skip = (self.skip,)
        if not isinstance(self.skip, (tuple, list)) or \
                not all(isinstance(p, str) for p in self.skip):
            raise TypeError(f"skip: expected a tuple of name patterns (str), got "
                            f"{self.skip!r:.80}")
        self.skip = tuple(self.skip)
        if not isinstance(self.overrides, dict):
            raise TypeError(f"overrides: expected a dict of name pattern -> QuantSpec or None, "
                            f"got {type(self.overrides).__name__}")
        for pat, sp in self.overrides.items():
            if not isinstance(pat, str):
                raise TypeError(f"overrides: keys must be name patterns (str), got {pat!r}")
            if sp is not None:
                check_spec(sp, f"overrides[{pat!r}]")
        if not isinstance(self.ste, str) or self.ste not in STE_CODES:
            raise ValueError(f"ste: must be one of {sorted(STE_CODES)}, got {self.ste!r}")
        if not isinstance(self.indivisible, str) or self.indivisible not in ("error", "gcd"):
            raise ValueError(f"indivisible: must be 'error' or 'gcd', got {self.indivisible!r}")
        if not isinstance(self.embeddings, bool):
            raise TypeError(f"embeddings: expected a bool, got {type(self.embeddings).__name__}")
        if self.ftype is not None and not isinstance(self.ftype, str):
            raise TypeError(f"ftype: expected a llama.cpp ftype name or None, got "
                            f"{type(self.ftype).__name__}")
        if self.learn not in LEARN:
            raise ValueError(f"learn: must be one of {list(LEARN)}, got {self.learn!r}")

    def spec_for(self, name):
        """The spec for the layer called ``name``, or None to leave it alone."""
        if matches(name, self.skip):
            return None
        for pat, sp in self.overrides.items():
            if matches(name, (pat,)):
                return sp
        return self.spec


def _layer_spec(config, name, mod):
    """The spec quantize_ gives the nn.Linear ``mod`` called ``name`` (None: left alone)."""
    spec = config.spec_for(name)
    if spec is None:
        return None
    k = mod.in_features
    if spec.is_block_type and k % spec.group_size:
        raise ValueError(f"in_features: {k} of {name} is not a multiple of the block of "
                         f"{spec.format} ({spec.group_size}, FORMATS.md 1.8); give that layer "
                         f"another type in QATConfig(overrides=...) (llama-quantize falls back "
                         f"to q4_0 / q5_0 / q5_1 / q8_0 there, see lowbit.gguf.recipe)")
    if spec.group_size != -1 and k % spec.group_size:
        if config.indivisible != "gcd":
            raise ValueError(f"group_size: {spec.group_size} does not divide in_features {k} of "
                             f"{name} (QATConfig(indivisible='gcd') uses gcd(in_features, "
                             f"group_size) there)")
        spec = dataclasses.replace(spec, group_size=math.gcd(k, spec.group_size))
    return spec


def _build(linear, spec, config):
    layer = QATLinear.from_linear(linear, spec, ste=config.ste)
    return add_learned_clip(layer) if config.learn == "clip" else layer


def quantize_(model, config):
    """Swaps every matching nn.Linear of ``model`` for a QATLinear, in place; returns the model.
    A layer used at several places becomes one QATLinear used at all of them. Refuses a model
    that already holds QAT or packed layers, a bare nn.Linear (use QATLinear.from_linear) and a
    SparseLinear24 the config selects (2:4 layers have no QAT form)."""
    check_model(model)
    if not isinstance(config, QATConfig):
        raise TypeError(f"config: expected a lowbit.QATConfig, got {type(config).__name__}")
    for name, mod in model.named_modules():
        if isinstance(mod, (QATLinear, QATEmbedding, QuantLinear)):
            raise ValueError(f"model: already quantized ({name or 'model'} is a "
                             f"{type(mod).__name__}); quantize_ applies once")
    swap_modules_(model, Swap(
        verb="quantize_", target=lambda m: type(m) is nn.Linear,
        choose=lambda name, m: _layer_spec(config, name, m),
        build=lambda m, spec: _build(m, spec, config),
        bare_hint="lowbit.nn.QATLinear.from_linear(linear, spec)", refuses=("sparsify_",),
        why="QAT of a 2:4 layer is not supported: add it to QATConfig(skip=...), or quantize its "
            "kept values with sparsify_(..., mode='inference', spec=...) / "
            "SparseLinear24.to_inference(spec)"))
    _quantize_embeddings_(model, config)
    return model


def _embedding_spec(config, name, mod):
    """The spec quantize_ gives the nn.Embedding ``mod`` called ``name`` (None: left alone)."""
    spec = config.spec_for(name)
    if spec is not None:
        try:
            spec.group_for(mod.embedding_dim)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return spec


def _quantize_embeddings_(model, config):
    """quantize_'s part for config.embeddings (nn.Embedding -> QATEmbedding, the Parameter
    kept, so a tied head stays tied) and config.ftype (recorded as model.lowbit_gguf_ftype)."""
    if config.embeddings:
        swap_modules_(model, Swap(
            verb="quantize_", target=lambda m: type(m) is nn.Embedding,
            choose=lambda name, m: _embedding_spec(config, name, m),
            build=lambda m, spec: QATEmbedding.from_embedding(m, spec, ste=config.ste),
            bare_hint="lowbit.nn.QATEmbedding.from_embedding(embedding, spec)"))
    if config.ftype is not None:
        model.lowbit_gguf_ftype = config.ftype


def _embedding_of(m):
    with torch.no_grad():
        w = m.quantized_weight().detach().clone()
    e = nn.Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx,
                     scale_grad_by_freq=m.scale_grad_by_freq, sparse=m.sparse, device="meta",
                     dtype=w.dtype)
    e.weight = nn.Parameter(w, requires_grad=m.weight.requires_grad)
    return e


def convert_(model, act="auto"):
    """Replaces every QATLinear by the packed QuantLinear of its current weight (and every
    QATEmbedding by the nn.Embedding of its quantized table), in place; returns the model (a QATLinear used at several places becomes one QuantLinear). Outputs
    equal the QAT model's up to float32 rounding with ``act="float"``, within 1e-4 (relative) with
    the default ``"auto"``; ``act`` is the layers' accuracy mode (lowbit.quant_linear)."""
    check_act(act)
    n = swap_modules_(model, Swap(
        verb="convert_", target=lambda m: isinstance(m, QATLinear), choose=lambda name, m: True,
        build=lambda m, _: QuantLinear.from_qat(m, act=act),
        bare_hint="lowbit.nn.QuantLinear.from_qat(qat_linear)"))
    if not n:
        raise ValueError("model: holds no QATLinear layers (run lowbit.quantize_ first)")
    # a QATEmbedding (lowbit.gguf.recipe's token embedding) has no packed kernel: it becomes the
    # nn.Embedding of its quantized table, so the converted model computes (and save_quantized
    # stores) the values the QAT model used; a head it was tied to is a QuantLinear by now
    swap_modules_(model, Swap(
        verb="convert_", target=lambda m: isinstance(m, QATEmbedding), choose=lambda name, m: True,
        build=lambda m, _: _embedding_of(m),
        bare_hint="nn.Embedding.from_pretrained(qat_embedding.quantized_weight())"))
    for hook in _CONVERTED_HOOKS:
        hook(model)
    return model


_CONVERTED_HOOKS = []


def on_converted(hook):
    """Registers ``hook(model)``, run at the end of every convert_ on the converted model (lowbit.hf
    registers one that marks transformers models quantized, so their save_pretrained writes a
    checkpoint from_pretrained loads). Returns the hook; registering it twice runs it once."""
    if not callable(hook):
        raise TypeError(f"hook: expected a callable, got {type(hook).__name__}")
    if hook not in _CONVERTED_HOOKS:
        _CONVERTED_HOOKS.append(hook)
    return hook


# ---- asymmetric clipping calibration (BitDistiller's clip initialisation) ----

def _check_int(name, v, lo, hi=None, why=""):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: must be {rng}, got {v}" + (f" {why}" if why else ""))


@torch.no_grad()
def calibrate_clip_(model, batches, max_tokens=4096, progress=True, n_grid=20, max_shrink=10):
    """BitDistiller's asymmetric clipping initialisation, in place: for every QATLinear, per
    output channel and group, tries max*(1 - i/20) x min*(1 - j/20) for i, j in 0..9, keeps the
    pair minimising the group's output MSE on calibration activations, and clamps the weights
    once. ``batches``: an iterable of model inputs (tensors of token ids, or dicts of kwargs).
    The output error of a group is dw^T (X_g^T X_g) dw, so activations are reduced to one
    g x g Gram matrix per group (exact, and independent of the token count)."""
    check_model(model)
    _check_int("n_grid", n_grid, 1)
    _check_int("max_shrink", max_shrink, 1, n_grid,
               f"(at most n_grid={n_grid}: the candidates are max*(1 - i/n_grid), i < max_shrink)")
    _check_int("max_tokens", max_tokens, 1)
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
            gm = group_gram(x, g).cpu() if x.device.type != "cpu" else group_gram(x, g)
            grams[name] = gm if name not in grams else grams[name] + gm
        return fn

    for name, m in layers:
        hooks.append(m.register_forward_pre_hook(hook(name, clip_group(m.spec, m.in_features))))
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
        clip = learned_clip(m)
        if clip is not None:  # learn="clip": the search's pair becomes the factors' start
            w = raw_weight(m)
            # per clipping block: the group, or a block type's sub-block (clip_group)
            clip.set_factors(w, *search_clip(w, m.spec, grams[name], n_grid=n_grid,
                                             max_shrink=max_shrink))
            continue
        lo, hi = search_clip(m.weight, m.spec, grams[name], n_grid=n_grid,
                              max_shrink=max_shrink)
        n, k = m.weight.shape
        g = clip_group(m.spec, k)  # the group, or a block type's sub-block
        wg = m.weight.detach().float().reshape(n, k // g, g)
        clipped = torch.minimum(torch.maximum(wg, lo.to(wg.device)), hi.to(wg.device)).reshape(n, k)
        m.weight.copy_(clipped.to(m.weight.dtype))
    return model


__all__ = ["QATLinear", "QATEmbedding", "QATConfig", "LearnedClip", "add_learned_clip",
           "clip_parameters", "learned_clip", "raw_weight", "clip_group", "quantize_", "convert_",
           "calibrate_clip_",
           "cache_quantized_weights"]
