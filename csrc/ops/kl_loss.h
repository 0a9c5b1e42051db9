/* csrc/ops/kl_loss.h: kernel entry points of the kl_loss family (the distillation losses of
 * FORMATS.md section 2), shared by its glue (csrc/ops/kl_loss.c), CPU kernels
 * (csrc/cpu/kl_loss.c) and CUDA launchers (cuda/kl_loss.cu). */
#ifndef LOWBIT_OPS_KL_LOSS_H
#define LOWBIT_OPS_KL_LOSS_H

#include "../lb_ops.h"

/* Loss kinds (the `kind` int of the ops). */
enum { LB_KL_FORWARD = 0, LB_KL_REVERSE = 1, LB_KL_CAKLD = 2, LB_KL_JSD = 3 };

/* One call's arguments. S (student) and T (teacher) are contiguous (rows, V) in dtypes dtS/dtT
 * (LB_DT_*); labels int64 (rows,) or NULL. Outputs:
 *   loss  float32 (rows,) or NULL: per-row loss (0 for masked rows and for rows where the student
 *         or the teacher is -inf everywhere)
 *   grad  (rows, V) in dtS or NULL: d loss_row / d S, times row_scale[r] if row_scale (float32
 *         (rows,)) is given, else times grad_scale. Zero for masked/degenerate rows. */
typedef struct {
    const void* S;
    const void* T;
    const int64_t* labels;
    const float* row_scale;
    float* loss;
    void* grad;
    int dtS, dtT;
    int64_t rows, V;
    int kind;
    float gamma, beta, inv_tau, grad_scale;
    int64_t ignore_index;
} lb_kl_args;

/* ---- CPU (csrc/cpu/kl_loss.c): returns 0 ---- */
int lb_kl_cpu(const lb_kl_args* a);

/* ---- CUDA (cuda/kl_loss.cu): returns 0 or a cudaError_t ---- */
#ifdef LOWBIT_WITH_CUDA
#ifdef __cplusplus
extern "C" {
#endif
int lb_kl_cuda(const lb_kl_args* a, void* stream);
#ifdef __cplusplus
}
#endif
#endif

#endif /* LOWBIT_OPS_KL_LOSS_H */
