/* cuda/kl_loss.cu: CUDA kernels of the kl_loss family (FORMATS.md section 2) behind the
 * extern "C" launcher lb_kl_cuda of cuda/kl_loss.cuh. Same math, same edge-case rules as
 * csrc/cpu/kl_loss.c (read its file comment): a = T / tau, b = S / tau in float32,
 *   FKL = W_T / Z_T - (mT - mS) - (log Z_T - log Z_S),  W_T = sum e^(a - mT) (a - b)
 *   RKL = W_S / Z_S + (mT - mS) - (log Z_S - log Z_T),  W_S = sum e^(b - mS) (b - a)
 * gradients (q - p), q (log q - log p - RKL), (1 - beta) q (log q - log m - KL(q||m)), / tau.
 * Results agree with the CPU path to float32 round-off (sums are added in another order, and
 * expf/logf are CUDA's), not bit for bit.
 *
 * Work split: a group of NT threads per row — one warp (NT = 32, eight rows per 256-thread
 * block) when V <= 2048, else a whole 512-thread block. Sweep 1 reads the row once and keeps a
 * per-thread online (max, sum exp, weighted sum) for both distributions, merged across the group
 * with shuffles and shared memory. JSD adds a sweep for KL(p||m), KL(q||m). The last sweep
 * re-reads the row (hot in L2) and writes the gradient. No rows x V temporary besides it.
 * Built with --fmad=false, without --use_fast_math. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "kl_loss.cuh"
#include "lb_device.cuh"

#define KL_FULL LB_FULL_MASK
#define KL_BLOCK_NT 512
#define KL_WARP_ROWS 8

/* Online (max, sum e^(x - m), sum e^(x - m) d) */
struct kl_acc {
    float m, z, w;
};

__device__ __forceinline__ void kl_acc_add(kl_acc& s, float x, float d) {
    if (x > s.m) {
        float f = expf(s.m - x); /* 0 when s.m is -inf */
        s.z = s.z * f + 1.0f;
        s.w = s.w * f + d;
        s.m = x;
    } else if (x > -INFINITY) {
        float e = expf(x - s.m);
        s.z += e;
        s.w += e > 0.0f ? e * d : 0.0f;
    }
}

__device__ __forceinline__ kl_acc kl_acc_merge(kl_acc a, kl_acc b) {
    float M = a.m > b.m ? a.m : b.m;
    kl_acc r;
    if (!(M > -INFINITY)) {
        r.m = -INFINITY;
        r.z = 0.0f;
        r.w = 0.0f;
        return r;
    }
    float fa = expf(a.m - M), fb = expf(b.m - M);
    r.m = M;
    r.z = a.z * fa + b.z * fb;
    r.w = (a.w != 0.0f ? a.w * fa : 0.0f) + (b.w != 0.0f ? b.w * fb : 0.0f);
    return r;
}

__device__ __forceinline__ kl_acc kl_warp_acc(kl_acc a) {
    for (int o = 16; o > 0; o >>= 1) {
        kl_acc b;
        b.m = __shfl_xor_sync(KL_FULL, a.m, o);
        b.z = __shfl_xor_sync(KL_FULL, a.z, o);
        b.w = __shfl_xor_sync(KL_FULL, a.w, o);
        a = kl_acc_merge(a, b);
    }
    return a;
}


__device__ __forceinline__ int kl_warp_or(int v) { return __any_sync(KL_FULL, v); }

/* Group reductions: NT == 32 is one warp (butterflies leave the result in every lane); else
 * the whole block: per-warp results in shared memory, then every thread merges them in the same
 * order (so all threads agree). sh holds at least 3 * NT / 32 floats. */
template <int NT>
__device__ __forceinline__ kl_acc kl_group_acc(kl_acc a, float* sh) {
    a = kl_warp_acc(a);
    if (NT == 32) return a;
    const int nw = NT / 32, wid = threadIdx.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        sh[wid] = a.m;
        sh[nw + wid] = a.z;
        sh[2 * nw + wid] = a.w;
    }
    __syncthreads();
    kl_acc r;
    r.m = sh[0];
    r.z = sh[nw];
    r.w = sh[2 * nw];
    for (int i = 1; i < nw; ++i) {
        kl_acc b;
        b.m = sh[i];
        b.z = sh[nw + i];
        b.w = sh[2 * nw + i];
        r = kl_acc_merge(r, b);
    }
    return r;
}

template <int NT>
__device__ __forceinline__ float kl_group_sum(float v, float* sh) {
    v = lb_warp_sum(v);
    if (NT == 32) return v;
    const int nw = NT / 32;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = 0.0f;
    for (int i = 0; i < nw; ++i) r += sh[i];
    return r;
}

template <int NT>
__device__ __forceinline__ int kl_group_or(int v, float* sh) {
    return kl_group_sum<NT>(kl_warp_or(v) ? 1.0f : 0.0f, sh) > 0.0f;
}

enum { KG_FKL, KG_RKL, KG_MIX, KG_JSD };

template <typename TS, typename TT, int NT>
__global__ void __launch_bounds__(NT == 32 ? 32 * KL_WARP_ROWS : NT)
    kl_row_kernel(lb_kl_args A) {
    __shared__ float sh_all[(NT == 32 ? KL_WARP_ROWS : 1) * 3 * (NT / 32)];
    const int64_t r = NT == 32 ? (int64_t)blockIdx.x * KL_WARP_ROWS + (threadIdx.x >> 5)
                               : (int64_t)blockIdx.x;
    const int tid = NT == 32 ? (threadIdx.x & 31) : threadIdx.x;
    float* sh = sh_all; /* only the NT > 32 reductions use it */
    if (r >= A.rows) return; /* warp-uniform (NT == 32) or block-uniform */
    const int64_t V = A.V, base = r * V;
    const TS* S = (const TS*)A.S;
    const TT* T = (const TT*)A.T;
    TS* G = (TS*)A.grad;
    const float it = A.inv_tau;

    if (A.labels && A.labels[r] == A.ignore_index) {
        if (tid == 0 && A.loss) A.loss[r] = 0.0f;
        if (G)
            for (int64_t i = tid; i < V; i += NT) lb_st(G, base + i, 0.0f);
        return;
    }
    /* sweep 1 */
    kl_acc at = {-INFINITY, 0.0f, 0.0f}, as = {-INFINITY, 0.0f, 0.0f};
    int bad = 0, ovf = 0;
    for (int64_t i = tid; i < V; i += NT) {
        const float tr = lb_ld(T, base + i), sr = lb_ld(S, base + i);
        float a = tr * it, b = sr * it;
        bad |= (a != a) | (b != b) | (a == INFINITY) | (b == INFINITY);
        /* temperature < 1 (A.overflow set): finite logits that leave the safe range */
        ovf |= (fabsf(a) > LB_KL_SAFE && fabsf(tr) <= 3.4028234663852886e38f) |
               (fabsf(b) > LB_KL_SAFE && fabsf(sr) <= 3.4028234663852886e38f);
        float d = a - b;
        kl_acc_add(at, a, d);
        kl_acc_add(as, b, -d);
    }
    at = kl_group_acc<NT>(at, sh);
    as = kl_group_acc<NT>(as, sh);
    bad = kl_group_or<NT>(bad, sh);
    if (A.overflow && kl_group_or<NT>(ovf, sh)) { /* the glue raises; outputs are discarded */
        if (tid == 0) atomicAdd(A.overflow, 1);
        if (tid == 0 && A.loss) A.loss[r] = 0.0f;
        if (G)
            for (int64_t i = tid; i < V; i += NT) lb_st(G, base + i, 0.0f);
        return;
    }
    const float sc = (A.row_scale ? A.row_scale[r] : A.grad_scale) * it;
    if (bad || !(at.z > 0.0f) || !(as.z > 0.0f)) { /* NaN/+inf, or no finite logit: NaN */
        const float v = __int_as_float(0x7fc00000);
        if (tid == 0 && A.loss) A.loss[r] = v;
        if (G)
            for (int64_t i = tid; i < V; i += NT) lb_st(G, base + i, v);
        return;
    }
    const float mT = at.m, mS = as.m;
    const float lzT = logf(at.z), lzS = logf(as.z);
    const float dm = mT - mS;
    const float fkl = (at.w / at.z - dm) - (lzT - lzS);
    const float rkl = (as.w / as.z + dm) - (lzS - lzT);
    const float cr = -dm + (lzS - lzT); /* (mS - mT) + (lzS - lzT) */
    float loss = 0.0f, c = 0.0f, wr = 0.0f;
    int mode = KG_FKL;
    const float be = A.beta, ob = 1.0f - A.beta;
    switch (A.kind) {
    case LB_KL_FORWARD:
        loss = fkl;
        break;
    case LB_KL_REVERSE:
        loss = rkl;
        mode = KG_RKL;
        c = cr + rkl;
        break;
    case LB_KL_CAKLD:
        if (A.gamma == 0.0f) {
            loss = fkl;
        } else if (A.gamma == 1.0f) {
            loss = rkl;
            mode = KG_RKL;
            c = cr + rkl;
        } else {
            loss = A.gamma * rkl + (1.0f - A.gamma) * fkl;
            mode = KG_MIX;
            c = cr + rkl;
            wr = A.gamma;
        }
        break;
    default: {
        if (A.beta == 0.0f || A.beta == 1.0f) {
            if (tid == 0 && A.loss) A.loss[r] = 0.0f;
            if (G)
                for (int64_t i = tid; i < V; i += NT) lb_st(G, base + i, 0.0f);
            return;
        }
        float kp = 0.0f, kq = 0.0f;
        for (int64_t i = tid; i < V; i += NT) {
            float lp = (lb_ld(T, base + i) * it - mT) - lzT;
            float lq = (lb_ld(S, base + i) * it - mS) - lzS;
            float p = expf(lp), q = expf(lq);
            float m = be * p + ob * q;
            float lm = logf(m);
            kp += (m > 0.0f && p > 0.0f) ? p * (lp - lm) : 0.0f;
            kq += (m > 0.0f && q > 0.0f) ? q * (lq - lm) : 0.0f;
        }
        kp = kl_group_sum<NT>(kp, sh);
        kq = kl_group_sum<NT>(kq, sh);
        loss = be * kp + ob * kq;
        mode = KG_JSD;
        c = kq;
        wr = ob;
        break;
    }
    }
    if (tid == 0 && A.loss) A.loss[r] = loss;
    if (!G) return;
    const float wf = 1.0f - wr;
    for (int64_t i = tid; i < V; i += NT) {
        float a = lb_ld(T, base + i) * it, b = lb_ld(S, base + i) * it;
        float lq = (b - mS) - lzS, q = expf(lq), g;
        if (mode == KG_FKL) {
            g = q - expf((a - mT) - lzT);
        } else if (mode == KG_RKL) {
            g = q > 0.0f ? q * ((b - a) - c) : 0.0f;
        } else if (mode == KG_MIX) {
            float p = expf((a - mT) - lzT);
            float gr = q > 0.0f ? q * ((b - a) - c) : 0.0f;
            g = wf * (q - p) + wr * gr;
        } else {
            float p = expf((a - mT) - lzT);
            float m = be * p + ob * q;
            g = (q > 0.0f && m > 0.0f) ? wr * (q * ((lq - logf(m)) - c)) : 0.0f;
        }
        lb_st(G, base + i, g * sc);
    }
}

template <typename TS, typename TT>
static int kl_launch(const lb_kl_args* a, cudaStream_t s) {
    if (a->V <= 2048) {
        unsigned grid = (unsigned)((a->rows + KL_WARP_ROWS - 1) / KL_WARP_ROWS);
        kl_row_kernel<TS, TT, 32><<<grid, 32 * KL_WARP_ROWS, 0, s>>>(*a);
    } else {
        kl_row_kernel<TS, TT, KL_BLOCK_NT><<<(unsigned)a->rows, KL_BLOCK_NT, 0, s>>>(*a);
    }
    return (int)cudaGetLastError();
}

template <typename TS>
static int kl_launch_t(const lb_kl_args* a, cudaStream_t s) {
    switch (a->dtT) {
    case LB_DT_F32: return kl_launch<TS, float>(a, s);
    case LB_DT_BF16: return kl_launch<TS, __nv_bfloat16>(a, s);
    default: return kl_launch<TS, __half>(a, s);
    }
}

extern "C" int lb_kl_cuda(const lb_kl_args* a, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    if (a->rows <= 0) return 0;
    if (a->rows > 0x7fffffffLL) return (int)cudaErrorInvalidValue;
    switch (a->dtS) {
    case LB_DT_F32: return kl_launch_t<float>(a, s);
    case LB_DT_BF16: return kl_launch_t<__nv_bfloat16>(a, s);
    default: return kl_launch_t<__half>(a, s);
    }
}
