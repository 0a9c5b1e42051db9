/* csrc/cpu/qlinear.c: CPU kernels of the qlinear family: y = x W^T (+ bias) with W a packed
 * low-bit weight (every format of FORMATS.md section 1), in the accuracy modes of FORMATS.md 4.
 *   - lb_ql_pack_cpu / lb_ql_unpack_cpu: the canonical codes <-> the lane-per-row layout of
 *     csrc/layouts.h (the CPU's one stored form of the codes; scales and zero points stay
 *     canonical and the kernels read them there);
 *   - integer modes (act "int8", and "auto" where an integer scheme is within 1e-4), every M:
 *     activations quantized once per call per row and 32-block to int8 (d = max|x|/127, round
 *     half to even; "auto" adds an int8 quantized residual; ql_act_rows_body, vectorised per
 *     variant), then integer dot products over the packed codes, up to 12 activation rows per
 *     decoded weight vector (csrc/cpu/qlinear_int_body.h);
 *   - float GEMV (act "float", M <= 4): codes -> exact table values in registers, FMA with
 *     broadcast x (csrc/cpu/qlinear_body.h);
 *   - float GEMM (act "float" with M > 4, and NF weights in "auto"): a 256 x 32 panel of W is
 *     dequantised exactly into an L1-resident float buffer, then an MR x 32 register-blocked FMA
 *     micro-kernel; it is also the exact path of every row an integer mode or the GEMV cannot
 *     represent (inf, nan, |x| > 2^64, integer modes also 0 < max|x| < 2^-100): those rows are
 *     redone with per-weight decoding, so they propagate inf/nan as F.linear does;
 *   - group sizes that are neither a multiple of 32 nor the whole row take a plain path over the
 *     canonical codes (decode a row, dot it with each x row) in every mode.
 * x of any float dtype is converted to float32 first; the result is rounded once to x's dtype.
 * The kernel bodies are written once over vector abstractions and compiled as the scalar twins
 * (*_scalar, here: the table lb_ql_kernels_scalar) and the x86 variants
 * (csrc/cpu/arch/x86/qlinear_*.c, one kernel table each); the drivers run the table in use
 * (lb_rt.ql). Work is split over output tiles on the runtime's thread pool (lb_parallel): no
 * reduction crosses threads, so results do not depend on the thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qlinear_impl.h"

/* The scalar twins are the body of the SIMD kernels on 16-lane structs: at -O3 gcc peels and
 * vectorises every lane loop of every unrolled step (minutes of compile time for no gain on the
 * machines that run the SIMD variants); -O2 compiles them in seconds. */
#pragma GCC optimize("O2")

/* ================================ scalar twins ================================ */
typedef struct { float v[16]; } ql_sf;
typedef struct { uint32_t v[16]; } ql_si;
typedef struct { float v[16]; } ql_st;
#define QL_L for (int l_ = 0; l_ < 16; ++l_)
LB_INLINE ql_sf sc_zero(void) { ql_sf r; QL_L r.v[l_] = 0.0f; return r; }
LB_INLINE ql_sf sc_set1(float a) { ql_sf r; QL_L r.v[l_] = a; return r; }
LB_INLINE ql_sf sc_load(const float* p) { ql_sf r; QL_L r.v[l_] = p[l_]; return r; }
LB_INLINE void sc_store(float* p, ql_sf a) { QL_L p[l_] = a.v[l_]; }
LB_INLINE ql_sf sc_fma(ql_sf a, ql_sf b, ql_sf c) { QL_L c.v[l_] = a.v[l_] * b.v[l_] + c.v[l_]; return c; }
LB_INLINE ql_sf sc_fnma(ql_sf a, ql_sf b, ql_sf c) { QL_L c.v[l_] = c.v[l_] - a.v[l_] * b.v[l_]; return c; }
LB_INLINE ql_sf sc_add(ql_sf a, ql_sf b) { QL_L a.v[l_] += b.v[l_]; return a; }
LB_INLINE ql_sf sc_sub(ql_sf a, ql_sf b) { QL_L a.v[l_] -= b.v[l_]; return a; }
LB_INLINE ql_sf sc_mul(ql_sf a, ql_sf b) { QL_L a.v[l_] *= b.v[l_]; return a; }
LB_INLINE ql_sf sc_selge0(ql_sf w, ql_sf a, ql_sf b) { QL_L a.v[l_] = w.v[l_] >= 0.0f ? a.v[l_] : b.v[l_]; return a; }
LB_INLINE ql_si sc_iload(const int32_t* p) { ql_si r; QL_L r.v[l_] = (uint32_t)p[l_]; return r; }
LB_INLINE ql_si sc_izero(void) { ql_si r; QL_L r.v[l_] = 0u; return r; }
LB_INLINE ql_si sc_iset1(int32_t a) { ql_si r; QL_L r.v[l_] = (uint32_t)a; return r; }
LB_INLINE ql_si sc_srli(ql_si a, int n) { QL_L a.v[l_] >>= n; return a; }
LB_INLINE ql_si sc_slli(ql_si a, int n) { QL_L a.v[l_] <<= n; return a; }
LB_INLINE ql_si sc_iand(ql_si a, ql_si b) { QL_L a.v[l_] &= b.v[l_]; return a; }
LB_INLINE ql_si sc_ior(ql_si a, ql_si b) { QL_L a.v[l_] |= b.v[l_]; return a; }
LB_INLINE ql_si sc_merge3(ql_si lo, ql_si h) { QL_L lo.v[l_] = (lo.v[l_] & 3u) | (h.v[l_] & ~3u); return lo; }
LB_INLINE ql_si sc_and255(ql_si a) { QL_L a.v[l_] &= 255u; return a; }
LB_INLINE ql_sf sc_cvt(ql_si a) { ql_sf r; QL_L r.v[l_] = (float)(int32_t)a.v[l_]; return r; }
LB_INLINE ql_st sc_tmake(const float* t) { ql_st r; QL_L r.v[l_] = t[l_]; return r; }
LB_INLINE ql_sf sc_look(ql_si c, ql_st t) { ql_sf r; QL_L r.v[l_] = t.v[c.v[l_] & 15u]; return r; }
/* the byte ops of the integer kernels: a 16-entry byte table (vpshufb on bytes < 16) and the
 * 4-way u8 x s8 dot product (vpdpbusd) of each lane with the 4 bytes of x */
typedef struct { uint8_t v[16]; } ql_sb;
LB_INLINE ql_sb sc_bmake(const uint8_t* t) { ql_sb r; QL_L r.v[l_] = t[l_]; return r; }
LB_INLINE ql_si sc_lut(ql_si a, ql_sb t) {
    QL_L {
        uint32_t o = 0;
        for (int i = 0; i < 4; ++i) o |= (uint32_t)t.v[(a.v[l_] >> (8 * i)) & 15u] << (8 * i);
        a.v[l_] = o;
    }
    return a;
}
LB_INLINE ql_si sc_dot(ql_si acc, ql_si w, int32_t x) {
    QL_L {
        int32_t s = 0;
        for (int i = 0; i < 4; ++i)
            s += (int32_t)((w.v[l_] >> (8 * i)) & 255u) * (int32_t)(int8_t)((uint32_t)x >> (8 * i));
        acc.v[l_] = (uint32_t)((int32_t)acc.v[l_] + s);
    }
    return acc;
}
#undef QL_L

#define QL(name) lb_ql_##name##_scalar
#define QL_ATTR
#define QL_SPECIALISE static __attribute__((noinline))
#define QL_MR 4
#define QL_UNROLL32
#define QL_UNROLL16
#define QL_UNROLL8
#define ql_vf ql_sf
#define ql_vi ql_si
#define ql_vt ql_st
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

#define QI(name) lb_ql_##name##_scalar
#define QI_ATTR
#define QI_TILE_ONE_COPY
#define QI_UNROLL8
#define QVL 16
#define QI_MB_OFF 8
#define QI_MB_PN 4
#define QI_MB_OFF_BIG 12
#define QI_MB_PN_BIG 6
#define ql_qv ql_si
#define ql_qg ql_sf
#define ql_qt ql_sb
#define QV_LOAD sc_iload
#define QV_ZERO sc_izero
#define QV_SET1 sc_iset1
#define QV_SRLI sc_srli
#define QV_SLLI sc_slli
#define QV_AND sc_iand
#define QV_OR sc_ior
#define QV_LUT sc_lut
#define QV_DOT sc_dot
#define QV_DOT8 sc_dot
#define QV_CVT sc_cvt
#define QT_MAKE sc_bmake
#define QG_ZERO sc_zero
#define QG_SET1 sc_set1
#define QG_LOAD sc_load
#define QG_STORE sc_store
#define QG_FMA sc_fma
#define QG_FNMA sc_fnma
#include "qlinear_int_body.h"

/* ql_act_rows_body (csrc/cpu/qlinear_impl.h) in the scalar twin */
void lb_ql_act_rows_scalar(int64_t a, int64_t b, void* ctx) { ql_act_rows_body(a, b, ctx); }

const struct lb_ql_kernels lb_ql_kernels_scalar = {lb_ql_gemv_worker_scalar,
                                                   lb_ql_gemm_worker_scalar,
                                                   lb_ql_deqt_worker_scalar,
                                                   lb_ql_int_tiles_scalar,
                                                   lb_ql_act_rows_scalar};


/* ================================ layout: pack / unpack ================================ */
typedef struct {
    const uint8_t* codes;
    uint8_t* out;
    int32_t* packed;
    const int32_t* cpacked;
    int64_t N, K, KB, rb;
    int bits;
} ql_pack_ctx;

/* The canonical word kb*bits + w of a row (bytes past the row read as 0), codes k >= K cleared. */
static uint32_t ql_row_word(const uint8_t* row, int64_t rb, int64_t K, int bits, int64_t kb, int w) {
    const int64_t o = (kb * bits + w) * 4, k0 = kb * 32 + (int64_t)w * (32 / bits);
    uint32_t v = 0;
    for (int i = 0; i < 4 && o + i < rb; ++i) v |= (uint32_t)row[o + i] << (8 * i);
    if (k0 + 32 / bits > K) v &= K <= k0 ? 0u : (1u << ((K - k0) * bits)) - 1u;
    return v;
}

static void ql_pack_tiles(int64_t a, int64_t b, void* ctx) {
    const ql_pack_ctx* p = (const ql_pack_ctx*)ctx;
    const int bits = p->bits;
    for (int64_t nt = a; nt < b; ++nt) {
        uint32_t* T = (uint32_t*)p->packed + nt * p->KB * bits * 16;
        memset(T, 0, (size_t)(p->KB * bits * 16) * sizeof(uint32_t));
        for (int64_t j = 0; j < 16 && nt * 16 + j < p->N; ++j) {
            const uint8_t* row = p->codes + (nt * 16 + j) * p->rb;
            for (int64_t kb = 0; kb < p->KB; ++kb) {
                uint32_t* blk = T + kb * bits * 16;
                if (bits != 3) {
                    for (int w = 0; w < bits; ++w)
                        blk[w * 16 + j] = ql_row_word(row, p->rb, p->K, bits, kb, w);
                    continue;
                }
                for (int64_t kk = 0; kk < 32 && kb * 32 + kk < p->K; ++kk) {
                    const uint32_t code = (uint32_t)lb_get_code(row, kb * 32 + kk, 3);
                    const int w = (int)(kk >> 4), t = (int)(kk & 15);
                    blk[w * 16 + j] |= (code & 3u) << (2 * t);
                    blk[2 * 16 + j] |= (code >> 2) << (8 * (t >> 2) + 4 * w + (t & 3));
                }
            }
        }
    }
}

static void ql_unpack_tiles(int64_t a, int64_t b, void* ctx) {
    const ql_pack_ctx* p = (const ql_pack_ctx*)ctx;
    const int bits = p->bits;
    for (int64_t nt = a; nt < b; ++nt) {
        const uint32_t* T = (const uint32_t*)p->cpacked + nt * p->KB * bits * 16;
        for (int64_t j = 0; j < 16 && nt * 16 + j < p->N; ++j) {
            uint8_t* row = p->out + (nt * 16 + j) * p->rb;
            memset(row, 0, (size_t)p->rb);
            for (int64_t kb = 0; kb < p->KB; ++kb) {
                const uint32_t* blk = T + kb * bits * 16;
                if (bits != 3) {
                    for (int w = 0; w < bits; ++w) {
                        const int64_t o = (kb * bits + w) * 4;
                        for (int i = 0; i < 4 && o + i < p->rb; ++i)
                            row[o + i] = (uint8_t)(blk[w * 16 + j] >> (8 * i));
                    }
                    continue;
                }
                for (int64_t kk = 0; kk < 32 && kb * 32 + kk < p->K; ++kk) {
                    const int w = (int)(kk >> 4), t = (int)(kk & 15);
                    const uint32_t lo = (blk[w * 16 + j] >> (2 * t)) & 3u;
                    const uint32_t hi = (blk[2 * 16 + j] >> (8 * (t >> 2) + 4 * w + (t & 3))) & 1u;
                    lb_put_code(row, kb * 32 + kk, 3, (int)(lo | hi << 2));
                }
            }
        }
    }
}

void lb_ql_pack_cpu(const uint8_t* codes, int64_t N, int64_t K, int bits, int32_t* packed) {
    ql_pack_ctx p = {codes, NULL, packed, NULL, N, K, lb_ql_kblocks(K), lb_row_bytes(K, bits), bits};
    lb_parallel(lb_ql_tiles(N), 4, ql_pack_tiles, &p);
}

void lb_ql_unpack_cpu(const int32_t* packed, int64_t N, int64_t K, int bits, uint8_t* codes) {
    ql_pack_ctx p = {NULL, codes, NULL, packed, N, K, lb_ql_kblocks(K), lb_row_bytes(K, bits), bits};
    lb_parallel(lb_ql_tiles(N), 4, ql_unpack_tiles, &p);
}

/* ================================ tables ================================ */
/* The float decode tables (entries replicated for 2/3-bit codes, see csrc/layouts.h). */
static void ql_tables(ql_ctx* c, const lb_fmt* f) {
    const int mask = f->bits < 4 ? (1 << f->bits) - 1 : 15;
    for (int t = 0; t < 16; ++t) {
        const int code = t & mask;
        const float v = f->nlev == 0 ? (float)code : f->lev[code];
        c->tbl[t] = v;
        c->tblp[t] = v > 0.0f ? v : 0.0f;
        c->tbln[t] = v < 0.0f ? v : 0.0f;
    }
}

/* S such that S * level is an integer for every level (FP4: 12, FP3: 4), or 0 (NF). */
static float ql_exact_level_scale(const lb_fmt* f) {
    static const float cand[] = {4.0f, 12.0f};
    for (int i = 0; i < 2; ++i) {
        int ok = 1;
        for (int k = 0; k < f->nlev; ++k) {
            const float v = cand[i] * f->lev[k];
            ok &= fabsf(v - rintf(v)) < 1e-5f;
        }
        if (ok) return cand[i];
    }
    return 0.0f;
}

int lb_ql_scheme(int act, const lb_fmt* f, int64_t M, int packable) {
    if (!packable || act == LB_ACT_FLOAT) return LB_QS_FLOAT;
    if (act == LB_ACT_INT8) return LB_QS_INT8;
    /* auto past LB_QL_INT_MAX_M rows without vpdpbusd: the two int8 passes (vpmaddubsw +
     * vpmaddwd, 3 instructions per 4-way dot) cost more than the float GEMM's one FMA pass
     * (measured 1.7x slower at M = 256 on AVX2), so batches run the exact float path there */
    if (M > LB_QL_INT_MAX_M && lb_rt.isa != LB_ISA_AVX512VNNI && lb_rt.isa != LB_ISA_AVXVNNI)
        return LB_QS_FLOAT;
    /* auto: an int8 activation plus an int8 quantized residual is within 1e-4 when the weights
     * are exact integers (INT codes, FP levels times S); NF levels are not, so NF runs float */
    if (f->nlev == 0 || ql_exact_level_scale(f) > 0.0f) return LB_QS_INT8X2;
    return LB_QS_FLOAT;
}

int lb_ql_holds(const lb_fmt* f) {
    return f->storage == LB_STORE_CODES && lb_ql_width_ok(f->bits) &&
           (f->nlev == 0 || f->bits <= QL_TABLE_MAX_BITS);
}

/* The integer scheme and byte tables of a level format (QI_LOFF for exact symmetric levels,
 * else QI_PN: positive / negative parts, S = 127 for NF). */
static void ql_int_tables(ql_ctx* c, const lb_fmt* f) {
    float S = ql_exact_level_scale(f);
    c->sch = QI_OFF;
    c->lscale = 1.0f;
    if (f->nlev == 0) return; /* integer codes */
    c->sch = S > 0.0f && f->nscales == 1 ? QI_LOFF : QI_PN;
    if (S == 0.0f) S = 127.0f;
    c->lscale = S;
    for (int t = 0; t < 16; ++t) {
        const float l = t < f->nlev ? f->lev[t] : 0.0f;
        c->lta[t] = (uint8_t)(c->sch == QI_LOFF ? rintf(S * l) + S : rintf(S * (l > 0.0f ? l : 0.0f)));
        c->ltb[t] = (uint8_t)rintf(S * (l < 0.0f ? -l : 0.0f));
    }
}

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
static void ql_init(ql_ctx* c, const lb_fmt* f, int64_t N, int64_t K, int64_t g) {
    memset(c, 0, sizeof *c);
    c->kind = f->kind; c->bits = f->bits; c->f = f;
    /* the float decode kind: integer codes minus a zero point (z, or -qmin for INT sym), else
     * table values with one or two ([s+, s-]) scales */
    c->kd = f->nlev == 0 ? QF_ZP : f->nscales == 2 ? QF_TWO : QF_PLAIN;
    c->N = N; c->K = K; c->g = g; c->G = K / g;
    c->KB = lb_ql_kblocks(K); c->Kp = c->KB * 32; c->NT = lb_ql_tiles(N);
    c->kbpg = c->G == 1 ? c->KB : g / 32;
    ql_tables(c, f);
}

void lb_ql_dequant_t_cpu(const int32_t* packed, const float* scales, const uint8_t* zeros,
                         int64_t N, int64_t K, int64_t g, const lb_fmt* f, int64_t kb0,
                         int64_t kb1, float* wt) {
    ql_ctx c;
    ql_init(&c, f, N, K, g);
    c.P = packed; c.scales = scales; c.zeros = zeros; c.y = wt; c.kb0 = kb0;
    lb_parallel(kb1, 1, lb_rt.ql->deqt, &c); /* [0, kb1): workers skip blocks below kb0 */
}

/* The float GEMM over the rows of x flagged bad (their float copies in xrow, or x itself when
 * xrow is NULL): the exact path. */
static int ql_redo_bad_rows(const ql_ctx* c, const void* x, const float* xrow, const uint8_t* bad) {
    ql_ctx e = *c;
    int64_t nbad = 0;
    float* xb;
    int64_t* map;
    for (int64_t m = 0; m < c->M; ++m) nbad += bad[m];
    if (!nbad) return 0;
    xb = (float*)malloc((size_t)(nbad * c->Kp) * sizeof(float));
    map = (int64_t*)malloc((size_t)nbad * sizeof(int64_t));
    if (!xb || !map) {
        free(xb);
        free(map);
        return -1;
    }
    nbad = 0;
    for (int64_t m = 0; m < c->M; ++m)
        if (bad[m]) {
            float* r = xb + nbad * c->Kp;
            if (xrow) {
                memcpy(r, xrow + m * c->Kp, (size_t)c->Kp * sizeof(float));
            } else {
                lb_load_row(x, c->dt, m * c->K, c->K, 1.0f, r);
                memset(r + c->K, 0, (size_t)(c->Kp - c->K) * sizeof(float));
            }
            map[nbad++] = m;
        }
    e.M = nbad; e.xf = xb; e.ymap = map; e.oom = 0;
    lb_parallel((e.NT + 1) / 2, 1, lb_rt.ql->gemm, &e);
    free(xb);
    free(map);
    return e.oom ? -1 : 0;
}

int lb_ql_forward_cpu(const void* x, int dt, int64_t M, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f, const uint8_t* codes, const float* scales,
                      const uint8_t* zeros, const int32_t* packed, const void* bias, int act,
                      void* y) {
    ql_ctx c;
    ql_act_ctx a;
    const int fast = packed != NULL && lb_ql_packable(K, g) && lb_ql_holds(f);
    const int sch = lb_ql_scheme(act, f, M, fast);
    const int integer = sch != LB_QS_FLOAT, gemv = !integer && fast && M <= 4;
    float *xrow = NULL, *bf = NULL, *xd = NULL, *xz = NULL;
    int8_t* xq = NULL;
    uint8_t* bad = NULL;
    int rc = 0;
    if (M <= 0 || N <= 0) return 0;
    ql_init(&c, f, N, K, g);
    c.M = M; c.dt = dt; c.P = packed; c.codes = codes; c.scales = scales; c.zeros = zeros;
    c.y = y;
    if (integer) {
        ql_int_tables(&c, f);
        c.passes = sch == LB_QS_INT8X2 ? 2 : 1;
        c.V = c.passes * M;
    }
    if (!integer) /* the integer modes read x a row at a time (ql_act_rows_body) */
        xrow = (float*)aligned_alloc(64, (size_t)(((M * c.Kp * (int64_t)sizeof(float)) + 63) / 64 * 64));
    bad = (uint8_t*)calloc((size_t)M, 1);
    bf = bias ? (float*)malloc((size_t)N * sizeof(float)) : NULL;
    if (integer) {
        xq = (int8_t*)aligned_alloc(64, (size_t)((ql_xrows(c.V) * c.Kp + 63) / 64 * 64));
        xd = (float*)malloc((size_t)(ql_xrows(c.V) * c.KB) * sizeof(float));
        xz = (float*)malloc((size_t)(c.V * c.G) * sizeof(float));
    }
    if ((!integer && !xrow) || !bad || (bias && !bf) || (integer && (!xq || !xd || !xz))) {
        rc = -1;
        goto done;
    }
    if (bf)
        for (int64_t n = 0; n < N; ++n) bf[n] = lb_ld1(bias, dt, n);
    c.bias = bf;
    a.c = &c; a.x = x; a.xq = xq; a.xd = xd; a.xz = xz; a.xrow = xrow; a.bad = bad;
    a.integer = integer;
    lb_parallel(M, 1, lb_rt.ql->act_rows, &a); /* integer: rows stay finite copies for the redo below */
    c.xf = xrow;
    if (!fast) {
        lb_parallel(N, K >= 4096 ? 1 : 4096 / K, ql_generic_rows, &c);
    } else if (integer) {
        int64_t grain = 65536 / (16 * c.Kp);
        c.xq = xq; c.xd = xd; c.xz = xz;
        lb_parallel(c.NT, grain > 0 ? grain : 1, lb_rt.ql->int_tiles, &c);
    } else if (gemv) {
        int64_t grain = 65536 / (16 * c.Kp);
        lb_parallel(c.NT, grain > 0 ? grain : 1, lb_rt.ql->gemv, &c);
    } else {
        lb_parallel((c.NT + 1) / 2, 1, lb_rt.ql->gemm, &c);
    }
    if (c.oom) rc = -1;
    if (!rc && fast && (integer || gemv)) {
        /* the rows the integer kernels or the GEMV could not represent (ql_act_rows_body) */
        rc = ql_redo_bad_rows(&c, x, xrow, bad);
    }
done:
    free(xrow); free(bad); free(bf); free(xq); free(xd); free(xz);
    return rc;
}
