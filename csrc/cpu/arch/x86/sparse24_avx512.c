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
/* Kept values [16t, 16t + 16) of a row v of source src as float32; lut: the row's table of the
 * current quant group (S24_Q4). */
LB_AVX512_ATTR LB_INLINE __m512 kept16_avx512(const char* v, int64_t t, __m512 lut, const int src) {
    if (src == S24_F32 || src == S24_BUF) return _mm512_loadu_ps((const float*)v + 16 * t);
    if (src == S24_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(v + 32 * t))), 16));
    if (src == S24_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(v + 32 * t)));
    {   /* 8 bytes, 16 codes (low nibble first); vpermps reads only bits 0-3 of each lane */
        const __m128i by = _mm_loadl_epi64((const __m128i*)(v + 8 * t));
        const __m128i u = _mm_unpacklo_epi8(by, _mm_srli_epi16(by, 4));
        return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(u), lut);
    }
}

/* Output rows n .. n+R-1 for M rows of x: out[r * M + m]. Per step of 16 kept values (32
 * K-elements, one 32-bit meta word per row) the 16 2-bit indices become lane offsets (one
 * variable shift and one ternary-logic op) and vpermt2ps picks the x elements from the two
 * registers of that x chunk: no memory gathers. The next R rows are prefetched at the same
 * position, one line per step of each stream. */
LB_AVX512_ATTR LB_INLINE void rows_avx512(const s24_ctx* c, int64_t n, const int R, const int M,
                                          const int src, float* buf, float* out) {
    const int64_t K = c->K, K2 = K / 2, nb = K2 / 16, mbytes = c->mbytes;
    const int64_t step = src == S24_Q4 ? 8 : (src == S24_BF16 || src == S24_F16) ? 32 : 64;
    const int64_t rowb = s24_row_bytes(c, src);
    const int64_t gt = src == S24_Q4 ? c->g / 16 : (nb > 0 ? nb : 1); /* steps per table */
    const float* x = c->x;
    const uint8_t* mr = c->meta + n * mbytes;
    const char* v = s24_row(c, src, n, buf);
    const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i off = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i three = _mm512_set1_epi32(3);
    __m512 acc[LB24_R1 * LB24_SMALL_M], lut[LB24_R1];
    for (int i = 0; i < R * M; ++i) acc[i] = _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) lut[r] = _mm512_setzero_ps();
    for (int64_t t0 = 0; t0 < nb; t0 += gt) {
        const int64_t t1 = t0 + gt < nb ? t0 + gt : nb;
        if (src == S24_Q4)
            for (int r = 0; r < R; ++r) {
                float tab[16];
                s24_lut16(c, (n + r) * (K2 / c->g) + t0 / gt, tab);
                lut[r] = _mm512_loadu_ps(tab);
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
                uint32_t w;
                memcpy(&w, mr + r * mbytes + 4 * t, 4);
                /* (w >> 2l & 3) | off: 0xEA = A & B | C */
                const __m512i iv = _mm512_ternarylogic_epi32(
                    _mm512_srlv_epi32(_mm512_set1_epi32((int)w), sh), three, off, 0xEA);
                const __m512 vv = kept16_avx512(v + r * rowb, t, lut[r], src);
                for (int m = 0; m < M; ++m) {
                    const float* xr = x + m * K + 32 * t;
                    acc[r * M + m] = _mm512_fmadd_ps(
                        vv,
                        _mm512_permutex2var_ps(_mm512_loadu_ps(xr), iv, _mm512_loadu_ps(xr + 16)),
                        acc[r * M + m]);
                }
            }
        }
    }
    for (int i = 0; i < R * M; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
    if (16 * nb < K2) /* float sources only: a group of 4-bit codes holds whole steps */
        for (int r = 0; r < R; ++r)
            tail_row(c, n + r, src == S24_BUF ? (const float*)v : NULL, 16 * nb, x, M, out + r * M);
}

/* 1 when every nibble of meta bytes [0, nb) is a valid group (LB24_CHECK_ROWS_VEC). */
LB_AVX512_ATTR static int meta_ok_avx512(const uint8_t* p, int64_t nb) {
    const __m512i m33 = _mm512_set1_epi8(0x33), m44 = _mm512_set1_epi8(0x44);
    const __m512i m11 = _mm512_set1_epi8(0x11);
    __m512i bad = _mm512_setzero_si512();
    for (int64_t i = 0; i < nb; i += 64) {
        const __mmask64 k = nb - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (nb - i)) - 1);
        const __m512i w = _mm512_mask_loadu_epi8(m44, k, p + i);
        /* (w >> 2 & 0x33) | 0x44: 0xEA = A & B | C */
        const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi32(w, 2), m33, m44, 0xEA);
        const __m512i d = _mm512_sub_epi32(_mm512_sub_epi32(hi, _mm512_and_si512(w, m33)), m11);
        bad = _mm512_ternarylogic_epi32(bad, d, m44, 0xF2); /* bad | (~d & 0x44) */
    }
    return _mm512_test_epi32_mask(bad, bad) == 0;
}

#define LB24_ROWS_AVX512(n, R, M, SRC, o) rows_avx512(c, n, R, M, SRC, buf, o)

LB_AVX512_ATTR static void lb24_small_avx512(int64_t r0, int64_t r1, void* ctx) {
    LB24_SMALL_TASK(LB24_ROWS_AVX512, meta_ok_avx512)
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
