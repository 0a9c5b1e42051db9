"""lowbit.sparse: the 2:4 structured-sparsity namespace (implemented in lowbit/sparse24.py)."""
from .sparse24 import (Sparse24Weight, SparseLinear24, compress_24, cusparselt_available,
                       decompress_24, prune_24, sparse24_linear, sparsify_)

__all__ = ["prune_24", "compress_24", "decompress_24", "sparse24_linear", "Sparse24Weight",
           "SparseLinear24", "sparsify_", "cusparselt_available"]
