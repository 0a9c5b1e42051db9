/* csrc/cpu/qlinear.h: the CPU kernels of the qlinear family (packed low-bit linear layers;
 * csrc/cpu/qlinear.c and its x86 variants under csrc/cpu/arch/x86/). The kernel layout of the
 * codes ("packed") is documented, with its sizes, in csrc/layouts.h; scales and zero points are
 * always the canonical tensors (FORMATS.md 1.7). */
#ifndef LOWBIT_CPU_QLINEAR_H
#define LOWBIT_CPU_QLINEAR_H

#include "../formats.h"

/* packed (lb_ql_packed_words(N, K, bits) int32) from the canonical codes (N, lb_row_bytes). */
void lb_ql_pack_cpu(const uint8_t* codes, int64_t N, int64_t K, int bits, int32_t* packed);
/* The canonical codes (N, lb_row_bytes(K, bits)) back from packed: the exact inverse. */
void lb_ql_unpack_cpu(const int32_t* packed, int64_t N, int64_t K, int bits, uint8_t* codes);
/* y (M, N) of dtype dt = x (M, K) of dtype dt times W^T (+ bias, dtype dt, or NULL) in accuracy
 * mode act (LB_ACT_*, FORMATS.md 4). The codes come from packed when it is given (then codes
 * may be NULL; requires lb_ql_packable(K, g)), else from the canonical codes; scales/zeros are
 * the canonical tensors (zeros NULL unless INT asym). Returns -1 on OOM. */
int lb_ql_forward_cpu(const void* x, int dt, int64_t M, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f, const uint8_t* codes, const float* scales,
                      const uint8_t* zeros, const int32_t* packed, const void* bias, int act,
                      void* y);
/* Rows [kb0*32, kb1*32) of W^T as float32 ((kb1-kb0)*32, NT*16) (rows k >= K and columns
 * n >= N are padding) from the packed layout: the input-gradient path (grad_x = grad_y @ W, done
 * in K-chunks so no full float copy of W is ever allocated). Requires lb_ql_packable(K, g). */
void lb_ql_dequant_t_cpu(const int32_t* packed, const float* scales, const uint8_t* zeros,
                         int64_t N, int64_t K, int64_t g, const lb_fmt* f, int64_t kb0,
                         int64_t kb1, float* wt);
/* The integer scheme act resolves to for M rows of a weight of format f (LB_QS_*): what the
 * kernels run, exported so the benchmarks can print it. */
enum { LB_QS_FLOAT = 0, LB_QS_INT8 = 1, LB_QS_INT8X2 = 2 };
int lb_ql_scheme(int act, const lb_fmt* f, int64_t M, int packable);
/* Whether the packed layout holds f's codes and the kernels have its instantiations (a codes
 * format of a width in LB_QL_WIDTHS, level tables of at most 16 entries); the forward runs the
 * other formats on their canonical codes, and pack / W^T refuse them. */
int lb_ql_holds(const lb_fmt* f);

#endif /* LOWBIT_CPU_QLINEAR_H */
