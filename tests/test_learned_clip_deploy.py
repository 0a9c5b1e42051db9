"""Learned clipping (QATConfig(learn="clip")) survives deployment bit for bit: the state dict,
convert_, save_quantized / load_quantized and every export (compressed-tensors, GPTQ, GGUF; the
llama.cpp block types through GGUF), each against the same model with the clip folded into plain
weights by the rule of LearnedClip's docstring, written here."""
import copy

import numpy as np
import pytest
import torch

from _hfutil import tiny_llama, tiny_tokenizer

lowbit = pytest.importorskip("lowbit")
from lowbit.nn import QATLinear, QuantLinear  # noqa: E402
from lowbit.qat import learned_clip, raw_weight  # noqa: E402


def _seed(gen):
    return int(torch.randint(0, 2 ** 31, (1,), generator=gen))


def _fold(w, hi_logit, lo_logit, block):
    """W' of the docstring: f(a) = min(1, 1.25 sigmoid(a)), hi = f * max, lo = f * min of each
    clipping block of a row, elements above hi / below lo set to the bound."""
    n, k = w.shape
    wg = w.float().reshape(n, k // block, block)
    f_hi = torch.clamp(1.25 * torch.sigmoid(hi_logit.float()), max=1.0).unsqueeze(-1)
    f_lo = torch.clamp(1.25 * torch.sigmoid(lo_logit.float()), max=1.0).unsqueeze(-1)
    hi = f_hi * wg.amax(-1, keepdim=True)
    lo = f_lo * wg.amin(-1, keepdim=True)
    out = wg.clone()
    out[wg > hi] = hi.expand_as(wg)[wg > hi]
    out[wg < lo] = lo.expand_as(wg)[wg < lo]
    return out.reshape(n, k).to(w.dtype)


def _pair(gen, spec, **model_kw):
    """(learned-clip QAT model with random trained-looking factors, the plain QAT model of the
    same raw weights with the clip folded in, the config of the former)."""
    fp = tiny_llama(_seed(gen), **model_kw)
    cfg = lowbit.QATConfig(spec, learn="clip")
    learned = lowbit.quantize_(copy.deepcopy(fp), cfg)
    plain = lowbit.quantize_(copy.deepcopy(fp), lowbit.QATConfig(spec))
    folded = 0
    with torch.no_grad():
        for (name, m), p in zip(
                ((n, m) for n, m in learned.named_modules() if isinstance(m, QATLinear)),
                (m for m in plain.modules() if isinstance(m, QATLinear))):
            c = learned_clip(m)
            # factors from about 0.4 to 1, a third of them exactly 1 (no clipping)
            c.hi_logit.uniform_(-1.0, 2.5, generator=gen)
            c.lo_logit.uniform_(-1.0, 2.5, generator=gen)
            p.weight.copy_(_fold(raw_weight(m), c.hi_logit, c.lo_logit, c.block))
            folded += int((p.weight != raw_weight(m)).sum())
    assert folded > 0, "setup: the factors must clip"
    return learned, plain, cfg


def _qat_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QATLinear)]


def _same_grid(a, b):
    with torch.no_grad():
        for (n, x), (_, y) in zip(_qat_layers(a), _qat_layers(b)):
            assert torch.equal(x.quantized_weight(), y.quantized_weight()), n


def _packed(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _same_packed(a, b):
    pa, pb = _packed(a), _packed(b)
    assert pa.keys() == pb.keys() and pa
    for n in pa:
        x, y = pa[n].qweight, pb[n].qweight
        assert x.spec == y.spec, n
        for t in ("codes", "scales", "zeros"):
            u, v = getattr(x, t), getattr(y, t)
            assert (u is None) == (v is None) and (u is None or torch.equal(u, v)), (n, t)


def _read_export(path, fmt):
    """{tensor name: bytes} of an exported file / folder, read by the formats' own readers."""
    if fmt == "gguf":
        import gguf
        r = gguf.GGUFReader(path)
        return {t.name: (t.tensor_type.name, np.ascontiguousarray(t.data).tobytes())
                for t in r.tensors}
    import glob

    from safetensors.numpy import load_file
    out = {}
    for f in sorted(glob.glob(f"{path}/*.safetensors")):
        out.update({k: (v.dtype.str, v.tobytes()) for k, v in load_file(f).items()})
    return out


def _same_exports(a, b, fmts, tmp_path, tag):
    tok = tiny_tokenizer()
    for fmt in fmts:
        pa = lowbit.export(a, tmp_path / f"{tag}-learned-{fmt}", fmt, tokenizer=tok)
        pb = lowbit.export(b, tmp_path / f"{tag}-folded-{fmt}", fmt, tokenizer=tok)
        ra, rb = _read_export(pa, fmt), _read_export(pb, fmt)
        assert ra.keys() == rb.keys() and ra, fmt
        assert not any("logit" in k or "parametrizations" in k for k in ra), fmt
        for k in ra:
            assert ra[k] == rb[k], (fmt, k)


@pytest.mark.parametrize("spec", [lowbit.QuantSpec("int", 2, 32),
                                  lowbit.QuantSpec("int", 4, 64, True)])
def test_learned_clip_state_dict_convert_save_load_export(spec, gen, tmp_path):
    learned, plain, cfg = _pair(gen, spec)
    _same_grid(learned, plain)
    ids = torch.randint(0, 300, (2, 9), generator=gen)
    # the QAT state (raw weights + logits) onto a fresh quantize_'d skeleton, bit for bit
    back = lowbit.quantize_(tiny_llama(_seed(gen)), cfg)
    back.load_state_dict(learned.state_dict())
    _same_grid(back, learned)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, learned(ids).logits)
    fmts = lowbit.export.formats_for(learned)
    assert fmts == lowbit.export.formats_for(plain) and "gguf" in fmts
    _same_exports(learned, plain, fmts, tmp_path, "qat")  # exports of the QAT model
    lowbit.convert_(learned)
    lowbit.convert_(plain)
    _same_packed(learned, plain)
    _same_exports(learned, plain, fmts, tmp_path, "packed")  # and of the converted one
    d = lowbit.save_quantized(learned, str(tmp_path / "saved"))
    reloaded = lowbit.load_quantized(d)
    _same_packed(reloaded, plain)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, learned(ids).logits)


@pytest.mark.parametrize("fmt", ["q2_k", "q4_k", "q4_0"])
def test_learned_clip_block_types_state_dict_and_gguf(fmt, gen, tmp_path):
    spec = lowbit.QuantSpec(fmt)
    learned, plain, cfg = _pair(gen, spec, hidden=256, inter=512, heads=4, kv=2)
    _same_grid(learned, plain)
    back = lowbit.quantize_(tiny_llama(_seed(gen), hidden=256, inter=512, heads=4, kv=2), cfg)
    back.load_state_dict(learned.state_dict())
    _same_grid(back, learned)
    _same_exports(learned, plain, ["gguf"], tmp_path, fmt)
