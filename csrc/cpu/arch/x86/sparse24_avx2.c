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

/* The 16 codes [16t, 16t + 16) of a row of 4-bit codes (8 bytes, low nibble first) as two
 * registers of 8 lanes, each lane's code in bits 0-3 (bits 4-7 hold another code's bits). */
LB_AVX2_ATTR LB_INLINE void codes16_avx2(const char* v, int64_t t, __m256i* lo, __m256i* hi) {
    const __m128i by = _mm_loadl_epi64((const __m128i*)(v + 8 * t));
    const __m128i u = _mm_unpacklo_epi8(by, _mm_srli_epi16(by, 4));
    *lo = _mm256_cvtepu8_epi32(u);
    *hi = _mm256_cvtepu8_epi32(_mm_srli_si128(u, 8));
}

/* 8 codes (lanes' bits 0-3) decoded: INT kinds (aff) by the formula of lb_decode_k,
 * ((float)code + a) * s with a = -z or qmin, on the FMA ports; level kinds through the table
 * (entries 0-7 in ta, 8-15 in tb; vpermps reads bits 0-2, bit 3 moved to the sign picks). */
LB_AVX2_ATTR LB_INLINE __m256 decode8_avx2(__m256i q, int aff, __m256 ta, __m256 tb) {
    if (aff)
        return _mm256_mul_ps(
            _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q, _mm256_set1_epi32(15))), ta), tb);
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(ta, q), _mm256_permutevar8x32_ps(tb, q),
                            _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
}

/* Kept values [16t + 8h, 16t + 8h + 8) of a row v of a float source as float32. */
LB_AVX2_ATTR LB_INLINE __m256 kept8_avx2(const char* v, int64_t t, int h, const int src) {
    if (src == S24_F32 || src == S24_BUF) return _mm256_loadu_ps((const float*)v + 16 * t + 8 * h);
    if (src == S24_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(v + 32 * t + 16 * h))), 16));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(v + 32 * t + 16 * h)));
}

/* x elements of kept values [8h, 8h + 8) of a step: lanes 0-3 from the first register of the
 * 16-element chunk, 4-7 from the second (vpermps reads the offset mod 8), one immediate blend. */
LB_AVX2_ATTR LB_INLINE __m256 gather8_avx2(const float* xr, __m256i iv) {
    return _mm256_blend_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(xr), iv),
                           _mm256_permutevar8x32_ps(_mm256_loadu_ps(xr + 8), iv), 0xF0);
}

/* Output rows n .. n+R-1 for M rows of x: out[r * M + m]. Per step of 16 kept values (32
 * K-elements, one 32-bit meta word per row: two variable shifts give the lane offsets of each
 * half) as the AVX-512 kernel, in two halves of 8. */
LB_AVX2_ATTR LB_INLINE void rows_avx2(const s24_ctx* c, int64_t n, const int R, const int M,
                                      const int src, float* buf, float* out) {
    const int64_t K = c->K, K2 = K / 2, nb = K2 / 16, mbytes = c->mbytes;
    const int64_t step = src == S24_Q4 ? 8 : (src == S24_BF16 || src == S24_F16) ? 32 : 64;
    const int64_t rowb = s24_row_bytes(c, src);
    const int64_t gt = src == S24_Q4 ? c->g / 16 : (nb > 0 ? nb : 1); /* steps per table */
    const int aff =
        src == S24_Q4 && (c->f->kind == LB_KIND_INT_ASYM || c->f->kind == LB_KIND_INT_SYM);
    const float* x = c->x;
    const uint8_t* mr = c->meta + n * mbytes;
    const char* v = s24_row(c, src, n, buf);
    const __m256i sh0 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i sh1 = _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30);
    const __m256i off = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
    const __m256i three = _mm256_set1_epi32(3);
    __m256 acc[LB24_R1 * LB24_SMALL_M], ta[LB24_R1], tb[LB24_R1];
    for (int i = 0; i < R * M; ++i) acc[i] = _mm256_setzero_ps();
    for (int r = 0; r < R; ++r) ta[r] = tb[r] = _mm256_setzero_ps();
    for (int64_t t0 = 0; t0 < nb; t0 += gt) {
        const int64_t t1 = t0 + gt < nb ? t0 + gt : nb;
        if (src == S24_Q4)
            for (int r = 0; r < R; ++r) {
                const int64_t gidx = (n + r) * (K2 / c->g) + t0 / gt;
                float tab[16];
                if (aff) { /* value = ((float)code + a) * s */
                    const lb_gparams p = lb_load_gparams(c->f, c->scales, c->zeros, gidx);
                    ta[r] = _mm256_set1_ps(c->f->kind == LB_KIND_INT_ASYM ? -p.z : c->f->qmin);
                    tb[r] = _mm256_set1_ps(p.s);
                } else {
                    s24_lut16(c, gidx, tab);
                    ta[r] = _mm256_loadu_ps(tab);
                    tb[r] = _mm256_loadu_ps(tab + 8);
                }
            }
        for (int64_t t = t0; t < t1; ++t) {
            if (src != S24_BUF) {
                if (((t * step) & 63) == 0)
                    for (int r = 0; r < R; ++r)
                        _mm_prefetch(v + (r + LB24_PFD * R) * rowb + t * step, _MM_HINT_T0);
                if ((t & 15) == 0)
                    for (int r = 0; r < R; ++r)
                        _mm_prefetch((const char*)mr + (r + LB24_PFD * R) * mbytes + 4 * t,
                                     _MM_HINT_T0);
            }
            for (int r = 0; r < R; ++r) {
                int32_t w;
                memcpy(&w, mr + r * mbytes + 4 * t, 4);
                const __m256i wv = _mm256_set1_epi32(w);
                const __m256i i0 =
                    _mm256_add_epi32(_mm256_and_si256(_mm256_srlv_epi32(wv, sh0), three), off);
                const __m256i i1 =
                    _mm256_add_epi32(_mm256_and_si256(_mm256_srlv_epi32(wv, sh1), three), off);
                __m256 v0, v1;
                if (src == S24_Q4) {
                    __m256i q0, q1;
                    codes16_avx2(v + r * rowb, t, &q0, &q1);
                    v0 = decode8_avx2(q0, aff, ta[r], tb[r]);
                    v1 = decode8_avx2(q1, aff, ta[r], tb[r]);
                } else {
                    v0 = kept8_avx2(v + r * rowb, t, 0, src);
                    v1 = kept8_avx2(v + r * rowb, t, 1, src);
                }
                for (int m = 0; m < M; ++m) {
                    const float* xr = x + m * K + 32 * t;
                    acc[r * M + m] = _mm256_fmadd_ps(v0, gather8_avx2(xr, i0), acc[r * M + m]);
                    acc[r * M + m] = _mm256_fmadd_ps(v1, gather8_avx2(xr + 16, i1), acc[r * M + m]);
                }
            }
        }
    }
    for (int i = 0; i < R * M; ++i) out[i] = hsum256(acc[i]);
    if (16 * nb < K2) /* float sources only: a group of 4-bit codes holds whole steps */
        for (int r = 0; r < R; ++r)
            tail_row(c, n + r, src == S24_BUF ? (const float*)v : NULL, 16 * nb, x, M, out + r * M);
}

/* 1 when every nibble of meta bytes [0, nb) is a valid group (LB24_CHECK_ROWS_VEC). */
LB_AVX2_ATTR static int meta_ok_avx2(const uint8_t* p, int64_t nb) {
    const __m256i m33 = _mm256_set1_epi8(0x33), m44 = _mm256_set1_epi8(0x44);
    const __m256i m11 = _mm256_set1_epi8(0x11);
    __m256i bad = _mm256_setzero_si256();
    for (int64_t i = 0; i < nb; i += 32) {
        __m256i w;
        if (nb - i >= 32) {
            w = _mm256_loadu_si256((const __m256i*)(p + i));
        } else { /* the tail, padded with valid bytes */
            uint8_t t[32];
            memset(t, 0x44, sizeof t);
            memcpy(t, p + i, (size_t)(nb - i));
            w = _mm256_loadu_si256((const __m256i*)t);
        }
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w, 2), m33), m44);
        const __m256i d = _mm256_sub_epi32(_mm256_sub_epi32(hi, _mm256_and_si256(w, m33)), m11);
        bad = _mm256_or_si256(bad, _mm256_andnot_si256(d, m44));
    }
    return _mm256_testz_si256(bad, bad);
}

#define LB24_ROWS_AVX2(n, R, M, SRC, o) rows_avx2(c, n, R, M, SRC, buf, o)

LB_AVX2_ATTR static void lb24_small_avx2(int64_t r0, int64_t r1, void* ctx) {
    LB24_SMALL_TASK(LB24_ROWS_AVX2, meta_ok_avx2)
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
