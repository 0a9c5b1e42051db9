"""benchmarks/bench_qlinear_ggml_cuda.py: quant_linear on CUDA for llama.cpp's block types
(FORMATS.md 1.8; cuda/qlinear.cu's QlcBlocks GEMV / WMMA kernels and qlc_blk_int8_kernel)
against torch's float16 F.linear, same process, same inputs, K -> N = 4096 -> 11008. Median
time per call (CUDA events). Columns: "act" (lowbit's accuracy mode), "bits/w" (the GGUF block
bytes per weight), "GB/s" (those bytes / time), "vs f16" (F.linear float16 time / lowbit's),
"err" (||y - y_ref|| / ||y_ref|| against float64 F.linear over the dequantized weight,
Gaussian x: FORMATS.md 4). x is float16. Prints markdown.

    python benchmarks/bench_qlinear_ggml_cuda.py --device cuda [--quick] [--json PATH]

CUDA only (the CPU kernels of the block types are benchmarks/bench_qlinear.py's, ggmlkern's).
While the quant_linear glue does not call lb_ql_forward_blk_cuda yet, it prints that and exits 0.
"""
import torch
import torch.nn.functional as F

import _harness as H
import lowbit

TYPES = ["q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
K, N = 4096, 11008


def main():
    a = H.parser(__doc__, devices=("cuda",)).parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device; skipped")
        return
    rep = H.Report("bench_qlinear_ggml_cuda: the block types on CUDA", a)
    types = ["q4_0", "q4_k", "q6_k"] if a.quick else TYPES
    cases = [(1, "float"), (1, "int8"), (16, "float"), (16, "int8"), (256, "float")]
    min_run = 0.1 if a.quick else 0.25
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=gen) * 0.02
    xs = {M: torch.randn(M, K, generator=gen).half() for M, _ in cases}
    probe = lowbit.quantize(w[:8, :256].cuda(), lowbit.QuantSpec("q4_k"))
    try:
        lowbit.quant_linear(xs[1][:, :256].cuda(), probe)
    except RuntimeError as e:
        rep.note(f"quant_linear on CUDA refuses the block types ({e}): the glue does not call "
                 f"lb_ql_forward_blk_cuda yet (MILESTONES.txt); nothing timed")
        rep.save()
        return
    t = rep.table([("type", "{}"), ("M", "{}"), ("act", "{}"), ("bits/w", "{:.3f}"),
                   ("ms", "{:.3f}"), ("GB/s", "{:.0f}"), ("f16 ms", "{:.3f}"),
                   ("vs f16", "{:.2f}x"), ("err", "{:.1e}")])
    w16 = w.half().cuda()
    for fmt in types:
        qw = lowbit.quantize(w.cuda(), lowbit.QuantSpec(fmt))
        W = lowbit.dequantize(qw).double().cpu()
        nbytes = qw.codes.numel()
        for M, act in cases:
            x = xs[M].cuda()
            tl = H.median_time(lambda: lowbit.quant_linear(x, qw, act=act), "cuda", min_run)
            tf = H.median_time(lambda: F.linear(x, w16), "cuda", min_run)
            y = lowbit.quant_linear(x, qw, act=act).double().cpu()
            ref = F.linear(xs[M].double(), W)
            err = ((y - ref).norm() / ref.norm()).item()
            t.row(fmt, M, act, nbytes * 8 / (N * K), tl * 1e3, nbytes / tl / 1e9, tf * 1e3,
                  tf / tl, err)
    rep.save()


if __name__ == "__main__":
    main()
