"""python/lowbit/spec.py: QuantSpec, the validated description of a weight format
(FORMATS.md section 1), and its mapping to the op-level integer codes."""
from dataclasses import dataclass

from ._constants import FORMAT_BITS, FORMAT_CODES


@dataclass(frozen=True)
class QuantSpec:
    """A weight format: ``format`` "int" | "nf" | "fp", ``bits``, ``group_size`` (a positive
    group length along in_features, or -1 for one group per row) and ``symmetric`` (False: the
    asymmetric INT of BitDistiller / the two-scale NF/FP of AFPQ; True: the one-scale baselines).
    """

    format: str = "int"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False

    def __post_init__(self):
        if not isinstance(self.format, str) or self.format not in FORMAT_BITS:
            raise ValueError(f"format: must be one of {sorted(FORMAT_BITS)}, got {self.format!r}")
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

    @property
    def name(self):
        """Short name, e.g. 'int4-g128-asym', 'nf3-g64', 'fp4-gK-sym'."""
        g = "K" if self.group_size == -1 else str(self.group_size)
        tail = "-sym" if self.symmetric else ("-asym" if self.format == "int" else "")
        return f"{self.format}{self.bits}-g{g}{tail}"

    def group_for(self, K):
        """The group length for a weight with K input features (raises if it does not divide)."""
        g = K if self.group_size == -1 else self.group_size
        if K % g != 0:
            raise ValueError(f"group_size: {self.group_size} does not divide in_features K = {K}")
        return g

    def op_args(self, K):
        """(fmt, bits, group_size, symmetric) as the ops take them."""
        return FORMAT_CODES[self.format], self.bits, self.group_for(K), self.symmetric


def check_spec(spec, name="spec"):
    """spec itself, if it is a QuantSpec (else TypeError naming ``name``)."""
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"{name}: expected a lowbit.QuantSpec, got {type(spec).__name__}")
    return spec
