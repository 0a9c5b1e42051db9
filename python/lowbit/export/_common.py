"""python/lowbit/export/_common.py: what every export target shares — the quantized layers of a
model as integer codes, or GGUF blocks for llama.cpp's block types (QATLinear / QATEmbedding:
the current weight quantized with lowbit.quantize; QuantLinear: its own codes), the rounding of scales to the target's storage dtype (refusing 0,
inf and more than REL_ROUNDING relative), the unquantized tensors of the state dict, and the
plan and writer of the Hugging Face directory targets (compressed-tensors, gptq)."""
import dataclasses
import math
import os

import torch
import torch.nn as nn

from .. import checkpoint
from .._version import __version__
from ..fake_quant import quantize
from ..qat import QATEmbedding, QATLinear
from ..qlinear import QuantLinear
from ..sparse import SparseLinear24

HF_FILES = ("config.json", "generation_config.json", "lowbit_config.json")


@dataclasses.dataclass
class Layer:
    """One quantized linear layer: ``q`` the unsigned codes (N, K) int32 as lowbit stores them
    (INT asym: q; INT sym: q + 2^(b-1); NF/FP: level index), ``scales`` float32 (N, G) (or
    (N, G, 2) for two-scale formats), ``zeros`` int32 (N, G) or None, ``bias`` or None.
    A llama.cpp block type (FORMATS.md 1.8) has ``blocks``, the (N, K/block * type_size) uint8
    GGUF blocks lowbit.quantize packed, instead (q None, scales (N, 0)). ``kind``: "linear" or
    "embedding" (a QATEmbedding: N = vocabulary, K = embedding_dim); ``weight_id``: which
    Parameter the weight is (a tied head and its embedding share one)."""
    name: str
    spec: object
    q: torch.Tensor
    scales: torch.Tensor
    zeros: object
    bias: object
    group: int
    blocks: object = None
    kind: str = "linear"
    in_features: int = None
    weight_id: int = None

    @property
    def shape(self):
        if self.q is None:
            return (self.blocks.shape[0], self.in_features)
        return tuple(self.q.shape)

    def used_groups(self):
        return used_groups(self.q, self.zeros, self.group, self.spec.bits)

    def dequantized(self):
        """(q - z) * s (asym) or (q - 2^(b-1)) * s (sym) in float32, from these integers: the
        weight lowbit computes with (INT formats)."""
        g = self.group
        s = self.scales.repeat_interleave(g, dim=1)
        if self.zeros is not None:
            return (self.q - self.zeros.repeat_interleave(g, dim=1)).float() * s
        return (self.q - (1 << (self.spec.bits - 1))).float() * s


def used_groups(q, zeros, group, bits):
    """(N, G) bool: the groups of codes ``q`` (N, K) holding a code other than their zero point
    (``zeros`` None: INT sym, 2^(b-1)); the others dequantize to 0 whatever their scale."""
    N, K = q.shape
    z = zeros if zeros is not None else torch.full((N, K // group), 1 << (bits - 1),
                                                   dtype=q.dtype)
    return (q.reshape(N, K // group, group) != z.unsqueeze(-1)).any(-1)


def unpack_codes(codes, bits, K, chunk_rows=1024):
    """lowbit's per-row little-endian bitstream (csrc/formats.h, lb_get_code) -> (N, K) int32:
    code j occupies bits [j*b, (j+1)*b) from bit 0 of byte 0."""
    n = codes.shape[0]
    j = torch.arange(K, dtype=torch.int64)
    bit = j * bits
    byte = bit >> 3
    sh = (bit & 7).to(torch.int32)
    nxt = torch.clamp(byte + 1, max=codes.shape[1] - 1)
    mask = (1 << bits) - 1
    out = torch.empty((n, K), dtype=torch.int32)
    c = codes.to(torch.int32)
    for r0 in range(0, n, chunk_rows):
        rows = c[r0:r0 + chunk_rows]
        v = rows[:, byte] | (rows[:, nxt] << 8)
        out[r0:r0 + chunk_rows] = (v >> sh) & mask
    return out


def collect(model):
    """[Layer] of every QATLinear / QuantLinear in ``model`` (module order), without changing it.
    Raises ValueError for a model with none, and for 2:4-sparse layers (no target carries them)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, SparseLinear24):
            raise ValueError(f"{name}: a 2:4-sparse layer; no export format carries lowbit's "
                             f"2:4 layout")
        kind, wid = "linear", None
        if isinstance(m, QuantLinear):
            codes, scales, zeros = m.codes, m.scales, m.zeros
            spec, (N, K) = m.spec, (m.out_features, m.in_features)
        elif isinstance(m, (QATLinear, QATEmbedding)):
            with torch.no_grad():
                qw = quantize(m.weight.detach(), m.spec)
            codes, scales, zeros, spec = qw.codes, qw.scales, qw.zeros, qw.spec
            N, K = qw.shape
            kind = "embedding" if isinstance(m, QATEmbedding) else "linear"
            wid = id(m.weight)
        else:
            continue
        g = spec.group_for(K)
        bias = None if getattr(m, "bias", None) is None else m.bias.detach().cpu()
        if spec.is_block_type:  # the GGUF blocks themselves: nothing to unpack
            layers.append(Layer(name, spec, None, torch.empty((N, 0)), None, bias, g,
                                blocks=codes.detach().cpu().contiguous(), kind=kind,
                                in_features=K, weight_id=wid))
            continue
        q = unpack_codes(codes.detach().cpu(), spec.bits, K)
        z = None if zeros is None else zeros.detach().cpu().to(torch.int32)
        layers.append(Layer(name, spec, q, scales.detach().cpu().float(), z, bias, g,
                            kind=kind, in_features=K, weight_id=wid))
        assert q.shape == (N, K)
    if not layers:
        raise ValueError("model: holds no QATLinear or QuantLinear layers (run lowbit.quantize_ "
                         "or lowbit.convert_ first)")
    return layers


def spec_scale_dtype(spec):
    """The dtype lowbit rounded the spec's scales to (FORMATS.md 1.6); float32 before that
    field existed."""
    name = getattr(spec, "scale_dtype", "float32")
    if isinstance(name, torch.dtype):
        return name
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# the most round-to-nearest-even can move a number of the normal range, relative to it (half an
# ulp): what an export may lose on a scale. Below float16's smallest normal (6.1e-5) the spacing
# is fixed and the relative error grows, so such scales are refused rather than written.
REL_ROUNDING = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 0.0}


def round_scales(t, dtype, what, layer, spec=None, used=None, hint=""):
    """``t`` (float32) rounded to ``dtype``; ValueError naming the layer where a value becomes 0
    or inf (a nonzero scale must stay nonzero and finite), and where a scale moves by more than
    REL_ROUNDING[dtype] relative (2^-11 for float16) — the message gives the worst one. Only the
    scales of groups in ``used`` (bool, t's leading shape; default all) count there: a group
    whose codes all equal its zero point is 0 whatever its scale. With ``spec`` whose
    scale_dtype is ``dtype`` the scales must already be exact in it (then the stored scales are
    lowbit's). ``hint``: what else the target allows (e.g. a float32 export)."""
    r = t.to(dtype)
    name = str(dtype).replace("torch.", "")
    if spec is not None and spec_scale_dtype(spec) == dtype and not torch.equal(r.float(), t):
        raise ValueError(f"{layer}: spec {spec.name} has scale_dtype {name} but its scales are "
                         f"not exact in it (a packed layer from an inconsistent checkpoint?)")
    bad = ((r == 0) & (t != 0)) | torch.isinf(r) & torch.isfinite(t)
    if bool(bad.any()):
        v = t[bad].flatten()[0].item()
        raise ValueError(f"{layer}: {what} {v:.3e} rounds to {r[bad].flatten()[0].item()} in "
                         f"{name}; this layer cannot be exported in that dtype (train with "
                         f"QuantSpec(scale_dtype=...) matching it){hint}")
    counted = t != 0
    if used is not None:
        counted &= used.reshape(used.shape + (1,) * (t.dim() - used.dim()))
    rel = torch.where(counted, (r.double() - t.double()).abs() / t.double().abs(),
                      torch.zeros((), dtype=torch.float64))
    worst = rel.max() if rel.numel() else torch.zeros(())
    if float(worst) > REL_ROUNDING[dtype]:
        i = int(rel.argmax())
        v, rv = t.flatten()[i].item(), r.flatten()[i].float().item()
        bound = REL_ROUNDING[dtype]
        tiny = torch.finfo(dtype).tiny
        sub = f", below {name}'s smallest normal {tiny:.3g}" if abs(v) < tiny else ""
        raise ValueError(f"{layer}: {what} {v:.6e}{sub}, rounds to {rv:.6e} in {name}: a "
                         f"relative error of {float(worst):.4g}, above 2^{int(math.log2(bound))}"
                         f" = {bound:.3g} (the most rounding to {name} loses in its normal "
                         f"range): the exported weights would not be the trained ones to {name} "
                         f"precision. Train with QuantSpec(scale_dtype={name!r}) so the scales "
                         f"are exact in it{hint}")
    return r


def other_tensors(model, layers, dtype):
    """The state dict minus the quantized layers' own tensors, floats cast to
    ``dtype``; tensors sharing storage with an earlier key (tied weights) are left out.
    Returns (tensors, dropped_aliases)."""
    prefixes = tuple(f"{L.name}." for L in layers)  # the quantized layers are leaf modules
    tensors, seen, aliases = {}, {}, {}
    for key, t in model.state_dict().items():
        if t is None or key.startswith(prefixes):
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        t = t.detach().cpu()
        tensors[key] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    return tensors, aliases


def refuse_non_int(layers, target):
    """ValueError naming the first layer ``target`` (an INT-only checkpoint format) cannot carry:
    a quantized embedding, a llama.cpp block type (only GGUF carries those), a NF/FP spec."""
    for L in layers:
        if L.kind == "embedding":
            raise ValueError(f"{L.name}: a quantized embedding (QATEmbedding); {target} carries "
                             f"quantized linear layers only (format 'gguf' carries it)")
        if L.spec.is_block_type:
            raise ValueError(f"{L.name}: spec {L.spec.name} is llama.cpp's block type "
                             f"(FORMATS.md 1.8); {target} cannot carry it (format 'gguf' does)")
        if L.spec.format != "int":
            raise ValueError(f"{L.name}: spec {L.spec.name} is a level format (NF/FP); {target} "
                             f"carries only integer grids")


def unquantized_linears(model, layers):
    """Names of plain nn.Linear layers (not quantized by lowbit)."""
    q = {L.name for L in layers}
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and n not in q]


# ---- the Hugging Face directory targets ----

def require_hf_model(model, target):
    if not checkpoint.is_hf_model(model):
        raise ValueError(f"model: format {target!r} writes a Hugging Face checkpoint; "
                         f"{type(model).__name__} is not a transformers model")


@dataclasses.dataclass
class HfPlan:
    """What write_hf_dir writes: every tensor (the target's quantized ones and the rest of the
    state dict), config.json's content, the model (its generation_config) and the tokenizer."""
    model: object
    tensors: dict
    config: dict
    tokenizer: object = None


def hf_plan(model, layers, qtensors, quantization_config, dtype, tokenizer):
    """The HfPlan of a target's quantized tensors and quantization_config: the unquantized
    tensors in ``dtype``, tie_word_embeddings false where the head is quantized."""
    others, _aliases = other_tensors(model, layers, dtype)
    cfg = checkpoint.hf_config_dict(model, quantization_config, dtype,
                                    tie_word_embeddings=checkpoint.head_tie(model))
    return HfPlan(model, {**others, **qtensors}, cfg, tokenizer)


def write_hf_dir(plan, out, overwrite=False, max_shard_size="5GB"):
    """Writes an HfPlan to the directory ``out`` (refusing a non-empty one unless overwrite;
    with overwrite, its old checkpoint files go first so no stale shard is mixed in). Returns
    ``out``."""
    out = checkpoint.prepare_dir(out, overwrite)
    if os.path.isdir(out):
        for f in os.listdir(out):
            if f.endswith((".safetensors", ".safetensors.index.json")) or f in HF_FILES:
                os.remove(os.path.join(out, f))
    checkpoint.write_checkpoint(out, plan.tensors, plan.config, model=plan.model,
                                tokenizer=plan.tokenizer, max_shard_size=max_shard_size,
                                metadata={"lowbit_version": __version__})
    return out
