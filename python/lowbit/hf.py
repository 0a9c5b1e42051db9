"""python/lowbit/hf.py: the transformers side of lowbit — the "lowbit" quantization method
registered with transformers (LowbitConfig / LowbitHfQuantizer: from_pretrained of a directory
written by save_quantized builds packed QuantLinear layers) and mark_quantized. The layer table
and the checkpoint writer it uses are lowbit.checkpoint's.

transformers is optional and costs seconds to import, so `import lowbit` does not import it: the
registration runs as soon as transformers imports its quantizer table (a one-shot import hook
that only calls transformers' own register_quantization_config / register_quantizer), or at once
if that table is already imported."""
import importlib.abc
import importlib.util
import os
import sys
import warnings

from .checkpoint import (QUANT_METHOD, check_tensors, head_tie, header_of, is_hf_model,
                         lowbit_quantization_config, packed_state_dict, parse_aliases,
                         parse_layers, parse_shared, rebuild_layouts, set_untied, swap_in_packed,
                         write_checkpoint)
from .qat import on_converted

def mark_quantized(model):
    """Lets ``model.save_pretrained`` of a converted transformers model write a directory that
    ``from_pretrained`` (after ``import lowbit``) loads packed: sets its config's
    quantization_config and hf_quantizer. Returns the model."""
    if not is_hf_model(model):
        raise TypeError(f"model: expected a transformers model, got {type(model).__name__}")
    cls_cfg, cls_q = register()
    if head_tie(model) is False:  # a packed head is not the embedding any more
        set_untied(model.config)
    qc = cls_cfg.from_dict(lowbit_quantization_config(model))
    model.config.quantization_config = qc
    model.hf_quantizer = cls_q(qc, pre_quantized=True)
    model.is_quantized = True
    return model


@on_converted
def _mark_converted(model):
    """convert_'s hook: a converted transformers model is marked (see mark_quantized)."""
    if is_hf_model(model):
        mark_quantized(model)


# ---- the transformers quantizer ----

_CLASSES = None


def register():
    """Registers the "lowbit" quantization method with transformers (importing it); idempotent.
    Returns (LowbitConfig, LowbitHfQuantizer)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    import torch.nn as nn
    from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING,
                                              AUTO_QUANTIZER_MAPPING, register_quantization_config,
                                              register_quantizer)
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    class LowbitConfig(QuantizationConfigMixin):
        """quantization_config of a lowbit checkpoint: ``layers`` maps each packed layer's name
        to its QuantSpec, shape, bias and dtype; ``aliases`` lists tensors stored once for
        several names."""

        def __init__(self, layers=None, aliases=None, lowbit_version=None, shared=None,
                     **kwargs):
            self.quant_method = QUANT_METHOD
            self.layers = layers if layers is not None else {}
            self.aliases = aliases if aliases is not None else {}
            self.shared = shared if shared is not None else {}
            self.lowbit_version = lowbit_version

        def parsed(self):
            return parse_layers(self.to_dict(), "config.json quantization_config")

    class LowbitHfQuantizer(HfQuantizer):
        """Loads a lowbit checkpoint as packed QuantLinear layers: swaps in empty layers before
        the weights are read (after checking every stored tensor's dtype and shape against the
        config), rebuilds the kernel layouts after."""

        requires_calibration = True  # only pre-quantized checkpoints; lowbit quantizes with QAT

        def validate_environment(self, *args, **kwargs):
            self.quantization_config.parsed()

        def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
            where = "config.json quantization_config"
            layers = self.quantization_config.parsed()
            shared = parse_shared(self.quantization_config.to_dict(), where, layers)
            swap_in_packed(model, layers, where, shared=shared)
            if checkpoint_files:
                found = header_of(checkpoint_files)
                check_tensors(found, layers, "checkpoint " + os.path.dirname(checkpoint_files[0]))
                parse_aliases(self.quantization_config.to_dict(), where, set(found))
            return model

        def _process_model_after_weight_loading(self, model, **kwargs):
            for alias, key in self.quantization_config.aliases.items():
                mod_name, _, attr = alias.rpartition(".")
                src = model.get_parameter(key) if key in dict(model.named_parameters()) \
                    else model.get_buffer(key)
                mod = model.get_submodule(mod_name) if mod_name else model
                if isinstance(src, nn.Parameter):
                    setattr(mod, attr, src)
                else:
                    mod.register_buffer(attr, src)
            rebuild_layouts(model)
            return model

        def get_state_dict_and_metadata(self, model):
            # save_pretrained calls this before it writes config.json: the table is taken from
            # the layers as they are now (an act set after convert_ is saved, not the old one)
            fresh = lowbit_quantization_config(model)
            for key in ("layers", "shared", "aliases", "lowbit_version"):
                setattr(self.quantization_config, key, fresh[key])
            return packed_state_dict(model), {}

        def is_serializable(self):
            return True

        @property
        def is_trainable(self):
            return False

    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(LowbitConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(LowbitHfQuantizer)
    _CLASSES = (AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD],
                AUTO_QUANTIZER_MAPPING[QUANT_METHOD])
    return _CLASSES


_HOOKED = "transformers.quantizers.auto"


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """One-shot: when transformers' quantizer table is imported, run register() right after the
    module has executed. Finds nothing itself (the normal finders do the finding)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _HOOKED:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        try:
            register()
        except Exception as exc:  # never break transformers' own import
            warnings.warn(f"lowbit: could not register its transformers quantizer: {exc!r}")

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self._inner, name)


def _install():
    if _HOOKED in sys.modules:
        register()
    elif importlib.util.find_spec("transformers") is not None:
        if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _RegisterAfterImport())


def __getattr__(name):  # lowbit.hf.LowbitConfig / LowbitHfQuantizer, registering on first use
    if name in ("LowbitConfig", "LowbitHfQuantizer"):
        cfg, q = register()
        return cfg if name == "LowbitConfig" else q
    raise AttributeError(f"module 'lowbit.hf' has no attribute {name!r}")


_install()

__all__ = ["register", "mark_quantized", "write_checkpoint", "LowbitConfig", "LowbitHfQuantizer"]
