/* csrc/cpu/arch/x86/qlinear_avxvnni.c: the AVX-VNNI variant of the qlinear CPU kernels: the
 * integer-dot body (csrc/cpu/qlinear_int_body.h on 8-lane ymm, the 4-way u8 x s8 dot product one
 * vpdpbusd) as lb_ql_int_tiles_avxvnni, in the kernel table lb_ql_kernels_avxvnni with the float
 * kernels of qlinear_avx2.c (csrc/cpu/qlinear_impl.h). x86 only: elsewhere the file is empty. */
#include "../../qlinear_impl.h"

#if LB_X86
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
#define QI(name) lb_ql_##name##_avxvnni
#define QI_VNNI 1
#include "qlinear_int_avx2.h"

/* the integer-dot kernels with vpdpbusd; the float kernels are avx2's */
const struct lb_ql_kernels lb_ql_kernels_avxvnni = {
    lb_ql_gemv_worker_avx2, lb_ql_gemm_worker_avx2, lb_ql_deqt_worker_avx2,
    lb_ql_int_tiles_avxvnni, lb_ql_act_rows_avx2};
#pragma GCC pop_options
#endif /* LB_X86 */
