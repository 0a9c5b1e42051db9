"""tests/test_bench_decode.py: the model path of benchmarks/bench_decode.py on its --small shape:
greedy decoding of the int4-g128 model with act="auto" (integer kernels at M=1) follows the same
model's act="float" decoding, step logits within the mode's error, tokens equal until a step
whose float top-2 margin that error could flip."""
import importlib.util
import os
import sys

import pytest
import torch

pytest.importorskip("transformers")

import lowbit  # noqa: E402

_BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")


def _bench_decode():
    sys.path.insert(0, _BENCH)  # bench_decode imports _harness from its own folder
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_decode", os.path.join(_BENCH, "bench_decode.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(_BENCH)
    return mod


def _decode(model, prompt, n):
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, use_cache=True,
                             return_dict_in_generate=True, output_logits=True)
    return out.sequences[0, prompt.shape[1]:], [lg[0].double() for lg in out.logits]


def test_small_int4_auto_decodes_like_float():
    bd = _bench_decode()
    model = bd.build_model(bd.SMALL, "int4-auto", seed=0)
    layers = [m for m in model.modules() if isinstance(m, lowbit.nn.QuantLinear)]
    assert len(layers) == 7 * bd.SMALL["num_hidden_layers"]  # every Linear but lm_head
    assert all(m.act == "auto" for m in layers)
    prompt = torch.randint(0, bd.SMALL["vocab_size"], (1, 8),
                           generator=torch.Generator().manual_seed(1))
    n = 16
    tok_a, log_a = _decode(model, prompt, n)
    for m in layers:
        m.act = "float"
    tok_f, log_f = _decode(model, prompt, n)
    assert len(tok_a) == len(tok_f) == n
    diverged = next((i for i in range(n) if tok_a[i] != tok_f[i]), n)
    # the logits of steps with the same prefix (up to and including the first divergence)
    for i in range(min(diverged + 1, n)):
        err = (log_a[i] - log_f[i]).norm() / log_f[i].norm()
        assert err <= 5e-4, (i, err.item())  # auto: 1e-4 a layer (int8 gives ~1e-2)
    if diverged < n:  # only a near-tie may flip: the float margin is within the logits' error
        top2 = log_f[diverged].topk(2).values
        assert top2[0] - top2[1] <= 2 * (log_a[diverged] - log_f[diverged]).abs().max()
