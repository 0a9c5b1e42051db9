/* cuda/sparse24.cu: CUDA side of the sparse24 family (2:4 structured sparsity).
 *
 *   lb24_decompress_cuda   one thread per group of 4: the lb24 layout (csrc/layouts.h) to
 *                          a dense (N, K) weight.
 *   lb24_linear_cuda       lowbit's own gather kernel on the lb24 layout, any dtype and shape:
 *                          one warp per (output row n, up to 4 rows of x); lanes stride over the
 *                          groups, gather x at 4q + idx, accumulate in float32, warp-reduce.
 *                          Correct and simple (no tensor cores); it serves float32, shapes
 *                          cuSPARSELt does not take, and small M, where it pads nothing.
 *   s24_nonfinite_kernel   after the gather kernel and after cuSPARSELt (both read x at kept
 *                          positions only): F.linear of the pruned weight multiplies a
 *                          non-finite x at a pruned position by 0, a NaN output; this pass sets
 *                          those outputs (same rule as csrc/cpu/sparse24.c nonfinite_at_pruned).
 *                          One read of x; rows holding a non-finite value also walk the meta.
 *   lb24_cslt_*            cuSPARSELt for float16/bfloat16 on sparse tensor cores. The library
 *                          is NOT linked: it is loaded with dlopen on first use from
 *                          $LOWBIT_CUSPARSELT_LIB (python/lowbit/sparse/cusparselt.py points it
 *                          at the nvidia-cusparselt-cu13 wheel's lib/ when that is installed),
 *                          else from the system search path (libcusparseLt.so.0). The few
 *                          types and functions used are declared below from cusparseLt.h
 *                          (0.8-0.10).
 *
 * cuSPARSELt problem layout: y (M, N) = x (M, K) @ W^T with everything column-major, so no
 * transposes are materialised:
 *   A = W stored as a column-major (K, N) matrix, ld K (the same bytes as row-major (N, K)),
 *       structured 50%, opA = TRANSPOSE, so op(A) = W (N, K), 2:4 along K;
 *   B = x as a column-major (K, M) matrix, ld K, opB = NON_TRANSPOSE;
 *   C = D = y as a column-major (N, M) matrix, ld N (the bytes of row-major (M, N));
 *   bias (N values, per row of D) through CUSPARSELT_MATMUL_BIAS_POINTER; compute 32F.
 * The compressed weight depends only on A's descriptor (cusparseLtSpMMACompress2), so it is made
 * once per weight; the matmul plan is initialised per call (no cache: tens of microseconds). */
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_device.cuh"
#include "sparse24.cuh"

#define S24_THREADS 256
#define S24_WARPS (S24_THREADS / 32)
#define S24_ROWS_X 4 /* rows of x per warp in the gather kernel */

/* ---- decompress: thread per group ---- */
template <typename T>
__global__ void s24_decompress_kernel(const T* __restrict__ v, const uint8_t* __restrict__ meta,
                                      T* __restrict__ out, int64_t N, int64_t K) {
    const int64_t G = K / 4, MB = lb24_meta_bytes(K), total = N * G;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t n = t / G, q = t % G;
        const int b = (meta[n * MB + (q >> 1)] >> ((q & 1) << 2)) & 15;
        T* o = out + n * K + 4 * q;
        const T zero = T(0.0f);
        o[0] = zero; o[1] = zero; o[2] = zero; o[3] = zero;
        o[b & 3] = v[n * (K / 2) + 2 * q];
        o[b >> 2] = v[n * (K / 2) + 2 * q + 1];
    }
}

/* ---- gather linear: warp per (row n, S24_ROWS_X rows of x) ---- */
template <typename T>
__global__ void s24_linear_kernel(const T* __restrict__ x, const T* __restrict__ v,
                                  const uint8_t* __restrict__ meta, const T* __restrict__ bias,
                                  T* __restrict__ y, int64_t M, int64_t N, int64_t K) {
    const int lane = threadIdx.x & 31;
    const int64_t n = (int64_t)blockIdx.x * S24_WARPS + (threadIdx.x >> 5);
    const int64_t m0 = (int64_t)blockIdx.y * S24_ROWS_X;
    if (n >= N) return; /* warp-uniform */
    const int64_t G = K / 4, MB = lb24_meta_bytes(K);
    float acc[S24_ROWS_X] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t q = lane; q < G; q += 32) {
        const int b = (meta[n * MB + (q >> 1)] >> ((q & 1) << 2)) & 15;
        const float v0 = lb_ld(v, n * (K / 2) + 2 * q), v1 = lb_ld(v, n * (K / 2) + 2 * q + 1);
        const int64_t k0 = 4 * q + (b & 3), k1 = 4 * q + (b >> 2);
#pragma unroll
        for (int r = 0; r < S24_ROWS_X; ++r) {
            const int64_t m = m0 + r;
            if (m < M) acc[r] += v0 * lb_ld(x, m * K + k0) + v1 * lb_ld(x, m * K + k1);
        }
    }
#pragma unroll
    for (int r = 0; r < S24_ROWS_X; ++r) {
        const float a = lb_warp_sum(acc[r]);
        const int64_t m = m0 + r;
        if (lane == 0 && m < M) lb_st(y, m * N + n, a + (bias ? lb_ld(bias, n) : 0.0f));
    }
}

/* ---- non-finite x at pruned positions: block per row of x (grid-stride), then for a row
 * holding one, warp per output row n ---- */
#define S24_NF_GRID 4096
template <typename T>
__global__ void s24_nonfinite_kernel(const T* __restrict__ x, const uint8_t* __restrict__ meta,
                                     T* __restrict__ y, int64_t M, int64_t N, int64_t K) {
    const int lane = threadIdx.x & 31;
    const int64_t G = K / 4, MB = lb24_meta_bytes(K);
    for (int64_t m = blockIdx.x; m < M; m += gridDim.x) { /* block-uniform */
        int bad = 0;
        for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
            bad |= !(fabsf(lb_ld(x, m * K + k)) <= 3.4028235e38f);
        if (!__syncthreads_or(bad)) continue;
        for (int64_t n = threadIdx.x >> 5; n < N; n += blockDim.x >> 5) { /* warp-uniform */
            int hit = 0;
            for (int64_t q = lane; q < G && !hit; q += 32) {
                const int b = (meta[n * MB + (q >> 1)] >> ((q & 1) << 2)) & 15;
                const unsigned kept = (1u << (b & 3)) | (1u << (b >> 2));
                for (int i = 0; i < 4; ++i)
                    hit |= !(kept >> i & 1u) &&
                           !(fabsf(lb_ld(x, m * K + 4 * q + i)) <= 3.4028235e38f);
            }
            if (__any_sync(LB_FULL_MASK, hit) && lane == 0)
                lb_st(y, m * N + n, __int_as_float(0x7fc00000));
        }
    }
}

static void s24_nonfinite(int dt, const void* x, const uint8_t* meta, void* y, int64_t M,
                          int64_t N, int64_t K, cudaStream_t s) {
    const unsigned grid = (unsigned)(M < S24_NF_GRID ? M : S24_NF_GRID);
    switch (dt) {
    case LB_DT_F32:
        s24_nonfinite_kernel<float><<<grid, S24_THREADS, 0, s>>>((const float*)x, meta,
                                                                 (float*)y, M, N, K);
        break;
    case LB_DT_BF16:
        s24_nonfinite_kernel<__nv_bfloat16><<<grid, S24_THREADS, 0, s>>>(
            (const __nv_bfloat16*)x, meta, (__nv_bfloat16*)y, M, N, K);
        break;
    default:
        s24_nonfinite_kernel<__half><<<grid, S24_THREADS, 0, s>>>((const __half*)x, meta,
                                                                  (__half*)y, M, N, K);
        break;
    }
}

static int s24_grid(int64_t work) {
    int64_t b = (work + S24_THREADS - 1) / S24_THREADS;
    return (int)(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

/* ---- cuSPARSELt, declared here (from cusparseLt.h) and resolved with dlsym ---- */
typedef struct { alignas(16) uint8_t data[512]; } cslt_handle_t;
typedef struct { alignas(16) uint8_t data[512]; } cslt_mat_t;
typedef struct { alignas(16) uint8_t data[512]; } cslt_matmul_t;
typedef struct { alignas(16) uint8_t data[512]; } cslt_alg_t;
typedef struct { alignas(16) uint8_t data[512]; } cslt_plan_t;
typedef int cslt_status;                            /* cusparseStatus_t, 0 = success */
enum { CSLT_ORDER_COL = 1 };                        /* cusparseOrder_t CUSPARSE_ORDER_COL */
enum { CSLT_OP_N = 0, CSLT_OP_T = 1 };              /* cusparseOperation_t */
enum { CSLT_SPARSITY_50 = 0 };                      /* CUSPARSELT_SPARSITY_50_PERCENT */
enum { CSLT_COMPUTE_32F = 2 };                      /* CUSPARSE_COMPUTE_32F (cusparseLt.h order) */
enum { CSLT_MATMUL_BIAS_POINTER = 8 };              /* cusparseLtMatmulDescAttribute_t */
enum { CSLT_ALG_DEFAULT = 0 };
enum { CSLT_R_16F = 2, CSLT_R_16BF = 14 };          /* cudaDataType CUDA_R_16F, CUDA_R_16BF */

#define CSLT_FUNCS(X)                                                                           \
    X(cusparseLtInit, cslt_status, (cslt_handle_t*))                                            \
    X(cusparseLtDenseDescriptorInit, cslt_status,                                               \
      (const cslt_handle_t*, cslt_mat_t*, int64_t, int64_t, int64_t, uint32_t, int, int))       \
    X(cusparseLtStructuredDescriptorInit, cslt_status,                                          \
      (const cslt_handle_t*, cslt_mat_t*, int64_t, int64_t, int64_t, uint32_t, int, int, int))  \
    X(cusparseLtMatDescriptorDestroy, cslt_status, (const cslt_mat_t*))                         \
    X(cusparseLtMatmulDescriptorInit, cslt_status,                                              \
      (const cslt_handle_t*, cslt_matmul_t*, int, int, const cslt_mat_t*, const cslt_mat_t*,    \
       const cslt_mat_t*, const cslt_mat_t*, int))                                              \
    X(cusparseLtMatmulDescSetAttribute, cslt_status,                                            \
      (const cslt_handle_t*, cslt_matmul_t*, int, const void*, size_t))                        \
    X(cusparseLtMatmulAlgSelectionInit, cslt_status,                                            \
      (const cslt_handle_t*, cslt_alg_t*, const cslt_matmul_t*, int))                           \
    X(cusparseLtMatmulAlgSelectionDestroy, cslt_status, (const cslt_alg_t*))                    \
    X(cusparseLtMatmulPlanInit, cslt_status,                                                    \
      (const cslt_handle_t*, cslt_plan_t*, const cslt_matmul_t*, const cslt_alg_t*))            \
    X(cusparseLtMatmulPlanDestroy, cslt_status, (const cslt_plan_t*))                           \
    X(cusparseLtMatmulGetWorkspace, cslt_status,                                                \
      (const cslt_handle_t*, const cslt_plan_t*, size_t*))                                      \
    X(cusparseLtMatmul, cslt_status,                                                            \
      (const cslt_handle_t*, const cslt_plan_t*, const void*, const void*, const void*,         \
       const void*, const void*, void*, void*, cudaStream_t*, int32_t))                         \
    X(cusparseLtSpMMACompressedSize2, cslt_status,                                              \
      (const cslt_handle_t*, const cslt_mat_t*, size_t*, size_t*))                              \
    X(cusparseLtSpMMACompress2, cslt_status,                                                    \
      (const cslt_handle_t*, const cslt_mat_t*, int, int, const void*, void*, void*,           \
       cudaStream_t))

static struct {
#define CSLT_FIELD(name, ret, params) ret(*name) params;
    CSLT_FUNCS(CSLT_FIELD)
#undef CSLT_FIELD
    const char* (*cusparseLtGetErrorString)(cslt_status); /* optional */
    int loaded;           /* 1 ok, -1 failed */
    char why[400];
} cslt;

#define CSLT_MAX_DEV 64
static cslt_handle_t cslt_handles[CSLT_MAX_DEV];
static int cslt_handle_ok[CSLT_MAX_DEV];
static pthread_mutex_t cslt_lock = PTHREAD_MUTEX_INITIALIZER;

/* Loads the library once; 0 or -1 with err. Caller holds cslt_lock. */
static int cslt_load(char* err) {
    if (cslt.loaded == 0) {
        const char* cands[3] = {getenv("LOWBIT_CUSPARSELT_LIB"), "libcusparseLt.so.0",
                                "libcusparseLt.so"};
        void* h = NULL;
        char last[256] = "not found";
        for (int i = 0; i < 3 && !h; ++i) {
            if (!cands[i] || !cands[i][0]) continue;
            h = dlopen(cands[i], RTLD_NOW | RTLD_LOCAL);
            if (!h) snprintf(last, sizeof last, "%s", dlerror());
        }
        cslt.loaded = -1;
        if (!h) {
            snprintf(cslt.why, sizeof cslt.why,
                     "cuSPARSELt (libcusparseLt.so.0) could not be loaded (%s); install the "
                     "nvidia-cusparselt-cu13 wheel or set LOWBIT_CUSPARSELT_LIB",
                     last);
        } else {
            cslt.loaded = 1;
#define CSLT_RESOLVE(name, ret, params)                                                        \
    if (cslt.loaded == 1 && !(*(void**)(&cslt.name) = dlsym(h, #name))) {                      \
        snprintf(cslt.why, sizeof cslt.why, "cuSPARSELt: libcusparseLt lacks %s", #name);      \
        cslt.loaded = -1;                                                                      \
    }
            CSLT_FUNCS(CSLT_RESOLVE)
#undef CSLT_RESOLVE
            *(void**)(&cslt.cusparseLtGetErrorString) = dlsym(h, "cusparseLtGetErrorString");
        }
    }
    if (cslt.loaded < 0) {
        snprintf(err, LB_CUDA_ERR_LEN, "%s", cslt.why);
        return -1;
    }
    return 0;
}

static const char* cslt_errstr(cslt_status st) {
    return cslt.cusparseLtGetErrorString ? cslt.cusparseLtGetErrorString(st) : "error";
}

/* The handle of the current device (the glue set the device guard). */
static const cslt_handle_t* cslt_handle(int device, char* err) {
    const cslt_handle_t* h = NULL;
    pthread_mutex_lock(&cslt_lock);
    if (cslt_load(err) == 0) {
        if (device < 0 || device >= CSLT_MAX_DEV) {
            snprintf(err, LB_CUDA_ERR_LEN, "cuSPARSELt: device index %d out of range", device);
        } else {
            if (!cslt_handle_ok[device]) {
                cslt_status st = cslt.cusparseLtInit(&cslt_handles[device]);
                if (st == 0) cslt_handle_ok[device] = 1;
                else snprintf(err, LB_CUDA_ERR_LEN, "cusparseLtInit: %s (status %d)", cslt_errstr(st), st);
            }
            if (cslt_handle_ok[device]) h = &cslt_handles[device];
        }
    }
    pthread_mutex_unlock(&cslt_lock);
    return h;
}

#define CSLT_CHECK(call, what)                                                                 \
    do {                                                                                       \
        cslt_status st_ = (call);                                                              \
        if (st_ != 0) {                                                                        \
            snprintf(err, LB_CUDA_ERR_LEN, "cuSPARSELt %s: %s (status %d)", what,              \
                     cslt_errstr(st_), st_);                                                   \
            goto done;                                                                         \
        }                                                                                      \
    } while (0)


/* rc, or -1 with the message when a launch of the call just made failed. */
static int cslt_launch_status(int rc, const char* what, char* err) {
    if (rc == 0) {
        cudaError_t ce = cudaGetLastError();
        if (ce != cudaSuccess) {
            snprintf(err, LB_CUDA_ERR_LEN, "cuSPARSELt %s: %s", what, cudaGetErrorString(ce));
            rc = -1;
        }
    }
    return rc;
}

static int cslt_type(int dt) { return dt == LB_DT_BF16 ? CSLT_R_16BF : CSLT_R_16F; }

/* A: the pruned (N, K) weight as a column-major (K, N) matrix, 50% structured. 0 or -1. */
static int cslt_weight_init(const cslt_handle_t* h, cslt_mat_t* a, int dt, int64_t N, int64_t K,
                            char* err) {
    CSLT_CHECK(cslt.cusparseLtStructuredDescriptorInit(h, a, K, N, K, 16, cslt_type(dt),
                                                       CSLT_ORDER_COL, CSLT_SPARSITY_50),
               "StructuredDescriptorInit");
    return 0;
done:
    return -1;
}

extern "C" {

int lb24_decompress_cuda(const void* values, int vdt, const uint8_t* meta, int64_t N, int64_t K,
                         void* out, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    const int grid = s24_grid(N * (K / 4));
    if (N * K == 0) return 0;
    switch (vdt) {
    case LB_DT_F32:
        s24_decompress_kernel<float><<<grid, S24_THREADS, 0, s>>>((const float*)values, meta,
                                                                  (float*)out, N, K);
        break;
    case LB_DT_BF16:
        s24_decompress_kernel<__nv_bfloat16><<<grid, S24_THREADS, 0, s>>>(
            (const __nv_bfloat16*)values, meta, (__nv_bfloat16*)out, N, K);
        break;
    case LB_DT_F16:
        s24_decompress_kernel<__half><<<grid, S24_THREADS, 0, s>>>((const __half*)values, meta,
                                                                   (__half*)out, N, K);
        break;
    default: return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

int lb24_linear_cuda(const void* x, int dt, int64_t M, int64_t K, const void* values,
                     const uint8_t* meta, int64_t N, const void* bias, void* y, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    if (M == 0 || N == 0) return 0;
    const int64_t gy = (M + S24_ROWS_X - 1) / S24_ROWS_X;
    if (gy > 65535) return (int)cudaErrorInvalidConfiguration;
    dim3 grid((unsigned)((N + S24_WARPS - 1) / S24_WARPS), (unsigned)gy);
    switch (dt) {
    case LB_DT_F32:
        s24_linear_kernel<float><<<grid, S24_THREADS, 0, s>>>(
            (const float*)x, (const float*)values, meta, (const float*)bias, (float*)y, M, N, K);
        break;
    case LB_DT_BF16:
        s24_linear_kernel<__nv_bfloat16><<<grid, S24_THREADS, 0, s>>>(
            (const __nv_bfloat16*)x, (const __nv_bfloat16*)values, meta,
            (const __nv_bfloat16*)bias, (__nv_bfloat16*)y, M, N, K);
        break;
    case LB_DT_F16:
        s24_linear_kernel<__half><<<grid, S24_THREADS, 0, s>>>(
            (const __half*)x, (const __half*)values, meta, (const __half*)bias, (__half*)y, M, N,
            K);
        break;
    default: return (int)cudaErrorInvalidValue;
    }
    {
        const cudaError_t ce = cudaGetLastError();
        if (ce != cudaSuccess) return (int)ce;
    }
    s24_nonfinite(dt, x, meta, y, M, N, K, s);
    return (int)cudaGetLastError();
}

int lb24_cslt_compressed_size(int device, int dt, int64_t N, int64_t K, int64_t* size,
                              int64_t* scratch, char* err) {
    const cslt_handle_t* h = cslt_handle(device, err);
    cslt_mat_t a;
    size_t sz = 0, sc = 0;
    int rc = -1, have_a = 0;
    if (!h) return -1;
    if (cslt_weight_init(h, &a, dt, N, K, err)) goto done;
    have_a = 1;
    CSLT_CHECK(cslt.cusparseLtSpMMACompressedSize2(h, &a, &sz, &sc), "SpMMACompressedSize2");
    *size = (int64_t)sz;
    *scratch = (int64_t)sc;
    rc = 0;
done:
    if (have_a) cslt.cusparseLtMatDescriptorDestroy(&a);
    return rc;
}

int lb24_cslt_compress(int device, int dt, int64_t N, int64_t K, const void* dense,
                       void* packed, void* scratch, void* stream, char* err) {
    const cslt_handle_t* h = cslt_handle(device, err);
    cslt_mat_t a;
    int rc = -1, have_a = 0;
    if (!h) return -1;
    if (cslt_weight_init(h, &a, dt, N, K, err)) goto done;
    have_a = 1;
    CSLT_CHECK(cslt.cusparseLtSpMMACompress2(h, &a, 1, CSLT_OP_T, dense, packed, scratch,
                                             (cudaStream_t)stream),
               "SpMMACompress2");
    rc = 0;
done:
    if (have_a) cslt.cusparseLtMatDescriptorDestroy(&a);
    return cslt_launch_status(rc, "compress", err);
}

int lb24_cslt_linear(int device, int dt, int64_t M, int64_t N, int64_t K, const void* x,
                     const void* packed, const uint8_t* meta, const void* bias, void* y,
                     void* stream, char* err) {
    const cslt_handle_t* h = cslt_handle(device, err);
    cslt_mat_t a, b, c;
    cslt_matmul_t mm;
    cslt_alg_t alg;
    cslt_plan_t plan;
    int have_a = 0, have_b = 0, have_c = 0, have_alg = 0, have_plan = 0, rc = -1;
    size_t ws_size = 0;
    void* ws = NULL;
    cudaStream_t s = (cudaStream_t)stream;
    const float alpha = 1.0f, beta = 0.0f;
    const int ty = cslt_type(dt);
    if (!h) return -1;
    if (cslt_weight_init(h, &a, dt, N, K, err)) goto done;
    have_a = 1;
    CSLT_CHECK(cslt.cusparseLtDenseDescriptorInit(h, &b, K, M, K, 16, ty, CSLT_ORDER_COL),
               "DenseDescriptorInit(x)");
    have_b = 1;
    CSLT_CHECK(cslt.cusparseLtDenseDescriptorInit(h, &c, N, M, N, 16, ty, CSLT_ORDER_COL),
               "DenseDescriptorInit(y)");
    have_c = 1;
    CSLT_CHECK(cslt.cusparseLtMatmulDescriptorInit(h, &mm, CSLT_OP_T, CSLT_OP_N, &a, &b, &c, &c,
                                                   CSLT_COMPUTE_32F),
               "MatmulDescriptorInit");
    if (bias)
        CSLT_CHECK(cslt.cusparseLtMatmulDescSetAttribute(h, &mm, CSLT_MATMUL_BIAS_POINTER, &bias,
                                                         sizeof(void*)),
                   "MatmulDescSetAttribute(bias)");
    CSLT_CHECK(cslt.cusparseLtMatmulAlgSelectionInit(h, &alg, &mm, CSLT_ALG_DEFAULT),
               "MatmulAlgSelectionInit");
    have_alg = 1;
    CSLT_CHECK(cslt.cusparseLtMatmulPlanInit(h, &plan, &mm, &alg), "MatmulPlanInit");
    have_plan = 1;
    CSLT_CHECK(cslt.cusparseLtMatmulGetWorkspace(h, &plan, &ws_size), "MatmulGetWorkspace");
    if (ws_size > 0) {
        cudaError_t ce = cudaMallocAsync(&ws, ws_size, s);
        if (ce != cudaSuccess) {
            snprintf(err, LB_CUDA_ERR_LEN, "cuSPARSELt workspace: %s", cudaGetErrorString(ce));
            ws = NULL;
            goto done;
        }
    }
    CSLT_CHECK(cslt.cusparseLtMatmul(h, &plan, &alpha, packed, x, &beta, y, y, ws, &s, 1),
               "Matmul");
    /* cuSPARSELt multiplies the kept values only: a NaN/inf x at a pruned position is lost */
    s24_nonfinite(dt, x, meta, y, M, N, K, s);
    rc = 0;
done:
    if (ws) cudaFreeAsync(ws, s);
    if (have_plan) cslt.cusparseLtMatmulPlanDestroy(&plan);
    if (have_alg) cslt.cusparseLtMatmulAlgSelectionDestroy(&alg);
    if (have_c) cslt.cusparseLtMatDescriptorDestroy(&c);
    if (have_b) cslt.cusparseLtMatDescriptorDestroy(&b);
    if (have_a) cslt.cusparseLtMatDescriptorDestroy(&a);
    return cslt_launch_status(rc, "matmul", err);
}

} /* extern "C" */
