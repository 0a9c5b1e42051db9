/* csrc/cpu/arch/x86/kl_loss_avx2.c: the AVX2 variant of the kl_loss CPU kernel: the row
 * worker of csrc/cpu/kl_loss_impl.h compiled for that target with the vectorisable polynomial
 * expf / logf, as the kernel table lb_kl_kernels_avx2. x86 only: elsewhere the file is empty. */
#include "../../kl_loss_impl.h"

#if LB_X86
LB_KL_KERNELS(avx2, LB_AVX2_ATTR, 0)
#endif
