"""benchmarks/bench_qlinear.py: packed low-bit linear (lowbit.quant_linear) in each accuracy mode
against torch's float32 / bfloat16 F.linear and torch's own int4 kernel, same process, same
inputs. Median wall time per call. Columns: "mode" (lowbit's act, and the scheme "auto" ran:
int8x2 = int8 activations + an int8 residual, float), "bits/w" (codes + scales + zero points
per weight), "GB/s" (those weight bytes / time: the effective weight bandwidth), "% read" (that
against a streaming read of a buffer of the same size, torch sum, measured in the same run just
before), "err gauss" / "err heavy" (||y - y_ref|| / ||y_ref|| against float64 F.linear over the
dequantized weight, on Gaussian and heavy-tailed activations: FORMATS.md 4).

    python benchmarks/bench_qlinear.py [--device cpu|cuda] [--quick] [--big] [--threads N]
                                       [--json PATH]
    python benchmarks/bench_qlinear.py --ggml [--isa ISA] [--threads N] [--quick] [--json PATH]

--ggml: llama.cpp's block types instead (q4_k, q2_k, q3_k, q6_k, q8_0, q4_0 at 4096 -> 4096 and
4096 -> 11008, M = 1 and 16; CPU), each mode against torch's float32 F.linear of the same
process, timed interleaved (median of 3 alternating rounds: the machine may be shared); the
errors against float64 F.linear of gguf-py's dequantize of the blocks. --isa forces lowbit's CPU
ISA (as LOWBIT_CPU_ISA does).

    python benchmarks/bench_qlinear.py --prefill [--isa ISA] [--threads N] [--quick] [--json PATH]

(--prefill-isa is the same flag as --isa.)

--prefill: the batched path (M = 16 and 256, CPU) against torch's bfloat16 and float32 F.linear,
every implementation cycling through copies of its layer totalling 1.5x the last-level cache
(as a model's layers do), timed interleaved (median of 3 alternating rounds: the machine may be
shared); lowbit with float32 x in each mode and bfloat16 x in auto (a bf16-cast model's
prefill). "vs bf16" / "vs f32": torch's time / lowbit's. --prefill-isa forces lowbit's CPU ISA (as
LOWBIT_CPU_ISA does; torch keeps its own: on this class of Xeon its bf16 F.linear is oneDNN's
AMX kernel).

--big adds 16384 -> 28672 (a weight larger than the last-level cache; needs ~12 GB of memory).
CPU baselines: F.linear float32, F.linear bfloat16, and for int4
torch.ops.aten._weight_int4pack_mm_for_cpu after _convert_weight_to_int4pack_for_cpu (group 128,
bf16 activations and scales). CUDA baselines: F.linear float16 and torch's int4 tinygemm
(_weight_int4pack_mm after _convert_weight_to_int4pack), M = 1..16 as well. Prints markdown.
"""
import torch
import torch.nn.functional as F

import _harness as H
import lowbit
from lowbit import _constants as C
from lowbit import _ops
from lowbit.qlinear import ensure_kernel_layout

SHAPES = [(4096, 11008), (11008, 4096)]  # (K in, N out)
BIG = [(16384, 28672)]
SPECS = [("int", 4, 128, False), ("int", 3, 128, False), ("int", 2, 128, False),
         ("int", 2, 64, False), ("nf", 4, 128, False), ("fp", 4, 128, False)]
MODES = ("float", "auto", "int8")


def timeit(fn, device, quick=False):
    """Median ms per call."""
    return H.median_time(fn, device, min_run=0.1 if quick else 0.25) * 1e3


def torch_int4(w, g, device, act_dtype):
    """(packed, scales_and_zeros) for torch's int4 kernels (asymmetric, group g): torch
    dequantises as (q - 8) * scale + zero."""
    N, K = w.shape
    wg = w.float().reshape(N, K // g, g)
    mx, mn = wg.amax(-1), wg.amin(-1)
    s = ((mx - mn).clamp(min=1e-5) / 15)
    z = (-mn / s).round().clamp(0, 15)
    q = (torch.round(wg / s.unsqueeze(-1)) + z.unsqueeze(-1)).clamp(0, 15).to(torch.int32)
    q = q.reshape(N, K)
    zero = (8 - z) * s
    sz = torch.stack([s, zero], -1).transpose(0, 1).contiguous().to(act_dtype)  # (K/g, N, 2)
    if device == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    else:
        qu8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).to(device)
        packed = torch.ops.aten._convert_weight_to_int4pack(qu8, 8)
    return packed, sz.to(device)


def heavy_tailed(M, K, gen):
    """FORMATS.md 4's second input kind: Student-t (3 dof), every 128th channel times 30."""
    chi2 = (torch.randn(M, K, 3, generator=gen) ** 2).sum(-1) / 3
    x = torch.randn(M, K, generator=gen) / chi2.clamp_min(1e-6).sqrt()
    x[:, 5::128] *= 30
    return x


def rel_err(y, x, w64):
    """Over the outputs w64 has rows for (all of them, or the first ERR_ROWS of a --big layer)."""
    ref = F.linear(x.double(), w64)
    y = y[..., :w64.shape[0]]
    return ((y.double() - ref).norm() / ref.norm()).item()


ERR_ROWS = 2048  # --big: the error columns use the first 2048 outputs (a float64 W is 3.8 GB)


def read_bw(nbytes, device, quick):
    """GB/s of a streaming read (torch sum) of a float32 buffer of nbytes."""
    buf = torch.ones(max(1, nbytes // 4), device=device)
    t = timeit(lambda: buf.sum(), device, quick)
    return buf.numel() * 4 / (t * 1e-3) / 1e9


GGML_TYPES = ["q4_k", "q2_k", "q3_k", "q6_k", "q8_0", "q4_0"]
GGML_SHAPES = [(4096, 4096), (4096, 11008)]


def gguf_w64(qw):
    """W of a block type as gguf-py dequantizes its blocks, float64 (independent of lowbit)."""
    import gguf
    import numpy as np

    n, k = qw.shape
    t = gguf.GGMLQuantizationType[qw.spec.format.upper()]
    return torch.from_numpy(gguf.quants.dequantize(qw.codes.numpy(), t).reshape(n, k)
                            .astype(np.float64))


def bench_ggml(args):
    """--ggml: the block types' CPU kernels in each mode against float32 F.linear."""
    if args.isa:
        lowbit.set_cpu_isa(args.isa)
    rep = H.Report(f"bench_qlinear --ggml device=cpu isa={lowbit.get_cpu_isa()}", args)
    t = rep.table([("K->N", "{}"), ("M", "{}"), ("type", "{}"), ("mode", "{}"),
                   ("bits/w", "{:.3f}"), ("f32 ms", "{:.3f}"), ("lowbit ms", "{:.3f}"),
                   ("vs f32", "{:.2f}x"), ("err gauss", "{:.1e}"), ("err heavy", "{:.1e}")])
    gen = torch.Generator().manual_seed(0)
    min_run = 0.05 if args.quick else 0.15
    for K, N in GGML_SHAPES[:1] if args.quick else GGML_SHAPES:
        w = torch.randn(N, K, generator=gen) * 0.02
        for name in GGML_TYPES:
            qw = lowbit.quantize(w, lowbit.QuantSpec(name))
            w64 = gguf_w64(qw)
            f, b, g, sym = qw.spec.op_args(K)
            for M in (1, 16):
                xg, xh = torch.randn(M, K, generator=gen), heavy_tailed(M, K, gen)
                fns = [lambda: F.linear(xg, w)] + [
                    (lambda a: lambda: lowbit.quant_linear(xg, qw, act=a))(a) for a in MODES]
                times = H.interleaved(fns, "cpu", min_run)
                for mode, tq in zip(MODES, times[1:]):
                    sch = _ops._C.ql_scheme(C.QL_ACT_CODES[mode], f, b, sym, M, 0)
                    ran = f"{mode}={C.QL_SCHEMES[sch]}" if mode == "auto" else mode
                    t.row(f"{K}->{N}", M, name, ran, qw.bits_per_weight, times[0] * 1e3,
                          tq * 1e3, times[0] / tq,
                          rel_err(lowbit.quant_linear(xg, qw, act=mode), xg, w64),
                          rel_err(lowbit.quant_linear(xh, qw, act=mode), xh, w64))
    rep.save()


def main():
    ap = H.parser(__doc__)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--big", action="store_true", help="add 16384 -> 28672 (beyond the LLC)")
    ap.add_argument("--ggml", action="store_true", help="llama.cpp's block types (CPU)")
    ap.add_argument("--prefill", action="store_true", help="the batched rows (M = 16, 256; CPU)")
    ap.add_argument("--isa", "--prefill-isa", dest="isa", default=None,
                    help="--ggml / --prefill: force lowbit's CPU ISA")
    args = ap.parse_args()
    args.prefill_isa = args.isa
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ggml:
        bench_ggml(args)
        return
    if args.prefill:
        bench_prefill(args)
        return
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; skipped")
        return
    shapes = (SHAPES[:1] if args.quick else SHAPES) + (BIG if args.big else [])
    ms = ([1, 16] if args.quick else [1, 4, 16, 256]) if dev == "cpu" else \
        ([1, 16] if args.quick else [1, 2, 4, 8, 16, 256])
    specs = SPECS[:4] if args.quick else SPECS
    act = torch.bfloat16 if dev == "cpu" else torch.float16
    rep = H.Report(f"bench_qlinear device={dev}", args)
    t = rep.table([("K->N", "{}"), ("M", "{}"), ("impl", "{}"), ("mode", "{}"),
                   ("bits/w", "{:.3f}"), ("ms", "{:.3f}"), ("vs f32", "{:.2f}x"),
                   ("vs torch int4", "{:.2f}x"), ("GB/s", "{:.1f}"), ("% read", "{:.0f}%"),
                   ("err gauss", "{:.1e}"), ("err heavy", "{:.1e}")])
    gen = torch.Generator().manual_seed(0)
    for K, N in shapes:
        big = (K, N) in BIG
        w = (torch.randn(N, K, generator=gen) * 0.02)
        w16 = w.to(act).to(dev)
        # the CPU kernel layout is built once here, as QuantLinear's first call does (not timed)
        qws = {s: ensure_kernel_layout(lowbit.quantize(w.to(dev), lowbit.QuantSpec(*s)))
               for s in (specs[:1] + specs[3:4] if big else specs)}
        r = ERR_ROWS if big else N

        def w64(qw):
            z = None if qw.zeros is None else qw.zeros[:r].cpu()
            return lowbit.dequantize(lowbit.QuantizedWeight(
                qw.codes[:r].cpu(), qw.scales[:r].cpu(), z, qw.spec, (r, K),
                torch.float32)).double()

        w64s = {s: w64(qw) for s, qw in qws.items()}
        w = w.to(dev)
        x4dt = torch.bfloat16  # torch's int4 kernels take bf16 activations and scales
        try:
            t4 = torch_int4(w.cpu(), 128, dev, x4dt)
        except Exception as e:  # noqa: BLE001 - report and go on
            t4 = None
            rep.note(f"<!-- torch int4 unavailable: {type(e).__name__}: {e} -->")
        for M in ms if not big else [1, 16]:
            xg = torch.randn(M, K, generator=gen)
            xh = heavy_tailed(M, K, gen)
            x = xg.to(dev)
            x16 = x.to(act)
            rows = []
            base32 = timeit(lambda: F.linear(x, w), dev, args.quick) if dev == "cpu" else None
            base16 = timeit(lambda: F.linear(x16, w16), dev, args.quick)
            if dev == "cpu":
                rows.append(("torch F.linear f32", "-", 32.0, base32, None, None))
            rows.append((f"torch F.linear {str(act).split('.')[-1]}", "-", 16.0, base16, None,
                         None))
            ti4 = None
            if t4 is not None:
                fn = (torch.ops.aten._weight_int4pack_mm_for_cpu if dev == "cpu"
                      else torch.ops.aten._weight_int4pack_mm)
                x4 = x.to(x4dt)
                try:
                    ti4 = timeit(lambda: fn(x4, t4[0], 128, t4[1]), dev, args.quick)
                    rows.append(("torch int4 g128 (bf16)" if dev == "cpu" else
                                 "torch int4 tinygemm g128 (bf16)", "-", 4 + 2 * 16 / 128, ti4,
                                 None, None))
                except Exception as e:  # noqa: BLE001
                    rep.note(f"<!-- torch int4 mm failed: {type(e).__name__}: {e} -->")
            for s, qw in qws.items():
                xx = x if dev == "cpu" else x16
                f, b, g, sym = qw.spec.op_args(K)
                for mode in MODES if dev == "cpu" else ("auto",):
                    tq = timeit(lambda: lowbit.quant_linear(xx, qw, act=mode), dev, args.quick)
                    eg = rel_err(lowbit.quant_linear(xg.to(xx), qw, act=mode).cpu(), xg, w64s[s])
                    eh = rel_err(lowbit.quant_linear(xh.to(xx), qw, act=mode).cpu(), xh, w64s[s])
                    ran = mode
                    if dev == "cpu" and mode == "auto":
                        sch = _ops._C.ql_scheme(C.QL_ACT_CODES[mode], f, b, sym, M,
                                                C.ql_packable(K, g))
                        ran = f"auto={C.QL_SCHEMES[sch]}"
                    rows.append((f"lowbit {qw.spec.name}", ran, qw.bits_per_weight, tq, eg, eh))
            for name, mode, bpw, tm, eg, eh in rows:
                nbytes = bpw * N * K / 8
                gbs = nbytes / (tm * 1e-3) / 1e9
                t.row(f"{K}->{N}", M, name, mode, bpw, tm, base32 / tm if base32 else None,
                      ti4 / tm if ti4 else None, gbs,
                      100 * gbs / read_bw(int(nbytes), dev, args.quick) if M == 1 else None,
                      eg, eh)
    rep.save()


PREFILL_SPECS = [("int", 4, 128, False), ("int", 2, 64, False), ("nf", 4, 128, False),
                 ("fp", 4, 128, False)]


def llc_bytes():
    """The largest cache's size (sysfs: the LLC), else 512 MiB."""
    import glob

    best = 0
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(d + "/size") as f:
                v = f.read().strip()
            best = max(best, int(v[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(v[-1], 1))
        except (OSError, ValueError):
            pass
    return best or 512 << 20


def cycled(make, nbytes, llc):
    """Enough distinct copies (make(i)) of one layer that together they exceed 1.5x the LLC, and
    a callable factory cycling through them: cyc(f)() runs f(copy) on the next copy each call."""
    n = max(2, -(-3 * llc // max(1, int(2 * nbytes))))
    copies = [make(i) for i in range(n)]
    state = [0]

    def cyc(f):
        def run():
            state[0] = (state[0] + 1) % n
            return f(copies[state[0]])
        return run
    return copies, cyc


def bench_prefill(args):
    """--prefill: M = 16 / 256 against torch's bf16 and f32 F.linear, weights cycled past the
    LLC."""
    if args.prefill_isa:
        lowbit.set_cpu_isa(args.prefill_isa)
    isa = lowbit.get_cpu_isa()
    rep = H.Report(f"bench_qlinear --prefill device=cpu isa={isa}", args)
    t = rep.table([("K->N", "{}"), ("M", "{}"), ("impl", "{}"), ("x", "{}"), ("mode", "{}"),
                   ("copies", "{}"), ("ms", "{:.2f}"), ("vs bf16", "{:.2f}x"),
                   ("vs f32", "{:.2f}x"), ("err gauss", "{:.1e}"), ("err heavy", "{:.1e}")])
    llc = llc_bytes()
    rep.note(f"<!-- LLC {llc >> 20} MiB; every implementation cycles through copies of its "
             "layer totalling > 1.5x that -->")
    gen = torch.Generator().manual_seed(0)
    min_run = 0.1 if args.quick else 0.25
    specs = PREFILL_SPECS[:1] if args.quick else PREFILL_SPECS
    for K, N in SHAPES[:1] if args.quick else SHAPES:
        w = torch.randn(N, K, generator=gen) * 0.02
        w32s, cyc32 = cycled(lambda i: w.clone(), w.numel() * 4, llc)
        w16s, cyc16 = cycled(lambda i: w.to(torch.bfloat16), w.numel() * 2, llc)
        xs = {M: (torch.randn(M, K, generator=gen), heavy_tailed(M, K, gen)) for M in (16, 256)}
        for s in specs:  # one spec's copies at a time (each set is > 1.5x the LLC)
            qw = ensure_kernel_layout(lowbit.quantize(w, lowbit.QuantSpec(*s)))
            w64 = lowbit.dequantize(qw).double()
            f, b, g, sym = qw.spec.op_args(K)

            def copy(i, qw=qw):
                c = lowbit.QuantizedWeight(qw.codes.clone(), qw.scales.clone(),
                                           None if qw.zeros is None else qw.zeros.clone(),
                                           qw.spec, qw.shape, qw.dtype)
                return ensure_kernel_layout(c)
            copies, cyc = cycled(copy, qw.bits_per_weight * N * K / 8, llc)
            for M, (xg, xh) in xs.items():
                xg16 = xg.to(torch.bfloat16)
                rows = [("torch F.linear", "bf16", "-", len(w16s), None),
                        ("torch F.linear", "f32", "-", len(w32s), None)]
                fns = [cyc16(lambda ww: F.linear(xg16, ww)), cyc32(lambda ww: F.linear(xg, ww))]
                for xdt, mode in [("f32", m) for m in MODES] + [("bf16", "auto")]:
                    xx = xg if xdt == "f32" else xg16
                    sch = _ops._C.ql_scheme(C.QL_ACT_CODES[mode], f, b, sym, M,
                                            C.ql_packable(K, g))
                    ran = f"auto={C.QL_SCHEMES[sch]}" if mode == "auto" else mode
                    rows.append((f"lowbit {qw.spec.name}", xdt, ran, len(copies), mode))
                    fns.append(cyc(lambda q, xx=xx, mode=mode:
                                   lowbit.quant_linear(xx, q, act=mode)))
                times = H.interleaved(fns, "cpu", min_run)
                for (name, xdt, ran, n, mode), tm in zip(rows, times):
                    eg = eh = None
                    if mode is not None:
                        dt = torch.float32 if xdt == "f32" else torch.bfloat16
                        eg, eh = (rel_err(lowbit.quant_linear(v.to(dt), qw, act=mode).float(),
                                          v.to(dt).float(), w64) for v in (xg, xh))
                    t.row(f"{K}->{N}", M, name, xdt, ran, n, tm * 1e3, times[0] / tm,
                          times[1] / tm, eg, eh)
            del copies, cyc
    rep.save()


if __name__ == "__main__":
    main()
