/* csrc/cpu/arch/x86/qlinear_int_avx2.h: the integer-dot body of the qlinear kernels
 * (csrc/cpu/qlinear_int_body.h) on 8 lanes of ymm, included by qlinear_avx2.c (QI_VNNI 0: the
 * 4-way u8 x s8 dot product as vpmaddubsw + vpmaddwd, exact: codes and table values are at most
 * 127 except 8-bit codes, which are split into nibbles, and |activation| <= 127, so no pair sum
 * saturates) and qlinear_avxvnni.c (QI_VNNI 1: vpdpbusd, AVX-VNNI), inside their target pragma
 * and with QI(name) defined. Not a standalone header. */
LB_INLINE __m256i q2_set1(int32_t x) { return _mm256_set1_epi32(x); }
LB_INLINE __m256i q2_load(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
LB_INLINE __m256i q2_srli(__m256i a, int n) { return _mm256_srli_epi32(a, n); }
LB_INLINE __m256i q2_slli(__m256i a, int n) { return _mm256_slli_epi32(a, n); }
LB_INLINE __m256i q2_tmake(const uint8_t* t) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)t));
}
LB_INLINE __m256i q2_lut(__m256i a, __m256i t) { return _mm256_shuffle_epi8(t, a); }
#if QI_VNNI
LB_INLINE __m256i q2_dot(__m256i acc, __m256i w, int32_t x) {
    return _mm256_dpbusd_avx_epi32(acc, w, _mm256_set1_epi32(x));
}
#define q2_dot8 q2_dot
#else
LB_INLINE __m256i q2_dot(__m256i acc, __m256i w, int32_t x) {
    const __m256i p = _mm256_maddubs_epi16(w, _mm256_set1_epi32(x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
LB_INLINE __m256i q2_dot8(__m256i acc, __m256i w, int32_t x) {
    const __m256i m = _mm256_set1_epi8(15), xb = _mm256_set1_epi32(x), one = _mm256_set1_epi16(1);
    const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w, m), xb), one);
    const __m256i hi = _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi32(w, 4), m), xb), one);
    return _mm256_add_epi32(acc, _mm256_add_epi32(lo, _mm256_slli_epi32(hi, 4)));
}
#endif

/* A zero accumulator per K-block and row: a vpxor zeroing idiom (see qlinear_int_avx512.h). */
LB_INLINE __m256i q2_zacc(void) {
    __m256i z;
    __asm__ volatile("vpxor %0, %0, %0" : "=x"(z));
    return z;
}
#define QV_ZACC q2_zacc
#define QI_ATTR
#define QI_UNROLL8 _Pragma("GCC unroll 8")
#define QVL 8
#define QI_MB_OFF 4
#define QI_MB_PN 2
#define QI_MB_OFF_BIG 6
#define QI_MB_PN_BIG 3
#define ql_qv __m256i
#define ql_qg __m256
#define ql_qt __m256i
#define QV_LOAD q2_load
#define QV_ZERO _mm256_setzero_si256
#define QV_SET1 q2_set1
#define QV_SRLI q2_srli
#define QV_SLLI q2_slli
#define QV_AND _mm256_and_si256
#define QV_OR _mm256_or_si256
#define QV_LUT q2_lut
#define QV_DOT q2_dot
#define QV_DOT8 q2_dot8
#define QV_CVT _mm256_cvtepi32_ps
#define QT_MAKE q2_tmake
#define QG_ZERO _mm256_setzero_ps
#define QG_SET1 _mm256_set1_ps
#define QG_LOAD _mm256_loadu_ps
#define QG_STORE _mm256_storeu_ps
#define QG_FMA _mm256_fmadd_ps
#define QG_FNMA _mm256_fnmadd_ps
#include "../../qlinear_int_body.h"
