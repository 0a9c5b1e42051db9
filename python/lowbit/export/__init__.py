"""python/lowbit/export/__init__.py: lowbit.export — writes a QAT'd (quantize_) or packed
(convert_) model in a format other engines load: "compressed-tensors" (vLLM, transformers),
"gptq" (GPTQ v2: transformers + GPTQModel, vLLM) and "gguf" (llama.cpp). Each format is a target
module of this package, listed in TARGETS, that exposes NAME, check(model, layers, dtype) (what
it can carry: ValueError naming the layer), plan(model, layers, dtype, tokenizer) (everything
checked and computed before any file is written) and write(plan, out, overwrite,
max_shard_size); export() and formats_for() only loop over TARGETS. The model is never changed.

``lowbit.export`` is this module, callable: ``lowbit.export(model, out, format, ...)`` is
export(); ``lowbit.export.formats_for`` and ``lowbit.export.FORMATS`` are its attributes."""
import os
import sys
import types

import torch

from .. import checkpoint
from . import compressed_tensors, gguf, gptq
from ._common import collect

TARGETS = {t.NAME: t for t in (compressed_tensors, gptq, gguf)}
FORMATS = tuple(TARGETS)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def export(model, out, format, *, tokenizer=None, dtype=torch.float16, overwrite=False,
           max_shard_size="5GB"):
    """Writes ``model`` (after lowbit.quantize_: each QATLinear's current weight is quantized
    with lowbit.quantize; after lowbit.convert_: each QuantLinear's own codes) to ``out`` in
    ``format``:

    - "compressed-tensors" / "gptq": a Hugging Face directory (config.json with the format's
      quantization_config, model.safetensors or shards + model.safetensors.index.json over
      ``max_shard_size``, generation_config.json, the tokenizer's files when given). Unquantized
      tensors are written in ``dtype``.
    - "gguf": one .gguf file (``out`` itself if it ends in .gguf, else ``out``/model.gguf) for
      Llama-architecture causal LMs; ``tokenizer`` is required.

    Scales are stored in the format's dtype (compressed-tensors: ``dtype``; GPTQ, GGUF: float16):
    when the spec's scale_dtype (FORMATS.md 1.6) is that dtype they are lowbit's scales exactly;
    otherwise (float32 scales) they are rounded to it, so the deployed weights differ from the
    trained ones by that rounding (QuantSpec(scale_dtype=...) removes it), which must stay within
    2^-11 relative for float16 (2^-8 for bfloat16): a larger one (a scale below float16's smallest
    normal) is refused, naming the layer and the worst error. A layer, spec or model
    the format cannot carry raises ValueError naming the layer and the reason before anything is
    written; so does an existing non-empty ``out`` unless ``overwrite=True``. Returns the path
    written (directory, or .gguf file). With overwrite=True an existing directory's checkpoint files
    (safetensors, index, config) are replaced; other files are left alone."""
    if not isinstance(format, str) or format not in TARGETS:
        raise ValueError(f"format: must be one of {FORMATS}, got {format!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: must be torch.float16, torch.bfloat16 or torch.float32, "
                         f"got {dtype!r}")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a path, got {type(out).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite: expected a bool, got {type(overwrite).__name__}")
    checkpoint.check_tokenizer(tokenizer)
    target = TARGETS[format]
    plan = target.plan(model, collect(model), dtype, tokenizer)
    return target.write(plan, out, overwrite=overwrite, max_shard_size=max_shard_size)


def formats_for(model):
    """The formats of FORMATS that can carry every quantized layer of ``model``: those whose
    target's check passes (the checks export runs, without computing or writing anything)."""
    layers = collect(model)
    ok = []
    for name, target in TARGETS.items():
        try:
            target.check(model, layers)
        except (ValueError, ImportError):
            continue
        ok.append(name)
    return ok


class _CallableModule(types.ModuleType):
    """lowbit.export's module type: calling the module is calling export()."""
    __call__ = staticmethod(export)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["export", "formats_for", "FORMATS", "TARGETS"]
