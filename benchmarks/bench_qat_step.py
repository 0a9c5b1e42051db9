"""benchmarks/bench_qat_step.py: one self-distillation QAT training step of SmolLM2-135M (teacher
forward, student forward/backward, loss, AdamW step), int2-g64 asymmetric weights:
  lowbit   — quantize_ (fused fake-quant op) + lowbit.kl_div_loss (fused CAKLD)
  plain    — the same loop in plain PyTorch the BitDistiller way (Python fake quant on every
             linear, CAKLD composed from log_softmax/softmax/sums)
  torchao  — torchao's QAT (QATConfig + IntxFakeQuantizeConfig(int2, group 64, asymmetric),
             FakeQuantizedLinear) with the same composite CAKLD (torchao has no distillation loss)
Each variant runs in its own child process: median step time over the timed steps and the peak
RSS growth of the step (VmHWM after a reset), so variants cannot disturb each other.

    python benchmarks/bench_qat_step.py [--steps 3] [--batch 4] [--seq 128] [--device cpu|cuda]
"""
import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _mem import reset_peak_rss, rss_kb  # noqa: E402


def composite_cakld(s, t, gamma):
    lq = F.log_softmax(s.float(), -1)
    lp = F.log_softmax(t.float(), -1)
    p, q = lp.exp(), lq.exp()
    fkl = (p * (lp - lq)).sum(-1)
    rkl = (q * (lq - lp)).sum(-1)
    return (gamma * rkl + (1 - gamma) * fkl).mean()


class PlainQATLinear(nn.Linear):
    """BitDistiller-style: fake quant written in Python in forward."""

    def forward(self, x):
        from bench_fake_quant import baseline_fake_quant
        return F.linear(x, baseline_fake_quant(self.weight, "int", 2, 64), self.bias)


def build(variant, model):
    import lowbit

    if variant == "lowbit":
        lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 64)))
    elif variant == "plain":
        for name, mod in list(model.named_modules()):
            if type(mod) is nn.Linear and not name.endswith("lm_head"):
                new = PlainQATLinear(mod.in_features, mod.out_features, bias=mod.bias is not None)
                new.weight, new.bias = mod.weight, mod.bias
                parent = model.get_submodule(name.rpartition(".")[0])
                setattr(parent, name.rpartition(".")[2], new)
    elif variant == "torchao":
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

        wc = IntxFakeQuantizeConfig(torch.int2, group_size=64, is_symmetric=False)
        quantize_(model, QATConfig(weight_config=wc, step="prepare"),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and "lm_head" not in fqn)
    return model


def child(variant, steps, batch, seq, device):
    import lowbit
    from lowbit import data

    torch.manual_seed(0)
    model, _ = data.load_causal_lm(device=device)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    student = build(variant, model).train()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    gamma = 0.5

    def step():
        with torch.no_grad():
            t = teacher(ids).logits[:, :-1]
        s = student(ids).logits[:, :-1]
        if variant == "lowbit":
            loss = lowbit.kl_div_loss(s, t, kind="cakld", gamma=gamma)
        else:
            loss = composite_cakld(s, t, gamma)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    step()  # warm-up: allocator, thread pool, optimizer state
    reset_peak_rss()
    base = rss_kb("VmRSS")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (rss_kb("VmHWM") - base) / 1024
    times.sort()
    print(json.dumps({"median_s": times[len(times) // 2], "peak_mb": peak}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="2 timed steps")
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.quick:
        a.steps = 2
    if a.child:
        return child(a.child, a.steps, a.batch, a.seq, a.device)
    print(f"# QAT self-distillation step, SmolLM2-135M, int2-g64, batch {a.batch}x{a.seq} "
          f"tokens, {a.device}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.machine()}")
    print()
    print("| variant | median step s | peak step memory MB | lowbit speedup | lowbit memory ratio |")
    print("|---|---|---|---|---|")
    res = {}
    for v in ("lowbit", "plain", "torchao"):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", v, "--steps", str(a.steps),
               "--batch", str(a.batch), "--seq", str(a.seq), "--device", a.device]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {v} | failed: {out.stderr.strip().splitlines()[-1][:80]} | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res[v] = r
        lb = res.get("lowbit")
        sp = f"{r['median_s'] / lb['median_s']:.2f}x" if lb and v != "lowbit" else "-"
        mem = f"{lb['peak_mb'] / r['peak_mb']:.2f}" if lb and v != "lowbit" and r["peak_mb"] > 0 else "-"
        print(f"| {v} | {r['median_s']:.2f} | {r['peak_mb']:.0f} | {sp} | {mem} |", flush=True)


if __name__ == "__main__":
    main()
