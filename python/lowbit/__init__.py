"""lowbit: sub-4-bit LLM quantization for PyTorch — C/CUDA ops in torch's dispatcher
(torch.ops.lowbit.*) with thin Python wrappers. This file owns the public namespace (__all__),
the CPU ISA switch and build_info."""
import os as _os

from . import _ops  # first: checks the torch version, loads torch.ops.lowbit.*
from . import _autograd
from . import data, distill, nn, sparse  # lowbit.nn, lowbit.sparse, ... namespaces
from . import hf  # registers the "lowbit" quantizer with transformers when it is imported
from ._constants import ISA_CODES as _ISA_CODES
from ._version import __version__
from . import export  # a callable module: lowbit.export(model, out, format, ...)
from . import gguf  # lowbit.gguf.recipe / tensor_types: llama-quantize's per-tensor types
from .fake_quant import dequantize, fake_quantize, quantize
from .kl_loss import GammaEstimator, estimate_gamma, fused_linear_kl_loss, kl_div_loss
from .qat import QATConfig, cache_quantized_weights, calibrate_clip_, convert_, quantize_
from .qlinear import quant_linear
from .qweight import QuantizedWeight
from .serialization import load_quantized, save_quantized
from .sparse import sparsify_
from .spec import QuantSpec

_autograd.cover_unregistered()  # last: every family has registered its formulas by now

_ISA_NAMES = {v: k for k, v in _ISA_CODES.items()}
_ISA_AUTO = _ops._C.get_isa()  # the best this CPU runs, chosen at load


def available_cpu_isas():
    """The CPU kernel variants this machine can run, e.g. ['scalar', 'avx2', 'avx512']."""
    return [n for n, c in _ISA_CODES.items() if _ops._C.isa_supported(c)]


def set_cpu_isa(name):
    """Forces the CPU kernel variant: 'scalar' (the plain C twins), 'avx2', 'avx512', or 'auto'."""
    if name == "auto":
        _ops._C.set_isa(_ISA_AUTO)
        return
    if name not in _ISA_CODES:
        raise ValueError(f"isa: must be 'auto' or one of {list(_ISA_CODES)}, got {name!r}")
    if not _ops._C.isa_supported(_ISA_CODES[name]):
        raise ValueError(f"isa: {name!r} is not supported on this CPU "
                         f"(available: {available_cpu_isas()})")
    _ops._C.set_isa(_ISA_CODES[name])


def get_cpu_isa():
    """The CPU kernel variant in use."""
    return _ISA_NAMES[_ops._C.get_isa()]


def build_info():
    """Versions and build facts: lowbit and torch versions, CUDA built or not and for which
    architectures, and the CPU ISA path in use."""
    import torch

    return {
        "version": __version__,
        "torch_version": torch.__version__,
        "cuda_built": bool(_ops._C.CUDA_BUILT),
        "cuda_archs": [a for a in _ops._C.CUDA_ARCHS.split(";") if a],
        "cpu_isa": get_cpu_isa(),
        "cpu_isas_available": available_cpu_isas(),
    }


if _os.environ.get("LOWBIT_CPU_ISA"):
    set_cpu_isa(_os.environ["LOWBIT_CPU_ISA"])

__all__ = ["QuantSpec", "QuantizedWeight", "fake_quantize", "quantize", "dequantize",
           "kl_div_loss", "fused_linear_kl_loss", "GammaEstimator", "estimate_gamma",
           "quant_linear", "QATConfig", "quantize_", "convert_", "calibrate_clip_",
           "cache_quantized_weights",
           "save_quantized", "load_quantized", "sparsify_", "nn", "sparse", "distill", "data",
           "available_cpu_isas", "set_cpu_isa", "get_cpu_isa", "build_info", "export", "hf"]
