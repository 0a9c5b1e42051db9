/* csrc/cpu/qlinear.h: the CPU kernels of the qlinear family (packed low-bit linear layers;
 * csrc/cpu/qlinear.c and its x86 variants under csrc/cpu/arch/x86/). The kernel layout they
 * read (packed + params) is documented, with its sizes, in csrc/layouts.h. */
#ifndef LOWBIT_CPU_QLINEAR_H
#define LOWBIT_CPU_QLINEAR_H

#include "../formats.h"

/* Builds packed/params from the canonical codes (zeros NULL unless INT asym). */
void lb_ql_pack_cpu(const uint8_t* codes, const float* scales, const uint8_t* zeros, int64_t N,
                    int64_t K, int64_t g, const lb_fmt* f, int32_t* packed, float* params);
/* y (M, N) of dtype dt = x (M, K) of dtype dt times W^T (+ bias, dtype dt, or NULL).
 * packed/params may be NULL (then the canonical codes are used). Returns -1 on OOM. */
int lb_ql_forward_cpu(const void* x, int dt, int64_t M, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f, const uint8_t* codes, const float* scales,
                      const uint8_t* zeros, const int32_t* packed, const float* params,
                      const void* bias, void* y);
/* Rows [kb0*32, kb1*32) of W^T as float32 ((kb1-kb0)*32, NT*16) (rows k >= K and columns
 * n >= N are padding) from the packed layout: the input-gradient path (grad_x = grad_y @ W, done
 * in K-chunks so no full float copy of W is ever allocated). Requires lb_ql_packable(K, g). */
void lb_ql_dequant_t_cpu(const int32_t* packed, const float* params, int64_t N, int64_t K,
                         int64_t g, const lb_fmt* f, int64_t kb0, int64_t kb1, float* wt);

#endif /* LOWBIT_CPU_QLINEAR_H */
