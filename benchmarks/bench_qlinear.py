"""benchmarks/bench_qlinear.py: packed low-bit linear (lowbit.quant_linear) against torch's
float32 / bfloat16 F.linear and torch's own int4 kernel, same process, same inputs. Median
wall time per call; "bits/w" counts codes + scales + zero points per weight.

    python benchmarks/bench_qlinear.py [--device cpu|cuda] [--quick] [--threads N] [--json PATH]

CPU baselines: F.linear float32, F.linear bfloat16, and for int4
torch.ops.aten._weight_int4pack_mm_for_cpu after _convert_weight_to_int4pack_for_cpu (group 128,
bf16 activations and scales). CUDA baselines: F.linear float16 and torch's int4 tinygemm
(_weight_int4pack_mm after _convert_weight_to_int4pack), M = 1..16 as well. Prints markdown.
"""
import torch
import torch.nn.functional as F

import _harness as H
import lowbit
from lowbit.qlinear import ensure_kernel_layout

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (K in, N out)
SPECS = [("int", 4, 128, False), ("int", 3, 128, False), ("int", 2, 64, False),
         ("nf", 4, 128, False), ("nf", 3, 128, False)]


def timeit(fn, device):
    """Median ms per call."""
    return H.median_time(fn, device, min_run=0.25) * 1e3


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


def main():
    ap = H.parser(__doc__)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; skipped")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = SHAPES[:1] if args.quick else SHAPES
    ms = ([1, 16] if args.quick else [1, 16, 256]) if dev == "cpu" else \
        ([1, 16] if args.quick else [1, 2, 4, 8, 16, 256])
    specs = SPECS[:3] if args.quick else SPECS
    act = torch.bfloat16 if dev == "cpu" else torch.float16
    rep = H.Report(f"bench_qlinear device={dev}", args)
    t = rep.table([("K->N", "{}"), ("M", "{}"), ("impl", "{}"), ("bits/w", "{:.3f}"),
                   ("ms", "{:.3f}"), ("vs f32", "{:.2f}x"), ("vs bf16/f16", "{:.2f}x"),
                   ("vs torch int4", "{:.2f}x")])
    gen = torch.Generator().manual_seed(0)
    for K, N in shapes:
        w = (torch.randn(N, K, generator=gen) * 0.02).to(dev)
        w16 = w.to(act)
        # the CPU kernel layout is built once here, as QuantLinear does (not timed)
        qws = {s: ensure_kernel_layout(lowbit.quantize(w, lowbit.QuantSpec(*s))) for s in specs}
        # torch's int4 kernels take bf16 activations and scales (tinygemm on CUDA: bf16 only)
        x4dt = torch.bfloat16
        try:
            t4 = torch_int4(w.cpu(), 128, dev, x4dt)
        except Exception as e:  # noqa: BLE001 - report and go on
            t4 = None
            rep.note(f"<!-- torch int4 unavailable: {type(e).__name__}: {e} -->")
        for M in ms:
            x = torch.randn(M, K, generator=gen).to(dev)
            x16 = x.to(act)
            x4 = x.to(x4dt)
            rows = []
            base32 = timeit(lambda: F.linear(x, w), dev) if dev == "cpu" else None
            base16 = timeit(lambda: F.linear(x16, w16), dev)
            if dev == "cpu":
                rows.append(("torch F.linear f32", 32.0, base32))
            rows.append((f"torch F.linear {str(act).split('.')[-1]}", 16.0, base16))
            ti4 = None
            if t4 is not None:
                fn = (torch.ops.aten._weight_int4pack_mm_for_cpu if dev == "cpu"
                      else torch.ops.aten._weight_int4pack_mm)
                try:
                    ti4 = timeit(lambda: fn(x4, t4[0], 128, t4[1]), dev)
                    rows.append(("torch int4 g128 (bf16)" if dev == "cpu" else
                                 "torch int4 tinygemm g128 (bf16)", 4 + 2 * 16 / 128, ti4))
                except Exception as e:  # noqa: BLE001
                    rep.note(f"<!-- torch int4 mm failed: {type(e).__name__}: {e} -->")
            for s, qw in qws.items():
                xx = x if dev == "cpu" else x16
                tq = timeit(lambda: lowbit.quant_linear(xx, qw), dev)
                rows.append((f"lowbit {qw.spec.name}" + (" (f32 x)" if dev == "cpu" else " (f16 x)"),
                             qw.bits_per_weight, tq))
            for name, bpw, tm in rows:
                t.row(f"{K}->{N}", M, name, bpw, tm, base32 / tm if base32 else None, base16 / tm,
                      ti4 / tm if ti4 else None)
    rep.save()


if __name__ == "__main__":
    main()
