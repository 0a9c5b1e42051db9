/* csrc/cpu/arch/x86/qlinear_avx512vnni.c: the AVX-512 VNNI variant of the qlinear integer-dot
 * kernels (csrc/cpu/qlinear_int_body.h on zmm, the 4-way u8 x s8 dot product one vpdpbusd) as
 * lb_ql_int_worker_avx512vnni (csrc/cpu/qlinear_impl.h); the float kernels of this ISA code are
 * qlinear_avx512.c's. x86 only: elsewhere the file is empty. */
#include "../../qlinear_impl.h"

#if LB_X86
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#define QI(name) lb_ql_##name##_avx512vnni
#define QI_VNNI 1
#include "qlinear_int_avx512.h"
#pragma GCC pop_options
#endif /* LB_X86 */
