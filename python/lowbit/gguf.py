"""python/lowbit/gguf.py: llama-quantize's per-tensor type choice as lowbit code — for a Llama-
architecture transformers model and a llama.cpp ftype ("Q4_K_M", ...), the ggml type that
llama-quantize (llama.cpp b11434, src/llama-quant.cpp) gives every tensor of the GGUF file, keyed by
the model's module names with the GGUF tensor name beside it, and the ftype's general.file_type.

What llama-quantize does, in lowbit's words:
  * it walks the tensors in the file's loader order (layer by layer, names sorted within a
    layer, the layer-less tensors first); only 2-D tensors whose name ends in "weight" and is no
    "_norm.weight" are quantized, the rest keep their type (norms stay F32);
  * every quantized tensor starts at the ftype's base type (Q4_K_M -> q4_k, ...);
  * output.weight, and token_embd.weight when the head is tied (no output.weight in the file),
    become Q6_K, or Q8_0 when the ftype's base is Q8_0 or the row length is not a multiple of the
    base type's block; an untied token_embd keeps the base type;
  * attn_v and ffn_down get more bits for some ftypes, some only on the first/last eighth of the
    layers and every third layer between ("more bits" layers, _more_bits below); Q2_K, Q3_K_M and
    Q3_K_L also raise attn_output; Q2_K's attn_v depends on the query/key-value head ratio; an
    80-layer grouped-query Llama (the 70B shape) raises a Q3_K/Q4_K attn_v to Q5_K;
  * a type whose block does not divide the row length falls back (Q2_K, Q3_K -> Q4_0; Q4_K ->
    Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0), and to F16 when even 32 does not divide it.

Types are lowbit format names (FORMATS.md 1.8: "q4_k", ...; "f16" / "f32" for unquantized), so
``QuantSpec(t.type)`` is the spec of a tensor. recipe(model, ftype) turns the table into the
QATConfig that trains every tensor on the type llama-quantize would give it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["FTYPES", "TensorType", "tensor_types", "file_type", "base_type", "BLOCK", "recipe"]

# llama.h's enum llama_ftype: the value llama-quantize writes as general.file_type
_FILE_TYPE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11,
              "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17,
              "Q6_K": 18}
FTYPES = tuple(_FILE_TYPE)

# weights per block of each ggml type (ggml-common.h: QK_K = 256, QK4_0 ... QK8_0 = 32)
BLOCK = {"q2_k": 256, "q3_k": 256, "q4_k": 256, "q5_k": 256, "q6_k": 256, "q4_0": 32,
         "q4_1": 32, "q5_0": 32, "q5_1": 32, "q8_0": 32, "f16": 1, "f32": 1}

# the fallback of a type whose block does not divide the row length (tensor_type_fallback)
_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


@dataclass(frozen=True)
class TensorType:
    """One tensor of the GGUF file: ``type`` is what llama-quantize writes; ``wanted`` the type
    its mixture rules chose before the shape fallback (== type when none was needed)."""
    module: str            # transformers module name ("model.layers.0.self_attn.v_proj")
    param: str             # its parameter ("model.layers.0.self_attn.v_proj.weight")
    gguf_name: str         # GGUF tensor name ("blk.0.attn_v.weight")
    shape: Tuple[int, ...]  # torch shape (out_features, in_features) / (vocab, hidden) / (hidden,)
    type: str              # "q4_k", ..., "q8_0", "f16" or "f32"
    wanted: str
    quantized: bool        # False for the tensors llama-quantize copies as they are (norms)
    tied_to: Optional[str] = None  # lm_head of a tied model: the module whose weight it shares

    @property
    def fallback(self):
        return self.type != self.wanted


def _ftype(ftype):
    f = str(ftype).upper()
    if f not in _FILE_TYPE:
        raise ValueError(f"ftype: must be one of {', '.join(FTYPES)}, got {ftype!r}")
    return f


def file_type(ftype) -> int:
    """general.file_type that llama-quantize writes for ``ftype`` (llama.h's llama_ftype)."""
    return _FILE_TYPE[_ftype(ftype)]


def base_type(ftype) -> str:
    """The ftype's default tensor type (llama_ftype_get_default_type): "Q4_K_M" -> "q4_k"."""
    f = _ftype(ftype)
    return f[:4].lower() if f.endswith(("_S", "_M", "_L")) else f.lower()


def _more_bits(i, n):
    """The layers that the _M mixtures give more bits: the first and last eighth and every third
    layer in between (llama-quant.cpp's use_more_bits)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fits(t, ncols):
    return ncols % BLOCK[t] == 0


def _shape_fallback(t, ncols):
    if _fits(t, ncols):
        return t
    t = _FALLBACK.get(t, t)
    return t if _fits(t, ncols) else "f16"


def _mixture(kind, i, ftype, base, ncols, hp, tied, imatrix):
    """The type llama-quantize's mixture rules pick for one tensor (before the shape fallback).
    i: the running index of this tensor among its kind (attn_v / ffn_down) in loader order."""
    n = hp["n_layer"]
    if kind == "output" or (kind == "token_embd" and tied):
        if not _fits(base, ncols):
            return "q8_0"
        return base if base == "q8_0" else "q6_k"
    if kind == "attn_v":
        t = base
        if ftype == "Q2_K":
            t = "q4_k" if hp["n_gqa"] >= 4 else "q3_k"
        elif ftype == "Q3_K_M":
            t = "q5_k" if i < 2 else "q4_k"
        elif ftype == "Q3_K_L":
            t = "q5_k"
        elif ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, hp["n_attn_v"]):
            t = "q6_k"
        elif ftype == "Q4_K_S" and i < 4:
            t = "q5_k"
        if hp["is_70b"] and t in ("q3_k", "q4_k"):
            t = "q5_k"
        return t
    if kind == "ffn_down":
        if ftype == "Q2_K":
            return "q3_k"
        if ftype == "Q3_K_M":
            return "q5_k" if i < n // 16 else "q4_k"
        if ftype == "Q3_K_L":
            return "q5_k"
        if ftype in ("Q4_K_M", "Q5_K_M"):
            return "q6_k" if _more_bits(i, n) else base
        if ftype == "Q4_K_S":
            return "q5_k" if i < n // 8 else base
        if ftype in ("Q4_0", "Q5_0") and imatrix and i < n // 8:
            return "q4_1" if ftype == "Q4_0" else "q5_1"
        return base
    if kind == "attn_output":
        return {"Q2_K": "q3_k", "Q3_K_M": "q4_k", "Q3_K_L": "q5_k"}.get(ftype, base)
    return base  # attn_q, attn_k, ffn_gate, ffn_up, an untied token_embd


_KINDS = ("attn_v", "ffn_down", "attn_output", "attn_q", "attn_k", "ffn_gate", "ffn_up")


def _kind(gguf_name):
    if gguf_name == "output.weight":
        return "output"
    if gguf_name == "token_embd.weight":
        return "token_embd"
    for k in _KINDS:
        if f".{k}.weight" in gguf_name:
            return k
    return "other"


def _loader_key(name):
    """llama.cpp's weight_name_comparer: by layer number (-1 for layer-less), then by name."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def _hparams(model):
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in ("llama", "mistral"):
        raise ValueError("model: tensor_types needs a Llama-architecture transformers model "
                         f"(config.model_type 'llama' or 'mistral'), got "
                         f"{getattr(cfg, 'model_type', type(model).__name__)!r}")
    n_head = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    n_layer = int(cfg.num_hidden_layers)
    return {"n_layer": n_layer, "n_gqa": n_head // n_kv if n_kv else 0,
            # llama.cpp's LLM_TYPE_70B for the Llama arch: 80 layers with grouped-query attention
            "is_70b": n_layer == 80 and n_head != n_kv}


def tensor_types(model, ftype, *, imatrix=False) -> Dict[str, TensorType]:
    """{module name: TensorType} for every parameter of ``model`` that its GGUF file holds
    (lowbit.export's Llama layout, as convert_hf_to_gguf.py writes it), with the type that
    ``llama-quantize F32.gguf OUT.gguf <ftype>`` gives it; ``imatrix=True`` for a run with
    --imatrix (only Q4_0 / Q5_0 change: their first eighth of ffn_down becomes Q4_1 / Q5_1).
    A tied head (lm_head.weight is embed_tokens.weight) has no output.weight in the file: the
    embedding takes the output rules, and lm_head gets the same entry with tied_to set.
    Insertion order is llama-quantize's processing order."""
    import gguf

    f = _ftype(ftype)
    base = base_type(f)
    hp = _hparams(model)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["n_layer"])
    params = dict(model.named_parameters(remove_duplicate=False))
    first_name = {}
    for pname, p in params.items():
        first_name.setdefault(id(p), pname)
    rows = []
    aliases = []
    for pname, p in params.items():
        owner = first_name[id(p)]
        if owner != pname:
            aliases.append((pname, owner))
            continue
        g = names.get_name(pname, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise ValueError(f"model: parameter {pname} has no GGUF name in llama.cpp's Llama "
                             "tensor map")
        rows.append((g, pname, tuple(p.shape)))
    gg = {g for g, _, _ in rows}
    tied = "output.weight" not in gg
    hp["n_attn_v"] = sum(_kind(g) == "attn_v" for g in gg)
    counters = {"attn_v": 0, "ffn_down": 0}
    out = {}
    for g, pname, shape in sorted(rows, key=lambda r: _loader_key(r[0])):
        module = pname.rsplit(".", 1)[0]
        quantize = len(shape) == 2 and g.endswith("weight") and "_norm.weight" not in g
        if not quantize:
            out[module] = TensorType(module, pname, g, shape, "f32", "f32", False)
            continue
        kind = _kind(g)
        i = counters.get(kind, 0)
        wanted = _mixture(kind, i, f, base, shape[-1], hp, tied, imatrix)
        if kind in counters:
            counters[kind] += 1
        out[module] = TensorType(module, pname, g, shape, _shape_fallback(wanted, shape[-1]),
                                 wanted, True)
    for pname, owner in aliases:
        src = out[owner.rsplit(".", 1)[0]]
        module = pname.rsplit(".", 1)[0]
        out[module] = TensorType(module, pname, src.gguf_name, src.shape, src.type, src.wanted,
                                 src.quantized, tied_to=src.module)
    return out


def recipe(model, ftype, *, imatrix=False, ste="bitdistiller"):
    """The QATConfig that trains ``model`` on the types ``llama-quantize <ftype>`` gives its
    tensors (tensor_types): one override per module by its exact name, the token embedding and
    a tied or untied head included (``embeddings=True``); the tensors llama-quantize leaves
    unquantized (norms) and its "f16" fallbacks (rows not a multiple of 32) are left in full
    precision (lowbit.export writes those 2-D tensors as F16 in the GGUF, as llama-quantize does);
    every other module is left alone. ``config.ftype`` remembers the ftype (general.file_type of
    the export). ``imatrix`` as in tensor_types."""
    from .qat import QATConfig
    from .spec import QuantSpec

    f = _ftype(ftype)
    overrides = {}
    for module, t in tensor_types(model, f, imatrix=imatrix).items():
        quantized = t.quantized and t.type not in ("f16", "f32")
        overrides[module] = QuantSpec(t.type) if quantized else None
    overrides["*"] = None  # a module llama-quantize has no tensor for stays as it is
    return QATConfig(spec=QuantSpec(base_type(f)), skip=(), overrides=overrides, ste=ste,
                     embeddings=True, ftype=f)
