/* cuda/kl_loss.cuh: the CUDA launcher of the kl_loss family (cuda/kl_loss.cu), arguments in
 * lb_kl_args (csrc/formats.h). Plain C declaration; returns 0 or a cudaError_t. */
#ifndef LOWBIT_CUDA_KL_LOSS_CUH
#define LOWBIT_CUDA_KL_LOSS_CUH

#include "../csrc/formats.h"

#ifdef __cplusplus
extern "C" {
#endif
int lb_kl_cuda(const lb_kl_args* a, void* stream);
#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_CUDA_KL_LOSS_CUH */
