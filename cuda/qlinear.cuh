/* cuda/qlinear.cuh: the CUDA launcher of the qlinear family (cuda/qlinear.cu): y = x W^T
 * (+ bias) on the canonical codes. Plain C declaration; returns 0 or a cudaError_t. */
#ifndef LOWBIT_CUDA_QLINEAR_CUH
#define LOWBIT_CUDA_QLINEAR_CUH

#include "../csrc/formats.h"

#ifdef __cplusplus
extern "C" {
#endif
int lb_ql_forward_cuda(const void* x, int dt, int64_t M, int64_t N, int64_t K, int64_t g,
                       const lb_fmt* f, const uint8_t* codes, const float* scales,
                       const uint8_t* zeros, const void* bias, void* y, void* stream);
#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_CUDA_QLINEAR_CUH */
