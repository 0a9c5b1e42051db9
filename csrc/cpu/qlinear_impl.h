/* csrc/cpu/qlinear_impl.h: what csrc/cpu/qlinear.c (entry points, scalar twins, activation
 * quantization) and its x86 variants (csrc/cpu/arch/x86/qlinear_*.c) share: the kernel context,
 * the per-tile group parameters, the output store, and the worker entry points each variant
 * compiles from csrc/cpu/qlinear_body.h (float kernels) and csrc/cpu/qlinear_int_body.h
 * (integer-dot kernels). Internal to the qlinear CPU kernels. */
#ifndef LOWBIT_CPU_QLINEAR_IMPL_H
#define LOWBIT_CPU_QLINEAR_IMPL_H

#include <stdlib.h>
#include <string.h>

#include "lb_cpu.h"
#include "qlinear.h"

/* Which integer scheme a weight's codes take (the "SCH" of qlinear_int_body.h):
 *   QI_OFF   u = code (INT) and W = p0 * (u - p1)          (p1: z, 2^(b-1))
 *   QI_LOFF  u = T[code] (byte table) and W = p0 * (u - p1) (FP sym: T = S*level + S, p1 = S)
 *   QI_PN    uA = TA[code], uB = TB[code], W = p0*uA - p1*uB (positive / negative level parts:
 *            NF and two-scale FP; p0 = s+/S, p1 = s-/S) */
enum { QI_OFF = 0, QI_LOFF = 1, QI_PN = 2 };
/* Float decode kinds of qlinear_body.h ("KD"): plain table value, table value minus the zero
 * point (INT asym), two-scale (positive / negative table parts). */
enum { QF_PLAIN = 0, QF_ZP = 1, QF_TWO = 2 };

typedef struct {
    int kind, bits, kd, dt;
    int64_t M, N, K, Kp, KB, G, g, NT, kbpg, kb0;
    const int32_t* P;         /* packed codes (csrc/layouts.h) */
    const float* scales;      /* canonical (N, G) or (N, G, 2) */
    const uint8_t* zeros;     /* canonical (N, G) or NULL */
    const uint8_t* codes;     /* canonical codes (the path without a packed layout) */
    const lb_fmt* f;
    const float* xf;          /* float kernels: x as float32, (M, Kp), zero padded */
    const float* bias;        /* float32 (N) or NULL */
    const int64_t* ymap;      /* output row of each x row (NULL: the same row) */
    void* y;
    float tbl[16], tblp[16], tbln[16]; /* float decode tables */
    /* integer kernels */
    int sch, passes;          /* QI_*, 1 (int8) or 2 (int8 + int8 residual) */
    int64_t V;                /* virtual rows: passes * M, row p*M + m = pass p of row m */
    const int8_t* xq;         /* int8 activations in step order (layouts.h), by ql_xblock */
    const float* xd;          /* their block scales, by ql_xblock */
    const float* xz;          /* (V, G) sum over the group's blocks of d * sum q (zero points) */
    uint8_t lta[16], ltb[16]; /* byte tables of QI_LOFF / QI_PN */
    float lscale;             /* S: the integer a level of 1 becomes in those tables */
    volatile int oom;
} ql_ctx;

/* The integer activations are stored in chunks of QL_XCHUNK virtual rows, K-block major inside
 * a chunk: block kb of row v is block ql_xblock(v, kb) of xq (32 bytes each) and xd (one float
 * each). A kernel pass over rows v0 .. v0+MB-1 of one chunk then finds every row's activations
 * of a step at constant offsets from one pointer (v * 32 bytes), and every K-block one stride on.
 * QL_XCHUNK is a multiple of every row count a kernel pass takes (1, 2, 3, 4, 6, 8, 12). */
#define QL_XCHUNK 24
LB_INLINE int64_t ql_xblock(int64_t v, int64_t kb, int64_t KB) {
    return ((v / QL_XCHUNK) * KB + kb) * QL_XCHUNK + v % QL_XCHUNK;
}
/* Rows of the xq / xd buffers (V rounded up to whole chunks). */
LB_INLINE int64_t ql_xrows(int64_t V) { return (V + QL_XCHUNK - 1) / QL_XCHUNK * QL_XCHUNK; }

/* tp[(g - g0) * 32 + j] = p0 and tp[(g - g0) * 32 + 16 + j] = p1 of row nt*16 + j, group g, for
 * groups [g0, g1): the float kernels' (integer = 0) or the integer kernels' (integer = 1)
 * parameters, read from the canonical scales / zero points (rows >= N get 0). Shared by every
 * variant (csrc/cpu/qlinear_common.c). */
void lb_ql_tile_params(const ql_ctx* c, int64_t nt, int64_t g0, int64_t g1, int integer,
                       float* tp);

/* y[row, n0 : n0+cnt] = v + bias, rounded to the output dtype, row = ymap[m] (or m). Not
 * inlined: inlined into every kernel instantiation it doubles the compile time of the variants. */
static __attribute__((noinline, unused)) void ql_store(const ql_ctx* c, int64_t m, int64_t n0,
                                                       const float* v, int64_t cnt) {
    const int64_t o = (c->ymap ? c->ymap[m] : m) * c->N + n0;
    float t[32]; /* callers store at most one tile pair (the GEMM's 32) */
    if (c->bias) { /* the bias added, then one rounding (lb_store_row: the dtype branch once) */
        for (int64_t j = 0; j < cnt; ++j) t[j] = v[j] + c->bias[n0 + j];
        v = t;
    }
    lb_store_row(c->y, c->dt, o, cnt, v);
}

/* The family's kernel table (csrc/cpu/lb_cpu.h): the worker entry points (lb_parallel_fn) of one
 * variant; [a, b) are tiles (GEMV and the integer kernels), tile pairs (GEMM) or K-blocks (W^T).
 * The float kernels have a scalar twin (csrc/cpu/qlinear.c), an AVX2 and an AVX-512 variant; the
 * integer kernels a scalar twin and one variant per integer-dot instruction set (AVX2
 * vpmaddubsw, AVX-VNNI, AVX-512BW vpmaddubsw, AVX-512 VNNI), whose tables take the float
 * kernels of their base ISA. Each worker picks its instantiation for the weight's code width and
 * decode kind (QL_FLOAT_SHAPES / QL_INT_SHAPES below), which the format's row gives (ql_init). */
struct lb_ql_kernels {
    lb_parallel_fn gemv;      /* act="float", M <= 4 */
    lb_parallel_fn gemm;      /* the float GEMM (and the exact redo of rows the others skip) */
    lb_parallel_fn deqt;      /* rows of W^T as float32, the input-gradient path */
    lb_parallel_fn int_tiles; /* the integer-dot kernels (act="int8" / "auto") */
    lb_parallel_fn act_rows;  /* rows of x as float32, and their int8 blocks (ql_act_rows_body) */
};
#define QL_DECLARE_WORKERS(isa)                                    \
    void lb_ql_gemv_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_gemm_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_deqt_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_act_rows_##isa(int64_t a, int64_t b, void* ctx);
#if LB_X86
/* the float workers the VNNI tables share with their base ISA */
QL_DECLARE_WORKERS(avx2)
QL_DECLARE_WORKERS(avx512)
#endif
#undef QL_DECLARE_WORKERS

/* ================================ activations ================================ */
#define QL_XMAX 0x1p64f       /* larger |x| takes the exact path (sums may overflow otherwise) */
#define QL_XMIN_INT 0x1p-100f /* integer modes: a smaller nonzero max|x| takes it too */

typedef struct {
    ql_ctx* c;
    const void* x;
    int8_t* xq;
    float *xd, *xz, *xrow; /* xrow: (M, Kp) float copy of every row (float modes), or NULL */
    uint8_t* bad;
    int integer;
} ql_act_ctx;

/* One 32-block of activations in step order (xs, overwritten by the residual when passes = 2):
 * its int8 codes q (FORMATS.md 4: d = max|x| / 127 in float32, q = rne(x / d)), d and sum q per
 * pass. Plain loops over 32 elements that gcc vectorises in each variant (vdivps, vroundps): the
 * operations are exact IEEE ones and the max an integer one, so every variant gives the same
 * bits as the scalar twin. */
LB_INLINE void ql_quant_block(float* xs, int passes, int8_t* q0, int8_t* q1, float* d,
                              int32_t* qs) {
    for (int ps = 0; ps < passes; ++ps) {
        int8_t* q8 = ps ? q1 : q0;
        uint32_t am = 0;
        float dd, qf[32];
        int32_t s = 0;
        for (int i = 0; i < 32; ++i) {
            const uint32_t u = lb_f32_as_u32(xs[i]) & 0x7FFFFFFFu; /* |x|: monotone as bits */
            am = u > am ? u : am;
        }
        dd = lb_u32_as_f32(am) / 127.0f;
        /* a zero block, or one so small that d is subnormal (x / d could then leave int8; the
         * row's max is >= 2^-100, see QL_XMIN_INT, so such a block adds < 2^-20 of it): zeros */
        if (!(dd >= 0x1p-126f)) {
            memset(q8, 0, 32);
            d[ps] = 0.0f;
            qs[ps] = 0;
            continue; /* and so is pass 2's: xs is left as it was */
        }
        for (int i = 0; i < 32; ++i) qf[i] = __builtin_rintf(xs[i] / dd);
        for (int i = 0; i < 32; ++i) {
            q8[i] = (int8_t)(int32_t)qf[i];
            s += (int32_t)qf[i];
        }
        if (passes == 2 && ps == 0)
            for (int i = 0; i < 32; ++i) xs[i] = xs[i] - dd * qf[i];
        d[ps] = dd;
        qs[ps] = s;
    }
}

typedef float ql_v16f __attribute__((vector_size(64)));
typedef int32_t ql_v16i __attribute__((vector_size(64)));

/* Rows [a, b) of x as float32 (zero padded), whether each is representable, and for the integer
 * modes its int8 blocks in step order (csrc/layouts.h lb_ql_step_k), the block scales and per
 * group sum_b d_b * sum q; pass 2 the same of the residual x - d q. Each variant compiles this
 * into its lb_ql_act_rows_<isa>. */
LB_INLINE void ql_act_rows_body(int64_t a, int64_t b, void* ctx) {
    const ql_act_ctx* p = (const ql_act_ctx*)ctx;
    ql_ctx* c = p->c;
    const int64_t K = c->K, Kp = c->Kp, KB = c->KB, M = c->M, G = c->G;
    const int pk = c->bits == 3 ? 2 : c->bits; /* the step order of 3-bit codes is 2-bit's */
    /* xs[j] = x[lb_ql_step_k(bits, j / 4, j % 4)]: a permutation inside each half of 16 (one
     * vpermps each; scattered scalar stores read back as vectors stall store forwarding) */
    const ql_v16i ql_perm4 = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};
    const ql_v16i ql_perm2 = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    /* the integer modes keep no float copy of x (p->xrow NULL): one row at a time, in L1 */
    float* own = p->xrow ? NULL : (float*)aligned_alloc(64, (size_t)Kp * sizeof(float));
    if (!p->xrow && !own) {
        c->oom = 1;
        return;
    }
    for (int64_t m = a; m < b; ++m) {
        float* xr = own ? own : p->xrow + m * Kp;
        uint32_t am = 0, nonfinite = 0;
        lb_load_row(p->x, c->dt, m * K, K, 1.0f, xr);
        for (int64_t k = K; k < Kp; ++k) xr[k] = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
            const uint32_t u = lb_f32_as_u32(xr[k]) & 0x7FFFFFFFu;
            nonfinite |= u >= 0x7F800000u; /* inf and nan */
            am = u > am ? u : am;
        }
        p->bad[m] = nonfinite || lb_u32_as_f32(am) > QL_XMAX ||
                    (p->integer && am != 0 && lb_u32_as_f32(am) < QL_XMIN_INT);
        if (!p->integer) continue;
        if (p->bad[m]) { /* zeros: the exact redo recomputes the row from x */
            for (int ps = 0; ps < c->passes; ++ps) {
                const int64_t v = ps * M + m;
                for (int64_t kb = 0; kb < KB; ++kb) {
                    memset(p->xq + ql_xblock(v, kb, KB) * 32, 0, 32);
                    p->xd[ql_xblock(v, kb, KB)] = 0.0f;
                }
                memset(p->xz + v * G, 0, (size_t)G * sizeof(float));
            }
            continue;
        }
        for (int64_t gi = 0; gi < G; ++gi) {
            const int64_t kbe = G == 1 ? KB : (gi + 1) * c->kbpg;
            float z[2] = {0.0f, 0.0f}; /* summed in block order, in a register */
            for (int64_t kb = G == 1 ? 0 : gi * c->kbpg; kb < kbe; ++kb) {
                float xs[32], d[2];
                int32_t qs[2];
                int8_t* q1 = c->passes == 2 ? p->xq + ql_xblock(M + m, kb, KB) * 32 : NULL;
                ql_v16f lo, hi;
                memcpy(&lo, xr + kb * 32, sizeof lo);
                memcpy(&hi, xr + kb * 32 + 16, sizeof hi);
                if (pk == 4) {
                    lo = __builtin_shuffle(lo, ql_perm4);
                    hi = __builtin_shuffle(hi, ql_perm4);
                } else if (pk == 2) {
                    lo = __builtin_shuffle(lo, ql_perm2);
                    hi = __builtin_shuffle(hi, ql_perm2);
                }
                memcpy(xs, &lo, sizeof lo);
                memcpy(xs + 16, &hi, sizeof hi);
                ql_quant_block(xs, c->passes, p->xq + ql_xblock(m, kb, KB) * 32, q1, d, qs);
                for (int ps = 0; ps < c->passes; ++ps) {
                    p->xd[ql_xblock(ps * M + m, kb, KB)] = d[ps];
                    z[ps] += d[ps] * (float)qs[ps];
                }
            }
            for (int ps = 0; ps < c->passes; ++ps) p->xz[(ps * M + m) * G + gi] = z[ps];
        }
    }
    free(own);
}

/* The instantiations every variant compiles, by shape (not by format): X(BITS, KD) for each code
 * width of the packed layout (csrc/layouts.h LB_QL_WIDTHS) and float decode kind; the table
 * kinds (QF_PLAIN, QF_TWO) read a 16-entry table, so only widths <= 4. A format reaches these
 * through its row (its width and its kind's decode kind, ql_init); lb_ql_holds tells the
 * drivers which weights have an instantiation. */
#define QL_FLOAT_SHAPES(X)                                                                    \
    X(2, QF_ZP) X(3, QF_ZP) X(4, QF_ZP) X(8, QF_ZP) X(2, QF_PLAIN) X(3, QF_PLAIN) X(4, QF_PLAIN) \
    X(2, QF_TWO) X(3, QF_TWO) X(4, QF_TWO)
/* The integer-dot instantiations: X(BITS, SCH) for each width and integer scheme; the byte
 * tables of QI_LOFF and QI_PN (vpshufb) hold 16 entries, so only widths <= 4. */
#define QL_INT_SHAPES(X)                                                                      \
    X(2, QI_OFF) X(3, QI_OFF) X(4, QI_OFF) X(8, QI_OFF) X(2, QI_LOFF) X(3, QI_LOFF)           \
    X(4, QI_LOFF) X(2, QI_PN) X(3, QI_PN) X(4, QI_PN)
/* The widest code a table kind (level decode) has an instantiation for. */
#define QL_TABLE_MAX_BITS 4
/* The GEMM and W^T kernels decode one- and two-scale weights apart (X(BITS, TWO)): every width
 * one-scale (INT's zero point, one-scale levels: p1 = 0), the table widths two-scale. */
#define QL_DEQ_SHAPES(X) X(2, 0) X(3, 0) X(4, 0) X(8, 0) X(2, 1) X(3, 1) X(4, 1)

#endif /* LOWBIT_CPU_QLINEAR_IMPL_H */
