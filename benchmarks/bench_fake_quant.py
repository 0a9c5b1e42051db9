"""benchmarks/bench_fake_quant.py: fused fake-quant forward+backward (lowbit) against the plain
PyTorch quantizer written the BitDistiller way, same process, same inputs: median time, ratio,
and peak extra memory (measured per variant in a child process from peak RSS).

    python benchmarks/bench_fake_quant.py [--device cpu|cuda] [--quick]

Prints a markdown table. "extra MB" is peak memory above the inputs (w, upstream grad) and the
two outputs every implementation must produce (Q(w) and dL/dw): the temporaries.
"""
import argparse
import json
import os
import platform
import subprocess
import sys

import torch

from _mem import reset_peak_rss, rss_kb  # noqa: F401  (children use b.rss_kb)
import torch.utils.benchmark as tbench

import lowbit

LEVELS = {
    ("nf", 3): [-1, -0.5350227355957031, -0.2469314038753510, 0, 0.1833375245332718,
                0.3819939494132996, 0.6229856610298157, 1],
    ("fp", 4): sorted({v / 6 for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)} |
                      {-v / 6 for v in (0.5, 1, 1.5, 2, 3, 4, 6)}),
}


def round_ste(x):
    return x + (x.abs().add(0.5).floor() * x.sign() - x).detach()


def baseline_fake_quant(w, fmt, bits, group_size):
    """BitDistiller-style plain PyTorch: reshape into groups, amax/amin scales not detached."""
    shape = w.shape
    x = w.reshape(-1, group_size).float()
    if fmt == "int":
        qmax = 2 ** bits - 1
        mx, mn = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
        s = (mx - mn).clamp(min=1e-5) / qmax
        z = (-mn / s).round().clamp(0, qmax).detach()
        q = (torch.clamp(round_ste(x / s) + z, 0, qmax) - z) * s
    else:
        lev = torch.tensor(LEVELS[(fmt, bits)], device=w.device)
        mids = (lev[1:] + lev[:-1]) / 2
        sp = x.amax(dim=1, keepdim=True).clamp(min=1e-8)
        sn = (-x.amin(dim=1, keepdim=True)).clamp(min=1e-8)
        pos = x >= 0
        u = torch.where(pos, x / sp, x / sn)
        c = lev[torch.bucketize(u.detach(), mids)]
        q = torch.where(pos, (u + (c - u).detach()) * sp, (u + (c - u).detach()) * sn)
    return q.reshape(shape).to(w.dtype)


CASES = [("int", 2, 128), ("int", 3, 128), ("nf", 3, 128), ("fp", 4, 128)]
SHAPES = [(4096, 4096), (11008, 4096)]


def step(impl, w, up, fmt, bits, g):
    w.grad = None
    if impl == "lowbit":
        q = lowbit.fake_quantize(w, lowbit.QuantSpec(fmt, bits, g))
    else:
        q = baseline_fake_quant(w, fmt, bits, g)
    q.backward(up)
    return q


def peak_extra_mb(impl, n, k, fmt, bits, g, device):
    """Peak memory above inputs and the two outputs, from a fresh child process."""
    if device == "cuda":  # the caching allocator's own high-water mark, in process
        torch.manual_seed(0)
        w = (torch.randn(n, k, device=device) * 0.02).requires_grad_(True)
        up = torch.randn(n, k, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        q = step(impl, w, up, fmt, bits, g)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del q, w, up
        return (peak - 2 * n * k * 4) / 2 ** 20
    code = f"""
import json, sys, torch
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_fake_quant as b
torch.manual_seed(0)
w = (torch.randn({n}, {k}) * 0.02).requires_grad_(True)
up = torch.randn({n}, {k})
b.reset_peak_rss()
base = b.rss_kb("VmRSS")
b.step({impl!r}, w, up, {fmt!r}, {bits}, {g})
print(json.dumps({{"grow": (b.rss_kb("VmHWM") - base) * 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grow = json.loads(out.stdout.strip().splitlines()[-1])["grow"]
    return (grow - 2 * n * k * 4) / 2 ** 20


def timeit(impl, w, up, fmt, bits, g, device, min_run):
    if device == "cuda":
        for _ in range(3):
            step(impl, w, up, fmt, bits, g)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(20):
            start.record()
            step(impl, w, up, fmt, bits, g)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        times.sort()
        return times[len(times) // 2]
    t = tbench.Timer("step(impl, w, up, fmt, bits, g)",
                     globals=dict(step=step, impl=impl, w=w, up=up, fmt=fmt, bits=bits, g=g))
    return t.blocked_autorange(min_run_time=min_run).median


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="one shape, short timing")
    a = ap.parse_args()
    shapes = SHAPES[:1] if a.quick else SHAPES
    print(f"# fake-quant forward+backward, float32, {a.device}; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, lowbit ISA {lowbit.get_cpu_isa()}, "
          f"{platform.processor() or platform.machine()}")
    print()
    print("| shape | format | baseline ms | lowbit ms | speedup | baseline extra MB | "
          "lowbit extra MB | weight MB |")
    print("|---|---|---|---|---|---|---|---|")
    for n, k in shapes:
        torch.manual_seed(0)
        w = (torch.randn(n, k, device=a.device) * 0.02).requires_grad_(True)
        up = torch.randn(n, k, device=a.device)
        for fmt, bits, g in CASES:
            tb = timeit("baseline", w, up, fmt, bits, g, a.device, 0.5 if a.quick else 2.0)
            tl = timeit("lowbit", w, up, fmt, bits, g, a.device, 0.5 if a.quick else 2.0)
            mb = peak_extra_mb("baseline", n, k, fmt, bits, g, a.device)
            ml = peak_extra_mb("lowbit", n, k, fmt, bits, g, a.device)
            print(f"| {n}x{k} | {fmt}{bits}-g{g} | {tb * 1e3:.1f} | {tl * 1e3:.1f} | "
                  f"{tb / tl:.2f}x | {mb:.0f} | {ml:.0f} | {n * k * 4 / 2 ** 20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
