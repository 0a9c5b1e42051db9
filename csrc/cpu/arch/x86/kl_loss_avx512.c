/* csrc/cpu/arch/x86/kl_loss_avx512.c: the AVX-512 variant of the kl_loss CPU kernel: the row
 * worker of csrc/cpu/kl_loss_impl.h compiled for that target with the vectorisable polynomial
 * expf / logf, as the kernel table lb_kl_kernels_avx512. x86 only: elsewhere the file is empty. */
#include "../../kl_loss_impl.h"

#if LB_X86
LB_KL_KERNELS(avx512, LB_AVX512_ATTR, 0)
#endif
