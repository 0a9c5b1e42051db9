/* cuda/fake_quant.cuh: the CUDA launchers of the fake_quant family (cuda/fake_quant.cu), the
 * same four kernels as csrc/cpu/fake_quant.h on device pointers and a stream. Plain C
 * declarations; every launcher returns 0 or a cudaError_t. */
#ifndef LOWBIT_CUDA_FAKE_QUANT_CUH
#define LOWBIT_CUDA_FAKE_QUANT_CUH

#include "../csrc/formats.h"

#ifdef __cplusplus
extern "C" {
#endif
int lb_fq_forward_cuda(const void* w, void* out, int dt, int64_t N, int64_t K, int64_t g,
                       const lb_fmt* f, void* stream);
int lb_fq_backward_cuda(const void* grad, const void* w, void* gw, int dt, int64_t N, int64_t K,
                        int64_t g, const lb_fmt* f, void* stream);
/* bad_groups: device int32 counter of groups holding NaN/Inf (caller zeroes it). */
int lb_quantize_cuda(const void* w, int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                     uint8_t* codes, float* scales, uint8_t* zeros, int32_t* bad_groups,
                     void* stream);
int lb_dequantize_cuda(const uint8_t* codes, const float* scales, const uint8_t* zeros, void* out,
                       int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f, void* stream);
#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_CUDA_FAKE_QUANT_CUH */
