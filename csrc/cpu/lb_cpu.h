/* csrc/cpu/lb_cpu.h: what every CPU kernel file shares and the only way a kernel reaches the
 * outside: the runtime hook (thread pool, thread count, and the CPU dispatch: the kernel table of
 * every family for the ISA in use; csrc/module.c points the hook at torch's intra-op pool at
 * load, its defaults run serially so kernels also run in a plain C program), the ISA codes and
 * the x86 guard, the target attributes of the ISA variants (no host-specific -march flag), dtype
 * conversion of row segments and the fixed-lane reductions. Includes no torch header. */
#ifndef LOWBIT_CPU_H
#define LOWBIT_CPU_H

#include <stdint.h>
#include <string.h>

#include "../formats.h"

/* x86 SIMD variants are built on x86 unless LB_NO_X86 is defined (tests/c builds the kernels
 * that way too, proving the scalar twins stand alone, as on any other architecture). */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(LB_NO_X86)
#define LB_X86 1
#else
#define LB_X86 0
#endif

/* CPU ISA codes (lowbit._C.ISA_*, set with lb_isa_set): the kernel variants in use. The two VNNI
 * codes run the AVX2 / AVX-512 variants of every kernel, except that the qlinear integer-dot
 * kernels use vpdpbusd (AVX-VNNI on ymm, AVX-512 VNNI on zmm) where the plain codes use
 * vpmaddubsw + vpmaddwd (what an AVX2-only CPU such as AMD Zen 3 has). */
enum {
    LB_ISA_SCALAR = 0,
    LB_ISA_AVX2 = 1,
    LB_ISA_AVX512 = 2,
    LB_ISA_AVXVNNI = 3,
    LB_ISA_AVX512VNNI = 4,
    LB_ISA_COUNT = 5
};
/* Their names, in code order (lowbit._C.ISA_NAMES, comma-separated). */
#define LB_ISA_NAMES "scalar,avx2,avx512,avxvnni,avx512vnni"

typedef void (*lb_parallel_fn)(int64_t begin, int64_t end, void* ctx);

/* ---- the CPU dispatch ----
 * Each op family has one kernel table: a struct of its worker entry points, defined in the
 * family's csrc/cpu/<stem>_impl.h (struct lb_<fam>_kernels: fq = fake_quant, clip = clip_search,
 * kl = kl_loss, ql = qlinear, s24 = sparse24, qlb = qlinear_blk). Each ISA variant of the
 * family fills one instance: the scalar twin in csrc/cpu/<stem>.c (lb_<fam>_kernels_scalar),
 * the others in their arch file csrc/cpu/arch/<arch>/<stem>_<isa>.c (lb_<fam>_kernels_<isa>). The ISA rows of
 * csrc/cpu/runtime.c say, per ISA code, which instance of every family it runs and how to test
 * for it; lb_isa_set picks one row for all families at once, and a kernel driver calls only
 * lb_rt.<fam>->worker. A family's drivers and shared helpers (csrc/cpu/<stem>.c,
 * csrc/cpu/<stem>_common.c) never test the ISA.
 * Adding an architecture (say NEON): one csrc/cpu/arch/arm/<stem>_neon.c per family defining
 * lb_<fam>_kernels_neon (from the family's bodies, as the x86 files do), an ISA code and name
 * above, and its row in runtime.c. */
#define LB_CPU_FAMILIES(X) X(fq) X(clip) X(kl) X(ql) X(s24) X(qlb)
#define LB_CPU_DECLARE_TABLE(fam) struct lb_##fam##_kernels;
LB_CPU_FAMILIES(LB_CPU_DECLARE_TABLE)
#undef LB_CPU_DECLARE_TABLE

/* The runtime hook. parallel_for(n, grain, fn, ctx) must run fn over a partition of [0, n)
 * (NULL: one call fn(0, n)); num_threads() sizes work splits (NULL: 1). */
typedef struct {
    int isa; /* the ISA code in use (LB_ISA_*); its row set the tables below */
    void (*parallel_for)(int64_t n, int64_t grain, lb_parallel_fn fn, void* ctx);
    int (*num_threads)(void);
#define LB_CPU_TABLE_FIELD(fam) const struct lb_##fam##_kernels* fam;
    LB_CPU_FAMILIES(LB_CPU_TABLE_FIELD)
#undef LB_CPU_TABLE_FIELD
} lb_runtime;
extern lb_runtime lb_rt;

/* Can this CPU run the ISA (cpuid; scalar always). */
int lb_isa_supported(int isa);
/* The best ISA this CPU runs. */
int lb_isa_best(void);
/* Selects the ISA code `isa` (one lb_isa_supported accepts) for every family; lb_isa_code() is
 * the code in use. */
void lb_isa_set(int isa);
int lb_isa_code(void);
/* Runs fn over [0, n) through the hook; n <= grain (or no hook) runs it in the calling thread. */
void lb_parallel(int64_t n, int64_t grain, lb_parallel_fn fn, void* ctx);
int lb_num_threads(void);

#define LB_INLINE static inline __attribute__((always_inline))
/* Reductions run in this many fixed lanes so the variants that share a body sum alike. */
#define LB_LANES 16

/* The ISA variants' function attributes: the scalar twin with vectorisation off, and the x86
 * targets (the arch files compile the families' bodies with them). */
#define LB_SCALAR_ATTR __attribute__((optimize("no-tree-vectorize")))
#if LB_X86
#define LB_AVX2_ATTR __attribute__((target("avx2,fma,f16c")))
#define LB_AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#endif

/* ---- float32 <-> storage dtype (LB_DT_*), one element or a row segment ----
 * Union punning (defined in C): gcc vectorises it, where a memcpy of a float into an int can
 * stay a memory access that blocks vectorisation. */
typedef union {
    float f;
    uint32_t u;
} lb_pun;
LB_INLINE float lb_u32_as_f32(uint32_t u) {
    lb_pun p;
    p.u = u;
    return p.f;
}
LB_INLINE uint32_t lb_f32_as_u32(float f) {
    lb_pun p;
    p.f = f;
    return p.u;
}

LB_INLINE float lb_ld1(const void* p, int dt, int64_t i) {
    if (dt == LB_DT_F32) return ((const float*)p)[i];
    if (dt == LB_DT_BF16) return lb_u32_as_f32((uint32_t)((const uint16_t*)p)[i] << 16);
    return (float)((const _Float16*)p)[i];
}
LB_INLINE void lb_st1(void* p, int dt, int64_t i, float v) {
    if (dt == LB_DT_F32) ((float*)p)[i] = v;
    else if (dt == LB_DT_BF16) ((uint16_t*)p)[i] = lb_f32_to_bf16(v);
    else ((_Float16*)p)[i] = (_Float16)v;
}
/* dst[0, n) = scale * src[off, off + n) (scale 1 is exact). */
LB_INLINE void lb_load_row(const void* src, int dt, int64_t off, int64_t n, float scale,
                           float* dst) {
    if (dt == LB_DT_F32) {
        const float* s = (const float*)src + off;
        if (scale == 1.0f) memcpy(dst, s, (size_t)n * sizeof(float));
        else for (int64_t i = 0; i < n; ++i) dst[i] = s[i] * scale;
    } else if (dt == LB_DT_BF16) {
        const uint16_t* s = (const uint16_t*)src + off;
        for (int64_t i = 0; i < n; ++i) dst[i] = lb_u32_as_f32((uint32_t)s[i] << 16) * scale;
    } else {
        const _Float16* s = (const _Float16*)src + off;
        for (int64_t i = 0; i < n; ++i) dst[i] = (float)s[i] * scale;
    }
}
/* dst[off, off + n) = src[0, n) rounded to dt (round to nearest even). */
LB_INLINE void lb_store_row(void* dst, int dt, int64_t off, int64_t n, const float* src) {
    if (dt == LB_DT_F32) {
        memcpy((float*)dst + off, src, (size_t)n * sizeof(float));
    } else if (dt == LB_DT_BF16) {
        uint16_t* d = (uint16_t*)dst + off;
        for (int64_t i = 0; i < n; ++i) d[i] = lb_f32_to_bf16(src[i]);
    } else {
        _Float16* d = (_Float16*)dst + off;
        for (int64_t i = 0; i < n; ++i) d[i] = (_Float16)src[i];
    }
}

/* Sum in LB_LANES fixed lanes, then the lanes in order: the same result on every ISA. */
LB_INLINE float lb_lane_sum(const float* c, int64_t n) {
    float acc[LB_LANES];
    int64_t i = 0;
    float s = 0.0f;
    for (int j = 0; j < LB_LANES; ++j) acc[j] = 0.0f;
    for (; i + LB_LANES <= n; i += LB_LANES)
        for (int j = 0; j < LB_LANES; ++j) acc[j] += c[i + j];
    for (int j = 0; i < n; ++i, ++j) acc[j] += c[i];
    for (int j = 0; j < LB_LANES; ++j) s += acc[j];
    return s;
}

#endif /* LOWBIT_CPU_H */
