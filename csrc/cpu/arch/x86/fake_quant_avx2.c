/* csrc/cpu/arch/x86/fake_quant_avx2.c: the AVX2 variant of the fake_quant CPU kernels:
 * the row workers of csrc/cpu/fake_quant_impl.h compiled for that target (the compiler vectorises
 * their loops) as the kernel table lb_fq_kernels_avx2. x86 only: elsewhere the file is empty. */
#include "../../fake_quant_impl.h"

#if LB_X86
LB_FQ_KERNELS(avx2, LB_AVX2_ATTR)
#endif
