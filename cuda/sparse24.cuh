/* cuda/sparse24.cuh: the CUDA launchers of the sparse24 family (cuda/sparse24.cu): lowbit's own
 * kernels on the lb24 layout (csrc/layouts.h) and the dlopen'ed cuSPARSELt path. Plain C
 * declarations; they return 0 or a cudaError_t, or for the cuSPARSELt entry points -1 with a
 * message in err (LB_CUDA_ERR_LEN bytes). */
#ifndef LOWBIT_CUDA_SPARSE24_CUH
#define LOWBIT_CUDA_SPARSE24_CUH

#include "../csrc/formats.h"

#define LB_CUDA_ERR_LEN 512 /* == LB_ERR_LEN of the glue */

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
/* y (M, N) = x (M, K) @ W^T (+ bias, N values of dt, or NULL); meta: W's lb24 meta (N,
 * lb24_meta_bytes(K)) on the device, for the outputs a NaN/inf x at a pruned position makes NaN
 * (cuSPARSELt reads x at kept positions only). */
int lb24_cslt_linear(int device, int dt, int64_t M, int64_t N, int64_t K, const void* x,
                     const void* packed, const uint8_t* meta, const void* bias, void* y,
                     void* stream, char* err);
#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_CUDA_SPARSE24_CUH */
