/* csrc/cpu/arch/x86/qlinear_avx512vnni.c: the AVX-512 VNNI variant of the qlinear CPU kernels:
 * the integer-dot body (csrc/cpu/qlinear_int_body.h on zmm, the 4-way u8 x s8 dot product one
 * vpdpbusd) as lb_ql_int_tiles_avx512vnni, in the kernel table lb_ql_kernels_avx512vnni with
 * the float kernels of qlinear_avx512.c (csrc/cpu/qlinear_impl.h). x86 only: elsewhere the file
 * is empty. */
#include "../../qlinear_impl.h"

#if LB_X86
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#define QI(name) lb_ql_##name##_avx512vnni
#define QI_VNNI 1
#include "qlinear_int_avx512.h"

/* the integer-dot kernels with vpdpbusd; the float kernels are avx512's */
const struct lb_ql_kernels lb_ql_kernels_avx512vnni = {
    lb_ql_gemv_worker_avx512, lb_ql_gemm_worker_avx512, lb_ql_deqt_worker_avx512,
    lb_ql_int_tiles_avx512vnni, lb_ql_act_rows_avx512};
#pragma GCC pop_options
#endif /* LB_X86 */
