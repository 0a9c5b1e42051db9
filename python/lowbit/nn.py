"""lowbit.nn: lowbit's nn.Module layers."""
from .sparse24 import SparseLinear24

__all__ = ["SparseLinear24"]
