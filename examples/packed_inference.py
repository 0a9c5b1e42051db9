"""examples/packed_inference.py: packed low-bit inference on CPU — turn an nn.Linear into a
lowbit.nn.QuantLinear, compare it with the float layer, time batch-1 calls, save and reload it,
and backpropagate to its input through the frozen packed weight."""
import io
import time

import torch

import lowbit


def main():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4096, 4096)
    with torch.no_grad():
        lin.weight.mul_(0.02 / lin.weight.std())
    for spec in (lowbit.QuantSpec("int", 4, 128), lowbit.QuantSpec("int", 2, 64),
                 lowbit.QuantSpec("nf", 3, 128)):
        q = lowbit.nn.QuantLinear.from_linear(lin, spec)
        x = torch.randn(1, 4096)
        ref = torch.nn.functional.linear(x, lowbit.dequantize(q.qweight), q.bias)
        err = ((q(x) - ref).abs().max() / ref.abs().max()).item()
        t = []
        for _ in range(20):
            t0 = time.perf_counter()
            q(x)
            t.append(time.perf_counter() - t0)
        t.sort()
        print(f"{q}\n  max rel. diff vs F.linear(x, dequantize(W)): {err:.2e}; "
              f"batch-1 call {t[len(t) // 2] * 1e3:.2f} ms")
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    q2 = lowbit.nn.QuantLinear(4096, 4096, spec)
    q2.load_state_dict(torch.load(buf))
    x = torch.randn(3, 4096, requires_grad=True)
    q2(x).square().mean().backward()
    print(f"reloaded {spec.name}: {len(buf.getvalue()) / 2**20:.2f} MiB state_dict; "
          f"grad_x norm {x.grad.norm():.4f}")


if __name__ == "__main__":
    main()
