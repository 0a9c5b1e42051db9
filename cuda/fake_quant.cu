/* cuda/fake_quant.cu: CUDA kernels of the fake_quant family (fake-quant forward, its exact
 * BitDistiller backward, quantize/pack, dequantize/unpack) behind the extern "C" launchers of
 * cuda/fake_quant.cuh. They compute exactly what csrc/cpu/fake_quant.c computes: the same float32
 * formulas (the per-element encode / decode / fake-quant / gradient helpers and the group
 * parameters come from csrc/formats.h, as on the CPU, scales rounded to the format's scale dtype
 * by the same lb_round_scale), the same branch choices, NaN/Inf groups -> NaN output / NaN
 * gradient. Built with --fmad=false and without --use_fast_math (no flush of subnormals), so '/'
 * is IEEE division and nothing is contracted:
 * forward values, codes and scales are bit-identical to the CPU path. Only the backward's group
 * sums (dL/d scale) are added in a different order than the CPU's 16 fixed lanes.
 *
 * Work split
 *   fq_fwd_kernel, fq_bwd_kernel, fq_qstats_kernel: one warp per group. Group gid (row r =
 *     gid / G, column block j = gid % G) holds elements [gid*g, (gid+1)*g) of the contiguous
 *     (N, K) tensor, since r*K + j*g = (r*G + j)*g. A grid-stride loop over groups; the group
 *     index is warp-uniform, so every lane runs every iteration and all shuffles use the full
 *     mask. Lane l handles elements l, l+32, ... (< g; lanes past g contribute neutral values).
 *     Later passes re-read the group from global memory (it is hot in L1/L2).
 *   fq_pack_kernel: one thread per byte of the packed codes (see the layout note there).
 *   fq_dequant_kernel: one thread per element.
 *   fq_blk_*_kernel (llama.cpp's block types, FORMATS.md 1.8): one thread per block.
 * All indices are int64. Kernels copy the (host) lb_fmt, passed by value, into shared memory so
 * the formats.h helpers index its level/threshold tables with dynamic indices cheaply. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "fake_quant.cuh"
#include "lb_device.cuh"

#define FQ_THREADS 256                    /* threads per block (a multiple of 32) */
#define FQ_WARPS (FQ_THREADS / 32)        /* warps per block in the warp-per-group kernels */
#define FQ_MAX_BLOCKS 8192                /* grid cap; the kernels grid-stride past it */
#define FQ_FULL LB_FULL_MASK

/* The quiet NaN the CPU path writes (C's NAN, 0x7fc00000). */
__device__ __forceinline__ float fq_nan(void) { return __int_as_float(0x7fc00000); }

/* ---- warp reductions (all 32 lanes must call; every lane gets lane 0's result) ----
 * max/min use the CPU's comparisons (NaN never wins). The final broadcast from lane 0 makes all
 * lanes agree bit for bit (a butterfly with `>` could leave +0 on some lanes and -0 on others). */
__device__ __forceinline__ float fq_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        float t = __shfl_xor_sync(FQ_FULL, v, o);
        v = t > v ? t : v;
    }
    return __shfl_sync(FQ_FULL, v, 0);
}
__device__ __forceinline__ float fq_warp_min(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        float t = __shfl_xor_sync(FQ_FULL, v, o);
        v = t < v ? t : v;
    }
    return __shfl_sync(FQ_FULL, v, 0);
}
__device__ __forceinline__ float fq_warp_sum(float v) {
    return __shfl_sync(FQ_FULL, lb_warp_sum(v), 0);
}
__device__ __forceinline__ long long fq_warp_sum_ll(long long v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FQ_FULL, v, o);
    return __shfl_sync(FQ_FULL, v, 0);
}

/* Statistics of the group at x[0, g) (group_stats of the CPU: max, min, max|x| with NaN
 * ignored by the comparisons, bad = any NaN/Inf). Max/min of the non-NaN values do not depend on
 * the order they are combined in (up to the sign of a zero maximum/minimum, which no later
 * formula can observe: every use is `r >= eps`, `mx >= eps`, an == comparison, or a zero point
 * whose sign cannot reach an output), so these equal the CPU's statistics. Warp-collective. */
template <typename T>
__device__ __forceinline__ lb_gstats fq_warp_stats(const T* x, int64_t g, int lane) {
    float mx = -INFINITY, mn = INFINITY, am = 0.0f;
    int bad = 0;
    for (int64_t i = lane; i < g; i += 32) {
        float v = lb_ld(x, i), a = fabsf(v);
        mx = v > mx ? v : mx;
        mn = v < mn ? v : mn;
        am = a > am ? a : am;
        bad |= !(a <= 3.4028234663852886e38f); /* NaN or Inf */
    }
    lb_gstats st;
    st.mx = fq_warp_max(mx);
    st.mn = fq_warp_min(mn);
    st.amax = fq_warp_max(am);
    st.bad = __any_sync(FQ_FULL, bad) ? 1 : 0;
    return st;
}

/* Copies the by-value format into shared memory (one per block). */
#define FQ_LOAD_FMT(sf, fmt)          \
    __shared__ lb_fmt sf;             \
    if (threadIdx.x == 0) sf = (fmt); \
    __syncthreads()

/* The grid-stride loop of the warp-per-group kernels: gid runs over this warp's groups. */
#define FQ_FOR_EACH_GROUP(gid)                                                                \
    for (int64_t gid = (int64_t)blockIdx.x * FQ_WARPS + (threadIdx.x >> 5); gid < ngroups;   \
         gid += (int64_t)gridDim.x * FQ_WARPS)

/* Statistics and scales of the group at base, or NaN over the group's output (and false) when
 * it holds NaN/Inf, as the CPU's fwd_group / bwd_group do. Warp-collective, warp-uniform. */
template <typename T>
__device__ __forceinline__ bool fq_group_setup(const lb_fmt* f, const T* w, T* out, int64_t base,
                                               int64_t g, int lane, lb_gstats* st,
                                               lb_gparams* p) {
    *st = fq_warp_stats(w + base, g, lane);
    if (st->bad) {
        for (int64_t i = lane; i < g; i += 32) lb_st(out, base + i, fq_nan());
        return false;
    }
    *p = lb_group_params(f, *st);
    return true;
}

/* ---- fake-quant forward: one warp per group ---- */
template <typename T, int KIND>
__global__ void __launch_bounds__(FQ_THREADS)
fq_fwd_kernel(const T* w, T* out, int64_t ngroups, int64_t g, lb_fmt fmt) {
    FQ_LOAD_FMT(sf, fmt);
    const int lane = (int)(threadIdx.x & 31);
    FQ_FOR_EACH_GROUP(gid) {
        const int64_t base = gid * g;
        lb_gstats st;
        lb_gparams p;
        if (!fq_group_setup(&sf, w, out, base, g, lane, &st, &p)) continue;
        for (int64_t i = lane; i < g; i += 32)
            lb_st(out, base + i, lb_quant_value_k(&sf, p, lb_ld(w, base + i), KIND));
    }
}

/* ---- fake-quant backward, ste="bitdistiller": bwd_group of the CPU, one warp per group ----
 * pass 1: statistics and scales; pass 2: per-element contributions to dL/d(scale) (lb_grad_elem,
 * split into s+ / s- sums for LVL2) and the tie counts at max / min / max|x|; pass 3: the direct
 * term plus the evenly split scale gradient on the tied elements, added in the CPU's order
 * (the max's share first, then the min's), with the CPU's eps masks and skip of zero shares. */
template <typename T, int KIND>
__global__ void __launch_bounds__(FQ_THREADS)
fq_bwd_kernel(const T* grad, const T* w, T* gw, int64_t ngroups, int64_t g, lb_fmt fmt) {
    FQ_LOAD_FMT(sf, fmt);
    /* INT asym and LVL2 route the scale gradient through max and min; INT sym and LVL1 through
     * max|x| (times sign(x)). */
    const bool two_sided = lb_kind_two_sided(KIND) != 0;
    const int lane = (int)(threadIdx.x & 31);
    FQ_FOR_EACH_GROUP(gid) {
        const int64_t base = gid * g;
        lb_gstats st;
        lb_gparams p;
        if (!fq_group_setup(&sf, w, gw, base, g, lane, &st, &p)) continue;

        /* pass 2 */
        float s1 = 0.0f, s2 = 0.0f;  /* s1: the (only / s+) scale; s2: s- (LVL2) */
        long long n_hi = 0, n_lo = 0; /* ties at max (or max|x|) and at min */
        for (int64_t i = lane; i < g; i += 32) {
            const float x = lb_ld(w, base + i), gq = lb_ld(grad, base + i);
            float gx;
            int neg;
            const float d = lb_grad_elem_k(&sf, p, x, gq, &gx, &neg, KIND);
            if (KIND == LB_KIND_LVL2 && neg) s2 += d;
            else s1 += d;
            if (two_sided) {
                n_hi += (x == st.mx);
                n_lo += (x == st.mn);
            } else {
                n_hi += (fabsf(x) == st.amax);
            }
        }
        s1 = fq_warp_sum(s1);
        if (KIND == LB_KIND_LVL2) s2 = fq_warp_sum(s2);
        n_hi = fq_warp_sum_ll(n_hi);
        if (two_sided) n_lo = fq_warp_sum_ll(n_lo);

        /* the scale gradients (formats.h) and the share each tied element receives */
        float share_hi, share_lo;
        lb_scale_grad_k(&sf, st, s1, s2, &share_hi, &share_lo, KIND);
        const bool add_hi = n_hi != 0 && share_hi != 0.0f;
        const bool add_lo = two_sided && n_lo != 0 && share_lo != 0.0f;
        const float each_hi = add_hi ? share_hi / (float)n_hi : 0.0f;
        const float each_lo = add_lo ? share_lo / (float)n_lo : 0.0f;

        /* pass 3 */
        for (int64_t i = lane; i < g; i += 32) {
            const float x = lb_ld(w, base + i), gq = lb_ld(grad, base + i);
            float gx;
            int neg;
            (void)lb_grad_elem_k(&sf, p, x, gq, &gx, &neg, KIND);
            if (two_sided) {
                if (add_hi && x == st.mx) gx += each_hi;
                if (add_lo && x == st.mn) gx += each_lo;
            } else if (add_hi && fabsf(x) == st.amax) {
                gx += x > 0.0f ? each_hi : (x < 0.0f ? -each_hi : 0.0f);
            }
            lb_st(gw, base + i, gx);
        }
    }
}

/* ---- quantize, step 1: per-group scales / zero points / NaN-Inf count (one warp per group) ----
 * Scales are written for every group, bad ones included (from the same statistics the CPU gets,
 * as NaN is ignored by the comparisons), like the CPU does. */
template <typename T>
__global__ void __launch_bounds__(FQ_THREADS)
fq_qstats_kernel(const T* w, int64_t ngroups, int64_t g, lb_fmt fmt, float* scales,
                 uint8_t* zeros, int32_t* bad_groups) {
    FQ_LOAD_FMT(sf, fmt);
    const int lane = (int)(threadIdx.x & 31);
    FQ_FOR_EACH_GROUP(gid) {
        const lb_gstats st = fq_warp_stats(w + gid * g, g, lane);
        const lb_gparams p = lb_group_params(&sf, st);
        if (lane == 0) {
            if (st.bad && bad_groups) atomicAdd(bad_groups, 1);
            lb_store_gparams(&sf, p, scales, zeros, gid);
        }
    }
}

/* ---- quantize, step 2: pack the codes ----
 * Layout (lowbit's own, the one of lb_put_code / lb_get_code in csrc/formats.h): the K codes
 * of a row form a little-endian bitstream, code j of the row occupying bits [j*b, (j+1)*b)
 * counting from bit 0 of the row's byte 0; rows are padded to whole bytes, row stride
 * lb_row_bytes(K, b) = ceil(K*b / 8); padding bits are 0. Codes: INT asym q in [0, 2^b - 1];
 * INT sym q + 2^(b-1); level kinds the index into the level table (lb_encode).
 * One thread assembles one whole byte from the (up to 4) codes overlapping it, reading the
 * group parameters step 1 stored, so every byte has exactly one writer: no atomics and no
 * zero-fill of the buffer are needed, whatever b and g (codes may straddle bytes and groups may
 * share bytes when g*b % 8 != 0). */
template <typename T>
__global__ void __launch_bounds__(FQ_THREADS)
fq_pack_kernel(const T* w, int64_t N, int64_t K, int64_t g, lb_fmt fmt, const float* scales,
               const uint8_t* zeros, uint8_t* codes) {
    FQ_LOAD_FMT(sf, fmt);
    const int bits = sf.bits;
    const int64_t G = K / g;
    const int64_t rb = lb_row_bytes(K, bits);
    const int64_t total = N * rb;
    const uint32_t mask = (1u << bits) - 1u;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = t / rb;
        const int64_t bit0 = (t - r * rb) * 8;   /* first bit of this byte within the row */
        const int64_t j0 = bit0 / bits;          /* the code holding bit0 */
        int64_t j1 = (bit0 + 7) / bits;          /* the code holding the byte's last bit */
        if (j1 > K - 1) j1 = K - 1;              /* past the row's last code: padding (0) */
        uint32_t byte = 0;
        for (int64_t j = j0; j <= j1; ++j) {
            const int64_t gidx = r * G + j / g;
            const lb_gparams p = lb_load_gparams(&sf, scales, zeros, gidx);
            const uint32_t code = (uint32_t)lb_encode(&sf, p, lb_ld(w, r * K + j)) & mask;
            const int pos = (int)(j * bits - bit0); /* in (-bits, 8) */
            byte |= pos >= 0 ? code << pos : code >> (-pos);
        }
        codes[t] = (uint8_t)(byte & 0xffu);
    }
}

/* ---- dequantize: one thread per element (dequant_rows of the CPU) ---- */
template <typename T>
__global__ void __launch_bounds__(FQ_THREADS)
fq_dequant_kernel(const uint8_t* codes, const float* scales, const uint8_t* zeros, T* out,
                  int64_t N, int64_t K, int64_t g, lb_fmt fmt) {
    FQ_LOAD_FMT(sf, fmt);
    const int bits = sf.bits;
    const int64_t G = K / g;
    const int64_t rb = lb_row_bytes(K, bits);
    const int64_t total = N * K;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = idx / K;
        const int64_t col = idx - r * K;
        const lb_gparams p = lb_load_gparams(&sf, scales, zeros, r * G + col / g);
        const int code = lb_get_code(codes + r * rb, col, bits);
        lb_st(out, idx, lb_decode(&sf, p, code));
    }
}

/* ---- llama.cpp's block types (FORMATS.md 1.8, the LB_STORE_BLOCKS rows): one thread per
 * block, running the LB_HD block functions of csrc/formats_ggml.h that the CPU kernels run (so
 * values, codes and block bytes are bit-identical to the CPU's; the backward's sums are the
 * same sequential float32 sums too). The block is staged in the thread's local memory. Block b
 * of the contiguous (N, K) tensor holds elements [b * block, (b + 1) * block). ---- */
#define FQ_FOR_EACH_BLOCK(b)                                                              \
    for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nblocks;         \
         b += (int64_t)gridDim.x * blockDim.x)

template <typename T>
__global__ void __launch_bounds__(FQ_THREADS)
fq_blk_fwd_kernel(const T* w, T* out, int64_t nblocks, lb_fmt f) {
    FQ_FOR_EACH_BLOCK(b) {
        float x[LB_QK_MAX], q[LB_QK_MAX];
        const int64_t base = b * f.block;
        for (int i = 0; i < f.block; ++i) x[i] = lb_ld(w, base + i);
        lb_blk_fake_quant(&f, x, q);
        for (int i = 0; i < f.block; ++i) lb_st(out, base + i, q[i]);
    }
}

template <typename T>
__global__ void __launch_bounds__(FQ_THREADS)
fq_blk_bwd_kernel(const T* grad, const T* w, T* gw, int64_t nblocks, lb_fmt f) {
    FQ_FOR_EACH_BLOCK(b) {
        float x[LB_QK_MAX], g[LB_QK_MAX], gx[LB_QK_MAX];
        const int64_t base = b * f.block;
        for (int i = 0; i < f.block; ++i) {
            x[i] = lb_ld(w, base + i);
            g[i] = lb_ld(grad, base + i);
        }
        lb_blk_grad(&f, x, g, gx);
        for (int i = 0; i < f.block; ++i) lb_st(gw, base + i, gx[i]);
    }
}

template <typename T>
__global__ void __launch_bounds__(FQ_THREADS)
fq_blk_quant_kernel(const T* w, uint8_t* codes, int64_t nblocks, lb_fmt f, int32_t* bad) {
    FQ_FOR_EACH_BLOCK(b) {
        float x[LB_QK_MAX];
        const int64_t base = b * f.block;
        for (int i = 0; i < f.block; ++i) x[i] = lb_ld(w, base + i);
        if (lb_blk_quantize(&f, x, codes + b * f.type_size) && bad) atomicAdd(bad, 1);
    }
}

template <typename T>
__global__ void __launch_bounds__(FQ_THREADS)
fq_blk_dequant_kernel(const uint8_t* codes, T* out, int64_t nblocks, lb_fmt f) {
    FQ_FOR_EACH_BLOCK(b) {
        float y[LB_QK_MAX];
        const int64_t base = b * f.block;
        lb_blk_dequantize(&f, codes + b * f.type_size, y);
        for (int i = 0; i < f.block; ++i) lb_st(out, base + i, y[i]);
    }
}

/* ---- launch helpers ---- */
static int fq_grid(int64_t work, int64_t per_block) {
    int64_t b = (work + per_block - 1) / per_block;
    if (b < 1) b = 1;
    return (int)(b < FQ_MAX_BLOCKS ? b : FQ_MAX_BLOCKS);
}

/* Shape/format checks shared by the launchers (the glue has checked already): f is a resolved
 * row (lb_fmt_init) of the codes storage these kernels pack. */
static bool fq_args_ok(int64_t N, int64_t K, int64_t g, const lb_fmt* f) {
    if (!f || N < 0 || K <= 0 || g <= 0 || K % g != 0) return false;
    if (f->bits < 1 || f->bits > LB_MAX_BITS) return false;
    if (f->storage == LB_STORE_BLOCKS)
        return g == f->block && f->block > 0 && f->block <= LB_QK_MAX && f->sub_block > 0 &&
               f->nsub * f->sub_block == f->block && f->nsub <= LB_NSUB_MAX;
    if (f->storage != LB_STORE_CODES) return false;
    if (f->scale_dt < 0 || f->scale_dt >= LB_DT_COUNT) return false;
    return f->kind >= 0 && f->kind < LB_KIND_COUNT;
}

#define FQ_BY_KIND(kind, LAUNCH)                                    \
    switch (kind) {                                                 \
    case LB_KIND_INT_ASYM: LAUNCH(LB_KIND_INT_ASYM); break;         \
    case LB_KIND_INT_SYM: LAUNCH(LB_KIND_INT_SYM); break;           \
    case LB_KIND_LVL2: LAUNCH(LB_KIND_LVL2); break;                 \
    case LB_KIND_LVL1: LAUNCH(LB_KIND_LVL1); break;                 \
    default: return (int)cudaErrorInvalidValue;                     \
    }

template <typename T>
static int fq_forward_t(const void* w, void* out, int64_t ngroups, int64_t g, const lb_fmt* f,
                        cudaStream_t s) {
    const int grid = fq_grid(ngroups, FQ_WARPS);
    if (f->storage == LB_STORE_BLOCKS) { /* ngroups = the blocks */
        fq_blk_fwd_kernel<T><<<fq_grid(ngroups, FQ_THREADS), FQ_THREADS, 0, s>>>(
            (const T*)w, (T*)out, ngroups, *f);
        return (int)cudaGetLastError();
    }
#define FQ_LAUNCH(KIND) \
    fq_fwd_kernel<T, KIND><<<grid, FQ_THREADS, 0, s>>>((const T*)w, (T*)out, ngroups, g, *f)
    FQ_BY_KIND(f->kind, FQ_LAUNCH)
#undef FQ_LAUNCH
    return (int)cudaGetLastError();
}

template <typename T>
static int fq_backward_t(const void* grad, const void* w, void* gw, int64_t ngroups, int64_t g,
                         const lb_fmt* f, cudaStream_t s) {
    const int grid = fq_grid(ngroups, FQ_WARPS);
    if (f->storage == LB_STORE_BLOCKS) {
        fq_blk_bwd_kernel<T><<<fq_grid(ngroups, FQ_THREADS), FQ_THREADS, 0, s>>>(
            (const T*)grad, (const T*)w, (T*)gw, ngroups, *f);
        return (int)cudaGetLastError();
    }
#define FQ_LAUNCH(KIND)                                                                      \
    fq_bwd_kernel<T, KIND><<<grid, FQ_THREADS, 0, s>>>((const T*)grad, (const T*)w, (T*)gw, \
                                                       ngroups, g, *f)
    FQ_BY_KIND(f->kind, FQ_LAUNCH)
#undef FQ_LAUNCH
    return (int)cudaGetLastError();
}

template <typename T>
static int fq_quantize_t(const void* w, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                         uint8_t* codes, float* scales, uint8_t* zeros, int32_t* bad_groups,
                         cudaStream_t s) {
    const int64_t ngroups = N * (K / g);
    const int64_t nbytes = N * lb_row_bytes(K, f->bits);
    cudaError_t e;
    if (f->storage == LB_STORE_BLOCKS) { /* the GGUF blocks; no scales outside them */
        fq_blk_quant_kernel<T><<<fq_grid(ngroups, FQ_THREADS), FQ_THREADS, 0, s>>>(
            (const T*)w, codes, ngroups, *f, bad_groups);
        return (int)cudaGetLastError();
    }
    fq_qstats_kernel<T><<<fq_grid(ngroups, FQ_WARPS), FQ_THREADS, 0, s>>>(
        (const T*)w, ngroups, g, *f, scales, zeros, bad_groups);
    if ((e = cudaGetLastError()) != cudaSuccess) return (int)e;
    /* same stream: the pack kernel sees every scale / zero point step 1 wrote */
    fq_pack_kernel<T><<<fq_grid(nbytes, FQ_THREADS), FQ_THREADS, 0, s>>>(
        (const T*)w, N, K, g, *f, scales, zeros, codes);
    return (int)cudaGetLastError();
}

template <typename T>
static int fq_dequantize_t(const uint8_t* codes, const float* scales, const uint8_t* zeros,
                           void* out, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                           cudaStream_t s) {
    if (f->storage == LB_STORE_BLOCKS) {
        const int64_t nblocks = N * (K / g);
        fq_blk_dequant_kernel<T><<<fq_grid(nblocks, FQ_THREADS), FQ_THREADS, 0, s>>>(
            codes, (T*)out, nblocks, *f);
        return (int)cudaGetLastError();
    }
    fq_dequant_kernel<T><<<fq_grid(N * K, FQ_THREADS), FQ_THREADS, 0, s>>>(
        codes, scales, zeros, (T*)out, N, K, g, *f);
    return (int)cudaGetLastError();
}

/* ---- the extern "C" launchers of cuda/fake_quant.cuh ---- */
extern "C" {

int lb_fq_forward_cuda(const void* w, void* out, int dt, int64_t N, int64_t K, int64_t g,
                       const lb_fmt* f, void* stream) {
    if (!fq_args_ok(N, K, g, f)) return (int)cudaErrorInvalidValue;
    const int64_t ngroups = N * (K / g);
    if (ngroups == 0) return 0;
    cudaStream_t s = (cudaStream_t)stream;
    switch (dt) {
    case LB_DT_F32: return fq_forward_t<float>(w, out, ngroups, g, f, s);
    case LB_DT_BF16: return fq_forward_t<__nv_bfloat16>(w, out, ngroups, g, f, s);
    case LB_DT_F16: return fq_forward_t<__half>(w, out, ngroups, g, f, s);
    default: return (int)cudaErrorInvalidValue;
    }
}

int lb_fq_backward_cuda(const void* grad, const void* w, void* gw, int dt, int64_t N, int64_t K,
                        int64_t g, const lb_fmt* f, void* stream) {
    if (!fq_args_ok(N, K, g, f)) return (int)cudaErrorInvalidValue;
    const int64_t ngroups = N * (K / g);
    if (ngroups == 0) return 0;
    cudaStream_t s = (cudaStream_t)stream;
    switch (dt) {
    case LB_DT_F32: return fq_backward_t<float>(grad, w, gw, ngroups, g, f, s);
    case LB_DT_BF16: return fq_backward_t<__nv_bfloat16>(grad, w, gw, ngroups, g, f, s);
    case LB_DT_F16: return fq_backward_t<__half>(grad, w, gw, ngroups, g, f, s);
    default: return (int)cudaErrorInvalidValue;
    }
}

/* codes: N * lb_row_bytes(K, bits) bytes, every one written here (no zero-fill needed);
 * scales: float32 (N, G), or (N, G, 2) [s+, s-] for LB_KIND_LVL2; zeros: uint8 (N, G), required
 * for LB_KIND_INT_ASYM (the pack step reads the zero points back), NULL or ignored-but-written
 * otherwise; bad_groups: device int32 counter the caller zeroed, or NULL. */
int lb_quantize_cuda(const void* w, int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                     uint8_t* codes, float* scales, uint8_t* zeros, int32_t* bad_groups,
                     void* stream) {
    if (!fq_args_ok(N, K, g, f) || !codes) return (int)cudaErrorInvalidValue;
    if (f->storage == LB_STORE_CODES && !scales) return (int)cudaErrorInvalidValue;
    if (f->kind == LB_KIND_INT_ASYM && !zeros) return (int)cudaErrorInvalidValue;
    if (N == 0) return 0;
    cudaStream_t s = (cudaStream_t)stream;
    switch (dt) {
    case LB_DT_F32:
        return fq_quantize_t<float>(w, N, K, g, f, codes, scales, zeros, bad_groups, s);
    case LB_DT_BF16:
        return fq_quantize_t<__nv_bfloat16>(w, N, K, g, f, codes, scales, zeros, bad_groups, s);
    case LB_DT_F16:
        return fq_quantize_t<__half>(w, N, K, g, f, codes, scales, zeros, bad_groups, s);
    default: return (int)cudaErrorInvalidValue;
    }
}

int lb_dequantize_cuda(const uint8_t* codes, const float* scales, const uint8_t* zeros, void* out,
                       int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f, void* stream) {
    if (!fq_args_ok(N, K, g, f) || !codes) return (int)cudaErrorInvalidValue;
    if (f->storage == LB_STORE_CODES && !scales) return (int)cudaErrorInvalidValue;
    if (N == 0) return 0;
    cudaStream_t s = (cudaStream_t)stream;
    switch (dt) {
    case LB_DT_F32: return fq_dequantize_t<float>(codes, scales, zeros, out, N, K, g, f, s);
    case LB_DT_BF16:
        return fq_dequantize_t<__nv_bfloat16>(codes, scales, zeros, out, N, K, g, f, s);
    case LB_DT_F16: return fq_dequantize_t<__half>(codes, scales, zeros, out, N, K, g, f, s);
    default: return (int)cudaErrorInvalidValue;
    }
}

} /* extern "C" */
