/* cuda/lb_common.cu: the CUDA helpers every op family's glue shares (error text, small copies
 * and fills on the current stream), behind the extern "C" declarations of cuda/lb_common.cuh. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "lb_common.cuh"

extern "C" {

const char* lb_cuda_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }

int lb_cuda_memcpy_d2h(void* dst, const void* src, int64_t n, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    cudaError_t e;
    if (n <= 0) return 0;
    e = cudaMemcpyAsync(dst, src, (size_t)n, cudaMemcpyDeviceToHost, s);
    if (e != cudaSuccess) return (int)e;
    return (int)cudaStreamSynchronize(s);
}

int lb_cuda_memset(void* dst, int value, int64_t n, void* stream) {
    if (n <= 0) return 0;
    return (int)cudaMemsetAsync(dst, value, (size_t)n, (cudaStream_t)stream);
}

} /* extern "C" */
