/* csrc/cpu/sparse24.c: CPU kernels of the sparse24 family: y = x @ W^T for a 2:4-compressed W
 * (the lb24 layout of csrc/ops/sparse24.h), with float or low-bit kept values; decompress; and
 * the backward to x for small batches.
 *
 * Two forward paths, both split over N on torch's intra-op pool (lb_parallel):
 *   small M (M <= LB24_SMALL_M = 8): for each output row n, walk its kept values and gather x at
 *     k = 4*(j/2) + idx(j). AVX-512: 16 kept values (32 K-elements) per step, the 16 2-bit
 *     indices of one 32-bit meta word expanded with one variable shift into lane offsets and
 *     the x elements picked with vpermt2ps from two registers of x; AVX2: 8 kept values per
 *     step with two vpermps and a blend. No padding of the batch. Memory-bound at M = 1.
 *   large M: x is transposed once into blocks xt[m-block][k][mblk] (mblk = 16, 32 or 64 rows,
 *     the smallest that holds M, zero-padded past M); for each chunk of NB output rows, each
 *     m-block and each block of 4*QB K-elements (the xt tile stays in L1) every kept value v at
 *     k does acc[0..mblk) += v * xt[k][0..mblk): half the multiply-adds of a dense GEMM, but one
 *     load of x per FMA (rows of W keep different columns, so loads are not shared across rows).
 * Kept values that are not float32 (bf16/f16 weights, or low-bit codes) are first expanded
 * into a float32 row buffer (per row in the small path, per chunk in the large path): the
 * low-bit path thus reads ~3 bits per original weight from memory (AVX-512: 4-bit codes go
 * through a 16-entry table with vpermps, 32 codes per step).
 * Every kernel has a scalar twin (*_ref, vectorisation off) and AVX2 / AVX-512 variants picked
 * by lb_isa (the backward-to-x kernel: scalar and AVX-512). Unlike the fake_quant family,
 * results are not bit-identical across variants (the sums run in different orders); each equals
 * the dense product of the pruned weight within float32 rounding (FORMATS.md 3). */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/sparse24.h"
#include "lb_cpu.h"


#ifndef LB24_SMALL_M
#define LB24_SMALL_M 8   /* M at or below this takes the gather path */
#endif
#ifndef LB24_NB
#define LB24_NB 64       /* output rows per task in the large-M path */
#endif
#ifndef LB24_PF
#define LB24_PF 8192     /* software prefetch distance (bytes) on the kept-value stream, small M */
#endif
#ifndef LB24_QB
#define LB24_QB 16       /* groups (of 4 K-elements) per K-block in the large-M path: 64 K */
#endif
#define LB24_ROWS_SMALL 16 /* output rows per task in the small-M path */

typedef struct {
    const float* x;        /* (M, K) float32, small path */
    const float* xt;       /* blocked transpose, large path */
    int64_t M, N, K, mblk; /* mblk: m-block width of xt */
    const void* vals;      /* (N, K/2) of dtype vdt, or NULL when codes are given */
    int vdt;
    const uint8_t* meta;
    int64_t mbytes;
    const uint8_t* codes;  /* low-bit kept values */
    const float* scales;
    const uint8_t* zeros;
    const lb_fmt* f;
    int64_t g, rb;         /* quant group (kept values), code bytes per row */
    const float* bias;     /* float32 (N) or NULL */
    void* y;
    int ydt;
    volatile int oom;
} s24_ctx;

/* ---- dtype helpers ---- */
LB_INLINE float ld1(const void* p, int dt, int64_t i) {
    if (dt == LB_DT_F32) return ((const float*)p)[i];
    if (dt == LB_DT_BF16) {
        uint32_t u = (uint32_t)((const uint16_t*)p)[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return (float)((const _Float16*)p)[i];
}

LB_INLINE void st1(void* p, int dt, int64_t i, float v) {
    if (dt == LB_DT_F32) ((float*)p)[i] = v;
    else if (dt == LB_DT_BF16) ((uint16_t*)p)[i] = lb_f32_to_bf16(v);
    else ((_Float16*)p)[i] = (_Float16)v;
}

LB_INLINE void ldn(const void* p, int dt, int64_t off, int64_t n, float* dst) {
    if (dt == LB_DT_F32) {
        memcpy(dst, (const float*)p + off, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; ++i) dst[i] = ld1(p, dt, off + i);
}

/* 4-bit codes [0, g) (g even, byte-aligned start) through a 16-entry table: 32 codes per step. */
LB_AVX512_ATTR __attribute__((noinline)) static void decode4_avx512(const uint8_t* b, int64_t g,
                                                                     const float* lut, float* out) {
    const __m512 t = _mm512_loadu_ps(lut);
    const __m128i lowmask = _mm_set1_epi8(15);
    int64_t i = 0;
    for (; i + 32 <= g; i += 32) {
        const __m128i by = _mm_loadu_si128((const __m128i*)(b + i / 2));
        const __m128i lo = _mm_and_si128(by, lowmask);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(by, 4), lowmask);
        _mm512_storeu_ps(out + i, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)), t));
        _mm512_storeu_ps(out + i + 16,
                         _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)), t));
    }
    for (; i + 2 <= g; i += 2) {
        out[i] = lut[b[i / 2] & 15];
        out[i + 1] = lut[b[i / 2] >> 4];
    }
}

/* Kept values of row n as float32: a pointer into the weight when it is float32, else expanded
 * into buf (K/2 floats). */
LB_INLINE const float* row_values(const s24_ctx* c, int64_t n, float* buf) {
    const int64_t K2 = c->K / 2;
    if (c->vals) {
        if (c->vdt == LB_DT_F32) return (const float*)c->vals + n * K2;
        ldn(c->vals, c->vdt, n * K2, K2, buf);
        return buf;
    }
    /* low-bit codes: per quant group a table of the 2^bits decoded values, then a lookup */
    {
        const lb_fmt* f = c->f;
        const int64_t g = c->g, G = K2 / g;
        const uint8_t* row = c->codes + n * c->rb;
        const int ncode = 1 << f->bits;
        float lut[256];
        for (int64_t gi = 0; gi < G; ++gi) {
            lb_gparams p;
            float* out = buf + gi * g;
            p.s = p.sp = p.sn = p.z = 0.0f;
            if (f->kind == LB_KIND_LVL2) {
                p.sp = c->scales[(n * G + gi) * 2];
                p.sn = c->scales[(n * G + gi) * 2 + 1];
            } else {
                p.s = c->scales[n * G + gi];
            }
            if (c->zeros) p.z = (float)c->zeros[n * G + gi];
            if (ncode > g) { /* a table would cost more than it saves */
                for (int64_t i = 0; i < g; ++i)
                    out[i] = lb_decode(f, p, lb_get_code(row, gi * g + i, f->bits));
                continue;
            }
            for (int k = 0; k < ncode; ++k) lut[k] = lb_decode(f, p, k);
            if (f->bits == 4 && ((gi * g) & 1) == 0 && (g & 1) == 0 && lb_isa == LB_ISA_AVX512) {
                for (int k = ncode; k < 16; ++k) lut[k] = 0.0f;
                decode4_avx512(row + (gi * g) / 2, g, lut, out);
            } else if (f->bits == 4 && ((gi * g) & 1) == 0) {
                const uint8_t* b = row + (gi * g) / 2;
                int64_t i = 0;
                for (; i + 2 <= g; i += 2) {
                    out[i] = lut[b[i / 2] & 15];
                    out[i + 1] = lut[b[i / 2] >> 4];
                }
                for (; i < g; ++i) out[i] = lut[lb_get_code(row, gi * g + i, 4)];
            } else if (f->bits == 8) {
                const uint8_t* b = row + gi * g;
                for (int64_t i = 0; i < g; ++i) out[i] = lut[b[i]];
            } else {
                for (int64_t i = 0; i < g; ++i) out[i] = lut[lb_get_code(row, gi * g + i, f->bits)];
            }
        }
        return buf;
    }
}

LB_INLINE int needs_rowbuf(const s24_ctx* c) { return !(c->vals && c->vdt == LB_DT_F32); }

/* In-group indices of group q of a meta row. */
LB_INLINE int nib(const uint8_t* mrow, int64_t q) { return (mrow[q >> 1] >> ((q & 1) << 2)) & 15; }

/* Scalar tail of the gather dot: groups [q0, G) of one output row for M (<= 4) rows of x. */
LB_INLINE void dot_tail(const float* v, const uint8_t* mrow, const float* x, int64_t K, int M,
                        int64_t q0, float* acc) {
    for (int64_t q = q0; q < K / 4; ++q) {
        const int b = nib(mrow, q);
        const float v0 = v[2 * q], v1 = v[2 * q + 1];
        const int64_t k0 = 4 * q + (b & 3), k1 = 4 * q + (b >> 2);
        for (int m = 0; m < M; ++m) acc[m] += v0 * x[m * K + k0] + v1 * x[m * K + k1];
    }
}

/* ================= small M: scalar twin ================= */
LB_SCALAR_ATTR static void small_ref(int64_t r0, int64_t r1, void* ctx) {
    s24_ctx* c = (s24_ctx*)ctx;
    const int64_t K = c->K, N = c->N;
    const int M = (int)c->M;
    float* buf = NULL;
    int64_t n0 = r0 * LB24_ROWS_SMALL, n1 = r1 * LB24_ROWS_SMALL < N ? r1 * LB24_ROWS_SMALL : N;
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) {
        c->oom = 1;
        return;
    }
    for (int64_t n = n0; n < n1; ++n) {
        const float* v = row_values(c, n, buf);
        float acc[LB24_SMALL_M] = {0};
        dot_tail(v, c->meta + n * c->mbytes, c->x, K, M, 0, acc);
        for (int m = 0; m < M; ++m)
            st1(c->y, c->ydt, (int64_t)m * N + n, acc[m] + (c->bias ? c->bias[n] : 0.0f));
    }
    free(buf);
}

/* ================= small M: AVX-512 ================= */
LB_AVX512_ATTR LB_INLINE void dot16_avx512(const float* v, const uint8_t* mrow, const float* x,
                                          int64_t K, const int M, float* out) {
    const int64_t nb = (K / 2) / 16;
    const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i off = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i three = _mm512_set1_epi32(3);
    __m512 acc[LB24_SMALL_M], acc2[LB24_SMALL_M];
    float tail[LB24_SMALL_M] = {0};
    for (int m = 0; m < M; ++m) acc[m] = acc2[m] = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + 2 <= nb; t += 2) { /* two independent chains per row of x */
        uint32_t w0, w1;
        memcpy(&w0, mrow + 4 * t, 4);
        memcpy(&w1, mrow + 4 * t + 4, 4);
        const __m512i i0 = _mm512_add_epi32(
            _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)w0), sh), three), off);
        const __m512i i1 = _mm512_add_epi32(
            _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)w1), sh), three), off);
        const __m512 v0 = _mm512_loadu_ps(v + 16 * t), v1 = _mm512_loadu_ps(v + 16 * t + 16);
        /* measured on the dev VM: ~25% faster at M = 1 than the hardware prefetcher alone */
        _mm_prefetch((const char*)(v + 16 * t) + LB24_PF, _MM_HINT_T0);
        for (int m = 0; m < M; ++m) {
            const float* xr = x + m * K + 32 * t;
            const __m512 g0 = _mm512_permutex2var_ps(_mm512_loadu_ps(xr), i0,
                                                     _mm512_loadu_ps(xr + 16));
            const __m512 g1 = _mm512_permutex2var_ps(_mm512_loadu_ps(xr + 32), i1,
                                                     _mm512_loadu_ps(xr + 48));
            acc[m] = _mm512_fmadd_ps(v0, g0, acc[m]);
            acc2[m] = _mm512_fmadd_ps(v1, g1, acc2[m]);
        }
    }
    for (; t < nb; ++t) {
        uint32_t w0;
        memcpy(&w0, mrow + 4 * t, 4);
        const __m512i i0 = _mm512_add_epi32(
            _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)w0), sh), three), off);
        const __m512 v0 = _mm512_loadu_ps(v + 16 * t);
        for (int m = 0; m < M; ++m) {
            const float* xr = x + m * K + 32 * t;
            const __m512 g0 = _mm512_permutex2var_ps(_mm512_loadu_ps(xr), i0,
                                                     _mm512_loadu_ps(xr + 16));
            acc[m] = _mm512_fmadd_ps(v0, g0, acc[m]);
        }
    }
    dot_tail(v, mrow, x, K, M, nb * 8, tail);
    for (int m = 0; m < M; ++m)
        out[m] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m], acc2[m])) + tail[m];
}

LB_AVX512_ATTR static void small_avx512(int64_t r0, int64_t r1, void* ctx) {
    s24_ctx* c = (s24_ctx*)ctx;
    const int64_t K = c->K, N = c->N;
    const int M = (int)c->M;
    float* buf = NULL;
    int64_t n0 = r0 * LB24_ROWS_SMALL, n1 = r1 * LB24_ROWS_SMALL < N ? r1 * LB24_ROWS_SMALL : N;
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) {
        c->oom = 1;
        return;
    }
    for (int64_t n = n0; n < n1; ++n) {
        const float* v = row_values(c, n, buf);
        const uint8_t* mrow = c->meta + n * c->mbytes;
        float acc[LB24_SMALL_M];
        switch (M) { /* constant M: the loops over rows of x unroll */
        case 1: dot16_avx512(v, mrow, c->x, K, 1, acc); break;
        case 2: dot16_avx512(v, mrow, c->x, K, 2, acc); break;
        case 3: dot16_avx512(v, mrow, c->x, K, 3, acc); break;
        case 4: dot16_avx512(v, mrow, c->x, K, 4, acc); break;
        case 5: dot16_avx512(v, mrow, c->x, K, 5, acc); break;
        case 6: dot16_avx512(v, mrow, c->x, K, 6, acc); break;
        case 7: dot16_avx512(v, mrow, c->x, K, 7, acc); break;
        default: dot16_avx512(v, mrow, c->x, K, 8, acc); break;
        }
        for (int m = 0; m < M; ++m)
            st1(c->y, c->ydt, (int64_t)m * N + n, acc[m] + (c->bias ? c->bias[n] : 0.0f));
    }
    free(buf);
}

/* ================= small M: AVX2 ================= */
LB_AVX2_ATTR LB_INLINE float hsum256(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LB_AVX2_ATTR LB_INLINE void dot8_avx2(const float* v, const uint8_t* mrow, const float* x,
                                      int64_t K, const int M, float* out) {
    const int64_t nb = (K / 2) / 8;
    const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i off = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
    const __m256i three = _mm256_set1_epi32(3), seven = _mm256_set1_epi32(7);
    __m256 acc[LB24_SMALL_M];
    float tail[LB24_SMALL_M] = {0};
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t t = 0; t < nb; ++t) {
        const int w = mrow[2 * t] | (mrow[2 * t + 1] << 8);
        const __m256i iv = _mm256_add_epi32(
            _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w), sh), three), off);
        const __m256 hi = _mm256_castsi256_ps(_mm256_cmpgt_epi32(iv, seven));
        const __m256 vv = _mm256_loadu_ps(v + 8 * t);
        if ((t & 1) == 0) _mm_prefetch((const char*)(v + 8 * t) + LB24_PF, _MM_HINT_T0);
        for (int m = 0; m < M; ++m) {
            const float* xr = x + m * K + 16 * t;
            const __m256 ga = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xr), iv);
            const __m256 gb = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xr + 8), iv);
            acc[m] = _mm256_fmadd_ps(vv, _mm256_blendv_ps(ga, gb, hi), acc[m]);
        }
    }
    dot_tail(v, mrow, x, K, M, nb * 4, tail);
    for (int m = 0; m < M; ++m) out[m] = hsum256(acc[m]) + tail[m];
}

LB_AVX2_ATTR static void small_avx2(int64_t r0, int64_t r1, void* ctx) {
    s24_ctx* c = (s24_ctx*)ctx;
    const int64_t K = c->K, N = c->N;
    const int M = (int)c->M;
    float* buf = NULL;
    int64_t n0 = r0 * LB24_ROWS_SMALL, n1 = r1 * LB24_ROWS_SMALL < N ? r1 * LB24_ROWS_SMALL : N;
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) {
        c->oom = 1;
        return;
    }
    for (int64_t n = n0; n < n1; ++n) {
        const float* v = row_values(c, n, buf);
        const uint8_t* mrow = c->meta + n * c->mbytes;
        float acc[LB24_SMALL_M];
        switch (M) {
        case 1: dot8_avx2(v, mrow, c->x, K, 1, acc); break;
        case 2: dot8_avx2(v, mrow, c->x, K, 2, acc); break;
        case 3: dot8_avx2(v, mrow, c->x, K, 3, acc); break;
        case 4: dot8_avx2(v, mrow, c->x, K, 4, acc); break;
        case 5: dot8_avx2(v, mrow, c->x, K, 5, acc); break;
        case 6: dot8_avx2(v, mrow, c->x, K, 6, acc); break;
        case 7: dot8_avx2(v, mrow, c->x, K, 7, acc); break;
        default: dot8_avx2(v, mrow, c->x, K, 8, acc); break;
        }
        for (int m = 0; m < M; ++m)
            st1(c->y, c->ydt, (int64_t)m * N + n, acc[m] + (c->bias ? c->bias[n] : 0.0f));
    }
    free(buf);
}

/* ================= large M ================= */
/* One output row n, groups [q0, q1), one m-block: acc[0..MBLK) += v * xt[k][..].
 * xt points at the m-block's tile (row k at xt + k * MBLK). */
LB_SCALAR_ATTR static void rowblk_ref(float* acc, const float* v, const uint8_t* m, int64_t nq,
                                      const float* xt, int64_t mblk) {
    for (int64_t q = 0; q < nq; ++q) {
        const int b = nib(m, q);
        const float v0 = v[2 * q], v1 = v[2 * q + 1];
        const float* p0 = xt + (4 * q + (b & 3)) * mblk;
        const float* p1 = xt + (4 * q + (b >> 2)) * mblk;
        for (int64_t i = 0; i < mblk; ++i) acc[i] += v0 * p0[i] + v1 * p1[i];
    }
}

/* One output row, nq groups of one K-block, one m-block: v its kept values, m its meta bytes
 * (group 0 of the block in the low nibble of m[0]), xt the block's tile (row k at xt + k * 16R).
 * R: zmm registers per m-block; two chains of R accumulators (even / odd kept value). */
LB_AVX512_ATTR LB_INLINE void rowblk_avx512_r(float* acc, const float* v, const uint8_t* m,
                                              int64_t nq, const float* xt, const int R) {
    __m512 a[4], c[4];
    for (int r = 0; r < R; ++r) {
        a[r] = _mm512_loadu_ps(acc + 16 * r);
        c[r] = _mm512_setzero_ps();
    }
    for (int64_t q = 0; q < nq; ++q) {
        const int b = nib(m, q);
        const float* p0 = xt + (4 * q + (b & 3)) * (16 * R);
        const float* p1 = xt + (4 * q + (b >> 2)) * (16 * R);
        const __m512 b0 = _mm512_set1_ps(v[2 * q]), b1 = _mm512_set1_ps(v[2 * q + 1]);
        for (int r = 0; r < R; ++r) {
            a[r] = _mm512_fmadd_ps(b0, _mm512_load_ps(p0 + 16 * r), a[r]);
            c[r] = _mm512_fmadd_ps(b1, _mm512_load_ps(p1 + 16 * r), c[r]);
        }
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(acc + 16 * r, _mm512_add_ps(a[r], c[r]));
}

LB_AVX512_ATTR LB_INLINE void rowblk_avx512(float* acc, const float* v, const uint8_t* off,
                                            int64_t nq, const float* xt, int64_t mblk) {
    if (mblk == 64) rowblk_avx512_r(acc, v, off, nq, xt, 4);
    else if (mblk == 32) rowblk_avx512_r(acc, v, off, nq, xt, 2);
    else rowblk_avx512_r(acc, v, off, nq, xt, 1);
}

LB_AVX2_ATTR LB_INLINE void rowblk_avx2_r(float* acc, const float* v, const uint8_t* m,
                                          int64_t nq, const float* xt, const int R) {
    __m256 a[4], c[4];
    for (int r = 0; r < R; ++r) {
        a[r] = _mm256_loadu_ps(acc + 8 * r);
        c[r] = _mm256_setzero_ps();
    }
    for (int64_t q = 0; q < nq; ++q) {
        const int b = nib(m, q);
        const float* p0 = xt + (4 * q + (b & 3)) * (8 * R);
        const float* p1 = xt + (4 * q + (b >> 2)) * (8 * R);
        const __m256 b0 = _mm256_set1_ps(v[2 * q]), b1 = _mm256_set1_ps(v[2 * q + 1]);
        for (int r = 0; r < R; ++r) {
            a[r] = _mm256_fmadd_ps(b0, _mm256_load_ps(p0 + 8 * r), a[r]);
            c[r] = _mm256_fmadd_ps(b1, _mm256_load_ps(p1 + 8 * r), c[r]);
        }
    }
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(acc + 8 * r, _mm256_add_ps(a[r], c[r]));
}

LB_AVX2_ATTR LB_INLINE void rowblk_avx2(float* acc, const float* v, const uint8_t* off,
                                        int64_t nq, const float* xt, int64_t mblk) {
    if (mblk == 32) rowblk_avx2_r(acc, v, off, nq, xt, 4);
    else rowblk_avx2_r(acc, v, off, nq, xt, 2);
}

/* The large-M body over chunks [r0, r1) of LB24_NB rows: per (m-block, K-block of QB groups)
 * the working set is the xt tile (4*QB*mblk floats), yt (NB*mblk) and the rows' kept values. */
#define LB24_LARGE_BODY(ROWBLK)                                                                 \
    s24_ctx* c = (s24_ctx*)ctx;                                                                 \
    const int64_t K = c->K, N = c->N, M = c->M, K2 = K / 2, G = K / 4, mblk = c->mblk;           \
    const int64_t n0 = r0 * LB24_NB, n1 = r1 * LB24_NB < N ? r1 * LB24_NB : N;                  \
    const int64_t nmb = (M + mblk - 1) / mblk;                                                  \
    float* vbuf = NULL;                                                                         \
    float* yt = (float*)aligned_alloc(64, (size_t)LB24_NB * (size_t)mblk * sizeof(float));      \
    if (!yt) { c->oom = 1; return; }                                                            \
    if (needs_rowbuf(c) &&                                                                      \
        !(vbuf = (float*)malloc((size_t)LB24_NB * (size_t)K2 * sizeof(float)))) {               \
        free(yt); c->oom = 1; return;                                                           \
    }                                                                                           \
    for (int64_t cb = n0; cb < n1; cb += LB24_NB) {                                             \
        const int64_t ce = cb + LB24_NB < n1 ? cb + LB24_NB : n1;                               \
        const float* vrows[LB24_NB];                                                            \
        for (int64_t n = cb; n < ce; ++n)                                                       \
            vrows[n - cb] = row_values(c, n, vbuf ? vbuf + (n - cb) * K2 : NULL);               \
        for (int64_t mb = 0; mb < nmb; ++mb) {                                                  \
            const int64_t mlen = M - mb * mblk < mblk ? M - mb * mblk : mblk;                   \
            memset(yt, 0, (size_t)LB24_NB * (size_t)mblk * sizeof(float));                      \
            for (int64_t q0 = 0; q0 < G; q0 += LB24_QB) {                                       \
                const int64_t nq = G - q0 < LB24_QB ? G - q0 : LB24_QB;                         \
                const float* xtile = c->xt + mb * K * mblk + 4 * q0 * mblk;                     \
                for (int64_t n = cb; n < ce; ++n) {                                             \
                    float* acc = yt + (n - cb) * mblk;                                          \
                    const float* v = vrows[n - cb] + 2 * q0;                                    \
                    const uint8_t* m = c->meta + n * c->mbytes + q0 / 2;                        \
                    ROWBLK;                                                                     \
                }                                                                               \
            }                                                                                   \
            for (int64_t n = cb; n < ce; ++n) {                                                 \
                const float bn = c->bias ? c->bias[n] : 0.0f;                                   \
                const float* yr = yt + (n - cb) * mblk;                                         \
                for (int64_t i = 0; i < mlen; ++i)                                              \
                    st1(c->y, c->ydt, (mb * mblk + i) * N + n, yr[i] + bn);                     \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    free(vbuf);                                                                                 \
    free(yt);

LB_SCALAR_ATTR static void large_ref(int64_t r0, int64_t r1, void* ctx) {
    LB24_LARGE_BODY(rowblk_ref(acc, v, m, nq, xtile, mblk))
}
LB_AVX2_ATTR static void large_avx2(int64_t r0, int64_t r1, void* ctx) {
    LB24_LARGE_BODY(rowblk_avx2(acc, v, m, nq, xtile, mblk))
}
LB_AVX512_ATTR static void large_avx512(int64_t r0, int64_t r1, void* ctx) {
    LB24_LARGE_BODY(rowblk_avx512(acc, v, m, nq, xtile, mblk))
}

/* ================= drivers ================= */
static int run_linear(s24_ctx* c, const void* x, int xdt, const void* bias) {
    const int64_t M = c->M, K = c->K, N = c->N;
    float* xf = NULL;
    float* bf = NULL;
    int rc = 0;
    if (M == 0 || N == 0) return 0;
    if (bias) {
        if (!(bf = (float*)malloc((size_t)N * sizeof(float)))) return -1;
        ldn(bias, xdt, 0, N, bf);
        c->bias = bf;
    }
    c->mbytes = lb24_meta_bytes(K);
    c->ydt = xdt;
    if (M <= LB24_SMALL_M) {
        lb_parallel_fn fn = lb_isa == LB_ISA_AVX512 ? small_avx512
                            : lb_isa == LB_ISA_AVX2 ? small_avx2
                                                    : small_ref;
        if (xdt == LB_DT_F32) {
            c->x = (const float*)x;
        } else {
            if (!(xf = (float*)malloc((size_t)(M * K) * sizeof(float)))) { rc = -1; goto done; }
            ldn(x, xdt, 0, M * K, xf);
            c->x = xf;
        }
        lb_parallel((N + LB24_ROWS_SMALL - 1) / LB24_ROWS_SMALL, 8, fn, c);
    } else {
        lb_parallel_fn fn = lb_isa == LB_ISA_AVX512 ? large_avx512
                            : lb_isa == LB_ISA_AVX2 ? large_avx2
                                                    : large_ref;
        /* m-block width: no more zero padding of a short batch than needed */
        const int64_t mblk = M <= 16 ? 16 : (M <= 32 || lb_isa != LB_ISA_AVX512 ? 32 : 64);
        const int64_t nmb = (M + mblk - 1) / mblk;
        xf = (float*)aligned_alloc(64, (size_t)(nmb * K * mblk) * sizeof(float));
        if (!xf) { rc = -1; goto done; }
        /* xt[mb][k][i] = x[mb*mblk + i][k], zero past M; in blocks of 16 k so the 16 rows of
         * xt being written stay in L1 */
        memset(xf, 0, (size_t)(nmb * K * mblk) * sizeof(float));
        for (int64_t mb = 0; mb < nmb; ++mb) {
            float* t = xf + mb * K * mblk;
            const int64_t mlen = M - mb * mblk < mblk ? M - mb * mblk : mblk;
            for (int64_t k0 = 0; k0 < K; k0 += 16) {
                const int64_t kl = K - k0 < 16 ? K - k0 : 16;
                for (int64_t i = 0; i < mlen; ++i) {
                    const int64_t o = (mb * mblk + i) * K + k0;
                    if (xdt == LB_DT_F32) {
                        const float* xr = (const float*)x + o;
                        for (int64_t j = 0; j < kl; ++j) t[(k0 + j) * mblk + i] = xr[j];
                    } else {
                        for (int64_t j = 0; j < kl; ++j) t[(k0 + j) * mblk + i] = ld1(x, xdt, o + j);
                    }
                }
            }
        }
        c->xt = xf;
        c->mblk = mblk;
        lb_parallel((N + LB24_NB - 1) / LB24_NB, 1, fn, c);
    }
    rc = c->oom ? -1 : 0;
done:
    free(xf);
    free(bf);
    return rc;
}

int lb24_linear_cpu(const void* x, int xdt, int64_t M, int64_t K, const void* values, int vdt,
                    const uint8_t* meta, int64_t N, const void* bias, void* y) {
    s24_ctx c;
    memset(&c, 0, sizeof c);
    c.M = M; c.N = N; c.K = K;
    c.vals = values; c.vdt = vdt; c.meta = meta; c.y = y;
    return run_linear(&c, x, xdt, bias);
}

int lb24_qlinear_cpu(const void* x, int xdt, int64_t M, int64_t K, const uint8_t* codes,
                     const float* scales, const uint8_t* zeros, const lb_fmt* f, int64_t g,
                     const uint8_t* meta, int64_t N, const void* bias, void* y) {
    s24_ctx c;
    memset(&c, 0, sizeof c);
    c.M = M; c.N = N; c.K = K;
    c.codes = codes; c.scales = scales; c.zeros = zeros; c.f = f; c.g = g;
    c.rb = lb_row_bytes(K / 2, f->bits);
    c.meta = meta; c.y = y;
    return run_linear(&c, x, xdt, bias);
}

/* ---- decompress ---- */
typedef struct {
    const void* v;
    int dt;
    const uint8_t* meta;
    int64_t K;
    void* out;
} dec_ctx;

#define LB24_DECOMP_ROWS(T)                                                                     \
    for (int64_t n = r0; n < r1; ++n) {                                                         \
        const uint8_t* mrow = d->meta + n * mb;                                                 \
        T* o = (T*)d->out + n * K;                                                              \
        const T* v = (const T*)d->v + n * (K / 2);                                              \
        memset(o, 0, (size_t)K * sizeof(T));                                                    \
        for (int64_t q = 0; q < G; ++q) {                                                       \
            const int b = nib(mrow, q);                                                         \
            o[4 * q + (b & 3)] = v[2 * q];                                                      \
            o[4 * q + (b >> 2)] = v[2 * q + 1];                                                 \
        }                                                                                       \
    }

static void decompress_rows(int64_t r0, int64_t r1, void* ctx) {
    dec_ctx* d = (dec_ctx*)ctx;
    const int64_t K = d->K, G = K / 4, mb = lb24_meta_bytes(K);
    /* raw element copies (bit patterns kept: -0.0 and NaN payloads survive) */
    if (d->dt == LB_DT_F32) {
        LB24_DECOMP_ROWS(uint32_t)
    } else {
        LB24_DECOMP_ROWS(uint16_t)
    }
}

int lb24_decompress_cpu(const void* values, int vdt, const uint8_t* meta, int64_t N, int64_t K,
                        void* out) {
    dec_ctx d = {values, vdt, meta, K, out};
    lb_parallel(N, K >= 16384 ? 1 : 16384 / (K > 0 ? K : 1), decompress_rows, &d);
    return 0;
}

/* ---- backward to x over the compressed weight: gx (M, K) = g (M, N) @ W_pruned (N, K) ----
 * For small M. The N rows are split into P parts (P = threads), each accumulating a private
 * float32 (M, K) sum; the parts are then added in order. AVX-512: for 16 K-positions (4 groups,
 * 2 meta bytes) the kept values are placed with one masked expand-load (mask = the kept
 * positions, from a 256-entry table over a meta byte), then one FMA per row of g. */
typedef struct {
    s24_ctx* c;       /* vals, vdt, meta, mbytes, K, N, M */
    const float* g;   /* (M, N) float32 */
    float* part;      /* P x (M, K) */
    int64_t P;
} gx_ctx;

static uint8_t lb24_kept_mask8[256]; /* meta byte -> bits of the kept positions of its 2 groups */

static void gx_init_table(void) {
    for (int b = 0; b < 256; ++b) {
        const int lo = b & 15, hi = b >> 4;
        lb24_kept_mask8[b] = (uint8_t)(((1 << (lo & 3)) | (1 << (lo >> 2))) |
                                       (((1 << (hi & 3)) | (1 << (hi >> 2))) << 4));
    }
}

LB_INLINE void gx_part_bounds(const gx_ctx* x, int64_t p, int64_t* a, int64_t* b) {
    *a = x->c->N * p / x->P;
    *b = x->c->N * (p + 1) / x->P;
}

LB_SCALAR_ATTR static void gx_ref(int64_t p0, int64_t p1, void* ctx) {
    gx_ctx* x = (gx_ctx*)ctx;
    s24_ctx* c = x->c;
    const int64_t K = c->K, N = c->N, G = K / 4;
    const int M = (int)c->M;
    float* buf = NULL;
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) {
        c->oom = 1;
        return;
    }
    for (int64_t p = p0; p < p1; ++p) {
        int64_t a, b;
        float* acc = x->part + p * M * K;
        gx_part_bounds(x, p, &a, &b);
        for (int64_t n = a; n < b; ++n) {
            const float* v = row_values(c, n, buf);
            const uint8_t* mrow = c->meta + n * c->mbytes;
            for (int64_t q = 0; q < G; ++q) {
                const int bb = nib(mrow, q);
                for (int m = 0; m < M; ++m) {
                    const float gm = x->g[m * N + n];
                    acc[m * K + 4 * q + (bb & 3)] += gm * v[2 * q];
                    acc[m * K + 4 * q + (bb >> 2)] += gm * v[2 * q + 1];
                }
            }
        }
    }
    free(buf);
}

LB_AVX512_ATTR static void gx_avx512(int64_t p0, int64_t p1, void* ctx) {
    gx_ctx* x = (gx_ctx*)ctx;
    s24_ctx* c = x->c;
    const int64_t K = c->K, N = c->N, G = K / 4, nb = K / 16;
    const int M = (int)c->M;
    float* buf = NULL;
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) {
        c->oom = 1;
        return;
    }
    for (int64_t p = p0; p < p1; ++p) {
        int64_t a, b;
        float* acc = x->part + p * M * K;
        gx_part_bounds(x, p, &a, &b);
        for (int64_t n = a; n < b; ++n) {
            const float* v = row_values(c, n, buf);
            const uint8_t* mrow = c->meta + n * c->mbytes;
            __m512 gm[LB24_SMALL_M];
            for (int m = 0; m < M; ++m) gm[m] = _mm512_set1_ps(x->g[m * N + n]);
            for (int64_t t = 0; t < nb; ++t) { /* K positions 16t.., kept values 8t.. */
                const __mmask16 k = (__mmask16)(lb24_kept_mask8[mrow[2 * t]] |
                                                 (lb24_kept_mask8[mrow[2 * t + 1]] << 8));
                const __m512 d = _mm512_maskz_expandloadu_ps(k, v + 8 * t);
                for (int m = 0; m < M; ++m) {
                    float* o = acc + m * K + 16 * t;
                    _mm512_storeu_ps(o, _mm512_fmadd_ps(gm[m], d, _mm512_loadu_ps(o)));
                }
            }
            for (int64_t q = nb * 4; q < G; ++q) { /* tail groups */
                const int bb = nib(mrow, q);
                for (int m = 0; m < M; ++m) {
                    const float g1 = x->g[m * N + n];
                    acc[m * K + 4 * q + (bb & 3)] += g1 * v[2 * q];
                    acc[m * K + 4 * q + (bb >> 2)] += g1 * v[2 * q + 1];
                }
            }
        }
    }
    free(buf);
}

int lb24_grad_x_cpu(const void* g, int gdt, int64_t M, int64_t N, const void* values, int vdt,
                    const uint8_t* meta, int64_t K, void* gx) {
    s24_ctx c;
    gx_ctx x;
    float *gf = NULL, *sum = NULL;
    int rc = 0;
    memset(&c, 0, sizeof c);
    if (M == 0 || K == 0) return 0;
    if (M > LB24_SMALL_M) return -2;
    if (!lb24_kept_mask8[1]) gx_init_table();
    c.M = M; c.N = N; c.K = K; c.vals = values; c.vdt = vdt; c.meta = meta;
    c.mbytes = lb24_meta_bytes(K);
    x.c = &c;
    x.P = lb_num_threads();
    if (x.P > (N + 255) / 256) x.P = (N + 255) / 256;
    if (x.P < 1) x.P = 1;
    gf = (float*)malloc((size_t)(M * N > 0 ? M * N : 1) * sizeof(float));
    x.part = (float*)calloc((size_t)(x.P * M * K), sizeof(float));
    if (!gf || !x.part) { rc = -1; goto done; }
    ldn(g, gdt, 0, M * N, gf);
    x.g = gf;
    lb_parallel(x.P, 1, lb_isa == LB_ISA_AVX512 ? gx_avx512 : gx_ref, &x);
    if (c.oom) { rc = -1; goto done; }
    sum = x.part; /* parts added in order into part 0 */
    for (int64_t p = 1; p < x.P; ++p)
        for (int64_t i = 0; i < M * K; ++i) sum[i] += x.part[p * M * K + i];
    for (int64_t i = 0; i < M * K; ++i) st1(gx, gdt, i, sum[i]);
done:
    free(gf);
    free(x.part);
    return rc;
}
