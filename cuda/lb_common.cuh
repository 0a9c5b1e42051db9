/* cuda/lb_common.cuh: the CUDA helpers every op family's glue shares (cuda/lb_common.cu): error
 * text, small copies and fills on the current stream. Plain C declarations (the glue is C). */
#ifndef LOWBIT_CUDA_COMMON_CUH
#define LOWBIT_CUDA_COMMON_CUH

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
/* All return 0 or a cudaError_t. */
const char* lb_cuda_error_string(int err);
/* Copies n bytes device->host on stream and waits (for small results such as counters). */
int lb_cuda_memcpy_d2h(void* dst, const void* src, int64_t n, void* stream);
int lb_cuda_memset(void* dst, int value, int64_t n, void* stream);
#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_CUDA_COMMON_CUH */
