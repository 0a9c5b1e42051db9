/* csrc/cpu/sparse24.c: CPU kernels of the sparse24 family: y = x @ W^T for a 2:4-compressed W
 * (the lb24 layout of csrc/layouts.h), with float or low-bit kept values; decompress; and
 * the backward to x for small batches.
 *
 * Two forward paths, both split over N on the runtime's thread pool (lb_parallel):
 *   small M (M <= LB24_SMALL_M = 8): for each output row n, walk its kept values and gather x at
 *     k = 4*(j/2) + idx(j). AVX-512: 16 kept values (32 K-elements) per step, the 16 2-bit
 *     indices of one 32-bit meta word expanded with one variable shift and one ternary-logic op
 *     into lane offsets and the x elements picked with vpermt2ps from the two registers of that
 *     x chunk (no memory gathers); AVX2: the same step in two halves of 8, each with two
 *     vpermps and an immediate blend. 4 output rows per step at M = 1 (2 at M = 2): four
 *     weight streams in flight and each x chunk loaded once for them, the next 4 rows
 *     prefetched. The kept values are read in place and widened in registers (bfloat16 /
 *     float16); 4-bit codes are decoded in registers per quant group (AVX-512: a 16-entry table
 *     and vpermps; AVX2: the INT formula, or a table for the level formats); other codes go
 *     through a float32 row buffer. No padding of the batch. Memory-bound at M = 1.
 *   large M: x is transposed once into blocks xt[m-block][k][mblk] (mblk = 16, 32 or 64 rows,
 *     the smallest that holds M, zero-padded past M); for each chunk of NB output rows, each
 *     m-block and each block of 4*QB K-elements (the xt tile stays in L1) every kept value v at
 *     k does acc[0..mblk) += v * xt[k][0..mblk): half the multiply-adds of a dense GEMM, but one
 *     load of x per FMA (rows of W keep different columns, so loads are not shared across rows).
 * The large path (and the scalar twin's small path) expands kept values that are not float32
 * (bf16/f16 weights, or low-bit codes) into a float32 buffer first (per chunk, per row), the
 * low-bit codes through a table per quant group (AVX-512: 4-bit codes with vpermps, 32 a step).
 * Meta is checked where the kernels read it (LB24_CHECK_ROWS; -2 when a row is bad).
 * Inf/NaN in x: both paths read x at kept positions only, so a pass after them sets to NaN
 * the outputs F.linear of the pruned weight makes NaN through a pruned zero (0 * inf), and the
 * backward to x does the same for non-finite gradients (nonfinite_at_pruned below).
 * Every kernel has a scalar twin (vectorisation off; here, with the drivers, in the table
 * lb_s24_kernels_scalar) and AVX2 / AVX-512 variants (csrc/cpu/arch/x86/sparse24_avx2.c,
 * sparse24_avx512.c, one table each; the AVX2 table's backward to x is the scalar body); the
 * drivers run the table in use (lb_rt.s24). Unlike the fake_quant family,
 * results are not bit-identical across variants (the sums run in different orders); each equals
 * the dense product of the pruned weight within float32 rounding (FORMATS.md 3). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sparse24_impl.h"

/* ================= small M: scalar twin ================= */
LB_SCALAR_ATTR static void small_scalar(int64_t r0, int64_t r1, void* ctx) {
    LB24_SMALL_BODY(dot_tail(v, mrow, c->x, K, M, 0, acc))
}

/* ================= large M: scalar twin ================= */
/* One output row n, groups [q0, q1), one m-block: acc[0..MBLK) += v * xt[k][..].
 * xt points at the m-block's tile (row k at xt + k * MBLK). */
LB_SCALAR_ATTR static void rowblk_scalar(float* acc, const float* v, const uint8_t* m, int64_t nq,
                                      const float* xt, int64_t mblk) {
    for (int64_t q = 0; q < nq; ++q) {
        const int b = nib(m, q);
        const float v0 = v[2 * q], v1 = v[2 * q + 1];
        const float* p0 = xt + (4 * q + (b & 3)) * mblk;
        const float* p1 = xt + (4 * q + (b >> 2)) * mblk;
        for (int64_t i = 0; i < mblk; ++i) acc[i] += v0 * p0[i] + v1 * p1[i];
    }
}

LB_SCALAR_ATTR static void large_scalar(int64_t r0, int64_t r1, void* ctx) {
    LB24_LARGE_BODY(rowblk_scalar(acc, v, m, nq, xtile, mblk))
}

/* ================= meta validation ================= */
/* 1 where a nibble's indices i0 = bits 0-1, i1 = bits 2-3 are not strictly increasing. Bytes
 * are OR-ed over the row (gcc vectorises the loop), so the cost is one pass over meta. */
LB_INLINE uint8_t nib_bad(uint8_t b) {
    return (uint8_t)(((b & 3) >= ((b >> 2) & 3)) | (((b >> 4) & 3) >= (b >> 6)));
}

int64_t lb24_meta_bad_row(const uint8_t* meta, int64_t N, int64_t K) {
    const int64_t G = K / LB24_GROUP, MB = lb24_meta_bytes(K), full = G / 2;
    for (int64_t n = 0; n < N; ++n) {
        const uint8_t* row = meta + n * MB;
        uint8_t bad = 0;
        for (int64_t i = 0; i < full; ++i) bad |= nib_bad(row[i]);
        if (G % 2) { /* the last byte holds one group; its high nibble is padding */
            const uint8_t b = row[full];
            bad |= (uint8_t)(((b & 3) >= ((b >> 2) & 3)) | ((b >> 4) != 0));
        }
        if (bad) return n;
    }
    return -1;
}

/* ================= non-finite activations at pruned positions ================= */
/* F.linear of the pruned weight multiplies every x[m, k] by W[n, k], the pruned zeros too, so a
 * non-finite x at a position row n prunes makes output (m, n) NaN (0 * inf, 0 * NaN). The
 * kernels read x at kept positions only and never see it: this pass sets exactly those outputs
 * to NaN. Every other output already equals F.linear's: an inf or NaN at a kept position goes
 * through its product (kept zeros included), a finite x at a pruned position adds an exact 0.
 * Cost: one scan of x; per row holding a non-finite value, a walk of each output row's groups
 * that hold one (stopping at the first pruned hit), at most the kernel's own meta walk. */
typedef struct {
    const s24_ctx* c;
    const void* x;
    int xdt;
    volatile int oom;
} nf_ctx;

/* Bits [0, 4) of a nibble's kept positions. */
LB_INLINE unsigned kept_bits(int b) { return (1u << (b & 3)) | (1u << (b >> 2)); }

static void nf_rows(int64_t m0, int64_t m1, void* ctx) {
    nf_ctx* p = (nf_ctx*)ctx;
    const s24_ctx* c = p->c;
    const int64_t K = c->K, N = c->N, G = K / 4;
    float* xr = (float*)malloc((size_t)K * sizeof(float));
    int64_t* gq = (int64_t*)malloc((size_t)G * sizeof(int64_t));
    uint8_t* gb = (uint8_t*)malloc((size_t)G);
    if (!xr || !gq || !gb) {
        p->oom = 1;
        goto done;
    }
    for (int64_t m = m0; m < m1; ++m) {
        int64_t nq = 0;
        lb_load_row(p->x, p->xdt, m * K, K, 1.0f, xr);
        for (int64_t q = 0; q < G; ++q) {
            unsigned bits = 0;
            for (int i = 0; i < 4; ++i)
                bits |= (unsigned)!(fabsf(xr[4 * q + i]) <= 3.4028235e38f) << i;
            if (bits) {
                gq[nq] = q;
                gb[nq++] = (uint8_t)bits;
            }
        }
        for (int64_t n = 0; nq && n < N; ++n) {
            const uint8_t* mrow = c->meta + n * c->mbytes;
            for (int64_t j = 0; j < nq; ++j)
                if (gb[j] & ~kept_bits(nib(mrow, gq[j]))) {
                    lb_st1(c->y, c->ydt, m * N + n, NAN);
                    break;
                }
        }
    }
done:
    free(xr);
    free(gq);
    free(gb);
}

static int nonfinite_at_pruned(const s24_ctx* c, const void* x, int xdt) {
    nf_ctx p = {c, x, xdt, 0};
    lb_parallel(c->M, 1, nf_rows, &p);
    return p.oom ? -1 : 0;
}

/* ================= drivers ================= */
static int run_linear(s24_ctx* c, const void* x, int xdt, const void* bias) {
    const int64_t M = c->M, K = c->K, N = c->N;
    float* xf = NULL;
    float* bf = NULL;
    int rc = 0;
    if (N == 0) return 0;
    if (M == 0) return lb24_meta_bad_row(c->meta, N, K) >= 0 ? -2 : 0;
    if (bias) {
        if (!(bf = (float*)malloc((size_t)N * sizeof(float)))) return -1;
        lb_load_row(bias, xdt, 0, N, 1.0f, bf);
        c->bias = bf;
    }
    c->mbytes = lb24_meta_bytes(K);
    c->ydt = xdt;
    c->decode4 = lb_rt.s24->decode4;
    if (M <= LB24_SMALL_M) {
        if (xdt == LB_DT_F32) {
            c->x = (const float*)x;
        } else {
            if (!(xf = (float*)malloc((size_t)(M * K) * sizeof(float)))) { rc = -1; goto done; }
            lb_load_row(x, xdt, 0, M * K, 1.0f, xf);
            c->x = xf;
        }
        lb_parallel((N + LB24_ROWS_SMALL - 1) / LB24_ROWS_SMALL, 8, lb_rt.s24->small, c);
    } else {
        /* m-block width: no more zero padding of a short batch than needed, at most the
         * kernel table's widest */
        const int64_t mblk0 = M <= 16 ? 16 : (M <= 32 ? 32 : 64);
        const int64_t mblk = mblk0 < lb_rt.s24->mblk_max ? mblk0 : lb_rt.s24->mblk_max;
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
                        for (int64_t j = 0; j < kl; ++j) t[(k0 + j) * mblk + i] = lb_ld1(x, xdt, o + j);
                    }
                }
            }
        }
        c->xt = xf;
        c->mblk = mblk;
        lb_parallel((N + LB24_NB - 1) / LB24_NB, 1, lb_rt.s24->large, c);
    }
    rc = c->oom || nonfinite_at_pruned(c, x, xdt) ? -1 : c->bad ? -2 : 0;
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

/* ---- backward to x over the compressed weight (see sparse24_impl.h): scalar twin ---- */
LB_SCALAR_ATTR static void gx_scalar(int64_t p0, int64_t p1, void* ctx) {
    LB24_GX_BODY(gx_groups(x, acc, v, mrow, n, 0))
}

const struct lb_s24_kernels lb_s24_kernels_scalar = {small_scalar, large_scalar, gx_scalar, NULL,
                                                     32};

int lb24_grad_x_cpu(const void* g, int gdt, int64_t M, int64_t N, const void* values, int vdt,
                    const uint8_t* meta, int64_t K, void* gx) {
    s24_ctx c;
    gx_ctx x;
    float *gf = NULL, *sum = NULL;
    int rc = 0;
    memset(&c, 0, sizeof c);
    if (M == 0 || K == 0) return 0;
    if (M > LB24_GRAD_X_MAX_M) return -2;
    c.M = M; c.N = N; c.K = K; c.vals = values; c.vdt = vdt; c.meta = meta;
    c.mbytes = lb24_meta_bytes(K);
    x.c = &c;
    x.P = lb_num_threads();
    if (x.P > (N + 255) / 256) x.P = (N + 255) / 256;
    if (x.P < 1) x.P = 1;
    gf = (float*)malloc((size_t)(M * N > 0 ? M * N : 1) * sizeof(float));
    x.part = (float*)calloc((size_t)(x.P * M * K), sizeof(float));
    if (!gf || !x.part) { rc = -1; goto done; }
    lb_load_row(g, gdt, 0, M * N, 1.0f, gf);
    x.g = gf;
    lb_parallel(x.P, 1, lb_rt.s24->gx, &x);
    if (c.oom) { rc = -1; goto done; }
    sum = x.part; /* parts added in order into part 0 */
    for (int64_t p = 1; p < x.P; ++p)
        for (int64_t i = 0; i < M * K; ++i) sum[i] += x.part[p * M * K + i];
    /* as in the forward (nonfinite_at_pruned): g @ W_pruned multiplies a non-finite g[m, n] by
     * the zeros row n prunes, NaN at each of those positions, which the kernels never read */
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            if (fabsf(gf[m * N + n]) <= 3.4028235e38f) continue;
            for (int64_t q = 0; q < K / 4; ++q) {
                const unsigned kept = kept_bits(nib(meta + n * c.mbytes, q));
                for (int i = 0; i < 4; ++i)
                    if (!(kept >> i & 1u)) sum[m * K + 4 * q + i] = NAN;
            }
        }
    for (int64_t i = 0; i < M * K; ++i) lb_st1(gx, gdt, i, sum[i]);
done:
    free(gf);
    free(x.part);
    return rc;
}
