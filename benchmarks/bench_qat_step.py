"""benchmarks/bench_qat_step.py: one self-distillation QAT training step of SmolLM2-135M (teacher
forward, student forward/backward, CAKLD loss, AdamW step), int2-g64 asymmetric weights:
  lowbit-fused — lowbit.distill.DistillTrainer(fused_head=True): quantize_ (fused fake-quant
                 op), CAKLD from the last hidden states through fused_linear_kl_loss (no
                 B x T x V logits), the trainer's default optimizer
  lowbit       — the same trainer with materialised logits + lowbit.kl_div_loss
  plain        — the same loop in plain PyTorch the BitDistiller way (Python fake quant on every
                 linear, CAKLD composed from log_softmax/softmax/sums, torch's default AdamW)
  torchao      — torchao's QAT (QATConfig + IntxFakeQuantizeConfig(int2, group 64, asymmetric),
                 FakeQuantizedLinear) with the same composite CAKLD (torchao has no
                 distillation loss); needs torchao importable (install it in a venv of its own)
Each variant runs in its own child process: median step time over the timed steps and the peak
memory growth of the step (CPU: VmHWM after a reset; CUDA: the allocator's high-water mark), so
variants cannot disturb each other. --vocab 128256 resizes the (tied) embedding and head to
Llama-3's vocabulary (new rows random) to measure the logits' share of memory. --profile prints
where the time of one step goes (teacher forward, student forward, loss, backward, optimizer) for
the lowbit variants and plain.

    python benchmarks/bench_qat_step.py [--steps 3] [--batch 4] [--seq 128] [--vocab 49152]
                                        [--device cpu|cuda] [--autocast] [--profile]
                                        [--threads 1 --clock cpu]
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

VARIANTS = ("lowbit-fused", "lowbit", "plain", "torchao")


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

    if variant.startswith("lowbit"):
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


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(variant, student, teacher, ids, device, autocast, clock, gamma=0.5):
    """A callable running one full step; with phases=True it returns per-phase seconds."""
    import lowbit
    from lowbit import distill

    if variant.startswith("lowbit"):
        tr = distill.DistillTrainer(student, teacher, lr=1e-5, gamma=gamma,
                                    fused_head=(variant == "lowbit-fused"), max_grad_norm=None,
                                    autocast=autocast)
        opt = tr.optimizer
    else:
        tr = None
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    batch = {"input_ids": ids}
    labels = ids[:, 1:]
    dt = torch.bfloat16

    def step(phases=False):
        marks = [clock()]

        def mark():
            if phases:
                _sync(device)
                marks.append(clock())

        with torch.autocast(device, dtype=dt, enabled=autocast):
            if variant == "lowbit-fused":
                with torch.no_grad():
                    th, tw, tb = distill.trainer._hidden_and_head(teacher, batch, "teacher")
                mark()
                sh, sw, sb = distill.trainer._hidden_and_head(student, batch, "student")
                mark()
                loss = lowbit.fused_linear_kl_loss(sh[:, :-1], sw, teacher_hidden=th[:, :-1],
                                                   teacher_weight=tw, kind="cakld", gamma=gamma,
                                                   labels=labels)
            else:
                with torch.no_grad():
                    t = teacher(ids).logits[:, :-1]
                mark()
                s = student(ids).logits[:, :-1]
                mark()
                if variant == "lowbit":
                    loss = lowbit.kl_div_loss(s, t, kind="cakld", gamma=gamma, labels=labels)
                else:
                    loss = composite_cakld(s, t, gamma)
        mark()
        loss.backward()
        mark()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        marks.append(clock())
        if phases:
            return [b - a for a, b in zip(marks, marks[1:])]
        return loss.item()

    return step


def child(variant, steps, batch, seq, device, vocab, autocast, profile, threads, cpu_clock):
    from lowbit import data

    if threads:
        torch.set_num_threads(threads)
    # --clock cpu: CPU seconds of this process (with --threads 1 the work itself, unaffected by
    # other jobs waiting for the cores); wall: elapsed seconds
    clock = time.process_time if cpu_clock else time.perf_counter
    torch.manual_seed(0)
    model, _ = data.load_causal_lm(device=device)
    if vocab and vocab != model.config.vocab_size:
        model.resize_token_embeddings(vocab, mean_resizing=False)
    V = model.config.vocab_size
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    student = build(variant, model).train()
    ids = torch.randint(0, V, (batch, seq), device=device)
    step = make_step(variant, student, teacher, ids, device, autocast, clock)
    step()  # warm-up: allocator, thread pool, optimizer state
    if profile:
        rows = [step(phases=True) for _ in range(steps)]
        med = [sorted(r[i] for r in rows)[len(rows) // 2] for i in range(len(rows[0]))]
        print(json.dumps({"phases": med}))
        return
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_kb("VmRSS")
    times = []
    for _ in range(steps):
        t0 = clock()
        step()
        times.append(clock() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        peak = (rss_kb("VmHWM") - base) / 1024
    times.sort()
    print(json.dumps({"median_s": times[len(times) // 2], "peak_mb": peak, "vocab": V}))


def run_child(a, v, profile=False):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", v, "--steps", str(a.steps),
           "--batch", str(a.batch), "--seq", str(a.seq), "--device", a.device,
           "--vocab", str(a.vocab or 0), "--threads", str(a.threads or 0),
           "--clock", a.clock] + (["--autocast"] if a.autocast else []) + \
        (["--profile"] if profile else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        err = out.stderr.strip().splitlines()
        return None, (err[-1][:100] if err else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=0, help="resize the vocabulary (0: keep)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (all variants)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--profile", action="store_true", help="per-phase times of one step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: process CPU seconds (use with --threads 1 on a shared machine)")
    ap.add_argument("--quick", action="store_true", help="2 timed steps")
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.quick:
        a.steps = 2
    if a.child:
        return child(a.child, a.steps, a.batch, a.seq, a.device, a.vocab, a.autocast, a.profile,
                     a.threads, a.clock == "cpu")
    variants = [v for v in a.variants.split(",") if v]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# QAT self-distillation step, SmolLM2-135M, int2-g64, batch {a.batch}x{a.seq} "
          f"tokens, vocab {a.vocab or 'native (49152)'}, {a.device}"
          f"{', bf16 autocast' if a.autocast else ''}; torch {torch.__version__}, threads "
          f"{a.threads or torch.get_num_threads()}, {a.clock} clock, {platform.machine()}, "
          f"load average at start {load:.1f}")
    print()
    if a.profile:
        names = ["teacher forward", "student forward", "loss", "backward", "optimizer"]
        print("| variant | " + " | ".join(f"{n} s" for n in names) + " | step s |")
        print("|---" * (len(names) + 2) + "|")
        for v in variants:
            r, err = run_child(a, v, profile=True)
            if r is None:
                print(f"| {v} | failed: {err} |" + " |" * len(names))
                continue
            ph = r["phases"]
            print(f"| {v} | " + " | ".join(f"{x:.2f}" for x in ph) + f" | {sum(ph):.2f} |",
                  flush=True)
        return
    print("| variant | median step s | peak step memory MB | step time vs lowbit-fused | "
          "lowbit-fused memory ratio |")
    print("|---|---|---|---|---|")
    res = {}
    for v in variants:
        r, err = run_child(a, v)
        if r is None:
            print(f"| {v} | failed: {err} | | | |")
            continue
        res[v] = r
        lb = res.get("lowbit-fused")
        sp = f"{r['median_s'] / lb['median_s']:.2f}x" if lb and v != "lowbit-fused" else "-"
        mem = (f"{lb['peak_mb'] / r['peak_mb']:.2f}" if lb and v != "lowbit-fused"
               and r["peak_mb"] > 0 else "-")
        print(f"| {v} | {r['median_s']:.2f} | {r['peak_mb']:.0f} | {sp} | {mem} |", flush=True)


if __name__ == "__main__":
    main()
