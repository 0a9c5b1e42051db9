"""python/lowbit/spec.py: QuantSpec, the validated description of a weight format
(FORMATS.md section 1), and its mapping to the op-level integer codes."""
from dataclasses import dataclass

import torch

from . import _ops
from ._constants import FORMAT_BITS, FORMAT_CODES, FORMATS

# scale_dtype name -> (the LB_DT_* code the ops take, read from lowbit._C; torch dtype; the
# suffix it adds to QuantSpec.name)
SCALE_DTYPES = {
    "float32": (_ops._C.DT_F32, torch.float32, ""),
    "float16": (_ops._C.DT_F16, torch.float16, "-f16scale"),
    "bfloat16": (_ops._C.DT_BF16, torch.bfloat16, "-bf16scale"),
}
_SCALE_DTYPE_NAMES = {v[1]: k for k, v in SCALE_DTYPES.items()}


@dataclass(frozen=True)
class QuantSpec:
    """A weight format: ``format`` "int" | "nf" | "fp", ``bits``, ``group_size`` (a positive
    group length along in_features, or -1 for one group per row), ``symmetric`` (False: the
    asymmetric INT of BitDistiller / the two-scale NF/FP of AFPQ; True: the one-scale baselines)
    and ``scale_dtype`` "float32" (default) | "float16" | "bfloat16" (a torch dtype is accepted
    and stored as its name).

    ``scale_dtype`` (FORMATS.md 1.6): every scale (s; s+ and s- each) is computed in float32 as
    before and then rounded to that dtype (to nearest even; a scale that would round to 0 becomes
    the dtype's smallest positive subnormal, one that would overflow its largest finite value), and
    zero points, codes and Q(w) all use the rounded scale — in fake_quantize, quantize and the
    clipping search, on every device. QAT then trains on exactly the grid a checkpoint storing
    float16 (GPTQ, GGUF, compressed-tensors in float16) or bfloat16 scales holds, so
    ``lowbit.export`` of such a model is bit-identical to the trained weights. The rounding has
    identity gradient. Packed weights still store float32 scales (exact in the dtype).

    llama.cpp's block types (FORMATS.md 1.8; the rows of the format table with block storage):
    ``QuantSpec("q4_k")`` and likewise "q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "q2_k", "q3_k",
    "q5_k", "q6_k". The type fixes bits, group_size (its block: 32, or 256 for the k types),
    symmetric and the scales (float16 inside the block): left out they take the type's values,
    any other value is a ValueError. in_features must be a multiple of the block.
    Unset (None) fields of the other formats take the defaults bits=4, group_size=128,
    symmetric=False.
    """

    format: str = "int"
    bits: int = None
    group_size: int = None
    symmetric: bool = None
    scale_dtype: str = "float32"

    def __post_init__(self):
        if not isinstance(self.format, str) or self.format not in FORMAT_BITS:
            raise ValueError(f"format: must be one of {sorted(FORMAT_BITS)}, got {self.format!r}")
        row = FORMATS[self.format]
        if row.storage == "blocks":
            self._fixed_by_type(row)
        for name, default in (("bits", 4), ("group_size", 128), ("symmetric", False)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"bits: must be an int, got {type(self.bits).__name__}")
        if self.bits not in FORMAT_BITS[self.format]:
            raise ValueError(f"bits: format {self.format!r} supports bits in "
                             f"{FORMAT_BITS[self.format]}, got {self.bits}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"group_size: must be an int, got {type(self.group_size).__name__}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"group_size: must be a positive int or -1 (one group per row), "
                             f"got {self.group_size}")
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric: must be a bool, got {type(self.symmetric).__name__}")
        sd = self.scale_dtype
        if isinstance(sd, torch.dtype):
            if sd not in _SCALE_DTYPE_NAMES:
                raise ValueError(f"scale_dtype: must be one of {list(SCALE_DTYPES)}, got {sd}")
            object.__setattr__(self, "scale_dtype", _SCALE_DTYPE_NAMES[sd])
        elif not isinstance(sd, str):
            raise ValueError(f"scale_dtype: must be one of {list(SCALE_DTYPES)} (or the torch "
                             f"dtype), got {type(sd).__name__} {sd!r:.40}")
        elif sd not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype: must be one of {list(SCALE_DTYPES)}, got {sd!r}")

    def _fixed_by_type(self, row):
        """A block type's bits, group_size and symmetric are the type's (None: filled in)."""
        fixed = {"bits": row.bits[0], "group_size": row.block, "symmetric": row.symmetric}
        for name, want in fixed.items():
            got = getattr(self, name)
            if got is None:
                object.__setattr__(self, name, want)
            elif isinstance(got, bool) != isinstance(want, bool) or got != want:
                raise ValueError(f"{name}: format {self.format!r} is llama.cpp's block type with "
                                 f"{name}={want!r} (FORMATS.md 1.8), got {got!r}; leave it out")
            else:
                object.__setattr__(self, name, want)
        if self.scale_dtype not in ("float32", torch.float32):
            raise ValueError(f"scale_dtype: format {self.format!r} stores its own float16 block "
                             f"scales (FORMATS.md 1.8); leave scale_dtype at its default, got "
                             f"{self.scale_dtype!r}")

    @property
    def is_block_type(self):
        """Whether the format is one of llama.cpp's block types (FORMATS.md 1.8)."""
        return FORMATS[self.format].storage == "blocks"

    @property
    def name(self):
        """Short name, e.g. 'int4-g128-asym', 'nf3-g64', 'fp4-gK-sym'; a scale_dtype other than
        float32 adds '-f16scale' or '-bf16scale' ('int4-g128-asym-f16scale'); a llama.cpp block
        type is its type name ('q4_k')."""
        if self.is_block_type:
            return self.format
        g = "K" if self.group_size == -1 else str(self.group_size)
        tail = "-sym" if self.symmetric else ("-asym" if self.format == "int" else "")
        return f"{self.format}{self.bits}-g{g}{tail}{SCALE_DTYPES[self.scale_dtype][2]}"

    @property
    def scale_torch_dtype(self):
        """scale_dtype as a torch dtype."""
        return SCALE_DTYPES[self.scale_dtype][1]

    @property
    def scale_code(self):
        """scale_dtype as the ops' ``scale_dtype`` int (lowbit._C.DT_*)."""
        return SCALE_DTYPES[self.scale_dtype][0]

    def group_for(self, K):
        """The group length for a weight with K input features (raises if it does not divide)."""
        g = K if self.group_size == -1 else self.group_size
        if K % g != 0:
            if self.is_block_type:
                raise ValueError(f"in_features: K = {K} is not a multiple of the block of "
                                 f"{self.format} ({g}, FORMATS.md 1.8)")
            raise ValueError(f"group_size: {self.group_size} does not divide in_features K = {K}")
        return g

    def op_args(self, K):
        """(fmt, bits, group_size, symmetric) as the ops take them (the ops that compute scales
        also take ``scale_code``)."""
        return FORMAT_CODES[self.format], self.bits, self.group_for(K), self.symmetric


def check_spec(spec, name="spec"):
    """spec itself, if it is a QuantSpec (else TypeError naming ``name``)."""
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"{name}: expected a lowbit.QuantSpec, got {type(spec).__name__}")
    return spec
