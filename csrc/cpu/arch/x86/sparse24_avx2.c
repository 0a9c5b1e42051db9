/* csrc/cpu/arch/x86/sparse24_avx2.c: the AVX2 variants of the sparse24 CPU kernels (small-M
 * gather, large-M row blocks), instantiating the loop bodies of csrc/cpu/sparse24_impl.h with ymm
 * inner kernels, and the kernel table lb_s24_kernels_avx2.
 * x86 only: elsewhere the file is empty and the scalar twins run. */
#include "../../sparse24_impl.h"

#if LB_X86
#include <immintrin.h>

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

LB_AVX2_ATTR static void lb24_small_avx2(int64_t r0, int64_t r1, void* ctx) {
    LB24_SMALL_BODY(LB24_SWITCH_M(dot8_avx2, M, v, mrow, c->x, K))
}

/* ================= large M: AVX2 ================= */
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

LB_AVX2_ATTR static void lb24_large_avx2(int64_t r0, int64_t r1, void* ctx) {
    LB24_LARGE_BODY(rowblk_avx2(acc, v, m, nq, xtile, mblk))
}

/* ================= backward to x: the scalar body (no AVX2 kernel) ================= */
LB_SCALAR_ATTR static void lb24_gx_avx2(int64_t p0, int64_t p1, void* ctx) {
    LB24_GX_BODY(gx_groups(x, acc, v, mrow, n, 0))
}

const struct lb_s24_kernels lb_s24_kernels_avx2 = {lb24_small_avx2, lb24_large_avx2, lb24_gx_avx2,
                                                   NULL, 32};
#endif /* LB_X86 */
