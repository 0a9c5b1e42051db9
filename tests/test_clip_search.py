"""tests/test_clip_search.py: the clip_search family on llama.cpp's block types (FORMATS.md 1.8):
the search per sub-block (lowbit::clip_search on CPU, its torch twin elsewhere) against a
brute-force plain-PyTorch search with tests/reference_ggml.py's quantizer, and calibrate_clip_
on a QAT model of a block type. (The code formats' search is checked in test_format_table.)"""
import pytest
import torch

import reference_ggml as RG

lowbit = pytest.importorskip("lowbit")
from lowbit import _constants as C  # noqa: E402
from lowbit.clip_search import clip_group, group_gram, search_clip, search_clip_torch  # noqa: E402

TYPES = list(RG.TYPES)


def brute_force(w, fmt, x, n_grid, shrink):
    """For every (row, sub-block j): every candidate (i, i') clamping sub-block j alone to
    [min_j (1 - i'/n_grid), max_j (1 - i/n_grid)], the block quantized by the reference, the
    block's output error on the calibration tokens x in float64 (sum over its sub-blocks, each
    sub-block's own tokens' products, i.e. its Gram matrix). Returns (lo, hi, err) per
    candidate: (C, N, S) each, S = K / sub."""
    t = RG.TYPES[fmt]
    N, K = w.shape
    sub, nsub, S = t.sub, t.nsub, K // t.sub
    ws = w.reshape(N, S, sub)
    mx, mn = ws.amax(-1, keepdim=True), ws.amin(-1, keepdim=True)
    xs = x.reshape(-1, S, sub).double()
    los, his, errs = [], [], []
    for i in range(shrink):
        for i2 in range(shrink):
            hi, lo = mx * (1 - i / n_grid), mn * (1 - i2 / n_grid)
            e_all = torch.empty(N, S, dtype=torch.float64)
            for j in range(nsub):
                sel = (torch.arange(S) % nsub == j).reshape(1, S, 1)
                cand = torch.where(sel, torch.minimum(torch.maximum(ws, lo), hi), ws)
                d = (RG.fake_quant(cand.reshape(N, K), fmt) - w).reshape(N, S, sub).double()
                e = torch.einsum("tsi,nsi->nts", xs, d).pow(2).sum(1)        # (N, S)
                e = e.reshape(N, S // nsub, nsub).sum(-1, keepdim=True)      # the block's
                e_all.reshape(N, S // nsub, nsub)[..., j] = e[..., 0]
            los.append(lo[..., 0].expand(N, S))
            his.append(hi[..., 0].expand(N, S))
            errs.append(e_all)
    return torch.stack(los), torch.stack(his), torch.stack(errs)


@pytest.mark.parametrize("fmt", TYPES)
def test_search_per_sub_block_is_the_brute_force(fmt, gen):
    """Every sub-block's pick (C kernel and torch twin) is one of its candidates with the least
    block error by brute force (ties within float32 round-off may break either way); the two
    implementations agree; the bounds are per sub-block."""
    f = C.FORMATS[fmt]
    spec = lowbit.QuantSpec(fmt)
    N, K, n_grid, shrink = 3, 2 * f.block, 10, 3
    w = torch.randn(N, K, generator=gen) * 0.05
    w[0, :16] *= 8.0  # one sub-block sets the block's scale: clipping it moves every grid
    x = torch.randn(40, K, generator=gen) * torch.linspace(0.2, 3.0, K)
    sub = clip_group(spec, K)
    assert sub == f.sub_block
    gram = group_gram(x, sub)
    lo, hi = search_clip(w, spec, gram, n_grid=n_grid, max_shrink=shrink)
    assert lo.shape == hi.shape == (N, K // sub, 1)
    tlo, thi = search_clip_torch(w, spec, gram, n_grid=n_grid, max_shrink=shrink)
    blo, bhi, berr = brute_force(w, fmt, x, n_grid, shrink)
    best = berr.amin(0)
    for l, h in ((lo, hi), (tlo, thi)):
        match = (blo == l[..., 0]) & (bhi == h[..., 0])
        assert match.any(0).all(), "a sub-block's pick is none of its candidates"
        got = torch.where(match, berr, torch.full_like(berr, float("inf"))).amin(0)
        assert torch.all(got <= best * (1 + 1e-4) + 1e-9 * best.max())
    if f.bits[0] <= 4:  # the search is not trivial: somewhere a clipped candidate wins
        assert ((lo[..., 0] != blo[0]) | (hi[..., 0] != bhi[0])).any()


def test_gram_of_the_wrong_size_is_refused():
    spec = lowbit.QuantSpec("q4_k")
    w = torch.randn(2, 256)
    with pytest.raises(RuntimeError, match="^gram: expected .*\\(8, 32, 32\\)"):
        torch.ops.lowbit.clip_search(w, torch.zeros(1, 256, 256), *spec.op_args(256), 10, 4, 0)


def test_calibrate_clip_on_a_block_type(gen):
    """calibrate_clip_ of a QAT model on q2_k clamps each sub-block to its searched bounds
    (the same search run by hand on the same Gram matrix) and does not raise the layer's
    output error on the calibration data."""
    model = torch.nn.Sequential(torch.nn.Linear(256, 16, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 0.05, generator=gen)
        model[0].weight[:, 7] = 0.4
    w0 = model[0].weight.detach().clone()
    lowbit.quantize_(model, lowbit.QATConfig(lowbit.QuantSpec("q2_k")))
    batches = [torch.randn(64, 256, generator=gen) for _ in range(2)]
    spec = model[0].spec

    def out_err(w):
        xx = torch.cat(batches)
        return (xx @ (lowbit.fake_quantize(w, spec) - w0).T).pow(2).sum().item()

    before = out_err(w0)
    lowbit.calibrate_clip_(model, batches, progress=False, n_grid=10, max_shrink=4)
    lo, hi = search_clip(w0, spec, group_gram(torch.cat(batches), 16), n_grid=10, max_shrink=4)
    want = torch.minimum(torch.maximum(w0.reshape(16, 16, 16), lo), hi).reshape(16, 256)
    assert torch.equal(model[0].weight.detach(), want)
    assert out_err(model[0].weight.detach()) <= before
