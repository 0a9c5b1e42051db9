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
    const int8_t* xq;         /* (V, KB, 32) int8 activations in step order (layouts.h) */
    const float* xd;          /* (V, KB) their block scales */
    const float* xz;          /* (V, G) sum over the group's blocks of d * sum q (zero points) */
    uint8_t lta[16], ltb[16]; /* byte tables of QI_LOFF / QI_PN */
    float lscale;             /* S: the integer a level of 1 becomes in those tables */
    volatile int oom;
} ql_ctx;

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
    for (int64_t j = 0; j < cnt; ++j)
        lb_st1(c->y, c->dt, o + j, c->bias ? v[j] + c->bias[n0 + j] : v[j]);
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
};
#define QL_DECLARE_WORKERS(isa)                                    \
    void lb_ql_gemv_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_gemm_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_deqt_worker_##isa(int64_t a, int64_t b, void* ctx);
#if LB_X86
/* the float workers the VNNI tables share with their base ISA */
QL_DECLARE_WORKERS(avx2)
QL_DECLARE_WORKERS(avx512)
#endif
#undef QL_DECLARE_WORKERS

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
