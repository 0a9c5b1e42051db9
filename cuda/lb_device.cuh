/* cuda/lb_device.cuh: device helpers every CUDA kernel file shares: float32 <-> storage dtype
 * (exact up-conversion, round-to-nearest-even down) for float / bf16 / f16 pointers, and the
 * full-warp sum. CUDA only (included by the .cu files, never by the C glue). */
#ifndef LOWBIT_CUDA_DEVICE_CUH
#define LOWBIT_CUDA_DEVICE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define LB_FULL_MASK 0xffffffffu

__device__ __forceinline__ float lb_ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float lb_ld(const __nv_bfloat16* p, int64_t i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ float lb_ld(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void lb_st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void lb_st(__nv_bfloat16* p, int64_t i, float v) {
    p[i] = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void lb_st(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }

/* Butterfly sum over the 32 lanes (all must call); every lane gets the total. */
__device__ __forceinline__ float lb_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(LB_FULL_MASK, v, o);
    return v;
}

#endif /* LOWBIT_CUDA_DEVICE_CUH */
