"""python/lowbit/export/compressed_tensors.py: the compressed-tensors "pack-quantized" writer (the
format vLLM loads natively; transformers reads it through compressed-tensors).

Per quantized layer: ``weight_packed`` int32 (N, ceil(K*b/32)), ``weight_scale`` (N, G) in the
export dtype, ``weight_zero_point`` int32 (ceil(N*b/32), G) packed along dim 0 (asymmetric only),
``weight_shape`` int64 [N, K]; dequantization (q - z) * s, i.e. lowbit's own integers: the library
stores q - 2^(b-1) and z - 2^(b-1) as int8 and packs them with its own ``pack_to_int32``, which
adds the offset back — so the bits on disk are lowbit's unsigned codes. INT-sym stores no zero
point: its signed code is lowbit's stored code minus 2^(b-1) too.

3-bit: we write the dense bitstream of compressed-tensors >= 0.18 (codes straddle int32 words;
0.17 and older put 10 codes in each word, and nothing in the config says which). That is what the
installed library's own pack_to_int32 writes and its readers read, so older versions are refused
for 3-bit rather than written in a layout nobody can tell apart."""
import warnings

import torch

from ._common import (hf_plan, refuse_non_int, require_hf_model, round_scales,
                      unquantized_linears, write_hf_dir)

NAME = "compressed-tensors"
MIN_DENSE_3BIT = (0, 18)
write = write_hf_dir  # the writer of a plan: a Hugging Face directory


def _library():
    try:
        import compressed_tensors
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    except ImportError as exc:
        raise ImportError("format 'compressed-tensors': needs the compressed-tensors package "
                          "(pip install compressed-tensors)") from exc
    v = tuple(int(x) for x in compressed_tensors.__version__.split(".")[:2])
    return v, pack_to_int32


def _scheme(spec, K):
    g = spec.group_for(K)
    per_row = spec.group_size == -1
    return {"num_bits": spec.bits, "type": "int", "symmetric": spec.symmetric,
            "strategy": "channel" if per_row else "group", "group_size": None if per_row else g,
            "dynamic": False, "actorder": None, "observer": "minmax"}


def _scale(L, dtype):
    return round_scales(L.scales, dtype, "scale", L.name, L.spec, used=L.used_groups(),
                        hint=", or export with dtype=torch.float32 (compressed-tensors stores "
                             "the scales in the export dtype)")


def check(model, layers, dtype=torch.float16):
    """What this target can carry: a transformers model whose quantized layers are INT (3-bit
    with compressed-tensors >= 0.18) and whose scales round to ``dtype`` within REL_ROUNDING;
    ValueError naming the layer otherwise (ImportError without the library)."""
    require_hf_model(model, NAME)
    refuse_non_int(layers, "compressed-tensors pack-quantized")
    version, _ = _library()
    if any(L.spec.bits == 3 for L in layers) and version < MIN_DENSE_3BIT:
        raise ValueError(f"format 'compressed-tensors': 3-bit layers need compressed-tensors >= "
                         f"0.18 (dense 3-bit packing); found {'.'.join(map(str, version))}")
    for L in layers:
        _scale(L, dtype)


def plan(model, layers, dtype, tokenizer=None):
    """Checks everything (check) and returns the HfPlan write() writes."""
    check(model, layers, dtype)
    _, pack = _library()
    tensors = {}
    for L in layers:
        N, K = L.shape
        off = 1 << (L.spec.bits - 1)
        # compressed-tensors' packer takes the signed int8 codes q - 2^(b-1)
        tensors[f"{L.name}.weight_packed"] = pack((L.q - off).to(torch.int8), L.spec.bits)
        tensors[f"{L.name}.weight_scale"] = _scale(L, dtype).contiguous()
        tensors[f"{L.name}.weight_shape"] = torch.tensor([N, K], dtype=torch.int64)
        if L.zeros is not None:
            tensors[f"{L.name}.weight_zero_point"] = pack((L.zeros - off).to(torch.int8),
                                                          L.spec.bits, packed_dim=0)
        if L.bias is not None:
            tensors[f"{L.name}.bias"] = L.bias.to(dtype).contiguous()
    schemes = {}
    for L in layers:
        key = tuple(sorted(_scheme(L.spec, L.shape[1]).items()))
        schemes.setdefault(key, []).append(L.name)
    ignore = unquantized_linears(model, layers)
    groups = {}
    for i, (key, names) in enumerate(schemes.items()):
        targets = ["Linear"] if len(schemes) == 1 else names
        groups[f"group_{i}"] = {"targets": targets, "weights": dict(key),
                                "input_activations": None, "output_activations": None,
                                "format": "pack-quantized"}
    if len(schemes) > 1:
        warnings.warn("compressed-tensors: the layers use several specs, written as one config "
                      "group each (compressed-tensors' own decompressor reads them); transformers' "
                      "dequantize=True path (5.24) applies one scheme to all dense layers and "
                      "cannot load this checkpoint", UserWarning, stacklevel=3)
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized",
          "quantization_status": "compressed", "config_groups": groups, "ignore": ignore,
          "kv_cache_scheme": None}
    return hf_plan(model, layers, tensors, qc, dtype, tokenizer)
