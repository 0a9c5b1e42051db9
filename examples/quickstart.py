"""examples/quickstart.py: a minute with lowbit on CPU — quantize a weight to every format,
compare the error and the storage, and run the fused fake-quant op forward and backward."""
import time

import torch

import lowbit


def main():
    torch.manual_seed(0)
    print("lowbit", lowbit.build_info())
    w = torch.randn(1024, 1024) * 0.02
    print("\n| format | rel. error | bits/weight |\n|---|---|---|")
    specs = [lowbit.QuantSpec("int", b, 128) for b in (2, 3, 4)] + [
        lowbit.QuantSpec("nf", 3, 128), lowbit.QuantSpec("nf", 4, 128),
        lowbit.QuantSpec("fp", 3, 128), lowbit.QuantSpec("fp", 4, 128),
        lowbit.QuantSpec("nf", 4, 64, symmetric=True)]
    for spec in specs:
        qw = lowbit.quantize(w, spec)
        err = (lowbit.dequantize(qw) - w).norm() / w.norm()
        print(f"| {spec.name} | {err:.4f} | {qw.bits_per_weight:.3f} |")

    # QAT building block: the fused fake-quant op is differentiable; with ste="bitdistiller"
    # each group's max/min weights also receive the gradient of the scale they set.
    w = (torch.randn(4096, 4096) * 0.02).requires_grad_(True)
    spec = lowbit.QuantSpec("int", 2, 64)
    t0 = time.time()
    q = lowbit.fake_quantize(w, spec)
    q.backward(torch.randn_like(q))
    print(f"\nfake_quantize forward+backward of a 4096x4096 weight ({spec.name}): "
          f"{(time.time() - t0) * 1e3:.0f} ms; grad norm {w.grad.norm():.3f}")

if __name__ == "__main__":
    main()
