/* csrc/ops/sparse24.h: kernel entry points of the sparse24 family (2:4 structured sparsity,
 * FORMATS.md section 3), shared by its glue (csrc/ops/sparse24.c), CPU kernels
 * (csrc/cpu/sparse24.c) and CUDA launchers (cuda/sparse24.cu).
 *
 * lowbit's compressed 2:4 layout (the "lb24" layout) of a pruned W (N, K), K % 4 == 0:
 *   groups   : G = K / 4 runs of 4 consecutive elements along K; group q covers k = 4q .. 4q+3.
 *   values   : (N, K/2) in W's dtype; row n holds the 2 kept values of group q at [2q] and
 *              [2q+1], the lower in-group index first (so values are "in order" along K).
 *   meta     : uint8 (N, MB) with MB = ceil(G / 2) = lb24_meta_bytes(K). Each group has one
 *              nibble: bits 0-1 = in-group index i0 of value [2q], bits 2-3 = index i1 of
 *              value [2q+1], i0 < i1. Group q sits in byte q / 2, low nibble for even q, high
 *              nibble for odd q (a trailing odd group leaves the high nibble zero).
 *              Equivalently, kept value j of a row (j = 2q + s) has its 2-bit index at bit
 *              offset 2*j of the row's little-endian bitstream, so a 32-bit load at byte 4t
 *              gives the 16 indices of kept values 16t .. 16t+15 (lane l at bits 2l, 2l+1).
 *   The element kept as value j sits at k = 4 * (j / 2) + idx(j).
 * 2:4 + low bits: the kept values (N, K/2) are quantized with a QuantSpec exactly as
 *   lowbit.quantize packs any (N, K/2) weight (formats.h bitstream, groups of g kept values);
 *   meta is unchanged. int4 g128 (asymmetric): per 256 original weights, 128 4-bit codes +
 *   a float32 scale + a uint8 zero point, and 256 2-bit indices: 2 + 1 + 40/256 = 3.16 bits. */
#ifndef LOWBIT_OPS_SPARSE24_H
#define LOWBIT_OPS_SPARSE24_H

#include "../lb_ops.h"

LB_HD int64_t lb24_meta_bytes(int64_t K) { return (K / 4 + 1) / 2; }

/* ---- CPU kernels (csrc/cpu/sparse24.c). Return 0, or -1 when scratch memory ran out. ----
 * x: contiguous (M, K) of dtype xdt; values (N, K/2) of dtype vdt; meta (N, MB); bias NULL or N
 * values of dtype xdt; y: contiguous (M, N) of dtype xdt. */
int lb24_linear_cpu(const void* x, int xdt, int64_t M, int64_t K, const void* values, int vdt,
                    const uint8_t* meta, int64_t N, const void* bias, void* y);
/* Same, the kept values given as packed codes of format f (groups of g kept values). */
int lb24_qlinear_cpu(const void* x, int xdt, int64_t M, int64_t K, const uint8_t* codes,
                     const float* scales, const uint8_t* zeros, const lb_fmt* f, int64_t g,
                     const uint8_t* meta, int64_t N, const void* bias, void* y);
/* gx (M, K) of dtype gdt = g (M, N) @ W_pruned, M <= 8 (returns -2 above). */
int lb24_grad_x_cpu(const void* g, int gdt, int64_t M, int64_t N, const void* values, int vdt,
                    const uint8_t* meta, int64_t K, void* gx);
/* Dense (N, K) of dtype vdt from the compressed form (zeros where pruned). */
int lb24_decompress_cpu(const void* values, int vdt, const uint8_t* meta, int64_t N, int64_t K,
                        void* out);

/* ---- CUDA launchers (cuda/sparse24.cu); return 0 or a cudaError_t, or for the cuSPARSELt
 * entry points -1 with a message in err (LB_ERR_LEN bytes). ---- */
#ifdef LOWBIT_WITH_CUDA
#ifdef __cplusplus
extern "C" {
#endif
int lb24_decompress_cuda(const void* values, int vdt, const uint8_t* meta, int64_t N, int64_t K,
                         void* out, void* stream);
/* lowbit's own gather kernel (any dtype, any M): one warp per (row n, 4 rows of x). */
int lb24_linear_cuda(const void* x, int dt, int64_t M, int64_t K, const void* values,
                     const uint8_t* meta, int64_t N, const void* bias, void* y, void* stream);
/* cuSPARSELt (loaded with dlopen on first use). dt: LB_DT_F16 or LB_DT_BF16. dense: the pruned
 * (N, K) weight, row-major. Sizes in bytes of the compressed weight and of compress scratch. */
int lb24_cslt_compressed_size(int device, int dt, int64_t N, int64_t K, int64_t* size,
                              int64_t* scratch, char* err);
int lb24_cslt_compress(int device, int dt, int64_t N, int64_t K, const void* dense,
                       void* packed, void* scratch, void* stream, char* err);
/* y (M, N) = x (M, K) @ W^T (+ bias, N values of dt, or NULL). */
int lb24_cslt_linear(int device, int dt, int64_t M, int64_t N, int64_t K, const void* x,
                     const void* packed, const void* bias, void* y, void* stream, char* err);
#ifdef __cplusplus
}
#endif
#endif

#endif /* LOWBIT_OPS_SPARSE24_H */
