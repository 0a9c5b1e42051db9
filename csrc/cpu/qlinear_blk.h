/* csrc/cpu/qlinear_blk.h: the CPU kernels of the qlinear_blk family: y = x W^T (+ bias) with W
 * stored as llama.cpp's GGUF blocks (the LB_STORE_BLOCKS rows of the format table, FORMATS.md
 * 1.8: q8_0 .. q6_k), read in place (no kernel copy of the weight), in the accuracy modes of
 * FORMATS.md 4. Kernels: csrc/cpu/qlinear_blk.c (driver, activation quantization, scalar twins)
 * and csrc/cpu/arch/x86/qlinear_blk_*.c. */
#ifndef LOWBIT_CPU_QLINEAR_BLK_H
#define LOWBIT_CPU_QLINEAR_BLK_H

#include "../formats.h"

/* y (M, N) of dtype dt = x (M, K) of dtype dt times W^T (+ bias, dtype dt, or NULL), W the
 * blocks (N, K / f->block * f->type_size) of block type f, in mode act (LB_ACT_*). K is a
 * multiple of f->block. Returns -1 on OOM. */
int lb_qlb_forward_cpu(const void* x, int dt, int64_t M, int64_t N, int64_t K, const lb_fmt* f,
                       const uint8_t* blocks, const void* bias, int act, void* y);
/* The scheme act runs for M rows (LB_QS_* of csrc/cpu/qlinear.h): "int8" always the int8
 * activations, "auto" int8 + int8 residual up to LB_QLB_AUTO_INT_MAX_M rows, else float (the
 * faster one there: measured with benchmarks/bench_qlinear.py --ggml, the two passes of
 * integer dots lose to the float kernel from about 4 rows on). */
#define LB_QLB_AUTO_INT_MAX_M 3
int lb_qlb_scheme(int act, int64_t M);

#endif /* LOWBIT_CPU_QLINEAR_BLK_H */
