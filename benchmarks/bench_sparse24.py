"""benchmarks/bench_sparse24.py: 2:4 sparse linear (lowbit.sparse.sparse24_linear) against the
dense F.linear of the same pruned weight, same process, same inputs, interleaved timings.

    python benchmarks/bench_sparse24.py [--device cpu|cuda] [--quick]

CPU (float32, the issue's shapes): M = 1 and M = 256 rows of x through 4096 -> 11008 (plus M = 8
and 64 for the crossover), the 2:4 + int4-g128 kernel (kept values quantized, ~3.2 bits per
weight), and the backward to x (M=1: an op over the compressed weight; M=256: decompress in
row chunks + matmul) against the dense backward.
CUDA (float16): M = 4096 (and 1, 16) through 4096 -> 11008: dense F.linear, lowbit
(cuSPARSELt when installed, else lowbit's gather kernel), the gather kernel itself, and
torch.sparse.to_sparse_semi_structured.
Prints a markdown table; ratios are baseline time / lowbit time (> 1: lowbit faster).
"""
import argparse
import platform

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tbench

import lowbit
from lowbit.sparse import compress_24, prune_24, sparse24_linear
from lowbit.sparse.sparse24 import _grad_x

N, K = 11008, 4096


def cpu_time(fn, min_run):
    return tbench.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run).median


def interleaved(fns, min_run, rounds):
    """Median over `rounds` alternating measurements of each fn (shared, noisy machines)."""
    out = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            out[i].append(cpu_time(f, min_run))
    return [sorted(t)[len(t) // 2] for t in out]


def cuda_time(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def mb(t):
    return t.numel() * t.element_size() / 2 ** 20


def run_cpu(quick):
    torch.manual_seed(0)
    w = torch.randn(N, K) * 0.02
    p, _ = prune_24(w)
    sw = compress_24(p)
    sq = sw.quantize(lowbit.QuantSpec("int", 4, 128))
    min_run, rounds = (0.3, 2) if quick else (1.0, 3)
    print(f"# 2:4 sparse linear, CPU float32, {N}x{K} weight; torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, lowbit ISA {lowbit.get_cpu_isa()}, "
          f"{platform.processor() or platform.machine()}")
    print(f"# weight MB: dense {mb(p):.1f}, 2:4 {sw.nbytes / 2 ** 20:.1f} "
          f"({sw.bits_per_weight:.2f} bits/weight), 2:4+int4-g128 {sq.nbytes / 2 ** 20:.1f} "
          f"({sq.bits_per_weight:.2f} bits/weight)")
    print()
    print("| M | dense F.linear ms | lowbit 2:4 ms | speedup | 2:4+int4 ms | speedup (int4) | target |")
    print("|---|---|---|---|---|---|---|")
    targets = {1: ">= 1.7x", 256: ">= 1.2x"}
    for m in ([1, 256] if quick else [1, 8, 64, 256]):
        x = torch.randn(m, K)
        td, ts, tq = interleaved([lambda: F.linear(x, p), lambda: sparse24_linear(x, sw),
                                  lambda: sparse24_linear(x, sq)], min_run, rounds)
        print(f"| {m} | {td * 1e3:.2f} | {ts * 1e3:.2f} | {td / ts:.2f}x | {tq * 1e3:.2f} | "
              f"{td / tq:.2f}x | {targets.get(m, 'report')} |", flush=True)
    # backward to x: grad_y @ W_pruned (lowbit: the op over the compressed weight for M <= 8,
    # chunked decompress + matmul above)
    tdec = cpu_time(lambda: torch.ops.lowbit.sparse24_decompress(sw.values, sw.meta), min_run)
    print()
    print("| backward to x | dense g @ W ms | lowbit ms | ratio | path |")
    print("|---|---|---|---|---|")
    for m in (1, 256):
        g = torch.randn(m, N)
        td, ts = interleaved([lambda: g @ p, lambda: _grad_x(g, sw.values, sw.meta)],
                             min_run, rounds)
        path = ("sparse24_grad_x (compressed)" if m <= 8 else
                "decompress in 16 MB row chunks + matmul")
        print(f"| M={m} | {td * 1e3:.2f} | {ts * 1e3:.2f} | {td / ts:.2f}x | {path} |", flush=True)
    print(f"\n(one full {N}x{K} decompress into a fresh tensor: {tdec * 1e3:.1f} ms)")


def run_cuda(quick):
    dev = "cuda"
    torch.manual_seed(0)
    w = (torch.randn(N, K, device=dev) * 0.02).half()
    p, _ = prune_24(w)
    sw = compress_24(p)
    print(f"# 2:4 sparse linear, CUDA float16, {N}x{K} weight; torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}, cuSPARSELt installed: "
          f"{lowbit.sparse.cusparselt_available()}")
    print()
    try:
        wss = torch.sparse.to_sparse_semi_structured(p)
        ss_err = None
    except Exception as exc:  # noqa: BLE001 - reported in the table
        wss, ss_err = None, f"{type(exc).__name__}: {exc}"[:60]
    print("| M | dense ms | lowbit auto ms | vs dense | lowbit gather ms | torch semi-structured ms "
          "| lowbit vs torch | target |")
    print("|---|---|---|---|---|---|---|---|")
    for m in ([4096] if quick else [1, 16, 4096]):
        x = torch.randn(m, K, device=dev).half()
        td = cuda_time(lambda: F.linear(x, p))
        try:
            ta = cuda_time(lambda: sparse24_linear(x, sw))
        except RuntimeError as exc:
            print(f"| {m} | {td * 1e3:.3f} | error: {str(exc)[:60]} | | | | | |")
            continue
        tg = cuda_time(lambda: sparse24_linear(x, sw, backend="lowbit"))
        if wss is not None:
            try:
                tt = cuda_time(lambda: F.linear(x, wss))
                tts = f"{tt * 1e3:.3f}"
                rel = f"{tt / ta:.2f}x"
            except Exception as exc:  # noqa: BLE001
                tts, rel = f"n/a ({type(exc).__name__})", ""
        else:
            tts, rel = f"n/a ({ss_err})", ""
        tgt = ">= 1.3x" if m == 4096 else "report"
        print(f"| {m} | {td * 1e3:.3f} | {ta * 1e3:.3f} | {td / ta:.2f}x | {tg * 1e3:.3f} | {tts} | "
              f"{rel} | {tgt} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="fewer shapes, short timing")
    a = ap.parse_args()
    if a.device == "cuda":
        run_cuda(a.quick)
    else:
        run_cpu(a.quick)


if __name__ == "__main__":
    main()
