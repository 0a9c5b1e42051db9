"""python/lowbit/_ops.py: loads lowbit._C into PyTorch's dispatcher (after checking the torch
version: torch first, then the extension). Importing this module is what makes
``torch.ops.lowbit.*`` exist; each family's module (fake_quant.py, qlinear.py, kl_loss.py,
sparse/sparse24.py, clip_search.py) registers its ops' fake kernels and autograd beside its
wrappers."""
import os
import re

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("lowbit needs PyTorch >= 2.11, and torch is not installed "
                      "(pip install torch)") from exc

MIN_TORCH = (2, 11)


def _version_tuple(v):
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


if _version_tuple(torch.__version__) < MIN_TORCH:
    raise ImportError(f"lowbit needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (its stable C ABI); "
                      f"found torch {torch.__version__}")

from . import _C  # noqa: E402  (after torch: the extension resolves symbols from libtorch)

_libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
_cuda_lib = os.path.join(_libdir, "libtorch_cuda.so")
_C.load(os.path.join(_libdir, "libtorch_cpu.so"),
        _cuda_lib if os.path.exists(_cuda_lib) else None, torch.__version__)
