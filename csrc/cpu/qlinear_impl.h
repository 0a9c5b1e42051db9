/* csrc/cpu/qlinear_impl.h: what csrc/cpu/qlinear.c (entry points, scalar twin) and its x86
 * variants (csrc/cpu/arch/x86/qlinear_avx2.c, qlinear_avx512.c) share: the kernel context, the
 * output store, and the worker entry points each variant compiles from csrc/cpu/qlinear_body.h.
 * Internal to the qlinear CPU kernels. */
#ifndef LOWBIT_CPU_QLINEAR_IMPL_H
#define LOWBIT_CPU_QLINEAR_IMPL_H

#include <stdlib.h>
#include <string.h>

#include "lb_cpu.h"
#include "qlinear.h"

typedef struct {
    int kind, bits, two, dt;
    int64_t M, N, K, Kp, KB, G, g, NT, kbpg, kb0;
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

/* y[m, n0 : n0+cnt] = v + bias, rounded to the output dtype. Not inlined (as before the split):
 * inlined into every kernel instantiation it doubles the compile time of the variants. */
static __attribute__((noinline, unused)) void ql_store(const ql_ctx* c, int64_t m, int64_t n0,
                                                       const float* v, int64_t cnt) {
    const int64_t o = m * c->N + n0;
    for (int64_t j = 0; j < cnt; ++j)
        lb_st1(c->y, c->dt, o + j, c->bias ? v[j] + c->bias[n0 + j] : v[j]);
}

/* Worker entry points (lb_parallel_fn) of each variant: [a, b) are tiles (GEMV), tile pairs
 * (GEMM) or K-blocks (W^T). */
#define QL_DECLARE_WORKERS(isa)                                \
    void lb_ql_gemv_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_gemm_worker_##isa(int64_t a, int64_t b, void* ctx); \
    void lb_ql_deqt_worker_##isa(int64_t a, int64_t b, void* ctx);
QL_DECLARE_WORKERS(ref)
#if LB_X86
QL_DECLARE_WORKERS(avx2)
QL_DECLARE_WORKERS(avx512)
#endif
#undef QL_DECLARE_WORKERS

#endif /* LOWBIT_CPU_QLINEAR_IMPL_H */
