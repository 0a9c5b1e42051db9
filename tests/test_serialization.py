"""save_quantized / load_quantized and the transformers round trip: from_pretrained of a
save_quantized directory (and of model.save_pretrained) returns the packed model through the
registered "lowbit" quantizer; load_quantized(path); QuantSpec.scale_dtype is saved and loaded
back; directories written the 0.1 way (no scale_dtype) still load, as float32;
every stored tensor's dtype and shape is checked; a malformed lowbit_config.json
is a ValueError naming the file and field (item 14); safetensors is a core dependency (item 16)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from _hfutil import tiny_llama, tiny_tokenizer

lowbit = pytest.importorskip("lowbit")
transformers = pytest.importorskip("transformers")

IDS = torch.arange(2 * 9).reshape(2, 9) * 7 % 300


def converted(seed=0, tied=True):
    m = tiny_llama(seed, tied=tied)
    lowbit.quantize_(m, lowbit.QATConfig(lowbit.QuantSpec("nf", 3, 32),
                                         overrides={"*down_proj": lowbit.QuantSpec("int", 2, 64)}))
    return lowbit.convert_(m)


def logits(m):
    with torch.no_grad():
        return m(IDS).logits


@pytest.mark.parametrize("tied", [False, True])
def test_from_pretrained_and_load_by_path(tied, tmp_path):
    m = converted(tied=tied)
    ref = logits(m)
    tok = tiny_tokenizer()
    qc = m.config.quantization_config  # set by convert_ (lowbit.hf.mark_quantized)
    cfg = m.config.to_dict()
    lowbit.save_quantized(m, tmp_path, tokenizer=tok)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "lowbit_config.json", "config.json", "generation_config.json",
            "tokenizer.json"} <= files
    assert m.config.quantization_config is qc and m.config.to_dict() == cfg  # model untouched
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    down = back.model.layers[1].mlp.down_proj
    assert isinstance(down, lowbit.nn.QuantLinear) and down.spec.name == "int2-g64-asym"
    assert (back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()) == tied
    assert torch.equal(logits(back), ref)
    assert torch.equal(logits(lowbit.load_quantized(str(tmp_path))), ref)
    assert torch.equal(logits(lowbit.load_quantized(tmp_path)), ref)
    # and the loaded model saves again with save_pretrained
    back.save_pretrained(tmp_path / "again")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    assert torch.equal(logits(again), ref)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert not any(k.endswith((".packed", ".params")) for k in stored)


def test_save_pretrained_of_a_converted_model(tmp_path):
    m = converted()
    ref = logits(m)
    m.save_pretrained(tmp_path)  # convert_ marked it (lowbit.hf.mark_quantized)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(back.model.layers[0].self_attn.q_proj, lowbit.nn.QuantLinear)
    assert torch.equal(logits(back), ref)


def test_tied_llama_with_a_packed_head_saves_untied_and_loads(tmp_path):
    """skip=() quantizes the LM head of a tied model: the packed head is no longer the
    embedding, so every directory lowbit writes says tie_word_embeddings false and loads back
    with the saved logits (the embedding stays a float tensor of its own)."""
    m = tiny_llama(5, tied=True)
    assert m.config.tie_word_embeddings
    lowbit.quantize_(m, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32), skip=()))
    assert m.lm_head.weight is m.model.embed_tokens.weight  # QAT keeps the tie
    lowbit.convert_(m)
    assert isinstance(m.lm_head, lowbit.nn.QuantLinear)
    ref = logits(m)
    lowbit.save_quantized(m, tmp_path / "sq")
    m.save_pretrained(tmp_path / "sp")
    skeleton_cfg = transformers.LlamaConfig(**{**m.config.to_dict(), "tie_word_embeddings": True})
    skeleton_cfg.quantization_config = None
    for d in ("sq", "sp"):
        assert json.load(open(tmp_path / d / "config.json"))["tie_word_embeddings"] is False, d
        backs = [transformers.AutoModelForCausalLM.from_pretrained(tmp_path / d)]
        if d == "sq":
            backs += [lowbit.load_quantized(tmp_path / d),
                      lowbit.load_quantized(transformers.LlamaForCausalLM(skeleton_cfg),
                                            str(tmp_path / d))]
        for back in backs:
            assert isinstance(back.lm_head, lowbit.nn.QuantLinear)
            assert torch.equal(back.model.embed_tokens.weight, m.model.embed_tokens.weight)
            assert torch.equal(logits(back), ref), d


def write_old_way(model, directory):
    """The directory lowbit 0.1 wrote (its save_quantized, reproduced here)."""
    import dataclasses

    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    cfg = {"lowbit_version": "0.1.0", "layers": {}, "aliases": {}}
    derived = set()
    for name, mod in model.named_modules():
        if isinstance(mod, lowbit.nn.QuantLinear):
            spec = dataclasses.asdict(mod.spec)
            assert spec.pop("scale_dtype") == "float32"  # 0.1 had no such field
            cfg["layers"][name] = {"spec": spec,
                                   "in_features": mod.in_features,
                                   "out_features": mod.out_features,
                                   "bias": mod.bias is not None, "dtype": str(mod.weight_dtype)}
            derived |= {f"{name}.packed", f"{name}.params"}
    tensors, seen = {}, {}
    for key, t in model.state_dict().items():
        if key in derived or t is None:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in seen:
            cfg["aliases"][key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().contiguous()
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "lowbit_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def test_directory_written_the_old_way_still_loads(tmp_path):
    m = converted()
    write_old_way(m, tmp_path)
    back = lowbit.load_quantized(transformers.LlamaForCausalLM(m.config), str(tmp_path))
    assert torch.equal(logits(back), logits(m))
    specs = [x.spec for x in back.modules() if isinstance(x, lowbit.nn.QuantLinear)]
    assert specs and all(s.scale_dtype == "float32" for s in specs)
    assert all(x.act == "auto" for x in back.modules() if isinstance(x, lowbit.nn.QuantLinear))
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    with pytest.raises(FileNotFoundError, match="no config.json.*load_quantized\\(model_skeleton"):
        lowbit.load_quantized(str(tmp_path))


def test_scale_dtype_is_saved_and_loaded(tmp_path):
    """A model trained on float16 / bfloat16 scales (QuantSpec.scale_dtype) saves the field in
    lowbit_config.json and config.json, keeps its rounded scales, and loads back with it."""
    m = tiny_llama(3)
    s16 = lowbit.QuantSpec("int", 3, 32, scale_dtype="float16")
    sbf = lowbit.QuantSpec("nf", 4, 64, scale_dtype="bfloat16")
    lowbit.quantize_(m, lowbit.QATConfig(s16, overrides={"*down_proj": sbf}))
    lowbit.convert_(m)
    ref = logits(m)
    lowbit.save_quantized(m, tmp_path)
    for f in ("lowbit_config.json", "config.json"):
        cfg = json.load(open(tmp_path / f))
        layers = cfg["layers"] if f == "lowbit_config.json" else cfg["quantization_config"]["layers"]
        got = {e["spec"]["scale_dtype"] for e in layers.values()}
        assert got == {"float16", "bfloat16"}, (f, got)
    for back in (transformers.AutoModelForCausalLM.from_pretrained(tmp_path),
                 lowbit.load_quantized(str(tmp_path))):
        packed = {n: x for n, x in back.named_modules() if isinstance(x, lowbit.nn.QuantLinear)}
        for n, x in packed.items():
            assert x.spec == (sbf if n.endswith("down_proj") else s16), n
            dt = x.spec.scale_torch_dtype
            assert torch.equal(x.scales.to(dt).float(), x.scales), n
        assert torch.equal(logits(back), ref)


def test_act_is_saved_and_loaded_per_layer(tmp_path):
    """QuantLinear.act (quant_linear's accuracy mode) is part of what a layer computes: it is
    stored per layer and every loader gives it back, so the logits are the saved model's."""
    m = lowbit.convert_(lowbit.quantize_(tiny_llama(4), lowbit.QATConfig(
        lowbit.QuantSpec("int", 4, 32))), act="int8")
    m.model.layers[1].mlp.down_proj.act = "float"
    want = {n: x.act for n, x in m.named_modules() if isinstance(x, lowbit.nn.QuantLinear)}
    assert set(want.values()) == {"int8", "float"}

    def short_logits(model):  # 9 tokens: the small-M kernels, where the modes differ
        with torch.no_grad():
            return model(IDS[:1]).logits

    ref = short_logits(m)
    m.model.layers[0].self_attn.q_proj.act = "auto"  # so a lost act shows in the logits
    assert not torch.equal(short_logits(m), ref)
    m.model.layers[0].self_attn.q_proj.act = "int8"
    lowbit.save_quantized(m, tmp_path)
    for f in ("lowbit_config.json", "config.json"):
        cfg = json.load(open(tmp_path / f))
        layers = cfg["layers"] if f == "lowbit_config.json" else cfg["quantization_config"]["layers"]
        assert {n: e["act"] for n, e in layers.items()} == want, f
    m.save_pretrained(tmp_path / "hf")
    for back in (lowbit.load_quantized(str(tmp_path)),
                 lowbit.load_quantized(transformers.LlamaForCausalLM(m.config), str(tmp_path)),
                 transformers.AutoModelForCausalLM.from_pretrained(tmp_path),
                 transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")):
        got = {n: x.act for n, x in back.named_modules() if isinstance(x, lowbit.nn.QuantLinear)}
        assert got == want
        assert torch.equal(short_logits(back), ref)


def _rewrite(directory, edit):
    from safetensors.torch import load_file, save_file

    p = os.path.join(directory, "model.safetensors")
    sd = load_file(p)
    edit(sd)
    save_file(sd, p)


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.__setitem__("model.layers.0.mlp.down_proj.codes",
                               sd["model.layers.0.mlp.down_proj.codes"].float()),
     "down_proj.codes' has dtype F32, expected U8"),
    (lambda sd: sd.__setitem__("model.layers.1.self_attn.q_proj.scales",
                               sd["model.layers.1.self_attn.q_proj.scales"][:, :2].contiguous()),
     r"q_proj.scales' has shape \(128, 2, 2\), expected \(128, 4, 2\)"),
    (lambda sd: sd.__setitem__("model.layers.0.mlp.down_proj.zeros",
                               sd["model.layers.0.mlp.down_proj.zeros"].to(torch.int32)),
     "down_proj.zeros' has dtype I32, expected U8"),
    (lambda sd: sd.pop("model.layers.1.mlp.up_proj.codes"), "up_proj.codes' of packed layer .* is missing"),
])
def test_load_checks_every_tensor_dtype_and_shape(edit, match, tmp_path):
    m = converted()
    lowbit.save_quantized(m, tmp_path)
    _rewrite(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        lowbit.load_quantized(transformers.LlamaForCausalLM(m.config), str(tmp_path))
    with pytest.raises(ValueError, match=match):
        lowbit.load_quantized(str(tmp_path))
    with pytest.raises(ValueError, match=match):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd["model.layers.0.mlp.down_proj.zeros"].__setitem__((3, 1), 4),
     r"^model.layers.0.mlp.down_proj.zeros: zero point 4 at \[3, 1\] is outside \[0, qmax = 3\]"),
    (lambda sd: sd["model.layers.1.self_attn.q_proj.scales"].__setitem__((2, 0, 1), -0.5),
     r"^model.layers.1.self_attn.q_proj.scales: scale -0.5"),
])
def test_load_checks_stored_values_in_every_loader(edit, match, tmp_path):
    m = converted()
    lowbit.save_quantized(m, tmp_path)
    _rewrite(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        lowbit.load_quantized(transformers.LlamaForCausalLM(m.config), str(tmp_path))
    with pytest.raises(ValueError, match=match):
        lowbit.load_quantized(str(tmp_path))
    with pytest.raises(ValueError, match=match):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad_header_json"])
def test_unreadable_model_safetensors_is_a_value_error_naming_the_file(damage, tmp_path):
    m = converted()
    lowbit.save_quantized(m, tmp_path)
    p = tmp_path / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"\x00lowbit?" * 64,
                   "empty": b"",
                   "bad_header_json": len(b"{nope").to_bytes(8, "little") + b"{nope"}[damage])
    for load in (lambda: lowbit.load_quantized(str(tmp_path)),
                 lambda: lowbit.load_quantized(transformers.LlamaForCausalLM(m.config), str(tmp_path)),
                 lambda: transformers.AutoModelForCausalLM.from_pretrained(tmp_path)):
        with pytest.raises(ValueError, match="not a readable safetensors file") as e:
            load()
        assert str(p) in str(e.value)


def _edit_cfg(directory, fn):
    p = os.path.join(directory, "lowbit_config.json")
    cfg = json.load(open(p))
    fn(cfg)
    json.dump(cfg, open(p, "w"))
    return p


LAYER = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("fn,field", [
    (lambda c: c.pop("layers"), "field 'layers' is missing"),
    (lambda c: c.__setitem__("layers", []), "field 'layers' must be a non-empty object"),
    (lambda c: c["layers"][LAYER].__setitem__("dtype", "torch.float64"), r"layers\['model.layers.0.self_attn.q_proj'\].dtype must be one of"),
    (lambda c: c["layers"][LAYER].__setitem__("in_features", "128"), r"\.in_features must be a positive int"),
    (lambda c: c["layers"][LAYER].__setitem__("bias", "no"), r"\.bias must be true or false"),
    (lambda c: c["layers"][LAYER].__setitem__("spec", "nf3"), r"\.spec must be an object"),
    (lambda c: c["layers"][LAYER]["spec"].__setitem__("bits", 5), r"\.spec is not a valid QuantSpec: bits"),
    (lambda c: c["layers"][LAYER]["spec"].__setitem__("colour", 1), r"\.spec is not a valid QuantSpec"),
    (lambda c: c["layers"][LAYER]["spec"].__setitem__("scale_dtype", "float64"), r"\.spec is not a valid QuantSpec: scale_dtype"),
    (lambda c: c["layers"][LAYER]["spec"].__setitem__("scale_dtype", 16), r"\.spec is not a valid QuantSpec: scale_dtype"),
    (lambda c: c["layers"][LAYER].pop("out_features"), r"\.out_features is missing"),
    (lambda c: c["layers"][LAYER].__setitem__("act", "int4"), r"\.act must be one of \[.*'int8'.*\], got 'int4'"),
    (lambda c: c["layers"][LAYER].__setitem__("act", None), r"\.act must be one of"),
    (lambda c: c["layers"].__setitem__(LAYER, 3), r"layers\['model.layers.0.self_attn.q_proj'\] must be an object"),
    (lambda c: c.__setitem__("aliases", {"lm_head.weight": "model.nothing.weight"}), r"aliases\['lm_head.weight'\] names tensor 'model.nothing.weight', which is not stored"),
    (lambda c: c.__setitem__("aliases", ["x"]), "field 'aliases' must be an object"),
])
def test_malformed_lowbit_config_is_a_value_error_naming_file_and_field(fn, field, tmp_path):
    m = converted()
    lowbit.save_quantized(m, tmp_path)
    p = _edit_cfg(tmp_path, fn)
    with pytest.raises(ValueError, match=field) as e:
        lowbit.load_quantized(transformers.LlamaForCausalLM(m.config), str(tmp_path))
    assert p in str(e.value)


def test_malformed_quantization_config_in_config_json(tmp_path):
    m = converted()
    lowbit.save_quantized(m, tmp_path)
    p = tmp_path / "config.json"
    cfg = json.load(open(p))
    cfg["quantization_config"]["layers"][LAYER]["dtype"] = "fp8"
    json.dump(cfg, open(p, "w"))
    with pytest.raises(ValueError, match="config.json quantization_config: field .*dtype"):
        lowbit.load_quantized(str(tmp_path))
    with pytest.raises(ValueError, match="config.json quantization_config: field .*dtype"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "lowbit_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="lowbit_config.json: not valid JSON"):
        lowbit.load_quantized(transformers.LlamaForCausalLM(m.config), str(tmp_path))


def test_load_quantized_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        lowbit.load_quantized(str(tmp_path / "nothing"))
    with pytest.raises(TypeError, match="path"):
        lowbit.load_quantized(42)
    with pytest.raises(TypeError, match="directory"):
        lowbit.load_quantized(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="tokenizer"):
        lowbit.save_quantized(converted(), tmp_path / "t", tokenizer="gpt2")


def test_save_quantized_plain_module_has_no_config_json(tmp_path):
    m = lowbit.convert_(lowbit.quantize_(torch.nn.Sequential(torch.nn.Linear(64, 32)),
                                         lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32), skip=())))
    lowbit.save_quantized(m, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["lowbit_config.json", "model.safetensors"]
    back = lowbit.load_quantized(torch.nn.Sequential(torch.nn.Linear(64, 32)), str(tmp_path))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(back(x), m(x))


@pytest.mark.parametrize("skeleton_shares", [True, False])
def test_a_layer_used_at_two_places_loads_shared(skeleton_shares, tmp_path):
    """nn.Sequential(lin, ReLU, lin): quantize_ / convert_ keep one layer at both places; it is
    saved once and loads as one QuantLinear at both places again, whether the skeleton's two
    places are one nn.Linear or two."""
    def net(shared):
        a = torch.nn.Linear(64, 64)
        return torch.nn.Sequential(a, torch.nn.ReLU(), a if shared else torch.nn.Linear(64, 64),
                                   torch.nn.ReLU(), torch.nn.Linear(64, 16))

    torch.manual_seed(7)
    m = lowbit.convert_(lowbit.quantize_(net(True), lowbit.QATConfig(
        lowbit.QuantSpec("int", 3, 32), skip=())), act="float")
    assert m[0] is m[2]
    lowbit.save_quantized(m, tmp_path)
    cfg = json.load(open(tmp_path / "lowbit_config.json"))
    assert sorted(cfg["layers"]) == ["0", "4"] and cfg["shared"] == {"2": "0"}
    back = lowbit.load_quantized(net(skeleton_shares), str(tmp_path))
    assert isinstance(back[0], lowbit.nn.QuantLinear) and back[0] is back[2]
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(back(x), m(x))
    # and a table whose shared entry is wrong is refused, naming the field
    for bad, match in (({"2": "1"}, r"shared\['2'\] names layer '1', which is not in 'layers'"),
                       ({"4": "0"}, r"shared\['4'\] is also a layer"),
                       (["2"], "field 'shared' must be an object")):
        _edit_cfg(tmp_path, lambda c: c.__setitem__("shared", bad))
        with pytest.raises(ValueError, match=match):
            lowbit.load_quantized(net(True), str(tmp_path))


def _child(code):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_registration_without_importing_transformers_eagerly():
    out = _child("import sys, lowbit\n"
                 "print('transformers' in sys.modules)\n"
                 "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as Q\n"
                 "print(Q['lowbit'].__name__)\n")
    assert out.split() == ["False", "LowbitHfQuantizer"]
    out = _child("from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as Q\n"
                 "import lowbit\nprint(Q['lowbit'].__name__)\n")
    assert out.split() == ["LowbitHfQuantizer"]


def test_safetensors_is_a_core_dependency():
    """`pip install lowbit` (no extras) can save and load."""
    try:
        import tomllib
    except ImportError:
        pytest.skip("tomllib needs Python 3.11")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]
    deps = [d.split(">")[0].split("=")[0].split("<")[0].strip() for d in proj["dependencies"]]
    assert "safetensors" in deps
    test = [d.split(">")[0].split("=")[0].strip() for d in proj["optional-dependencies"]["test"]]
    assert {"gguf", "compressed-tensors", "tokenizers"} <= set(test)


def test_version_has_one_home(tmp_path):
    """lowbit/_version.py is the version every module writes (pyproject.toml holds the same)."""
    try:
        import tomllib
    except ImportError:
        pytest.skip("tomllib needs Python 3.11")
    from lowbit._version import __version__

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["version"] == __version__ == lowbit.__version__
    lowbit.save_quantized(converted(), tmp_path)
    assert json.load(open(tmp_path / "lowbit_config.json"))["lowbit_version"] == __version__
    assert json.load(open(tmp_path / "config.json"))["quantization_config"]["lowbit_version"] == \
        __version__
