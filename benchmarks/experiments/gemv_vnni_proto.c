/* benchmarks/experiments/gemv_vnni_proto.c: standalone measurement behind RESULTS.md's
 * "int8-activation VNNI" row (not part of the build): int4-g128 GEMV, 4096x4096, M=1, one thread,
 * (a) lowbit's shipped float kernel (lb_ql_forward_cpu, act="float", AVX-512 variant, linked
 * from csrc/cpu) against (b) a prototype that quantises x per row to int8 and uses vpdpbusd on the
 * same packed layout (csrc/layouts.h; the design act="int8" ships since). Needs avx512_vnni.
 * Build and run from the repository root:
 *   gcc -O3 -std=c11 -ffp-contract=off -Icsrc benchmarks/experiments/gemv_vnni_proto.c \
 *       csrc/formats.c csrc/cpu/*.c csrc/cpu/arch/x86/*.c -lm -o /tmp/gemv_vnni && /tmp/gemv_vnni */
#define _POSIX_C_SOURCE 200112L /* clock_gettime under -std=c11 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/lb_cpu.h"
#include "cpu/qlinear.h"

#define N 4096
#define K 4096
#define GS 128
#define G (K / GS)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* (b): packed int4 words of lowbit's layout (8 codes of consecutive k per word, lane = row),
 * params (s, z) per (tile, group, lane); x as int8 with per-row scale, even/odd k split so one
 * vpdpbusd takes the low and one the high nibbles of a word. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void gemv_vnni(const int32_t* P, const float* prm, const int32_t* xq_e,
                      const int32_t* xq_o, const float* xsum_i, float xscale, float* y) {
    const __m512i m4 = _mm512_set1_epi32(0x0F0F0F0F);
    for (int nt = 0; nt < N / 16; ++nt) {
        __m512 out = _mm512_setzero_ps();
        const int32_t* W = P + (size_t)nt * (K / 8) * 16;
        for (int gi = 0; gi < G; ++gi) {
            __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
            for (int w = gi * (GS / 8); w < (gi + 1) * (GS / 8); ++w) {
                __m512i v = _mm512_loadu_si512(W + (size_t)w * 16);
                __m512i lo = _mm512_and_si512(v, m4);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), m4);
                a0 = _mm512_dpbusd_epi32(a0, lo, _mm512_set1_epi32(xq_e[w]));
                a1 = _mm512_dpbusd_epi32(a1, hi, _mm512_set1_epi32(xq_o[w]));
            }
            const float* pr = prm + ((size_t)nt * G + gi) * 32;
            __m512 acc = _mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1));
            __m512 sv = _mm512_loadu_ps(pr), zv = _mm512_loadu_ps(pr + 16);
            out = _mm512_fmadd_ps(sv, _mm512_fnmadd_ps(zv, _mm512_set1_ps(xsum_i[gi]), acc), out);
        }
        _mm512_storeu_ps(y + nt * 16, _mm512_mul_ps(out, _mm512_set1_ps(xscale)));
    }
}

int main(void) {
    lb_fmt f;
    uint8_t* codes = malloc((size_t)N * K / 2);
    float* scales = malloc(sizeof(float) * N * G);
    uint8_t* zeros = malloc((size_t)N * G);
    int32_t* P = aligned_alloc(64, (size_t)lb_ql_packed_words(N, K, 4) * 4);
    /* (s, z) per tile, group and lane */
    float* prm = aligned_alloc(64, (size_t)(N / 16) * G * 32 * 4);
    float *x = malloc(4 * K), *xsi = malloc(4 * G), *y1 = malloc(4 * N), *y2 = malloc(4 * N),
          *yr = calloc(N, 4);
    int32_t *xe = malloc(4 * K / 8), *xo = malloc(4 * K / 8);
    int8_t* xq = malloc(K);
    if (!lb_isa_supported(LB_ISA_AVX512) || !__builtin_cpu_supports("avx512vnni")) {
        printf("needs AVX-512 VNNI\n");
        return 0;
    }
    lb_isa_set(LB_ISA_AVX512); /* no runtime hook installed: one thread */
    lb_fmt_init(&f, LB_FMT_INT, 4, 0);
    srand(1);
    for (size_t i = 0; i < (size_t)N * K / 2; ++i) codes[i] = (uint8_t)rand();
    for (int i = 0; i < N * G; ++i) {
        scales[i] = 0.001f + (rand() % 100) * 1e-5f;
        zeros[i] = (uint8_t)(rand() % 16);
    }
    lb_ql_pack_cpu(codes, N, K, 4, P);
    for (int nt = 0; nt < N / 16; ++nt)
        for (int gi = 0; gi < G; ++gi)
            for (int j = 0; j < 16; ++j) {
                prm[((size_t)nt * G + gi) * 32 + j] = scales[(nt * 16 + j) * G + gi];
                prm[((size_t)nt * G + gi) * 32 + 16 + j] = (float)zeros[(nt * 16 + j) * G + gi];
            }
    float amax = 0;
    for (int k = 0; k < K; ++k) {
        x[k] = ((rand() % 20001) - 10000) / 10000.0f;
        amax = fmaxf(amax, fabsf(x[k]));
    }
    const float xscale = amax / 127.0f;
    for (int k = 0; k < K; ++k) xq[k] = (int8_t)lrintf(x[k] / xscale);
    for (int gi = 0; gi < G; ++gi) {
        xsi[gi] = 0;
        for (int k = gi * GS; k < (gi + 1) * GS; ++k) xsi[gi] += xq[k];
    }
    for (int w = 0; w < K / 8; ++w) {
        uint8_t e[4] = {xq[w * 8], xq[w * 8 + 2], xq[w * 8 + 4], xq[w * 8 + 6]};
        uint8_t o[4] = {xq[w * 8 + 1], xq[w * 8 + 3], xq[w * 8 + 5], xq[w * 8 + 7]};
        memcpy(&xe[w], e, 4);
        memcpy(&xo[w], o, 4);
    }
    /* reference: the canonical codes through formats.h, in double */
    for (int n = 0; n < N; ++n) {
        double acc = 0;
        for (int k = 0; k < K; ++k) {
            const lb_gparams p = lb_load_gparams(&f, scales, zeros, (int64_t)n * G + k / GS);
            acc += (double)lb_decode(&f, p, lb_get_code(codes + (size_t)n * K / 2, k, 4)) * x[k];
        }
        yr[n] = (float)acc;
    }
    double t1 = 1e9, t2 = 1e9;
    for (int r = 0; r < 30; ++r) {
        double t = now();
        lb_ql_forward_cpu(x, LB_DT_F32, 1, N, K, GS, &f, codes, scales, zeros, P, NULL,
                          LB_ACT_FLOAT, y1);
        t = now() - t;
        if (t < t1) t1 = t;
        t = now();
        gemv_vnni(P, prm, xe, xo, xsi, xscale, y2);
        t = now() - t;
        if (t < t2) t2 = t;
    }
    double e1 = 0, e2 = 0, sc = 0;
    for (int n = 0; n < N; ++n) {
        e1 = fmax(e1, fabs(y1[n] - yr[n]));
        e2 = fmax(e2, fabs(y2[n] - yr[n]));
        sc = fmax(sc, fabs(yr[n]));
    }
    printf("lowbit float-dequant FMA: %.3f ms (max err/max|y| %.2e)\n"
           "int8-x VNNI prototype:    %.3f ms (max err/max|y| %.2e)\n",
           t1 * 1e3, e1 / sc, t2 * 1e3, e2 / sc);
    return 0;
}
