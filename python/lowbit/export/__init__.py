"""python/lowbit/export/__init__.py: lowbit.export — writes a QAT'd (quantize_) or packed
(convert_) model in a format other engines load: "compressed-tensors" (vLLM, transformers),
"gptq" (GPTQ v2: transformers + GPTQModel, vLLM) and "gguf" (llama.cpp). One file per format in
this package; everything is checked before the first file is written, and the model is never
changed."""
import os

import torch

from .. import checkpoint
from .._version import __version__
from . import _common

FORMATS = ("compressed-tensors", "gptq", "gguf")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_HF_FILES = ("config.json", "generation_config.json", "lowbit_config.json")


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
    if format not in FORMATS:
        raise ValueError(f"format: must be one of {FORMATS}, got {format!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: must be torch.float16, torch.bfloat16 or torch.float32, "
                         f"got {dtype!r}")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a path, got {type(out).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite: expected a bool, got {type(overwrite).__name__}")
    checkpoint.check_tokenizer(tokenizer)
    layers = _common.collect(model)
    if format == "gguf":
        from . import gguf as fmt

        write = fmt.plan(model, layers, dtype, tokenizer)
        path = fmt.out_file(out)
        if os.path.exists(path) and not overwrite:
            raise ValueError(f"out: {path} exists (pass overwrite=True to replace it)")
        if os.path.isdir(path):
            raise ValueError(f"out: {path} is a directory")
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = path + ".tmp"
        write(tmp)
        os.replace(tmp, path)
        return path
    if not checkpoint.is_hf_model(model):
        raise ValueError(f"model: format {format!r} writes a Hugging Face checkpoint; "
                         f"{type(model).__name__} is not a transformers model")
    if format == "compressed-tensors":
        from . import compressed_tensors as fmt
    else:
        from . import gptq as fmt
    qtensors, qc = fmt.plan(model, layers, dtype)
    others, _aliases = _common.other_tensors(model, layers, dtype)
    tensors = {**others, **qtensors}
    cfg = checkpoint.hf_config_dict(model, qc, dtype,
                                    tie_word_embeddings=checkpoint.head_tie(model))
    out = checkpoint.prepare_dir(out, overwrite)
    if os.path.isdir(out):  # overwrite=True: no stale shard or config may be mixed in
        for f in os.listdir(out):
            if f.endswith((".safetensors", ".safetensors.index.json")) or f in _HF_FILES:
                os.remove(os.path.join(out, f))
    checkpoint.write_checkpoint(out, tensors, cfg, model=model, tokenizer=tokenizer,
                        max_shard_size=max_shard_size,
                        metadata={"lowbit_version": __version__})
    return out


def formats_for(model):
    """The formats of FORMATS that can carry every quantized layer of ``model`` (the checks
    export runs, without writing anything)."""
    ok = []
    layers = _common.collect(model)
    for f in FORMATS:
        try:
            if f == "gguf":
                from . import gguf as fmt
                fmt._hparams(model)
                for L in layers:
                    fmt._block_type(fmt._gguf(), L)
            elif f == "compressed-tensors":
                from . import compressed_tensors as fmt
                fmt.plan(model, layers, torch.float16)
            else:
                from . import gptq as fmt
                fmt.plan(model, layers, torch.float16)
        except (ValueError, ImportError):
            continue
        ok.append(f)
    return ok


__all__ = ["export", "formats_for", "FORMATS"]

# lowbit.export is this function (the package's name is shadowed by it in lowbit's namespace):
# keep the helpers reachable as lowbit.export.formats_for / lowbit.export.FORMATS
export.formats_for = formats_for
export.FORMATS = FORMATS
