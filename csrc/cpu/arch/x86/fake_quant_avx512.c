/* csrc/cpu/arch/x86/fake_quant_avx512.c: the AVX-512 variant of the fake_quant CPU kernels:
 * the row workers of csrc/cpu/fake_quant_impl.h compiled for that target (the compiler vectorises
 * their loops) as the kernel table lb_fq_kernels_avx512. x86 only: elsewhere the file is empty. */
#include "../../fake_quant_impl.h"

#if LB_X86
LB_FQ_KERNELS(avx512, LB_AVX512_ATTR)
#endif
