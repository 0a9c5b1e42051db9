/* csrc/cpu/kl_loss.c: CPU kernel of the kl_loss family (FORMATS.md section 2): the driver,
 * which splits rows over the runtime's thread pool and runs the worker of the kernel table in use
 * (lb_rt.kl), and the scalar twin's table. The body and what it computes are in
 * csrc/cpu/kl_loss_impl.h; the x86 variants compile it in csrc/cpu/arch/x86/kl_loss_avx2.c,
 * kl_loss_avx512.c. */
#include "kl_loss_impl.h"

LB_KL_KERNELS(scalar, LB_SCALAR_ATTR, 1)

int lb_kl_cpu(const lb_kl_args* a) {
    /* rows per task: about 32K elements of work each */
    int64_t grain = a->V >= 32768 ? 1 : 32768 / a->V;
    lb_parallel(a->rows, grain, lb_rt.kl->rows, (void*)a);
    return 0;
}
