"""python/lowbit/sparse/sparse24_nn.py: the 2:4 module and model verb — SparseLinear24
(lowbit.nn.SparseLinear24: train mode with a dense weight and a 2:4 mask, inference mode with the
compressed, optionally low-bit weight) and sparsify_ (nn.Linear -> SparseLinear24 in place)."""
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import FLOAT_DTYPES, check_float_dtype, check_tensor
from .._walk import Swap, check_model, made_by, matches, swap_modules_
from ..fake_quant import quantize
from ..qweight import QuantizedWeight, check_packed, check_packed_values
from ..spec import check_spec
from .sparse24 import sparse24_linear
from .sparse24_mask import MaskedWeight, apply_mask, mask_24
from .sparse24_weight import (Sparse24Weight, check_24_weight, check_meta, compress_24,
                              decompress_24, meta_from_mask, prune_24)

MODES = ("train", "inference")
TRAIN_OPTIONS = ("mask_update_interval", "srste_decay", "ste", "spec")  # from_linear's, sparsify_'s


def _positive_int(v, name, multiple=1):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(v).__name__} {v!r:.40}")
    if v <= 0 or v % multiple:
        what = "a positive int" if multiple == 1 else f"a positive multiple of {multiple}"
        raise ValueError(f"{name}: must be {what}, got {v}")
    return int(v)


def _check_bool(v, name):
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected a bool, got {type(v).__name__} {v!r:.40}")
    return v


def _check_mode(mode):
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r:.40}")
    return mode


def _check_options(mode, mask_update_interval, srste_decay, ste, spec, k=None):
    """The training / quantization options of SparseLinear24 (and of from_linear, sparsify_),
    each error naming its argument; returns (interval, decay) normalised. ``k``: in_features,
    when known (a spec's group must divide the K/2 kept values of a row)."""
    _check_mode(mode)
    iv = mask_update_interval
    if iv is not None and (isinstance(iv, bool) or not isinstance(iv, numbers.Integral)):
        raise TypeError(f"mask_update_interval: expected a non-negative int or None, got "
                        f"{type(iv).__name__} {iv!r:.40}")
    if iv is not None and iv < 0:
        raise ValueError(f"mask_update_interval: must be a non-negative int or None, got {iv}")
    d = srste_decay
    if isinstance(d, torch.Tensor) and d.numel() == 1 and d.dtype.is_floating_point:
        d = float(d)
    if isinstance(d, bool) or not isinstance(d, numbers.Real):
        raise TypeError(f"srste_decay: expected a finite float >= 0, got {type(d).__name__} "
                        f"{d!r:.40}")
    if not math.isfinite(float(d)) or float(d) < 0:  # NaN fails both
        raise ValueError(f"srste_decay: must be a finite float >= 0, got {d!r}")
    _check_bool(ste, "ste")
    if spec is not None:
        check_spec(spec)
        if mode != "inference":
            raise ValueError("spec: quantized kept values need mode='inference'")
        if k is not None:
            _check_spec_group(spec, k)
    return int(iv or 0), float(d)


def _check_spec_group(spec, k, where=""):
    g = k // 2 if spec.group_size == -1 else spec.group_size
    if (k // 2) % g:
        raise ValueError(f"spec: group_size {spec.group_size} does not divide the {k // 2} kept "
                         f"values of a row{where} (in_features {k} / 2; groups count kept values)")


def _check_dtype(dtype):
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype or None, got {type(dtype).__name__}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype: must be float32, bfloat16 or float16, got {dtype}")
    return dtype


def _check_device(device):
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise TypeError(f"device: expected a torch.device, str, int or None, got "
                        f"{type(device).__name__}")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device: {device!r} is not a device ({exc})") from None


def _check_patterns(v, name, allow_none):
    """skip / include: a str, an iterable of str (or None where allowed) -> tuple or None."""
    if v is None:
        return None if allow_none else ()
    if isinstance(v, str):
        return (v,)
    try:
        out = tuple(v)
    except TypeError:
        raise TypeError(f"{name}: expected a str or an iterable of str (fnmatch patterns), got "
                        f"{type(v).__name__}") from None
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name}: patterns must be str, got {type(bad[0]).__name__} "
                        f"{bad[0]!r:.40}")
    return out


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

    _made_by = "sparsify_"  # the model verb that makes these layers (lowbit._walk)

    def __init__(self, in_features, out_features, bias=True, mode="train",
                 mask_update_interval=1, srste_decay=0.0, ste=True, spec=None, device=None,
                 dtype=None):
        super().__init__()
        _check_mode(mode)
        in_features = _positive_int(in_features, "in_features", multiple=4)
        out_features = _positive_int(out_features, "out_features")
        _check_bool(bias, "bias")
        interval, decay = _check_options(mode, mask_update_interval, srste_decay, ste, spec,
                                         in_features)
        device, dtype = _check_device(device), _check_dtype(dtype)
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.mask_update_interval = interval
        self.srste_decay = decay
        self.ste = ste
        self.spec = spec
        fk = {"device": device, "dtype": dtype}
        n, k = out_features, in_features
        if mode == "train":
            self.weight = nn.Parameter(torch.empty(n, k, **fk))
            nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
            self.register_buffer("mask", mask_24(self.weight))
            self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=device))
        else:
            # a skeleton's meta is valid (every group keeps its first two) until loaded
            self.register_buffer("meta", meta_from_mask(
                torch.tensor([True, True, False, False], device=device).repeat(n, k // 4)))
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
            # a state_dict from a file is checked like any user tensors (CPU ops recheck meta
            # on every call; a CUDA meta is only checked here and where it is built)
            self.register_load_state_dict_post_hook(SparseLinear24._check_loaded)
        self.bias = nn.Parameter(torch.zeros(n, **fk)) if bias else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.mode == "inference" and self.spec is not None:  # values before they are copied
            got = {f: state_dict.get(prefix + f) for f in ("scales", "zeros")}
            check_packed_values(*(t if isinstance(t, torch.Tensor) else None
                                  for t in got.values()), self.spec, {f: prefix + f for f in got})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _check_loaded(module, incompatible_keys):
        check_meta(module.meta, module.out_features, module.in_features)
        if module.spec is not None:  # the quantized kept values, as a QuantizedWeight checks them
            check_packed(module.codes, module.scales,
                         module.zeros if module.zeros.shape[1] > 0 else None, module.spec,
                         (module.out_features, module.in_features // 2), module._wdtype)

    def _apply(self, fn, *args, **kwargs):
        """``.to(dtype)``, ``.half()``, ``model.to(torch.bfloat16)`` on a quantized layer (spec
        set) keep its packed codes and float32 scales (they follow device moves only) and take
        the new float dtype as the layer's dtype: the bias is cast, the forward then runs with
        activations of any float dtype and returns x's dtype, as torch's quantized layers and
        bitsandbytes do. Other modes cast like nn.Linear."""
        if self.mode != "inference" or self.spec is None:
            return super()._apply(fn, *args, **kwargs)
        scales = self.scales
        super()._apply(fn, *args, **kwargs)
        self.scales = scales.to(self.scales.device)  # float32, never rounded through the cast
        self._wdtype = fn(torch.empty(0, dtype=self._wdtype, device=self.scales.device)).dtype
        return self

    @classmethod
    def from_linear(cls, linear, mode="train", mask_update_interval=1, srste_decay=0.0, ste=True,
                    spec=None):
        """A SparseLinear24 holding linear's weight pruned 2:4 (prune_24) and its bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        _check_options(mode, mask_update_interval, srste_decay, ste, spec)
        w = linear.weight
        check_24_weight(w.detach(), "linear.weight")
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                mode=mode, mask_update_interval=mask_update_interval, srste_decay=srste_decay,
                ste=ste, spec=spec, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
            if mode == "train":
                m.weight.copy_(w)
                m.mask.copy_(mask_24(w))
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
            sw = Sparse24Weight(self.values, self.meta, shape, self.values.dtype, check=False)
        else:
            sw = self._quantized_weight(self._wdtype)
        cache = getattr(self, "_cslt_cache", None)
        key = (self.values.data_ptr(), self.values.device) if self.spec is None else None
        if cache is not None and cache[0] == key:
            sw._cslt = cache[1]
        return sw

    def _quantized_weight(self, dtype):
        z = self.zeros if self.zeros.shape[1] > 0 else None
        q = QuantizedWeight(self.codes, self.scales, z, self.spec,
                            (self.out_features, self.in_features // 2), dtype, check=False)
        # the buffers are lowbit's own (checked when loaded; the CPU ops recheck meta)
        return Sparse24Weight(None, self.meta, (self.out_features, self.in_features), dtype, q,
                              check=False)

    def pruned_weight(self):
        """The effective dense weight (weight * mask, or the decompressed weight)."""
        if self.mode == "train":
            return apply_mask(self.weight.detach(), self.mask)
        return decompress_24(self.sparse_weight())

    @torch.no_grad()
    def update_mask(self):
        """Recomputes the 2:4 mask from the current |weight| (train mode)."""
        self.mask.copy_(mask_24(self.weight))

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
            w = MaskedWeight.apply(self.weight, self.mask, self.ste, self.srste_decay)
            return F.linear(x, w, self.bias)
        if self.spec is not None:  # packed kept values: any float x, output in x's dtype
            check_tensor(x, "x")
            check_float_dtype(x, "x")
            bias = self.bias if self.bias is None else self.bias.to(x.dtype)
            return sparse24_linear(x, self._quantized_weight(x.dtype), bias)
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


def sparsify_(model, skip=("lm_head",), include=None, mode="train", **kwargs):
    """Replaces, in place, every nn.Linear of ``model`` by a SparseLinear24 (from_linear with
    ``mode`` and ``kwargs``: mask_update_interval, srste_decay, ste, spec) and returns the model;
    a layer used at several places becomes one SparseLinear24 used at all of them.

    ``skip`` / ``include``: fnmatch patterns over qualified module names ("model.layers.0.mlp.
    up_proj"); a pattern also matches any dotted suffix, so "lm_head" skips "lm_head" and
    "model.lm_head", and include=("mlp.*",) selects only the MLP projections of a Llama-family
    model. Raises ValueError if the model already holds a SparseLinear24 (no second application),
    if a selected layer's in_features is not a multiple of 4 (skip it), if the model is itself an
    nn.Linear (use SparseLinear24.from_linear), or if a selected layer is a QATLinear or
    QuantLinear (quantize_ / convert_ ran first: 2:4 and QAT do not compose; sparsify first).
    """
    check_model(model)
    _check_mode(mode)
    unknown = sorted(set(kwargs) - set(TRAIN_OPTIONS))
    if unknown:
        raise TypeError(f"{unknown[0]}: not an option of sparsify_ (its options: "
                        f"{', '.join(TRAIN_OPTIONS)})")
    opts = dict(mask_update_interval=1, srste_decay=0.0, ste=True, spec=None)
    opts.update(kwargs)
    _check_options(mode, **opts)  # before any layer is replaced
    skip = _check_patterns(skip, "skip", allow_none=False)
    include = _check_patterns(include, "include", allow_none=True)
    if any(isinstance(m, SparseLinear24) for m in model.modules()):
        raise ValueError("model: already holds SparseLinear24 layers; sparsify_ applies once")

    def choose(name, mod):
        if matches(name, skip) or (include is not None and not matches(name, include)):
            return None
        if made_by(mod) is not None:  # a layer of another verb: the walker refuses it
            return True
        if mod.in_features % 4:
            raise ValueError(f"model: layer {name!r} has in_features={mod.in_features}, not a "
                             f"multiple of 4; add it to skip")
        if opts["spec"] is not None:
            _check_spec_group(opts["spec"], mod.in_features, f" of layer {name!r}")
        return True

    swap_modules_(model, Swap(
        verb="sparsify_", target=lambda m: isinstance(m, nn.Linear), choose=choose,
        build=lambda m, _: SparseLinear24.from_linear(m, mode=mode, **kwargs),
        bare_hint="lowbit.nn.SparseLinear24.from_linear(linear)",
        refuses=("quantize_", "convert_"),
        why="2:4 sparsity and QAT do not compose here (QAT groups run over the dense K, the 2:4 "
            "low-bit format quantizes the kept values): sparsify first, then quantize the kept "
            "values with sparsify_(..., mode='inference', spec=...) or "
            "SparseLinear24.to_inference(spec), or add the layer to skip"))
    return model


__all__ = ["SparseLinear24", "sparsify_", "MODES"]
