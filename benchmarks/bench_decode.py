"""benchmarks/bench_decode.py: end-to-end greedy decoding (transformers generate, batch 1, KV
cache, do_sample=False) of a Llama-shaped model with random weights (LlamaConfig, nothing
downloaded; default the TinyLlama-1.1B shape) in torch float32 / bfloat16 and with every nn.Linear
but lm_head packed by lowbit (quantize_ + convert_, int4-g128 and int2-g64, act "auto" and
"int8"). Each variant runs alone in a fresh child process (a float32 1.1B model is 4.4 GB), so
its peak RSS is its own. Decode tokens/s = (new - 1) / (t(generate new) - t(generate 1)): the
prefill (and the first token) cancels; prefill is reported on its own. Ratios are against the
float32 row of the same run. "peak RSS": the child's VmHWM over the timed generate calls (reset
after the build and a warm-up); "build peak": its VmHWM while building the float32 model and
converting it; "weights": parameters + buffers; "+ layouts": lowbit's derived CPU kernel layouts,
held beside the codes. --profile adds where one decode step's time goes (torch.profiler:
lowbit::quant_linear vs float linears vs attention vs the rest). Prints markdown.

    python benchmarks/bench_decode.py [--small] [--profile] [--threads N] [--variants a,b]
                                      [--prompt 32] [--new 64] [--json PATH]

Variants (names for --variants): f32, bf16, int4-auto, int4-int8, int2-auto, int2-int8.
"""
import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import time

import torch

import _harness as H

TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632,
                 num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
# quick shape: every K a multiple of 128 so int4-g128 packs every layer
SMALL = dict(hidden_size=256, num_hidden_layers=2, intermediate_size=768,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)

# name -> (label, torch dtype or lowbit (bits, group), act)
VARIANTS = {
    "f32": ("torch float32", torch.float32, None),
    "bf16": ("torch bfloat16", torch.bfloat16, None),
    "int4-auto": ("lowbit int4-g128", (4, 128), "auto"),
    "int4-int8": ("lowbit int4-g128", (4, 128), "int8"),
    "int2-auto": ("lowbit int2-g64", (2, 64), "auto"),
    "int2-int8": ("lowbit int2-g64", (2, 64), "int8"),
}


def build_model(shape, variant, seed=0):
    """The random-weight LlamaForCausalLM of ``shape`` (seeded) in the variant's form."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import lowbit

    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    _, kind, act = VARIANTS[variant]
    if isinstance(kind, torch.dtype):
        model.to(kind)
    else:
        bits, g = kind
        spec = lowbit.QuantSpec("int", bits, g)
        lowbit.quantize_(model, lowbit.QATConfig(spec, skip=("lm_head",)))
        lowbit.convert_(model, act=act)
    # no early stop at a random model's eos, no sampling knobs
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def tensor_bytes(model):
    """(bytes of the model's parameters and buffers, bytes of lowbit's derived CPU kernel
    layouts: QuantLinear.packed, held beside the canonical codes)."""
    state = sum(t.numel() * t.element_size()
                for t in itertools.chain(model.parameters(), model.buffers()))
    layouts = sum(m.packed.numel() * m.packed.element_size() for m in model.modules()
                  if isinstance(getattr(m, "packed", None), torch.Tensor))
    return state, layouts


def generate_fn(model, prompt, n):
    mask = torch.ones_like(prompt)

    def run():
        with torch.no_grad():
            return model.generate(prompt, attention_mask=mask, max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, use_cache=True)
    return run


# the ops a decode step's time is split into (cpu_time_total includes their children)
PROFILE_GROUPS = {
    "quant_linear": ("lowbit::quant_linear",),
    "float linear": ("aten::linear",),
    "attention": ("aten::scaled_dot_product_attention",),
}


def profile_step(model, prompt, steps=8):
    """ms per decode step (mean over ``steps`` steps after a 32-token prompt and a warm step) by
    PROFILE_GROUPS, the rest, and the three largest ops of the rest by self time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        out = model(prompt, use_cache=True)
        past, nxt = out.cache, out.logits[:, -1:].argmax(-1)
        out = model(nxt, cache=past, use_cache=True)  # a warm step first
        past, nxt = out.cache, out.logits[:, -1:].argmax(-1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                out = model(nxt, cache=past, use_cache=True)
                past, nxt = out.cache, out.logits[:, -1:].argmax(-1)
            wall = (time.perf_counter() - t0) * 1e3 / steps
    ev = prof.key_averages()
    res = {"step ms": wall}
    grouped = set()
    for g, names in PROFILE_GROUPS.items():
        res[g] = sum(e.cpu_time_total for e in ev if e.key in names) / 1e3 / steps
        grouped.update(names)
    res["rest"] = wall - sum(res[g] for g in PROFILE_GROUPS)
    for g in (*PROFILE_GROUPS, "rest"):
        res[g + " %"] = 100 * res[g] / wall
    # the rest's largest ops by self time; key_averages has no parent links, so the usual
    # children of the grouped ops (aten::mm under aten::linear, ...) are left out by name
    inside = {"aten::mm", "aten::addmm", "aten::matmul", "aten::t", "aten::transpose",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::as_strided",
              "aten::empty", "aten::resize_", "aten::expand", "aten::view"}
    rest = sorted((e for e in ev if e.key not in grouped and e.key not in inside),
                  key=lambda e: -e.self_cpu_time_total)[:3]
    res["top rest"] = ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3 / steps:.2f}"
                                for e in rest)
    return res


def child(args):
    """One variant in this (fresh) process; prints one JSON line of its numbers."""
    shape = SMALL if args["small"] else TINYLLAMA
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    t0 = time.perf_counter()
    model = build_model(shape, args["variant"])
    gc.collect()
    build_s = time.perf_counter() - t0
    build_peak = H.rss_kb("VmHWM") * 1024
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, shape["vocab_size"], (1, args["prompt"]), generator=gen)
    n = args["new"]
    generate_fn(model, prompt, 2)()  # warm-up: lowbit builds its CPU kernel layouts here
    gc.collect()
    H.reset_peak_rss()
    rss = H.rss_kb("VmRSS") * 1024
    state, layouts = tensor_bytes(model)
    min_run = 0.05 if args["quick"] else 0.5
    t1, tn = H.interleaved([generate_fn(model, prompt, 1), generate_fn(model, prompt, n)],
                           min_run=min_run, rounds=1 if args["quick"] else 2)
    res = {"state": state, "layouts": layouts, "build s": build_s, "build peak": build_peak,
           "rss": rss, "peak": H.rss_kb("VmHWM") * 1024, "prefill tok/s": args["prompt"] / t1,
           "decode tok/s": (n - 1) / (tn - t1), "machine": H.machine_line()}
    if args["profile"]:
        res["profile"] = profile_step(model, prompt)
    print(json.dumps(res), flush=True)


def run_child(variant, a):
    args = {"variant": variant, "small": a.small, "threads": a.threads, "prompt": a.prompt,
            "new": a.new, "quick": a.quick, "profile": a.profile}
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)],
                       capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stderr)
        raise RuntimeError(f"variant {variant}: child exited with {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = H.parser(__doc__, devices=("cpu",))
    ap.add_argument("--small", action="store_true", help="a 2-layer toy shape (seconds)")
    ap.add_argument("--profile", action="store_true", help="where one decode step's time goes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=64, help="new tokens")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(json.loads(a.child))
    names = [v for v in a.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    if a.prompt < 1 or a.new < 2:
        ap.error("--prompt must be >= 1 and --new >= 2 (decode time is t(new) - t(1))")
    if a.threads:
        torch.set_num_threads(a.threads)
    shape = SMALL if a.small else TINYLLAMA
    rep = H.Report(f"greedy decode, Llama {'small' if a.small else 'TinyLlama-1.1B'} shape "
                   f"{shape}, batch 1, {a.prompt}-token prompt, {a.new} new tokens", a)
    t = rep.table([("variant", "{}"), ("act", "{}"), ("decode tok/s", "{:.2f}"),
                   ("vs f32", "{:.2f}x"), ("prefill tok/s", "{:.1f}"),
                   ("peak RSS MB", "{:.0f}"), ("vs f32 mem", "{:.2f}x"),
                   ("weights MB", "{:.0f}"), ("+ layouts MB", "{:.0f}"),
                   ("build peak MB", "{:.0f}"), ("build s", "{:.1f}")], "decode")
    results, base = {}, None
    for v in names:
        r = results[v] = run_child(v, a)
        if v == "f32":
            base = r
        label, _, act = VARIANTS[v]
        t.row(label, act or "-", r["decode tok/s"],
              r["decode tok/s"] / base["decode tok/s"] if base else None,
              r["prefill tok/s"], H.mb(r["peak"]), r["peak"] / base["peak"] if base else None,
              H.mb(r["state"]), H.mb(r["layouts"]),
              H.mb(r["build peak"]), r["build s"])
    rep.note(f"children: {results[names[0]]['machine']}")
    if a.profile:
        p = rep.table([("variant", "{}"), ("act", "{}"), ("step ms", "{:.1f}"),
                       ("quant_linear", "{}"), ("float linear", "{}"),
                       ("attention", "{}"), ("rest", "{}"),
                       ("largest rest ops (self ms)", "{}")], "profile")
        for v in names:
            pr, (label, _, act) = results[v]["profile"], VARIANTS[v]
            p.row(label, act or "-", pr["step ms"],
                  *(f"{pr[g]:.1f} ms ({pr[g + ' %']:.0f}%)" for g in (*PROFILE_GROUPS, "rest")),
                  pr["top rest"])
    rep.save()
    return results


if __name__ == "__main__":
    main()
