"""lowbit.nn: the modules lowbit's functions and model verbs use — QATLinear and QATEmbedding (quantize_),
QuantLinear (convert_, packed inference), DistillLoss (kl_div_loss as a module) and
SparseLinear24 (sparsify_)."""
from ..kl_loss import DistillLoss
from ..qat import QATEmbedding, QATLinear
from ..qlinear import QuantLinear
from ..sparse import SparseLinear24

__all__ = ["QATLinear", "QATEmbedding", "QuantLinear", "DistillLoss", "SparseLinear24"]
