/* csrc/cpu/arch/x86/qlinear_blk_avx512vnni.c: the AVX-512 VNNI variant of the qlinear_blk kernels
 * (W in GGUF blocks): the integer dots one vpdpbusd (the AVX512VL encoding, on ymm); the body
 * csrc/cpu/arch/x86/qlinear_blk_x86.h as lb_qlb_kernels_avx512vnni (csrc/cpu/qlinear_blk_impl.h).
 * x86 only: elsewhere the file is empty. */
#include "../../lb_cpu.h"

#if LB_X86
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#define QLB(name) lb_qlb_##name##_avx512vnni
/* the blocks' fp16 scales through F16C (exact, as lb_get_half) */
#define QLB_HALF(p) _cvtsh_ss((unsigned short)((p)[0] | ((p)[1] << 8)))
#include "../../qlinear_blk_impl.h"
#define QLB_DOT 2
#include "qlinear_blk_x86.h"

const struct lb_qlb_kernels lb_qlb_kernels_avx512vnni = {lb_qlb_float_rows_avx512vnni,
                                                      lb_qlb_int_rows_avx512vnni};
#pragma GCC pop_options
#endif /* LB_X86 */
