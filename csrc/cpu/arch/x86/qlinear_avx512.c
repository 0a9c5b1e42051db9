/* csrc/cpu/arch/x86/qlinear_avx512.c: the AVX-512 variant of the qlinear CPU kernels: the
 * 16-lane vector abstraction of csrc/cpu/qlinear_body.h on one zmm register per 16 lanes, and the
 * float body compiled with it into the lb_ql_{gemv,gemm,deqt}_worker_avx512 entry points; the
 * integer-dot body (csrc/cpu/qlinear_int_body.h) with vpmaddubsw + vpmaddwd (AVX-512BW without
 * VNNI; qlinear_avx512vnni.c is the same with vpdpbusd) into lb_ql_int_tiles_avx512; together the
 * kernel table lb_ql_kernels_avx512 (csrc/cpu/qlinear_impl.h). x86 only: elsewhere the file is
 * empty and the scalar twin runs. */
#include "../../qlinear_impl.h"

#if LB_X86
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
LB_INLINE __m512 z5_selge0(__m512 w, __m512 a, __m512 b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(w, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
}
/* (lo & 3) | (h & ~3) in one vpternlogd (imm 0xE4: C ? A : B, C = the mask 3). */
LB_INLINE __m512i z5_merge3(__m512i lo, __m512i h) {
    return _mm512_ternarylogic_epi32(lo, h, _mm512_set1_epi32(3), 0xE4);
}
LB_INLINE __m512 z5_look(__m512i c, __m512 t) { return _mm512_permutexvar_ps(c, t); }
LB_INLINE __m512i z5_iload(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
LB_INLINE __m512i z5_and255(__m512i a) { return _mm512_and_si512(a, _mm512_set1_epi32(255)); }
LB_INLINE __m512i z5_srli(__m512i a, int n) { return _mm512_srli_epi32(a, (unsigned)n); }
LB_INLINE __m512i z5_slli(__m512i a, int n) { return _mm512_slli_epi32(a, (unsigned)n); }

#define QL(name) lb_ql_##name##_avx512
#define QL_ATTR
#define QL_MR 6
#define QL_UNROLL32 _Pragma("GCC unroll 32")
#define QL_UNROLL16 _Pragma("GCC unroll 16")
#define QL_UNROLL8 _Pragma("GCC unroll 8")
#define ql_vf __m512
#define ql_vi __m512i
#define ql_vt __m512
#define VF_ZERO _mm512_setzero_ps
#define VF_SET1 _mm512_set1_ps
#define VF_LOAD _mm512_loadu_ps
#define VF_STORE _mm512_storeu_ps
#define VF_FMA _mm512_fmadd_ps
#define VF_ADD _mm512_add_ps
#define VF_SUB _mm512_sub_ps
#define VF_MUL _mm512_mul_ps
#define VF_SELGE0 z5_selge0
#define VI_LOAD z5_iload
#define VI_SRLI z5_srli
#define VI_SLLI z5_slli
#define VI_MERGE3 z5_merge3
#define VI_AND255 z5_and255
#define VI_CVT _mm512_cvtepi32_ps
#define VT_MAKE _mm512_loadu_ps
#define VT_LOOK z5_look
#include "../../qlinear_body.h"

#define QI(name) lb_ql_##name##_avx512
#define QI_VNNI 0
#include "qlinear_int_avx512.h"

/* ql_act_rows_body (csrc/cpu/qlinear_impl.h) vectorised for this ISA */
void lb_ql_act_rows_avx512(int64_t a, int64_t b, void* ctx) { ql_act_rows_body(a, b, ctx); }

const struct lb_ql_kernels lb_ql_kernels_avx512 = {
    lb_ql_gemv_worker_avx512, lb_ql_gemm_worker_avx512, lb_ql_deqt_worker_avx512,
    lb_ql_int_tiles_avx512, lb_ql_act_rows_avx512};
#pragma GCC pop_options
#endif /* LB_X86 */
