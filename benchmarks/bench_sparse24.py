"""benchmarks/bench_sparse24.py: 2:4 sparse linear (lowbit.sparse.sparse24_linear) against the
dense F.linear of the same pruned weight, same process, same inputs, interleaved timings.

    python benchmarks/bench_sparse24.py [--device cpu|cuda] [--quick] [--json PATH]
                                        [--llc-mb 480] [--cycled-only]

CPU (float32, LLM MLP shapes): first M = 1 as a decode runs it, each kind of weight cycled
through enough copies (layers) to hold 1.5x the last-level cache (--llc-mb, default this VM's
480 MiB), 4096x4096 and 4096 -> 11008, 1 and 2 threads, the default ISA and LOWBIT_CPU_ISA=avx2:
dense F.linear of the pruned weight, the 2:4 kernel and 2:4 + int4-g128 (target >= 1.7x and
>= 2x). Wall-clock medians of interleaved rounds; at 1 thread also the calling thread's CPU time
(best of 7 cycles), which a machine shared with other jobs does not inflate. Then one
4096 -> 11008 layer called repeatedly (in cache): M = 1 and M = 256 rows of x (plus M = 8 and 64
for the crossover), and the backward to x (M=1: an op over the compressed weight; M=256:
decompress in row chunks + matmul) against the dense backward.
CUDA (float16): M = 4096 (and 1, 16) through 4096 -> 11008: dense F.linear, lowbit
(cuSPARSELt when installed, else lowbit's gather kernel), the gather kernel itself, and
torch.sparse.to_sparse_semi_structured.
Prints a markdown table; ratios are baseline time / lowbit time (> 1: lowbit faster).
"""
import time

import torch
import torch.nn.functional as F

import _harness as H
import lowbit
from lowbit.qweight import QuantizedWeight
from lowbit.sparse import Sparse24Weight, compress_24, prune_24, sparse24_linear
from lowbit.sparse.sparse24 import _grad_x

N, K = 11008, 4096


def mb(t):
    return H.mb(t.numel() * t.element_size())


def _copy_sw(sw):
    """A Sparse24Weight with its own storage (a layer of the cycled set)."""
    q = sw.qvalues
    if q is None:
        return Sparse24Weight(sw.values.clone(), sw.meta.clone(), sw.shape, sw.dtype, check=False)
    qc = QuantizedWeight(q.codes.clone(), q.scales.clone(),
                         None if q.zeros is None else q.zeros.clone(), q.spec, q.shape, q.dtype,
                         check=False)
    return Sparse24Weight(None, sw.meta.clone(), sw.shape, sw.dtype, qvalues=qc, check=False)


def _layers(nbytes, llc, make):
    """Enough copies to hold 1.5x the LLC (at least 2)."""
    return [make() for _ in range(max(2, -(-int(1.5 * llc) // nbytes)))]


def _cycle(ws, f):
    def run():
        for w in ws:
            f(w)
    return run


def _thread_time(run, n, reps=7):
    """Best of reps runs of run() (n calls each), the calling thread's CPU time per call."""
    run()
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        run()
        best = min(best, (time.thread_time() - t0) / n)
    return best


def run_cpu_cycled(args):
    """M = 1 with every kind of weight cycled past the LLC (see the module doc)."""
    llc = args.llc_mb << 20
    min_run, rounds = (0.3, 2) if args.quick else (0.8, 3)
    rep = H.Report(f"2:4 sparse linear, CPU float32, M=1, weights cycled past a {args.llc_mb} MiB "
                   f"LLC (1.5x it per kind)", args)
    t = rep.table([("N x K", "{}"), ("ISA", "{}"), ("threads", "{}"), ("layers d/s/q", "{}"),
                   ("dense ms", "{:.3f}"), ("2:4 ms", "{:.3f}"), ("2:4 vs dense", "{:.2f}x"),
                   ("int4 ms", "{:.3f}"), ("int4 vs dense", "{:.2f}x"),
                   ("CPU-time 2:4", "{}"), ("CPU-time int4", "{}"), ("target", "{}")], "cycled")
    isas = [lowbit.get_cpu_isa()] + (["avx2"] if "avx2" in lowbit.available_cpu_isas() else [])
    threads0 = torch.get_num_threads()
    for (n, k) in ((4096, 4096), (11008, 4096)):
        torch.manual_seed(0)
        p, _ = prune_24(torch.randn(n, k) * 0.02)
        sw = compress_24(p)
        sq = sw.quantize(lowbit.QuantSpec("int", 4, 128))
        dense = _layers(p.numel() * 4, llc, p.clone)
        sws = _layers(sw.nbytes, llc, lambda: _copy_sw(sw))
        sqs = _layers(sq.nbytes, llc, lambda: _copy_sw(sq))
        x = torch.randn(1, k)
        runs = [_cycle(dense, lambda w: F.linear(x, w)),
                _cycle(sws, lambda w: sparse24_linear(x, w)),
                _cycle(sqs, lambda w: sparse24_linear(x, w))]
        lens = [len(dense), len(sws), len(sqs)]
        for isa in isas:
            lowbit.set_cpu_isa(isa)
            for th in (1, 2):
                torch.set_num_threads(th)
                td, ts, tq = (tm / ln for tm, ln in
                              zip(H.interleaved(runs, "cpu", min_run, rounds), lens))
                cs = cq = None
                if th == 1:
                    cd, cs, cq = (_thread_time(r, ln) for r, ln in zip(runs, lens))
                    cs, cq = f"{cd / cs:.2f}x", f"{cd / cq:.2f}x"
                t.row(f"{n}x{k}", isa, th, "/".join(map(str, lens)), td * 1e3, ts * 1e3,
                      td / ts, tq * 1e3, td / tq, cs, cq, ">= 1.7x / >= 2x")
        del dense, sws, sqs
    lowbit.set_cpu_isa("auto")
    torch.set_num_threads(threads0)
    rep.save()


def run_cpu(args):
    torch.manual_seed(0)
    w = torch.randn(N, K) * 0.02
    p, _ = prune_24(w)
    sw = compress_24(p)
    sq = sw.quantize(lowbit.QuantSpec("int", 4, 128))
    min_run, rounds = (0.3, 2) if args.quick else (1.0, 3)
    rep = H.Report(f"2:4 sparse linear, CPU float32, {N}x{K} weight", args)
    rep.note(f"# weight MB: dense {mb(p):.1f}, 2:4 {H.mb(sw.nbytes):.1f} "
             f"({sw.bits_per_weight:.2f} bits/weight), 2:4+int4-g128 {H.mb(sq.nbytes):.1f} "
             f"({sq.bits_per_weight:.2f} bits/weight)")
    t = rep.table([("M", "{}"), ("dense F.linear ms", "{:.2f}"), ("lowbit 2:4 ms", "{:.2f}"),
                   ("speedup", "{:.2f}x"), ("2:4+int4 ms", "{:.2f}"), ("speedup (int4)", "{:.2f}x"),
                   ("target", "{}")], "forward")
    targets = {1: ">= 1.7x", 256: ">= 1.2x"}
    for m in ([1, 256] if args.quick else [1, 8, 64, 256]):
        x = torch.randn(m, K)
        td, ts, tq = H.interleaved([lambda: F.linear(x, p), lambda: sparse24_linear(x, sw),
                                    lambda: sparse24_linear(x, sq)], "cpu", min_run, rounds)
        t.row(m, td * 1e3, ts * 1e3, td / ts, tq * 1e3, td / tq, targets.get(m, "report"))
    # backward to x: grad_y @ W_pruned (lowbit: the op over the compressed weight for M <= 8,
    # chunked decompress + matmul above)
    tdec = H.median_time(lambda: torch.ops.lowbit.sparse24_decompress(sw.values, sw.meta), "cpu",
                         min_run)
    t = rep.table([("backward to x", "{}"), ("dense g @ W ms", "{:.2f}"), ("lowbit ms", "{:.2f}"),
                   ("ratio", "{:.2f}x"), ("path", "{}")], "backward")
    for m in (1, 256):
        g = torch.randn(m, N)
        td, ts = H.interleaved([lambda: g @ p, lambda: _grad_x(g, sw.values, sw.meta)], "cpu",
                               min_run, rounds)
        path = ("sparse24_grad_x (compressed)" if m <= 8 else
                "decompress in 16 MB row chunks + matmul")
        t.row(f"M={m}", td * 1e3, ts * 1e3, td / ts, path)
    rep.note(f"\n(one full {N}x{K} decompress into a fresh tensor: {tdec * 1e3:.1f} ms)")
    rep.save()


def run_cuda(args):
    dev = "cuda"
    torch.manual_seed(0)
    w = (torch.randn(N, K, device=dev) * 0.02).half()
    p, _ = prune_24(w)
    sw = compress_24(p)
    rep = H.Report(f"2:4 sparse linear, CUDA float16, {N}x{K} weight, cuSPARSELt installed: "
                   f"{lowbit.sparse.cusparselt_available()}", args)
    try:
        wss = torch.sparse.to_sparse_semi_structured(p)
        ss_err = None
    except Exception as exc:  # noqa: BLE001 - reported in the table
        wss, ss_err = None, f"{type(exc).__name__}: {exc}"[:60]
    t = rep.table([("M", "{}"), ("dense ms", "{:.3f}"), ("lowbit auto ms", "{}"),
                   ("vs dense", "{:.2f}x"), ("lowbit gather ms", "{:.3f}"),
                   ("torch semi-structured ms", "{}"), ("lowbit vs torch", "{}"), ("target", "{}")])
    for m in ([4096] if args.quick else [1, 16, 4096]):
        x = torch.randn(m, K, device=dev).half()
        td = H.median_time(lambda: F.linear(x, p), dev)
        try:
            ta = H.median_time(lambda: sparse24_linear(x, sw), dev)
        except RuntimeError as exc:
            t.row(m, td * 1e3, f"error: {str(exc)[:60]}", None, None, None, None, None)
            continue
        tg = H.median_time(lambda: sparse24_linear(x, sw, backend="lowbit"), dev)
        if wss is not None:
            try:
                tt = H.median_time(lambda: F.linear(x, wss), dev)
                tts, rel = f"{tt * 1e3:.3f}", f"{tt / ta:.2f}x"
            except Exception as exc:  # noqa: BLE001
                tts, rel = f"n/a ({type(exc).__name__})", ""
        else:
            tts, rel = f"n/a ({ss_err})", ""
        t.row(m, td * 1e3, f"{ta * 1e3:.3f}", td / ta, tg * 1e3, tts, rel,
              ">= 1.3x" if m == 4096 else "report")
    rep.save()


def main():
    ap = H.parser(__doc__)
    ap.add_argument("--llc-mb", type=int, default=480, help="last-level cache to cycle past (MiB)")
    ap.add_argument("--cycled-only", action="store_true", help="only the cycled M = 1 table")
    a = ap.parse_args()
    if a.device == "cuda":
        run_cuda(a)
        return
    json_path = a.json
    if json_path:
        a.json = json_path.replace(".json", "") + ".cycled.json"
    run_cpu_cycled(a)
    a.json = json_path
    if not a.cycled_only:
        run_cpu(a)


if __name__ == "__main__":
    main()
