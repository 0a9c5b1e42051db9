"""tests/test_reference_ggml.py: the FORMATS.md 1.8 reference (tests/reference_ggml.py) against
ggml's own truth and against independently written twins, for every llama.cpp block type:
  * the block sizes and bytes are ggml's (gguf-py's GGML_QUANT_SIZES);
  * the parameters and codes equal a second, loop-per-block numpy reading of 1.8's rules, and
    stay in range;
  * gguf-py's gguf.quants.dequantize of the reference's blocks equals the reference dequantize
    bit for bit and equals fake_quant's forward (so pack's byte layout is ggml's);
  * the reference dequantize equals gguf-py's on arbitrary block bytes and on the blocks of
    gguf-py's own quantize (where it has one);
  * fake_quant's gradient equals a hand-derived formula of 1.8's rules (numpy, float64).
Weights: seeded Gaussian, heavy-tailed, all-positive, all-negative, constant and all-zero
blocks, tiny (d = 0) and huge (fp16 clamp) magnitudes, exact ties, sub-blocks of very different
sizes (S_j = 0), half-integer ratios (R's ties)."""
import numpy as np
import pytest
import torch

import reference_ggml as RG

gguf = pytest.importorskip("gguf")

TYPES = list(RG.TYPES)
K = 512  # two super-blocks, sixteen 32-blocks


def _gtype(fmt):
    return gguf.GGMLQuantizationType[RG.TYPES[fmt].gguf_name]


def _weights(gen, rows_per_kind=1):
    """(12 * rows_per_kind, K) float32: one row per kind of block content."""
    def randn(*s):
        return torch.randn(*s, generator=gen)

    out = []
    for _ in range(rows_per_kind):
        g = randn(K) * 0.02
        heavy = randn(K) / (torch.rand(K, generator=gen) + 0.05) * 0.01
        const = torch.repeat_interleave(randn(K // 32) * 0.05, 32)
        const[:256] = 0.125
        zeros = torch.cat([torch.zeros(256), randn(256) * 0.03])
        zeros[256:288] = 0
        huge = randn(K) * 3e3
        huge[32:64] *= 300.0                           # d beyond fp16: the clamp to 65504
        ties = torch.where(torch.rand(K, generator=gen) < 0.5, -0.75, 0.75)
        ties[64:96] = torch.linspace(-1, 1, 32)        # max == -min: amax-signed takes the first
        mixed = randn(K) * 0.02 * torch.repeat_interleave(
            10.0 ** (torch.arange(K // 16) % 5 - 2.0), 16)
        mixed[0:16] *= 1e-6                            # a sub-block whose scale code is 0
        outlier = randn(K) * 0.01
        outlier[torch.randint(0, K, (6,), generator=gen)] = 0.5
        halves = torch.randint(-254, 255, (K,), generator=gen).float() / 2
        halves[::32] = 127.0                           # q8_0: d = 1, x / d a half-integer
        out += [g, heavy, g.abs(), -g.abs(), const, zeros, randn(K) * 1e-9, huge, ties, mixed,
                outlier, halves]
    return torch.stack(out).contiguous()


# ---------------------------------------------------------------------------------------------
# 1.8's rules once more, written per block in numpy float32 (an independent reading)
# ---------------------------------------------------------------------------------------------
f32 = np.float32


def _fp16(v):
    with np.errstate(over="ignore"):
        return f32(np.clip(f32(np.float16(v)), -65504, 65504))


def _R(t):
    return f32(np.sign(t) * np.floor(np.abs(t) + f32(0.5)))


def _rules(x, t):
    """(params, q) of one block x (float32 numpy, t.block values) by 1.8."""
    if t.kind == "sym0":
        a = np.max(np.abs(x)) if t.name == "q8_0" else x[np.argmax(np.abs(x))]
        d = _fp16(f32(a) / f32(t.divisor))
        q = np.full(x.shape, t.zero, np.int64) if d == 0 else \
            np.clip(_R(x / d) + t.zero, t.qlo, t.qhi).astype(np.int64)
        return {"d": [d]}, q
    if t.kind == "asym1":
        d = _fp16((x.max() - x.min()) / f32(t.qhi))
        m = _fp16(x.min())
        q = np.zeros(x.shape, np.int64) if d == 0 else \
            np.clip(_R((x - m) / d), 0, t.qhi).astype(np.int64)
        return {"d": [d], "m": [m]}, q
    xs = x.reshape(t.nsub, t.sub)
    if t.kind == "asymk":
        s, m = [], []
        for xj in xs:
            lo = min(xj.min(), f32(0))
            s.append(f32((xj.max() - lo) / f32(t.qhi)))
            m.append(f32(-lo))
        d, dmin = _fp16(max(s) / f32(t.cmax)), _fp16(max(m) / f32(t.cmax))
        sc = [0 if d == 0 else int(np.clip(np.rint(sj / d), 0, t.cmax)) for sj in s]
        mc = [0 if dmin == 0 else int(np.clip(np.rint(mj / dmin), 0, t.cmax)) for mj in m]
        q = []
        for xj, scj, mcj in zip(xs, sc, mc):
            S, M = f32(d * f32(scj)), f32(dmin * f32(mcj))
            q.append(np.zeros(t.sub, np.int64) if S == 0 else
                     np.clip(_R((xj + M) / S), 0, t.qhi).astype(np.int64))
        return {"d": [d], "dmin": [dmin], "sc": sc, "mc": mc}, np.concatenate(q)
    s = [f32(xj[np.argmax(np.abs(xj))] / f32(t.qlo)) for xj in xs]
    tt = s[int(np.argmax(np.abs(s)))]
    d = _fp16(tt / f32(-t.cmax))
    sc = [0 if d == 0 else int(np.clip(np.rint(sj / d), -t.cmax, t.cmax - 1)) for sj in s]
    q = []
    for xj, scj in zip(xs, sc):
        S = f32(d * f32(scj))
        q.append(np.zeros(t.sub, np.int64) if S == 0 else
                 np.clip(_R(xj / S), t.qlo, t.qhi).astype(np.int64))
    return {"d": [d], "sc": sc}, np.concatenate(q)


# ---------------------------------------------------------------------------------------------
# 1.8's gradient, derived by hand (float64 numpy), per block / sub-block
# ---------------------------------------------------------------------------------------------
def _share(x, v):
    """d v / d x_k for a statistic v that equals some elements of x: 1/count where x_k == v."""
    e = (x == v).astype(np.float64)
    return e / e.sum(-1, keepdims=True)


def _grad_formula(w, g, fmt):
    t = RG.TYPES[fmt]
    p = RG.params_and_codes(w, fmt)
    N = w.shape[0]
    nb = K // t.block
    x32 = w.numpy().reshape(N, nb, t.nsub, t.sub)
    x = x32.astype(np.float64)
    gg = g.numpy().astype(np.float64).reshape(x.shape)
    q = p["q"].numpy().reshape(x.shape).astype(np.float64)
    d = p["d"].numpy().reshape(N, nb, 1, 1)
    mx, mn = x.max(-1, keepdims=True), x.min(-1, keepdims=True)
    if t.kind == "sym0":
        if t.name == "q8_0":
            a = np.abs(x).max(-1, keepdims=True)
            da = _share(np.abs(x), a) * np.sign(x)
        else:
            i = np.abs(x).argmax(-1)[..., None]
            da = _share(x, np.take_along_axis(x, i, -1))
        tq = x32 / np.where(d == 0, 1, d).astype(np.float32)
        r = _R(tq) + t.zero
        mask = ((r >= t.qlo) & (r <= t.qhi) & (d != 0)).astype(np.float64)
        c = q - t.zero
        dd = da / t.divisor
        grad = gg * mask + dd * (gg * (c - mask * x / np.where(d == 0, 1, d))).sum(-1, keepdims=True)
        grad = np.where(d == 0, 0.0, grad)
    elif t.kind == "asym1":
        m = p["m"].numpy().reshape(N, nb, 1, 1)
        ds = np.where(d == 0, 1, d)
        r = _R((x32 - m.astype(np.float32)) / ds.astype(np.float32))
        mask = ((r >= 0) & (r <= t.qhi) & (d != 0)).astype(np.float64)
        dmn = _share(x, mn)
        dd = (_share(x, mx) - dmn) / t.qhi
        grad = (gg * mask + dd * (gg * (q - mask * (x - m) / ds)).sum(-1, keepdims=True)
                + dmn * (gg * (1 - mask)).sum(-1, keepdims=True))
    elif t.kind == "asymk":
        dmin = p["dmin"].numpy().reshape(N, nb, 1, 1)
        S = (d * p["sc"].numpy().reshape(N, nb, t.nsub, 1)).astype(np.float32)
        M = (dmin * p["mc"].numpy().reshape(N, nb, t.nsub, 1)).astype(np.float32)
        Ss = np.where(S == 0, 1, S)
        r = _R((x32 + M) / Ss)
        mask = ((r >= 0) & (r <= t.qhi) & (S != 0)).astype(np.float64)
        dlo = _share(x, mn) * (mn <= 0)
        dS = (_share(x, mx) - dlo) / t.qhi
        dM = -dlo
        grad = (gg * mask + dS * (gg * (q - mask * (x + M) / Ss)).sum(-1, keepdims=True)
                + dM * (gg * (mask - 1)).sum(-1, keepdims=True))
    else:
        S = (d * p["sc"].numpy().reshape(N, nb, t.nsub, 1)).astype(np.float32)
        Ss = np.where(S == 0, 1, S)
        r = _R(x32 / Ss)
        mask = ((r >= t.qlo) & (r <= t.qhi) & (S != 0)).astype(np.float64)
        i = np.abs(x).argmax(-1)[..., None]
        dS = _share(x, np.take_along_axis(x, i, -1)) / t.qlo
        grad = gg * mask + dS * (gg * (q - mask * x / Ss)).sum(-1, keepdims=True)
        grad = np.where(S == 0, 0.0, grad)
    return grad.reshape(N, K)


# ---------------------------------------------------------------------------------------------
def test_type_sizes_are_ggml():
    bpw = {"q8_0": 8.5, "q4_0": 4.5, "q5_0": 5.5, "q4_1": 5.0, "q5_1": 6.0, "q2_k": 2.625,
           "q3_k": 3.4375, "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625}
    for fmt, t in RG.TYPES.items():
        assert gguf.GGML_QUANT_SIZES[_gtype(fmt)] == (t.block, t.type_size), fmt
        assert RG.bits_per_weight(fmt) == bpw[fmt]


def test_constants_are_formats_1_8():
    """The table the reference runs on, against FORMATS.md 1.8's text: (block, sub-block, code
    range, zero code / divisor of the 32-blocks, scale-code range of the k types)."""
    spec = {"q8_0": (32, 32, -127, 127, 0, 127.0, 0), "q4_0": (32, 32, 0, 15, 8, -8.0, 0),
            "q5_0": (32, 32, 0, 31, 16, -16.0, 0), "q4_1": (32, 32, 0, 15, 0, 0.0, 0),
            "q5_1": (32, 32, 0, 31, 0, 0.0, 0), "q2_k": (256, 16, 0, 3, 0, 0.0, 15),
            "q4_k": (256, 32, 0, 15, 0, 0.0, 63), "q5_k": (256, 32, 0, 31, 0, 0.0, 63),
            "q3_k": (256, 16, -4, 3, 0, 0.0, 32), "q6_k": (256, 16, -32, 31, 0, 0.0, 128)}
    for fmt, t in RG.TYPES.items():
        assert (t.block, t.sub, t.qlo, t.qhi, t.zero, t.divisor, t.cmax) == spec[fmt], fmt
    assert set(spec) == set(RG.TYPES)


@pytest.mark.parametrize("fmt", TYPES)
def test_params_follow_the_rules(fmt, gen):
    t = RG.TYPES[fmt]
    w = _weights(gen)
    p = RG.params_and_codes(w, fmt)
    q = p["q"]
    assert q.dtype == torch.int64 and q.shape == w.shape
    assert int(q.min()) >= t.qlo and int(q.max()) <= t.qhi
    for k in ("d", "m", "dmin"):
        if k in p:
            v = p[k]
            assert torch.isfinite(v).all() and v.abs().max() <= 65504
            assert torch.equal(v.to(torch.float16).to(torch.float32), v), k
    if "sc" in p:
        lo = 0 if t.kind == "asymk" else -t.cmax
        hi = t.cmax if t.kind == "asymk" else t.cmax - 1
        assert int(p["sc"].min()) >= lo and int(p["sc"].max()) <= hi
        if "mc" in p:
            assert int(p["mc"].min()) >= 0 and int(p["mc"].max()) <= t.cmax
    # an independent per-block reading of the same rules gives the same parameters and codes
    xn = w.numpy()
    for n in range(w.shape[0]):
        for b in range(K // t.block):
            want, wq = _rules(xn[n, b * t.block:(b + 1) * t.block], t)
            np.testing.assert_array_equal(q[n, b * t.block:(b + 1) * t.block].numpy(), wq,
                                          err_msg=f"{fmt} row {n} block {b}: codes")
            for k, v in want.items():
                got = p[k][n, b].reshape(-1).numpy()
                np.testing.assert_array_equal(got, np.array(v, dtype=got.dtype),
                                              err_msg=f"{fmt} row {n} block {b}: {k}")
    # the rules reach the corners this data is made for
    if t.kind == "sym0":
        assert (p["d"] == 0).any()                 # the tiny row
    if t.kind in ("asymk", "symk"):
        assert (p["sc"] == 0).any()                # the sub-block of scale code 0


@pytest.mark.parametrize("fmt", TYPES)
def test_gguf_dequantize_of_reference_blocks(fmt, gen):
    w = _weights(gen, rows_per_kind=2)
    blocks = RG.pack(RG.params_and_codes(w, fmt), fmt)
    t = RG.TYPES[fmt]
    assert blocks.dtype == torch.uint8 and blocks.shape == (w.shape[0], K // t.block * t.type_size)
    theirs = torch.from_numpy(gguf.quants.dequantize(blocks.numpy(), _gtype(fmt)))
    ours = RG.dequantize(blocks, fmt)
    fq = RG.fake_quant(w, fmt)
    assert RG.same_bits(theirs, ours)
    assert RG.same_bits(fq, ours)
    assert torch.isfinite(fq).all()
    # the quantization is a real one: within half a step of the data where nothing clamps
    g = w[0:1]
    err = (RG.fake_quant(g, fmt) - g).abs().max().item()
    assert 0 < err < 0.02 * 2 ** (-0.5 * (RG.bits_per_weight(fmt) - 4)) * 4


def _random_blocks(fmt, gen, n=64):
    """Arbitrary block bytes with finite fp16 fields (d, dmin, m)."""
    t = RG.TYPES[fmt]
    b = torch.randint(0, 256, (n, t.type_size), generator=gen, dtype=torch.int64).to(torch.uint8)
    halves = {"q8_0": [0], "q4_0": [0], "q5_0": [0], "q4_1": [0, 2], "q5_1": [0, 2],
              "q2_k": [80, 82], "q4_k": [0, 2], "q5_k": [0, 2], "q3_k": [108], "q6_k": [208]}[fmt]
    for off in halves:
        v = (torch.randn(n, generator=gen) * 0.01).to(torch.float16)
        v[:3] = torch.tensor([0.0, -0.0, 6.0e-8], dtype=torch.float16)   # zero, -0, subnormal
        b[:, off:off + 2] = v.view(torch.int16).unsqueeze(-1).view(torch.uint8)
    return b.reshape(n // 4, 4 * t.type_size)


@pytest.mark.parametrize("fmt", TYPES)
def test_dequantize_of_arbitrary_blocks(fmt, gen):
    b = _random_blocks(fmt, gen)
    theirs = torch.from_numpy(gguf.quants.dequantize(b.numpy(), _gtype(fmt)))
    assert RG.same_bits(RG.dequantize(b, fmt), theirs)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q5_0", "q4_1", "q5_1"])
def test_dequantize_of_gguf_quantize(fmt, gen):
    w = _weights(gen).numpy()
    w = w[np.abs(w).max(-1) < 1e4]                 # gguf-py's quantize overflows fp16 beyond
    blocks = gguf.quants.quantize(w, _gtype(fmt))
    theirs = torch.from_numpy(gguf.quants.dequantize(blocks, _gtype(fmt)))
    assert RG.same_bits(RG.dequantize(blocks, fmt), theirs)


@pytest.mark.parametrize("fmt", TYPES)
def test_fake_quant_gradient_matches_the_formula(fmt, gen):
    w = _weights(gen)
    w = w[torch.arange(w.shape[0]) != 7]            # the clamped-huge row: finite but degenerate
    w = w.clone().requires_grad_(True)
    g = torch.randn(w.shape, generator=gen)
    RG.fake_quant(w, fmt).backward(g)
    want = _grad_formula(w.detach(), g, fmt)
    got = w.grad.double().numpy()
    assert np.isfinite(got).all()
    scale = np.abs(want).max(-1, keepdims=True) + 1e-30
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=2e-5)
    # the formula is not the identity: the statistics' terms are there
    assert np.abs(want - g.numpy() * (want != 0)).max() > 1e-2


@pytest.mark.parametrize("fmt", ["q4_k", "q6_k", "q4_0"])
def test_identity_ste_and_dtypes(fmt, gen):
    w = (_weights(gen)[:4] * 1).to(torch.bfloat16).requires_grad_(True)
    y = RG.fake_quant(w, fmt, ste="identity")
    assert y.dtype == torch.bfloat16
    assert RG.same_bits(y.float(), RG.fake_quant(w.detach(), fmt).float())
    y.backward(torch.full_like(y, 3.0))
    assert torch.equal(w.grad, torch.full_like(w, 3.0))


def test_bad_input():
    with pytest.raises(ValueError, match="multiple"):
        RG.params_and_codes(torch.zeros(2, 96), "q4_k")
    with pytest.raises(ValueError, match="2-D"):
        RG.fake_quant(torch.zeros(256), "q6_k")
    with pytest.raises(ValueError, match="unknown type"):
        RG.pack({"q": torch.zeros(1, 32, dtype=torch.int64)}, "q7_k")
    with pytest.raises(ValueError, match="ste"):
        RG.fake_quant(torch.zeros(1, 32), "q8_0", ste="nope")
    with pytest.raises(ValueError, match="uint8"):
        RG.dequantize(torch.zeros(1, 35, dtype=torch.uint8), "q8_0")
