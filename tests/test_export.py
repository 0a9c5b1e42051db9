"""lowbit.export, verified by the formats' own readers in child processes that never import lowbit:
compressed-tensors through transformers (CompressedTensorsConfig(dequantize=True)), GGUF through
gguf-py's GGUFReader + gguf.quants.dequantize, GPTQ v2 through an unpacker written here from the
format description (and, opt-in, through transformers + GPTQModel); the refusals; and that export
never changes the model."""
import copy
import json
import os

import numpy as np
import pytest
import torch

from _hfutil import VOCAB, run_child, tiny_llama, tiny_tokenizer
from _testutil import unpack_codes

lowbit = pytest.importorskip("lowbit")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

IDS = torch.arange(2 * 11).reshape(2, 11) * 13 % VOCAB


def _seed(gen):
    return int(torch.randint(0, 2 ** 31, (1,), generator=gen))


def qat_model(gen, spec, **kw):
    """A tiny Llama after quantize_ (every linear but lm_head)."""
    m = tiny_llama(_seed(gen), **kw)
    return lowbit.quantize_(m, lowbit.QATConfig(spec))


def f16(bits, g, sym=False, fmt="int"):
    """A spec trained on float16 scales (QuantSpec.scale_dtype, FORMATS.md 1.6): fp16 carriers
    then hold lowbit's scales exactly, and the exported weights must be the trained ones."""
    return lowbit.QuantSpec(fmt, bits, g, sym, scale_dtype="float16")


def trained_weights(model):
    """{layer name: the weight QAT trains with} (QATLinear's fake-quantized weight)."""
    with torch.no_grad():
        return {n: m.quantized_weight().detach().clone() for n, m in model.named_modules()
                if isinstance(m, lowbit.nn.QATLinear)}


def packed_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, lowbit.nn.QuantLinear)}


def ref_weight(m, scale_dtype=torch.float32):
    """(q - z) * s from the QuantLinear's buffers, decoded here (tests/_testutil.unpack_codes),
    with s rounded to ``scale_dtype``."""
    N, K = m.out_features, m.in_features
    g = K if m.spec.group_size == -1 else m.spec.group_size
    q = unpack_codes(m.codes, K, m.spec.bits).to(torch.int64)
    s = m.scales.to(scale_dtype).float().repeat_interleave(g, 1)
    z = (m.zeros.to(torch.int64) if m.zeros is not None
         else torch.full_like(m.scales, 1 << (m.spec.bits - 1), dtype=torch.int64))
    return (q - z.repeat_interleave(g, 1)).float() * s


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------- compressed-tensors

_CT_READER = """
import sys, torch
from transformers import AutoModelForCausalLM, CompressedTensorsConfig
out = {}
ids = torch.load(sys.argv[1])
for d in sys.argv[3:]:
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
            quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    w = {n: p.detach().clone() for n, p in m.named_parameters() if n.endswith("proj.weight")}
    with torch.no_grad():
        out[d] = {"w": w, "logits": m(ids).logits.float(), "dtype": str(m.dtype),
                  "tied": m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()}
torch.save(out, sys.argv[2])
"""

CT_CASES = [("int", b, g, False) for b in (2, 3, 4) for g in (32, 64, 128)] + \
    [("int", 8, 64, False), ("int", 4, 32, True), ("int", 8, 32, True), ("int", 2, 64, True),
     ("int", 3, -1, False)]


def test_compressed_tensors_read_by_transformers(gen, tmp_path):
    from safetensors.torch import load_file

    models, dirs = {}, []
    for fmt, b, g, sym in CT_CASES:
        spec = lowbit.QuantSpec(fmt, b, g, sym)
        m = lowbit.convert_(qat_model(gen, spec))
        # float32 storage for every case (bit-exact); float16 for a few (within its rounding)
        fp16 = (b, g) in ((2, 32), (3, 64), (4, 128), (8, 64)) or sym
        for dt in ((torch.float16, torch.float32) if fp16 else (torch.float32,)):
            d = str(tmp_path / f"{spec.name}-{str(dt)[6:]}")
            assert lowbit.export(m, d, "compressed-tensors", dtype=dt) == d
            models[d] = (m, dt)
            dirs.append(d)
    # a model trained on float16 scales: fp16 storage holds them exactly, so the reader gets the
    # trained weights (rounded once, to its fp16 product); also sharded, and tied embeddings
    qat = qat_model(gen, f16(3, 64), tied=True)
    trained = trained_weights(qat)
    exact = lowbit.convert_(qat)
    d = str(tmp_path / "exact-sharded")
    lowbit.export(exact, d, "compressed-tensors", max_shard_size="100KB")
    assert os.path.exists(os.path.join(d, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(d) if f.endswith(".safetensors")]) > 1
    models[d] = (exact, "exact")
    dirs.append(d)
    # without convert_ too: a QAT model on float16 scales exports exactly the
    # weights its forward trains with (read in the same child process)
    qat16 = qat_model(gen, f16(4, 32))
    d = str(tmp_path / "qat-f16")
    lowbit.export(qat16, d, "compressed-tensors", dtype=torch.float16)
    models[d] = (qat16, "qat")
    dirs.append(d)
    torch.save(IDS, tmp_path / "ids.pt")
    run_child(_CT_READER, tmp_path / "ids.pt", tmp_path / "ct.pt", *dirs)
    got = torch.load(tmp_path / "ct.pt")
    for d, (m, dt) in models.items():
        r = got[d]
        if dt == "qat":
            trained16 = trained_weights(m)
            assert sorted(r["w"]) == sorted(n + ".weight" for n in trained16)
            for n, t in trained16.items():  # the reader's fp16 product rounds once
                assert torch.equal(r["w"][n + ".weight"], t.half().float()), n
            with torch.no_grad():
                assert rel(r["logits"], m(IDS).logits) < 1e-3 and not r["tied"]
            continue
        stored = {}
        for f in os.listdir(d):
            if f.endswith(".safetensors"):
                stored.update(load_file(os.path.join(d, f)))
        cfg = json.load(open(os.path.join(d, "config.json")))["quantization_config"]
        assert cfg["format"] == "pack-quantized" and cfg["ignore"] == ["lm_head"]
        for name, layer in packed_layers(m).items():
            w = r["w"][name + ".weight"]
            if dt == torch.float32:
                # the reader decompressed exactly lowbit's (q - z) * s
                assert torch.equal(w, lowbit.dequantize(layer.qweight)), (d, name)
                assert torch.equal(w, ref_weight(layer)), (d, name)
            elif dt == "exact":
                # lowbit's scales stored exactly; the reader's fp16 product rounds once
                assert torch.equal(stored[name + ".weight_scale"].float(), layer.scales)
                assert torch.equal(lowbit.dequantize(layer.qweight), trained[name]), name
                assert torch.equal(w, trained[name].half().float()), (d, name)
            else:
                # fp16 scales: the reader computes (q - z) * fp16(s) in fp16
                assert torch.equal(w, ref_weight(layer, torch.float16).half().float()), (d, name)
                assert torch.allclose(w, ref_weight(layer), rtol=2 ** -10, atol=0), (d, name)
        with torch.no_grad():
            if dt == torch.float32:
                # float32 against the reader's float32: lowbit's act="float" (the CPU's auto runs
                # these 22 rows in int8 x2, within FORMATS.md 4's 1e-4, not float rounding)
                for layer in packed_layers(m).values():
                    layer.act = "float"
            ref = m(IDS).logits
        assert rel(r["logits"], ref) < (1e-6 if dt == torch.float32 else 1e-3), d
        assert r["tied"] == (dt == "exact")


_CT_DECOMPRESS = """
import json, sys, torch
from safetensors.torch import load_file
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.quantization import QuantizationConfig
d = sys.argv[2]
qc = QuantizationConfig.model_validate(json.load(open(d + "/config.json"))["quantization_config"])
sd = load_file(d + "/model.safetensors")
out = {}
for scheme in qc.config_groups.values():
    comp = BaseCompressor.get_value_from_registry(scheme.format or qc.format)
    for t in scheme.targets:
        local = {k[len(t) + 1:]: v for k, v in sd.items() if k.startswith(t + ".")}
        out[t] = comp.decompress(local, scheme)["weight"]
torch.save(out, sys.argv[1])
"""


def test_compressed_tensors_mixed_specs_and_qat_model(gen, tmp_path):
    """Per-layer specs become one config group per scheme (read here by compressed-tensors' own
    decompressor: transformers 5.24's dequantize path applies one scheme to all dense layers); a
    QAT model (not converted) exports the quantization of its current weights."""
    m = tiny_llama(_seed(gen))
    lowbit.quantize_(m, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 64),
                                         overrides={"*mlp.down_proj": lowbit.QuantSpec("int", 4, 32)}))
    d = str(tmp_path / "mixed")
    with pytest.warns(UserWarning, match="one scheme"):
        lowbit.export(m, d, "compressed-tensors", dtype=torch.float32)
    qc = json.load(open(os.path.join(d, "config.json")))["quantization_config"]
    assert len(qc["config_groups"]) == 2
    run_child(_CT_DECOMPRESS, tmp_path / "w.pt", d)
    w = torch.load(tmp_path / "w.pt")
    names = [n for n, mod in m.named_modules() if isinstance(mod, lowbit.nn.QATLinear)]
    assert sorted(w) == sorted(names)
    for n in names:
        assert torch.equal(w[n], m.get_submodule(n).quantized_weight()), n


def test_qat_model_on_float16_scales_exports_the_trained_weights_gptq(gen, tmp_path):
    """Float16 scales give the trained weights without convert_ for GPTQ v2 too, decoded by the
    unpacker written from the format description: exactly the weights QAT trains with. (The
    compressed-tensors reader checks the same in test_compressed_tensors_read_by_transformers.)"""
    from safetensors.torch import load_file

    m = qat_model(gen, f16(4, 32))
    trained = trained_weights(m)
    d = str(tmp_path / "gptq")
    lowbit.export(m, d, "gptq")
    sd = load_file(os.path.join(d, "model.safetensors"))
    assert sorted(n for n in sd if n.endswith(".qweight")) == sorted(n + ".qweight" for n in trained)
    for n, t in trained.items():
        q = gptq_unpack(sd[f"{n}.qweight"].t().contiguous(), 4, t.shape[1])
        z = gptq_unpack(sd[f"{n}.qzeros"], 4, t.shape[0]).t().repeat_interleave(32, 1)
        s = sd[f"{n}.scales"].t().float().repeat_interleave(32, 1)
        assert torch.equal((q - z).float() * s, t), n


# ---------------------------------------------------------------- GPTQ v2

def gptq_unpack(words, bits, n):
    """The format description, bit by bit: int32 words (R, W) hold, per row, a little-endian
    bitstream of ``bits``-bit values; value j is bits [j*bits, (j+1)*bits). Returns (R, n)."""
    u = words.numpy().astype(np.int64) & 0xFFFFFFFF
    R = u.shape[0]
    out = np.zeros((R, n), dtype=np.int64)
    for j in range(n):
        for b in range(bits):
            pos = j * bits + b
            out[:, j] |= ((u[:, pos // 32] >> (pos % 32)) & 1) << b
    return torch.from_numpy(out)


@pytest.mark.parametrize("bits,g,sym", [(2, 32, False), (3, 64, False), (4, 128, False),
                                        (8, 32, False), (4, 64, True), (3, -1, False)])
def test_gptq_v2_layout(bits, g, sym, gen, tmp_path):
    from safetensors.torch import load_file

    qat = qat_model(gen, f16(bits, g, sym))
    trained = trained_weights(qat)
    m = lowbit.convert_(qat)
    d = str(tmp_path / "gptq")
    lowbit.export(m, d, "gptq")
    qc = json.load(open(os.path.join(d, "config.json")))["quantization_config"]
    assert qc == {**qc, "quant_method": "gptq", "bits": bits, "group_size": g, "sym": sym,
                  "desc_act": False, "format": "gptq_v2", "checkpoint_format": "gptq_v2",
                  "lm_head": False}
    sd = load_file(os.path.join(d, "model.safetensors"))
    for name, layer in packed_layers(m).items():
        N, K = layer.out_features, layer.in_features
        gg = K if g == -1 else g
        qw, qz, sc = sd[f"{name}.qweight"], sd[f"{name}.qzeros"], sd[f"{name}.scales"]
        assert qw.dtype == torch.int32 and qw.shape == (K * bits // 32, N)
        assert qz.dtype == torch.int32 and qz.shape == (K // gg, N * bits // 32)
        assert sc.dtype == torch.float16 and sc.shape == (K // gg, N)
        assert torch.equal(sd[f"{name}.g_idx"], torch.arange(K, dtype=torch.int32) // gg)
        q = gptq_unpack(qw.t().contiguous(), bits, K)           # (N, K)
        z = gptq_unpack(qz, bits, N).t()                         # (N, G)
        if sym:
            assert bool((z == 1 << (bits - 1)).all())
        w = (q - z.repeat_interleave(gg, 1)).float() * sc.t().float().repeat_interleave(gg, 1)
        assert torch.equal(w, trained[name]), name  # the weights QAT trained, bit for bit
    assert "lm_head.weight" in sd and sd["lm_head.weight"].dtype == torch.float16


_GPTQ_READER = """
import sys, torch
from transformers import AutoModelForCausalLM, GPTQConfig
d, bits = sys.argv[3], int(sys.argv[4])
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float16,
        quantization_config=GPTQConfig(bits=bits, backend="gptq_torch")).eval()
w = {n: mod.dequantize_weight().T.float() for n, mod in m.named_modules()
     if hasattr(mod, "dequantize_weight") and hasattr(mod, "qweight")}
with torch.no_grad():
    logits = m(torch.load(sys.argv[1])).logits.float()
torch.save({"w": w, "logits": logits}, sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.parametrize("bits,g,sym", [(2, 32, False), (3, 64, False), (4, 128, True)])
def test_gptq_read_by_gptqmodel(bits, g, sym, gen, tmp_path):
    """Opt-in: LOWBIT_GPTQ_PYTHON = a Python with transformers, optimum and gptqmodel (e.g. a venv
    made by `pip install "torch==2.13.0" gptqmodel==7.6.0 optimum`)."""
    py = os.environ.get("LOWBIT_GPTQ_PYTHON")
    if not py:
        pytest.skip("set LOWBIT_GPTQ_PYTHON to a Python with gptqmodel + optimum")
    m = lowbit.convert_(qat_model(gen, f16(bits, g, sym)))
    d = str(tmp_path / "gptq")
    lowbit.export(m, d, "gptq")
    torch.save(IDS, tmp_path / "ids.pt")
    run_child(_GPTQ_READER, tmp_path / "ids.pt", tmp_path / "r.pt", d, bits, python=py)
    r = torch.load(tmp_path / "r.pt")
    for name, layer in packed_layers(m).items():
        # GPTQModel's torch kernel dequantizes in fp16: fp16 of lowbit's exact weight
        assert torch.equal(r["w"][name], lowbit.dequantize(layer.qweight).half().float()), name
    with torch.no_grad():
        assert rel(r["logits"], m(IDS).logits) < 1e-2


# ---------------------------------------------------------------- GGUF

_GGUF_READER = """
import sys, torch, numpy as np, gguf
out = {}
for p in sys.argv[2:]:
    r = gguf.GGUFReader(p)
    fields = {}
    for k, f in r.fields.items():
        if k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            fields[k] = len(f.contents())
        else:
            fields[k] = f.contents()
    tensors, blocks = {}, {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = (t.tensor_type.name, [int(x) for x in t.shape],
                           torch.from_numpy(np.array(w, dtype=np.float32)))
        # the fp16 block header (ggml's block_q4_0 / block_q4_1 / block_q8_0: d, then m for Q4_1)
        nb = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}.get(t.tensor_type.name)
        if nb:
            raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1, nb)
            rows = int(t.shape[1])
            hdr = raw[:, :4].copy().view(np.float16).astype(np.float32).reshape(rows, -1, 2)
            blocks[t.name] = torch.from_numpy(hdr)
    out[p] = {"fields": fields, "tensors": tensors, "blocks": blocks}
torch.save(out, sys.argv[1])
"""


def llama_cpp_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (rows of q_proj / k_proj)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def gguf_names(n_layers, tied):
    names = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not tied else set())
    for i in range(n_layers):
        names |= {f"blk.{i}.{t}.weight" for t in ("attn_norm", "attn_q", "attn_k", "attn_v",
                                                   "attn_output", "ffn_norm", "ffn_gate",
                                                   "ffn_up", "ffn_down")}
    return names


# (bits, group, symmetric, block type, scale_dtype the model was trained with)
GGUF_CASES = [(4, 32, False, "Q4_1", "float16"), (4, 128, False, "Q4_1", "float32"),
              (2, 64, False, "Q4_1", "float16"), (3, 32, False, "Q4_1", "float32"),
              (4, 64, True, "Q4_0", "float16"), (2, 32, True, "Q4_0", "float16"),
              (8, 32, True, "Q8_0", "float16"), (4, 32, True, "Q4_0", "float32")]


def test_gguf_read_by_gguf_py(gen, tmp_path):
    tok = tiny_tokenizer()
    cases = {}
    for bits, g, sym, qtype, sd in GGUF_CASES:
        tied = bits == 2 and not sym
        qat = qat_model(gen, lowbit.QuantSpec("int", bits, g, sym, scale_dtype=sd), tied=tied)
        trained = trained_weights(qat)
        m = lowbit.convert_(qat)
        p = str(tmp_path / f"b{bits}g{g}{'s' if sym else ''}-{sd}.gguf")
        dt = torch.float32 if bits == 3 else torch.float16
        assert lowbit.export(m, p, "gguf", tokenizer=tok, dtype=dt) == p
        cases[p] = (m, qtype, tied, sym, dt, sd, trained)
    run_child(_GGUF_READER, tmp_path / "g.pt", *cases)
    got = torch.load(tmp_path / "g.pt")
    for p, (m, qtype, tied, sym, dt, sd, trained) in cases.items():
        f, t = got[p]["fields"], got[p]["tensors"]
        cfg = m.config
        assert f["general.architecture"] == "llama"
        expect = {"llama.block_count": cfg.num_hidden_layers, "llama.context_length": 64,
                  "llama.embedding_length": cfg.hidden_size,
                  "llama.feed_forward_length": cfg.intermediate_size,
                  "llama.attention.head_count": cfg.num_attention_heads,
                  "llama.attention.head_count_kv": cfg.num_key_value_heads,
                  "llama.rope.dimension_count": cfg.hidden_size // cfg.num_attention_heads,
                  "llama.vocab_size": VOCAB, "tokenizer.ggml.model": "gpt2",
                  "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": VOCAB,
                  "tokenizer.ggml.token_type": VOCAB, "general.quantization_version": 2}
        for k, v in expect.items():
            assert f[k] == v, (p, k, f.get(k))
        assert f["llama.rope.freq_base"] == pytest.approx(cfg.rope_parameters["rope_theta"])
        assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
        assert f["tokenizer.ggml.merges"] > 0 and f["tokenizer.ggml.eos_token_id"] == 0
        assert set(t) == gguf_names(cfg.num_hidden_layers, tied), p
        for name, layer in packed_layers(m).items():
            i = int(name.split(".")[2])
            kind = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
                    "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
                    "down_proj": "ffn_down"}[name.rsplit(".", 1)[1]]
            ttype, shape, w = t[f"blk.{i}.{kind}.weight"]
            assert ttype == qtype and shape == [layer.in_features, layer.out_features]
            ref = lowbit.dequantize(layer.qweight)
            assert torch.equal(ref, trained[name]), name
            per = layer.in_features // layer.scales.shape[1]
            s = layer.scales.repeat_interleave(per, 1)
            z = (layer.zeros.float() if not sym else torch.zeros_like(layer.scales)).repeat_interleave(per, 1)
            nh = cfg.num_attention_heads if kind == "attn_q" else cfg.num_key_value_heads
            if kind in ("attn_q", "attn_k"):
                ref, s, z = (llama_cpp_permute(x, nh) for x in (ref, s, z))
            d, mins = (x.repeat_interleave(32, 1) for x in got[p]["blocks"][f"blk.{i}.{kind}.weight"].unbind(-1))
            if sd == "float16":
                assert torch.equal(d, s), (p, name)  # d holds lowbit's scale exactly
            else:
                assert torch.equal(d, s.half().float()), (p, name)
            if sym:
                if sd == "float16":
                    assert torch.equal(w, ref), (p, name)  # d * q: the trained weights, bit for bit
                else:
                    assert torch.allclose(w, ref, rtol=2 ** -11, atol=0), (p, name)
                continue
            # Q4_1: d*q + m with m = fp16(-z*d) (= fp16(-z*s) when d is s exactly)
            assert torch.equal(mins, (-z * d).half().float()), (p, name)
            if sd == "float16":  # d exact: only m's float16 rounding remains
                tol = 1.01 * 2 ** -11 * s * z + 1e-7 * s
            else:  # fp16 rounding of d = s and of m = -z*s
                tol = 1.01 * 2 ** -11 * s * (2 ** layer.spec.bits - 1 + 2 * z) + 1e-7
            assert bool(((w - ref).abs() <= tol).all()), (p, name, (w - ref).abs().max())
            assert rel(w, ref) < 2e-3
        emb = t["token_embd.weight"]
        assert emb[0] == ("F32" if dt == torch.float32 else "F16")
        assert torch.equal(emb[2], m.model.embed_tokens.weight.detach().to(dt).float())
        assert t["output_norm.weight"][0] == "F32"


# ---------------------------------------------------------------- refusals, purity

def _refuses(model, fmt, match, tmp_path, **kw):
    out = tmp_path / f"refused-{fmt}"
    target = str(out) + (".gguf" if fmt == "gguf" else "")
    with pytest.raises(ValueError, match=match):
        lowbit.export(model, target, fmt, **kw)
    assert not os.path.exists(target), "a refused export wrote something"


def test_export_refusals_name_the_layer_before_writing(gen, tmp_path):
    tok = tiny_tokenizer()
    nf = qat_model(gen, lowbit.QuantSpec("nf", 3, 32))
    from lowbit.export import FORMATS

    for fmt in FORMATS:
        _refuses(nf, fmt, r"model\.layers\.0\.self_attn\.q_proj: spec nf3", tmp_path, tokenizer=tok)
    _refuses(qat_model(gen, lowbit.QuantSpec("int", 8, 32)), "gguf", "q_proj.*zero point",
             tmp_path, tokenizer=tok)
    _refuses(qat_model(gen, lowbit.QuantSpec("int", 4, 16)), "gguf", "q_proj: group size 16",
             tmp_path, tokenizer=tok)
    _refuses(qat_model(gen, lowbit.QuantSpec("int", 4, 32)), "gguf", "tokenizer", tmp_path)
    mixed = tiny_llama(_seed(gen))
    lowbit.quantize_(mixed, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 64),
                                             overrides={"*down_proj": lowbit.QuantSpec("int", 4, 64)}))
    _refuses(mixed, "gptq", "layers.0.mlp.down_proj: spec int4-g64-asym differs", tmp_path)
    part = tiny_llama(_seed(gen))
    lowbit.quantize_(part, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 64), skip=("lm_head", "v_proj")))
    _refuses(part, "gptq", "layers.0.self_attn.v_proj: an unquantized linear", tmp_path)
    head = tiny_llama(_seed(gen))
    lowbit.quantize_(head, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 64), skip=()))
    _refuses(head, "gptq", "lm_head: a quantized output head", tmp_path)
    _refuses(qat_model(gen, lowbit.QuantSpec("int", 4, 8)), "gptq", "q_proj: group size 8", tmp_path)
    # a scale float16 cannot hold
    tiny = lowbit.convert_(qat_model(gen, lowbit.QuantSpec("int", 4, 32)))
    tiny.model.layers[1].mlp.up_proj.scales[3, 1] = 1e-9
    for fmt in ("compressed-tensors", "gptq", "gguf"):
        _refuses(tiny, fmt, "model.layers.1.mlp.up_proj: scale 1.000e-09 rounds to 0", tmp_path,
                 tokenizer=tok)
    huge = lowbit.convert_(qat_model(gen, lowbit.QuantSpec("int", 4, 32)))
    huge.model.layers[0].mlp.gate_proj.scales[0, 0] = 1e6
    _refuses(huge, "gptq", "model.layers.0.mlp.gate_proj: scale 1.000e\\+06 rounds to inf", tmp_path)
    # not a Llama: gguf refuses; an nn.Module is no HF checkpoint
    seq = lowbit.quantize_(torch.nn.Sequential(torch.nn.Linear(64, 64)),
                           lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32), skip=()))
    with pytest.raises(ValueError, match="not a transformers model"):
        lowbit.export(seq, tmp_path / "seq", "compressed-tensors")
    with pytest.raises(ValueError, match="not an architecture the GGUF exporter knows"):
        lowbit.export(seq, tmp_path / "seq.gguf", "gguf", tokenizer=tok)
    with pytest.raises(ValueError, match="no QATLinear or QuantLinear"):
        lowbit.export(tiny_llama(_seed(gen)), tmp_path / "none", "gptq")
    with pytest.raises(ValueError, match="format"):
        lowbit.export(tiny, tmp_path / "x", "onnx")
    with pytest.raises(ValueError, match="dtype"):
        lowbit.export(tiny, tmp_path / "x", "gptq", dtype=torch.int8)
    assert not os.path.exists(tmp_path / "x")


def _scaled_qat(gen, spec, factor, zero_rows=0):
    """A QAT'd tiny Llama whose decoder weights are multiplied by ``factor`` (and whose q_proj
    rows [0, zero_rows) are zero)."""
    m = tiny_llama(_seed(gen))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "proj" in n:
                p.mul_(factor)
                if "q_proj" in n:
                    p[:zero_rows] = 0
    return lowbit.quantize_(m, lowbit.QATConfig(spec))


def _worst_f16_rounding(model):
    """{layer: worst relative float16 rounding of its scales}, over groups whose codes are not
    all the zero point, decoded here from QuantSpec and lowbit.quantize's integers (numpy)."""
    out = {}
    for n, mod in model.named_modules():
        if not isinstance(mod, lowbit.nn.QATLinear):
            continue
        qw = lowbit.quantize(mod.weight.detach(), mod.spec)
        N, K = qw.shape
        g = mod.spec.group_size
        q = unpack_codes(qw.codes, K, mod.spec.bits).numpy().reshape(N, K // g, g)
        z = qw.zeros.numpy()[..., None] if qw.zeros is not None else 2 ** (mod.spec.bits - 1)
        used = (q != z).any(-1)
        sc = qw.scales.numpy().astype(np.float64)
        err = np.abs(sc.astype(np.float16).astype(np.float64) - sc) / sc
        out[n] = float(err[used].max()) if used.any() else 0.0
    return out


@pytest.mark.parametrize("fmt", ["compressed-tensors", "gptq", "gguf"])
def test_export_refuses_scale_rounding_beyond_2_pow_minus_11(fmt, gen, tmp_path):
    """The README's "at most 2^-11 relative" holds for every export: scales below float16's
    smallest normal (small weights) are refused with the layer and the worst error, unless the
    spec trains on float16 scales (then they are exact); groups that are all zero point do not
    count (their weights are 0 whatever the scale)."""
    tok = tiny_tokenizer()
    spec = lowbit.QuantSpec("int", 4, 32)
    small = _scaled_qat(gen, spec, 5e-4)
    worst = _worst_f16_rounding(small)
    first = next(iter(worst))
    assert worst[first] > 2 ** -11  # the case exists
    target = tmp_path / ("small.gguf" if fmt == "gguf" else "small")
    with pytest.raises(ValueError, match=f"{first}: scale .* below float16's smallest normal") as e:
        lowbit.export(small, target, fmt, tokenizer=tok)
    assert not os.path.exists(target)
    got = float(str(e.value).split("a relative error of ")[1].split(",")[0])
    assert got == pytest.approx(worst[first], rel=2e-3)
    # the same weights trained on float16 scales export, exactly
    exact = _scaled_qat(gen, lowbit.QuantSpec("int", 4, 32, scale_dtype="float16"), 5e-4)
    lowbit.export(exact, tmp_path / "exact.gguf" if fmt == "gguf" else tmp_path / "exact", fmt,
                  tokenizer=tok)
    # all-zero rows: their groups' scales round badly but carry nothing, so they do not refuse
    zero = _scaled_qat(gen, spec, 1.0, zero_rows=8)
    assert max(_worst_f16_rounding(zero).values()) <= 2 ** -11
    lowbit.export(zero, tmp_path / "zero.gguf" if fmt == "gguf" else tmp_path / "zero", fmt,
                  tokenizer=tok)


def test_export_int8_scales_of_small_weights(gen, tmp_path):
    """int8-asym scales of weights with std 0.002 fall below float16's smallest normal: refused
    by the float16 carriers; compressed-tensors in float32 stores them as they are."""
    m = tiny_llama(_seed(gen))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "proj" in n:
                p.normal_(0, 0.002, generator=gen)
    lowbit.quantize_(m, lowbit.QATConfig(lowbit.QuantSpec("int", 8, 64)))
    assert max(_worst_f16_rounding(m).values()) > 2 ** -11
    for fmt in ("compressed-tensors", "gptq"):
        _refuses(m, fmt, r"model\.layers\.0\.self_attn\.q_proj: scale .* relative error", tmp_path)
    with pytest.raises(ValueError, match="or export with dtype=torch.float32"):
        lowbit.export(m, tmp_path / "ct16", "compressed-tensors")
    lowbit.export(m, tmp_path / "ct32", "compressed-tensors", dtype=torch.float32)


def test_export_non_empty_out_and_overwrite(gen, tmp_path):
    m = lowbit.convert_(qat_model(gen, lowbit.QuantSpec("int", 4, 32)))
    d = tmp_path / "out"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        lowbit.export(m, d, "compressed-tensors")
    assert os.listdir(d) == ["keep.txt"]
    (d / "model-00002-of-00002.safetensors").write_text("stale shard")
    lowbit.export(m, d, "compressed-tensors", overwrite=True)
    assert sorted(os.listdir(d)) == ["config.json", "generation_config.json", "keep.txt",
                                     "model.safetensors"]
    tok = tiny_tokenizer()
    p = lowbit.export(m, tmp_path / "m.gguf", "gguf", tokenizer=tok)
    with pytest.raises(ValueError, match="exists"):
        lowbit.export(m, p, "gguf", tokenizer=tok)
    assert lowbit.export(m, p, "gguf", tokenizer=tok, overwrite=True) == p
    assert lowbit.export(m, tmp_path / "dir", "gguf", tokenizer=tok).endswith("model.gguf")


def test_export_writes_tokenizer_and_generation_config(gen, tmp_path):
    tok = tiny_tokenizer()
    m = lowbit.convert_(qat_model(gen, lowbit.QuantSpec("int", 4, 32)))
    d = lowbit.export(m, tmp_path / "ct", "compressed-tensors", tokenizer=tok)
    files = set(os.listdir(d))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= files
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["dtype"] == "float16"


@pytest.mark.parametrize("converted", [False, True])
def test_export_never_changes_the_model(converted, gen, tmp_path):
    tok = tiny_tokenizer()
    m = qat_model(gen, lowbit.QuantSpec("int", 4, 32), tied=True)
    if converted:
        lowbit.convert_(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cfg_before = m.config.to_dict()
    qc_before = getattr(m.config, "quantization_config", None)  # convert_ sets lowbit's own
    mods_before = [(n, type(x)) for n, x in m.named_modules()]
    for fmt in ("compressed-tensors", "gptq", "gguf"):
        lowbit.export(m, tmp_path / fmt, fmt, tokenizer=tok)
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype
               for k in before)
    assert m.config.to_dict() == cfg_before
    assert [(n, type(x)) for n, x in m.named_modules()] == mods_before
    assert getattr(m.config, "quantization_config", None) is qc_before
    assert (qc_before is not None) == converted


def test_formats_for(gen):
    from lowbit.export import formats_for

    assert formats_for(qat_model(gen, lowbit.QuantSpec("int", 4, 64))) == \
        ["compressed-tensors", "gptq", "gguf"]
    assert formats_for(qat_model(gen, lowbit.QuantSpec("int", 8, 64))) == \
        ["compressed-tensors", "gptq"]
    assert formats_for(qat_model(gen, lowbit.QuantSpec("fp", 4, 64))) == []


def test_targets_registry_is_the_only_dispatch(gen, tmp_path, monkeypatch):
    """lowbit.export is a callable module; FORMATS and formats_for are its attributes; every
    target module exposes NAME, check, plan and write, and export / formats_for loop over
    TARGETS (a target added there is exported to and listed, with nothing else to edit)."""
    import types

    import lowbit.export as export_module

    assert export_module is lowbit.export and callable(lowbit.export)
    assert lowbit.export.FORMATS == tuple(lowbit.export.TARGETS) == \
        ("compressed-tensors", "gptq", "gguf")
    assert not hasattr(lowbit.export.export, "formats_for")  # no attributes patched on it
    for name, t in lowbit.export.TARGETS.items():
        assert t.NAME == name and all(callable(getattr(t, f)) for f in ("check", "plan", "write"))
    calls = []

    def check(model, layers, dtype=torch.float16):
        calls.append(("check", [L.name for L in layers]))
        if any(L.spec.bits != 4 for L in layers):
            raise ValueError(f"{layers[0].name}: not 4-bit")

    def plan(model, layers, dtype, tokenizer):
        check(model, layers, dtype)
        return {"n": len(layers), "dtype": dtype}

    def write(plan, out, overwrite=False, max_shard_size="5GB"):
        calls.append(("write", plan, os.fspath(out), overwrite))
        return os.fspath(out)

    fake = types.SimpleNamespace(NAME="fake", check=check, plan=plan, write=write)
    monkeypatch.setitem(lowbit.export.TARGETS, "fake", fake)
    m4 = qat_model(gen, lowbit.QuantSpec("int", 4, 64))
    assert "fake" in lowbit.export.formats_for(m4)
    assert "fake" not in lowbit.export.formats_for(qat_model(gen, lowbit.QuantSpec("int", 2, 64)))
    calls.clear()
    assert lowbit.export(m4, tmp_path / "f", "fake", dtype=torch.bfloat16) == str(tmp_path / "f")
    assert calls[-1] == ("write", {"n": 14, "dtype": torch.bfloat16}, str(tmp_path / "f"), False)


def test_formats_for_runs_the_scale_check_of_every_target(gen):
    """formats_for is export's checks: weights whose float16 scales would lose more than 2^-11
    are carried by no float16 target (gguf included), by compressed-tensors in float32 only."""
    small = _scaled_qat(gen, lowbit.QuantSpec("int", 4, 64), 5e-4)
    assert lowbit.export.formats_for(small) == []
    from lowbit.export import _common, compressed_tensors

    compressed_tensors.check(small, _common.collect(small), torch.float32)


def test_scale_rounding_reads_the_spec_scale_dtype():
    """Exporters read QuantSpec.scale_dtype (FORMATS.md 1.6) where it exists: scales of a spec
    computed in the export dtype are stored as they are, and must be exact in it."""
    import types

    from lowbit.export._common import round_scales, spec_scale_dtype

    assert spec_scale_dtype(lowbit.QuantSpec()) == torch.float32  # before the field exists
    s16 = types.SimpleNamespace(scale_dtype="float16", name="int4-g32-asym")
    exact = torch.tensor([[1.0, 2 ** -10, 3.001953125]])
    assert torch.equal(round_scales(exact, torch.float16, "scale", "L", s16).float(), exact)
    with pytest.raises(ValueError, match="L: spec int4-g32-asym has scale_dtype float16"):
        round_scales(exact + 1e-4, torch.float16, "scale", "L", s16)
    # a float32 spec is rounded (within half an ulp of float16)
    r = round_scales(exact + 1e-4, torch.float16, "scale", "L", lowbit.QuantSpec())
    assert torch.allclose(r.float(), exact + 1e-4, rtol=2 ** -11, atol=0)
