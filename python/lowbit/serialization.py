"""python/lowbit/serialization.py: save_quantized / load_quantized — a packed model as one
safetensors file (every tensor of the state dict: packed codes, scales, zero points, and the
unquantized layers) plus lowbit_config.json naming each packed layer with its QuantSpec and act; for a
transformers model also config.json (quantization_config "lowbit"), generation_config.json and
the tokenizer, so the directory loads by path alone (load_quantized(path), or
AutoModelForCausalLM.from_pretrained after `import lowbit`). Every stored tensor's dtype and shape
is checked against the layer table before anything is loaded."""
import json
import os

import torch.nn as nn

from . import checkpoint
from ._version import __version__

CONFIG_NAME = "lowbit_config.json"
WEIGHTS_NAME = "model.safetensors"


def save_quantized(model, directory, tokenizer=None):
    """Writes ``model`` (after lowbit.convert_) to ``directory``: model.safetensors (every
    tensor of the state dict once — tied tensors such as an LM head tied to the embedding are
    stored once and listed as aliases; the kernel layouts are not stored, they are rebuilt from
    the canonical codes) and lowbit_config.json (each packed layer's QuantSpec, shape and
    accuracy mode ``act``, and the other places a layer used at several places is). For a
    transformers model also config.json with quantization_config {"quant_method": "lowbit", ...},
    generation_config.json and, when given, the tokenizer's files. The model is not changed.
    Returns the directory."""
    from safetensors.torch import save_file

    table = checkpoint.layer_table(model)
    if not table["layers"]:
        raise ValueError("model: holds no packed QuantLinear layers (run lowbit.convert_ first)")
    checkpoint.check_tokenizer(tokenizer)
    tensors, aliases = checkpoint.split_aliases(checkpoint.packed_state_dict(model))
    tensors = {k: t.detach().contiguous().cpu() for k, t in tensors.items()}
    cfg = {"lowbit_version": __version__, **table, "aliases": aliases}
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME),
              metadata={"format": "pt", "lowbit_version": __version__})
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(cfg, f, indent=1)
    if checkpoint.is_hf_model(model):
        qc = checkpoint.lowbit_quantization_config(model)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        with open(os.path.join(directory, "config.json"), "w") as f:
            cfg_dict = checkpoint.hf_config_dict(model, qc, dtype,
                                                 tie_word_embeddings=checkpoint.head_tie(model))
            json.dump(cfg_dict, f, indent=2, sort_keys=True)
        gen = getattr(model, "generation_config", None)
        if gen is not None and hasattr(gen, "save_pretrained"):
            gen.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _read_config(directory):
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"directory: no {CONFIG_NAME} in {directory}")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return path, cfg, checkpoint.parse_layers(cfg, path)


def load_quantized(model_or_path, directory=None, device="cpu"):
    """Loads a directory written by save_quantized.

    ``load_quantized(path)``: builds the architecture from the directory's config.json (a
    transformers model; through the registered "lowbit" quantizer) and returns the packed model.
    ``load_quantized(model_skeleton, directory)``: swaps the layers named in lowbit_config.json of
    ``model_skeleton`` (the plain, unquantized architecture, e.g.
    AutoModelForCausalLM.from_config(config)) for packed QuantLinear layers, loads every tensor,
    rebuilds the kernel layouts, and returns the model (also for directories without
    config.json, e.g. written by lowbit 0.1). Outputs are bit-identical to the saved model's."""
    if directory is None:
        if isinstance(model_or_path, nn.Module):
            raise TypeError("directory: load_quantized(model_skeleton, directory) needs the "
                            "directory")
        return _load_by_path(model_or_path, device)
    model_skeleton = model_or_path
    if not isinstance(model_skeleton, nn.Module):
        raise TypeError(f"model_skeleton: expected an nn.Module, got {type(model_skeleton).__name__}")
    path, cfg, layers = _read_config(directory)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"directory: no {WEIGHTS_NAME} in {directory}")
    checkpoint.check_tensors(checkpoint.header_of([weights]), layers, weights)
    checkpoint.swap_in_packed(model_skeleton, layers, f"{path} (model_skeleton)", device="cpu",
                              shared=checkpoint.parse_shared(cfg, path, layers))
    sd = checkpoint.read_tensors(weights)
    for alias, key in checkpoint.parse_aliases(cfg, path, set(sd)).items():
        sd[alias] = sd[key]
    missing, unexpected = model_skeleton.load_state_dict(sd, strict=False)
    if unexpected:
        raise ValueError(f"directory: tensors not in the model: {sorted(unexpected)[:5]}")
    if missing:
        raise ValueError(f"directory: tensors missing from {WEIGHTS_NAME}: {missing[:5]}")
    checkpoint.rebuild_layouts(model_skeleton)
    return model_skeleton.to(device)


def _load_by_path(path, device):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a directory path, got {type(path).__name__}")
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path: {path} is not a directory")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"path: no config.json in {path} (a directory written for a "
                                f"non-transformers model or by lowbit 0.1: use "
                                f"load_quantized(model_skeleton, {path!r}))")
    with open(cfg_path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != checkpoint.QUANT_METHOD:
        raise ValueError(f"{cfg_path}: field quantization_config.quant_method is not "
                         f"{checkpoint.QUANT_METHOD!r} (not a directory written by "
                         f"save_quantized)")
    checkpoint.parse_layers(qc, f"{cfg_path} quantization_config")
    from . import hf

    hf.register()
    import transformers

    archs = cfg.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        cls = transformers.AutoModelForCausalLM
    return cls.from_pretrained(path).to(device)


__all__ = ["save_quantized", "load_quantized"]
