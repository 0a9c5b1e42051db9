/* csrc/cpu/qlinear.c: CPU kernels of the qlinear family: y = x W^T (+ bias) with W a packed
 * low-bit weight (every format of FORMATS.md section 1).
 *   - lb_ql_pack_cpu regroups the canonical codes into the lane-per-row layout documented in
 *     csrc/layouts.h (built once, at quantize time);
 *   - GEMV (M <= 4): codes -> table values in registers, FMA with broadcast x, per-group scale
 *     applied once per group (csrc/cpu/qlinear_body.h, gemv_tile);
 *   - GEMM (M > 4): a 256 x 32 panel of W is dequantised exactly into an L1-resident float
 *     buffer, then an MR x 32 register-blocked FMA micro-kernel (MR = 6 on AVX-512, 3 on AVX2);
 *   - group sizes that are neither a multiple of 32 nor the whole row take a plain path over the
 *     canonical codes (decode a row, dot it with each x row).
 * x of any float dtype is converted to float32 first; all accumulation is float32 and the result
 * is rounded once to x's dtype. The kernel body is written once over a 16-lane vector
 * abstraction (csrc/cpu/qlinear_body.h) and compiled three times: the scalar twin (*_ref, here),
 * AVX2 and AVX-512 (csrc/cpu/arch/x86/qlinear_avx2.c, qlinear_avx512.c), picked by lb_rt.isa.
 * Work is split over output tiles on the runtime's thread pool (lb_parallel). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qlinear_impl.h"

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

#define QL(name) lb_ql_##name##_ref
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
            const lb_gparams p = lb_load_gparams(f, c->scales, c->zeros, n * G + gi);
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
            /* (p0, p1) with every INT decoding as (code - p1) * p0 (layouts.h) */
            const lb_gparams p = lb_load_gparams(f, scales, zeros, n * G + gi);
            pr[j] = f->kind == LB_KIND_LVL2 ? p.sp : p.s;
            pr[16 + j] = f->kind == LB_KIND_LVL2 ? p.sn : (f->kind == LB_KIND_INT_SYM ? -f->qmin : p.z);
        }
    }
}

/* The 16-entry decode tables (entries replicated for 2/3-bit codes, see csrc/layouts.h). */
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
    lb_parallel_fn fn = lb_ql_deqt_worker_ref;
    memset(&c, 0, sizeof c);
    c.kind = f->kind; c.bits = f->bits; c.two = f->kind == LB_KIND_LVL2;
    c.N = N; c.K = K; c.g = g; c.G = K / g; c.KB = (K + 31) / 32; c.Kp = c.KB * 32;
    c.NT = (N + 15) / 16; c.kbpg = c.G == 1 ? c.KB : g / 32;
    c.P = packed; c.prm = params; c.y = wt; c.kb0 = kb0;
    ql_tables(&c, f);
#if LB_X86
    if (lb_rt.isa == LB_ISA_AVX512) fn = lb_ql_deqt_worker_avx512;
    else if (lb_rt.isa == LB_ISA_AVX2) fn = lb_ql_deqt_worker_avx2;
#endif
    lb_parallel(kb1, 1, fn, &c); /* [0, kb1): workers skip blocks below kb0 */
}

static lb_parallel_fn ql_pick(int gemm) {
#if LB_X86
    if (lb_rt.isa == LB_ISA_AVX512) return gemm ? lb_ql_gemm_worker_avx512 : lb_ql_gemv_worker_avx512;
    if (lb_rt.isa == LB_ISA_AVX2) return gemm ? lb_ql_gemm_worker_avx2 : lb_ql_gemv_worker_avx2;
#endif
    return gemm ? lb_ql_gemm_worker_ref : lb_ql_gemv_worker_ref;
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
    c.kind = f->kind; c.bits = f->bits; c.two = f->kind == LB_KIND_LVL2; c.M = M;
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
            float v = lb_ld1(x, dt, m * K + k);
            xf[m * c.Kp + k] = v;
            xs[m * c.G + k / g] += v;
        }
    if (bf)
        for (int64_t n = 0; n < N; ++n) bf[n] = lb_ld1(bias, dt, n);
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
