/* cuda/qlinear.cuh: the CUDA launchers of the qlinear family (cuda/qlinear.cu): y = x W^T
 * (+ bias) on the canonical codes, and on the GGUF blocks of llama.cpp's block types. Plain C
 * declarations; each returns 0 or a cudaError_t. */
#ifndef LOWBIT_CUDA_QLINEAR_CUH
#define LOWBIT_CUDA_QLINEAR_CUH

#include "../csrc/formats.h"

#ifdef __cplusplus
extern "C" {
#endif
int lb_ql_forward_cuda(const void* x, int dt, int64_t M, int64_t N, int64_t K, int64_t g,
                       const lb_fmt* f, const uint8_t* codes, const float* scales,
                       const uint8_t* zeros, const void* bias, void* y, void* stream);
/* The block types (f->storage == LB_STORE_BLOCKS, FORMATS.md 1.8): blocks is the QuantizedWeight's
 * codes, uint8 (N, K / f->block * f->type_size), the GGUF blocks holding their own fp16 scales
 * (no scales / zeros tensors); K a multiple of f->block. act (LB_ACT_*): LB_ACT_INT8 with
 * M <= 16 runs FORMATS.md 4's int8 mode, every other case float32 products (tensor cores for
 * 16-bit x at M > 16, as lb_ql_forward_cuda). x, bias, y of dtype dt (LB_DT_*); bias may be
 * NULL. */
int lb_ql_forward_blk_cuda(const void* x, int dt, int64_t M, int64_t N, int64_t K,
                           const lb_fmt* f, const uint8_t* blocks, const void* bias, int act,
                           void* y, void* stream);
#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_CUDA_QLINEAR_CUH */
