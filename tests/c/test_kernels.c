/* tests/c/test_kernels.c: a plain C test of lowbit's CPU kernels with no Python and no torch:
 * built by gcc against csrc/cpu and csrc/formats.h only (tests/test_c_kernels.py compiles and
 * runs it, also with -DLB_NO_X86 so only the scalar twins exist). It checks, on every ISA
 * variant this CPU runs, fake-quant of random groups against formats.h's scalar math bit for
 * bit, quantize -> dequantize round trips and the code bitstream, the packed layout's pack /
 * unpack, and the quant-linear kernels (every format and accuracy mode, packed and canonical
 * paths, inf / nan / huge inputs, the thread split) against a double-precision reference; the
 * kernels run
 * through a runtime hook installed here (a two-way split), as the extension installs torch's.
 * Prints "ok" and exits 0, or prints the first mismatch and exits 1. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/fake_quant.h"
#include "cpu/lb_cpu.h"
#include "cpu/qlinear.h"

static int failures;
#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);    \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
            if (++failures > 5) exit(1);                   \
        }                                                  \
    } while (0)

/* xorshift64*: the same stream on every machine */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545f4914f6cdd1dull) >> 32);
}
/* roughly normal, with per-row scale spread over decades */
static float randn(void) {
    float s = 0.0f;
    for (int i = 0; i < 4; ++i) s += (float)next_u32() / 4294967296.0f;
    return (s - 2.0f) * 1.7320508f;
}

/* A runtime hook like torch's parallel_for: runs fn over two halves of [0, n). */
static int hook_calls;
static void split_parallel(int64_t n, int64_t grain, lb_parallel_fn fn, void* ctx) {
    (void)grain;
    ++hook_calls;
    fn(0, n / 2, ctx);
    fn(n / 2, n, ctx);
}
static int two_threads(void) { return 2; }

/* formats.h's scalar fake-quant of one (N, K) float32 weight: the reference. */
static void ref_fake_quant(const float* w, float* q, int64_t N, int64_t K, int64_t g,
                           const lb_fmt* f) {
    for (int64_t gi = 0; gi < N * K / g; ++gi) {
        const float* x = w + gi * g;
        lb_gstats st = {x[0], x[0], fabsf(x[0]), 0};
        for (int64_t i = 1; i < g; ++i) {
            st.mx = x[i] > st.mx ? x[i] : st.mx;
            st.mn = x[i] < st.mn ? x[i] : st.mn;
            st.amax = fabsf(x[i]) > st.amax ? fabsf(x[i]) : st.amax;
        }
        const lb_gparams p = lb_group_params(f, st);
        for (int64_t i = 0; i < g; ++i) q[gi * g + i] = lb_fake_quant_value(f, p, x[i]);
    }
}

static void test_pack_round_trip(void) {
    static const int widths[] = {2, 3, 4, 8};
    uint8_t row[160];
    int codes[150];
    for (int wi = 0; wi < 4; ++wi) {
        const int b = widths[wi];
        const int64_t K = 150, rb = lb_row_bytes(K, b);
        CHECK(rb == (K * b + 7) / 8, "row bytes of %d bits", b);
        memset(row, 0, sizeof row);
        for (int64_t j = 0; j < K; ++j) {
            codes[j] = (int)(next_u32() & ((1u << b) - 1u));
            lb_put_code(row, j, b, codes[j]);
        }
        for (int64_t j = 0; j < K; ++j)
            CHECK(lb_get_code(row, j, b) == codes[j], "code %lld of %d bits", (long long)j, b);
        for (int64_t byte = rb; byte < (int64_t)sizeof row; ++byte)
            CHECK(row[byte] == 0, "%d-bit row wrote past its %lld bytes", b, (long long)rb);
    }
}

static void test_fake_quant_and_round_trip(int isa) {
    static const int specs[][3] = {{LB_FMT_INT, 2, 0}, {LB_FMT_INT, 3, 0}, {LB_FMT_INT, 4, 0},
                                   {LB_FMT_INT, 8, 0}, {LB_FMT_INT, 4, 1}, {LB_FMT_NF, 3, 0},
                                   {LB_FMT_NF, 4, 0},  {LB_FMT_NF, 4, 1},  {LB_FMT_FP, 3, 0},
                                   {LB_FMT_FP, 4, 0},  {LB_FMT_FP, 4, 1}};
    const int64_t N = 7, K = 96, g = 32, G = K / g;
    float *w = malloc(N * K * 4), *q = malloc(N * K * 4), *ref = malloc(N * K * 4),
          *back = malloc(N * K * 4), *scales = malloc(N * G * 2 * 4);
    uint8_t *codes = malloc(N * K), zeros[7 * 3];
    for (int64_t r = 0; r < N; ++r) {
        const float scale = powf(10.0f, (float)(r % 4) - 2.0f);
        for (int64_t k = 0; k < K; ++k) w[r * K + k] = randn() * scale;
    }
    for (size_t si = 0; si < sizeof specs / sizeof specs[0]; ++si) {
        lb_fmt f;
        CHECK(lb_fmt_init(&f, specs[si][0], specs[si][1], specs[si][2]) == 0, "spec %zu", si);
        ref_fake_quant(w, ref, N, K, g, &f);
        CHECK(lb_fq_forward_cpu(w, q, LB_DT_F32, N, K, g, &f) == 0, "forward ran");
        for (int64_t i = 0; i < N * K; ++i)
            CHECK(memcmp(&q[i], &ref[i], 4) == 0, "isa %d spec %zu: Q(w)[%lld] = %a, formats.h %a",
                  isa, si, (long long)i, q[i], ref[i]);
        CHECK(lb_quantize_cpu(w, LB_DT_F32, N, K, g, &f, codes, scales,
                              f.kind == LB_KIND_INT_ASYM ? zeros : NULL) == 0,
              "quantize found no bad groups");
        CHECK(lb_dequantize_cpu(codes, scales, f.kind == LB_KIND_INT_ASYM ? zeros : NULL, back,
                                LB_DT_F32, N, K, g, &f) == 0,
              "dequantize ran");
        for (int64_t i = 0; i < N * K; ++i)
            CHECK(memcmp(&back[i], &ref[i], 4) == 0,
                  "isa %d spec %zu: dequantize(quantize(w))[%lld] = %a, fake-quant %a", isa, si,
                  (long long)i, back[i], ref[i]);
    }
    free(w), free(q), free(ref), free(back), free(scales), free(codes);
}

/* The canonical codes (random, zero padding bits) <-> the packed layout, every width. */
static void test_pack_unpack(void) {
    static const int widths[] = {2, 3, 4, 8};
    for (int wi = 0; wi < 4; ++wi)
        for (int64_t K = 200; K <= 256; K += 56) {
            const int b = widths[wi];
            const int64_t N = 37, rb = lb_row_bytes(K, b);
            uint8_t *codes = calloc(N * rb, 1), *back = malloc(N * rb);
            int32_t* packed = malloc(lb_ql_packed_words(N, K, b) * 4);
            for (int64_t n = 0; n < N; ++n)
                for (int64_t k = 0; k < K; ++k)
                    lb_put_code(codes + n * rb, k, b, (int)(next_u32() & ((1u << b) - 1u)));
            lb_ql_pack_cpu(codes, N, K, b, packed);
            lb_ql_unpack_cpu(packed, N, K, b, back);
            CHECK(memcmp(codes, back, N * rb) == 0, "%d-bit K=%lld: unpack(pack(codes)) != codes",
                  b, (long long)K);
            free(codes), free(back), free(packed);
        }
}

/* heavy-tailed activations (FORMATS.md 4): Student-t with 3 degrees of freedom, a few channels
 * (k % 128 == 5) times 30 */
static float rand_t3(void) {
    float c = 0.0f;
    for (int i = 0; i < 3; ++i) {
        const float z = randn();
        c += z * z;
    }
    return randn() / sqrtf(c / 3.0f + 1e-6f);
}

/* Every format, both group kinds, every mode and M in {1, 3, 5, 16, 17} against a double
 * reference over the dequantized weight, on both input kinds: act float within float32 rounding
 * of each output, auto within 1e-4 (relative Frobenius, FORMATS.md 4) at every M, int8 within
 * 2e-2 over all the M of one input kind pooled (its error is ~1e-2: over 37 outputs alone the
 * estimate would be too noisy to test a bound). The reference is computed once per input. */
static void test_quant_linear(int isa) {
    static const int specs[][3] = {{LB_FMT_INT, 2, 0}, {LB_FMT_INT, 3, 0}, {LB_FMT_INT, 4, 0},
                                   {LB_FMT_INT, 8, 0}, {LB_FMT_INT, 3, 1}, {LB_FMT_INT, 8, 1},
                                   {LB_FMT_NF, 3, 0},  {LB_FMT_NF, 4, 1},  {LB_FMT_FP, 3, 0},
                                   {LB_FMT_FP, 4, 0},  {LB_FMT_FP, 4, 1},  {LB_FMT_FP, 3, 1}};
    static const int Ms[] = {1, 3, 5, 16, 17};
    const int64_t N = 37, MM = 17;
    for (size_t si = 0; si < sizeof specs / sizeof specs[0]; ++si)
        for (int gk = 0; gk < 2; ++gk) {
            const int64_t K = gk ? 200 : 256, g = gk ? K : 64, G = K / g;
            lb_fmt f;
            float *w = malloc(N * K * 4), *wq = malloc(N * K * 4), *scales = malloc(N * G * 2 * 4),
                  *x = malloc(MM * K * 4), *y = malloc(MM * N * 4), *bias = malloc(N * 4);
            double *ref = malloc(MM * N * 8), *mag = malloc(MM * N * 8);
            uint8_t *codes = calloc(N * K, 1), *zeros = malloc(N * G);
            int32_t* packed;
            CHECK(lb_fmt_init(&f, specs[si][0], specs[si][1], specs[si][2]) == 0, "spec");
            packed = malloc(lb_ql_packed_words(N, K, f.bits) * 4);
            for (int64_t i = 0; i < N * K; ++i) w[i] = randn();
            for (int64_t n = 0; n < N; ++n) bias[n] = randn();
            lb_quantize_cpu(w, LB_DT_F32, N, K, g, &f, codes, scales,
                            f.kind == LB_KIND_INT_ASYM ? zeros : NULL);
            lb_dequantize_cpu(codes, scales, f.kind == LB_KIND_INT_ASYM ? zeros : NULL, wq,
                              LB_DT_F32, N, K, g, &f);
            lb_ql_pack_cpu(codes, N, K, f.bits, packed);
            for (int kind = 0; kind < 2; ++kind) {
                double pe2 = 0, pr2 = 0; /* int8 (packed only: it runs float without), over M */
                for (int64_t i = 0; i < MM * K; ++i)
                    x[i] = kind ? rand_t3() * ((i % K) % 128 == 5 ? 30.0f : 1.0f) : randn();
                for (int64_t m = 0; m < MM; ++m)
                    for (int64_t n = 0; n < N; ++n) {
                        double acc = bias[n], mg = fabs(bias[n]);
                        for (int64_t k = 0; k < K; ++k) {
                            acc += (double)wq[n * K + k] * x[m * K + k];
                            mg += fabs((double)wq[n * K + k] * x[m * K + k]);
                        }
                        ref[m * N + n] = acc;
                        mag[m * N + n] = mg;
                    }
                for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; ++mi)
                    for (int act = 0; act < LB_ACT_COUNT; ++act)
                        for (int use_packed = act == LB_ACT_FLOAT ? 0 : 1; use_packed < 2; ++use_packed) {
                            const int M = Ms[mi];
                            double e2 = 0, r2 = 0;
                            CHECK(lb_ql_forward_cpu(x, LB_DT_F32, M, N, K, g, &f, codes, scales,
                                                    zeros, use_packed ? packed : NULL, bias, act,
                                                    y) == 0,
                                  "quant_linear ran");
                            for (int64_t i = 0; i < M * N; ++i) {
                                const double d = y[i] - ref[i];
                                e2 += d * d;
                                r2 += ref[i] * ref[i];
                                if (act == LB_ACT_FLOAT)
                                    CHECK(fabs(d) <= 1e-5 * mag[i] + 1e-30,
                                          "isa %d spec %zu g %lld M %d packed %d: y[%lld] = %.9g, "
                                          "double %.9g", isa, si, (long long)g, M, use_packed,
                                          (long long)i, y[i], ref[i]);
                            }
                            if (act == LB_ACT_INT8) {
                                pe2 += e2;
                                pr2 += r2;
                                continue;
                            }
                            CHECK(sqrt(e2 / r2) <= (act == LB_ACT_FLOAT ? 1e-5 : 1e-4),
                                  "isa %d spec %zu g %lld input %d M %d act %d packed %d: "
                                  "relative error %.3g", isa, si, (long long)g, kind, M, act,
                                  use_packed, sqrt(e2 / r2));
                        }
                CHECK(sqrt(pe2 / pr2) <= 2e-2,
                      "isa %d spec %zu g %lld input %d act int8: relative error %.3g > 2e-2", isa,
                      si, (long long)g, kind, sqrt(pe2 / pr2));
            }
            free(w), free(wq), free(scales), free(x), free(y), free(bias), free(codes);
            free(zeros), free(packed), free(ref), free(mag);
        }
}

/* inf, nan and huge finite values in x: each mode gives F.linear's IEEE result for that row
 * (inf*w = +-inf, inf*0 = nan, nan anywhere = nan; 1e35 rows finite and accurate), the other
 * rows their normal result; and the result does not depend on the thread split. */
static void test_special_values(int isa) {
    const int64_t N = 40, K = 128, g = 32, G = K / g, M = 3;
    lb_fmt f;
    float *w = malloc(N * K * 4), *wq = malloc(N * K * 4), *scales = malloc(N * G * 4),
          *x = malloc(M * K * 4), *y = malloc(M * N * 4), *y1 = malloc(M * N * 4);
    uint8_t *codes = calloc(N * K, 1), *zeros = malloc(N * G);
    int32_t* packed = malloc(lb_ql_packed_words(N, K, 4) * 4);
    lb_fmt_init(&f, LB_FMT_INT, 4, 0);
    for (int64_t i = 0; i < N * K; ++i) w[i] = randn();
    lb_quantize_cpu(w, LB_DT_F32, N, K, g, &f, codes, scales, zeros);
    lb_dequantize_cpu(codes, scales, zeros, wq, LB_DT_F32, N, K, g, &f);
    lb_ql_pack_cpu(codes, N, K, 4, packed);
    for (int trial = 0; trial < 3; ++trial)
        for (int act = 0; act < LB_ACT_COUNT; ++act) {
            for (int64_t i = 0; i < M * K; ++i) x[i] = randn();
            if (trial == 0) x[1 * K + 7] = INFINITY;
            if (trial == 1) x[1 * K + 9] = NAN;
            if (trial == 2)
                for (int64_t k = 0; k < K; ++k) x[1 * K + k] *= 1e35f;
            CHECK(lb_ql_forward_cpu(x, LB_DT_F32, M, N, K, g, &f, NULL, scales, zeros, packed,
                                    NULL, act, y) == 0, "ran");
            for (int m = 0; m < M; ++m)
                for (int64_t n = 0; n < N; ++n) {
                    double acc = 0, mag = 0;
                    const float got = y[m * N + n];
                    for (int64_t k = 0; k < K; ++k) {
                        acc += (double)wq[n * K + k] * x[m * K + k];
                        mag += fabs((double)wq[n * K + k] * x[m * K + k]);
                    }
                    if (isnan(acc) || isinf(acc))
                        CHECK((isnan(acc) && isnan(got)) || (isinf(acc) && got == (float)acc),
                              "isa %d act %d trial %d y[%d,%lld] = %g, F.linear %g", isa, act,
                              trial, m, (long long)n, got, acc);
                    else
                        CHECK(fabs(got - acc) <= (m == 1 || act == LB_ACT_FLOAT ? 1e-5 : 5e-2) * mag,
                              "isa %d act %d trial %d y[%d,%lld] = %g, double %g", isa, act,
                              trial, m, (long long)n, got, acc);
                }
            {
                lb_parallel_fn saved_hook = NULL;
                void (*pf)(int64_t, int64_t, lb_parallel_fn, void*) = lb_rt.parallel_for;
                (void)saved_hook;
                lb_rt.parallel_for = NULL; /* one thread */
                lb_ql_forward_cpu(x, LB_DT_F32, M, N, K, g, &f, NULL, scales, zeros, packed, NULL,
                                  act, y1);
                lb_rt.parallel_for = pf;
                CHECK(memcmp(y, y1, M * N * 4) == 0, "isa %d act %d: thread split changed y", isa,
                      act);
            }
        }
    free(w), free(wq), free(scales), free(x), free(y), free(y1), free(codes), free(zeros);
    free(packed);
}

int main(void) {
    int ran = 0;
    lb_rt.parallel_for = split_parallel;
    lb_rt.num_threads = two_threads;
    test_pack_round_trip();
    test_pack_unpack();
    for (int isa = 0; isa < LB_ISA_COUNT; ++isa) {
        if (!lb_isa_supported(isa)) continue;
        lb_isa_set(isa);
        test_fake_quant_and_round_trip(isa);
        test_quant_linear(isa);
        test_special_values(isa);
        ++ran;
    }
    CHECK(hook_calls > 0, "the runtime hook was never used");
    CHECK(LB_X86 || lb_isa_best() == LB_ISA_SCALAR, "a non-x86 build offers only the scalar twin");
    if (failures) return 1;
    printf("ok: %d ISA variant(s), x86 variants %s\n", ran, LB_X86 ? "built" : "not built");
    return 0;
}
