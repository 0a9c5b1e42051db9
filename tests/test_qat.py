"""QAT workflow: QATLinear, QATConfig/quantize_, convert_, calibrate_clip_ (against a brute-force
search written here), the distillation trainer and save/load, on plain modules and a tiny
Llama built from a config (no downloads)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference import ref_fake_quant

lowbit = pytest.importorskip("lowbit")
from lowbit.qat import QATLinear  # noqa: E402


def tiny_mlp(gen):
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def tiny_llama(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("fmt,bits,g", [("int", 2, 32), ("nf", 3, 64), ("fp", 4, -1)])
@pytest.mark.parametrize("ste", ["bitdistiller", "identity"])
def test_qatlinear_forward_backward_matches_reference(fmt, bits, g, ste, gen):
    lin = nn.Linear(128, 48)
    spec = lowbit.QuantSpec(fmt, bits, g)
    m = QATLinear.from_linear(copy.deepcopy(lin), spec, ste=ste)
    x = torch.randn(5, 7, 128, generator=gen)
    y = m(x)
    w = lin.weight.detach().clone().requires_grad_(True)
    y_ref = F.linear(x, ref_fake_quant(w, fmt, bits, g, False, ste), lin.bias.detach())
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    up = torch.randn(y.shape, generator=gen)
    y.backward(up)
    y_ref.backward(up)
    torch.testing.assert_close(m.weight.grad, w.grad, rtol=1e-4, atol=1e-5)
    assert spec.name in repr(m) and ste in repr(m)


def test_qatlinear_from_linear_keeps_parameters():
    lin = nn.Linear(128, 32, dtype=torch.bfloat16)
    m = QATLinear.from_linear(lin, lowbit.QuantSpec())
    assert m.weight is lin.weight and m.bias is lin.bias
    assert m.weight.dtype == torch.bfloat16 and m.weight.device == lin.weight.device
    with pytest.raises(TypeError, match="linear"):
        QATLinear.from_linear(nn.Conv1d(3, 3, 1), lowbit.QuantSpec())
    with pytest.raises(ValueError, match="group_size"):
        QATLinear.from_linear(nn.Linear(48, 8), lowbit.QuantSpec(group_size=32))


def _eval_edits():
    """(what, edit) pairs that change a QATLinear's effective weight without autograd; the
    .data ones do not bump the weight's version counter."""
    return [
        ("data.mul_", lambda m, w2: m.weight.data.mul_(3)),
        ("data.copy_", lambda m, w2: m.weight.data.copy_(w2)),
        ("weight.copy_ under no_grad", lambda m, w2: m.weight.copy_(w2)),
        ("new Parameter", lambda m, w2: setattr(m, "weight", nn.Parameter(w2.clone()))),
        ("spec", lambda m, w2: setattr(m, "spec", lowbit.QuantSpec("nf", 3, 32))),
        ("ste", lambda m, w2: setattr(m, "ste", "identity")),
    ]


@pytest.mark.parametrize("what,edit", _eval_edits(), ids=[w for w, _ in _eval_edits()])
@pytest.mark.parametrize("mode", ["eval+no_grad", "inference_mode", "frozen weight"])
def test_qatlinear_eval_output_follows_every_edit(what, edit, mode, gen):
    m = QATLinear.from_linear(nn.Linear(64, 16), lowbit.QuantSpec("int", 2, 32)).eval()
    x = torch.randn(3, 64, generator=gen)
    w2 = torch.randn(16, 64, generator=gen)
    ctx = {"eval+no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
           "frozen weight": torch.enable_grad}[mode]
    if mode == "frozen weight":
        m.weight.requires_grad_(False)

    def expected():
        w = m.weight.detach()
        return F.linear(x, ref_fake_quant(w, m.spec.format, m.spec.bits, m.spec.group_size,
                                          False, m.ste), m.bias.detach())

    with ctx():
        torch.testing.assert_close(m(x), expected(), rtol=1e-5, atol=1e-5)
        m(x)
        with torch.no_grad():
            edit(m, w2)
        torch.testing.assert_close(m(x), expected(), rtol=1e-5, atol=1e-5)


def test_cache_quantized_weights_reuses_q_and_drops_it_on_exit(gen, monkeypatch):
    from lowbit import qat

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32)))
    x = torch.randn(4, 64, generator=gen)
    calls = []
    real = qat.fake_quantize
    monkeypatch.setattr(qat, "fake_quantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        ref = model(x)
        assert len(calls) == 2  # no implicit cache: every forward quantizes
        with lowbit.cache_quantized_weights(model) as same:
            assert same is model
            for _ in range(3):
                torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
            assert len(calls) == 4  # once per layer for the whole block
            model[0].spec = lowbit.QuantSpec("int", 2, 32)  # an observable change: recomputed
            model(x)
            assert len(calls) == 5
            model[0].spec = lowbit.QuantSpec("int", 4, 32)
        model[0].weight.data.mul_(3)  # after the block: fresh again
        w = model[0].weight
        torch.testing.assert_close(model[0](x), F.linear(x, ref_fake_quant(
            w, "int", 4, 32, False), model[0].bias), rtol=1e-5, atol=1e-5)
    # training forwards never use it
    with lowbit.cache_quantized_weights(model):
        model.train()
        model(x).sum().backward()
        assert model[0].weight.grad is not None
    with pytest.raises(TypeError, match="model"):
        with lowbit.cache_quantized_weights(42):
            pass


def test_quantize_swaps_skips_and_overrides(gen):
    model = tiny_mlp(gen)
    cfg = lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32), skip=("4",),
                           overrides={"2": lowbit.QuantSpec("nf", 4, 64)})
    out = lowbit.quantize_(model, cfg)
    assert out is model
    assert isinstance(model[0], QATLinear) and model[0].spec.name == "int2-g32-asym"
    assert isinstance(model[2], QATLinear) and model[2].spec.name == "nf4-g64"
    assert type(model[4]) is nn.Linear
    with pytest.raises(ValueError, match="already quantized"):
        lowbit.quantize_(model, cfg)


def test_quantize_bad_arguments(gen):
    with pytest.raises(TypeError, match="config"):
        lowbit.quantize_(tiny_mlp(gen), lowbit.QuantSpec())
    with pytest.raises(TypeError, match="model"):
        lowbit.quantize_("model", lowbit.QATConfig())
    with pytest.raises(TypeError, match="spec"):
        lowbit.QATConfig(spec="int4")
    with pytest.raises(ValueError, match="group_size"):
        lowbit.quantize_(nn.Sequential(nn.Linear(48, 8)), lowbit.QATConfig(lowbit.QuantSpec(group_size=32)))
    with pytest.raises(ValueError, match="indivisible"):
        lowbit.QATConfig(indivisible="round")
    m = lowbit.quantize_(nn.Sequential(nn.Linear(576, 8), nn.Linear(8, 1536), nn.Linear(1536, 4)),
                         lowbit.QATConfig(lowbit.QuantSpec(group_size=128), skip=(), indivisible="gcd"))
    assert [m[0].spec.group_size, m[1].spec.group_size, m[2].spec.group_size] == [64, 8, 128]


@pytest.mark.parametrize("kw,exc,match", [
    (dict(skip=None), TypeError, "skip: expected a tuple of name patterns"),
    (dict(skip=("lm_head", 3)), TypeError, "skip: expected a tuple of name patterns"),
    (dict(skip=42), TypeError, "skip"),
    (dict(overrides=None), TypeError, "overrides: expected a dict"),
    (dict(overrides=[("*", None)]), TypeError, "overrides: expected a dict"),
    (dict(overrides={1: None}), TypeError, "overrides: keys must be name patterns"),
    (dict(overrides={"*up": "int4"}), TypeError, r"overrides\['\*up'\]: expected a lowbit.QuantSpec"),
    (dict(spec=None), TypeError, "spec: expected a lowbit.QuantSpec"),
    (dict(ste=None), ValueError, "ste: must be one of"),
    (dict(ste=["identity"]), ValueError, "ste: must be one of"),
    (dict(indivisible=None), ValueError, "indivisible: must be"),
    (dict(indivisible=["gcd"]), ValueError, "indivisible: must be"),
])
def test_qatconfig_checks_every_field_at_construction(kw, exc, match):
    with pytest.raises(exc, match=match):
        lowbit.QATConfig(**kw)


def test_qatconfig_accepts_a_list_or_str_skip(gen):
    assert lowbit.QATConfig(skip=["lm_head", "*.v_proj"]).skip == ("lm_head", "*.v_proj")
    assert lowbit.QATConfig(skip="lm_head").skip == ("lm_head",)
    m = lowbit.quantize_(tiny_mlp(gen), lowbit.QATConfig(skip=["2"], spec=lowbit.QuantSpec(group_size=32)))
    assert type(m[2]) is nn.Linear and isinstance(m[0], QATLinear)


def test_convert_runs_the_registered_hooks_once_each(gen):
    from lowbit import qat

    seen = []

    def hook(model):
        seen.append(model)

    try:
        assert qat.on_converted(hook) is hook and qat.on_converted(hook) is hook
        m = lowbit.convert_(lowbit.quantize_(tiny_mlp(gen), lowbit.QATConfig(
            lowbit.QuantSpec(group_size=32), skip=())))
        assert seen == [m]
    finally:
        qat._CONVERTED_HOOKS.remove(hook)
    with pytest.raises(TypeError, match="hook: expected a callable"):
        qat.on_converted(3)


def test_quantize_llama_and_convert(gen):
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 16), generator=gen)
    cfg = lowbit.QATConfig(lowbit.QuantSpec("int", 3, 32))
    lowbit.quantize_(model, cfg)
    names = [n for n, m in model.named_modules() if isinstance(m, QATLinear)]
    assert len(names) == 2 * 7 and not any("lm_head" in n for n in names)
    with torch.no_grad():
        y_qat = model(ids).logits
    lowbit.convert_(model)
    assert not any(isinstance(m, QATLinear) for m in model.modules())
    with torch.no_grad():
        y_packed = model(ids).logits
    torch.testing.assert_close(y_packed, y_qat, rtol=1e-4, atol=1e-4)


def _clip_candidates(w, x, spec, n_grid=20, shrink=10):
    """Every candidate of the clipping search, brute force: per (i, j) the weight with each
    (row, group) clamped to [min*(1 - j/n_grid), max*(1 - i/n_grid)], and each group's output
    error on the tokens x scored directly in float64 (no Gram matrix). Returns (candidates
    (C, n, k), errors (C, n, G)); candidate 0 is the unclipped weight."""
    n, k = w.shape
    g = k if spec.group_size == -1 else spec.group_size
    G = k // g
    wg = w.reshape(n, G, g)
    xg = x.reshape(-1, G, g)
    cands, errs = [], []
    for i in range(shrink):
        for j in range(shrink):
            hi = wg.amax(-1, keepdim=True) * (1 - i / n_grid)
            lo = wg.amin(-1, keepdim=True) * (1 - j / n_grid)
            c = torch.minimum(torch.maximum(wg, lo), hi).reshape(n, k)
            q = ref_fake_quant(c, spec.format, spec.bits, spec.group_size, spec.symmetric,
                               scale_dtype=spec.scale_dtype)
            d = (q - w).reshape(n, G, g).double()
            cands.append(c)
            errs.append(torch.einsum("tgi,ngi->ntg", xg.double(), d).pow(2).sum(1))
    return torch.stack(cands), torch.stack(errs)


@pytest.mark.parametrize("fmt,bits,g", [("int", 2, 16), ("nf", 3, 16)])
def test_calibrate_clip_matches_brute_force(fmt, bits, g, gen):
    lin = nn.Linear(32, 12, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(12, 32, generator=gen) * 0.1)
    spec = lowbit.QuantSpec(fmt, bits, g)
    x = torch.randn(40, 32, generator=gen) * torch.linspace(0.2, 3.0, 32)
    cands, errs = _clip_candidates(lin.weight.detach(), x, spec)
    model = lowbit.quantize_(nn.Sequential(lin), lowbit.QATConfig(spec, skip=()))
    lowbit.calibrate_clip_(model, [x[:20], x[20:]], progress=False)
    got = model[0].weight.detach()
    # every group of the result is one of the candidates...
    C, G = cands.shape[0], 32 // g
    match = torch.isclose(cands, got, rtol=0, atol=1e-7).reshape(C, 12, G, g).all(-1)
    assert match.any(0).all(), "a group of the result is none of the search's candidates"
    # ...one with the least error: candidates whose errors tie within float32 round-off (the
    # search scores them on a float32 Gram matrix) may break either way, nothing worse
    got_err = torch.where(match, errs, torch.full_like(errs, float("inf"))).amin(0)
    best = errs.amin(0)
    assert torch.all(got_err <= best * (1 + 1e-4) + 1e-9 * errs[0].max()), (got_err, best)
    assert torch.all(got_err <= errs[0] * (1 + 1e-6)), "worse than not clipping"


@pytest.mark.parametrize("kw,exc,match", [
    (dict(n_grid=5, max_shrink=10), ValueError, r"max_shrink: must be in \[1, 5\], got 10"),
    (dict(max_shrink=0), ValueError, r"max_shrink: must be in \[1, 20\], got 0"),
    (dict(n_grid=0), ValueError, "n_grid: must be >= 1, got 0"),
    (dict(n_grid=2.5), TypeError, "n_grid: expected an int"),
    (dict(max_shrink="3"), TypeError, "max_shrink: expected an int"),
    (dict(max_tokens=0), ValueError, "max_tokens: must be"),
])
def test_calibrate_clip_bad_arguments_name_the_python_argument(kw, exc, match, gen):
    model = lowbit.quantize_(tiny_mlp(gen), lowbit.QATConfig(lowbit.QuantSpec(group_size=32), skip=()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.register_forward_pre_hook(lambda mod, args: calls.append(1))
    with pytest.raises(exc, match=match):
        lowbit.calibrate_clip_(model, [torch.randn(4, 64, generator=gen)], progress=False, **kw)
    assert not calls, "the calibration batches ran before the arguments were checked"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("fmt,bits,sd,mag", [("nf", 3, "float16", 1e-7), ("int", 3, "bfloat16", 0.1)])
def test_clip_search_scores_on_the_rounded_grid(fmt, bits, sd, mag, gen):
    """calibrate_clip_'s search with scale_dtype (FORMATS.md 1.6), the C op and its torch twin:
    each group's pick is a least-error candidate of the brute force on the rounded grid. With
    nf3 weights of ~1e-7 the float16 scales are subnormal (steps of 2^-24, tens of percent of
    the scale), so the float32 grid's best pair is clearly worse on the rounded grid in some
    groups: a search that ignored scale_dtype would fail here."""
    from lowbit.clip_search import group_gram, search_clip, search_clip_torch

    n, k, g = 24, 64, 16
    G = k // g
    w = torch.randn(n, k, generator=gen) * mag
    x = torch.randn(48, k, generator=gen) * torch.linspace(0.2, 3.0, k)
    spec = lowbit.QuantSpec(fmt, bits, g, scale_dtype=sd)
    cands, errs = _clip_candidates(w, x, spec)
    C = cands.shape[0]
    best = errs.amin(0)
    for search in (search_clip, search_clip_torch):
        lo, hi = search(w, spec, group_gram(x, g))
        got = torch.minimum(torch.maximum(w.reshape(n, G, g), lo), hi).reshape(n, k)
        match = torch.isclose(cands, got, rtol=1e-6, atol=0).reshape(C, n, G, g).all(-1)
        assert match.any(0).all(), f"{search.__name__}: a group is none of the candidates"
        got_err = torch.where(match, errs, torch.full_like(errs, float("inf"))).amin(0)
        assert torch.all(got_err <= best * (1 + 1e-4) + 1e-9 * errs[0].max()), search.__name__
    if sd == "float16":
        _, errs32 = _clip_candidates(w, x, lowbit.QuantSpec(fmt, bits, g))
        pick32 = errs32.argmin(0, keepdim=True)  # the float32 grid's choice, scored on float16's
        worse = errs.gather(0, pick32).squeeze(0) > best * 1.01 + 1e-9 * errs[0].max()
        assert worse.any(), "the float32 grid's choices are as good: the case tests nothing"


def _lm_batches(gen, n=3):
    return [torch.randint(0, 97, (2, 16), generator=gen) for _ in range(n)]


def _two_rate_adamw(student, head_lr=1e-2, body_lr=1e-5):
    """AdamW with the (unquantized, smooth) lm_head at head_lr and every other trainable
    parameter (the QAT layers, embeddings, norms) at body_lr."""
    head = [p for n, p in student.named_parameters() if p.requires_grad and n.startswith("lm_head")]
    body = [p for n, p in student.named_parameters() if p.requires_grad and not n.startswith("lm_head")]
    return torch.optim.AdamW([{"params": head, "lr": head_lr}, {"params": body, "lr": body_lr}],
                             weight_decay=0.0)


def test_distill_trainer_reduces_loss_and_resumes(gen, tmp_path):
    """The trainer's loss is CAKLD of FORMATS.md 2 (checked against tests/reference_kl.py), every
    QAT layer is updated, the loss falls, and fit resumes from its checkpoint.

    "The loss falls" must not be noise: a student that is a quantized copy of its teacher starts
    near 0 (a random tiny Llama is nearly uniform), so the teacher's head is sharpened x10 here:
    the student starts about 0.9 nats away along a smooth direction (its own lm_head, not
    quantized, trained at lr 1e-2; the QAT layers at 1e-5), and 12 steps take the loss to
    about 0.17 of its start whatever the seed; the test asks for < 0.5."""
    from reference_kl import ref_gamma, ref_loss

    model = tiny_llama()
    student, teacher = lowbit.distill.prepare(model, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32)),
                                              calibration_batches=_lm_batches(gen, 1),
                                              progress=False)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not set(map(id, teacher.parameters())) & set(map(id, student.parameters()))
    with torch.no_grad():
        teacher.lm_head.weight.mul_(10.0)
    batches = _lm_batches(gen)
    tr = lowbit.distill.DistillTrainer(student, teacher, kind="cakld", gamma="auto",
                                       optimizer=_two_rate_adamw(student))
    b = batches[0]
    first = tr.loss(b).item()  # gamma="auto": estimated from this batch
    with torch.no_grad():
        s, t = student(b).logits[:, :-1], teacher(b).logits[:, :-1]
    gamma = ref_gamma(t, b[:, 1:])
    assert tr.gamma == pytest.approx(gamma, rel=1e-5, abs=1e-7)
    expected = ref_loss(s.double(), t.double(), "cakld", gamma=gamma, labels=b[:, 1:]).item()
    assert first == pytest.approx(expected, rel=1e-5)
    assert first > 0.2, "setup: the sharpened teacher must start the student well away from it"
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    hist = tr.fit(batches, steps=12, eval_batches=batches[:1], out_dir=str(tmp_path),
                  progress=False)
    assert len(hist) == 12 and [r["step"] for r in hist] == list(range(1, 13))
    assert tr.loss(b).item() < 0.5 * first
    for name, m in student.named_modules():
        if isinstance(m, QATLinear):
            assert not torch.equal(m.weight, before[name + ".weight"]), f"{name} was not trained"
    assert (tmp_path / "log.csv").exists() and (tmp_path / "checkpoint.pt").exists()
    # resume: a fresh trainer (same optimizer layout) continues from step 12
    tr2 = lowbit.distill.DistillTrainer(student, teacher, optimizer=_two_rate_adamw(student))
    tr2.fit(batches, steps=14, out_dir=str(tmp_path), progress=False)
    assert tr2.step_count == 14 and len(tr2.history) == 14


def test_perplexity_matches_cross_entropy(gen):
    model = tiny_llama()
    b = _lm_batches(gen, 2)
    with torch.no_grad():
        losses = [F.cross_entropy(model(x).logits[:, :-1].reshape(-1, 97), x[:, 1:].reshape(-1))
                  for x in b]
    expected = torch.exp(torch.stack(losses).mean()).item()
    assert lowbit.distill.perplexity(model, b) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_save_load_quantized_roundtrip_onto_from_config(tied, gen, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(cfg).eval()
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("nf", 3, 32),
                                             overrides={"*mlp.down_proj": lowbit.QuantSpec("int", 2, 64)}))
    lowbit.convert_(model)
    ids = torch.randint(0, 97, (2, 12), generator=gen)
    with torch.no_grad():
        ref = model(ids).logits
    lowbit.save_quantized(model, str(tmp_path))
    skeleton = transformers.LlamaForCausalLM(cfg)   # fresh random weights
    back = lowbit.load_quantized(skeleton, str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ref)
    assert back.model.layers[0].mlp.down_proj.spec.name == "int2-g64-asym"
    assert (back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()) == tied
    with pytest.raises(ValueError, match="model"):
        lowbit.save_quantized(nn.Sequential(nn.Linear(4, 4)), str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="directory"):
        lowbit.load_quantized(transformers.LlamaForCausalLM(cfg), str(tmp_path / "nothing"))


# ---- QATConfig(learn="clip"): LearnedClip, against plain-PyTorch autograd of its docstring ----

def _ref_clip(w, a_hi, a_lo, block):
    """LearnedClip's rule written independently: the factor's min as s - relu(s - 1).detach()
    (identity gradient), the clamp as masks (an element in [lo, hi] keeps its gradient, a clipped
    one passes it to its bound)."""
    n, k = w.shape
    wg = w.reshape(n, k // block, block)
    def f(a):
        s = 1.25 * torch.sigmoid(a)
        return (s - torch.relu(s - 1).detach()).unsqueeze(-1)
    hi = f(a_hi) * wg.amax(-1, keepdim=True)
    lo = f(a_lo) * wg.amin(-1, keepdim=True)
    above, below = (wg > hi).float(), (wg < lo).float()
    return (wg * (1 - above - below) + hi * above + lo * below).reshape(n, k)


@pytest.mark.parametrize("fmt,bits,g,sym", [("int", 2, 32, False), ("int", 3, 64, True),
                                            ("nf", 3, 32, False), ("fp", 4, -1, True)])
@pytest.mark.parametrize("ste", ["bitdistiller", "identity"])
def test_learned_clip_forward_backward_matches_plain_autograd(fmt, bits, g, sym, ste, gen):
    spec = lowbit.QuantSpec(fmt, bits, g, sym)
    lin = nn.Linear(128, 24)
    m = lowbit.quantize_(nn.Sequential(copy.deepcopy(lin)),
                         lowbit.QATConfig(spec, skip=(), ste=ste, learn="clip"))[0]
    clip = lowbit.qat.learned_clip(m)
    G = 128 // (128 if g == -1 else g)
    assert clip.hi_logit.shape == (24, G) and clip.block == (128 if g == -1 else g)
    with torch.no_grad():  # factors from 0.55 to 1 (about a third exactly 1)
        clip.hi_logit.copy_(torch.empty(24, G).uniform_(-0.8, 2.5, generator=gen))
        clip.lo_logit.copy_(torch.empty(24, G).uniform_(-0.8, 2.5, generator=gen))
    w = lin.weight.detach().clone().requires_grad_(True)
    a_hi = clip.hi_logit.detach().clone().requires_grad_(True)
    a_lo = clip.lo_logit.detach().clone().requires_grad_(True)
    x = torch.randn(6, 128, generator=gen)
    y = m(x)
    wq = ref_fake_quant(_ref_clip(w, a_hi, a_lo, clip.block), fmt, bits, g, sym, ste)
    y_ref = F.linear(x, wq, lin.bias.detach())
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    up = torch.randn(y.shape, generator=gen)
    y.backward(up)
    y_ref.backward(up)
    raw = lowbit.qat.raw_weight(m)
    torch.testing.assert_close(raw.grad, w.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clip.hi_logit.grad, a_hi.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clip.lo_logit.grad, a_lo.grad, rtol=1e-4, atol=1e-5)
    assert clip.hi_logit.grad.abs().sum() > 0 and clip.lo_logit.grad.abs().sum() > 0


def test_learned_clip_starts_from_calibrate_clip(gen):
    lin = nn.Linear(64, 16, bias=False)
    x = torch.randn(256, 64, generator=gen) * torch.linspace(0.2, 3, 64)
    spec = lowbit.QuantSpec("int", 2, 16)
    plain = lowbit.quantize_(nn.Sequential(copy.deepcopy(lin)), lowbit.QATConfig(spec, skip=()))
    learn = lowbit.quantize_(nn.Sequential(copy.deepcopy(lin)),
                             lowbit.QATConfig(spec, skip=(), learn="clip"))
    assert torch.equal(learn[0].weight, lin.weight)  # factors start at exactly 1
    lowbit.calibrate_clip_(plain, [x], progress=False)
    lowbit.calibrate_clip_(learn, [x], progress=False)
    # the raw weight is kept; the clipped weight is calibrate_clip_'s (f = hi / max to ~1 ulp)
    assert torch.equal(lowbit.qat.raw_weight(learn[0]), lin.weight)
    torch.testing.assert_close(learn[0].weight, plain[0].weight, rtol=1e-6, atol=1e-7)
    assert not torch.equal(plain[0].weight, lin.weight), "setup: the search must clip"


def test_learned_clip_survives_convert_state_dict_and_export(gen):
    model = tiny_llama()
    cfg = lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32), learn="clip")
    lowbit.quantize_(model, cfg)
    layers = [m for m in model.modules() if isinstance(m, QATLinear)]
    with torch.no_grad():
        for m in layers:
            c = lowbit.qat.learned_clip(m)
            c.hi_logit.uniform_(-0.5, 2.0, generator=gen)
            c.lo_logit.uniform_(-0.5, 2.0, generator=gen)
    ids = torch.randint(0, 97, (2, 12), generator=gen)
    with torch.no_grad():
        ref = model(ids).logits
        wq = [m.quantized_weight().clone() for m in layers]
    # a fresh skeleton with the same config loads the QAT state (raw weights + logits)
    back = lowbit.quantize_(tiny_llama(seed=1), cfg)
    back.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ref)
    # every export reads the layers through collect(): the QAT model's grid is the trained one
    from lowbit.export._common import collect
    before = collect(model)
    lowbit.convert_(model)
    packed = [m for m in model.modules() if isinstance(m, lowbit.nn.QuantLinear)]
    for p, q in zip(packed, wq):
        assert torch.equal(lowbit.dequantize(p.qweight).float(), q)
    for a, b in zip(before, collect(model)):
        assert a.name == b.name and torch.equal(a.q, b.q) and torch.equal(a.scales, b.scales)
        assert torch.equal(a.zeros, b.zeros)


def test_learned_clip_trainer_group_and_bad_arguments(gen):
    model = tiny_llama()
    student, teacher = lowbit.distill.prepare(
        model, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32), learn="clip"),
        calibration_batches=_lm_batches(gen, 1), progress=False)
    tr = lowbit.distill.DistillTrainer(student, teacher, lr=1e-5, clip_lr=3e-3)
    groups = tr.optimizer.param_groups
    clip = lowbit.qat.clip_parameters(student)
    assert len(clip) == 2 * 14 and [g["lr"] for g in groups] == [1e-5, 3e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in clip}
    before = [p.detach().clone() for p in clip]
    tr.step(_lm_batches(gen, 1)[0])
    assert all(not torch.equal(p, q) for p, q in zip(clip, before))
    with pytest.raises(ValueError, match="clip_lr"):
        lowbit.distill.DistillTrainer(student, teacher, clip_lr=-1)
    with pytest.raises(ValueError, match="learn"):
        lowbit.QATConfig(learn="scales")
    with pytest.raises(ValueError, match="already has a learned clip"):
        lowbit.qat.add_learned_clip(next(m for m in student.modules() if isinstance(m, QATLinear)))


@pytest.mark.parametrize("fmt,sub", [("q2_k", 16), ("q4_k", 32), ("q6_k", 16), ("q4_0", 32)])
@pytest.mark.parametrize("ste", ["bitdistiller", "identity"])
def test_learned_clip_on_llama_cpp_block_types(fmt, sub, ste, gen):
    """The llama.cpp block types (FORMATS.md 1.8): one pair of clipping factors per sub-block
    (the k types' S_j / M_j; a plain block type's block), forward and backward against the
    independent clip rule followed by tests/reference_ggml's fake-quant; then calibrate_clip_
    sets the factors to the per-sub-block search's bounds."""
    import reference_ggml as RG
    spec = lowbit.QuantSpec(fmt)
    lin = nn.Linear(512, 8, bias=False)
    m = lowbit.quantize_(nn.Sequential(copy.deepcopy(lin)),
                         lowbit.QATConfig(spec, skip=(), ste=ste, learn="clip"))[0]
    clip = lowbit.qat.learned_clip(m)
    assert clip.block == sub and clip.hi_logit.shape == (8, 512 // sub)
    with torch.no_grad():
        clip.hi_logit.copy_(torch.empty(clip.hi_logit.shape).uniform_(-0.8, 2.5, generator=gen))
        clip.lo_logit.copy_(torch.empty(clip.lo_logit.shape).uniform_(-0.8, 2.5, generator=gen))
    w = lin.weight.detach().clone().requires_grad_(True)
    a_hi = clip.hi_logit.detach().clone().requires_grad_(True)
    a_lo = clip.lo_logit.detach().clone().requires_grad_(True)
    x = torch.randn(5, 512, generator=gen)
    y = m(x)
    y_ref = F.linear(x, RG.fake_quant(_ref_clip(w, a_hi, a_lo, sub), fmt, ste))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    up = torch.randn(y.shape, generator=gen)
    y.backward(up)
    y_ref.backward(up)
    torch.testing.assert_close(lowbit.qat.raw_weight(m).grad, w.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clip.hi_logit.grad, a_hi.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(clip.lo_logit.grad, a_lo.grad, rtol=1e-4, atol=1e-4)
    # calibrate_clip_ on the learnable layer lands where it lands on the plain one
    xc = torch.randn(128, 512, generator=gen) * torch.linspace(0.2, 3, 512)
    plain = lowbit.quantize_(nn.Sequential(copy.deepcopy(lin)), lowbit.QATConfig(spec, skip=()))
    learn = lowbit.quantize_(nn.Sequential(copy.deepcopy(lin)),
                             lowbit.QATConfig(spec, skip=(), learn="clip"))
    lowbit.calibrate_clip_(plain, [xc], progress=False, n_grid=10, max_shrink=5)
    lowbit.calibrate_clip_(learn, [xc], progress=False, n_grid=10, max_shrink=5)
    torch.testing.assert_close(learn[0].weight, plain[0].weight, rtol=1e-6, atol=1e-7)
