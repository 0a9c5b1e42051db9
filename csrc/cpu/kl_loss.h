/* csrc/cpu/kl_loss.h: the CPU kernel of the kl_loss family (csrc/cpu/kl_loss.c): the
 * distillation losses of FORMATS.md 2 and their gradients, arguments in lb_kl_args (formats.h). */
#ifndef LOWBIT_CPU_KL_LOSS_H
#define LOWBIT_CPU_KL_LOSS_H

#include "../formats.h"

/* Returns 0. */
int lb_kl_cpu(const lb_kl_args* a);

#endif /* LOWBIT_CPU_KL_LOSS_H */
