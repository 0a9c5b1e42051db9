"""quant_linear's batched CPU path (M > 16: the integer kernels in passes of up to 12 rows over
the activations quantized once per call, the float GEMM where a mode or ISA takes it): every
format, bits and symmetry, every accuracy mode and every CPU ISA forced in turn, at M in
{17, 64, 257} with N and K not multiples of the 16-row tiles / 32-wide K-blocks, against
F.linear in float64 of reference.py's fake-quantized weight (FORMATS.md 4's bounds), on
Gaussian and heavy-tailed activations; float32, bfloat16 and float16 x; determinism; row
independence (each row of a batch equals that row alone in the integer modes); inf / nan / huge
rows at chunk boundaries.
"""
import pytest
import torch
import torch.nn.functional as F

from _testutil import heavy_tailed, rel_err as rel
from reference import ALL_SPECS, ref_fake_quant

lowbit = pytest.importorskip("lowbit")
from lowbit import _constants as C  # noqa: E402
from lowbit import _ops  # noqa: E402
# the ISA-restoring fixture and the helpers of the M <= 17 mode tests
from test_qlinear_modes import check_like_f_linear, qspec, restore_isa  # noqa: E402,F401

SPEC_IDS = [f"{f}{b}{'sym' if s else 'asym'}" for f, b, s in ALL_SPECS]
MS = (17, 64, 257)
BOUND = {"float": 1e-5, "auto": 1e-4, "int8": 2e-2}
# the output rounding of 16-bit x (FORMATS.md: the result is cast back once): a half ulp
ROUND = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
N = 40  # two full 16-row tiles and a partial one
# (group size, K): 5 groups of 64 (K a multiple of 32, the only kind a grouped layout has), and
# a whole-row group over K = 200 (a padded last K-block)
SHAPES = ((64, 320), (-1, 200))


def ref_weight(w, fmt, bits, g, sym):
    return ref_fake_quant(w, fmt, bits, w.shape[1] if g == -1 else g, sym).double()


def scheme(qw, act, M):
    f, b, g, sym = qw.spec.op_args(qw.shape[1])
    return C.QL_SCHEMES[_ops._C.ql_scheme(C.QL_ACT_CODES[act], f, b, sym, M,
                                          C.ql_packable(qw.shape[1], g))]


@pytest.mark.parametrize("fmt,bits,sym", ALL_SPECS, ids=SPEC_IDS)
def test_batched_modes_within_their_bounds_every_isa(fmt, bits, sym, gen, restore_isa):
    for g, K in SHAPES:
        w = torch.randn(N, K, generator=gen)
        qw = lowbit.quantize(w, qspec(fmt, bits, g, sym))
        W = ref_weight(w, fmt, bits, g, sym)
        bias = torch.randn(N, generator=gen)
        xs = {"gauss": torch.randn(max(MS), K, generator=gen),
              "heavy": heavy_tailed(max(MS), K, gen)}
        for isa in lowbit.available_cpu_isas():
            lowbit.set_cpu_isa(isa)
            for kind, x in xs.items():
                for dt in (torch.float32, torch.bfloat16, torch.float16):
                    xd = x.to(dt)
                    ref = F.linear(xd.double(), W, bias.double())
                    # 16-bit x: every M for the fast ISAs, one batched M for the scalar twin
                    ms = MS if dt == torch.float32 or isa != "scalar" else (64,)
                    for M in ms:
                        for act in ("float", "auto", "int8"):
                            y = lowbit.quant_linear(xd[:M], qw, bias.to(dt), act=act)
                            assert y.shape == (M, N) and y.dtype == dt
                            err = rel(y, ref[:M])
                            what = f"{isa} g={g} {kind} {dt} M={M} {act}: {err:.3g}"
                            assert err <= BOUND[act] + ROUND[dt], what
                            if dt != torch.float32:  # one rounding of the float32 result
                                y32 = lowbit.quant_linear(xd[:M].float(), qw, bias.to(dt).float(),
                                                          act=act)
                                assert torch.equal(y, y32.to(dt)), what


@pytest.mark.parametrize("spec", [("int", 4, 128, False), ("int", 3, 64, True),
                                  ("int", 8, 32, False), ("fp", 4, 64, False),
                                  ("fp", 3, 64, True), ("nf", 4, 64, False)],
                         ids=lambda s: f"{s[0]}{s[1]}g{s[2]}{'sym' if s[3] else ''}")
def test_batch_rows_equal_single_rows_in_the_integer_modes(spec, gen, restore_isa):
    """The integer kernels take up to 12 rows per pass (chunks of 24 in the activation layout):
    each row of a batch of 257 gives the bits it gives alone, so no pass mixes rows, and the
    integer path really runs at M > 16 where the scheme says so."""
    K = 384
    qw = lowbit.quantize(torch.randn(N, K, generator=gen), qspec(*spec))
    x = heavy_tailed(257, K, gen)
    rows = (0, 11, 12, 23, 24, 25, 200, 256)
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        for act in ("int8", "auto"):
            if scheme(qw, act, 257) == "float":
                continue
            assert scheme(qw, act, 257) == ("int8" if act == "int8" else "int8x2")
            y = lowbit.quant_linear(x, qw, act=act)
            for r in rows:
                one = lowbit.quant_linear(x[r:r + 1], qw, act=act)
                assert torch.equal(y[r:r + 1], one), f"{isa} {act} row {r}"


def test_batched_schemes_per_isa(gen, restore_isa):
    """int8 stays integer at every M; auto's int8 x2 runs batches where vpdpbusd exists (VNNI)
    and the exact float GEMM elsewhere; NF runs float in auto."""
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        qi = lowbit.quantize(torch.randn(N, 64, generator=gen), qspec("int", 4, 32, False))
        qn = lowbit.quantize(torch.randn(N, 64, generator=gen), qspec("nf", 4, 32, False))
        vnni = isa in ("avxvnni", "avx512vnni")
        for M in MS:
            assert scheme(qi, "int8", M) == "int8"
            assert scheme(qi, "auto", M) == ("int8x2" if vnni else "float")
            assert scheme(qn, "auto", M) == "float"
            assert scheme(qi, "float", M) == "float"
        assert scheme(qi, "auto", 16) == "int8x2"


def test_batched_deterministic_across_runs_and_threads(gen, restore_isa):
    qw = lowbit.quantize(torch.randn(72, 512, generator=gen), qspec("int", 4, 128, False))
    old = torch.get_num_threads()
    try:
        for isa in lowbit.available_cpu_isas():
            if isa == "scalar":
                continue
            lowbit.set_cpu_isa(isa)
            for M in (17, 100):
                x = heavy_tailed(M, 512, gen)
                for act in ("float", "auto", "int8"):
                    torch.set_num_threads(1)
                    a = lowbit.quant_linear(x, qw, act=act)
                    torch.set_num_threads(2)
                    b, c = lowbit.quant_linear(x, qw, act=act), lowbit.quant_linear(x, qw, act=act)
                    assert torch.equal(a, b) and torch.equal(b, c), (isa, M, act)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("act", ["float", "auto", "int8"])
def test_batched_inf_nan_and_huge_rows(act, gen, restore_isa):
    """Rows with inf / nan give F.linear's inf / nan outputs (never a finite wrong number), a
    row of 1e35 finite accurate outputs, a row of 1e-35 (below the integer modes' range) too;
    the other rows of the batch are unaffected. The special rows sit at pass and chunk edges."""
    K = 160
    qw = lowbit.quantize(torch.randn(N, K, generator=gen), qspec("int", 4, 32, False))
    W = lowbit.dequantize(qw)
    M = 64
    specials = {3: "inf", 11: "-inf", 12: "nan", 23: "huge", 24: "tiny", 63: "inf"}
    for isa in lowbit.available_cpu_isas():
        lowbit.set_cpu_isa(isa)
        x = torch.randn(M, K, generator=gen)
        for r, sp in specials.items():
            if sp == "huge":
                x[r] *= 1e35
            elif sp == "tiny":
                x[r] *= 1e-35
            else:
                x[r, 7 + r] = float(sp)
        special = torch.zeros(M, dtype=torch.bool)
        special[list(specials)] = True
        check_like_f_linear(lowbit.quant_linear(x, qw, act=act), x, W, special, act, isa)
