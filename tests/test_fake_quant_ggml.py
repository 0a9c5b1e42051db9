"""tests/test_fake_quant_ggml.py: the fake_quant family on llama.cpp's block types (FORMATS.md 1.8,
the block rows of the format table): QuantSpec of a block type, and the model verbs' errors for
shapes and layers a type cannot take. Checked against tests/reference_ggml.py (an independent
plain-PyTorch reading of 1.8, itself checked against gguf-py in tests/test_reference_ggml.py)."""
import pytest
import torch

import reference_ggml as RG

lowbit = pytest.importorskip("lowbit")
from lowbit import _constants as C  # noqa: E402

TYPES = list(RG.TYPES)


# ---- QuantSpec ----
@pytest.mark.parametrize("fmt", TYPES)
def test_spec_takes_the_type_fixed(fmt):
    """QuantSpec("q4_k"): bits, group_size, symmetric come from the row; the same values given
    explicitly are the same spec; any other value, or another scale_dtype, is a ValueError naming
    the field."""
    f = C.FORMATS[fmt]
    spec = lowbit.QuantSpec(fmt)
    assert (spec.bits, spec.group_size, spec.symmetric, spec.scale_dtype) == \
        (f.bits[0], f.block, f.symmetric, "float32")
    assert spec == lowbit.QuantSpec(fmt, f.bits[0], f.block, f.symmetric)
    assert spec.name == fmt and spec.is_block_type
    assert hash(spec) == hash(lowbit.QuantSpec(format=fmt, group_size=f.block))
    bad = {"bits": f.bits[0] + 1, "group_size": f.block // 2 if f.block > 32 else 64,
           "symmetric": not f.symmetric, "scale_dtype": "float16"}
    for name, v in bad.items():
        with pytest.raises(ValueError, match=f"^{name}: "):
            lowbit.QuantSpec(fmt, **{name: v})
    with pytest.raises(ValueError, match="^group_size: "):
        lowbit.QuantSpec(fmt, group_size=-1)
    with pytest.raises(ValueError, match="^bits: "):
        lowbit.QuantSpec(fmt, bits=True)


def test_spec_defaults_of_other_formats_unchanged():
    """Leaving bits / group_size / symmetric out still means 4 / 128 / False for the code
    formats."""
    assert lowbit.QuantSpec() == lowbit.QuantSpec("int", 4, 128, False)
    assert lowbit.QuantSpec("nf", 3) == lowbit.QuantSpec("nf", 3, 128, False)
    assert not lowbit.QuantSpec("fp").is_block_type


@pytest.mark.parametrize("fmt", TYPES)
def test_in_features_not_a_multiple_of_the_block(fmt):
    """K not a multiple of the block: ValueError naming in_features (spec, fake_quantize,
    quantize, QATLinear) or the layer (quantize_)."""
    spec = lowbit.QuantSpec(fmt)
    K = spec.group_size + 16
    with pytest.raises(ValueError, match="^in_features: "):
        spec.group_for(K)
    w = torch.randn(3, K)
    for fn in (lowbit.fake_quantize, lowbit.quantize):
        with pytest.raises(ValueError, match="^in_features: "):
            fn(w, spec)
    with pytest.raises(ValueError, match="^in_features: "):
        lowbit.nn.QATLinear(K, 4, spec=spec)
    model = torch.nn.Sequential(torch.nn.Linear(K, 4))
    for mode in ("error", "gcd"):
        with pytest.raises(ValueError, match=f"in_features: {K} of 0 is not a multiple"):
            lowbit.quantize_(model, lowbit.QATConfig(spec, indivisible=mode))


def test_convert_refuses_block_types_by_name():
    """convert_ of a QAT model on a block type raises NotImplementedError naming the layer and
    the format (its QuantLinear is the ggmlkern kernels', not built yet) and leaves the model
    as it was."""
    model = torch.nn.Sequential(torch.nn.Linear(256, 8), torch.nn.Linear(8, 4))
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("q4_k"),
                                             overrides={"1": None}))
    with pytest.raises(NotImplementedError, match="^0: format q4_k"):
        lowbit.convert_(model)
    assert isinstance(model[0], lowbit.nn.QATLinear)
