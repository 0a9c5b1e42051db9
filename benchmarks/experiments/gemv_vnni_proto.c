/* benchmarks/experiments/gemv_vnni_proto.c: standalone measurement behind RESULTS.md "int8-activation
 * VNNI" row (not part of the build): int4-g128 GEMV, 4096x4096, M=1, one thread, in the lane-per-row
 * layout of csrc/ops/qlinear.h; (a) the float dequant-FMA design lowbit ships, (b) x quantised per
 * row to int8 + vpdpbusd. Build: gcc -O3 gemv_vnni_proto.c -lm && ./a.out (needs avx512_vnni). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#define N 4096
#define K 4096
#define G (K / 128)
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void gemv_vnni(const uint32_t* P, const float* s, const float* z, const int32_t* xq_e, const int32_t* xq_o,
                      const float* xsum_i, float xscale, float* y) {
    for (int nt = 0; nt < N / 16; ++nt) {
        __m512 out = _mm512_setzero_ps();
        const uint32_t* W = P + (size_t)nt * (K / 8) * 16;
        const __m512i m4 = _mm512_set1_epi32(0x0F0F0F0F);
        for (int gi = 0; gi < G; ++gi) {
            __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
            for (int w = gi * 16; w < gi * 16 + 16; ++w) {  /* 16 words = 128 k */
                __m512i v = _mm512_loadu_si512(W + (size_t)w * 16);
                __m512i lo = _mm512_and_si512(v, m4);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), m4);
                a0 = _mm512_dpbusd_epi32(a0, lo, _mm512_set1_epi32(xq_e[w]));
                a1 = _mm512_dpbusd_epi32(a1, hi, _mm512_set1_epi32(xq_o[w]));
            }
            __m512 acc = _mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1));
            __m512 sv = _mm512_loadu_ps(s + ((size_t)nt * G + gi) * 16), zv = _mm512_loadu_ps(z + ((size_t)nt * G + gi) * 16);
            out = _mm512_fmadd_ps(sv, _mm512_fnmadd_ps(zv, _mm512_set1_ps(xsum_i[gi]), acc), out);
        }
        _mm512_storeu_ps(y + nt * 16, _mm512_mul_ps(out, _mm512_set1_ps(xscale)));
    }
}
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void gemv_float(const uint32_t* P, const float* s, const float* z, const float* x, const float* xsum, float* y) {
    const __m512 T = _mm512_setr_ps(0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15);
    for (int nt = 0; nt < N / 16; ++nt) {
        __m512 out = _mm512_setzero_ps();
        const uint32_t* W = P + (size_t)nt * (K / 8) * 16;
        for (int gi = 0; gi < G; ++gi) {
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int w = gi * 16; w < gi * 16 + 16; ++w) {
                __m512i v = _mm512_loadu_si512(W + (size_t)w * 16);
#pragma GCC unroll 8
                for (int t = 0; t < 8; ++t)
                    a[t & 3] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4 * t), T), _mm512_set1_ps(x[w * 8 + t]), a[t & 3]);
            }
            __m512 acc = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            __m512 sv = _mm512_loadu_ps(s + ((size_t)nt * G + gi) * 16), zv = _mm512_loadu_ps(z + ((size_t)nt * G + gi) * 16);
            out = _mm512_fmadd_ps(sv, _mm512_fnmadd_ps(zv, _mm512_set1_ps(xsum[gi]), acc), out);
        }
        _mm512_storeu_ps(y + nt * 16, out);
    }
}
int main(void) {
    uint32_t* P = aligned_alloc(64, (size_t)N * K / 2);
    float *s = malloc(sizeof(float) * N * G), *z = malloc(sizeof(float) * N * G), *x = malloc(4 * K), *xs = malloc(4 * G), *xsi = malloc(4 * G);
    float *y1 = malloc(4 * N), *y2 = malloc(4 * N), *yr = calloc(N, 4);
    int32_t *xe = malloc(4 * K / 8), *xo = malloc(4 * K / 8);
    int8_t* xq = malloc(K);
    srand(1);
    for (size_t i = 0; i < (size_t)N * K / 8; ++i) P[i] = (uint32_t)rand() * 2654435761u ^ (uint32_t)rand();
    for (int i = 0; i < N * G; ++i) { s[i] = 0.001f + (rand() % 100) * 1e-5f; z[i] = (float)(rand() % 16); }
    float amax = 0;
    for (int k = 0; k < K; ++k) { x[k] = ((rand() % 20001) - 10000) / 10000.0f; amax = fmaxf(amax, fabsf(x[k])); }
    float xscale = amax / 127.0f;
    for (int k = 0; k < K; ++k) xq[k] = (int8_t)lrintf(x[k] / xscale);
    for (int gi = 0; gi < G; ++gi) { xs[gi] = 0; xsi[gi] = 0; for (int k = gi * 128; k < gi * 128 + 128; ++k) { xs[gi] += x[k]; xsi[gi] += xq[k]; } }
    for (int w = 0; w < K / 8; ++w) {
        uint8_t e[4] = {xq[w*8], xq[w*8+2], xq[w*8+4], xq[w*8+6]}, o[4] = {xq[w*8+1], xq[w*8+3], xq[w*8+5], xq[w*8+7]};
        memcpy(&xe[w], e, 4); memcpy(&xo[w], o, 4);
    }
    /* reference */
    for (int n = 0; n < N; ++n) { int nt = n / 16, j = n % 16; double acc = 0;
        for (int k = 0; k < K; ++k) { uint32_t v = P[((size_t)nt * (K / 8) + k / 8) * 16 + j]; int c = (v >> (4 * (k % 8))) & 15;
            acc += (double)((c - z[nt * G * 16 + (k / 128) * 16 + j]) * s[nt * G * 16 + (k / 128) * 16 + j]) * x[k]; }
        yr[n] = (float)acc; }
    double t1 = 1e9, t2 = 1e9;
    for (int r = 0; r < 30; ++r) {
        double t = now(); gemv_float(P, s, z, x, xs, y1); t = now() - t; if (t < t1) t1 = t;
        t = now(); gemv_vnni(P, s, z, xe, xo, xsi, xscale, y2); t = now() - t; if (t < t2) t2 = t;
    }
    double e1 = 0, e2 = 0, sc = 0;
    for (int n = 0; n < N; ++n) { e1 = fmax(e1, fabs(y1[n] - yr[n])); e2 = fmax(e2, fabs(y2[n] - yr[n])); sc = fmax(sc, fabs(yr[n])); }
    printf("float-dequant FMA: %.3f ms (max err/max|y| %.2e)\nint8-x VNNI:       %.3f ms (max err/max|y| %.2e)\n", t1 * 1e3, e1 / sc, t2 * 1e3, e2 / sc);
    return 0;
}
