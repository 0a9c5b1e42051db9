"""benchmarks/bench_fake_quant.py: fused fake-quant forward+backward (lowbit) against the plain
PyTorch quantizer written the BitDistiller way, same process, same inputs: median time, ratio,
and peak extra memory (measured per variant in a child process from peak RSS).

    python benchmarks/bench_fake_quant.py [--device cpu|cuda] [--quick] [--json PATH]

Prints a markdown table. "extra MB" is peak memory above the inputs (w, upstream grad) and the
two outputs every implementation must produce (Q(w) and dL/dw): the temporaries. "f16-scale ms"
is lowbit with QuantSpec(scale_dtype="float16") (scales rounded to float16, FORMATS.md 1.6) and
"f16/f32" its time over the float32 spec's.

A second table times llama.cpp's block types (FORMATS.md 1.8) on a 4096 x 4096 weight: fused
forward+backward against the plain-PyTorch reference of tests/reference_ggml.py (the same 1.8
rules as autograd expressions), and lowbit.quantize (the GGUF blocks) / lowbit.dequantize.
"""
import os
import sys

import torch

import _harness as H
import lowbit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import reference_ggml as RG  # noqa: E402  (the plain-PyTorch 1.8 baseline)

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
    if impl in ("lowbit", "lowbit-f16scale"):
        sd = "float16" if impl == "lowbit-f16scale" else "float32"
        q = lowbit.fake_quantize(w, lowbit.QuantSpec(fmt, bits, g, scale_dtype=sd))
    else:
        q = baseline_fake_quant(w, fmt, bits, g)
    q.backward(up)
    return q


GGML_TYPES = list(RG.TYPES)


def step_ggml(impl, w, up, spec):
    w.grad = None
    q = lowbit.fake_quantize(w, spec) if impl == "lowbit" else RG.fake_quant(w, spec.format)
    q.backward(up)
    return q


def ggml_table(rep, a, min_run):
    """The block types: fwd+bwd vs the reference, quantize and dequantize (4096 x 4096)."""
    t = rep.table([("type", "{}"), ("baseline ms", "{:.1f}"), ("lowbit ms", "{:.2f}"),
                   ("speedup", "{:.1f}x"), ("quantize ms", "{:.2f}"), ("dequantize ms", "{:.2f}"),
                   ("dequantize GB/s", "{:.0f}")], name="ggml")
    n = k = 4096
    torch.manual_seed(0)
    w = (torch.randn(n, k, device=a.device) * 0.02).requires_grad_(True)
    up = torch.randn(n, k, device=a.device)
    for fmt in GGML_TYPES:
        spec = lowbit.QuantSpec(fmt)
        try:
            tb = H.median_time(lambda: step_ggml("baseline", w, up, spec), a.device, min_run)
        except Exception as e:  # noqa: BLE001 - the reference is a test helper: report, go on
            tb = None
            rep.note(f"<!-- {fmt}: reference baseline failed on {a.device}: {e} -->")
        tl = H.median_time(lambda: step_ggml("lowbit", w, up, spec), a.device, min_run)
        wd = w.detach()
        tq = H.median_time(lambda: lowbit.quantize(wd, spec), a.device, min_run)
        qw = lowbit.quantize(wd, spec)
        td = H.median_time(lambda: lowbit.dequantize(qw), a.device, min_run)
        moved = qw.codes.numel() + 4 * n * k  # blocks read, float32 written
        t.row(fmt, None if tb is None else tb * 1e3, tl * 1e3, None if tb is None else tb / tl,
              tq * 1e3, td * 1e3, moved / td / 1e9)


def _mem_case(impl, n, k, fmt, bits, g, device="cpu"):
    """Builds the inputs of one step; returns the step (for the peak-memory measurement)."""
    torch.manual_seed(0)
    w = (torch.randn(n, k, device=device) * 0.02).requires_grad_(True)
    up = torch.randn(n, k, device=device)
    return lambda: step(impl, w, up, fmt, bits, g)


def peak_extra_mb(impl, n, k, fmt, bits, g, device):
    """Peak memory above inputs and the two outputs (a fresh child process on CPU)."""
    if device == "cuda":
        grow = H.cuda_peak_bytes(_mem_case(impl, n, k, fmt, bits, g, device))
    else:
        grow = H.child_peak_bytes(__file__, "_mem_case", impl, n, k, fmt, bits, g)
    return H.mb(grow - 2 * n * k * 4)


def main():
    a = H.parser(__doc__).parse_args()
    shapes = SHAPES[:1] if a.quick else SHAPES
    rep = H.Report(f"fake-quant forward+backward, float32, {a.device}", a)
    t = rep.table([("shape", "{}"), ("format", "{}"), ("baseline ms", "{:.1f}"),
                   ("lowbit ms", "{:.1f}"), ("speedup", "{:.2f}x"), ("f16-scale ms", "{:.1f}"),
                   ("f16/f32", "{:.3f}"), ("baseline extra MB", "{:.0f}"),
                   ("lowbit extra MB", "{:.0f}"), ("weight MB", "{:.0f}")])
    min_run = 0.5 if a.quick else 2.0
    for n, k in shapes:
        torch.manual_seed(0)
        w = (torch.randn(n, k, device=a.device) * 0.02).requires_grad_(True)
        up = torch.randn(n, k, device=a.device)
        for fmt, bits, g in CASES:
            tb = H.median_time(lambda: step("baseline", w, up, fmt, bits, g), a.device, min_run)
            # the two lowbit variants alternate, so a shared machine's noise hits both alike
            tl, th = H.interleaved([lambda i=i: step(i, w, up, fmt, bits, g)
                                    for i in ("lowbit", "lowbit-f16scale")], a.device, min_run)
            mb_b, mb_l = (peak_extra_mb(impl, n, k, fmt, bits, g, a.device)
                          for impl in ("baseline", "lowbit"))
            t.row(f"{n}x{k}", f"{fmt}{bits}-g{g}", tb * 1e3, tl * 1e3, tb / tl, th * 1e3, th / tl,
                  mb_b, mb_l, H.mb(n * k * 4))
    ggml_table(rep, a, 0.2 if a.quick else min_run)
    rep.save()


if __name__ == "__main__":
    main()
