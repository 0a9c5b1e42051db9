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
LB_STATIC_ASSERT(LB24_GRAD_X_MAX_M <= LB24_SMALL_M, "the backward-to-x kernels size rows by LB24_SMALL_M");
#ifndef LB24_NB
#define LB24_NB 64       /* output rows per task in the large-M path */
#endif
#ifndef LB24_PF
#define LB24_PF 8192     /* software prefetch distance (bytes) on the kept-value stream, small M */
#endif
#ifndef LB24_QB
#define LB24_QB 16       /* groups (of 4 K-elements) per K-block in the large-M path: 64 K */
#endif
#define LB24_ROWS_SMALL 16 /* output rows per task in the small-M path */

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
} s24_ctx;

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

/* The small-M body over tasks [r0, r1) of LB24_ROWS_SMALL output rows: DOT leaves the M dot
 * products of output row n (kept values v, meta row mrow) in acc. */
#define LB24_SMALL_BODY(DOT)                                                                    \
    s24_ctx* c = (s24_ctx*)ctx;                                                                 \
    const int64_t K = c->K, N = c->N;                                                           \
    const int M = (int)c->M;                                                                    \
    float* buf = NULL;                                                                          \
    int64_t n0 = r0 * LB24_ROWS_SMALL, n1 = r1 * LB24_ROWS_SMALL < N ? r1 * LB24_ROWS_SMALL : N; \
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) {         \
        c->oom = 1;                                                                             \
        return;                                                                                 \
    }                                                                                           \
    for (int64_t n = n0; n < n1; ++n) {                                                         \
        const float* v = row_values(c, n, buf);                                                 \
        const uint8_t* mrow = c->meta + n * c->mbytes;                                          \
        float acc[LB24_SMALL_M] = {0};                                                          \
        DOT;                                                                                    \
        for (int m = 0; m < M; ++m)                                                             \
            lb_st1(c->y, c->ydt, (int64_t)m * N + n, acc[m] + (c->bias ? c->bias[n] : 0.0f));   \
    }                                                                                           \
    free(buf);

/* DOT16(v, mrow, x, K, M, out) with M a constant, so its loops over rows of x unroll. */
#define LB24_SWITCH_M(DOTM, M, ...)                 \
    switch (M) {                                    \
    case 1: DOTM(__VA_ARGS__, 1, acc); break;       \
    case 2: DOTM(__VA_ARGS__, 2, acc); break;       \
    case 3: DOTM(__VA_ARGS__, 3, acc); break;       \
    case 4: DOTM(__VA_ARGS__, 4, acc); break;       \
    case 5: DOTM(__VA_ARGS__, 5, acc); break;       \
    case 6: DOTM(__VA_ARGS__, 6, acc); break;       \
    case 7: DOTM(__VA_ARGS__, 7, acc); break;       \
    default: DOTM(__VA_ARGS__, 8, acc); break;      \
    }

/* The large-M body over chunks [r0, r1) of LB24_NB rows: per (m-block, K-block of QB groups)
 * the working set is the xt tile (4*QB*mblk floats), yt (NB*mblk) and the rows' kept values. */
#define LB24_LARGE_BODY(ROWBLK)                                                                 \
    s24_ctx* c = (s24_ctx*)ctx;                                                                 \
    const int64_t K = c->K, N = c->N, M = c->M, K2 = K / 2, G = K / 4, mblk = c->mblk;           \
    const int64_t n0 = r0 * LB24_NB, n1 = r1 * LB24_NB < N ? r1 * LB24_NB : N;                  \
    const int64_t nmb = (M + mblk - 1) / mblk;                                                  \
    float* vbuf = NULL;                                                                         \
    float* yt = (float*)aligned_alloc(64, (size_t)LB24_NB * (size_t)mblk * sizeof(float));      \
    if (!yt) { c->oom = 1; return; }                                                            \
    if (needs_rowbuf(c) &&                                                                      \
        !(vbuf = (float*)malloc((size_t)LB24_NB * (size_t)K2 * sizeof(float)))) {               \
        free(yt); c->oom = 1; return;                                                           \
    }                                                                                           \
    for (int64_t cb = n0; cb < n1; cb += LB24_NB) {                                             \
        const int64_t ce = cb + LB24_NB < n1 ? cb + LB24_NB : n1;                               \
        const float* vrows[LB24_NB];                                                            \
        for (int64_t n = cb; n < ce; ++n)                                                       \
            vrows[n - cb] = row_values(c, n, vbuf ? vbuf + (n - cb) * K2 : NULL);               \
        for (int64_t mb = 0; mb < nmb; ++mb) {                                                  \
            const int64_t mlen = M - mb * mblk < mblk ? M - mb * mblk : mblk;                   \
            memset(yt, 0, (size_t)LB24_NB * (size_t)mblk * sizeof(float));                      \
            for (int64_t q0 = 0; q0 < G; q0 += LB24_QB) {                                       \
                const int64_t nq = G - q0 < LB24_QB ? G - q0 : LB24_QB;                         \
                const float* xtile = c->xt + mb * K * mblk + 4 * q0 * mblk;                     \
                for (int64_t n = cb; n < ce; ++n) {                                             \
                    float* acc = yt + (n - cb) * mblk;                                          \
                    const float* v = vrows[n - cb] + 2 * q0;                                    \
                    const uint8_t* m = c->meta + n * c->mbytes + q0 / 2;                        \
                    ROWBLK;                                                                     \
                }                                                                               \
            }                                                                                   \
            for (int64_t n = cb; n < ce; ++n) {                                                 \
                const float bn = c->bias ? c->bias[n] : 0.0f;                                   \
                const float* yr = yt + (n - cb) * mblk;                                         \
                for (int64_t i = 0; i < mlen; ++i)                                              \
                    lb_st1(c->y, c->ydt, (mb * mblk + i) * N + n, yr[i] + bn);                     \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    free(vbuf);                                                                                 \
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
#define LB24_GX_BODY(ROW)                                                                      \
    gx_ctx* x = (gx_ctx*)ctx;                                                                  \
    s24_ctx* c = x->c;                                                                         \
    const int64_t K = c->K;                                                                    \
    const int M = (int)c->M;                                                                   \
    float* buf = NULL;                                                                         \
    if (needs_rowbuf(c) && !(buf = (float*)malloc((size_t)(K / 2) * sizeof(float)))) {        \
        c->oom = 1;                                                                            \
        return;                                                                                \
    }                                                                                          \
    for (int64_t p = p0; p < p1; ++p) {                                                        \
        int64_t a, b;                                                                          \
        float* acc = x->part + p * M * K;                                                      \
        gx_part_bounds(x, p, &a, &b);                                                          \
        for (int64_t n = a; n < b; ++n) {                                                      \
            const float* v = row_values(c, n, buf);                                            \
            const uint8_t* mrow = c->meta + n * c->mbytes;                                     \
            ROW;                                                                               \
        }                                                                                      \
    }                                                                                          \
    free(buf);

#endif /* LOWBIT_CPU_SPARSE24_IMPL_H */
