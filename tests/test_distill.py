"""lowbit.distill: teacher-generated data (against a hand-written greedy decoder, determinism,
the safetensors cache and its key), padded batches in the trainer (against a per-sequence float64
reference), the fused LM head against the materialised path, LR schedules and their resume, and
the fused loss's in-chunk sub-blocks. Tiny Llama models built from a config, a character-level
tokenizer built in memory: no downloads."""
import copy
import csv
import math

import pytest
import torch
import torch.nn.functional as F

lowbit = pytest.importorskip("lowbit")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
from lowbit import distill  # noqa: E402

V = 97


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>",
                                                eos_token="</s>")


def tiny_llama(seed, tied=False, hidden=64, layers=2):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=layers, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=tied, eos_token_id=1, pad_token_id=0,
                                   bos_token_id=None)
    m = transformers.LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id = 1
    m.generation_config.pad_token_id = 0
    return m


PROMPTS = ["The quick brown fox", "In the beginning", "A", "lowbit trains 2-bit models!",
           "Hello", "xyz xyz"]


def _greedy(model, ids, n, eos):
    """Greedy decoding by hand: the full sequence through the model at every step, no cache,
    no padding, one prompt at a time."""
    ids = list(ids)
    for _ in range(n):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(nxt)
        if nxt == eos:
            break
    return ids


def _rows_of(batches):
    """The unpadded sequences of training batches, in order."""
    out = []
    for b in batches:
        for ids, m in zip(b["input_ids"], b["attention_mask"]):
            out.append(ids[m.bool()].tolist())
    return out


# ---------------------------------------------------------------------------------------------
# generate_data
# ---------------------------------------------------------------------------------------------
def test_generate_data_matches_greedy_reference():
    """top_p -> 0 keeps only the most probable token: sampling becomes greedy decoding, whatever
    the RNG, so left padding, attention masks, the KV cache and EOS handling are checked against
    a plain loop."""
    model, tok = tiny_llama(1), char_tokenizer()
    with torch.no_grad():  # make EOS likely so some rows stop early
        model.lm_head.weight[1] *= 0.0
        model.lm_head.weight[1] += model.lm_head.weight[5:9].mean(0) * 3
    batches = distill.generate_data(model, tok, PROMPTS, max_new_tokens=12, top_p=1e-9,
                                    batch_size=4, progress=False)
    got = _rows_of(batches)
    expected = [_greedy(model, tok(p).input_ids, 12, eos=1) for p in PROMPTS]
    assert got == expected
    assert any(len(s) < len(tok(p).input_ids) + 12 for s, p in zip(got, PROMPTS))  # EOS hit
    for b in batches:
        ids, m, lab = b["input_ids"], b["attention_mask"], b["labels"]
        assert ids.shape == m.shape == lab.shape and ids.dtype == torch.long
        assert torch.equal(lab, ids.masked_fill(m == 0, -100))
        # right padding: every row's mask is ones then zeros
        assert torch.equal(m, m.sort(dim=1, descending=True).values)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 2]


def test_generate_data_deterministic_and_leaves_rng_alone():
    model, tok = tiny_llama(2), char_tokenizer()
    kw = dict(max_new_tokens=10, batch_size=3, progress=False)
    state = torch.get_rng_state()
    a = distill.generate_data(model, tok, PROMPTS, seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b = distill.generate_data(model, tok, PROMPTS, seed=5, **kw)
    c = distill.generate_data(model, tok, PROMPTS, seed=6, **kw)
    assert _rows_of(a) == _rows_of(b)
    assert _rows_of(a) != _rows_of(c)
    # every sequence starts with its prompt
    for s, p in zip(_rows_of(a), PROMPTS):
        assert s[:len(tok(p).input_ids)] == tok(p).input_ids


def test_generate_data_train_batch_size_and_prompts_from_text():
    model, tok = tiny_llama(3), char_tokenizer()
    paras = [("para %d " % i) * 80 for i in range(7)] + ["short one"]
    text = "\n\n".join(paras)
    prompts = distill.prompts_from_text(text, prompt_chars=20)
    assert prompts == [p[:20] for p in paras[:7]]
    pick = distill.prompts_from_text(text, n=3, prompt_chars=20, seed=1)
    assert len(pick) == 3 and set(pick) <= set(prompts)
    assert pick == distill.prompts_from_text(text, n=3, prompt_chars=20, seed=1)
    out = distill.generate_data(model, tok, text, num_prompts=5, prompt_chars=20,
                                max_new_tokens=4, batch_size=4, train_batch_size=2,
                                progress=False)
    assert [b["input_ids"].shape[0] for b in out] == [2, 2, 1]
    with pytest.raises(ValueError, match="min_chars"):
        distill.prompts_from_text("tiny text", min_chars=0)
    with pytest.raises(ValueError, match="text"):
        distill.prompts_from_text("no long paragraph here")


def test_generate_data_cache_reloads_and_key_detects_changes(tmp_path, monkeypatch):
    model, tok = tiny_llama(4), char_tokenizer()
    path = str(tmp_path / "gen.safetensors")
    kw = dict(max_new_tokens=6, batch_size=4, seed=0, out=path, progress=False)
    first = distill.generate_data(model, tok, PROMPTS, **kw)
    calls = []
    real = type(model).generate

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(type(model), "generate", counting)
    again = distill.generate_data(model, tok, PROMPTS, **kw)
    assert not calls
    for x, y in zip(first, again):
        for k in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(x[k], y[k])
    # anything that changes the data changes the key: each of these regenerates
    changes = [dict(seed=1), dict(temperature=0.9), dict(top_p=0.5), dict(max_new_tokens=5),
               dict(batch_size=2)]
    for ch in changes:
        n = len(calls)
        distill.generate_data(model, tok, PROMPTS, **{**kw, **ch})
        assert len(calls) > n, ch
    n = len(calls)
    distill.generate_data(model, tok, PROMPTS[:-1], **kw)
    assert len(calls) > n
    n = len(calls)
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-3  # same config, different weights
    distill.generate_data(model, tok, PROMPTS, **kw)
    assert len(calls) > n
    # a damaged file is regenerated, not trusted
    with open(path, "wb") as f:
        f.write(b"not a safetensors file")
    n = len(calls)
    distill.generate_data(model, tok, PROMPTS, **kw)
    assert len(calls) > n


def test_generate_data_bad_arguments():
    model, tok = tiny_llama(5), char_tokenizer()
    for kw, name in [(dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=0.0), "temperature"),
                     (dict(temperature=float("nan")), "temperature"), (dict(top_p=1.5), "top_p"),
                     (dict(top_p=0), "top_p"), (dict(batch_size=0), "batch_size"),
                     (dict(train_batch_size=-1), "train_batch_size")]:
        with pytest.raises(ValueError, match=name):
            distill.generate_data(model, tok, PROMPTS, progress=False, **kw)
    with pytest.raises(TypeError, match="seed"):
        distill.generate_data(model, tok, PROMPTS, seed=1.5, progress=False)
    with pytest.raises(ValueError, match="prompts"):
        distill.generate_data(model, tok, [], progress=False)
    with pytest.raises(ValueError, match="prompts"):
        distill.generate_data(model, tok, ["ok", ""], progress=False)
    with pytest.raises(TypeError, match="teacher"):
        distill.generate_data(torch.nn.Linear(2, 2), tok, PROMPTS, progress=False)
    for out in (123, 1.5, ["gen.safetensors"]):
        with pytest.raises(TypeError, match="out: expected None or a .safetensors file path"):
            distill.generate_data(model, tok, PROMPTS, out=out, progress=False)


def test_generate_data_out_directory_is_refused_before_generating(tmp_path, monkeypatch):
    model, tok = tiny_llama(5), char_tokenizer()
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("generated anyway"))
    with pytest.raises(ValueError, match="out: .* is a directory"):
        distill.generate_data(model, tok, PROMPTS, out=tmp_path, progress=False)


def test_trainer_bad_batches_name_the_batch(gen):
    student, teacher = _pair(16)
    tr = distill.DistillTrainer(student, teacher, gamma=0.5)
    ids = torch.randint(2, V, (2, 8), generator=gen)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    for batch, exc, match in [
            ({"attention_mask": torch.ones(2, 8)}, ValueError, "batch: a dict batch needs 'input_ids'"),
            ({"labels": ids}, ValueError, "batch: a dict batch needs 'input_ids'"),
            ("some text", TypeError, "batch: expected a tensor of token ids or a dict"),
            ([[1, 2, 3]], TypeError, "batch: expected a tensor of token ids or a dict"),
            (ids.float(), ValueError, "batch: expected a 2-D integer tensor"),
            (ids[0], ValueError, "batch: expected a 2-D integer tensor .* got a 1-D"),
            ({"input_ids": ids.tolist()}, ValueError, r"batch\['input_ids'\]: expected a 2-D integer"),
            ({"input_ids": ids, "attention_mask": torch.ones(2, 7, dtype=torch.long)}, ValueError,
             r"batch: attention_mask \(2, 7\) does not match input_ids \(2, 8\)"),
            ({"input_ids": ids, "labels": ids[:, :5]}, ValueError,
             r"batch: labels \(2, 5\) does not match input_ids"),
    ]:
        with pytest.raises(exc, match=match):
            tr.step(batch)
    assert tr.step_count == 0
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    with pytest.raises(ValueError, match="batch: a dict batch needs 'input_ids'"):
        distill.perplexity(student, [{"labels": ids}])


# ---------------------------------------------------------------------------------------------
# padded batches in the trainer: a per-sequence float64 reference
# ---------------------------------------------------------------------------------------------
def _ref_cakld_rows(s, t, gamma):
    lq, lp = F.log_softmax(s.double(), -1), F.log_softmax(t.double(), -1)
    fkl = (lp.exp() * (lp - lq)).sum(-1)
    rkl = (lq.exp() * (lq - lp)).sum(-1)
    return gamma * rkl + (1 - gamma) * fkl


def _pair(seed, tied=False, quant_head=False):
    teacher = tiny_llama(seed, tied=tied)
    student = copy.deepcopy(teacher)
    skip = () if quant_head else ("lm_head",)
    lowbit.quantize_(student, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32), skip=skip))
    return student.train(), teacher.requires_grad_(False)


def _padded_batch(gen, lengths=(16, 9, 12)):
    seqs = [torch.randint(2, V, (n,), generator=gen).tolist() for n in lengths]
    return distill.pad_batches(seqs, len(seqs), pad_id=0)[0], seqs


@pytest.mark.parametrize("fused", [False, True])
def test_trainer_padded_batch_matches_per_sequence_reference(fused, gen):
    student, teacher = _pair(11)
    batch, seqs = _padded_batch(gen)
    tr = distill.DistillTrainer(student, teacher, kind="cakld", gamma="auto", fused_head=fused)
    loss = tr.loss(batch)
    loss.backward()
    got_grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    # reference: each sequence alone (no padding), CAKLD in float64, mean over every position
    conf, rows, s_rows = [], [], []
    student.zero_grad(set_to_none=True)
    for sq in seqs:
        x = torch.tensor([sq])
        with torch.no_grad():
            t = teacher(x).logits[0, :-1]
        conf.append(F.softmax(t.double(), -1).gather(1, x[0, 1:, None]).squeeze(1))
        s_rows.append((student(x).logits[0, :-1], t))
    gamma = torch.cat(conf).mean().item()
    assert tr.gamma == pytest.approx(gamma, rel=1e-6, abs=1e-9)
    for s, t in s_rows:
        rows.append(_ref_cakld_rows(s, t, gamma))
    ref = torch.cat(rows).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    ref.backward()
    for n, p in student.named_parameters():
        torch.testing.assert_close(got_grads[n], p.grad.to(got_grads[n].dtype), rtol=1e-4,
                                   atol=1e-6, msg=n)


def test_trainer_padding_contents_contribute_nothing(gen):
    student, teacher = _pair(12)
    batch, _ = _padded_batch(gen)
    other = {k: v.clone() for k, v in batch.items()}
    pads = other["attention_mask"] == 0
    other["input_ids"][pads] = torch.randint(2, V, (int(pads.sum()),), generator=gen)
    tr = distill.DistillTrainer(student, teacher, gamma=0.4)
    a = tr.loss(batch)
    a.backward()
    ga = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    b = tr.loss(other)
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    for x, p in zip(ga, student.parameters()):
        torch.testing.assert_close(x, p.grad, rtol=1e-5, atol=1e-7)
    # the labels' own ignore_index masks positions too
    lab = batch["labels"].clone()
    lab[0, 3:6] = -100
    masked = dict(batch, labels=lab)
    lab_rows = distill.batches.next_token_labels(masked, -100)
    assert (lab_rows[0, 2:5] == -100).all() and (lab_rows[0, :2] != -100).all()


# ---------------------------------------------------------------------------------------------
# the fused LM head
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["untied", "tied", "quantized_head", "other_teacher"])
@pytest.mark.parametrize("kind", ["cakld", "jsd"])
def test_fused_head_equals_materialised(case, kind, gen):
    student, teacher = _pair(13, tied=(case == "tied"), quant_head=(case == "quantized_head"))
    if case == "other_teacher":  # a different model (hidden 48, its own head), same vocabulary
        teacher = tiny_llama(14, hidden=48).requires_grad_(False)
    if case == "quantized_head":
        assert isinstance(student.lm_head, lowbit.nn.QATLinear)
    batch, _ = _padded_batch(gen, (14, 10))
    grads, losses = [], []
    for fused in (False, True):
        student.zero_grad(set_to_none=True)
        tr = distill.DistillTrainer(student, teacher, kind=kind, gamma=0.3, fused_head=fused)
        loss = tr.loss(batch)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in student.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_fused_head_refuses_models_it_cannot_serve(gen):
    student, teacher = _pair(15)
    with pytest.raises(ValueError, match="fused_head"):
        distill.DistillTrainer(torch.nn.Linear(4, 4), teacher, gamma=0.5, fused_head=True)

    class Scaled(transformers.LlamaForCausalLM):  # logits scaled after the head
        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            out.logits = out.logits * 0.5
            return out

    odd = Scaled(teacher.config).eval().requires_grad_(False)
    batch, _ = _padded_batch(gen, (8, 8))
    tr = distill.DistillTrainer(student, odd, gamma=0.5, fused_head=True)
    with pytest.raises(ValueError, match="lm_head"):
        tr.loss(batch)


@pytest.mark.parametrize("n,chunk", [(100, 37), (70, None), (33, 16)])
def test_fused_linear_sub_blocks_match_materialised(n, chunk, gen):
    """Chunks wider than the kernel's sub-block (16 rows) reuse their logits' memory for the
    gradient; the result must not depend on it."""
    h = torch.randn(n, 24, generator=gen, requires_grad=True)
    w = (torch.randn(V, 24, generator=gen) * 0.3).requires_grad_(True)
    b = (torch.randn(V, generator=gen) * 0.1).requires_grad_(True)
    th, tw = torch.randn(n, 20, generator=gen), torch.randn(V, 20, generator=gen) * 0.3
    lab = torch.randint(0, V, (n,), generator=gen)
    lab[::5] = -100
    out = lowbit.fused_linear_kl_loss(h, w, teacher_hidden=th, teacher_weight=tw, student_bias=b,
                                      kind="cakld", gamma=0.6, labels=lab, chunk_size=chunk)
    out.backward()
    got = (out.item(), h.grad.clone(), w.grad.clone(), b.grad.clone())
    h.grad = w.grad = b.grad = None
    rows = _ref_cakld_rows(F.linear(h, w, b), th @ tw.t(), 0.6)
    keep = lab != -100
    ref = rows[keep].mean()
    ref.backward()
    assert got[0] == pytest.approx(ref.item(), rel=1e-5)
    for x, r in zip(got[1:], (h.grad, w.grad, b.grad)):
        torch.testing.assert_close(x, r.float(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
def _lrs(tr, n, batch):
    out = []
    for _ in range(n):
        tr.step(batch)
        out.append(tr.last_lr)
    return out


def test_schedules_match_torch_and_formula(gen):
    student, teacher = _pair(16)
    batch = torch.randint(0, V, (2, 8), generator=gen)
    base = 1e-3
    tr = distill.DistillTrainer(student, teacher, lr=base, gamma=0.5, scheduler="cosine",
                                total_steps=7)
    got = _lrs(tr, 7, batch)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7, eta_min=0.0)
    ref = []
    for _ in range(7):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        ref_sched.step()
    assert got == pytest.approx(ref, rel=1e-9)
    tr = distill.DistillTrainer(student, teacher, lr=base, gamma=0.5, scheduler="constant",
                                warmup_steps=4)
    assert _lrs(tr, 6, batch) == pytest.approx([base / 4, base / 2, 3 * base / 4, base, base, base])
    tr = distill.DistillTrainer(student, teacher, lr=base, gamma=0.5, scheduler="cosine",
                                warmup_steps=2, total_steps=6)
    expected = [base / 2, base] + [base * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (0, 1, 2)]
    assert _lrs(tr, 5, batch) == pytest.approx(expected, rel=1e-9)
    # any torch scheduler over the trainer's optimizer
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=base)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    tr = distill.DistillTrainer(student, teacher, gamma=0.5, optimizer=opt, scheduler=sched)
    assert _lrs(tr, 5, batch) == pytest.approx([base, base, base / 2, base / 2, base / 4])


def test_schedule_bad_arguments(gen):
    student, teacher = _pair(17)
    with pytest.raises(ValueError, match="scheduler"):
        distill.DistillTrainer(student, teacher, gamma=0.5, scheduler="linear")
    with pytest.raises(TypeError, match="scheduler"):
        distill.DistillTrainer(student, teacher, gamma=0.5, scheduler=3)
    with pytest.raises(ValueError, match="warmup_steps"):
        distill.DistillTrainer(student, teacher, gamma=0.5, warmup_steps=-1)
    other = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="scheduler"):
        distill.DistillTrainer(student, teacher, gamma=0.5,
                               scheduler=torch.optim.lr_scheduler.StepLR(other, 1))
    tr = distill.DistillTrainer(student, teacher, gamma=0.5, scheduler="cosine")
    with pytest.raises(ValueError, match="total_steps"):
        tr.step(torch.randint(0, V, (1, 6), generator=gen))
    with pytest.raises(ValueError, match="kind"):
        distill.DistillTrainer(student, teacher, kind="kl")


def test_resume_keeps_schedule_and_matches_uninterrupted_run(gen, tmp_path):
    student0, teacher = _pair(18)
    batches = [torch.randint(0, V, (2, 10), generator=gen) for _ in range(3)]
    kw = dict(lr=1e-3, gamma="auto", scheduler="cosine", warmup_steps=2, total_steps=6)

    straight = copy.deepcopy(student0)
    tr = distill.DistillTrainer(straight, teacher, **kw)
    tr.fit(batches, steps=6, out_dir=str(tmp_path / "a"), progress=False)

    resumed = copy.deepcopy(student0)
    tr1 = distill.DistillTrainer(resumed, teacher, **kw)
    tr1.fit(batches, steps=3, out_dir=str(tmp_path / "b"), progress=False)  # "interrupted"
    fresh = copy.deepcopy(student0)  # a new process: new model, optimizer and scheduler
    tr2 = distill.DistillTrainer(fresh, teacher, **kw)
    tr2.fit(batches, steps=6, out_dir=str(tmp_path / "b"), progress=False)

    assert [r["lr"] for r in tr2.history] == pytest.approx([r["lr"] for r in tr.history])
    assert tr2.scheduler.last_epoch == 6
    for (n, a), b in zip(straight.named_parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    with open(tmp_path / "b" / "log.csv") as f:
        logged = [float(r["lr"]) for r in csv.DictReader(f)]
    assert logged == pytest.approx([r["lr"] for r in tr.history])


@pytest.mark.parametrize("fused", [False, True])
def test_cache_teacher_reuses_only_unchanged_batches(fused, gen):
    student, teacher = _pair(19)
    calls = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    batches = [_padded_batch(gen, (9, 7))[0] for _ in range(2)]
    plain = distill.DistillTrainer(student, teacher, gamma=0.4, fused_head=fused)
    cached = distill.DistillTrainer(student, teacher, gamma=0.4, fused_head=fused,
                                    cache_teacher=True)
    ref = [plain.loss(b).item() for b in batches]
    assert [cached.loss(b).item() for b in batches] == ref
    calls.clear()
    for _ in range(2):
        assert [cached.loss(b).item() for b in batches] == ref
    assert not calls  # the teacher ran once per batch, not per use
    batches[0]["input_ids"][0, 1] = (batches[0]["input_ids"][0, 1] + 1) % V  # edited in place
    calls.clear()
    assert cached.loss(batches[0]).item() == pytest.approx(plain.loss(batches[0]).item())
    assert len(calls) == 2  # the edited batch is recomputed (and the plain trainer ran once)
    copy_b = {k: v.clone() for k, v in batches[1].items()}  # equal content, other objects
    calls.clear()
    cached.loss(copy_b)
    assert len(calls) == 1


def _masked_mse(a, b, mask):
    w = mask.unsqueeze(-1).double()
    return ((a.double() - b.double()) ** 2 * w).sum().item() / (w.sum().item() * a.shape[-1])


def _block_errors(student, teacher, b):
    """Per decoder block, the student's output error against the teacher's (from the models'
    own output_hidden_states: hidden_states[i + 1] is block i's output, the last one normed)."""
    with torch.no_grad():
        hs = student(**{k: v for k, v in b.items() if k != "labels"},
                     output_hidden_states=True).hidden_states
        ht = teacher(**{k: v for k, v in b.items() if k != "labels"},
                     output_hidden_states=True).hidden_states
    return [_masked_mse(s, t, b["attention_mask"]) for s, t in zip(hs[1:], ht[1:])]


def test_blockwise_init_trains_each_block_against_the_fp_block(gen):
    """Block-AP: the first step's loss is block 0's output MSE over the unmasked positions (the
    inputs captured at the first block are the models' own), and training takes every block's
    output error well down (the whole student chain, not only block by block)."""
    model = tiny_llama(0, layers=3)
    calib = [_padded_batch(gen)[0]]
    student, teacher = distill.prepare(
        model, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32), learn="clip"),
        calibration_batches=calib, progress=False)
    batches = [_padded_batch(gen)[0] for _ in range(2)]
    before = _block_errors(student, teacher, batches[0])
    rep = distill.blockwise_init(student, teacher, batches, steps=30, lr=2e-3, progress=False)
    assert [r["block"] for r in rep] == [0, 1, 2]
    assert rep[0]["loss_first"] == pytest.approx(before[0], rel=1e-4)
    after = _block_errors(student, teacher, batches[0])
    assert all(a < 0.6 * b for a, b in zip(after, before)), (before, after)
    with pytest.raises(ValueError, match="steps"):
        distill.blockwise_init(student, teacher, batches, steps=0)
    with pytest.raises(ValueError, match="teacher"):
        distill.blockwise_init(student, tiny_llama(1, layers=2), batches, steps=1)
