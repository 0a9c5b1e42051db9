/* csrc/cpu/qlinear_common.c: the helpers every variant of the qlinear CPU kernels shares
 * (declared in csrc/cpu/qlinear_impl.h): the per-tile group parameters the float and integer
 * kernels read, from the canonical scales and zero points. No ISA test: the SSE2 transposes
 * below are the x86-64 baseline, which every x86 variant (and the scalar twin there) runs. */
#include "qlinear_impl.h"

#if LB_X86
#include <emmintrin.h>
/* A full tile's parameters, transposed 4 x 4 at a time in SSE2 registers (the x86-64 baseline):
 * dst[i * 32 + j] = src[j * rs + i * es] (/ S if div), rows j < 16, groups i < ng; es = 2 takes
 * every other float (the two-scale formats' interleaved (s+, s-)). Bit-identical to the scalar
 * loop (moves, exact u8 -> float, IEEE division); the scalar form cost about 16 instructions per
 * (row, group) and a third of an int2-g64 call (callgrind), this one about 2. */
LB_INLINE __m128 ql_ld4(const float* q, const int es, const int div, __m128 sv) {
    const __m128 r = es == 1 ? _mm_loadu_ps(q)
                             : _mm_shuffle_ps(_mm_loadu_ps(q), _mm_loadu_ps(q + 4),
                                              _MM_SHUFFLE(2, 0, 2, 0));
    return div ? _mm_div_ps(r, sv) : r;
}

/* Four rows' 4 groups (r0..r3) stored transposed: dst[k * 32 + j..j+3] = group k of rows. */
#define QL_TR4_STORE(r0, r1, r2, r3, d)                                                     \
    do {                                                                                    \
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);                                                  \
        _mm_storeu_ps((d), r0);                                                             \
        _mm_storeu_ps((d) + 32, r1);                                                        \
        _mm_storeu_ps((d) + 64, r2);                                                        \
        _mm_storeu_ps((d) + 96, r3);                                                        \
    } while (0)

/* es and div are constants in each call of ql_tr16, so the loop holds no branch. */
LB_INLINE void ql_tr16_k(const float* src, int64_t rs, int64_t ng, float S, float* dst,
                         const int es, const int div) {
    const __m128 sv = _mm_set1_ps(S);
    int64_t i = 0;
    for (; i + 4 <= ng; i += 4) {
        const float* q = src + i * es;
        _Pragma("GCC unroll 4") for (int j = 0; j < 16; j += 4) {
            __m128 r0 = ql_ld4(q + (j + 0) * rs, es, div, sv);
            __m128 r1 = ql_ld4(q + (j + 1) * rs, es, div, sv);
            __m128 r2 = ql_ld4(q + (j + 2) * rs, es, div, sv);
            __m128 r3 = ql_ld4(q + (j + 3) * rs, es, div, sv);
            QL_TR4_STORE(r0, r1, r2, r3, dst + i * 32 + j);
        }
    }
    for (; i < ng; ++i)
        for (int j = 0; j < 16; ++j) {
            const float v = src[j * rs + i * es];
            dst[i * 32 + j] = div ? v / S : v;
        }
}

static void ql_tr16(const float* src, int64_t rs, int es, int64_t ng, int div, float S,
                    float* dst) {
    if (es == 1 && !div) ql_tr16_k(src, rs, ng, S, dst, 1, 0);
    else if (es == 1) ql_tr16_k(src, rs, ng, S, dst, 1, 1);
    else if (!div) ql_tr16_k(src, rs, ng, S, dst, 2, 0);
    else ql_tr16_k(src, rs, ng, S, dst, 2, 1);
}

LB_INLINE __m128 ql_ld4_u8(const uint8_t* q) {
    int32_t w;
    memcpy(&w, q, 4);
    const __m128i zero = _mm_setzero_si128();
    const __m128i b = _mm_unpacklo_epi8(_mm_cvtsi32_si128(w), zero);
    return _mm_cvtepi32_ps(_mm_unpacklo_epi16(b, zero));
}

static void ql_tr16_u8(const uint8_t* z, int64_t rs, int64_t ng, float* dst) {
    int64_t i = 0;
    for (; i + 4 <= ng; i += 4) {
        _Pragma("GCC unroll 4") for (int j = 0; j < 16; j += 4) {
            __m128 r0 = ql_ld4_u8(z + (j + 0) * rs + i), r1 = ql_ld4_u8(z + (j + 1) * rs + i);
            __m128 r2 = ql_ld4_u8(z + (j + 2) * rs + i), r3 = ql_ld4_u8(z + (j + 3) * rs + i);
            QL_TR4_STORE(r0, r1, r2, r3, dst + i * 32 + j);
        }
    }
    for (; i < ng; ++i)
        for (int j = 0; j < 16; ++j) dst[i * 32 + j] = (float)z[j * rs + i];
}

/* lb_ql_tile_params for a whole tile (16 rows < N). */
static void ql_tile_params_x86(const ql_ctx* c, int64_t n0, int64_t g0, int64_t ng, int integer,
                              float* tp) {
    const lb_fmt* f = c->f;
    const int64_t G = c->G;
    const float S = c->lscale;
    switch (f->kind) {
    case LB_KIND_INT_ASYM:
        ql_tr16(c->scales + n0 * G + g0, G, 1, ng, 0, S, tp);
        ql_tr16_u8(c->zeros + n0 * G + g0, G, ng, tp + 16);
        return;
    case LB_KIND_INT_SYM:
        ql_tr16(c->scales + n0 * G + g0, G, 1, ng, 0, S, tp);
        for (int64_t i = 0; i < ng; ++i)
            for (int j = 0; j < 16; ++j) tp[i * 32 + 16 + j] = (float)-f->qmin;
        return;
    case LB_KIND_LVL2:
        ql_tr16(c->scales + 2 * (n0 * G + g0), 2 * G, 2, ng, integer, S, tp);
        ql_tr16(c->scales + 2 * (n0 * G + g0) + 1, 2 * G, 2, ng, integer, S, tp + 16);
        return;
    default: {
        const int lvl_p1 = integer && c->sch == QI_LOFF;
        ql_tr16(c->scales + n0 * G + g0, G, 1, ng, integer, S, tp);
        for (int64_t i = 0; i < ng; ++i)
            for (int j = 0; j < 16; ++j)
                tp[i * 32 + 16 + j] = !integer ? 0.0f : lvl_p1 ? S : tp[i * 32 + j];
    }
    }
}
#endif

/* The format switch is outside the loops (one branch-free loop per kind): with small groups this
 * runs for every (row, group) of the weight on each call, and with the switch inside it cost as
 * much as the integer dot products themselves (int2-g64 ran at a third of whole-row speed). */
void lb_ql_tile_params(const ql_ctx* c, int64_t nt, int64_t g0, int64_t g1, int integer,
                       float* tp) {
    const lb_fmt* f = c->f;
    const int64_t G = c->G, ng = g1 - g0;
    const float S = c->lscale;
    const int lvl_p1 = integer && c->sch == QI_LOFF; /* p1 = S, else p0 (PN) or 0 (float) */
#if LB_X86
    if (nt * 16 + 16 <= c->N) {
        ql_tile_params_x86(c, nt * 16, g0, ng, integer, tp);
        return;
    }
#endif
    for (int64_t j = 0; j < 16; ++j) {
        const int64_t n = nt * 16 + j;
        float* t0 = tp + j;
        float* t1 = tp + 16 + j;
        if (n >= c->N) {
            for (int64_t i = 0; i < ng; ++i) t0[i * 32] = t1[i * 32] = 0.0f;
            continue;
        }
        switch (f->kind) {
        case LB_KIND_INT_ASYM: {
            const float* s = c->scales + n * G + g0;
            const uint8_t* z = c->zeros + n * G + g0;
            for (int64_t i = 0; i < ng; ++i) {
                t0[i * 32] = s[i];
                t1[i * 32] = (float)z[i];
            }
            break;
        }
        case LB_KIND_INT_SYM: {
            const float* s = c->scales + n * G + g0;
            for (int64_t i = 0; i < ng; ++i) {
                t0[i * 32] = s[i];
                t1[i * 32] = (float)-f->qmin;
            }
            break;
        }
        case LB_KIND_LVL2: {
            const float* s = c->scales + 2 * (n * G + g0);
            for (int64_t i = 0; i < ng; ++i) {
                /* x / S, not x * (1/S): bit-identical to the former per-element form */
                t0[i * 32] = integer ? s[2 * i] / S : s[2 * i];
                t1[i * 32] = integer ? s[2 * i + 1] / S : s[2 * i + 1];
            }
            break;
        }
        default: {
            const float* s = c->scales + n * G + g0;
            for (int64_t i = 0; i < ng; ++i) {
                const float p0 = integer ? s[i] / S : s[i];
                t0[i * 32] = p0;
                t1[i * 32] = !integer ? 0.0f : lvl_p1 ? S : p0;
            }
            break;
        }
        }
    }
}

