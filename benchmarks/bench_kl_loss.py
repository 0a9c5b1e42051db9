"""benchmarks/bench_kl_loss.py: lowbit's fused distillation loss (forward + backward) against
the PyTorch composite written the BitDistiller way (float32 log_softmax of both, F.kl_div in
both directions, masked mean), same process, same inputs: median time, speedup, and peak extra
memory (CPU: peak RSS above the inputs, measured per variant in a fresh child process; CUDA:
the caching allocator's high-water mark above the inputs). Also the fused LM-head variant
against F.linear + loss (materialised logits). On CUDA the reference is Liger-Kernel
(LigerKLDIVLoss / LigerJSD on log-softmaxed inputs, as Liger requires) when importable, else the
torch composite.

    python benchmarks/bench_kl_loss.py [--device cpu|cuda] [--quick] [--head-only] [--vocab V]
                                       [--threads 1 --clock cpu]

Prints markdown tables ("extra MB" includes the student-logit gradient every variant produces).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

from _mem import reset_peak_rss, rss_kb  # noqa: F401  (children use b.rss_kb)
import torch.nn.functional as F

import lowbit

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------
# the variants
# ---------------------------------------------------------------------------------------------
def composite(S, T, kind, labels, gamma=0.5, beta=0.5, tau=1.0):
    """BitDistiller's recipe: float32 log-probs of both, kl_div both ways, masked mean."""
    lq = F.log_softmax(S.float() / tau, dim=-1)
    lp = F.log_softmax(T.float() / tau, dim=-1)
    if kind == "jsd":
        m = beta * lp.exp() + (1 - beta) * lq.exp()
        lm = m.log()
        rows = beta * F.kl_div(lm, lp, reduction="none", log_target=True).sum(-1) + \
            (1 - beta) * F.kl_div(lm, lq, reduction="none", log_target=True).sum(-1)
    else:
        fkl = F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
        if kind == "forward":
            rows = fkl
        else:
            rkl = F.kl_div(lp, lq, reduction="none", log_target=True).sum(-1)
            rows = gamma * rkl + (1 - gamma) * fkl
    keep = (labels != -100).float()
    return (rows * keep).sum() / keep.sum().clamp_min(1)


def lowbit_loss(S, T, kind, labels, store=False):
    kw = {"gamma": 0.5} if kind == "cakld" else {}
    if not store:
        return lowbit.kl_div_loss(S, T, kind=kind, labels=labels, **kw)
    # the stored-gradient strategy (gradient written by the forward, scaled in the backward)
    lab = labels.reshape(-1)
    rows, _ = torch.ops.lowbit.kl_loss(S.reshape(-1, S.shape[-1]), T.reshape(-1, T.shape[-1]),
                                       lab, lowbit.kl_loss.KINDS[kind], kw.get("gamma", 0.0),
                                       0.5, 1.0, -100, True, True, 1.0)
    return rows.sum() / (lab != -100).sum().clamp_min(1)


def liger_loss(S, T, kind, labels):
    from liger_kernel.transformers import LigerJSD, LigerKLDIVLoss

    keep = labels.reshape(-1) != -100
    lq = F.log_softmax(S.reshape(-1, S.shape[-1]).float(), dim=-1)
    lp = F.log_softmax(T.reshape(-1, T.shape[-1]).float(), dim=-1)
    if kind == "jsd":
        return LigerJSD(beta=0.5)(lq, lp, labels.reshape(-1))
    # forward KL; Liger's KLDIV has no row mask: masked rows are dropped first
    return LigerKLDIVLoss(reduction="batchmean", log_target=True)(lq[keep], lp[keep])


VARIANTS = {
    "composite": composite,
    "lowbit": lowbit_loss,
    "lowbit-stored-grad": lambda S, T, kind, labels: lowbit_loss(S, T, kind, labels, True),
    "liger": liger_loss,
}


def make_inputs(bt, v, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    S = (torch.randn(bt, v, generator=g) * 2).to(dtype).to(device)
    T = (torch.randn(bt, v, generator=g) * 2).to(dtype).to(device)
    labels = torch.randint(0, v, (bt,), generator=g)
    labels[::7] = -100
    return S, T, labels.to(device)


def step(variant, S, T, kind, labels):
    x = S.detach().requires_grad_(True)
    loss = VARIANTS[variant](x, T, kind, labels)
    loss.backward()
    return x.grad


# ---------------------------------------------------------------------------------------------
# fused LM head
# ---------------------------------------------------------------------------------------------
def make_head(bt, h, v, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hid = torch.randn(bt, h, generator=g).to(dtype).to(device)
    w = (torch.randn(v, h, generator=g) * 0.05).to(dtype).to(device)
    thid = torch.randn(bt, h, generator=g).to(dtype).to(device)
    tw = (torch.randn(v, h, generator=g) * 0.05).to(dtype).to(device)
    labels = torch.randint(0, v, (bt,), generator=g)
    labels[::7] = -100
    return hid, w, thid, tw, labels.to(device)


def head_step(variant, hid, w, thid, tw, labels, chunk=None):
    x = hid.detach().requires_grad_(True)
    wx = w.detach().requires_grad_(True)
    if variant == "fused":
        loss = lowbit.fused_linear_kl_loss(x, wx, teacher_hidden=thid, teacher_weight=tw,
                                           kind="cakld", gamma=0.5, labels=labels,
                                           chunk_size=chunk)
    else:
        logits = F.linear(x, wx)
        with torch.no_grad():
            tl = F.linear(thid, tw)
        if variant == "materialised+lowbit":
            loss = lowbit.kl_div_loss(logits, tl, kind="cakld", gamma=0.5, labels=labels)
        else:
            loss = composite(logits, tl, "cakld", labels)
    loss.backward()
    return x.grad, wx.grad


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
def child_peak_mb(setup, call):
    """Peak RSS growth (MB) of `call` in a fresh process after `setup` (both code strings)."""
    code = f"""
import json, sys, torch
sys.path.insert(0, {HERE!r})
import bench_kl_loss as b
{setup}
b.reset_peak_rss()
base = b.rss_kb("VmRSS")
out = {call}
print(json.dumps({{"grow": (b.rss_kb("VmHWM") - base) * 1024}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr else "child failed")
    return json.loads(r.stdout.strip().splitlines()[-1])["grow"] / 2**20


def cuda_peak_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


CLOCK = [time.perf_counter]  # --clock cpu: process CPU seconds (with --threads 1: the work)


def median_time(fn, device, reps, warmup=1):
    clock = CLOCK[0]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = clock()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - t)
    times.sort()
    return times[len(times) // 2]


def fmt_row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


# ---------------------------------------------------------------------------------------------
def run_loss_table(device, shapes, kinds_for, dtype, reps, ref_name, variants):
    print(fmt_row(["BT x V", "kind", "dtype", "variant", "median ms", "speedup vs " + ref_name,
                   "peak extra MB", "memory ratio"]))
    print("|---|---|---|---|---|---|---|---|")
    dname = str(dtype).replace("torch.", "")
    for bt, v in shapes:
        S, T, labels = make_inputs(bt, v, dtype, device)
        for kind in kinds_for(bt, v):
            res = {}
            for var in variants:
                try:
                    t = median_time(lambda: step(var, S, T, kind, labels), device,
                                    reps if var != "composite" else max(1, reps - 2))
                    if device == "cuda":
                        m = cuda_peak_mb(lambda: step(var, S, T, kind, labels))
                    else:
                        m = child_peak_mb(
                            f"S, T, labels = b.make_inputs({bt}, {v}, {dtype}, 'cpu')",
                            f"b.step({var!r}, S, T, {kind!r}, labels)")
                    res[var] = (t, m)
                except Exception as e:  # e.g. liger not installed / no kind support
                    res[var] = None
                    print(fmt_row([f"{bt}x{v}", kind, dname, var, "n/a", "", "",
                                   f"({type(e).__name__}: {str(e)[:60]})"]), flush=True)
            ref = res.get(ref_name)
            for var, r in res.items():
                if r is None:
                    continue
                t, m = r
                sp = f"{ref[0] / t:.2f}x" if ref and var != ref_name else ""
                mr = f"{ref[1] / m:.2f}x less" if ref and m > 0 and var != ref_name else ""
                print(fmt_row([f"{bt}x{v}", kind, dname, var, f"{t * 1e3:.1f}", sp, f"{m:.0f}",
                               mr]), flush=True)
        del S, T, labels


def run_head_table(device, bt, h, v, dtype, reps, chunks, threads=0):
    print(fmt_row(["BT x H x V", "variant", "chunk", "median ms", "peak extra MB",
                   "vs materialised+lowbit", "vs materialised+composite"]))
    print("|---|---|---|---|---|---|---|")
    args = make_head(bt, h, v, dtype, device)
    rows = []
    for var, chunk in [("materialised+composite", None), ("materialised+lowbit", None)] + \
            [("fused", c) for c in chunks]:
        t = median_time(lambda: head_step(var, *args, chunk=chunk), device, reps)
        if device == "cuda":
            m = cuda_peak_mb(lambda: head_step(var, *args, chunk=chunk))
        else:
            m = child_peak_mb(f"torch.set_num_threads({threads or torch.get_num_threads()})\n"
                              f"args = b.make_head({bt}, {h}, {v}, {dtype}, 'cpu')",
                              f"b.head_step({var!r}, *args, chunk={chunk!r})")
        rows.append((var, chunk, t, m))
    ml = rows[1][3]
    mc = rows[0][3]
    for var, chunk, t, m in rows:
        c = "" if chunk is None else (chunk if chunk else "default")
        print(fmt_row([f"{bt}x{h}x{v}", var, c, f"{t * 1e3:.1f}", f"{m:.0f}",
                       f"{m / ml:.3f}", f"{m / mc:.3f}"]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    ap.add_argument("--head-only", action="store_true", help="only the fused LM-head table")
    ap.add_argument("--vocab", type=int, default=49152, help="V of the fused LM-head table (CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: process CPU seconds (use with --threads 1 on a shared machine)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.clock == "cpu":
        CLOCK[0] = time.process_time
    dev = a.device
    info = lowbit.build_info()
    print(f"# distillation loss forward+backward, {dev}; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {a.clock} clock, lowbit ISA {info['cpu_isa']}, "
          f"{platform.processor() or platform.machine()}"
          + (f", {torch.cuda.get_device_name()}" if dev == "cuda" else ""))
    print()
    if dev == "cpu":
        if a.quick:
            shapes = [(256, 8192)]
            reps = 2
        else:
            shapes = [(2048, 49152), (512, 32000), (512, 128256)]
            reps = 5

        def kinds_for(bt, v):
            if a.quick or (bt, v) == (512, 32000):
                return ["cakld", "forward", "jsd"]
            return ["cakld"]

        variants = ["composite", "lowbit", "lowbit-stored-grad"]
        if not a.head_only:
            run_loss_table("cpu", shapes, kinds_for, torch.float32, reps, "composite", variants)
            print()
        if a.quick:
            run_head_table("cpu", 256, 64, 8192, torch.float32, 2, [None], a.threads)
        else:
            run_head_table("cpu", 2048, 576, a.vocab, torch.float32, 3, [None, 32, 64],
                           a.threads)
    else:
        try:
            import liger_kernel  # noqa: F401

            ref = "liger"
        except ImportError:
            ref = "composite"
            print("(liger-kernel not importable: the reference is the torch composite)\n")
        shapes = [(1024, 32000)] if a.quick else [(8192, 128256)]
        variants = ["composite", "lowbit"] + (["liger"] if ref == "liger" else [])
        run_loss_table("cuda", shapes, lambda bt, v: ["forward", "jsd", "cakld"],
                       torch.bfloat16, 3 if a.quick else 10, ref, variants)
        print()
        run_head_table("cuda", 2048 if a.quick else 8192, 576 if a.quick else 2048,
                       49152 if a.quick else 128256, torch.bfloat16, 3, [None])


if __name__ == "__main__":
    main()
