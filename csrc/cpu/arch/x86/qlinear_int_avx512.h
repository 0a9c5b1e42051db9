/* csrc/cpu/arch/x86/qlinear_int_avx512.h: the integer-dot body of the qlinear kernels
 * (csrc/cpu/qlinear_int_body.h) on 16 lanes of zmm, included by qlinear_avx512.c (QI_VNNI 0:
 * the 4-way u8 x s8 dot product as vpmaddubsw + vpmaddwd, exact as in qlinear_int_avx2.h) and
 * qlinear_avx512vnni.c (QI_VNNI 1: vpdpbusd), inside their target pragma and with QI(name)
 * defined. Not a standalone header. */
LB_INLINE __m512i q5_set1(int32_t x) { return _mm512_set1_epi32(x); }
LB_INLINE __m512i q5_load(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
LB_INLINE __m512i q5_srli(__m512i a, int n) { return _mm512_srli_epi32(a, (unsigned)n); }
LB_INLINE __m512i q5_slli(__m512i a, int n) { return _mm512_slli_epi32(a, (unsigned)n); }
LB_INLINE __m512i q5_tmake(const uint8_t* t) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)t));
}
LB_INLINE __m512i q5_lut(__m512i a, __m512i t) { return _mm512_shuffle_epi8(t, a); }
#if QI_VNNI
LB_INLINE __m512i q5_dot(__m512i acc, __m512i w, int32_t x) {
    return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(x));
}
#define q5_dot8 q5_dot
#else
LB_INLINE __m512i q5_dot(__m512i acc, __m512i w, int32_t x) {
    const __m512i p = _mm512_maddubs_epi16(w, _mm512_set1_epi32(x));
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
}
LB_INLINE __m512i q5_dot8(__m512i acc, __m512i w, int32_t x) {
    const __m512i m = _mm512_set1_epi8(15), xb = _mm512_set1_epi32(x), one = _mm512_set1_epi16(1);
    const __m512i lo = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_and_si512(w, m), xb), one);
    const __m512i hi = _mm512_madd_epi16(
        _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi32(w, 4), m), xb), one);
    return _mm512_add_epi32(acc, _mm512_add_epi32(lo, _mm512_slli_epi32(hi, 4)));
}
#endif

/* A zero accumulator per K-block and row: a vpxord zeroing idiom (no execution port), where a
 * hoisted zero costs a register copy (1 of 12 vector ops of a batched pass) per block. */
LB_INLINE __m512i q5_zacc(void) {
    __m512i z;
    __asm__ volatile("vpxord %0, %0, %0" : "=v"(z)); /* volatile: never CSEd into a copy */
    return z;
}
#define QV_ZACC q5_zacc
#define QI_ATTR
#define QI_UNROLL8 _Pragma("GCC unroll 8")
#define QVL 16
#define QI_MB_OFF 8
#define QI_MB_PN 4
#define QI_MB_OFF_BIG 12
#define QI_MB_PN_BIG 6
#define ql_qv __m512i
#define ql_qg __m512
#define ql_qt __m512i
#define QV_LOAD q5_load
#define QV_ZERO _mm512_setzero_si512
#define QV_SET1 q5_set1
#define QV_SRLI q5_srli
#define QV_SLLI q5_slli
#define QV_AND _mm512_and_si512
#define QV_OR _mm512_or_si512
#define QV_LUT q5_lut
#define QV_DOT q5_dot
#define QV_DOT8 q5_dot8
#define QV_CVT _mm512_cvtepi32_ps
#define QT_MAKE q5_tmake
#define QG_ZERO _mm512_setzero_ps
#define QG_SET1 _mm512_set1_ps
#define QG_LOAD _mm512_loadu_ps
#define QG_STORE _mm512_storeu_ps
#define QG_FMA _mm512_fmadd_ps
#define QG_FNMA _mm512_fnmadd_ps
#include "../../qlinear_int_body.h"
