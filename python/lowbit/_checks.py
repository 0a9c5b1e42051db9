"""python/lowbit/_checks.py: the argument checks the public wrappers share — tensor type, float
dtype, device, 2-D weight, (..., K) activation and bias — each raising TypeError/ValueError that
names the bad argument before anything reaches C."""
import torch

from . import _ops

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(t, name, what="a torch.Tensor"):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected {what}, got {type(t).__name__}")


def check_float_dtype(t, name):
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32, bfloat16 or float16, got {t.dtype}")


def check_device(t, name):
    dev = t.device.type
    if dev == "cuda" and not _ops._C.CUDA_BUILT:
        raise ValueError(f"{name}: is on CUDA but this lowbit build has no CUDA kernels "
                         f"(rebuild with LOWBIT_CUDA=1)")
    if dev not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name}: device {t.device} is not supported (cpu or cuda)")


def check_2d_float(w, name):
    """A 2-D (out_features, in_features) float32/bfloat16/float16 tensor."""
    check_tensor(w, name)
    check_float_dtype(w, name)
    if w.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (out_features, in_features) tensor, "
                         f"got shape {tuple(w.shape)}")


def check_weight(w, name="w"):
    """A 2-D, non-empty float32/bfloat16/float16 tensor on a device lowbit runs on."""
    check_2d_float(w, name)
    if w.numel() == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(w.shape)}")
    check_device(w, name)


def check_activation(x, K, name="x", k_label="in_features K"):
    """A float (..., K) tensor (the input of a linear layer with K input features)."""
    check_tensor(x, name)
    check_float_dtype(x, name)
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"{name}: last dimension must equal {k_label} = {K}, "
                         f"got shape {tuple(x.shape)}")


def check_bias(bias, x, N):
    """None, or an (N,) tensor of x's dtype on x's device."""
    if bias is None:
        return
    check_tensor(bias, "bias", "a torch.Tensor or None")
    if bias.dtype != x.dtype:
        raise TypeError(f"bias: dtype {bias.dtype} must match x's dtype {x.dtype}")
    if bias.shape != (N,):
        raise ValueError(f"bias: expected shape ({N},), got {tuple(bias.shape)}")
    if bias.device != x.device:
        raise ValueError(f"bias: is on {bias.device} but x is on {x.device}")
