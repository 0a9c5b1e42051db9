"""python/lowbit/export/gguf.py: the GGUF writer for llama.cpp (one .gguf file, Llama architecture:
SmolLM2, TinyLlama, Llama 2/3), through gguf-py's GGUFWriter, tensor-name map and vocab readers.

llama.cpp's own block types (FORMATS.md 1.8: specs "q4_k", ..., trained by QAT, e.g. on a
lowbit.gguf.recipe): the GGUF blocks lowbit.quantize packed are written as they are (no
requantization), the token embedding (QATEmbedding) included; a head tied to it (the same
Parameter) is not written again (no output.weight, as llama-quantize does). When the model's
types are exactly those llama-quantize gives it for an ftype (lowbit.gguf.tensor_types: the
ftype its recipe recorded first, then every ftype), general.file_type is that ftype and the
unquantized matrices (its "f16" fallbacks) are F16, so the file is the size llama-quantize
writes for that ftype.

INT specs map to block types (ggml, 32 weights per block along in_features, fp16 block scales):
- INT asym b in {2, 3, 4} -> Q4_1: d, m, 16 bytes qs[j] = q[j] | q[j+16] << 4; value d*q + m.
  d = s, m = -z*s (rounded to fp16). 2/3-bit codes are stored losslessly in 4-bit blocks: GGUF
  has no 2/3-bit block type with a plain scale and min (Q2_K/Q3_K quantize their sub-block
  scales and do not carry lowbit's grid), so such a file is exact but as large as int4.
- INT sym b in {2, 3, 4} -> Q4_0: d, qs as above; value d*(qs - 8); qs = q + 8, d = s.
- INT sym 8 -> Q8_0: d, 32 int8; value d*q.
The group size must be a multiple of 32 (each group is g/32 blocks with the same d, m).
llama.cpp's Llama conversion (convert_hf_to_gguf.py, LlamaModel.permute) reorders the rows of
q_proj / k_proj for its rotary layout: the same row permutation is applied to codes, scales and
zero points (groups run along in_features, so it is exact). Unquantized matrices are written in
the export dtype, 1-D tensors (norms, biases) in float32, as convert_hf_to_gguf.py does."""
import json
import math
import os
import pathlib
import tempfile

import numpy as np
import torch

from .. import gguf as _lg
from ._common import round_scales

NAME = "gguf"
ARCHS = ("LlamaForCausalLM",)
# the llama3 pre-tokenizer regex of Llama 3's tokenizer.json (llama.cpp's llama-vocab.cpp keeps it
# as the "original regex" of LLAMA_VOCAB_PRE_TYPE_LLAMA3)
_LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s"
                 "\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _gguf():
    try:
        import gguf
    except ImportError as exc:
        raise ImportError("format 'gguf': needs the gguf package (pip install gguf)") from exc
    return gguf


def block_type(L):
    """The GGUF block type (gguf.GGMLQuantizationType) that carries the layer ``L``'s codes, or a
    ValueError naming the layer. The one place a spec is mapped to a block type."""
    s = L.spec
    T = _gguf().GGMLQuantizationType
    if s.is_block_type:  # the type itself (K is a multiple of its block: lowbit.quantize checked)
        return T[s.format.upper()]
    if s.format != "int":
        raise ValueError(f"{L.name}: spec {s.name} is a level format (NF/FP); GGUF has no block "
                         f"type with lowbit's level tables and scales")
    if s.bits == 8 and not s.symmetric:
        raise ValueError(f"{L.name}: spec {s.name}: GGUF has no 8-bit block type with a zero "
                         f"point (Q8_0 is symmetric); use int8 symmetric or another format")
    N, K = L.shape
    if L.group % 32 or K % 32:
        raise ValueError(f"{L.name}: group size {L.group} (in_features {K}) is not a multiple of "
                         f"32, the GGUF block size")
    if s.bits == 8:
        return T.Q8_0
    return T.Q4_0 if s.symmetric else T.Q4_1


def _block_scales(L, btype):
    """(d, m) per group, (N, G) float16 in the layer's row order: d = s, and for Q4_1 m = -z*d
    (None for the symmetric types); each rounding checked (round_scales: ValueError naming the
    layer)."""
    used = L.used_groups()
    d = round_scales(L.scales, torch.float16, "scale", L.name, L.spec, used=used)
    if btype != _gguf().GGMLQuantizationType.Q4_1:
        return d, None
    m = -(L.zeros.float() * d.float())  # -z*s with the fp16 s
    return d, round_scales(m, torch.float16, "min (-z*s)", L.name, used=used)


def _blocks(L, btype, q, d, m):
    """(N, K/32 * bytes per block) uint8 of pre-packed ggml blocks from codes ``q`` (N, K) and
    the per-group d, m of _block_scales (rows in the order of ``q``)."""
    T = _gguf().GGMLQuantizationType
    N, K = q.shape
    nb = K // 32
    per = L.group // 32  # blocks per group share the group's d (and m)
    d_bytes = d.repeat_interleave(per, dim=1).contiguous().view(torch.uint8).reshape(N, nb, 2)
    if btype == T.Q8_0:
        qs = (q - 128).to(torch.int8).reshape(N, nb, 32).view(torch.uint8)
        return torch.cat([d_bytes, qs], -1).reshape(N, -1).numpy()
    qb = q.reshape(N, nb, 32)
    if btype == T.Q4_0:
        # lowbit's sym code is q + 2^(b-1); Q4_0 stores q + 8
        qb = qb - (1 << (L.spec.bits - 1)) + 8
    nib = (qb[..., :16] | (qb[..., 16:] << 4)).to(torch.uint8)
    if btype == T.Q4_0:
        return torch.cat([d_bytes, nib], -1).reshape(N, -1).numpy()
    m_bytes = m.repeat_interleave(per, dim=1).contiguous().view(torch.uint8).reshape(N, nb, 2)
    return torch.cat([d_bytes, m_bytes, nib], -1).reshape(N, -1).numpy()


def _rope_perm(rows, n_head):
    """The row order of llama.cpp's LlamaModel.permute(w, n_head, n_head): new row i is old row
    perm[i]."""
    return torch.arange(rows).reshape(n_head, 2, rows // n_head // 2).transpose(1, 2).reshape(-1)


def _hparams(model):
    cfg = getattr(model, "config", None)
    if cfg is None or type(model).__name__ not in ARCHS or getattr(cfg, "model_type", None) != "llama":
        raise ValueError(f"model: {type(model).__name__} (model_type "
                         f"{getattr(cfg, 'model_type', None)!r}) is not an architecture the GGUF "
                         f"exporter knows (Llama causal LMs: {ARCHS})")
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(f"model: rope type {rope_type!r} is not supported by the GGUF exporter "
                         f"(default, linear, llama3)")
    return cfg, n_head, n_kv, head_dim, rope, rope_type, theta


def _llama3_rope_factors(rope, head_dim, theta):
    # the rope_freqs tensor llama.cpp reads for Llama 3.1+ (transformers' _compute_llama3_parameters)
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = rope.get("factor", 8.0)
    lo, hi = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs.tolist():
        wl = 2 * math.pi / f
        if wl < old / hi:
            out.append(1.0)
        elif wl > old / lo:
            out.append(factor)
        else:
            smooth = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _pre_tokenizer(tok_json):
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json, or None."""
    pre = tok_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and \
            steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == \
            _LLAMA3_REGEX and steps[0].get("behavior") == "Isolated" and \
            not steps[1].get("use_regex", True):
        return "llama-bpe"
    return None


def _vocab(gguf, tokenizer, n_vocab):
    """A function writing the tokenizer metadata to a GGUFWriter (checked now, written later)."""
    if tokenizer is None:
        raise ValueError("tokenizer: format 'gguf' needs the tokenizer (llama.cpp reads the "
                         "vocabulary from the .gguf file)")
    with tempfile.TemporaryDirectory(prefix="lowbit-gguf-tok-") as tmp:
        return _vocab_from_dir(gguf, tokenizer, n_vocab, tmp)


def _vocab_from_dir(gguf, tokenizer, n_vocab, tmp):
    tokenizer.save_pretrained(tmp)
    tj_path = os.path.join(tmp, "tokenizer.json")
    tj = {}
    if os.path.exists(tj_path):
        with open(tj_path, encoding="utf-8") as f:
            tj = json.load(f)
    tmodel = tj.get("model", {})
    T = gguf.TokenType
    spm_file = os.path.exists(os.path.join(tmp, "tokenizer.model"))
    try:
        import sentencepiece  # noqa: F401
        has_spm = True
    except ImportError:
        has_spm = False
    if spm_file and has_spm:
        v = gguf.SentencePieceVocab(pathlib.Path(tmp))
        kind, pre = "llama", "default"
    elif tmodel.get("type") == "BPE" and tmodel.get("byte_fallback"):
        v = gguf.LlamaHfVocab(pathlib.Path(tmp))
        kind, pre = "llama", "default"
    elif tmodel.get("type") == "BPE" and (tj.get("decoder") or {}).get("type") == "ByteLevel":
        v, kind, pre = None, "gpt2", _pre_tokenizer(tj)
        if pre is None:
            raise ValueError(f"tokenizer: its pre-tokenizer {json.dumps(tj.get('pre_tokenizer'))[:200]} "
                             f"is not one the GGUF exporter maps to a llama.cpp pre-tokenizer "
                             f"(gpt-2, smollm, llama-bpe)")
    else:
        raise ValueError("tokenizer: neither SentencePiece, Llama BPE (byte fallback) nor "
                         "byte-level BPE; the GGUF exporter cannot write its vocabulary")
    if v is not None:
        toks = list(v.all_tokens())
        tokens, scores, types = [t[0] for t in toks], [t[1] for t in toks], [t[2] for t in toks]
    else:
        vocab = tokenizer.get_vocab()
        added = tokenizer.get_added_vocab()
        dec = getattr(tokenizer, "added_tokens_decoder", {})
        rev = {i: t for t, i in vocab.items()}
        tokens, types, scores = [], [], None
        for i in range(max(n_vocab, len(rev))):
            if i not in rev:
                tokens.append(f"[PAD{i}]")
                types.append(T.UNUSED)
            elif rev[i] in added:
                tokens.append(rev[i])
                types.append(T.CONTROL if getattr(dec.get(i), "special", True) else T.USER_DEFINED)
            else:
                tokens.append(rev[i])
                types.append(T.NORMAL)
    if len(tokens) > n_vocab:
        raise ValueError(f"tokenizer: has {len(tokens)} tokens but the model's vocab_size is "
                         f"{n_vocab}")
    while len(tokens) < n_vocab:  # embedding rows without a token (padding), as convert does
        tokens.append(f"[PAD{len(tokens)}]".encode() if kind == "llama" else f"[PAD{len(tokens)}]")
        types.append(T.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    special = gguf.SpecialVocab(tmp, load_merges=(kind == "gpt2"), n_vocab=len(tokens))
    if kind == "gpt2" and not special.merges:
        raise ValueError("tokenizer: a byte-level BPE tokenizer without merges")

    def write(w):
        w.add_tokenizer_model(kind)
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        if scores is not None:
            w.add_token_scores(scores)
        w.add_token_types(types)
        special.add_to_gguf(w, quiet=True)
    return write


def out_file(out):
    """The .gguf path for ``out`` (a file name ending in .gguf, or a directory)."""
    out = os.fspath(out)
    return out if out.endswith(".gguf") else os.path.join(out, "model.gguf")


def _other_tensors(model, qlayers, cfg):
    """(key, tensor) of the state dict that the file holds besides the quantized layers: a tied
    head (the embedding itself) is left out."""
    tied = cfg.tie_word_embeddings and "lm_head" not in qlayers
    # every tensor under a quantized (leaf) layer is its own, a learned clip's
    # parametrizations.weight.original and logits included
    prefixes = tuple(f"{name}." for name in qlayers)
    seen = {}
    for key, t in model.state_dict().items():
        if t is None or key.startswith(prefixes):
            continue
        if key == "lm_head.weight" and tied:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ident in seen and key == "lm_head.weight":
            continue
        seen[ident] = key
        yield key, t


def _namer(gguf, cfg):
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)

    def gname(key):
        g = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise ValueError(f"{key}: a tensor llama.cpp's Llama loader has no name for")
        return g
    return gname


# the LlamaFileType of a file whose most weights are of one type (no recipe's ftype)
_MOSTLY = {"Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0",
           "Q5_1": "MOSTLY_Q5_1", "Q8_0": "MOSTLY_Q8_0", "Q2_K": "MOSTLY_Q2_K",
           "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M",
           "Q6_K": "MOSTLY_Q6_K", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "F32": "ALL_F32"}


class _PlainNames:
    """``model`` as lowbit.gguf.tensor_types reads it (its config and named_parameters) with a
    learned clip's raw weight (parametrizations.weight.original) under the layer's own name and
    the clip's logits left out: the file holds the clipped weight there and nothing of the
    clip."""

    def __init__(self, model):
        self.config = getattr(model, "config", None)
        self._model = model

    def named_parameters(self, remove_duplicate=True):
        for name, p in self._model.named_parameters(remove_duplicate=remove_duplicate):
            if ".parametrizations." in name:
                head, _, tail = name.partition(".parametrizations.")
                attr, _, rest = tail.partition(".")
                if rest != "original":
                    continue
                name = f"{head}.{attr}"
            yield name, p


def _recipe_ftype(model, written, others, gname):
    """The llama.cpp ftype whose llama-quantize types (lowbit.gguf.tensor_types, with and
    without an importance matrix) are exactly this file's: {GGUF name: type} of the quantized
    layers, "f16" for the other matrices, "f32" for 1-D tensors. The ftype the model's recipe
    recorded (model.lowbit_gguf_ftype) is tried first; None when none matches."""
    have = {gname(L.name + ".weight"): L.spec.format for L in written}
    for L in written:
        if L.bias is not None:
            have[gname(L.name + ".bias")] = "f32"
    for key, t in others:
        have[gname(key)] = "f32" if t.dim() == 1 else "f16"
    if not any(L.spec.is_block_type for L in written):
        return None  # INT specs: the old Q4_0 / Q4_1 / Q8_0 carriers, no llama-quantize ftype
    recorded = getattr(model, "lowbit_gguf_ftype", None)
    order = ([recorded] if recorded in _lg.FTYPES else []) + list(_lg.FTYPES)
    for ft in order:
        for imatrix in (False, True):
            want = {t.gguf_name: t.type for t in _lg.tensor_types(_PlainNames(model), ft,
                                                                   imatrix=imatrix).values()}
            if want == have:
                return ft
    return None


def check(model, layers, dtype=torch.float16):
    """What this target can carry (ValueError naming the layer or tensor otherwise; ImportError
    without gguf-py): a Llama causal LM of a rope type llama.cpp reads, every quantized layer
    in a block type (block_type) with scales that round to float16 within REL_ROUNDING, and a
    GGUF name for every tensor. ``dtype`` (of the unquantized tensors) does not matter here."""
    gguf = _gguf()
    cfg = _hparams(model)[0]
    for L in layers:
        if not L.spec.is_block_type:
            _block_scales(L, block_type(L))
    gname = _namer(gguf, cfg)
    qlayers = {L.name: L for L in layers}
    for L in layers:
        gname(L.name + ".weight")
    for key, _ in _other_tensors(model, qlayers, cfg):
        gname(key)


def plan(model, layers, dtype, tokenizer):
    """Checks everything (check, and the tokenizer) and returns the plan: a function writing
    the .gguf file to a path."""
    check(model, layers, dtype)
    gguf = _gguf()
    cfg, n_head, n_kv, head_dim, rope, rope_type, theta = _hparams(model)
    n_blocks = cfg.num_hidden_layers
    gname = _namer(gguf, cfg)
    qlayers = {L.name: L for L in layers}
    T = gguf.GGMLQuantizationType
    float_type = {torch.float16: T.F16, torch.bfloat16: T.BF16, torch.float32: T.F32}[dtype]
    entries = []  # (gguf name, array, raw_dtype or None)
    counts = {}

    def permute_for(hf_name, rows):
        if hf_name.endswith("self_attn.q_proj"):
            return _rope_perm(rows, n_head)
        if hf_name.endswith("self_attn.k_proj"):
            return _rope_perm(rows, n_kv)
        return None

    embedded = {L.weight_id for L in layers if L.kind == "embedding"}
    written = []  # the layers written: a head tied to a quantized embedding is not
    for L in layers:
        if L.kind == "linear" and L.weight_id is not None and L.weight_id in embedded:
            continue  # llama.cpp reads a tied head from token_embd (no output.weight)
        written.append(L)
    others = list(_other_tensors(model, qlayers, cfg))
    ftype_name = _recipe_ftype(model, written, others, gname)
    if ftype_name is not None:
        float_type = T.F16  # llama-quantize's unquantized matrices (its "f16" fallbacks)
    for L in written:
        btype = block_type(L)
        perm = permute_for(L.name, L.shape[0])
        if L.spec.is_block_type:  # the bytes lowbit packed; rows are independent blocks
            arr = L.blocks if perm is None else L.blocks[perm]
            entries.append((gname(L.name + ".weight"), arr.numpy(), btype))
        else:
            d, m = _block_scales(L, btype)
            q = L.q
            if perm is not None:
                q, d = q[perm], d[perm]
                m = None if m is None else m[perm]
            entries.append((gname(L.name + ".weight"), _blocks(L, btype, q, d, m), btype))
        counts[btype] = counts.get(btype, 0) + L.shape[0] * L.shape[1]
        if L.bias is not None:
            b = L.bias.float() if perm is None else L.bias.float()[perm]
            entries.append((gname(L.name + ".bias"), b.numpy(), None))
    for key, t in others:
        perm = permute_for(key.rpartition(".")[0], t.shape[0])
        t = t.detach().cpu().float()
        if perm is not None:
            t = t[perm]
        if t.dim() == 1:
            entries.append((gname(key), t.numpy(), None))
        elif float_type == T.BF16:
            entries.append((gname(key), gguf.quants.quantize(t.numpy(), T.BF16), T.BF16))
        else:
            arr = t.numpy().astype(np.float16 if float_type == T.F16 else np.float32)
            entries.append((gname(key), arr, None))
            counts[float_type] = counts.get(float_type, 0) + t.numel()
    if rope_type == "llama3":
        entries.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                        _llama3_rope_factors(rope, head_dim, theta), None))
    write_vocab = _vocab(gguf, tokenizer, cfg.vocab_size)
    if ftype_name is not None:
        ftype = gguf.LlamaFileType(_lg.file_type(ftype_name))
    else:  # not a llama-quantize mixture: the type holding most weights
        main = max(counts, key=counts.get)
        ftype = getattr(gguf.LlamaFileType, _MOSTLY[main.name])

    def write_to(path):
        w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        name = getattr(cfg, "_name_or_path", "") or type(model).__name__
        w.add_name(os.path.basename(str(name).rstrip("/")) or type(model).__name__)
        w.add_block_count(n_blocks)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_freq_base(float(theta))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(head_dim)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        if rope_type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_file_type(ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(w)
        for gn, arr, raw in entries:
            w.add_tensor(gn, arr, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return write_to


def write(plan, out, overwrite=False, max_shard_size=None):
    """Writes a plan to ``out`` (out_file: a .gguf name or a directory), refusing an existing
    file unless overwrite, through a temporary file so an interrupted write leaves nothing
    half-written; ``max_shard_size`` does not apply (one file). Returns the path."""
    path = out_file(out)
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"out: {path} exists (pass overwrite=True to replace it)")
    if os.path.isdir(path):
        raise ValueError(f"out: {path} is a directory")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    plan(tmp)
    os.replace(tmp, path)
    return path
