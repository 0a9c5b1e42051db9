"""python/lowbit/serialization.py: save_quantized / load_quantized — a packed model as one
safetensors file (every tensor of the state dict: packed codes, scales, zero points, and the
unquantized layers) plus lowbit_config.json naming each packed layer with its QuantSpec, so the
plain architecture (e.g. AutoModelForCausalLM.from_config) can be rebuilt and refilled."""
import dataclasses
import json
import os

import torch
import torch.nn as nn

from .spec import QuantSpec

CONFIG_NAME = "lowbit_config.json"
WEIGHTS_NAME = "model.safetensors"
_DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16,
           "torch.float16": torch.float16}


def _packed_layers(model):
    from .qlinear import QuantLinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]


_DERIVED = ("packed", "params")  # QuantLinear's CPU kernel layout: rebuilt from codes on load


def _derived_keys(model):
    keys = set()
    for name, _ in _packed_layers(model):
        keys.update(f"{name}.{b}" for b in _DERIVED)
    return keys


def save_quantized(model, directory):
    """Writes ``model`` (after lowbit.convert_) to ``directory``: model.safetensors (every
    tensor of the state dict once — tied tensors such as an LM head tied to the embedding are
    stored once and listed as aliases; the kernel layouts are not stored, they are rebuilt from
    the canonical codes) and lowbit_config.json (each packed layer's QuantSpec). Returns the
    directory."""
    from safetensors.torch import save_file

    from . import __version__

    layers = _packed_layers(model)
    if not layers:
        raise ValueError("model: holds no packed QuantLinear layers (run lowbit.convert_ first)")
    os.makedirs(directory, exist_ok=True)
    cfg = {"lowbit_version": __version__, "layers": {}, "aliases": {}}
    for name, m in layers:
        cfg["layers"][name] = {"spec": dataclasses.asdict(m.spec), "in_features": m.in_features,
                               "out_features": m.out_features, "bias": m.bias is not None,
                               "dtype": str(m.weight_dtype)}
    derived = _derived_keys(model)
    tensors, seen = {}, {}
    for key, t in model.state_dict().items():
        if key in derived or t is None:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in seen:
            cfg["aliases"][key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().contiguous().cpu()
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME),
              metadata={"format": "pt", "lowbit_version": __version__})
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(cfg, f, indent=1)
    return directory


def load_quantized(model_skeleton, directory, device="cpu"):
    """Swaps the layers named in lowbit_config.json of ``model_skeleton`` (the plain,
    unquantized architecture, e.g. AutoModelForCausalLM.from_config(config)) for packed
    QuantLinear layers, loads every tensor from model.safetensors, rebuilds the kernel layouts,
    and returns the model. Its outputs are bit-identical to the saved model's."""
    from safetensors.torch import load_file

    from .qlinear import QuantLinear, build_kernel_layout

    path = os.path.join(directory, CONFIG_NAME)
    if not isinstance(model_skeleton, nn.Module):
        raise TypeError(f"model_skeleton: expected an nn.Module, got {type(model_skeleton).__name__}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"directory: no {CONFIG_NAME} in {directory}")
    with open(path) as f:
        cfg = json.load(f)
    for name, info in cfg["layers"].items():
        try:
            old = model_skeleton.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"model_skeleton: has no layer {name!r} named in {path}") from exc
        if not isinstance(old, nn.Linear) or old.in_features != info["in_features"] or \
                old.out_features != info["out_features"]:
            raise ValueError(f"model_skeleton: layer {name!r} is not an nn.Linear of shape "
                             f"({info['out_features']}, {info['in_features']})")
        new = QuantLinear(info["in_features"], info["out_features"], QuantSpec(**info["spec"]),
                          bias=info["bias"], dtype=_DTYPES[info["dtype"]], device="cpu")
        parent_name, _, child = name.rpartition(".")
        parent = model_skeleton.get_submodule(parent_name) if parent_name else model_skeleton
        setattr(parent, child, new)
    sd = load_file(os.path.join(directory, WEIGHTS_NAME))
    for alias, key in cfg.get("aliases", {}).items():
        sd[alias] = sd[key]
    derived = _derived_keys(model_skeleton)
    missing, unexpected = model_skeleton.load_state_dict(sd, strict=False)
    if unexpected:
        raise ValueError(f"directory: tensors not in the model: {sorted(unexpected)[:5]}")
    missing = [k for k in missing if k not in derived]
    if missing:
        raise ValueError(f"directory: tensors missing from {WEIGHTS_NAME}: {missing[:5]}")
    for _, m in _packed_layers(model_skeleton):
        m.packed, m.params = build_kernel_layout(m.codes, m.scales, m.zeros, m.spec,
                                                 m.in_features)
    return model_skeleton.to(device)


__all__ = ["save_quantized", "load_quantized"]
