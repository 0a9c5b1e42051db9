/* csrc/cpu/qlinear.c: CPU kernels of the qlinear family: y = x W^T (+ bias) with W a packed
 * low-bit weight (every format of FORMATS.md section 1).
 *   - lb_ql_pack_cpu regroups the canonical codes into the lane-per-row layout documented in
 *     csrc/ops/qlinear.h (built once, at quantize time);
 *   - GEMV (M <= 4): codes -> table values in registers, FMA with broadcast x, per-group scale
 *     applied once per group (csrc/cpu/qlinear_body.h, gemv_tile);
 *   - GEMM (M > 4): a 256 x 32 panel of W is dequantised exactly into an L1-resident float
 *     buffer, then an MR x 32 register-blocked FMA micro-kernel (MR = 6 on AVX-512, 3 on AVX2);
 *   - group sizes that are neither a multiple of 32 nor the whole row take a plain path over the
 *     canonical codes (decode a row, dot it with each x row).
 * x of any float dtype is converted to float32 first; all accumulation is float32 and the result
 * is rounded once to x's dtype. The kernel body is written once over a 16-lane vector
 * abstraction and compiled three times: scalar twin (*_ref), AVX2, AVX-512, picked by lb_isa.
 * Work is split over output tiles on torch's intra-op pool (lb_parallel). */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/qlinear.h"
#include "lb_cpu.h"


typedef struct {
    int kind, bits, two, M, dt;
    int64_t N, K, Kp, KB, G, g, NT, kbpg, kb0;
    const int32_t* P;
    const float* prm;
    const float* xf;   /* x as float32, (M, Kp), zero padded */
    float* xs;         /* per-group sums of x, (M, G) */
    const float* bias; /* float32 (N) or NULL */
    void* y;
    float tbl[16], tblp[16], tbln[16];
    /* canonical path */
    const uint8_t* codes;
    const float* scales;
    const uint8_t* zeros;
    const lb_fmt* f;
    volatile int oom;
} ql_ctx;

/* y[m, n0 : n0+cnt] = v + bias, rounded to the output dtype. */
static void ql_store(const ql_ctx* c, int64_t m, int64_t n0, const float* v, int64_t cnt) {
    const int64_t o = m * c->N + n0;
    for (int64_t j = 0; j < cnt; ++j) {
        float r = c->bias ? v[j] + c->bias[n0 + j] : v[j];
        if (c->dt == LB_DT_F32)
            ((float*)c->y)[o + j] = r;
        else if (c->dt == LB_DT_BF16)
            ((uint16_t*)c->y)[o + j] = lb_f32_to_bf16(r);
        else
            ((_Float16*)c->y)[o + j] = (_Float16)r;
    }
}

static float ql_load1(const void* p, int dt, int64_t i) {
    if (dt == LB_DT_F32) return ((const float*)p)[i];
    if (dt == LB_DT_BF16) return lb_bf16_to_f32(((const uint16_t*)p)[i]);
    return (float)((const _Float16*)p)[i];
}

/* ================================ scalar twin ================================ */
typedef struct { float v[16]; } ql_sf;
typedef struct { uint32_t v[16]; } ql_si;
typedef struct { float v[16]; } ql_st;
#define QL_L for (int l_ = 0; l_ < 16; ++l_)
LB_INLINE ql_sf sc_zero(void) { ql_sf r; QL_L r.v[l_] = 0.0f; return r; }
LB_INLINE ql_sf sc_set1(float a) { ql_sf r; QL_L r.v[l_] = a; return r; }
LB_INLINE ql_sf sc_load(const float* p) { ql_sf r; QL_L r.v[l_] = p[l_]; return r; }
LB_INLINE void sc_store(float* p, ql_sf a) { QL_L p[l_] = a.v[l_]; }
LB_INLINE ql_sf sc_fma(ql_sf a, ql_sf b, ql_sf c) { QL_L c.v[l_] = a.v[l_] * b.v[l_] + c.v[l_]; return c; }
LB_INLINE ql_sf sc_add(ql_sf a, ql_sf b) { QL_L a.v[l_] += b.v[l_]; return a; }
LB_INLINE ql_sf sc_sub(ql_sf a, ql_sf b) { QL_L a.v[l_] -= b.v[l_]; return a; }
LB_INLINE ql_sf sc_mul(ql_sf a, ql_sf b) { QL_L a.v[l_] *= b.v[l_]; return a; }
LB_INLINE ql_sf sc_selge0(ql_sf w, ql_sf a, ql_sf b) { QL_L a.v[l_] = w.v[l_] >= 0.0f ? a.v[l_] : b.v[l_]; return a; }
LB_INLINE ql_si sc_iload(const int32_t* p) { ql_si r; QL_L r.v[l_] = (uint32_t)p[l_]; return r; }
LB_INLINE ql_si sc_srli(ql_si a, int n) { QL_L a.v[l_] >>= n; return a; }
LB_INLINE ql_si sc_slli(ql_si a, int n) { QL_L a.v[l_] <<= n; return a; }
LB_INLINE ql_si sc_merge3(ql_si lo, ql_si h) { QL_L lo.v[l_] = (lo.v[l_] & 3u) | (h.v[l_] & ~3u); return lo; }
LB_INLINE ql_si sc_and255(ql_si a) { QL_L a.v[l_] &= 255u; return a; }
LB_INLINE ql_sf sc_cvt(ql_si a) { ql_sf r; QL_L r.v[l_] = (float)a.v[l_]; return r; }
LB_INLINE ql_st sc_tmake(const float* t) { ql_st r; QL_L r.v[l_] = t[l_]; return r; }
LB_INLINE ql_sf sc_look(ql_si c, ql_st t) { ql_sf r; QL_L r.v[l_] = t.v[c.v[l_] & 15u]; return r; }
#undef QL_L

#define QL(name) name##_ref
#define QL_ATTR
#define QL_MR 4
#define QL_UNROLL32
#define QL_UNROLL16
#define QL_UNROLL8
#define vf ql_sf
#define vi ql_si
#define vt ql_st
#define VF_ZERO sc_zero
#define VF_SET1 sc_set1
#define VF_LOAD sc_load
#define VF_STORE sc_store
#define VF_FMA sc_fma
#define VF_ADD sc_add
#define VF_SUB sc_sub
#define VF_MUL sc_mul
#define VF_SELGE0 sc_selge0
#define VI_LOAD sc_iload
#define VI_SRLI sc_srli
#define VI_SLLI sc_slli
#define VI_MERGE3 sc_merge3
#define VI_AND255 sc_and255
#define VI_CVT sc_cvt
#define VT_MAKE sc_tmake
#define VT_LOOK sc_look
#include "qlinear_body.h"
#undef QL
#undef QL_ATTR
#undef QL_MR
#undef QL_UNROLL32
#undef QL_UNROLL16
#undef QL_UNROLL8
#undef VF_ZERO
#undef VF_SET1
#undef VF_LOAD
#undef VF_STORE
#undef VF_FMA
#undef VF_ADD
#undef VF_SUB
#undef VF_MUL
#undef VF_SELGE0
#undef VI_LOAD
#undef VI_SRLI
#undef VI_SLLI
#undef VI_MERGE3
#undef VI_AND255
#undef VI_CVT
#undef VT_MAKE
#undef VT_LOOK
#undef vf
#undef vi
#undef vt

#if defined(__x86_64__)
/* ================================ AVX2 (two ymm per 16 lanes) ================================ */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
typedef struct { __m256 a, b; } ql_af;
typedef struct { __m256i a, b; } ql_ai;
typedef struct { __m256 lo, hi; } ql_at;
LB_INLINE ql_af a2_zero(void) { ql_af r = {_mm256_setzero_ps(), _mm256_setzero_ps()}; return r; }
LB_INLINE ql_af a2_set1(float x) { ql_af r = {_mm256_set1_ps(x), _mm256_set1_ps(x)}; return r; }
LB_INLINE ql_af a2_load(const float* p) { ql_af r = {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; return r; }
LB_INLINE void a2_store(float* p, ql_af v) { _mm256_storeu_ps(p, v.a); _mm256_storeu_ps(p + 8, v.b); }
LB_INLINE ql_af a2_fma(ql_af x, ql_af y, ql_af z) { ql_af r = {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; return r; }
LB_INLINE ql_af a2_add(ql_af x, ql_af y) { ql_af r = {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; return r; }
LB_INLINE ql_af a2_sub(ql_af x, ql_af y) { ql_af r = {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; return r; }
LB_INLINE ql_af a2_mul(ql_af x, ql_af y) { ql_af r = {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; return r; }
LB_INLINE ql_af a2_selge0(ql_af w, ql_af x, ql_af y) {
    __m256 z = _mm256_setzero_ps();
    ql_af r = {_mm256_blendv_ps(y.a, x.a, _mm256_cmp_ps(w.a, z, _CMP_GE_OQ)),
               _mm256_blendv_ps(y.b, x.b, _mm256_cmp_ps(w.b, z, _CMP_GE_OQ))};
    return r;
}
LB_INLINE ql_ai a2_iload(const int32_t* p) { ql_ai r = {_mm256_loadu_si256((const __m256i*)p), _mm256_loadu_si256((const __m256i*)(p + 8))}; return r; }
LB_INLINE ql_ai a2_srli(ql_ai x, int n) { ql_ai r = {_mm256_srli_epi32(x.a, n), _mm256_srli_epi32(x.b, n)}; return r; }
LB_INLINE ql_ai a2_slli(ql_ai x, int n) { ql_ai r = {_mm256_slli_epi32(x.a, n), _mm256_slli_epi32(x.b, n)}; return r; }
LB_INLINE ql_ai a2_merge3(ql_ai lo, ql_ai h) {
    __m256i m = _mm256_set1_epi32(3);
    ql_ai r = {_mm256_or_si256(_mm256_and_si256(lo.a, m), _mm256_andnot_si256(m, h.a)),
               _mm256_or_si256(_mm256_and_si256(lo.b, m), _mm256_andnot_si256(m, h.b))};
    return r;
}
LB_INLINE ql_ai a2_and255(ql_ai x) { __m256i m = _mm256_set1_epi32(255); ql_ai r = {_mm256_and_si256(x.a, m), _mm256_and_si256(x.b, m)}; return r; }
LB_INLINE ql_af a2_cvt(ql_ai x) { ql_af r = {_mm256_cvtepi32_ps(x.a), _mm256_cvtepi32_ps(x.b)}; return r; }
LB_INLINE ql_at a2_tmake(const float* t) { ql_at r = {_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8)}; return r; }
/* 16-entry lookup: vpermps of each half-table, blended on bit 3 of the code. */
LB_INLINE __m256 a2_look8(__m256i c, ql_at t) {
    __m256 lo = _mm256_permutevar8x32_ps(t.lo, c), hi = _mm256_permutevar8x32_ps(t.hi, c);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
}
LB_INLINE ql_af a2_look(ql_ai c, ql_at t) { ql_af r = {a2_look8(c.a, t), a2_look8(c.b, t)}; return r; }

#define QL(name) name##_avx2
#define QL_ATTR
#define QL_MR 3
#define QL_UNROLL32 _Pragma("GCC unroll 32")
#define QL_UNROLL16 _Pragma("GCC unroll 16")
#define QL_UNROLL8 _Pragma("GCC unroll 8")
#define vf ql_af
#define vi ql_ai
#define vt ql_at
#define VF_ZERO a2_zero
#define VF_SET1 a2_set1
#define VF_LOAD a2_load
#define VF_STORE a2_store
#define VF_FMA a2_fma
#define VF_ADD a2_add
#define VF_SUB a2_sub
#define VF_MUL a2_mul
#define VF_SELGE0 a2_selge0
#define VI_LOAD a2_iload
#define VI_SRLI a2_srli
#define VI_SLLI a2_slli
#define VI_MERGE3 a2_merge3
#define VI_AND255 a2_and255
#define VI_CVT a2_cvt
#define VT_MAKE a2_tmake
#define VT_LOOK a2_look
#include "qlinear_body.h"
#undef QL
#undef QL_ATTR
#undef QL_MR
#undef QL_UNROLL32
#undef QL_UNROLL16
#undef QL_UNROLL8
#undef VF_ZERO
#undef VF_SET1
#undef VF_LOAD
#undef VF_STORE
#undef VF_FMA
#undef VF_ADD
#undef VF_SUB
#undef VF_MUL
#undef VF_SELGE0
#undef VI_LOAD
#undef VI_SRLI
#undef VI_SLLI
#undef VI_MERGE3
#undef VI_AND255
#undef VI_CVT
#undef VT_MAKE
#undef VT_LOOK
#undef vf
#undef vi
#undef vt
#pragma GCC pop_options

/* ================================ AVX-512 (one zmm per 16 lanes) ================================ */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
LB_INLINE __m512 z5_selge0(__m512 w, __m512 a, __m512 b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(w, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
}
/* (lo & 3) | (h & ~3) in one vpternlogd (imm 0xE4: C ? A : B, C = the mask 3). */
LB_INLINE __m512i z5_merge3(__m512i lo, __m512i h) {
    return _mm512_ternarylogic_epi32(lo, h, _mm512_set1_epi32(3), 0xE4);
}
LB_INLINE __m512 z5_look(__m512i c, __m512 t) { return _mm512_permutexvar_ps(c, t); }
LB_INLINE __m512i z5_iload(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
LB_INLINE __m512i z5_and255(__m512i a) { return _mm512_and_si512(a, _mm512_set1_epi32(255)); }
LB_INLINE __m512i z5_srli(__m512i a, int n) { return _mm512_srli_epi32(a, (unsigned)n); }
LB_INLINE __m512i z5_slli(__m512i a, int n) { return _mm512_slli_epi32(a, (unsigned)n); }

#define QL(name) name##_avx512
#define QL_ATTR
#define QL_MR 6
#define QL_UNROLL32 _Pragma("GCC unroll 32")
#define QL_UNROLL16 _Pragma("GCC unroll 16")
#define QL_UNROLL8 _Pragma("GCC unroll 8")
#define vf __m512
#define vi __m512i
#define vt __m512
#define VF_ZERO _mm512_setzero_ps
#define VF_SET1 _mm512_set1_ps
#define VF_LOAD _mm512_loadu_ps
#define VF_STORE _mm512_storeu_ps
#define VF_FMA _mm512_fmadd_ps
#define VF_ADD _mm512_add_ps
#define VF_SUB _mm512_sub_ps
#define VF_MUL _mm512_mul_ps
#define VF_SELGE0 z5_selge0
#define VI_LOAD z5_iload
#define VI_SRLI z5_srli
#define VI_SLLI z5_slli
#define VI_MERGE3 z5_merge3
#define VI_AND255 z5_and255
#define VI_CVT _mm512_cvtepi32_ps
#define VT_MAKE _mm512_loadu_ps
#define VT_LOOK z5_look
#include "qlinear_body.h"
#pragma GCC pop_options
#endif /* __x86_64__ */

/* ================================ canonical-code path ================================ */
static void ql_generic_rows(int64_t a, int64_t b, void* ctx) {
    ql_ctx* c = (ql_ctx*)ctx;
    const lb_fmt* f = c->f;
    const int64_t K = c->K, G = K / c->g, rb = lb_row_bytes(K, f->bits);
    float* w = (float*)malloc((size_t)K * sizeof(float));
    if (!w) {
        c->oom = 1;
        return;
    }
    for (int64_t n = a; n < b; ++n) {
        const uint8_t* row = c->codes + n * rb;
        for (int64_t gi = 0; gi < G; ++gi) {
            lb_gparams p = {0.0f, 0.0f, 0.0f, 0.0f};
            if (f->kind == LB_KIND_LVL2) {
                p.sp = c->scales[(n * G + gi) * 2];
                p.sn = c->scales[(n * G + gi) * 2 + 1];
            } else {
                p.s = c->scales[n * G + gi];
                if (f->kind == LB_KIND_INT_ASYM) p.z = (float)c->zeros[n * G + gi];
            }
            for (int64_t k = gi * c->g; k < (gi + 1) * c->g; ++k)
                w[k] = lb_decode(f, p, lb_get_code(row, k, f->bits));
        }
        for (int64_t m = 0; m < c->M; ++m) {
            const float* x = c->xf + m * c->Kp;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
            ql_store(c, m, n, &acc, 1);
        }
    }
    free(w);
}

/* ================================ entry points ================================ */
void lb_ql_pack_cpu(const uint8_t* codes, const float* scales, const uint8_t* zeros, int64_t N,
                    int64_t K, int64_t g, const lb_fmt* f, int32_t* packed, float* params) {
    const int bits = f->bits;
    const int64_t G = K / g, KB = (K + 31) / 32, rb = lb_row_bytes(K, bits);
    memset(packed, 0, (size_t)lb_ql_packed_words(N, K, bits) * sizeof(int32_t));
    memset(params, 0, (size_t)lb_ql_params_floats(N, G) * sizeof(float));
    for (int64_t n = 0; n < N; ++n) {
        const int64_t nt = n / 16, j = n % 16;
        const uint8_t* row = codes + n * rb;
        uint32_t* P = (uint32_t*)packed + nt * KB * bits * 16;
        for (int64_t k = 0; k < K; ++k) {
            const uint32_t code = (uint32_t)lb_get_code(row, k, bits);
            const int64_t kb = k / 32, kk = k % 32;
            uint32_t* blk = P + kb * bits * 16;
            if (bits == 3) {
                blk[(kk / 16) * 16 + j] |= (code & 3u) << (2 * (kk % 16));
                blk[2 * 16 + j] |= (code >> 2) << kk;
            } else {
                const int cpw = 32 / bits;
                blk[(kk / cpw) * 16 + j] |= code << (bits * (kk % cpw));
            }
        }
        for (int64_t gi = 0; gi < G; ++gi) {
            float* pr = params + (nt * G + gi) * 32;
            float p0, p1;
            switch (f->kind) {
            case LB_KIND_INT_ASYM: p0 = scales[n * G + gi]; p1 = (float)zeros[n * G + gi]; break;
            case LB_KIND_INT_SYM: p0 = scales[n * G + gi]; p1 = -f->qmin; break;
            case LB_KIND_LVL2: p0 = scales[(n * G + gi) * 2]; p1 = scales[(n * G + gi) * 2 + 1]; break;
            default: p0 = scales[n * G + gi]; p1 = 0.0f; break;
            }
            pr[j] = p0;
            pr[16 + j] = p1;
        }
    }
}

/* The 16-entry decode tables (entries replicated for 2/3-bit codes, see csrc/ops/qlinear.h). */
static void ql_tables(ql_ctx* c, const lb_fmt* f) {
    const int mask = f->bits == 2 ? 3 : (f->bits == 3 ? 7 : 15);
    for (int t = 0; t < 16; ++t) {
        const int code = t & mask;
        const float v = (f->kind == LB_KIND_INT_ASYM || f->kind == LB_KIND_INT_SYM) ? (float)code
                                                                                    : f->lev[code];
        c->tbl[t] = v;
        c->tblp[t] = v > 0.0f ? v : 0.0f;
        c->tbln[t] = v < 0.0f ? v : 0.0f;
    }
}

void lb_ql_dequant_t_cpu(const int32_t* packed, const float* params, int64_t N, int64_t K,
                         int64_t g, const lb_fmt* f, int64_t kb0, int64_t kb1, float* wt) {
    ql_ctx c;
    lb_parallel_fn fn = deqt_worker_ref;
    memset(&c, 0, sizeof c);
    c.kind = f->kind; c.bits = f->bits; c.two = f->kind == LB_KIND_LVL2;
    c.N = N; c.K = K; c.g = g; c.G = K / g; c.KB = (K + 31) / 32; c.Kp = c.KB * 32;
    c.NT = (N + 15) / 16; c.kbpg = c.G == 1 ? c.KB : g / 32;
    c.P = packed; c.prm = params; c.y = wt; c.kb0 = kb0;
    ql_tables(&c, f);
#if defined(__x86_64__)
    if (lb_isa == LB_ISA_AVX512) fn = deqt_worker_avx512;
    else if (lb_isa == LB_ISA_AVX2) fn = deqt_worker_avx2;
#endif
    lb_parallel(kb1, 1, fn, &c); /* [0, kb1): workers skip blocks below kb0 */
}

static lb_parallel_fn ql_pick(int gemm) {
#if defined(__x86_64__)
    if (lb_isa == LB_ISA_AVX512) return gemm ? gemm_worker_avx512 : gemv_worker_avx512;
    if (lb_isa == LB_ISA_AVX2) return gemm ? gemm_worker_avx2 : gemv_worker_avx2;
#endif
    return gemm ? gemm_worker_ref : gemv_worker_ref;
}

int lb_ql_forward_cpu(const void* x, int dt, int64_t M, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f, const uint8_t* codes, const float* scales,
                      const uint8_t* zeros, const int32_t* packed, const float* params,
                      const void* bias, void* y) {
    ql_ctx c;
    const int fast = packed && params && lb_ql_packable(K, g);
    int64_t xbytes;
    float *xf = NULL, *xs = NULL, *bf = NULL;
    memset(&c, 0, sizeof c);
    if (M <= 0 || N <= 0) return 0;
    c.kind = f->kind; c.bits = f->bits; c.two = f->kind == LB_KIND_LVL2; c.M = (int)M;
    c.dt = dt; c.N = N; c.K = K; c.g = g; c.G = K / g;
    c.KB = (K + 31) / 32; c.Kp = c.KB * 32; c.NT = (N + 15) / 16;
    c.kbpg = c.G == 1 ? c.KB : g / 32;
    c.P = packed; c.prm = params; c.codes = codes; c.scales = scales; c.zeros = zeros; c.f = f;
    c.y = y;
    xbytes = ((M * c.Kp * (int64_t)sizeof(float)) + 63) / 64 * 64;
    xf = (float*)aligned_alloc(64, (size_t)xbytes);
    xs = (float*)calloc((size_t)(M * c.G), sizeof(float));
    bf = bias ? (float*)malloc((size_t)N * sizeof(float)) : NULL;
    if (!xf || !xs || (bias && !bf)) {
        free(xf); free(xs); free(bf);
        return -1;
    }
    memset(xf, 0, (size_t)xbytes);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < K; ++k) {
            float v = ql_load1(x, dt, m * K + k);
            xf[m * c.Kp + k] = v;
            xs[m * c.G + k / g] += v;
        }
    if (bf)
        for (int64_t n = 0; n < N; ++n) bf[n] = ql_load1(bias, dt, n);
    c.xf = xf; c.xs = xs; c.bias = bf;
    ql_tables(&c, f);
    if (!fast) {
        lb_parallel(N, K >= 4096 ? 1 : 4096 / K, ql_generic_rows, &c);
    } else if (M <= 4) {
        int64_t grain = 65536 / (16 * c.Kp);
        lb_parallel(c.NT, grain > 0 ? grain : 1, ql_pick(0), &c);
    } else {
        lb_parallel((c.NT + 1) / 2, 1, ql_pick(1), &c);
    }
    free(xf); free(xs); free(bf);
    return c.oom ? -1 : 0;
}
