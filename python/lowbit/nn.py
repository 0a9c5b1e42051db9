"""python/lowbit/nn.py: lowbit's nn.Module layers (``lowbit.nn.QuantLinear``: packed low-bit
inference, python/lowbit/qlinear.py)."""
from .qlinear import QuantLinear

__all__ = ["QuantLinear"]
