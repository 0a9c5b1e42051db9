/* csrc/cpu/sparse24.h: the CPU kernels of the sparse24 family (2:4 structured sparsity on the
 * lb24 layout of csrc/layouts.h; csrc/cpu/sparse24.c and its x86 variants under
 * csrc/cpu/arch/x86/). All return 0, or -1 when scratch memory ran out; the two forward kernels
 * also check meta as they read it and return -2 when a row is bad (lb24_meta_bad_row names it). */
#ifndef LOWBIT_CPU_SPARSE24_H
#define LOWBIT_CPU_SPARSE24_H

#include "../formats.h"

/* x: contiguous (M, K) of dtype xdt; values (N, K/2) of dtype vdt; meta (N, MB); bias NULL or N
 * values of dtype xdt; y: contiguous (M, N) of dtype xdt. */
int lb24_linear_cpu(const void* x, int xdt, int64_t M, int64_t K, const void* values, int vdt,
                    const uint8_t* meta, int64_t N, const void* bias, void* y);
/* Same, the kept values given as packed codes of format f (groups of g kept values). */
int lb24_qlinear_cpu(const void* x, int xdt, int64_t M, int64_t K, const uint8_t* codes,
                     const float* scales, const uint8_t* zeros, const lb_fmt* f, int64_t g,
                     const uint8_t* meta, int64_t N, const void* bias, void* y);
/* gx (M, K) of dtype gdt = g (M, N) @ W_pruned, M <= LB24_GRAD_X_MAX_M (returns -2 above). */
int lb24_grad_x_cpu(const void* g, int gdt, int64_t M, int64_t N, const void* values, int vdt,
                    const uint8_t* meta, int64_t K, void* gx);
/* The first row of meta (N, lb24_meta_bytes(K)) holding an invalid group -- its two 2-bit
 * indices not strictly increasing (a duplicate or out of order: the kernels would disagree on
 * what it means) -- or, for an odd number of groups, a non-zero padding nibble; -1 if none. */
int64_t lb24_meta_bad_row(const uint8_t* meta, int64_t N, int64_t K);
/* Dense (N, K) of dtype vdt from the compressed form (zeros where pruned). */
int lb24_decompress_cpu(const void* values, int vdt, const uint8_t* meta, int64_t N, int64_t K,
                        void* out);

#endif /* LOWBIT_CPU_SPARSE24_H */
