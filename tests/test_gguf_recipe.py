"""tests/test_gguf_recipe.py: lowbit.gguf.tensor_types, llama-quantize's per-tensor types.

Fast tests: small Llama configs (built on the meta device) against expectations read off
llama.cpp b11434's src/llama-quant.cpp, one function per rule (named in each docstring).
Slow test (marker slow; needs LOWBIT_LLAMA_CPP_DIR = a prefix of scripts/build_llamacpp.sh):
llama-quantize itself on the F32 SmolLM2-135M file and on a random 16-layer Llama with sizes that
are multiples of 256 and an untied head, for every ftype (and --imatrix for Q4_0 / Q5_0), the
tensor types of the files it wrote read back with gguf-py and compared with tensor_types()."""
import os
import subprocess
import sys

import pytest
import torch

lowbit = pytest.importorskip("lowbit")
transformers = pytest.importorskip("transformers")
from lowbit import gguf as lg  # noqa: E402

# the GGUF writers of the slow tests: benchmarks/llamacpp/gguf_to_f32.py, random_llama_gguf.py
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks",
                                "llamacpp"))


def _llama(layers=16, hidden=256, inter=512, heads=4, kv=1, tied=False, vocab=512):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv, tie_word_embeddings=tied)
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(cfg)


def _by_gguf(tt):
    return {t.gguf_name: t.type for t in tt.values()}


def _layers(tt, kind, n):
    return [_by_gguf(tt)[f"blk.{i}.{kind}.weight"] for i in range(n)]


# use_more_bits(i, 16): i < 2, i >= 14, or (i - 2) % 3 == 2
MORE16 = {0, 1, 4, 7, 10, 13, 14, 15}


def test_names_and_untouched_tensors():
    """tensor_allows_quantization: 2-D '*weight' tensors but no '_norm.weight'; names as
    llama.cpp's Llama tensor map (convert_hf_to_gguf.py) gives them; llama_ftype values."""
    tt = lg.tensor_types(_llama(layers=2), "Q4_K_M")
    assert tt["model.layers.1.self_attn.v_proj"].gguf_name == "blk.1.attn_v.weight"
    assert tt["model.layers.0.mlp.down_proj"].gguf_name == "blk.0.ffn_down.weight"
    assert tt["model.embed_tokens"].gguf_name == "token_embd.weight"
    assert tt["lm_head"].gguf_name == "output.weight"
    assert tt["model.norm"].gguf_name == "output_norm.weight"
    assert tt["model.layers.0.self_attn.q_proj"].param == "model.layers.0.self_attn.q_proj.weight"
    assert tt["model.layers.0.mlp.up_proj"].shape == (512, 256)
    norms = [t for t in tt.values() if "norm" in t.gguf_name]
    assert len(norms) == 5 and all(t.type == "f32" and not t.quantized for t in norms)
    assert len(tt) == 2 * 9 + 3
    assert [lg.file_type(f) for f in ("Q4_0", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K")] == \
        [2, 7, 10, 12, 15, 18]
    assert lg.base_type("q4_k_m") == "q4_k" and lg.base_type("Q5_1") == "q5_1"


def test_layer_position_rule():
    """llama_tensor_get_type_impl: attn_v / ffn_down of the _M mixtures on use_more_bits layers,
    Q3_K_M's first two attn_v and first n/16 ffn_down, Q4_K_S's first four attn_v and first n/8
    ffn_down, Q3_K_L's attn_v / ffn_down / attn_output, Q2_K's ffn_down and attn_output."""
    m = _llama(layers=16)
    for ft, base, up in (("Q4_K_M", "q4_k", "q6_k"), ("Q5_K_M", "q5_k", "q6_k")):
        tt = lg.tensor_types(m, ft)
        want = [up if i in MORE16 else base for i in range(16)]
        assert _layers(tt, "attn_v", 16) == want
        assert _layers(tt, "ffn_down", 16) == want
        assert set(_layers(tt, "attn_q", 16) + _layers(tt, "ffn_up", 16)) == {base}
        assert _layers(tt, "attn_output", 16) == [base] * 16
    tt = lg.tensor_types(m, "Q3_K_M")
    assert _layers(tt, "attn_v", 16) == ["q5_k"] * 2 + ["q4_k"] * 14
    assert _layers(tt, "ffn_down", 16) == ["q5_k"] + ["q4_k"] * 15
    assert _layers(tt, "attn_output", 16) == ["q4_k"] * 16
    assert set(_layers(tt, "ffn_gate", 16)) == {"q3_k"}
    tt = lg.tensor_types(m, "Q4_K_S")
    assert _layers(tt, "attn_v", 16) == ["q5_k"] * 4 + ["q4_k"] * 12
    assert _layers(tt, "ffn_down", 16) == ["q5_k"] * 2 + ["q4_k"] * 14
    tt = lg.tensor_types(m, "Q3_K_L")
    assert {*_layers(tt, "attn_v", 16), *_layers(tt, "ffn_down", 16),
            *_layers(tt, "attn_output", 16)} == {"q5_k"}
    tt = lg.tensor_types(m, "Q2_K")
    assert {*_layers(tt, "ffn_down", 16), *_layers(tt, "attn_output", 16)} == {"q3_k"}
    assert set(_layers(tt, "attn_k", 16)) == {"q2_k"}
    for ft in ("Q3_K_S", "Q5_K_S", "Q6_K", "Q4_1", "Q5_1", "Q8_0"):
        tt = lg.tensor_types(m, ft)
        blk = {t.type for t in tt.values() if t.gguf_name.startswith("blk.") and t.quantized}
        assert blk == {lg.base_type(ft)}, ft


def test_attn_v_head_ratio_and_70b():
    """Q2_K's attn_v: Q4_K with n_head / n_head_kv >= 4, else Q3_K; LLM_TYPE_70B (80 layers,
    n_head != n_head_kv) raises a Q3_K / Q4_K attn_v to Q5_K."""
    assert set(_layers(lg.tensor_types(_llama(layers=4, heads=4, kv=1), "Q2_K"), "attn_v", 4)) == {"q4_k"}
    assert set(_layers(lg.tensor_types(_llama(layers=4, heads=8, kv=4), "Q2_K"), "attn_v", 4)) == {"q3_k"}
    big = _llama(layers=80, hidden=256, inter=256, heads=8, kv=1)
    assert set(_layers(lg.tensor_types(big, "Q3_K_S"), "attn_v", 80)) == {"q5_k"}
    assert set(_layers(lg.tensor_types(big, "Q3_K_S"), "attn_q", 80)) == {"q3_k"}
    assert set(_layers(lg.tensor_types(big, "Q4_K_S"), "attn_v", 80)) == {"q5_k"}
    assert set(_layers(lg.tensor_types(big, "Q2_K"), "attn_v", 80)) == {"q5_k"}
    # 80 layers without grouped-query attention is LLM_TYPE_65B: no raise
    mha = _llama(layers=80, hidden=256, inter=256, heads=4, kv=4)
    assert set(_layers(lg.tensor_types(mha, "Q3_K_S"), "attn_v", 80)) == {"q3_k"}


def test_fallback_rule():
    """tensor_type_fallback: a row length that the type's block does not divide falls back
    (Q2_K, Q3_K -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0; a 32-block type keeps its
    type) and to F16 when 32 does not divide it either."""
    m = _llama(layers=2, hidden=96, inter=256, heads=2, kv=1)     # 96 % 256 != 0, 96 % 32 == 0
    for ft, fb in (("Q2_K", "q4_0"), ("Q3_K_S", "q4_0"), ("Q4_K_S", "q5_0"), ("Q5_K_S", "q5_1"),
                   ("Q6_K", "q8_0"), ("Q4_0", "q4_0"), ("Q5_1", "q5_1")):
        tt = lg.tensor_types(m, ft)
        gate = tt["model.layers.1.mlp.gate_proj"]
        assert (gate.type, gate.wanted) == (fb, lg.base_type(ft)), ft
        assert gate.fallback == (fb != lg.base_type(ft))
        down = tt["model.layers.1.mlp.down_proj"]              # rows of 256: no fallback
        assert not down.fallback
    tt = lg.tensor_types(m, "Q4_K_M")
    # use_more_bits(i, 2) holds for layer 1 only (i >= 7 * 2 // 8)
    assert [tt[f"model.layers.{i}.self_attn.v_proj"].wanted for i in (0, 1)] == ["q4_k", "q6_k"]
    assert [tt[f"model.layers.{i}.self_attn.v_proj"].type for i in (0, 1)] == ["q5_0", "q8_0"]
    assert [tt[f"model.layers.{i}.mlp.down_proj"].type for i in (0, 1)] == ["q4_k", "q6_k"]
    odd = _llama(layers=2, hidden=80, inter=256, heads=2, kv=1)   # 80 % 32 != 0
    for ft in ("Q4_K_M", "Q4_0", "Q8_0"):
        tt = lg.tensor_types(odd, ft)
        assert tt["model.layers.0.self_attn.q_proj"].type == "f16", ft
        assert tt["model.layers.0.mlp.down_proj"].type != "f16", ft


def test_output_and_tied_embedding():
    """llama_tensor_get_type_impl's first branch: output.weight (and token_embd.weight when the
    file has no output.weight, has_tied_embeddings) becomes Q6_K, or Q8_0 when the base type is
    Q8_0 or its block does not divide the row; an untied token_embd keeps the base type."""
    untied = lg.tensor_types(_llama(layers=2), "Q4_K_M")
    assert untied["lm_head"].type == "q6_k" and untied["lm_head"].tied_to is None
    assert untied["model.embed_tokens"].type == "q4_k"
    assert lg.tensor_types(_llama(layers=2), "Q4_0")["lm_head"].type == "q6_k"
    assert lg.tensor_types(_llama(layers=2), "Q8_0")["lm_head"].type == "q8_0"
    m = _llama(layers=2, tied=True)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    tt = lg.tensor_types(m, "Q3_K_M")
    emb, head = tt["model.embed_tokens"], tt["lm_head"]
    assert emb.type == "q6_k" and emb.gguf_name == "token_embd.weight"
    assert head.tied_to == "model.embed_tokens" and head.type == "q6_k"
    assert head.gguf_name == "token_embd.weight"
    assert "output.weight" not in {t.gguf_name for t in tt.values()}
    narrow = lg.tensor_types(_llama(layers=2, hidden=96, heads=2, kv=1, tied=True), "Q4_K_M")
    assert narrow["model.embed_tokens"].type == "q8_0"
    assert not narrow["model.embed_tokens"].fallback          # the output rule, no fallback
    q40 = lg.tensor_types(_llama(layers=2, hidden=96, heads=2, kv=1, tied=True), "Q4_0")
    assert q40["model.embed_tokens"].type == "q8_0" and q40["model.embed_tokens"].fallback


def test_imatrix_rule():
    """ffn_down of Q4_0 / Q5_0 with an importance matrix: Q4_1 / Q5_1 on the first n/8 layers."""
    m = _llama(layers=16)
    assert _layers(lg.tensor_types(m, "Q4_0", imatrix=True), "ffn_down", 16) == \
        ["q4_1"] * 2 + ["q4_0"] * 14
    assert _layers(lg.tensor_types(m, "Q5_0", imatrix=True), "ffn_down", 16) == \
        ["q5_1"] * 2 + ["q5_0"] * 14
    assert set(_layers(lg.tensor_types(m, "Q4_0"), "ffn_down", 16)) == {"q4_0"}
    assert lg.tensor_types(m, "Q4_K_M", imatrix=True) == lg.tensor_types(m, "Q4_K_M")


def test_smollm2_shape_fallback_count():
    """SmolLM2-135M (hidden 576, 30 layers, 9 / 3 heads, tied): 180 of its 272 tensors fall back
    at every k ftype (576 % 256 != 0); the tied embedding takes Q8_0 by the output rule."""
    m = _llama(layers=30, hidden=576, inter=1536, heads=9, kv=3, tied=True, vocab=49152)
    for ft in ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"):
        tt = lg.tensor_types(m, ft)
        own = [t for t in tt.values() if t.tied_to is None]
        assert len(own) == 272
        assert sum(t.fallback for t in own) == 180, ft
        assert tt["model.embed_tokens"].type == "q8_0"


def test_bad_arguments():
    with pytest.raises(ValueError, match="ftype"):
        lg.tensor_types(_llama(layers=2), "Q4_K_X")
    with pytest.raises(ValueError, match="ftype"):
        lg.file_type("IQ2_XS")
    with pytest.raises(ValueError, match="Llama"):
        lg.tensor_types(torch.nn.Linear(4, 4), "Q4_K_M")
    gpt2 = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=100)
    with torch.device("meta"):
        with pytest.raises(ValueError, match="model_type"):
            lg.tensor_types(transformers.GPT2LMHeadModel(gpt2), "Q4_K_M")


def _spec_types(model):
    """{module name: format} of every QAT layer of a quantize_'d model (None: left as it was)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            out[name] = m.spec.format if hasattr(m, "spec") else None
    return out


RECIPE_SHAPES = {
    "multiple-of-256 untied": dict(layers=16),
    "multiple-of-256 tied": dict(layers=8, tied=True),
    "smollm2": dict(layers=30, hidden=576, inter=1536, heads=9, kv=3, tied=True, vocab=49152),
    "f16 fallback": dict(layers=2, hidden=80, inter=256, heads=2, kv=1, tied=True),
}


@pytest.mark.parametrize("shape", list(RECIPE_SHAPES))
def test_recipe_specs_equal_tensor_types(shape):
    """lowbit.gguf.recipe(model, ftype): after quantize_ every linear layer and the embedding
    carry exactly tensor_types' type (a tied head: its embedding's), the f16 / f32 ones stay
    full-precision modules, and the config and model remember the ftype — every ftype."""
    for ft in lg.FTYPES:
        m = _llama(**RECIPE_SHAPES[shape])
        tt = lg.tensor_types(m, ft)
        cfg = lg.recipe(m, ft)
        assert cfg.ftype == ft and cfg.embeddings
        want = {}
        for name, t in tt.items():
            if t.quantized:
                want[name] = None if t.type in ("f16", "f32") else t.type
                assert (cfg.spec_for(name) and cfg.spec_for(name).format) == want[name]
        lowbit.quantize_(m, cfg)
        assert _spec_types(m) == want, (shape, ft)
        assert m.lowbit_gguf_ftype == ft
        if m.config.tie_word_embeddings:
            assert m.lm_head.weight is m.model.embed_tokens.weight
            if want["model.embed_tokens"] is not None:
                assert isinstance(m.model.embed_tokens, lowbit.nn.QATEmbedding)
                assert m.lm_head.spec == m.model.embed_tokens.spec
    assert lg.recipe(_llama(layers=16), "Q4_0", imatrix=True).spec_for(
        "model.layers.0.mlp.down_proj").format == "q4_1"
    with pytest.raises(ValueError, match="ftype"):
        lg.recipe(_llama(layers=2), "Q4_K")


# ---------------------------------------------------------------------------------------------
# slow: llama-quantize itself
# ---------------------------------------------------------------------------------------------
def _tools():
    root = os.environ.get("LOWBIT_LLAMA_CPP_DIR")
    if not root or not os.access(os.path.join(root, "bin", "llama-quantize"), os.X_OK):
        pytest.skip("set LOWBIT_LLAMA_CPP_DIR to a prefix of scripts/build_llamacpp.sh")
    return os.path.join(root, "bin")


def _file_types(path):
    import gguf

    r = gguf.GGUFReader(path)
    return ({t.name: t.tensor_type.name.lower() for t in r.tensors},
            int(r.fields["general.file_type"].contents()))


def _check_quantize(tools, src, model, tmp_path, tag, ftypes, imatrix=None):
    for ft in ftypes:
        out = tmp_path / f"{tag}-{ft}.gguf"
        cmd = [os.path.join(tools, "llama-quantize")]
        if imatrix:
            cmd += ["--imatrix", str(imatrix)]
        subprocess.run(cmd + [str(src), str(out), ft, "2"], check=True, capture_output=True)
        got, file_type = _file_types(out)
        want = _by_gguf(lg.tensor_types(model, ft, imatrix=imatrix is not None))
        assert got == want, (tag, ft, {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
                                       if got.get(k) != want.get(k)})
        assert file_type == lg.file_type(ft)
        out.unlink()


@pytest.mark.slow
def test_llama_quantize_smollm2(tmp_path):
    tools = _tools()
    from lowbit import data

    folder, name = data.smollm2_gguf()
    src = os.path.join(os.path.dirname(tools), "models", "smollm2-135m-f32.gguf")
    if not os.path.exists(src):
        import gguf_to_f32

        src = gguf_to_f32.to_f32(os.path.join(folder, name), str(tmp_path / "f32.gguf"))
    cfg = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _check_quantize(tools, src, model, tmp_path, "smollm2", lg.FTYPES)


@pytest.mark.slow
def test_llama_quantize_random_llama(tmp_path):
    """A 16-layer Llama, sizes multiples of 256, 4 query heads per KV head, untied head: written
    as F32 GGUF by benchmarks/llamacpp/random_llama_gguf.py (the same names and shapes as the
    transformers model of the same config)."""
    tools = _tools()
    import random_llama_gguf

    shape = dict(hidden=256, layers=16, inter=512, heads=4, kv=1, vocab=512)
    src = random_llama_gguf.write(str(tmp_path / "rand-f32.gguf"), **shape, f32=True, ctx=256)
    model = _llama(layers=16, hidden=256, inter=512, heads=4, kv=1, vocab=512)
    _check_quantize(tools, src, model, tmp_path, "rand", lg.FTYPES)
    text = tmp_path / "text.txt"
    text.write_text("In the beginning was the word, and the word was with God. " * 200)
    imat = tmp_path / "imatrix.gguf"
    subprocess.run([os.path.join(tools, "llama-imatrix"), "-m", str(src), "-f", str(text), "-o",
                    str(imat), "-c", "64", "--chunks", "4", "-t", "2"], check=True,
                   capture_output=True)
    _check_quantize(tools, src, model, tmp_path, "rand-imatrix", ("Q4_0", "Q5_0", "Q4_K_M"),
                    imatrix=imat)
