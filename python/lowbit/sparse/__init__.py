"""lowbit.sparse: the public 2:4 structured-sparsity namespace (FORMATS.md section 3).

    pruned, mask = prune_24(w)             # keep the 2 largest |w| of every 4 along K (ties: lower index)
    sw = compress_24(pruned)               # Sparse24Weight: kept values (N, K/2) + 2-bit indices
    w2 = decompress_24(sw)                 # == pruned
    y = sparse24_linear(x, sw, bias)       # == F.linear(x, pruned, bias) within float32 rounding
    sq = sw.quantize(QuantSpec("int", 4, 128))   # 2:4 + int4 over the kept values (~3.2 bits/weight)
    lowbit.nn.SparseLinear24.from_linear(linear, mode="train" | "inference")
    lowbit.sparsify_(model, skip=("lm_head",), include=None, mode="train")

Files (stem sparse24): sparse24.py the product and the ops' fake kernels and autograd;
sparse24_weight.py the compressed weight (lb24 layout); sparse24_mask.py the 2:4 mask and its
training autograd; sparse24_nn.py the module and sparsify_; cusparselt.py the cuSPARSELt loader.
"""
from .cusparselt import cusparselt_available
from .sparse24 import sparse24_linear
from .sparse24_nn import SparseLinear24, sparsify_
from .sparse24_weight import Sparse24Weight, compress_24, decompress_24, prune_24

__all__ = ["prune_24", "compress_24", "decompress_24", "sparse24_linear", "Sparse24Weight",
           "SparseLinear24", "sparsify_", "cusparselt_available"]
