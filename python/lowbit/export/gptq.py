"""python/lowbit/export/gptq.py: the GPTQ writer, checkpoint format "gptq_v2" (transformers +
optimum + GPTQModel, vLLM's GPTQ loaders).

Per layer: ``qweight`` int32 (K*b/32, N), codes packed along in_features as one little-endian
bitstream per output column (code k at bits [k*b, (k+1)*b), so 3-bit codes straddle words);
``qzeros`` int32 (G, N*b/32), the zero points z packed the same way along out_features;
``scales`` float16 (G, N); ``g_idx`` int32 (K,) = k // g; dequantization (q - z) * s. v2 stores
z itself (v1 stores z - 1 and cannot hold z = 0, so it is never written). INT-sym is written with
sym=true and z = 2^(b-1): lowbit's stored code q + 2^(b-1) minus that z is its signed code.
GPTQ has one (bits, group_size, sym) per checkpoint and quantizes every linear layer of the
decoder blocks: a model that mixes specs, or leaves a block's linear layer unquantized, is
refused. GPTQModel (the reference reader) supports group sizes -1, 16, 32, ..., 1024."""
import torch

from ._common import (hf_plan, refuse_non_int, require_hf_model, round_scales,
                      unquantized_linears, write_hf_dir)

NAME = "gptq"
write = write_hf_dir  # the writer of a plan: a Hugging Face directory
GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)


def pack_dense(values, bits, chunk_rows=256):
    """(R, C) integers in [0, 2^bits) -> (R, C*bits/32) int32: each row one little-endian
    bitstream, value c at bits [c*bits, (c+1)*bits)."""
    R, C = values.shape
    assert (C * bits) % 32 == 0
    W = C * bits // 32
    out = torch.empty((R, W), dtype=torch.int32)
    shifts = torch.arange(bits, dtype=torch.int64)
    weights = torch.ones(32, dtype=torch.int64) << torch.arange(32, dtype=torch.int64)
    for r0 in range(0, R, chunk_rows):
        v = values[r0:r0 + chunk_rows].to(torch.int64)
        bitsarr = ((v.unsqueeze(-1) >> shifts) & 1).reshape(v.shape[0], W, 32)
        words = (bitsarr * weights).sum(-1)  # < 2^32: reinterpret as int32 below
        out[r0:r0 + chunk_rows] = (words - ((words >> 31) << 32)).to(torch.int32)
    return out


def _scale(L):
    return round_scales(L.scales, torch.float16, "scale", L.name, L.spec, used=L.used_groups())


def check(model, layers, dtype=torch.float16):
    """What this target can carry (ValueError naming the layer otherwise): a transformers model
    whose every decoder linear layer is quantized with one INT (bits, group_size, sym) of a
    group size GPTQ readers support and shapes that pack into int32 words, an unquantized LM
    head, and scales that round to float16 within REL_ROUNDING. ``dtype`` (of the unquantized
    tensors) does not matter here."""
    require_hf_model(model, NAME)
    refuse_non_int(layers, "GPTQ")
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_names = {n for n, m in model.named_modules() if out_emb is not None and m is out_emb}
    for L in layers:
        if L.name in out_names:
            raise ValueError(f"{L.name}: a quantized output head; GPTQ readers load the LM head "
                             f"unquantized (skip it in QATConfig, or export with "
                             f"'compressed-tensors' or 'gguf')")
    first = layers[0]
    key = (first.spec.bits, first.spec.group_size, first.spec.symmetric)
    for L in layers:
        k = (L.spec.bits, L.spec.group_size, L.spec.symmetric)
        if k != key:
            raise ValueError(f"{L.name}: spec {L.spec.name} differs from {first.name}'s "
                             f"{first.spec.name}; a GPTQ checkpoint has one bits/group_size/sym "
                             f"for all layers (export the others with 'compressed-tensors' or "
                             f"'gguf')")
        if L.spec.group_size not in GROUP_SIZES:
            raise ValueError(f"{L.name}: group size {L.spec.group_size} is not one GPTQ readers "
                             f"support {GROUP_SIZES}")
        N, K = L.shape
        if (K * L.spec.bits) % 32 or (N * L.spec.bits) % 32:
            raise ValueError(f"{L.name}: shape ({N}, {K}) does not pack into whole int32 words "
                             f"at {L.spec.bits} bits (GPTQ needs in_features*bits and "
                             f"out_features*bits divisible by 32)")
    for name in unquantized_linears(model, layers):
        if name not in out_names:
            raise ValueError(f"{name}: an unquantized linear layer; GPTQ readers quantize every "
                             f"linear layer of the decoder blocks (quantize it too, or export "
                             f"with 'compressed-tensors')")
    for L in layers:
        _scale(L)


def plan(model, layers, dtype, tokenizer=None):
    """Checks everything (check) and returns the HfPlan write() writes."""
    check(model, layers, dtype)
    first = layers[0]
    bits, sym = first.spec.bits, first.spec.symmetric
    tensors = {}
    for L in layers:
        N, K = L.shape
        g = L.group
        scales = _scale(L)
        zeros = L.zeros if L.zeros is not None else torch.full_like(
            L.q[:, ::g], 1 << (bits - 1))
        tensors[f"{L.name}.qweight"] = pack_dense(L.q, bits).t().contiguous()
        tensors[f"{L.name}.qzeros"] = pack_dense(zeros.t().contiguous(), bits)
        tensors[f"{L.name}.scales"] = scales.t().contiguous()
        tensors[f"{L.name}.g_idx"] = (torch.arange(K, dtype=torch.int32) // g)
        if L.bias is not None:
            tensors[f"{L.name}.bias"] = L.bias.to(torch.float16).contiguous()
    qc = {"quant_method": "gptq", "bits": bits, "group_size": first.spec.group_size,
          "desc_act": False, "sym": sym, "format": "gptq_v2", "checkpoint_format": "gptq_v2",
          "lm_head": False, "true_sequential": True, "damp_percent": 0.01}
    return hf_plan(model, layers, tensors, qc, dtype, tokenizer)
