/* csrc/cpu/arch/x86/sparse24_avx512.c: the AVX-512 variants of the sparse24 CPU kernels (4-bit
 * decode, small-M gather, large-M row blocks, backward to x), instantiating the loop bodies of
 * csrc/cpu/sparse24_impl.h with zmm inner kernels, and the kernel table lb_s24_kernels_avx512.
 * x86 only: elsewhere the file is empty and the scalar twins run. */
#include "../../sparse24_impl.h"

#if LB_X86
#include <immintrin.h>

/* 4-bit codes through a 16-entry table (sparse24_impl.h): 32 codes per step. */
LB_AVX512_ATTR __attribute__((noinline)) static void lb24_decode4_avx512(const uint8_t* b, int64_t g,
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

LB_AVX512_ATTR static void lb24_small_avx512(int64_t r0, int64_t r1, void* ctx) {
    LB24_SMALL_BODY(LB24_SWITCH_M(dot16_avx512, M, v, mrow, c->x, K))
}

/* ================= large M: AVX-512 ================= */
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

LB_AVX512_ATTR static void lb24_large_avx512(int64_t r0, int64_t r1, void* ctx) {
    LB24_LARGE_BODY(rowblk_avx512(acc, v, m, nq, xtile, mblk))
}

/* ================= backward to x: AVX-512 (one masked expand-load per 16 K-positions) ======= */
/* Output row n into its part: the 16-position blocks vectorised, the tail groups scalar. */
LB_AVX512_ATTR LB_INLINE void gx_row_avx512(const gx_ctx* x, float* acc, const float* v,
                                           const uint8_t* mrow, int64_t n) {
    const s24_ctx* c = x->c;
    const int64_t K = c->K, N = c->N, nb = K / 16;
    const int M = (int)c->M;
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
    gx_groups(x, acc, v, mrow, n, nb * 4);
}

LB_AVX512_ATTR static void lb24_gx_avx512(int64_t p0, int64_t p1, void* ctx) {
    LB24_GX_BODY(gx_row_avx512(x, acc, v, mrow, n))
}

const struct lb_s24_kernels lb_s24_kernels_avx512 = {lb24_small_avx512, lb24_large_avx512,
                                                     lb24_gx_avx512, lb24_decode4_avx512, 64};
#endif /* LB_X86 */
