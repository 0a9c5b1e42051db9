/* csrc/cpu/arch/x86/qlinear_avxvnni.c: the AVX-VNNI variant of the qlinear integer-dot kernels
 * (csrc/cpu/qlinear_int_body.h on 8-lane ymm, the 4-way u8 x s8 dot product one vpdpbusd) as
 * lb_ql_int_worker_avxvnni (csrc/cpu/qlinear_impl.h); the float kernels of this ISA code are
 * qlinear_avx2.c's. x86 only: elsewhere the file is empty. */
#include "../../qlinear_impl.h"

#if LB_X86
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
#define QI(name) lb_ql_##name##_avxvnni
#define QI_VNNI 1
#include "qlinear_int_avx2.h"
#pragma GCC pop_options
#endif /* LB_X86 */
