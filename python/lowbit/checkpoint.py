"""python/lowbit/checkpoint.py: lowbit's checkpoint layer, shared by save/load
(serialization.py), the transformers quantizer (hf.py) and lowbit.export — the per-layer table
(lowbit_config.json "layers", config.json quantization_config: parsing and checking every field,
the tensors it implies, the skeleton layers it builds), the safetensors readers, and the writer of
checkpoint directories (config.json, safetensors shards + index, generation_config.json,
tokenizer files). Imports no transformers."""
import dataclasses
import json
import os

import torch

from ._version import __version__
from .qat import QATLinear
from .qlinear import ACTS, QuantLinear
from .qweight import check_packed_values
from .spec import QuantSpec

QUANT_METHOD = "lowbit"
DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16,
          "torch.float16": torch.float16}
DERIVED = ("packed",)  # QuantLinear's CPU kernel layout: not state, rebuilt from the codes
_ST_DTYPES = {torch.uint8: "U8", torch.int8: "I8", torch.int32: "I32", torch.int64: "I64",
              torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


# ---- the per-layer table (lowbit_config.json "layers", config.json quantization_config) ----

@dataclasses.dataclass(frozen=True)
class LayerInfo:
    spec: QuantSpec
    in_features: int
    out_features: int
    bias: bool
    dtype: torch.dtype
    act: str = "auto"


def layer_entry(m):
    """The table entry of a packed QuantLinear (JSON-ready)."""
    return {"spec": dataclasses.asdict(m.spec), "in_features": m.in_features,
            "out_features": m.out_features, "bias": m.bias is not None,
            "dtype": str(m.weight_dtype), "act": m.act}


def parse_layers(cfg, where):
    """{name: LayerInfo} of a table read from ``where`` (a file name, for the messages): every
    malformed field raises ValueError naming ``where`` and the field. A table written before
    "act" was stored loads its layers with act "auto"."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    if "layers" not in cfg:
        raise ValueError(f"{where}: field 'layers' is missing")
    layers = cfg["layers"]
    if not isinstance(layers, dict) or not layers:
        raise ValueError(f"{where}: field 'layers' must be a non-empty object of layer name -> "
                         f"entry, got {layers!r:.80}")
    out = {}
    for name, e in layers.items():
        f = f"layers[{name!r}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: field {f} must be an object, got {type(e).__name__}")
        for key in ("spec", "in_features", "out_features", "bias", "dtype"):
            if key not in e:
                raise ValueError(f"{where}: field {f}.{key} is missing")
        if not isinstance(e["spec"], dict):
            raise ValueError(f"{where}: field {f}.spec must be an object, got {e['spec']!r:.80}")
        try:  # a spec written before scale_dtype existed loads as float32
            spec = QuantSpec(**e["spec"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: field {f}.spec is not a valid QuantSpec: {exc}") from None
        for key in ("in_features", "out_features"):
            v = e[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{where}: field {f}.{key} must be a positive int, got {v!r}")
        if not isinstance(e["bias"], bool):
            raise ValueError(f"{where}: field {f}.bias must be true or false, got {e['bias']!r}")
        if e["dtype"] not in DTYPES:
            raise ValueError(f"{where}: field {f}.dtype must be one of {sorted(DTYPES)}, "
                             f"got {e['dtype']!r}")
        try:
            spec.group_for(e["in_features"])
        except ValueError as exc:
            raise ValueError(f"{where}: field {f}.spec: {exc}") from None
        act = e.get("act", "auto")
        if not isinstance(act, str) or act not in ACTS:
            raise ValueError(f"{where}: field {f}.act must be one of {list(ACTS)}, got {act!r}")
        out[name] = LayerInfo(spec, e["in_features"], e["out_features"], e["bias"],
                              DTYPES[e["dtype"]], act)
    aliases = cfg.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in aliases.items()):
        raise ValueError(f"{where}: field 'aliases' must be an object of tensor name -> tensor "
                         f"name, got {aliases!r:.80}")
    return out


def parse_shared(cfg, where, layers):
    """The "shared" table {module name: layer name}: a packed layer used at several places of
    the model (nn.Sequential(lin, act, lin)) is stored once, under its first name, and these
    names are the same module. Tables without the field have none."""
    shared = cfg.get("shared", {})
    if not isinstance(shared, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in shared.items()):
        raise ValueError(f"{where}: field 'shared' must be an object of module name -> layer "
                         f"name, got {shared!r:.80}")
    for name, first in shared.items():
        if first not in layers:
            raise ValueError(f"{where}: field shared[{name!r}] names layer {first!r}, which is "
                             f"not in 'layers'")
        if name in layers:
            raise ValueError(f"{where}: field shared[{name!r}] is also a layer of its own")
    return shared


def parse_aliases(cfg, where, stored_keys):
    """The alias table, each target checked against the stored tensor names."""
    aliases = cfg.get("aliases", {})
    for alias, key in aliases.items():
        if key not in stored_keys:
            raise ValueError(f"{where}: field aliases[{alias!r}] names tensor {key!r}, which is "
                             f"not stored")
    return aliases


def skeleton_layer(info, device="meta"):
    """An empty QuantLinear for ``info`` whose state_dict holds exactly what is stored (the kernel
    layout is not: it is rebuilt after loading)."""
    m = QuantLinear(info.in_features, info.out_features, info.spec, bias=info.bias,
                    dtype=info.dtype, device=device, act=info.act)
    for b in DERIVED:
        if hasattr(m, b):
            setattr(m, b, None)
    return m


def expected_tensors(name, info):
    """{tensor key: (dtype, shape)} that a checkpoint must store for the packed layer ``name``."""
    sd = skeleton_layer(info).state_dict()
    return {f"{name}.{k}": (t.dtype, tuple(t.shape)) for k, t in sd.items()}


def check_tensors(found, layers, where):
    """``found``: {key: (dtype or safetensors dtype string, shape)} of the checkpoint. Raises
    ValueError naming ``where`` and the tensor for any packed-layer tensor that is missing or whose
    dtype or shape is not the one the table implies (a bias may be stored in any float dtype)."""
    for name, info in layers.items():
        for key, (dt, shape) in expected_tensors(name, info).items():
            if key not in found:
                raise ValueError(f"{where}: tensor {key!r} of packed layer {name!r} is missing")
            got_dt, got_shape = found[key]
            want = _ST_DTYPES.get(dt, str(dt))
            got = got_dt if isinstance(got_dt, str) else _ST_DTYPES.get(got_dt, str(got_dt))
            is_bias = key.endswith(".bias")
            ok_dt = got in ("F32", "F16", "BF16") if is_bias else got == want
            if not ok_dt:
                raise ValueError(f"{where}: tensor {key!r} has dtype {got}, expected "
                                 f"{'a float dtype' if is_bias else want} for spec {info.spec.name}")
            if tuple(got_shape) != shape:
                raise ValueError(f"{where}: tensor {key!r} has shape {tuple(got_shape)}, expected "
                                 f"{shape} for a {info.spec.name} layer of "
                                 f"({info.out_features}, {info.in_features})")


def _unreadable(f, exc):
    return ValueError(f"{f}: not a readable safetensors file (truncated or corrupt?): {exc}")


def header_of(files):
    """{key: (safetensors dtype, shape)} of safetensors files, read from their headers only; a
    file safetensors cannot parse is a ValueError naming it."""
    from safetensors import SafetensorError, safe_open

    out = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    s = h.get_slice(k)
                    out[k] = (s.get_dtype(), tuple(s.get_shape()))
        except SafetensorError as exc:
            raise _unreadable(f, exc) from None
    return out


def read_tensors(f):
    """Every tensor of the safetensors file ``f`` (on CPU); ValueError naming it if unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(f)
    except SafetensorError as exc:
        raise _unreadable(f, exc) from None


def swap_in_packed(model, layers, where, device="meta", shared=None):
    """Replaces each layer named in the table by an empty QuantLinear (an nn.Linear of that shape
    must be there), and puts that same QuantLinear at each of its ``shared`` names, so a layer
    saved shared loads shared whether or not the model's own layers are."""
    import torch.nn as nn

    def place(name, info, new):
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: names layer {name!r}, which the model does not have") \
                from None
        if old is new:  # a shared parent: already there
            return
        if not isinstance(old, nn.Linear) or old.in_features != info.in_features or \
                old.out_features != info.out_features:
            raise ValueError(f"{where}: layer {name!r} of the model is not an nn.Linear of shape "
                             f"({info.out_features}, {info.in_features})")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)

    built = {}
    for name, info in layers.items():
        built[name] = skeleton_layer(info, device=device)
        place(name, info, built[name])
    for name, first in (shared or {}).items():
        place(name, layers[first], built[first])


def rebuild_layouts(model):
    """Checks every loaded QuantLinear's scales and zero points (the loaders that fill buffers
    without QuantLinear._load_from_state_dict come through here) and rebuilds its CPU kernel
    layout from its canonical codes."""
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            check_packed_values(m.scales, m.zeros, m.spec,
                                names={f: f"{name}.{f}" for f in ("scales", "zeros")})
            m.kernel_layout()


def packed_state_dict(model):
    """state_dict without the derived kernel layouts."""
    derived = {f"{n}.{b}" for n, m in model.named_modules(remove_duplicate=False)
               if isinstance(m, QuantLinear) for b in DERIVED}
    return {k: v for k, v in model.state_dict().items() if k not in derived and v is not None}


def layer_table(model):
    """{"layers": {name: entry}, "shared": {other name: name}} of the model's packed layers: each
    QuantLinear under the first name it has, and every further place it is used."""
    first, layers, shared = {}, {}, {}
    for n, m in model.named_modules(remove_duplicate=False):
        if not isinstance(m, QuantLinear):
            continue
        if id(m) in first:
            shared[n] = first[id(m)]
        else:
            first[id(m)] = n
            layers[n] = layer_entry(m)
    return {"layers": layers, "shared": shared}


def split_aliases(state_dict):
    """(tensors, aliases): every tensor once, under its first key; a later key holding the same
    storage, offset, shape and dtype (tied or shared weights) maps to that first key."""
    tensors, seen, aliases = {}, {}, {}
    for key, t in state_dict.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t
    return tensors, aliases


def lowbit_quantization_config(model):
    """The quantization_config dict of config.json for a converted model."""
    _, aliases = split_aliases(packed_state_dict(model))
    return {"quant_method": QUANT_METHOD, "lowbit_version": __version__, **layer_table(model),
            "aliases": aliases}


# ---- writing checkpoint directories ----

def is_hf_model(model):
    cfg = getattr(model, "config", None)
    return cfg is not None and hasattr(cfg, "to_dict") and hasattr(cfg, "to_json_file")


def prepare_dir(out, overwrite, name="out"):
    """Refuses an existing non-empty directory (or a file) unless overwrite; does not create."""
    out = os.fspath(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ValueError(f"{name}: {out} exists and is not a directory")
        if os.listdir(out) and not overwrite:
            raise ValueError(f"{name}: {out} is not empty (pass overwrite=True to replace its "
                             f"contents)")
    return out


def head_tie(model):
    """False when the model's output embedding is a lowbit layer (QATLinear, QuantLinear): its
    weight is then stored quantized, no longer the input embedding's, so a checkpoint must say
    tie_word_embeddings false or a loader re-ties it onto a layer that has no weight; else None
    (the config's own value stands)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return False if isinstance(head, (QATLinear, QuantLinear)) else None


def set_untied(config):
    """config.tie_word_embeddings = False (and its text_config's, where it has one)."""
    config.tie_word_embeddings = False
    text = getattr(config, "text_config", None)
    if text is not None and hasattr(text, "tie_word_embeddings"):
        text.tie_word_embeddings = False


def hf_config_dict(model, quantization_config, dtype, tie_word_embeddings=None):
    """config.json's content for ``model`` (a transformers model), its own config untouched."""
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]
    if dtype is not None:
        cfg["dtype"] = str(dtype).replace("torch.", "")
        cfg.pop("torch_dtype", None)
    if tie_word_embeddings is not None:
        cfg["tie_word_embeddings"] = tie_word_embeddings
        if isinstance(cfg.get("text_config"), dict) and "tie_word_embeddings" in cfg["text_config"]:
            cfg["text_config"]["tie_word_embeddings"] = tie_word_embeddings
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
    return cfg


def write_checkpoint(out, tensors, config=None, model=None, tokenizer=None,
                     max_shard_size="5GB", metadata=None):
    """Writes ``tensors`` as model.safetensors, or as shards model-0000i-of-0000n.safetensors
    with model.safetensors.index.json when over ``max_shard_size`` (huggingface_hub's split, as
    save_pretrained does); ``config`` (a dict) as config.json; the model's generation_config.json
    and the tokenizer's files when given. Returns the written file names."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    meta = {"format": "pt", **(metadata or {})}
    written = []
    try:
        from huggingface_hub import split_torch_state_dict_into_shards
    except ImportError:  # no transformers stack: one file
        split = None
    else:
        split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    if split is None or not split.is_sharded:
        save_file(tensors, os.path.join(out, "model.safetensors"), metadata=meta)
        written.append("model.safetensors")
    else:
        for fname, names in split.filename_to_tensors.items():
            save_file({k: tensors[k] for k in names}, os.path.join(out, fname), metadata=meta)
            written.append(fname)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total, **split.metadata},
                       "weight_map": split.tensor_to_filename}, f, indent=2)
        written.append("model.safetensors.index.json")
    if config is not None:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        written.append("config.json")
    gen = getattr(model, "generation_config", None)
    if gen is not None and hasattr(gen, "save_pretrained"):
        gen.save_pretrained(out)
        written.append("generation_config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return written


def check_tokenizer(tokenizer):
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer: expected a transformers tokenizer (with save_pretrained), "
                        f"got {type(tokenizer).__name__}")
