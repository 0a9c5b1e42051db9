"""tests/test_fuzz.py: the fuzz harness of the raw torch.ops.lowbit.* ops.

Hypothesis draws each case as plain data (shapes, dtypes, strides, integer and float
arguments, incl. values near the int32/int64 limits); a child process (one per test module,
restarted after a crash) builds the tensors from it, seeded, and calls the op on CPU and with the
same arguments on the meta device and on CPU FakeTensors (the fake kernel, as torch.compile
traces it). Checked per case:
  * a crash (signal, abort) fails the test naming the case, never kills pytest;
  * the op returns or raises RuntimeError / ValueError / TypeError (nothing else);
  * real and fake kernels agree on whether they raise (naming the same argument) and on every
    output's shape and dtype;
  * a result equals the reference (tests/reference*.py, written from FORMATS.md) where the
    entry has one. Quantized references skip elements at rounding ties (FORMATS.md: tests
    avoid midpoints), as test_fake_quant does.
Tensor *contents* are always valid (a 2:4 meta from a real mask, codes from lowbit.quantize):
the data-dependent checks (meta content, tiny temperatures) cannot be seen by a fake kernel and
have their own tests. Each op is one entry of OPS: a hypothesis strategy of its parameters, a
builder of its arguments and an optional reference. The qlinear entries (today's schema) are
in one block of their own.

Hostile *values* are drawn too, where the contract says what they give: logit rows without a
finite value (all -inf, all but one -inf, -inf in the student only) for the losses, and NaN,
+-inf and 1e38 activations for every linear op, against float64 references (NaN and inf where
the reference has them). PUBLIC holds the same for the public functions (kl_div_loss with every
kind and reduction, fused_linear_kl_loss, sparse24_linear with float and int4 kept values,
quant_linear in every accuracy mode), run the same way. llama.cpp's block types (FORMATS.md 1.8)
are PUBLIC entries too (fake_quantize forward and both STEs' backward, quantize, dequantize of
arbitrary blocks: non-contiguous and 16-bit weights, fp16-clamped and vanishing scales, NaN/Inf
blocks; quant_linear in every mode, as the raw op's "quant_linear.blocks" entry too) against
tests/reference_ggml.py and gguf-py, plus test_block_types_edges for every type.

Short profile: the suite (derandomized, 60 examples per op). Long: ``-m slow`` (500 per op;
HYPOTHESIS_PROFILE=lowbit-long draws new ones), also under scripts/sanitize.sh."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import pytest

pytest.importorskip("lowbit")
st = pytest.importorskip("hypothesis.strategies")
from hypothesis import Phase, given, settings  # noqa: E402

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CLEAN = ("RuntimeError", "ValueError", "TypeError")
MAX_NUMEL = 1 << 16

# ---------------------------------------------------------------------------------------------
# value pools
# ---------------------------------------------------------------------------------------------
EDGE_INTS = [0, -1, -2, 2 ** 31 - 1, 2 ** 31, -2 ** 31, -2 ** 31 - 1, 2 ** 32, 2 ** 32 + 4,
             2 ** 32 + 2, 2 ** 62, 2 ** 63 - 1, -2 ** 63]
DTYPES = ["float32", "bfloat16", "float16"]
ODD_DTYPES = ["float64", "int32", "uint8", "int64"]
LAYOUTS = ["contig"] * 6 + ["t", "step"]


def _mix(sensible, odd):
    """A sensible value about 9 times in 10, else an odd one. The choice is an explicit draw
    (hypothesis favours boundary values of a one_of's branches and of small integer ranges)."""
    return st.tuples(st.integers(0, 9), st.sampled_from(sensible), st.sampled_from(odd)).map(
        lambda t: t[2] if t[0] == 7 else t[1])


def ints(*sensible):
    """An integer argument: mostly a sensible value, sometimes one near a C type limit."""
    return _mix(sensible, EDGE_INTS)


def dims(*sensible):
    """A tensor size (tensors stay small; huge sizes are the integer arguments' business)."""
    return st.sampled_from(sensible)


def dtypes():
    return _mix(DTYPES, ODD_DTYPES)


def fdtypes():
    return st.sampled_from(DTYPES)


FMT = ints(0, 0, 1, 2)                     # int, nf, fp codes (tests/test_constants checks them)
BITS = ints(2, 2, 3, 4, 4, 1, 8)
GROUP = ints(32, 32, 16, 16, 64, 3)


def tensor(shape, dtype="float32", layout="contig"):
    return {"shape": list(shape), "dtype": dtype, "layout": layout}


# ---------------------------------------------------------------------------------------------
# child side: tensors from a case
# ---------------------------------------------------------------------------------------------
def make(spec, gen, fill=None):
    """A CPU tensor from a spec: its layout is "contig", "t" (a transposed view of a 2-D
    tensor) or "step" (every other column); fill(shape, dtype) or seeded randn / small ints."""
    dt = getattr(torch, spec["dtype"])
    shape = list(spec["shape"])
    numel = 1
    for d in shape:
        numel *= max(d, 0)
    if numel > MAX_NUMEL or min(shape, default=0) < 0:  # huge sizes: the int-argument cases
        raise ValueError(f"shape {shape}: not built (the harness allocates small tensors only)")

    def base(sh):
        if fill is not None:
            return fill(sh, dt)
        if dt.is_floating_point:
            return torch.randn(sh, generator=gen).to(dt)
        return torch.randint(0, 4, sh, generator=gen).to(dt)

    lay = spec["layout"]
    if lay == "t" and len(shape) == 2:
        return base(shape[::-1]).t()
    if lay == "step" and len(shape) >= 1:
        return base(shape[:-1] + [2 * shape[-1]])[..., ::2]
    return base(shape)


def to_meta(a):
    if isinstance(a, torch.Tensor):
        return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")
    return a


def rand_mask24(n, k, gen):
    """A (n, k) bool 2:4 mask (2 kept per group of 4; k a multiple of 4)."""
    r = torch.rand(n, k // 4, 4, generator=gen)
    idx = r.argsort(-1)[..., :2]
    m = torch.zeros(n, k // 4, 4, dtype=torch.bool)
    m.scatter_(-1, idx, True)
    return m.reshape(n, k)


def scatter24(values, mask):
    dense = torch.zeros(mask.shape, dtype=torch.float64)
    dense[mask] = values.double().reshape(-1)
    return dense


SCALE_DTYPES = ["float32", "bfloat16", "float16"]  # by code: FORMATS.md 1.6's scale_dtype


def quant_ref(w, fmt, bits, g, sym, sdt=0):
    """(reference fake-quant of w in float64, bool mask of elements not at a rounding tie).
    llama.cpp's block types (fmt >= 3): reference_ggml's fake-quant, which lowbit's blocks
    dequantize to bit for bit (FORMATS.md 1.8; its rules have no tie to avoid)."""
    from _testutil import near_tie_masks
    from reference import ref_fake_quant

    if fmt >= 3:
        import reference_ggml as RG
        from lowbit._constants import FORMAT_CODES

        name = {c: f for f, c in FORMAT_CODES.items()}[fmt]
        return RG.fake_quant(w.float(), name).double(), torch.ones(w.shape, dtype=torch.bool)
    name = ["int", "nf", "fp"][fmt]
    n, k = w.shape
    gg = k if g == -1 else g
    sd = SCALE_DTYPES[sdt]
    ref = ref_fake_quant(w.float(), name, bits, g, sym, scale_dtype=sd)
    bad, bad_g = near_tie_masks(w.float().reshape(n, k // gg, gg), name, bits, sym,
                                scale_dtype=sd)
    ok = ~(bad | bad_g.unsqueeze(-1)).reshape(n, k)
    return ref.double(), ok


def close(got, ref, what, ok=None):
    """got against a float64 reference rounded to got's dtype (an overflow is inf on both
    sides): NaN exactly where the reference is NaN, infinities equal, the rest close."""
    ref = ref.to(got.dtype).double() if got.dtype.is_floating_point else ref.double()
    got = got.double()
    if ok is not None:
        got, ref = got[ok], ref[ok]
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


# ---- hostile values (FORMATS.md 2 and 4 say what they give) ----
X_SPECIALS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "big": 1e38}
XS = st.sampled_from(["none", "none", "none", "nan", "inf", "-inf", "big", "rows"])


def put_specials(x, xs, gen):
    """x (M, K) with hostile values in place (views write through): one of X_SPECIALS at a
    random element, or "rows": row i gets the i-th special at a random column."""
    if xs == "none" or not x.dtype.is_floating_point or x.dim() != 2 or not x.numel():
        return x
    m, k = x.shape
    pick = [xs] if xs != "rows" else list(X_SPECIALS)[:m]
    for i, name in enumerate(pick):
        r = i if xs == "rows" else int(torch.randint(0, m, (1,), generator=gen))
        x[r, int(torch.randint(0, k, (1,), generator=gen))] = X_SPECIALS[name]
    return x


KL_ROWS = st.sampled_from(["none", "none", "t_dead", "s_dead", "both_dead", "t_one", "s_one",
                           "holes"])


def put_kl_rows(s, t, rows, row, gen):
    """Logit rows without a distribution, in place: row ``row`` of the teacher and / or student
    all -inf ("t_dead", "s_dead", "both_dead"), all -inf but one logit ("t_one", "s_one"), or
    -inf holes in both and in the student alone ("holes")."""
    if rows == "none" or s.dim() < 2 or not s.shape[-2] or not s.shape[-1]:
        return
    V = s.shape[-1]
    row = min(row, s.shape[-2] - 1)
    keep = int(torch.randint(0, V, (1,), generator=gen))
    if rows in ("t_dead", "both_dead"):
        t[..., row, :] = float("-inf")
    if rows in ("s_dead", "both_dead"):
        s[..., row, :] = float("-inf")
    if rows in ("t_one", "s_one"):
        x = t if rows == "t_one" else s
        x[..., row, :keep] = float("-inf")
        x[..., row, keep + 1:] = float("-inf")
    if rows == "holes":
        both = torch.rand(s.shape, generator=gen) < 0.3
        only_s = torch.rand(s.shape, generator=gen) < 0.2
        t[both] = float("-inf")
        s[both | only_s] = float("-inf")


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
@dataclass
class Entry:
    params: Callable          # hypothesis strategy of a JSON-able dict
    build: Callable           # (p, gen) -> argument tuple (CPU tensors)
    ref: Optional[Callable] = None  # (p, args, outputs) -> None, AssertionError on mismatch
    cpu_only: bool = False    # a CUDA-only op: on CPU it must raise cleanly; no fake compare
    fn: Optional[Callable] = None  # PUBLIC entries: the function called (else the op itself)
    fake: bool = True         # also run on meta tensors and FakeTensors, compared with the cpu run


def _w_params(**extra):
    return st.fixed_dictionaries({
        "w": st.builds(lambda n, k, d, l: tensor((n, k), d, l), dims(4, 4, 1, 0, 3), dims(64, 64, 32, 32, 96, 0, 12),
                       dtypes(), st.sampled_from(LAYOUTS)),
        "fmt": FMT, "bits": BITS, "g": GROUP, "sym": st.booleans(), **extra})


# the ops that compute scales take scale_dtype (FORMATS.md 1.6), and weights large enough that a
# float16 / bfloat16 scale saturates at the dtype's largest value (u beyond [-1, 1]: the snap must
# stay inside the level table) are drawn for every format
SCALED = dict(sdt=ints(0, 1, 2, 2), mag=st.sampled_from([1.0, 1e5, 3e5, 1e37]))


def _scaled_w(p, gen):
    """p's weight times p's magnitude (capped so a 16-bit weight stays finite: saturation of the
    scale is the float32 weights' case)."""
    def fill(sh, dt):
        mag = min(p["mag"], torch.finfo(dt).max / 8) if dt.is_floating_point else 1.0
        return (torch.randn(sh, generator=gen, dtype=torch.float64) * mag).to(dt)
    return make(p["w"], gen, fill=fill)


def _fq_ref(p, args, out):
    w, fmt, bits, g, sym, ste, sdt = args
    if w.numel() == 0:
        return
    ref, ok = quant_ref(w, fmt, bits, g, sym, sdt)
    close(out[0], ref.to(w.dtype), "fake_quant", ok)


def _quantize_ref(p, args, out):
    w, fmt, bits, g, sym, sdt = args
    if w.numel() == 0:
        return
    deq = torch.ops.lowbit.dequantize(*out, fmt, bits, g, sym, w.shape[1], 0)
    ref, ok = quant_ref(w, fmt, bits, g, sym, sdt)
    close(deq, ref, "dequantize(quantize(w))", ok)
    codes = out[0].to(torch.int64)  # every code within its bits (a wider one would spill)
    j = torch.arange(w.shape[1])
    byte, sh = (j * bits) // 8, (j * bits) % 8
    word = codes[:, byte] | (torch.cat([codes, torch.zeros_like(codes[:, :1])], 1)[:, byte + 1] << 8)
    q = (word >> sh) & ((1 << bits) - 1)
    ref_q = _ref_codes(w, fmt, bits, g, sym, sdt)
    assert torch.equal(q[ok], ref_q[ok]), "quantize: codes differ from the reference's"


def _ref_codes(w, fmt, bits, g, sym, sdt):
    from reference import ref_codes

    return ref_codes(w.float(), ["int", "nf", "fp"][fmt], bits, g, sym,
                     scale_dtype=SCALE_DTYPES[sdt])


def _qw(p, gen):
    """(w, codes, scales, zeros) from a valid quantize of a float32 (n, k) weight."""
    n, k = p["n"], p["k"]
    _resolve_q(p)
    assert n * k <= MAX_NUMEL
    w = torch.randn(n, k, generator=gen)
    codes, scales, zeros = torch.ops.lowbit.quantize(w, p["qfmt"], p["qbits"], p["qg"], p["qsym"])
    return w, codes, scales, zeros


def _valid_fmt_bits():
    from lowbit._constants import FORMAT_BITS, FORMAT_CODES

    return [(FORMAT_CODES[f], b) for f, bits in sorted(FORMAT_BITS.items()) for b in bits
            if b <= 4]


QW = dict(n=st.sampled_from([4, 1, 3]), k=st.sampled_from([64, 32, 96]),
          qfb=st.sampled_from(_valid_fmt_bits()), qg=st.sampled_from([32, 16]),
          qsym=st.booleans())
# the op's own spec arguments: mostly "q" (those the codes were made with), else another value
Q_ARGS = dict(fmt=_mix(["q"], [0, 1, 2, -1, 3, 2 ** 31, 2 ** 32]),
              bits=_mix(["q"], [1, 2, 3, 4, 8, 0, 2 ** 32 + 4, -2 ** 63]),
              g=_mix(["q"], [16, 32, 64, 3, 0, -1, 2 ** 62]), sym=_mix(["q"], [True, False]))


def _resolve_q(p):
    p["qfmt"], p["qbits"] = p["qfb"]
    for a in ("fmt", "bits", "g", "sym"):
        if p[a] == "q":
            p[a] = p["q" + a]


def _same_as_q(p):
    return all(p[a] == p["q" + a] for a in ("fmt", "bits", "g", "sym"))


def _dequantize_ref(p, args, out):
    if not _same_as_q(p) or p["K"] != p["k"] or p["dtype"] != 0:
        return
    ref, ok = quant_ref(p["_w"], p["qfmt"], p["qbits"], p["qg"], p["qsym"])
    close(out[0], ref, "dequantize", ok)


def _dequantize_build(p, gen):
    w, codes, scales, zeros = _qw(p, gen)
    p["K"] = p["k"] if p["K"] == "k" else p["K"]
    p["_w"] = w
    return (codes, scales, zeros, p["fmt"], p["bits"], p["g"], p["sym"], p["K"], p["dtype"])


def _s24(p, gen):
    """(values (n, k/2) of dtype vd with p's layout, meta from a random 2:4 mask, the mask)."""
    n, k = p["n"], p["k"]
    if not (0 <= n and 0 <= k and n * k <= MAX_NUMEL):
        raise ValueError("sizes: not built (small tensors only)")
    mask = rand_mask24(n, k - k % 4, gen) if k >= 4 else torch.zeros(n, 0, dtype=torch.bool)
    from lowbit.sparse.sparse24_weight import meta_from_mask

    meta = meta_from_mask(mask) if k % 4 == 0 and k > 0 else \
        torch.zeros(n, max(1, (k + 7) // 8), dtype=torch.uint8)
    values = make(tensor((n, k // 2), p["vd"], p["vl"]), gen)
    return values, meta, mask


S24 = dict(n=dims(4, 1, 3, 0), k=dims(16, 8, 32, 12, 6, 0), vd=dtypes(),
           vl=st.sampled_from(LAYOUTS))


def _decompress_ref(p, args, out):
    values, meta = args
    close(out[0], scatter24(values, p["_mask"]), "sparse24_decompress")


def _decompress_build(p, gen):
    values, meta, p["_mask"] = _s24(p, gen)
    return values, meta


def _linear24_build(p, gen):
    values, meta, p["_mask"] = _s24(p, gen)
    xd = p["vd"] if p["xd"] == "v" else p["xd"]  # x and values share a dtype, mostly
    x = put_specials(make(tensor((p["m"], p["k"] + p["dk"]), xd, p["xl"]), gen), p["xs"], gen)
    nb = p["n"] if p["nb"] == 4 else p["nb"]     # 4: the right size
    bias = make(tensor((nb,), p["vd"]), gen) if nb >= 0 else torch.empty(0)
    return x, values, meta, bias


def _linear24_ref(p, args, out):
    x, values, meta, bias = args
    y = x.double() @ scatter24(values, p["_mask"]).T
    if bias.numel():
        y = y + bias.double()
    close(out[0], y, "sparse24_linear")


def _gradx24_build(p, gen):
    values, meta, p["_mask"] = _s24(p, gen)
    g = put_specials(make(tensor((p["m"], p["n"] + p["dk"]), p["xd"], p["xl"]), gen), p["xs"],
                     gen)
    return g, values, meta


def _gradx24_ref(p, args, out):
    g, values, meta = args
    close(out[0], g.double() @ scatter24(values, p["_mask"]), "sparse24_grad_x")


def _qlinear24_build(p, gen):
    n, k = p["n"], p["k"]
    mask = rand_mask24(n, k, gen)
    from lowbit.sparse.sparse24_weight import meta_from_mask

    kept = torch.randn(n, k // 2, generator=gen)
    _resolve_q(p)
    codes, scales, zeros = torch.ops.lowbit.quantize(kept, p["qfmt"], p["qbits"], p["qg"],
                                                     p["qsym"])
    p["_mask"], p["_kept"] = mask, kept
    x = put_specials(make(tensor((p["m"], k + p["dk"]), p["xd"], p["xl"]), gen), p["xs"], gen)
    bias = make(tensor((n,), p["xd"]), gen) if p["bias"] else torch.empty(0)
    return (x, codes, scales, zeros, meta_from_mask(mask), bias, p["fmt"], p["bits"], p["g"],
            p["sym"])


def _qlinear24_ref(p, args, out):
    if not _same_as_q(p):
        return
    x, bias = args[0], args[5]
    ref, ok = quant_ref(p["_kept"], p["qfmt"], p["qbits"], p["qg"], p["qsym"])
    if not bool(ok.all()):  # one tie moves a whole output: compare only tie-free weights
        return
    y = x.double() @ scatter24(ref, p["_mask"]).T
    if bias.numel():
        y = y + bias.double()
    close(out[0], y, "sparse24_qlinear")


KL_NAMES = ["forward", "reverse", "cakld", "jsd"]
REDUCTIONS = ("mean", "sum", "batchmean", "none")
TAUS = st.one_of(st.sampled_from([1.0, 2.0, 0.5]),
                 st.sampled_from([0.0, -1.0, 1e-39, 1e39, float("inf"), float("nan")]))
UNIT = st.one_of(st.sampled_from([0.5, 0.0, 1.0, 0.25]),
                 st.sampled_from([-0.5, 1.5, float("nan")]))


def _kl_params(**extra):
    return st.fixed_dictionaries({
        "r": dims(3, 1, 0), "v": dims(16, 7, 1, 0), "dv": st.sampled_from([0, 0, 0, 1]),
        "sd": dtypes(), "td": fdtypes(), "sl": st.sampled_from(LAYOUTS),
        "kind": ints(0, 1, 2, 3), "gamma": UNIT, "beta": UNIT, "tau": TAUS,
        "ign": ints(-100, 0, 2), "labels": st.sampled_from(["none", "some", "short"]),
        "rows": KL_ROWS, "row": st.integers(0, 2), **extra})


def _kl_common(p, gen):
    s = make(tensor((p["r"], p["v"]), p["sd"], p["sl"]), gen)
    t = make(tensor((p["r"], p["v"] + p["dv"]), p["td"]), gen)
    if s.dtype.is_floating_point and s.shape == t.shape:
        put_kl_rows(s, t, p["rows"], p["row"], gen)
    r = max(p["r"], 0)
    if p["labels"] == "none":
        lab = torch.empty(0, dtype=torch.int64)
    else:
        lab = torch.randint(0, max(p["v"], 1), (r if p["labels"] == "some" else r + 1,),
                            generator=gen)
        if r:
            lab[0] = p["ign"] if -2 ** 63 <= p["ign"] < 2 ** 63 else 0
    return s, t, lab


def _kl_build(p, gen):
    s, t, lab = _kl_common(p, gen)
    return (s, t, lab, p["kind"], p["gamma"], p["beta"], p["tau"], p["ign"],
            p["labels"] != "none", p["with_grad"], p["scale"])


def _kl_ref_rows(p, s, t, lab):
    from reference_kl import ref_rows

    sd = s.double().requires_grad_(True)
    keep = None if p["labels"] == "none" else lab != p["ign"]
    rows = ref_rows(sd, t.double(), KL_NAMES[p["kind"]], p["gamma"], p["beta"], p["tau"], keep)
    if keep is not None:
        rows = torch.where(keep, rows, torch.zeros_like(rows))
    return sd, rows


def _kl_ref(p, args, out):
    s, t, lab = args[:3]
    sd, rows = _kl_ref_rows(p, s, t, lab)
    close(out[0], rows.detach(), "kl_loss rows")
    if p["with_grad"] and s.numel():
        (g,) = torch.autograd.grad(rows.sum() * p["scale"], sd)
        close(out[1], g, "kl_loss grad")


def _klb_build(p, gen):
    s, t, lab = _kl_common(p, gen)
    gl = make(tensor((p["r"] + p["dr"],), "float32"), gen)
    return (gl, s, t, lab, p["kind"], p["gamma"], p["beta"], p["tau"], p["ign"],
            p["labels"] != "none")


def _klb_ref(p, args, out):
    gl, s, t, lab = args[:4]
    if not s.numel():
        return
    sd, rows = _kl_ref_rows(p, s, t, lab)
    (g,) = torch.autograd.grad((rows * gl.double()).sum(), sd)
    close(out[0], g, "kl_loss_backward")


def _clip_build(p, gen):
    w = _scaled_w(p, gen)
    gg = p["gg"]
    k = p["w"]["shape"][1]
    gram = make(tensor((k // gg if gg > 0 else 0, gg, gg)), gen) if gg >= 0 else torch.empty(0)
    return w, gram, p["fmt"], p["bits"], p["g"], p["sym"], p["n_grid"], p["shrink"], p["sdt"]


def _clip_ref(p, args, out):
    """Every (lo, hi) the search returns is one of its candidates (max, min times 1 - i/n_grid,
    in float32), whatever the weights' magnitude and the scale dtype; which candidate wins is
    tests/test_qat.py's and tests/test_format_table.py's business (on a real Gram matrix)."""
    w, gram, fmt, bits, g, sym, n_grid, shrink, sdt = args
    lo, hi = out
    n, k = w.shape
    wg = w.float().reshape(n, k // g, g)
    fac = 1 - torch.arange(shrink, dtype=torch.float32) / n_grid
    his = wg.amax(-1, keepdim=True) * fac
    los = wg.amin(-1, keepdim=True) * fac
    assert ((hi.unsqueeze(-1) == his).any(-1) & (lo.unsqueeze(-1) == los).any(-1)).all(), \
        "clip_search: a bound that is none of the candidates"


OPS = {
    "fake_quant": Entry(
        _w_params(ste=ints(0, 1), **SCALED),
        lambda p, gen: (_scaled_w(p, gen), p["fmt"], p["bits"], p["g"], p["sym"], p["ste"],
                        p["sdt"]),
        _fq_ref),
    "fake_quant_backward": Entry(
        _w_params(gl=st.sampled_from(["same", "other"]), **SCALED),
        lambda p, gen: (make(p["w"] if p["gl"] == "same" else
                             tensor([p["w"]["shape"][0], p["w"]["shape"][1] + 1]), gen),
                        _scaled_w(p, gen), p["fmt"], p["bits"], p["g"], p["sym"], p["sdt"])),
    "quantize": Entry(
        _w_params(**SCALED),
        lambda p, gen: (_scaled_w(p, gen), p["fmt"], p["bits"], p["g"], p["sym"], p["sdt"]),
        _quantize_ref),
    "dequantize": Entry(
        st.fixed_dictionaries({**QW, **Q_ARGS, "K": _mix(["k"], [32, 64, 96, 0, 2 ** 32]),
                               "dtype": ints(0, 1, 2)}),
        _dequantize_build, _dequantize_ref),
    "clip_search": Entry(
        _w_params(gg=ints(32, 16, 0), n_grid=ints(20, 2, 1), shrink=ints(0, 1), **SCALED),
        _clip_build, _clip_ref),
    "kl_loss": Entry(
        _kl_params(with_grad=st.booleans(), scale=st.sampled_from([1.0, 0.5, -2.0])),
        _kl_build, _kl_ref),
    "kl_loss_backward": Entry(_kl_params(dr=st.sampled_from([0, 0, 1])), _klb_build, _klb_ref),
    "sparse24_decompress": Entry(st.fixed_dictionaries(S24), _decompress_build, _decompress_ref),
    "sparse24_linear": Entry(
        st.fixed_dictionaries({**S24, "m": dims(3, 1, 0, 8, 9), "dk": st.sampled_from([0, 0, 4]),
                               "xd": _mix(["v"], DTYPES + ODD_DTYPES),
                               "xl": st.sampled_from(LAYOUTS),
                               "nb": st.sampled_from([-1, -1, 4, 3]), "xs": XS}),
        _linear24_build, _linear24_ref),
    "sparse24_grad_x": Entry(
        st.fixed_dictionaries({**S24, "m": dims(3, 1, 0, 8), "dk": st.sampled_from([0, 0, 1]),
                               "xd": dtypes(), "xl": st.sampled_from(LAYOUTS), "xs": XS}),
        _gradx24_build, _gradx24_ref),
    "sparse24_qlinear": Entry(
        st.fixed_dictionaries({**QW, "k": st.sampled_from([64, 128]), **Q_ARGS,
                               "m": dims(3, 1, 0, 9), "dk": st.sampled_from([0, 0, 4]),
                               "xd": dtypes(), "xl": st.sampled_from(LAYOUTS),
                               "bias": st.booleans(), "xs": XS}),
        _qlinear24_build, _qlinear24_ref),
    "sparse24_cslt_compress": Entry(
        st.fixed_dictionaries({"w": st.builds(tensor, st.tuples(dims(16, 0), dims(32, 0)),
                                              dtypes())}),
        lambda p, gen: (make(p["w"], gen),), cpu_only=True),
    "sparse24_cslt_linear": Entry(
        st.fixed_dictionaries({"m": dims(4, 0), "k": dims(32, 0), "n": ints(16, 0, -1)}),
        lambda p, gen: (make(tensor((p["m"], p["k"])), gen),
                        torch.zeros(64, dtype=torch.uint8),
                        torch.full((max(p["n"], 0) if p["n"] < 64 else 0,
                                    max(1, (p["k"] + 7) // 8)), 0x44, dtype=torch.uint8),
                        torch.empty(0), p["n"]),
        cpu_only=True),
}


# ---- qlinear family: qlinear_pack(codes, bits, K) -> packed; qlinear_unpack(packed, N, K, bits);
# quant_linear(x, codes, scales, zeros, packed, bias, fmt, bits, g, sym, act) (the codes either
# canonical with packed empty, or as the layout with codes empty); qlinear_dequant_t(packed,
# scales, zeros, fmt, bits, g, sym, N, K, kb0, kb1)
def _ql_build(p, gen):
    w, codes, scales, zeros = _qw(p, gen)
    p["_w"] = w
    return codes, scales, zeros


def _ql_packed(codes, p):
    return torch.ops.lowbit.qlinear_pack(codes, p["qbits"], p["k"])


def _ql_pack_build(p, gen):
    codes, _, _ = _ql_build(p, gen)
    p["K"] = p["k"] if p["K"] == "k" else p["K"]
    return codes, p["bits"], p["K"]


def _ql_unpack_build(p, gen):
    codes, _, _ = _ql_build(p, gen)
    p["_codes"] = codes
    for a, v in (("N", p["n"]), ("K", p["k"])):
        p[a] = v if p[a] == "q" else p[a]
    return _ql_packed(codes, p), p["N"], p["K"], p["bits"]


def _ql_unpack_ref(p, args, out):
    if (p["N"], p["K"], p["bits"]) == (p["n"], p["k"], p["qbits"]):
        assert torch.equal(out[0], p["_codes"]), "qlinear_unpack: codes differ"


def _quant_linear_build(p, gen):
    codes, scales, z = _ql_build(p, gen)
    packed = torch.empty((0, 0), dtype=torch.int32)
    if p["form"] == "packed":
        packed, codes = _ql_packed(codes, p), codes.new_empty((0, 0))
    x = put_specials(make(tensor((p["m"], p["k"] + p["dk"]), p["xd"], p["xl"]), gen), p["xs"],
                     gen)
    bias = make(tensor((p["n"],), p["xd"]), gen) if p["bias"] else torch.empty(0)
    return (x, codes, scales, z, packed, bias, p["fmt"], p["bits"], p["g"], p["sym"], p["act"])


def special_rows(x):
    """Rows of x holding a non-finite value or one beyond 2^64: every accuracy mode computes
    them as act="float" does (FORMATS.md 4), so they must equal its reference."""
    return ~(x.double().abs() <= 2.0 ** 64).all(-1)


def _quant_linear_ref(p, args, out):
    """act float: F.linear of the code values. int8 (INT/FP codes, whose levels are exact in the
    integer table): per row, that of x rounded as FORMATS.md 4 says, or the float result (a row
    may fall back to float); NF under int8 rounds its levels too: tests/test_qlinear_modes.py
    checks it at its bound on large shapes. auto: within 1e-4 of float. Norm-wise, plus the
    rounding of a 16-bit output."""
    if not _same_as_q(p) or p["act"] not in (0, 1, 2):
        return
    ref, ok = quant_ref(p["_w"], p["qfmt"], p["qbits"], p["qg"], p["qsym"])
    if not bool(ok.all()):
        return
    x, bias = args[0], args[5]
    b = bias.double() if bias.numel() else 0.0
    y = x.double() @ ref.T + b
    if p["act"] == 0:
        close(out[0], y, "quant_linear")
        return
    bad = special_rows(x)
    close(out[0][bad], y[bad], f"quant_linear act={p['act']}: rows with inf/nan/huge values")
    x, y, out = x[~bad], y[~bad], (out[0][~bad],)
    if not y.numel() or (p["act"] == 1 and (p["qfmt"] == 1 or x.shape[1] % 32)):
        return
    got = out[0].double()
    cands = [y]
    if p["act"] == 1:
        xb = x.float().reshape(x.shape[0], -1, 32)
        d = xb.abs().amax(-1, keepdim=True) / 127
        q = torch.round(torch.where(d > 0, xb / d, torch.zeros_like(xb)))  # half to even
        cands.append((q.double() * d.double()).reshape(x.shape) @ ref.T + b)
    bound = {1: 1e-3, 2: 1e-4}[p["act"]] + {torch.bfloat16: 2 ** -8,
                                              torch.float16: 2 ** -11}.get(x.dtype, 0.0)
    if p["act"] == 1:  # per row the nearer candidate, then norm-wise over the output
        best = torch.stack([min(cands, key=lambda c: float((got[i] - c[i]).norm()))[i]
                            for i in range(y.shape[0])])
    else:
        best = y
    err = float((got - best).norm() / best.norm().clamp_min(1e-30))
    assert err <= bound, f"quant_linear act={p['act']}: relative error {err:.3g} > {bound}"


def _dequant_t_build(p, gen):
    codes, scales, z = _ql_build(p, gen)
    return _ql_packed(codes, p), scales, z, p["fmt"], p["bits"], p["g"], p["sym"], p["N"], \
        p["K"], p["kb0"], p["kb1"]


QL = dict(QW, qg=st.sampled_from([32]), **Q_ARGS)
OPS.update({
    "qlinear_pack": Entry(st.fixed_dictionaries({**QL, "K": _mix(["k"], [32, 64, 96, 0, 2 ** 61])}),
                          _ql_pack_build),
    "qlinear_unpack": Entry(
        st.fixed_dictionaries({**QL, "N": _mix(["q"], [1, 0, -1, 2 ** 62]),
                               "K": _mix(["q"], [32, 0, -1, 2 ** 61])}),
        _ql_unpack_build, _ql_unpack_ref),
    "quant_linear": Entry(
        st.fixed_dictionaries({**QL, "m": dims(3, 1, 8, 0), "dk": st.sampled_from([0, 0, 4]),
                               "xd": dtypes(), "xl": st.sampled_from(LAYOUTS),
                               "bias": st.booleans(), "form": st.sampled_from(["packed", "codes"]),
                               "act": ints(2, 0, 1), "xs": XS}),
        _quant_linear_build, _quant_linear_ref),
    "qlinear_dequant_t": Entry(
        st.fixed_dictionaries({**QL, "N": ints(4, 1, 16), "K": ints(64, 32),
                               "kb0": ints(0, 1), "kb1": ints(1, 2, 0)}),
        _dequant_t_build),
})


# quant_linear on llama.cpp's block types (FORMATS.md 1.8): codes = the GGUF blocks of
# lowbit.quantize, scales / zeros (N, 0), packed empty (sometimes not: an error); the spec
# arguments the type's own (sometimes another value), K = whole blocks (sometimes 16 off: x and
# the blocks disagree), hostile x values, every accuracy mode. Reference: act="float" F.linear
# of gguf-py's dequantize of the blocks; the integer modes: rows with inf/nan/huge values as
# float, the others within 1e-4 (auto) or within 1e-5 of the int8 emulation (FORMATS.md 4),
# plus the rounding of a 16-bit output.
def _ql_blk_weight(p, gen):
    import lowbit
    from lowbit import _constants as C

    f = C.FORMATS[p["t"]]
    k = f.block * p["kb"]
    w = torch.randn(p["n"], k, generator=gen) * 0.1
    qw = lowbit.quantize(w, lowbit.QuantSpec(p["t"]))
    p["_codes"] = qw.codes
    return f, k, qw


def _ql_blk_build(p, gen):
    f, k, qw = _ql_blk_weight(p, gen)
    fmt, bits, g, sym = qw.spec.op_args(k)
    if p["sv"] == "bits":
        bits += 1
    elif p["sv"] == "group":
        g //= 2
    elif p["sv"] == "sym":
        sym = not sym
    x = put_specials(make(tensor((p["m"], k + p["dk"]), p["xd"], p["xl"]), gen), p["xs"], gen)
    bias = make(tensor((p["n"],), p["xd"]), gen) if p["bias"] else torch.empty(0)
    packed = torch.zeros((1, 4) if p["pk"] else (0, 0), dtype=torch.int32)
    empty = qw.codes.new_empty((p["n"], 0))
    return (x, qw.codes, qw.scales, empty, packed, bias, fmt, bits, g, sym, p["act"])


def _blk_linear_ref(t, codes, x, bias, act, out, what):
    """The checks above, for y = out of x and the blocks codes of type t."""
    import gguf
    import numpy as np

    n = codes.shape[0]
    W = torch.from_numpy(gguf.quants.dequantize(codes.numpy(), gguf.GGMLQuantizationType[
        t.upper()]).reshape(n, -1).astype(np.float64))
    b = bias.double() if bias is not None and bias.numel() else 0.0
    y = x.double() @ W.T + b
    if act == 0:
        close(out, y, what)
        return
    bad = special_rows(x)
    close(out[bad], y[bad], f"{what}: rows with inf/nan/huge values")
    x, y, got = x[~bad], y[~bad], out[~bad].double()
    if not y.numel():
        return
    if act == 1:
        xb = x.float().reshape(x.shape[0], -1, 32)
        d = xb.abs().amax(-1, keepdim=True) / 127
        q = torch.round(torch.where(d > 0, xb / d, torch.zeros_like(xb)))  # half to even
        y = (q.double() * d.double()).reshape(x.shape) @ W.T + b
    bound = {1: 1e-5, 2: 1e-4}[act] + {torch.bfloat16: 2 ** -8,
                                        torch.float16: 2 ** -11}.get(x.dtype, 0.0)
    err = float((got - y).norm() / y.norm().clamp_min(1e-30))
    assert err <= bound, f"{what}: relative error {err:.3g} > {bound}"


def _ql_blk_ref(p, args, out):
    if p["sv"] != "type" or p["dk"] or p["pk"] or p["act"] not in (0, 1, 2):
        return
    _blk_linear_ref(p["t"], p["_codes"], args[0], args[5], p["act"], out[0],
                    f"quant_linear {p['t']} act={p['act']}")


_QL_BLK = dict(t=st.sampled_from(["q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "q2_k", "q3_k", "q4_k",
                                  "q5_k", "q6_k"]),
               n=dims(3, 1, 5), kb=dims(1, 2), m=dims(1, 3, 17), xd=fdtypes(), xs=XS,
               bias=st.booleans())
# a PUBLIC entry (OPS holds one entry per op name) calling the raw op
_QL_BLK_OP = Entry(
    st.fixed_dictionaries({**_QL_BLK, "sv": _mix(["type"], ["bits", "group", "sym"]),
                           "dk": _mix([0], [16, -16]), "pk": _mix([False], [True]),
                           "xl": st.sampled_from(LAYOUTS), "act": ints(2, 0, 1)}),
    _ql_blk_build, _ql_blk_ref, fn=lambda *a: torch.ops.lowbit.quant_linear(*a))
# ---- end of the qlinear block


# ---------------------------------------------------------------------------------------------
# the public functions, with hostile values (PUBLIC: run like OPS; keys are not op names)
# ---------------------------------------------------------------------------------------------
def _pub_kl_build(p, gen):
    shape = ([2] if p["lead"] == 3 else []) + [p["r"], p["v"]]
    def logits(sh, dt):
        return (torch.randn(sh, generator=gen) * 3).to(dt)

    s, t = make(tensor(shape, p["sd"]), gen, logits), make(tensor(shape, p["td"]), gen, logits)
    put_kl_rows(s, t, p["rows"], p["row"], gen)
    lab = None
    if p["labels"]:
        lab = torch.randint(0, p["v"], shape[:-1], generator=gen)
        lab.view(-1)[0] = -100
    gamma = p["gamma"] if KL_NAMES[p["kind"]] == "cakld" else None
    return s, t, lab, KL_NAMES[p["kind"]], gamma, p["beta"], p["tau"], p["reduction"]


def _pub_kl(s, t, lab, kind, gamma, beta, tau, reduction):
    import lowbit

    x = s.detach().requires_grad_(True)
    loss = lowbit.kl_div_loss(x, t, kind=kind, gamma=gamma, beta=beta, temperature=tau,
                              labels=lab, reduction=reduction)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss, g


def _pub_kl_ref(p, args, out):
    from reference_kl import ref_loss

    s, t, lab, kind, gamma, beta, tau, reduction = args
    x = s.double().requires_grad_(True)
    ref = ref_loss(x, t.double(), kind, gamma, beta, tau, lab, -100, reduction)
    (g,) = torch.autograd.grad(ref.sum(), x)
    close(out[0], ref.detach(), f"kl_div_loss {kind} {reduction}")
    close(out[1], g, f"kl_div_loss {kind} {reduction} grad")


def _pub_fused_build(p, gen):
    n, h, v = p["r"], 8, p["v"]
    hid = torch.randn(n, h, generator=gen).to(getattr(torch, p["sd"]))
    w = (torch.randn(v, h, generator=gen) * 0.5).to(hid.dtype)
    t = (torch.randn(n, v, generator=gen) * 2).to(getattr(torch, p["td"]))
    put_kl_rows(t, t, p["rows"] if p["rows"] in ("t_dead", "t_one") else "none", p["row"], gen)
    lab = torch.randint(0, v, (n,), generator=gen) if p["labels"] else None
    if lab is not None:
        lab[0] = -100
    gamma = p["gamma"] if KL_NAMES[p["kind"]] == "cakld" else None
    return hid, w, t, lab, KL_NAMES[p["kind"]], gamma, p["reduction"], p["chunk"]


def _pub_fused(hid, w, t, lab, kind, gamma, reduction, chunk):
    import lowbit

    x, wx = hid.detach().requires_grad_(True), w.detach().requires_grad_(True)
    loss = lowbit.fused_linear_kl_loss(x, wx, t, kind=kind, gamma=gamma, labels=lab,
                                       reduction=reduction, chunk_size=chunk)
    gx, gw = torch.autograd.grad(loss, (x, wx))
    return loss, gx, gw


def _pub_fused_ref(p, args, out):
    from reference_kl import ref_loss

    hid, w, t, lab, kind, gamma, reduction, chunk = args
    x, wx = hid.double().requires_grad_(True), w.double().requires_grad_(True)
    logits = torch.nn.functional.linear(x, wx).to(hid.dtype).double()  # the logits' own rounding
    ref = ref_loss(logits, t.double(), kind, gamma, 0.5, 1.0, lab, -100, reduction)
    gx, gw = torch.autograd.grad(ref, (x, wx))
    if hid.dtype != torch.float32:  # 16-bit hidden states: only the NaN pattern is compared
        for o, r, what in zip(out, (ref.detach(), gx, gw), ("loss", "grad hidden", "grad w")):
            assert torch.equal(torch.isnan(o), torch.isnan(r)), f"fused_linear_kl_loss {what}"
        return
    close(out[0], ref.detach(), f"fused_linear_kl_loss {kind} {reduction}")
    close(out[1], gx, "fused_linear_kl_loss grad hidden")
    close(out[2], gw, "fused_linear_kl_loss grad weight")


def _pub_s24_build(p, gen):
    import lowbit
    from lowbit.sparse import compress_24

    n, k, dt = p["n"], p["k"], getattr(torch, p["dt"])
    mask = rand_mask24(n, k, gen)
    w = (torch.randn(n, k, generator=gen) * mask).to(dt)
    sw = compress_24(w)
    p["_mask"], p["_kept"] = mask, w[mask].reshape(n, k // 2)
    if p["q"]:
        sw = sw.quantize(lowbit.QuantSpec("int", 4, 8))
    x = put_specials(make(tensor((p["m"], k), p["dt"], p["xl"]), gen), p["xs"], gen)
    b = make(tensor((n,), p["dt"]), gen) if p["bias"] else None
    return x, sw, b


def _pub_s24(x, sw, b):
    from lowbit.sparse import sparse24_linear

    return sparse24_linear(x, sw, b)


def _pub_s24_ref(p, args, out):
    x, sw, b = args
    kept = p["_kept"].double()
    if p["q"]:
        kept, ok = quant_ref(p["_kept"].float(), 0, 4, 8, False)
        if not bool(ok.all()):
            return
    y = x.double() @ scatter24(kept, p["_mask"]).T
    if b is not None:
        y = y + b.double()
    close(out[0], y, f"sparse24_linear {'int4' if p['q'] else 'float'} xs={p['xs']}")


def _pub_ql_build(p, gen):
    import lowbit

    fmt, bits = p["fb"]
    spec = lowbit.QuantSpec(["int", "nf", "fp"][fmt], bits, p["g"], p["sym"])
    w = torch.randn(p["n"], p["k"], generator=gen)
    p["_w"] = w
    x = put_specials(make(tensor((p["m"], p["k"]), p["xd"], p["xl"]), gen), p["xs"], gen)
    b = make(tensor((p["n"],), p["xd"]), gen) if p["bias"] else None
    return x, lowbit.quantize(w, spec), b, p["act"]


def _pub_ql(x, qw, b, act):
    import lowbit

    return lowbit.quant_linear(x, qw, b, act=act)


def _pub_ql_ref(p, args, out):
    """Rows with an inf/nan/huge value: act="float"'s result in every mode (FORMATS.md 4);
    the others: float elementwise, int8 and auto within their bounds (norm-wise)."""
    x, qw, b, act = args
    fmt, bits = p["fb"]
    ref, ok = quant_ref(p["_w"], fmt, bits, p["g"], p["sym"])
    if not bool(ok.all()):
        return
    y = x.double() @ ref.T + (b.double() if b is not None else 0.0)
    bad = special_rows(x) if act != "float" else torch.ones(x.shape[0], dtype=torch.bool)
    close(out[0][bad], y[bad], f"quant_linear act={act} xs={p['xs']}")
    got, y = out[0][~bad].double(), y[~bad]
    if y.numel():
        bound = {"int8": 2e-2, "auto": 1e-4}[act] + {torch.bfloat16: 2 ** -8,
                                                     torch.float16: 2 ** -11}.get(x.dtype, 0.0)
        err = float((got - y).norm() / y.norm().clamp_min(1e-30))
        assert err <= bound, f"quant_linear act={act}: relative error {err:.3g} > {bound}"


_PUB_KL = dict(kind=st.sampled_from([0, 1, 2, 3]), gamma=st.sampled_from([0.3, 0.0, 1.0]),
               reduction=st.sampled_from(["mean", "sum", "batchmean"]),
               labels=st.booleans(), rows=KL_ROWS, row=st.integers(0, 2),
               sd=fdtypes(), td=fdtypes())
PUBLIC = {
    "lowbit.kl_div_loss": Entry(
        st.fixed_dictionaries({**_PUB_KL, "reduction": st.sampled_from(list(REDUCTIONS)),
                               "r": dims(3, 1, 4), "v": dims(16, 7, 1), "lead": dims(2, 3),
                               "beta": st.sampled_from([0.5, 0.0, 1.0]),
                               "tau": st.sampled_from([1.0, 2.0, 0.5])}),
        _pub_kl_build, _pub_kl_ref, fn=_pub_kl),
    "lowbit.fused_linear_kl_loss": Entry(  # no meta / fake run: "mean" with labels reads the count
        st.fixed_dictionaries({**_PUB_KL, "sd": st.sampled_from(["float32", "float32",
                                                                 "bfloat16"]),
                               "r": dims(5, 1, 9), "v": dims(16, 33), "chunk": dims(2, 1, 128)}),
        _pub_fused_build, _pub_fused_ref, fn=_pub_fused, fake=False),
    "lowbit.sparse.sparse24_linear": Entry(
        st.fixed_dictionaries({"n": dims(8, 16, 5), "k": dims(32, 64, 16),
                               "m": dims(1, 3, 8, 9, 20),
                               "dt": fdtypes(), "q": st.booleans(), "bias": st.booleans(),
                               "xs": XS, "xl": st.sampled_from(LAYOUTS)}),
        _pub_s24_build, _pub_s24_ref, fn=_pub_s24),
    "lowbit.quant_linear": Entry(
        st.fixed_dictionaries({"fb": st.sampled_from(_valid_fmt_bits()), "g": dims(32, 16),
                               "sym": st.booleans(), "n": dims(4, 8), "k": dims(64, 96),
                               "m": dims(1, 3, 9, 17), "act": st.sampled_from(["float", "int8",
                                                                              "auto"]),
                               "xd": fdtypes(), "bias": st.booleans(), "xs": XS,
                               "xl": st.sampled_from(LAYOUTS)}),
        _pub_ql_build, _pub_ql_ref, fn=_pub_ql),
}



# ---- llama.cpp's block types (FORMATS.md 1.8) through the public functions: the type's own
# bits / group / symmetric (sometimes another value: a ValueError naming it), K a multiple of the
# block (sometimes not), non-contiguous weights (transposed, strided), magnitudes from 1e-30 to
# 1e37 (d and dmin at fp16's 65504 clamp, or rounding to 0), and a NaN / +-inf element: Q and both
# STEs' gradients against tests/reference_ggml.py (bit for bit, NaN across a non-finite block),
# quantize's GGUF bytes against reference_ggml.pack and its refusal of non-finite blocks, and
# dequantize of arbitrary block bytes against gguf-py ----
BLOCK_TYPES = ["q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
W_SPECIALS = st.sampled_from(["none", "none", "none", "nan", "inf", "-inf"])
_BLK = dict(t=st.sampled_from(BLOCK_TYPES), sv=_mix(["type"], ["bits", "group", "sym"]),
            n=dims(3, 1, 4, 0), kb=dims(1, 2, 3), koff=_mix([0], [16, -16]),
            dt=_mix(DTYPES, ["float64", "int32"]), layout=st.sampled_from(LAYOUTS),
            mag=st.sampled_from([1.0, 0.02, 1e3, 1e6, 1e9, 1e37, 1e-6, 1e-30]))


def _blk_spec(p):
    """The QuantSpec arguments p draws: the type's own values, or one other value (p["sv"]);
    the functions build the QuantSpec, so its ValueError is a case's outcome."""
    from lowbit import _constants as C

    f = C.FORMATS[p["t"]]
    bits, g, sym = f.bits[0], f.block, f.symmetric
    if p["sv"] == "bits":
        bits += 1
    elif p["sv"] == "group":
        g = g // 2
    elif p["sv"] == "sym":
        sym = not sym
    return (p["t"], bits, g, sym)


def _qspec(sa):
    import lowbit

    return lowbit.QuantSpec(*sa)


def _blk_w(p, gen, specials="none"):
    """The (n, K) weight of p: Gaussian times p's magnitude (capped so a 16-bit weight stays
    finite), in p's dtype and layout, with one hostile element (specials)."""
    from lowbit import _constants as C

    block = C.FORMATS[p["t"]].block
    k = max(1, block * p["kb"] + p["koff"])

    def fill(sh, dt):
        if not dt.is_floating_point:
            return torch.randint(-3, 4, sh, generator=gen).to(dt)
        mag = min(p["mag"], torch.finfo(dt).max / 8)
        return (torch.randn(sh, generator=gen, dtype=torch.float64) * mag).to(dt)
    w = make(tensor((p["n"], k), p["dt"], p["layout"]), gen, fill=fill)
    if specials != "none" and w.numel() and w.dtype.is_floating_point:
        r = int(torch.randint(0, w.shape[0], (1,), generator=gen))
        c = int(torch.randint(0, w.shape[1], (1,), generator=gen))
        w[r, c] = X_SPECIALS[specials]
    p["_bad"] = specials != "none"
    return w


def _blk_bad_mask(w, block):
    """Elements whose block holds NaN / Inf."""
    n, k = w.shape
    bad = ~torch.isfinite(w.float()).reshape(n, k // block, block)
    return bad.any(-1, keepdim=True).expand(n, k // block, block).reshape(n, k)


def _pub_blk_fq_build(p, gen):
    w = _blk_w(p, gen, p["ws"])
    up = (torch.randn(w.shape, generator=gen) if w.dtype.is_floating_point else
          torch.randn(w.shape, generator=gen)).to(w.dtype if w.dtype.is_floating_point
                                                   else torch.float32)
    return w, up, _blk_spec(p), p["ste"]


def _pub_blk_fq(w, up, sa, ste):
    import lowbit

    x = w.detach()
    if x.dtype.is_floating_point:
        x.requires_grad_(True)
    q = lowbit.fake_quantize(x, _qspec(sa), ste=ste)
    q.backward(up)
    return q, x.grad


def _blk_same(got, ref, what):
    """Bit equality treating -0.0 and +0.0 alike (a code has no sign of zero) and NaN as NaN."""
    g, r = got.float(), ref.float()
    same = (g == r) | (torch.isnan(g) & torch.isnan(r))
    assert bool(same.all()), f"{what}: {int((~same).sum())} values differ, first at " \
        f"{(~same).nonzero()[0].tolist()}: {g[~same][0].item()!r} vs {r[~same][0].item()!r}"


def _pub_blk_fq_ref(p, args, out):
    import reference_ggml as RG

    w, up, sa, ste = args
    spec = _qspec(sa)
    q, gx = out
    if not w.numel():
        return
    bad = _blk_bad_mask(w, spec.group_size)
    assert q.dtype == w.dtype and gx.dtype == w.dtype, "fake_quantize: dtype"
    assert bool(torch.isnan(q[bad]).all()), "fake_quantize: a non-finite block must give NaN"
    if ste == "identity":  # dQ/dw = 1 everywhere, non-finite blocks included (as other formats)
        assert torch.equal(gx, up.to(gx.dtype)), "fake_quantize identity: grad is not up"
    else:
        assert bool(torch.isnan(gx[bad]).all()), "fake_quantize: a non-finite block's grad: NaN"
    ok = w.detach().clone()
    ok[bad] = 0.5
    xr = ok.requires_grad_(True)
    ref = RG.fake_quant(xr, spec.format, ste)
    _blk_same(q[~bad], ref.detach()[~bad], f"fake_quantize {spec.format} Q")
    ref.backward(up)
    gr = xr.grad.float()[~bad]
    g = gx.float()[~bad]
    if g.numel():
        tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3}.get(w.dtype, 1e-5)
        scale = float(gr.abs().max().clamp(min=1e-30))
        torch.testing.assert_close(g, gr, rtol=tol, atol=tol * scale, equal_nan=True,
                                   msg=lambda m: f"fake_quantize {spec.format} {ste} grad: {m}")


def _pub_blk_q_build(p, gen):
    return _blk_w(p, gen, "none"), _blk_spec(p)


def _pub_blk_q(w, sa):
    import lowbit

    qw = lowbit.quantize(w, _qspec(sa))
    return qw.codes, qw.scales, lowbit.dequantize(qw)


def _pub_blk_q_ref(p, args, out):
    import reference_ggml as RG

    w, sa = args
    spec = _qspec(sa)
    codes, scales, deq = out
    if not w.numel():
        return
    wf = w.float()
    assert torch.equal(codes, RG.pack(RG.params_and_codes(wf, spec.format), spec.format)), \
        f"quantize {spec.format}: the blocks differ from reference_ggml.pack's"
    assert scales.shape == (w.shape[0], 0) and scales.dtype == torch.float32
    assert deq.dtype == w.dtype, "dequantize(quantize): the weight's dtype"
    _blk_same(deq, RG.fake_quant(wf, spec.format).to(w.dtype),
              f"dequantize(quantize) {spec.format}")


def _pub_blk_q_bad(w, sa):
    """quantize of a weight with a non-finite block: must be the ValueError naming w (any
    other outcome is an AssertionError, which the harness counts as a failure)."""
    import lowbit

    try:
        lowbit.quantize(w, _qspec(sa))
    except ValueError as e:
        if str(e).startswith("w: contains NaN or Inf"):
            return torch.zeros(0),
        raise AssertionError(f"quantize {sa[0]}: {e}") from e
    raise AssertionError(f"quantize {sa[0]}: accepted a weight holding NaN / Inf")


def _pub_blk_dq_build(p, gen):
    """A QuantizedWeight over random block bytes (every code and scale-code byte random, the
    fp16 scales finite and of either sign, magnitudes p["mag"] capped at 65504)."""
    import lowbit
    from lowbit import _constants as C

    f = C.FORMATS[p["t"]]
    n, nb = max(p["n"], 1), p["kb"]
    raw = torch.randint(0, 256, (n, nb, f.type_size), generator=gen, dtype=torch.uint8)
    for off in f.half_at:
        v = torch.randn(n, nb, 1, generator=gen, dtype=torch.float64) * min(p["mag"], 6e4)
        raw[..., off:off + 2] = v.clamp(-65504, 65504).half().view(torch.uint8).reshape(n, nb, 2)
    raw = raw.reshape(n, nb * f.type_size)
    p["_raw"] = raw.clone()
    return lowbit.QuantizedWeight(raw, torch.zeros(n, 0), None, lowbit.QuantSpec(p["t"]),
                                  (n, nb * f.block), getattr(torch, p["odt"])),


def _pub_blk_dq(qw):
    import lowbit

    return lowbit.dequantize(qw)


def _pub_blk_dq_ref(p, args, out):
    import gguf
    import numpy as np

    raw = p["_raw"]
    ref = gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[p["t"].upper()])
    ref = torch.from_numpy(ref.astype(np.float32)).to(out[0].dtype)
    assert out[0].dtype == getattr(torch, p["odt"])
    _blk_same(out[0], ref, f"dequantize {p['t']} of random blocks")


PUBLIC.update({
    "lowbit.fake_quantize.blocks": Entry(
        st.fixed_dictionaries({**_BLK, "ws": W_SPECIALS,
                               "ste": st.sampled_from(["bitdistiller", "identity"])}),
        _pub_blk_fq_build, _pub_blk_fq_ref, fn=_pub_blk_fq),
    "lowbit.quantize.blocks": Entry(
        st.fixed_dictionaries(_BLK), _pub_blk_q_build, _pub_blk_q_ref, fn=_pub_blk_q),
    # a fake kernel cannot see values: the refusal of a non-finite block is the real one's
    "lowbit.quantize.blocks_nonfinite": Entry(
        st.fixed_dictionaries({**_BLK, "ws": st.sampled_from(["nan", "inf", "-inf"]),
                               "dt": fdtypes(), "koff": st.just(0), "sv": st.just("type"),
                               "n": dims(3, 1)}),
        lambda p, gen: (_blk_w(p, gen, p["ws"]), _blk_spec(p)), fn=_pub_blk_q_bad, fake=False),
    "lowbit.dequantize.blocks": Entry(
        st.fixed_dictionaries({"t": st.sampled_from(BLOCK_TYPES), "n": dims(3, 1, 4),
                               "kb": dims(1, 2, 3), "odt": fdtypes(),
                               "mag": st.sampled_from([0.01, 1.0, 1e3, 6e4, 1e-7])}),
        _pub_blk_dq_build, _pub_blk_dq_ref, fn=_pub_blk_dq),
})



def _pub_blk_ql_build(p, gen):
    _, k, qw = _ql_blk_weight(p, gen)
    x = put_specials(make(tensor((p["m"], k), p["xd"], p["xl"]), gen), p["xs"], gen)
    b = make(tensor((p["n"],), p["xd"]), gen) if p["bias"] else None
    return x, qw, b, p["act"]


def _pub_blk_ql_ref(p, args, out):
    x, _, b, act = args
    _blk_linear_ref(p["t"], p["_codes"], x, b, {"float": 0, "int8": 1, "auto": 2}[act], out[0],
                    f"quant_linear {p['t']} act={act} xs={p['xs']}")


PUBLIC["quant_linear.blocks"] = _QL_BLK_OP
PUBLIC["lowbit.quant_linear.blocks"] = Entry(
    st.fixed_dictionaries({**_QL_BLK, "xl": st.sampled_from(LAYOUTS),
                           "act": st.sampled_from(["float", "int8", "auto"])}),
    _pub_blk_ql_build, _pub_blk_ql_ref, fn=_pub_ql)

# ---------------------------------------------------------------------------------------------
# the child
# ---------------------------------------------------------------------------------------------
def _outcome(fn):
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 -- the parent judges the type
        return {"ok": False, "type": type(e).__name__, "msg": str(e).splitlines()[0][:300]
                if str(e) else ""}, None
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {"ok": True, "shapes": [list(o.shape) for o in outs],
            "dtypes": [str(o.dtype) for o in outs]}, outs


def convert(a, f):
    """An argument with every tensor in it mapped by f (the packed weights rebuilt around the
    mapped tensors)."""
    from lowbit import QuantizedWeight
    from lowbit.sparse import Sparse24Weight

    if isinstance(a, torch.Tensor):
        return f(a)
    if isinstance(a, QuantizedWeight):
        return QuantizedWeight(f(a.codes), f(a.scales), None if a.zeros is None else f(a.zeros),
                               a.spec, a.shape, a.dtype)
    if isinstance(a, Sparse24Weight):
        return Sparse24Weight(None if a.values is None else f(a.values), f(a.meta), a.shape,
                              a.dtype, None if a.qvalues is None else convert(a.qvalues, f),
                              check=False)
    return a


def _under_fake_mode(op, args):
    """op on FakeTensors of args (CPU device), as torch.compile and opcheck trace it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        return op(*[convert(a, mode.from_tensor) for a in args])


def entry_of(name):
    return OPS[name] if name in OPS else PUBLIC[name]


def run_case(name, p):
    import zlib

    entry = entry_of(name)
    gen = torch.Generator().manual_seed(zlib.crc32(json.dumps(p, sort_keys=True).encode()))
    p = dict(p)
    try:
        args = entry.build(p, gen)
    except Exception as e:  # noqa: BLE001 -- the harness's own setup (e.g. a negative size)
        return {"skip": f"{type(e).__name__}: {e}"}
    op = entry.fn if entry.fn is not None else getattr(torch.ops.lowbit, name)
    res = {}
    res["cpu"], outs = _outcome(lambda: op(*args))
    if not entry.cpu_only and entry.fake:
        res["meta"], _ = _outcome(lambda: op(*[convert(a, to_meta) for a in args]))
        res["fake"], _ = _outcome(lambda: _under_fake_mode(op, args))
    if res["cpu"]["ok"] and entry.ref is not None:
        try:
            entry.ref(p, args, outs)
        except AssertionError as e:
            res["ref"] = str(e)[:1500]
    return res


def worker():
    import lowbit  # noqa: F401

    for line in sys.stdin:
        case = json.loads(line)
        sys.stdout.write(json.dumps(run_case(case["op"], case["p"])) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------------------------
class Child:
    def __init__(self):
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=HERE)

    def call(self, name, p):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps({"op": name, "p": p}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            err = self.proc.stderr.read()[-3000:]
            self.proc = None
            pytest.fail(f"the child died (rc {rc}) on lowbit::{name} {p}:\n{err}")
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def child():
    c = Child()
    yield c
    c.close()


def check(child, name, p):
    """One case: the fake kernel (on meta tensors, and on FakeTensors) raises where the real
    one does, naming the same argument, and agrees on every output's shape and dtype when both
    return."""
    res = child.call(name, p)
    if "skip" in res:
        return
    where = f"lowbit::{name} {json.dumps(p)}"
    for dev in ("cpu", "meta", "fake"):
        o = res.get(dev)
        if o is not None and not o["ok"]:
            assert o["type"] in CLEAN, f"{where}: {dev} raised {o['type']}: {o['msg']}"
    c = res["cpu"]
    for dev in ("meta", "fake"):
        if dev not in res:
            continue
        m = res[dev]
        assert c["ok"] == m["ok"], (
            f"{where}: cpu {'returned' if c['ok'] else 'raised ' + c['msg']} but {dev} "
            f"{'returned' if m['ok'] else 'raised ' + m['msg']}")
        if c["ok"]:
            assert (c["shapes"], c["dtypes"]) == (m["shapes"], m["dtypes"]), \
                f"{where}: cpu {c} vs {dev} {m}"
        else:  # "<arg>: ..." on both sides, naming the same argument
            assert c["msg"].split(":")[0] == m["msg"].split(":")[0], \
                f"{where}: cpu raised {c['msg']!r} but {dev} {m['msg']!r}"
    if "meta" not in res and entry_of(name).cpu_only:  # no CUDA here: it must refuse cleanly
        assert not c["ok"] or torch.cuda.is_available(), f"{where}: ran on CPU"
    assert "ref" not in res, f"{where}: {res['ref']}"


# no shrinking: a crash restarts the child (seconds per try) and the full case is printed anyway
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]


ALL = sorted(OPS) + sorted(PUBLIC)  # the raw ops, then the public functions


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=60, phases=NO_SHRINK)
@given(data=st.data())
def test_fuzz_op(child, name, data):
    check(child, name, data.draw(entry_of(name).params, label="p"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
@settings(max_examples=500, phases=NO_SHRINK)
@given(data=st.data())
def test_fuzz_op_long(child, name, data):
    check(child, name, data.draw(entry_of(name).params, label="p"))


@pytest.mark.parametrize("t", BLOCK_TYPES)
def test_block_types_edges(child, t):
    """Every block type, beside the random draws: the fp16 clamp of d / dmin (float32 weights
    of 1e9 and 1e37) and scales rounding to 0 (1e-30), transposed and strided weights, 16-bit
    weights, a NaN / +-inf element (NaN block, quantize's ValueError), a wrong spec value and K
    not a multiple of the block, each on cpu, meta and FakeTensors against the reference."""
    base = dict(t=t, sv="type", n=3, kb=2, koff=0, dt="float32", layout="contig", mag=1.0)
    cases = [dict(mag=1e9), dict(mag=1e37), dict(mag=1e-30), dict(layout="t"),
             dict(layout="step", dt="bfloat16"), dict(dt="float16", mag=1e3), dict(sv="group"),
             dict(koff=16)]
    for c in cases:
        for ste in ("bitdistiller", "identity"):
            check(child, "lowbit.fake_quantize.blocks", {**base, **c, "ws": "none", "ste": ste})
        check(child, "lowbit.quantize.blocks", {**base, **c})
    for ws in ("nan", "inf", "-inf"):
        check(child, "lowbit.fake_quantize.blocks", {**base, "ws": ws, "ste": "bitdistiller"})
        check(child, "lowbit.quantize.blocks_nonfinite", {**base, "ws": ws})
    for mag in (6e4, 1e-7):
        check(child, "lowbit.dequantize.blocks", dict(t=t, n=3, kb=2, odt="float32", mag=mag))

# Found by the long run: these fakes divided by group_size before checking it
# (ZeroDivisionError where the real op raises a RuntimeError naming group_size).
@pytest.mark.parametrize("name", ["quantize", "fake_quant", "clip_search"])
@pytest.mark.parametrize("on", ["meta", "fake"])
def test_fake_group_size_zero(name, on):
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    args = {"quantize": (w, 0, 2, 0, True), "fake_quant": (w, 0, 2, 0, True, 0),
            "clip_search": (w, torch.zeros(2, 32, 32), 0, 2, 0, False, 20, 10)}[name]
    op = getattr(torch.ops.lowbit, name)
    for run in (lambda: op(*args), lambda: op(*[to_meta(a) for a in args]) if on == "meta"
                else _under_fake_mode(op, args)):
        with pytest.raises(RuntimeError, match="^group_size: 0 must be positive"):
            run()


def test_every_op_has_an_entry():
    names = {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas()
             if s.name.startswith("lowbit::")}
    ops = {k.split(".", 1)[0] for k in OPS}  # "op.variant": a second entry of the same op
    assert names == ops, names ^ ops


def test_a_crash_fails_the_test_not_pytest(child):
    """The harness itself: a child that dies is a test failure naming the case."""
    OPS["_crash"] = Entry(st.just({}), lambda p, gen: os.abort())
    try:
        c = Child()
        c.proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        with pytest.raises(pytest.fail.Exception, match="the child died"):
            c.call("_crash", {})
    finally:
        del OPS["_crash"]


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    sys.path.insert(0, HERE)
    worker()
