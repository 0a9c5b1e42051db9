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
 * parameters, read from the canonical scales / zero points (rows >= N get 0). */
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

/* Worker entry points (lb_parallel_fn) of each variant: [a, b) are tiles (GEMV and the integer
 * kernels), tile pairs (GEMM) or K-blocks (W^T). The float kernels have a scalar twin, an AVX2
 * and an AVX-512 variant; the integer kernels a scalar twin and one variant per integer-dot
 * instruction set (AVX2 vpmaddubsw, AVX-VNNI, AVX-512BW vpmaddubsw, AVX-512 VNNI). */
#define QL_DECLARE_WORKERS(isa)                                    \
    void lb_ql_gemv_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_gemm_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_deqt_worker_##isa(int64_t a, int64_t b, void* ctx);
#define QL_DECLARE_INT_WORKER(isa) void lb_ql_int_worker_##isa(int64_t a, int64_t b, void* ctx);
QL_DECLARE_WORKERS(ref)
QL_DECLARE_INT_WORKER(ref)
#if LB_X86
QL_DECLARE_WORKERS(avx2)
QL_DECLARE_WORKERS(avx512)
QL_DECLARE_INT_WORKER(avx2)
QL_DECLARE_INT_WORKER(avxvnni)
QL_DECLARE_INT_WORKER(avx512)
QL_DECLARE_INT_WORKER(avx512vnni)
#endif
#undef QL_DECLARE_WORKERS
#undef QL_DECLARE_INT_WORKER

#endif /* LOWBIT_CPU_QLINEAR_IMPL_H */
