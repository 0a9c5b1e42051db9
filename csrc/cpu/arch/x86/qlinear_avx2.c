/* csrc/cpu/arch/x86/qlinear_avx2.c: the AVX2 variant of the qlinear CPU kernels: the 16-lane
 * vector abstraction of csrc/cpu/qlinear_body.h on two ymm registers per 16 lanes, and the float
 * body compiled with it into the lb_ql_{gemv,gemm,deqt}_worker_avx2 entry points; the integer-dot
 * body (csrc/cpu/qlinear_int_body.h) on 8-lane ymm with vpmaddubsw + vpmaddwd (no VNNI: the AMD
 * Zen 3 path; qlinear_avxvnni.c is the same with vpdpbusd) into lb_ql_int_tiles_avx2; together
 * the kernel table lb_ql_kernels_avx2 (csrc/cpu/qlinear_impl.h). x86 only: elsewhere the file is
 * empty and the scalar twin runs. */
#include "../../qlinear_impl.h"

#if LB_X86
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
typedef struct { __m256 a, b; } ql_af;
typedef struct { __m256i a, b; } ql_ai;
typedef struct { __m256 lo, hi; } ql_at;
LB_INLINE ql_af a2_zero(void) { ql_af r = {_mm256_setzero_ps(), _mm256_setzero_ps()}; return r; }
LB_INLINE ql_af a2_set1(float x) { ql_af r = {_mm256_set1_ps(x), _mm256_set1_ps(x)}; return r; }
LB_INLINE ql_af a2_load(const float* p) { ql_af r = {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; return r; }
LB_INLINE void a2_store(float* p, ql_af v) { _mm256_storeu_ps(p, v.a); _mm256_storeu_ps(p + 8, v.b); }
LB_INLINE ql_af a2_fma(ql_af x, ql_af y, ql_af z) { ql_af r = {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; return r; }
LB_INLINE ql_af a2_add(ql_af x, ql_af y) { ql_af r = {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; return r; }
LB_INLINE ql_af a2_sub(ql_af x, ql_af y) { ql_af r = {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; return r; }
LB_INLINE ql_af a2_mul(ql_af x, ql_af y) { ql_af r = {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; return r; }
LB_INLINE ql_af a2_selge0(ql_af w, ql_af x, ql_af y) {
    __m256 z = _mm256_setzero_ps();
    ql_af r = {_mm256_blendv_ps(y.a, x.a, _mm256_cmp_ps(w.a, z, _CMP_GE_OQ)),
               _mm256_blendv_ps(y.b, x.b, _mm256_cmp_ps(w.b, z, _CMP_GE_OQ))};
    return r;
}
LB_INLINE ql_ai a2_iload(const int32_t* p) { ql_ai r = {_mm256_loadu_si256((const __m256i*)p), _mm256_loadu_si256((const __m256i*)(p + 8))}; return r; }
LB_INLINE ql_ai a2_srli(ql_ai x, int n) { ql_ai r = {_mm256_srli_epi32(x.a, n), _mm256_srli_epi32(x.b, n)}; return r; }
LB_INLINE ql_ai a2_slli(ql_ai x, int n) { ql_ai r = {_mm256_slli_epi32(x.a, n), _mm256_slli_epi32(x.b, n)}; return r; }
LB_INLINE ql_ai a2_merge3(ql_ai lo, ql_ai h) {
    __m256i m = _mm256_set1_epi32(3);
    ql_ai r = {_mm256_or_si256(_mm256_and_si256(lo.a, m), _mm256_andnot_si256(m, h.a)),
               _mm256_or_si256(_mm256_and_si256(lo.b, m), _mm256_andnot_si256(m, h.b))};
    return r;
}
LB_INLINE ql_ai a2_and255(ql_ai x) { __m256i m = _mm256_set1_epi32(255); ql_ai r = {_mm256_and_si256(x.a, m), _mm256_and_si256(x.b, m)}; return r; }
LB_INLINE ql_af a2_cvt(ql_ai x) { ql_af r = {_mm256_cvtepi32_ps(x.a), _mm256_cvtepi32_ps(x.b)}; return r; }
LB_INLINE ql_at a2_tmake(const float* t) { ql_at r = {_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8)}; return r; }
/* 16-entry lookup: vpermps of each half-table, blended on bit 3 of the code. */
LB_INLINE __m256 a2_look8(__m256i c, ql_at t) {
    __m256 lo = _mm256_permutevar8x32_ps(t.lo, c), hi = _mm256_permutevar8x32_ps(t.hi, c);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
}
LB_INLINE ql_af a2_look(ql_ai c, ql_at t) { ql_af r = {a2_look8(c.a, t), a2_look8(c.b, t)}; return r; }

#define QL(name) lb_ql_##name##_avx2
#define QL_ATTR
#define QL_MR 3
#define QL_UNROLL32 _Pragma("GCC unroll 32")
#define QL_UNROLL16 _Pragma("GCC unroll 16")
#define QL_UNROLL8 _Pragma("GCC unroll 8")
#define ql_vf ql_af
#define ql_vi ql_ai
#define ql_vt ql_at
#define VF_ZERO a2_zero
#define VF_SET1 a2_set1
#define VF_LOAD a2_load
#define VF_STORE a2_store
#define VF_FMA a2_fma
#define VF_ADD a2_add
#define VF_SUB a2_sub
#define VF_MUL a2_mul
#define VF_SELGE0 a2_selge0
#define VI_LOAD a2_iload
#define VI_SRLI a2_srli
#define VI_SLLI a2_slli
#define VI_MERGE3 a2_merge3
#define VI_AND255 a2_and255
#define VI_CVT a2_cvt
#define VT_MAKE a2_tmake
#define VT_LOOK a2_look
#include "../../qlinear_body.h"

#define QI(name) lb_ql_##name##_avx2
#define QI_VNNI 0
#include "qlinear_int_avx2.h"

/* ql_act_rows_body (csrc/cpu/qlinear_impl.h) vectorised for this ISA */
void lb_ql_act_rows_avx2(int64_t a, int64_t b, void* ctx) { ql_act_rows_body(a, b, ctx); }

const struct lb_ql_kernels lb_ql_kernels_avx2 = {
    lb_ql_gemv_worker_avx2, lb_ql_gemm_worker_avx2, lb_ql_deqt_worker_avx2,
    lb_ql_int_tiles_avx2, lb_ql_act_rows_avx2};
#pragma GCC pop_options
#endif /* LB_X86 */
