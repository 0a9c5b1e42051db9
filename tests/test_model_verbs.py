"""The model verbs' module walk (lowbit._walk): a module used at several
places is replaced by ONE new module at every use (weight sharing survives), a bare module is
refused by every verb with what to call instead, and quantize_ / sparsify_ refuse each other's
layers instead of dropping what they hold. Numerics against tests/reference.py."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference import ref_fake_quant

lowbit = pytest.importorskip("lowbit")
from lowbit.nn import QATLinear  # noqa: E402


def _mlp(gen):
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def _modules_by_name(model):
    return dict(model.named_modules(remove_duplicate=False))


def test_quantize_and_convert_shared_module_keep_sharing(gen):
    """A module used twice is replaced at both uses by ONE new module: the weight stays shared."""
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    lin = nn.Linear(64, 64)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 3, 32), skip=()))
    assert isinstance(model[0], QATLinear) and model[0] is model[2]
    assert model[0].weight is lin.weight and len(list(model.parameters())) == 2
    x = torch.randn(5, 64, generator=gen)
    w = w0.clone().requires_grad_(True)
    q = ref_fake_quant(w, "int", 3, 32, False)
    ref = F.linear(F.relu(F.linear(x, q, b0)), q, b0)
    y = model(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    up = torch.randn(y.shape, generator=gen)
    y.backward(up)
    ref.backward(up)  # both uses contribute to the one weight's gradient
    torch.testing.assert_close(model[0].weight.grad, w.grad, rtol=1e-4, atol=1e-5)
    lowbit.convert_(model)
    assert isinstance(model[0], lowbit.nn.QuantLinear) and model[0] is model[2]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.detach(), rtol=1e-4, atol=1e-4)


def test_quantize_shared_block_and_shared_across_parents(gen):
    block = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
    lin = nn.Linear(32, 32)
    model = nn.Module()
    model.a, model.b, model.c = nn.Sequential(block, block), lin, nn.Sequential(lin)
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32), skip=()))
    mods = _modules_by_name(model)
    assert isinstance(mods["a.0.0"], QATLinear) and mods["a.0.0"] is mods["a.1.0"]
    assert isinstance(mods["b"], QATLinear) and mods["b"] is mods["c.0"]
    assert mods["b"].weight is lin.weight


def test_shared_module_with_conflicting_patterns_is_refused(gen):
    lin = nn.Linear(64, 64)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    with pytest.raises(ValueError, match=r"^model: one Linear is used at several places.*'0'.*'2'"):
        lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32), skip=("2",)))
    with pytest.raises(ValueError, match=r"^model: one Linear.*int2-g32-asym.*int4-g32-asym"):
        lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32), skip=(),
                                                 overrides={"0": lowbit.QuantSpec("int", 2, 32)}))
    assert model[0] is lin and model[2] is lin  # nothing was swapped


def test_bare_module_is_refused_by_every_verb():
    """In place, the verbs cannot replace the object the caller holds: a clear error naming
    what to call instead (never a silent no-op, never a new object the caller may drop)."""
    lin = nn.Linear(64, 8)
    with pytest.raises(ValueError, match=r"^model: is itself a Linear.*QATLinear\.from_linear"):
        lowbit.quantize_(lin, lowbit.QATConfig(skip=()))
    qat = QATLinear.from_linear(nn.Linear(64, 8), lowbit.QuantSpec("int", 4, 32))
    with pytest.raises(ValueError, match=r"^model: is itself a QATLinear.*QuantLinear\.from_qat"):
        lowbit.convert_(qat)
    with pytest.raises(ValueError,
                       match=r"^model: is itself a Linear.*SparseLinear24\.from_linear"):
        lowbit.sparsify_(lin)
    with pytest.raises(ValueError, match=r"^model: already quantized"):
        lowbit.quantize_(qat, lowbit.QATConfig())
    for verb in (lambda m: lowbit.convert_(m), lambda m: lowbit.sparsify_(m),
                 lambda m: lowbit.quantize_(m, lowbit.QATConfig())):
        with pytest.raises(TypeError, match=r"^model: expected an nn.Module, got int"):
            verb(42)


def test_sparsify_after_quantize_is_refused_and_changes_nothing(gen):
    model = lowbit.quantize_(_mlp(gen), lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32),
                                                             skip=("4",)))
    before = _modules_by_name(model)
    with pytest.raises(ValueError, match=r"^model: layer '0' is a QATLinear \(made by "
                                         r"lowbit\.quantize_\).*sparsify first"):
        lowbit.sparsify_(model, skip=())
    assert _modules_by_name(model) == before and model[0].spec.name == "int2-g32-asym"
    # layers the call does not select are left alone: here only the plain Linear '4' is sparsified
    lowbit.sparsify_(model, skip=("0", "2"))
    assert isinstance(model[0], QATLinear) and isinstance(model[4], lowbit.nn.SparseLinear24)
    lowbit.convert_(model)  # converts the QAT layers, leaves the 2:4 one
    assert isinstance(model[2], lowbit.nn.QuantLinear)
    assert isinstance(model[4], lowbit.nn.SparseLinear24)
    with pytest.raises(ValueError, match=r"^model: already"):
        lowbit.sparsify_(model, skip=())


def test_sparsify_after_convert_and_quantize_after_sparsify_are_refused(gen):
    model = lowbit.convert_(lowbit.quantize_(_mlp(gen), lowbit.QATConfig(
        lowbit.QuantSpec("int", 4, 32), skip=())))
    with pytest.raises(ValueError, match=r"^model: layer '0' is a QuantLinear \(made by "
                                         r"lowbit\.convert_\)"):
        lowbit.sparsify_(model, skip=())
    model = lowbit.sparsify_(_mlp(gen), skip=("4",))
    before = _modules_by_name(model)
    with pytest.raises(ValueError, match=r"^model: layer '0' is a SparseLinear24 \(made by "
                                         r"lowbit\.sparsify_\).*QATConfig\(skip="):
        lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 4, 32), skip=()))
    assert _modules_by_name(model) == before
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("int", 2, 32), skip=("0", "2")))
    assert isinstance(model[4], QATLinear) and isinstance(model[0], lowbit.nn.SparseLinear24)
