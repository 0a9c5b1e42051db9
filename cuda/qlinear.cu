/* cuda/qlinear.cu: CUDA kernels of the qlinear family: y = x W^T (+ bias) with W packed (the
 * canonical per-row bitstream of csrc/formats.h: codes, scales, zeros; or the GGUF blocks of
 * llama.cpp's block types), behind the extern "C" launchers of cuda/qlinear.cuh. Every format
 * of FORMATS.md section 1; x float32 / bf16 / f16.
 *
 *   qlc_gemv_kernel (M <= 16, and every M for float32 x): one warp per output row n and up to
 *     QLC_MT rows of x per block (grid.y covers the rest). Lane l decodes codes k = l, l+32, ...
 *     of row n with lb_get_code / lb_decode (bit-identical to dequantize), FMAs them with x in
 *     float32, and a shuffle reduction gives the dot products; lane 0 adds bias and rounds once to
 *     x's dtype. Reads W once per QLC_MT rows of x: bandwidth-bound on the packed bytes.
 *   qlc_wmma_kernel (16-bit x, M > 16): tensor cores through WMMA (mma.sync m16n16k16, float
 *     accumulators). A 64 x 64 output tile per block of 4 warps (32 x 32 each); per K-step of 32
 *     the block stages a 64 x 32 x-tile and dequantises a 64 x 32 W-tile into shared memory in
 *     x's dtype (the weights are rounded to bf16/f16 there, as a 16-bit F.linear would hold
 *     them), then each warp runs 2 x 2 x 2 MMAs. The float accumulators go through shared memory
 *     to add bias and round to x's dtype with bounds checks.
 * Both kernels read W through a weight source (QlcCodes: the canonical codes; QlcBlocks:
 * llama.cpp's block types, FORMATS.md 1.8, whose GGUF blocks hold their fp16 scales and are
 * decoded element by element with formats_ggml.h's lb_blk_value_at, bit-identical to
 * dequantize). The block types have their own launcher, lb_ql_forward_blk_cuda, which adds:
 *   qlc_blk_int8_kernel (act="int8", M <= 16): FORMATS.md 4's int8 mode. One warp per output
 *     row n and up to QLC_MT rows of x; lane l takes the 32-blocks kb = l, l+32, ... of K: it
 *     decodes the block's 32 codes once (lb_blk_codes32), quantizes each x row's 32-block
 *     (d = max|x|/127, round half to even), and adds d * (S_j * sum q x8 + C_j * sum x8) per sub-block j
 *     (lb_blk_dot32: integer sums, float epilogue; C_j the value of code 0: m, -M_j, 0).
 *     A row that is non-finite, has max|x| > 2^64, or a nonzero max|x| < 2^-100 takes the float
 *     products instead (the CPU's fallback rule).
 * All indices are int64. The (host) lb_fmt is copied into shared memory so lb_decode's level
 * table is indexed cheaply. Built for sm_80 / sm_90 (bf16 WMMA needs sm_80). */
#include <cuda_runtime.h>
#include <mma.h>
#include <stdint.h>

#include <type_traits>

#include "lb_device.cuh"
#include "qlinear.cuh"

#define QLC_WARPS 4  /* rows (warps) per GEMV block */
#define QLC_MT 8     /* x rows per GEMV block */
#define QLC_BM 64
#define QLC_BN 64
#define QLC_BK 32
#define QLC_PAD 8

__device__ __forceinline__ __half qlc_cvt(float v, __half*) { return __float2half_rn(v); }
__device__ __forceinline__ __nv_bfloat16 qlc_cvt(float v, __nv_bfloat16*) {
    return __float2bfloat16_rn(v);
}

/* Weight sources: w(f, n, k, K) is the exact float32 value of W[n, k], as dequantize computes
 * it. QlcCodes: the canonical codes (lb_decode); QlcBlocks: the GGUF blocks of a block type. */
struct QlcCodes {
    const uint8_t* codes;
    const float* scales;
    const uint8_t* zeros;
    int64_t g;
    __device__ __forceinline__ float operator()(const lb_fmt* f, int64_t n, int64_t k,
                                                int64_t K) const {
        const uint8_t* row = codes + n * lb_row_bytes(K, f->bits);
        const int64_t G = K / g, gi = k / g;
        return lb_decode(f, lb_load_gparams(f, scales, zeros, n * G + gi),
                         lb_get_code(row, k, f->bits));
    }
};

struct QlcBlocks {
    const uint8_t* blocks; /* (N, K / block * type_size) */
    __device__ __forceinline__ const uint8_t* block(const lb_fmt* f, int64_t n, int64_t k,
                                                    int64_t K) const {
        return blocks + (n * (K / f->block) + k / f->block) * f->type_size;
    }
    __device__ __forceinline__ float operator()(const lb_fmt* f, int64_t n, int64_t k,
                                                int64_t K) const {
        return lb_blk_value_at(f, block(f, n, k, K), (int)(k % f->block));
    }
};

template <typename T, typename W>
__global__ void __launch_bounds__(QLC_WARPS * 32)
qlc_gemv_kernel(const T* x, W wsrc, const T* bias, T* y, int64_t M, int64_t N, int64_t K,
                lb_fmt fmt) {
    __shared__ lb_fmt f;
    if (threadIdx.x == 0) f = fmt;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int64_t n = (int64_t)blockIdx.x * QLC_WARPS + (threadIdx.x >> 5);
    const int64_t m0 = (int64_t)blockIdx.y * QLC_MT;
    const int mc = (int)(M - m0 < QLC_MT ? M - m0 : QLC_MT);
    if (n >= N) return;  /* warp-uniform: no shuffles are skipped by part of a warp */
    float acc[QLC_MT];
#pragma unroll
    for (int m = 0; m < QLC_MT; ++m) acc[m] = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
        const float w = wsrc(&f, n, k, K);
#pragma unroll
        for (int m = 0; m < QLC_MT; ++m)
            if (m < mc) acc[m] += w * lb_ld(x, (m0 + m) * K + k);
    }
#pragma unroll
    for (int m = 0; m < QLC_MT; ++m) {
        float v = lb_warp_sum(acc[m]);
        if (lane == 0 && m < mc) {
            if (bias) v += lb_ld(bias, n);
            lb_st(y, (m0 + m) * N + n, v);
        }
    }
}

template <typename T, typename W>
__global__ void __launch_bounds__(128)
qlc_wmma_kernel(const T* x, W wsrc, const T* bias, T* y, int64_t M, int64_t N, int64_t K,
                lb_fmt fmt) {
    using namespace nvcuda;
    __shared__ lb_fmt f;
    __shared__ __align__(32) T As[QLC_BM][QLC_BK + QLC_PAD];
    __shared__ __align__(32) T Bs[QLC_BN][QLC_BK + QLC_PAD];
    __shared__ __align__(32) float Cs[QLC_BM][QLC_BN + 4];
    if (threadIdx.x == 0) f = fmt;
    const int warp = threadIdx.x >> 5;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int64_t m0 = (int64_t)blockIdx.y * QLC_BM, n0 = (int64_t)blockIdx.x * QLC_BN;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0.0f);
    __syncthreads();
    for (int64_t k0 = 0; k0 < K; k0 += QLC_BK) {
        for (int idx = threadIdx.x; idx < QLC_BM * QLC_BK; idx += blockDim.x) {
            const int r = idx / QLC_BK, kk = idx % QLC_BK;
            const int64_t m = m0 + r, n = n0 + r, k = k0 + kk;
            As[r][kk] = (m < M && k < K) ? x[m * K + k] : qlc_cvt(0.0f, (T*)0);
            Bs[r][kk] = qlc_cvt((n < N && k < K) ? wsrc(&f, n, k, K) : 0.0f, (T*)0);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < QLC_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i)
                wmma::load_matrix_sync(a[i], &As[wm + 16 * i][kk], QLC_BK + QLC_PAD);
#pragma unroll
            for (int j = 0; j < 2; ++j)
                wmma::load_matrix_sync(b[j], &Bs[wn + 16 * j][kk], QLC_BK + QLC_PAD);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(c[i][j], a[i], b[j], c[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(&Cs[wm + 16 * i][wn + 16 * j], c[i][j], QLC_BN + 4,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int idx = threadIdx.x; idx < QLC_BM * QLC_BN; idx += blockDim.x) {
        const int r = idx / QLC_BN, cc = idx % QLC_BN;
        const int64_t m = m0 + r, n = n0 + cc;
        if (m < M && n < N) {
            float v = Cs[r][cc];
            if (bias) v += lb_ld(bias, n);
            lb_st(y, m * N + n, v);
        }
    }
}

/* act="int8" on the block types (see the header comment). */
template <typename T>
__global__ void __launch_bounds__(QLC_WARPS * 32)
qlc_blk_int8_kernel(const T* x, QlcBlocks wsrc, const T* bias, T* y, int64_t M, int64_t N,
                    int64_t K, lb_fmt fmt) {
    __shared__ lb_fmt f;
    if (threadIdx.x == 0) f = fmt;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int64_t n = (int64_t)blockIdx.x * QLC_WARPS + (threadIdx.x >> 5);
    const int64_t m0 = (int64_t)blockIdx.y * QLC_MT;
    const int mc = (int)(M - m0 < QLC_MT ? M - m0 : QLC_MT);
    if (n >= N) return; /* warp-uniform */
    /* each row's fallback flag (the warp reads the row once; x is small next to W here) */
    unsigned bad = 0;
    for (int m = 0; m < mc; ++m) {
        float am = 0.0f;
        int fin = 1;
        for (int64_t k = lane; k < K; k += 32) {
            const float v = fabsf(lb_ld(x, (m0 + m) * K + k));
            fin &= v <= 3.4028235e38f; /* false for inf and nan */
            am = v > am ? v : am;
        }
        for (int o = 16; o > 0; o >>= 1) {
            am = fmaxf(am, __shfl_xor_sync(LB_FULL_MASK, am, o));
            fin &= __shfl_xor_sync(LB_FULL_MASK, fin, o);
        }
        if (!fin || am > 0x1p64f || (am != 0.0f && am < 0x1p-100f)) bad |= 1u << m;
    }
    float acc[QLC_MT];
#pragma unroll
    for (int m = 0; m < QLC_MT; ++m) acc[m] = 0.0f;
    for (int64_t kb = lane; kb < K / 32; kb += 32) {
        const int64_t k0 = kb * 32;
        float S[2], C[2];
        int q[32];
        int8_t x8[32];
        /* the block's 32 codes are decoded once for every row of x */
        const int nh = lb_blk_codes32(&f, wsrc.block(&f, n, k0, K), (int)(k0 % f.block), q, S, C);
#pragma unroll
        for (int m = 0; m < QLC_MT; ++m) {
            if (m >= mc) continue;
            const int64_t xo = (m0 + m) * K + k0;
            if (bad & (1u << m)) { /* the float products of the exact values of W */
                for (int i = 0; i < 32; ++i)
                    acc[m] += (S[nh == 2 ? i / 16 : 0] * (float)q[i] + C[nh == 2 ? i / 16 : 0]) *
                              lb_ld(x, xo + i);
                continue;
            }
            float am = 0.0f;
            for (int i = 0; i < 32; ++i) am = fmaxf(am, fabsf(lb_ld(x, xo + i)));
            if (am == 0.0f) continue;
            const float d = am / 127.0f;
            for (int i = 0; i < 32; ++i) x8[i] = (int8_t)rintf(lb_ld(x, xo + i) / d);
            acc[m] += d * lb_blk_dot32(q, S, C, nh, x8);
        }
    }
#pragma unroll
    for (int m = 0; m < QLC_MT; ++m) {
        float v = lb_warp_sum(acc[m]);
        if (lane == 0 && m < mc) {
            if (bias) v += lb_ld(bias, n);
            lb_st(y, (m0 + m) * N + n, v);
        }
    }
}

template <typename T, typename W>
static int qlc_launch(const void* x, int64_t M, int64_t N, int64_t K, const lb_fmt* f, W w,
                      const void* bias, void* y, cudaStream_t s, bool tensor_cores) {
    if (M <= 0 || N <= 0) return 0;
    if constexpr (!std::is_same<T, float>::value) {
        if (tensor_cores) {
            dim3 grid((unsigned)((N + QLC_BN - 1) / QLC_BN),
                      (unsigned)((M + QLC_BM - 1) / QLC_BM));
            qlc_wmma_kernel<T, W><<<grid, 128, 0, s>>>((const T*)x, w, (const T*)bias, (T*)y, M,
                                                       N, K, *f);
            return (int)cudaGetLastError();
        }
    }
    {
        dim3 grid((unsigned)((N + QLC_WARPS - 1) / QLC_WARPS), (unsigned)((M + QLC_MT - 1) / QLC_MT));
        qlc_gemv_kernel<T, W><<<grid, QLC_WARPS * 32, 0, s>>>((const T*)x, w, (const T*)bias,
                                                              (T*)y, M, N, K, *f);
    }
    return (int)cudaGetLastError();
}

template <typename T>
static int qlc_forward_t(const void* x, int64_t M, int64_t N, int64_t K, int64_t g,
                         const lb_fmt* f, const uint8_t* codes, const float* scales,
                         const uint8_t* zeros, const void* bias, void* y, cudaStream_t s,
                         bool tensor_cores) {
    return qlc_launch<T>(x, M, N, K, f, QlcCodes{codes, scales, zeros, g}, bias, y, s,
                         tensor_cores);
}

template <typename T>
static int qlc_forward_blk_t(const void* x, int64_t M, int64_t N, int64_t K, const lb_fmt* f,
                             const uint8_t* blocks, const void* bias, int act, void* y,
                             cudaStream_t s) {
    if (M <= 0 || N <= 0) return 0;
    if (act == LB_ACT_INT8 && M <= 16) {
        dim3 grid((unsigned)((N + QLC_WARPS - 1) / QLC_WARPS), (unsigned)((M + QLC_MT - 1) / QLC_MT));
        qlc_blk_int8_kernel<T><<<grid, QLC_WARPS * 32, 0, s>>>(
            (const T*)x, QlcBlocks{blocks}, (const T*)bias, (T*)y, M, N, K, *f);
        return (int)cudaGetLastError();
    }
    return qlc_launch<T>(x, M, N, K, f, QlcBlocks{blocks}, bias, y, s, M > 16);
}

extern "C" int lb_ql_forward_blk_cuda(const void* x, int dt, int64_t M, int64_t N, int64_t K,
                                      const lb_fmt* f, const uint8_t* blocks, const void* bias,
                                      int act, void* y, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    switch (dt) {
    case LB_DT_F32: return qlc_forward_blk_t<float>(x, M, N, K, f, blocks, bias, act, y, s);
    case LB_DT_BF16:
        return qlc_forward_blk_t<__nv_bfloat16>(x, M, N, K, f, blocks, bias, act, y, s);
    default: return qlc_forward_blk_t<__half>(x, M, N, K, f, blocks, bias, act, y, s);
    }
}

extern "C" int lb_ql_forward_cuda(const void* x, int dt, int64_t M, int64_t N, int64_t K,
                                  int64_t g, const lb_fmt* f, const uint8_t* codes,
                                  const float* scales, const uint8_t* zeros, const void* bias,
                                  void* y, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    const bool tc = M > 16;
    switch (dt) {
    case LB_DT_F32:
        return qlc_forward_t<float>(x, M, N, K, g, f, codes, scales, zeros, bias, y, s, false);
    case LB_DT_BF16:
        return qlc_forward_t<__nv_bfloat16>(x, M, N, K, g, f, codes, scales, zeros, bias, y, s, tc);
    default:
        return qlc_forward_t<__half>(x, M, N, K, g, f, codes, scales, zeros, bias, y, s, tc);
    }
}
