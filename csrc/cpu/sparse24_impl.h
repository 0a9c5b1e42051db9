/* csrc/cpu/sparse24_impl.h: what csrc/cpu/sparse24.c (drivers, scalar twins) and its x86
 * variants (csrc/cpu/arch/x86/sparse24_avx2.c, sparse24_avx512.c) share: the kernel context and
 * tuning constants, the kept-value expansion, the meta decoding, the loop bodies every variant
 * instantiates with its own inner kernel, and the family's kernel table. Internal to the sparse24
 * CPU kernels. */
#ifndef LOWBIT_CPU_SPARSE24_IMPL_H
#define LOWBIT_CPU_SPARSE24_IMPL_H

#include <stdlib.h>
#include <string.h>

#include "lb_cpu.h"
#include "sparse24.h"

#ifndef LB24_SMALL_M
#define LB24_SMALL_M 8   /* M at or below this takes the gather path */
#endif
LB_STATIC_ASSERT(LB24_GRAD_X_MAX_M <= LB24_SMALL_M,
                 "the backward-to-x kernels size rows by LB24_SMALL_M");
#ifndef LB24_NB
#define LB24_NB 64       /* output rows per task in the large-M path */
#endif
#ifndef LB24_QB
#define LB24_QB 16       /* groups (of 4 K-elements) per K-block in the large-M path: 64 K */
#endif
#define LB24_ROWS_SMALL 16 /* output rows per task in the small-M path (a multiple of 4) */

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
    /* the kernel table's 4-bit decode (NULL: the plain loop of row_values) */
    void (*decode4)(const uint8_t* b, int64_t g, const float* lut, float* out);
    volatile int oom;
    volatile int bad;      /* a task met an invalid meta row (checked where the kernel read it) */
} s24_ctx;

/* The kernels check meta as they read it (one pass over memory instead of two): each task
 * checks its own rows once they are done (hot in L1/L2) and flags a bad one; the driver then
 * returns -2 and the glue names the first bad row (lb24_meta_bad_row). The kernels never index
 * outside a group whatever meta holds, so computing before checking is safe. */
#define LB24_CHECK_ROWS(c, n0, n1)                                                       \
    do {                                                                                 \
        if (lb24_meta_bad_row((c)->meta + (n0) * (c)->mbytes, (n1) - (n0), (c)->K) >= 0) \
            (c)->bad = 1;                                                                \
    } while (0)
/* The same with a vector check OK(p, nbytes) (1: every nibble of the bytes is a valid group)
 * over the rows' contiguous meta when the groups fill whole bytes (K % 8 == 0; else a padding
 * nibble ends each row and the scalar check runs). */
#define LB24_CHECK_ROWS_VEC(c, n0, n1, OK)                                         \
    do {                                                                           \
        if ((c)->K % 8)                                                            \
            LB24_CHECK_ROWS(c, n0, n1);                                            \
        else if (!OK((c)->meta + (n0) * (c)->mbytes, ((n1) - (n0)) * (c)->mbytes)) \
            (c)->bad = 1;                                                          \
    } while (0)
/* A nibble (bits 0-1 = i0, bits 2-3 = i1) is valid iff i1 > i0, i.e. iff bit 2 of
 * (i1 | 4) - i0 - 1 (in [0, 6]: no borrow out of the nibble) is set: on whole words,
 * d = (((w >> 2) & 0x33..) | 0x44..) - (w & 0x33..) - 0x11.., every nibble valid iff
 * (~d & 0x44..) == 0. Padding bytes of a vector load are set to 0x44 (two valid groups). */

/* The family's kernel table (csrc/cpu/lb_cpu.h). */
struct lb_s24_kernels {
    lb_parallel_fn small; /* the gather path, tasks of LB24_ROWS_SMALL output rows */
    lb_parallel_fn large; /* the row-block path, tasks of LB24_NB output rows */
    lb_parallel_fn gx;    /* the backward to x, parts of the output rows */
    /* 4-bit codes [0, g) (g even, byte-aligned start) through a 16-entry table, or NULL */
    void (*decode4)(const uint8_t* b, int64_t g, const float* lut, float* out);
    int64_t mblk_max;     /* the widest m-block of the large path (16, 32 or 64 rows) */
};

/* Kept values of row n as float32: a pointer into the weight when it is float32, else expanded
 * into buf (K/2 floats). */
LB_INLINE const float* row_values(const s24_ctx* c, int64_t n, float* buf) {
    const int64_t K2 = c->K / 2;
    if (c->vals) {
        if (c->vdt == LB_DT_F32) return (const float*)c->vals + n * K2;
        lb_load_row(c->vals, c->vdt, n * K2, K2, 1.0f, buf);
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
            const lb_gparams p = lb_load_gparams(f, c->scales, c->zeros, n * G + gi);
            float* out = buf + gi * g;
            if (ncode > g) { /* a table would cost more than it saves */
                for (int64_t i = 0; i < g; ++i)
                    out[i] = lb_decode(f, p, lb_get_code(row, gi * g + i, f->bits));
                continue;
            }
            for (int k = 0; k < ncode; ++k) lut[k] = lb_decode(f, p, k);
            if (f->bits == 4 && ((gi * g) & 1) == 0 && (g & 1) == 0 && c->decode4) {
                for (int k = ncode; k < 16; ++k) lut[k] = 0.0f;
                c->decode4(row + (gi * g) / 2, g, lut, out);
                continue;
            }
            if (f->bits == 4 && ((gi * g) & 1) == 0) {
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

/* Scalar tail of the gather dot: groups [q0, G) of one output row for M (<= 8) rows of x. */
LB_INLINE void dot_tail(const float* v, const uint8_t* mrow, const float* x, int64_t K, int M,
                        int64_t q0, float* acc) {
    for (int64_t q = q0; q < K / 4; ++q) {
        const int b = nib(mrow, q);
        const float v0 = v[2 * q], v1 = v[2 * q + 1];
        const int64_t k0 = 4 * q + (b & 3), k1 = 4 * q + (b >> 2);
        for (int m = 0; m < M; ++m) acc[m] += v0 * x[m * K + k0] + v1 * x[m * K + k1];
    }
}

/* ---- the small-M path of the AVX2 / AVX-512 variants: R output rows per step ----
 * Where the kept values are read from (s24_src): the weight in place (float32, bfloat16 or
 * float16, widened in registers), 4-bit codes decoded in registers through a 16-entry table per
 * quant group (groups of a multiple of 16 kept values: a step of 8 or 16 kept values never
 * straddles two groups and starts on a byte), or else a float32 row buffer (row_values, one row
 * per step). */
enum { S24_F32, S24_BF16, S24_F16, S24_Q4, S24_BUF };

LB_INLINE int s24_src(const s24_ctx* c) {
    if (c->vals) return c->vdt == LB_DT_F32 ? S24_F32 : c->vdt == LB_DT_BF16 ? S24_BF16 : S24_F16;
    return c->f->bits == 4 && c->g % 16 == 0 ? S24_Q4 : S24_BUF;
}

/* Bytes per row of a source (S24_BUF: 0, one row at a time). */
LB_INLINE int64_t s24_row_bytes(const s24_ctx* c, int src) {
    if (src == S24_BUF) return 0;
    if (src == S24_Q4) return c->rb;
    return (c->K / 2) * (src == S24_F32 ? 4 : 2);
}

/* Row n's kept values (or codes) of a source. */
LB_INLINE const char* s24_row(const s24_ctx* c, int src, int64_t n, float* buf) {
    if (src == S24_BUF) return (const char*)row_values(c, n, buf);
    if (src == S24_Q4) return (const char*)(c->codes + n * c->rb);
    return (const char*)c->vals + n * s24_row_bytes(c, src);
}

/* The 16 decoded values of quant group gidx (4-bit codes), the formulas of lb_decode_k with the
 * kind's switch outside the loop (which the variants' compilers vectorise). */
LB_INLINE void s24_lut16(const s24_ctx* c, int64_t gidx, float* lut) {
    const lb_fmt* f = c->f;
    const lb_gparams p = lb_load_gparams(f, c->scales, c->zeros, gidx);
    switch (f->kind) {
    case LB_KIND_INT_ASYM:
        for (int k = 0; k < 16; ++k) lut[k] = ((float)k - p.z) * p.s;
        break;
    case LB_KIND_INT_SYM:
        for (int k = 0; k < 16; ++k) lut[k] = ((float)k + f->qmin) * p.s;
        break;
    case LB_KIND_LVL2:
        for (int k = 0; k < 16; ++k) lut[k] = f->lev[k] * (f->lev[k] >= 0.0f ? p.sp : p.sn);
        break;
    default:
        for (int k = 0; k < 16; ++k) lut[k] = f->lev[k] * p.s;
        break;
    }
}

/* Output rows per step for M rows of x: LB24_R1 = 4 at M = 1 (four weight streams in flight,
 * each chunk of x loaded once for the four), 2 at M = 2, else 1 (M accumulators already); the
 * kernels prefetch LB24_PFD steps of rows ahead. Measured on the dev VM (M = 1, cycled past the
 * LLC, thread CPU time): 4 rows 1.65-1.9x dense fp32, 8 rows and 2 steps ahead no better within
 * the shared machine's noise, no prefetch ~5% slower. */
#ifndef LB24_R1
#define LB24_R1 4
#endif
#ifndef LB24_PFD
#define LB24_PFD 1
#endif
#define LB24_R(M) ((M) == 1 ? LB24_R1 : (M) == 2 ? 2 : 1)
LB_STATIC_ASSERT(LB24_ROWS_SMALL % LB24_R1 == 0 && LB24_R1 >= 2,
                 "a task holds whole steps of rows; no step is wider than LB24_R1 rows");

/* Scalar tail: kept values [j0, K/2) of row n (a float source: the weight, or buf) into acc. */
LB_INLINE void tail_row(const s24_ctx* c, int64_t n, const float* buf, int64_t j0, const float* x,
                        int M, float* acc) {
    const int64_t K = c->K;
    const uint8_t* mrow = c->meta + n * c->mbytes;
    for (int64_t j = j0; j < K / 2; ++j) {
        const int b = nib(mrow, j >> 1);
        const int64_t k = 4 * (j >> 1) + ((j & 1) ? b >> 2 : b & 3);
        const float v = buf ? buf[j] : lb_ld1(c->vals, c->vdt, n * (K / 2) + j);
        for (int m = 0; m < M; ++m) acc[m] += v * x[m * K + k];
    }
}

#define LB24_STORE_ROWS(c, n, R, M, o)                                                          \
    for (int r_ = 0; r_ < (R); ++r_) {                                                          \
        const float b_ = (c)->bias ? (c)->bias[(n) + r_] : 0.0f;                                \
        for (int m_ = 0; m_ < (M); ++m_)                                                        \
            lb_st1((c)->y, (c)->ydt, (int64_t)m_ * (c)->N + (n) + r_, (o)[r_ * (M) + m_] + b_); \
    }

/* Rows [n0, n1) in blocks of LB24_ROWS_SMALL, each in steps of R (then single rows) and then
 * checked (its meta still in L1), M and SRC constants. */
#define LB24_SMALL_TASK_M(ROWS, OK, M, SRC)                                           \
    do {                                                                              \
        const int R_ = (SRC) == S24_BUF ? 1 : LB24_R(M);                              \
        float o_[LB24_R1 * (M)];                                                      \
        for (int64_t b0 = n0; b0 < n1; b0 += LB24_ROWS_SMALL) {                       \
            const int64_t b1 = b0 + LB24_ROWS_SMALL < n1 ? b0 + LB24_ROWS_SMALL : n1; \
            int64_t n = b0;                                                           \
            for (; n + R_ <= b1; n += R_) {                                           \
                ROWS(n, R_, M, SRC, o_);                                              \
                LB24_STORE_ROWS(c, n, R_, M, o_);                                     \
            }                                                                         \
            for (; n < b1; ++n) {                                                     \
                ROWS(n, 1, M, SRC, o_);                                               \
                LB24_STORE_ROWS(c, n, 1, M, o_);                                      \
            }                                                                         \
            LB24_CHECK_ROWS_VEC(c, b0, b1, OK);                                       \
        }                                                                             \
    } while (0)

#define LB24_SMALL_TASK_SRC(ROWS, OK, SRC)               \
    switch ((int)c->M) {                                 \
    case 1: LB24_SMALL_TASK_M(ROWS, OK, 1, SRC); break;  \
    case 2: LB24_SMALL_TASK_M(ROWS, OK, 2, SRC); break;  \
    case 3: LB24_SMALL_TASK_M(ROWS, OK, 3, SRC); break;  \
    case 4: LB24_SMALL_TASK_M(ROWS, OK, 4, SRC); break;  \
    case 5: LB24_SMALL_TASK_M(ROWS, OK, 5, SRC); break;  \
    case 6: LB24_SMALL_TASK_M(ROWS, OK, 6, SRC); break;  \
    case 7: LB24_SMALL_TASK_M(ROWS, OK, 7, SRC); break;  \
    default: LB24_SMALL_TASK_M(ROWS, OK, 8, SRC); break; \
    }

/* The small-M task of the vector variants over tasks [r0, r1): ROWS(n, R, M, SRC, out) leaves
 * the M dot products of output rows n .. n+R-1 in out[r * M + m] (buf: the S24_BUF row); OK
 * is the variant's vector meta check (LB24_CHECK_ROWS_VEC). */
#define LB24_SMALL_TASK(ROWS, OK)                                                        \
    s24_ctx* c = (s24_ctx*)ctx;                                                          \
    const int64_t n0 = r0 * LB24_ROWS_SMALL;                                             \
    const int64_t n1 = r1 * LB24_ROWS_SMALL < c->N ? r1 * LB24_ROWS_SMALL : c->N;        \
    const int src = s24_src(c);                                                          \
    float* buf = NULL;                                                                   \
    if (src == S24_BUF && !(buf = (float*)malloc((size_t)(c->K / 2) * sizeof(float)))) { \
        c->oom = 1;                                                                      \
        return;                                                                          \
    }                                                                                    \
    switch (src) {                                                                       \
    case S24_F32: LB24_SMALL_TASK_SRC(ROWS, OK, S24_F32); break;                         \
    case S24_BF16: LB24_SMALL_TASK_SRC(ROWS, OK, S24_BF16); break;                       \
    case S24_F16: LB24_SMALL_TASK_SRC(ROWS, OK, S24_F16); break;                         \
    case S24_Q4: LB24_SMALL_TASK_SRC(ROWS, OK, S24_Q4); break;                           \
    default: LB24_SMALL_TASK_SRC(ROWS, OK, S24_BUF); break;                              \
    }                                                                                    \
    free(buf);

/* The small-M body over tasks [r0, r1) of LB24_ROWS_SMALL output rows: DOT leaves the M dot
 * products of output row n (kept values v, meta row mrow) in acc. */
#define LB24_SMALL_BODY(DOT)                                                                     \
    s24_ctx* c = (s24_ctx*)ctx;                                                                  \
    const int64_t K = c->K, N = c->N;                                                            \
    const int M = (int)c->M;                                                                     \
    float* buf = NULL;                                                                           \
    int64_t n0 = r0 * LB24_ROWS_SMALL, n1 = r1 * LB24_ROWS_SMALL < N ? r1 * LB24_ROWS_SMALL : N; \
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) {           \
        c->oom = 1;                                                                              \
        return;                                                                                  \
    }                                                                                            \
    for (int64_t n = n0; n < n1; ++n) {                                                          \
        const float* v = row_values(c, n, buf);                                                  \
        const uint8_t* mrow = c->meta + n * c->mbytes;                                           \
        float acc[LB24_SMALL_M] = {0};                                                           \
        DOT;                                                                                     \
        for (int m = 0; m < M; ++m)                                                              \
            lb_st1(c->y, c->ydt, (int64_t)m * N + n, acc[m] + (c->bias ? c->bias[n] : 0.0f));    \
        LB24_CHECK_ROWS(c, n, n + 1);                                                            \
    }                                                                                            \
    free(buf);

/* The large-M body over chunks [r0, r1) of LB24_NB rows: per (m-block, K-block of QB groups)
 * the working set is the xt tile (4*QB*mblk floats), yt (NB*mblk) and the rows' kept values. */
#define LB24_LARGE_BODY(ROWBLK)                                                            \
    s24_ctx* c = (s24_ctx*)ctx;                                                            \
    const int64_t K = c->K, N = c->N, M = c->M, K2 = K / 2, G = K / 4, mblk = c->mblk;     \
    const int64_t n0 = r0 * LB24_NB, n1 = r1 * LB24_NB < N ? r1 * LB24_NB : N;             \
    const int64_t nmb = (M + mblk - 1) / mblk;                                             \
    float* vbuf = NULL;                                                                    \
    float* yt = (float*)aligned_alloc(64, (size_t)LB24_NB * (size_t)mblk * sizeof(float)); \
    if (!yt) { c->oom = 1; return; }                                                       \
    if (needs_rowbuf(c) &&                                                                 \
        !(vbuf = (float*)malloc((size_t)LB24_NB * (size_t)K2 * sizeof(float)))) {          \
        free(yt); c->oom = 1; return;                                                      \
    }                                                                                      \
    for (int64_t cb = n0; cb < n1; cb += LB24_NB) {                                        \
        const int64_t ce = cb + LB24_NB < n1 ? cb + LB24_NB : n1;                          \
        const float* vrows[LB24_NB];                                                       \
        for (int64_t n = cb; n < ce; ++n)                                                  \
            vrows[n - cb] = row_values(c, n, vbuf ? vbuf + (n - cb) * K2 : NULL);          \
        for (int64_t mb = 0; mb < nmb; ++mb) {                                             \
            const int64_t mlen = M - mb * mblk < mblk ? M - mb * mblk : mblk;              \
            memset(yt, 0, (size_t)LB24_NB * (size_t)mblk * sizeof(float));                 \
            for (int64_t q0 = 0; q0 < G; q0 += LB24_QB) {                                  \
                const int64_t nq = G - q0 < LB24_QB ? G - q0 : LB24_QB;                    \
                const float* xtile = c->xt + mb * K * mblk + 4 * q0 * mblk;                \
                for (int64_t n = cb; n < ce; ++n) {                                        \
                    float* acc = yt + (n - cb) * mblk;                                     \
                    const float* v = vrows[n - cb] + 2 * q0;                               \
                    const uint8_t* m = c->meta + n * c->mbytes + q0 / 2;                   \
                    ROWBLK;                                                                \
                }                                                                          \
            }                                                                              \
            for (int64_t n = cb; n < ce; ++n) {                                            \
                const float bn = c->bias ? c->bias[n] : 0.0f;                              \
                const float* yr = yt + (n - cb) * mblk;                                    \
                for (int64_t i = 0; i < mlen; ++i)                                         \
                    lb_st1(c->y, c->ydt, (mb * mblk + i) * N + n, yr[i] + bn);             \
            }                                                                              \
        }                                                                                  \
        LB24_CHECK_ROWS(c, cb, ce);                                                        \
    }                                                                                      \
    free(vbuf);                                                                            \
    free(yt);

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

/* meta byte -> bits of the kept positions of its 2 groups (csrc/cpu/sparse24_common.c) */
extern const uint8_t lb24_kept_mask8[256];

LB_INLINE void gx_part_bounds(const gx_ctx* x, int64_t p, int64_t* a, int64_t* b) {
    *a = x->c->N * p / x->P;
    *b = x->c->N * (p + 1) / x->P;
}

/* Groups [q0, G) of output row n into its part: acc[m, k] += g[m, n] * v (scalar). */
LB_INLINE void gx_groups(const gx_ctx* x, float* acc, const float* v, const uint8_t* mrow,
                         int64_t n, int64_t q0) {
    const s24_ctx* c = x->c;
    const int64_t K = c->K, N = c->N, G = K / 4;
    const int M = (int)c->M;
    for (int64_t q = q0; q < G; ++q) {
        const int bb = nib(mrow, q);
        for (int m = 0; m < M; ++m) {
            const float gm = x->g[m * N + n];
            acc[m * K + 4 * q + (bb & 3)] += gm * v[2 * q];
            acc[m * K + 4 * q + (bb >> 2)] += gm * v[2 * q + 1];
        }
    }
}

/* The backward-to-x body over parts [p0, p1): ROW adds output row n (v, mrow) into acc. */
#define LB24_GX_BODY(ROW)                                                              \
    gx_ctx* x = (gx_ctx*)ctx;                                                          \
    s24_ctx* c = x->c;                                                                 \
    const int64_t K = c->K;                                                            \
    const int M = (int)c->M;                                                           \
    float* buf = NULL;                                                                 \
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) { \
        c->oom = 1;                                                                    \
        return;                                                                        \
    }                                                                                  \
    for (int64_t p = p0; p < p1; ++p) {                                                \
        int64_t a, b;                                                                  \
        float* acc = x->part + p * M * K;                                              \
        gx_part_bounds(x, p, &a, &b);                                                  \
        for (int64_t n = a; n < b; ++n) {                                              \
            const float* v = row_values(c, n, buf);                                    \
            const uint8_t* mrow = c->meta + n * c->mbytes;                             \
            ROW;                                                                       \
        }                                                                              \
    }                                                                                  \
    free(buf);

#endif /* LOWBIT_CPU_SPARSE24_IMPL_H */
