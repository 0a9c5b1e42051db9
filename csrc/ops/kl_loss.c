/* csrc/ops/kl_loss.c: dispatcher glue of the kl_loss family: unboxes the stack, checks every
 * argument again (python/lowbit/kl_loss.py checks first, with friendlier messages), allocates
 * outputs, and calls the CPU kernel (csrc/cpu/kl_loss.h) or the CUDA launcher (cuda/kl_loss.cuh)
 * on the current stream. Every error path ends in lb_call_fail, which frees what the call
 * holds.
 *
 *   kl_loss(student, teacher, labels, kind, gamma, beta, temperature, ignore_index, has_labels,
 *           with_grad, grad_scale) -> (loss_per_row float32 (rows,), grad)
 *       grad = grad_scale * d loss_row / d student, (rows, V) in the student's dtype, when
 *       with_grad; else an empty (0,) tensor.
 *   kl_loss_backward(grad_loss, student, teacher, labels, kind, gamma, beta, temperature,
 *                    ignore_index, has_labels) -> grad (rows, V)
 *       recomputes the row statistics and writes grad_loss[r] * d loss_row / d student. */
#include <math.h>
#include <string.h>

#include "lb_check.h"

#include "../cpu/kl_loss.h"
#ifdef LOWBIT_WITH_CUDA
#include "../../cuda/kl_loss.cuh"
#endif

/* Checks the tensors and scalars shared by both ops and fills the kernel arguments. */
static int kl_check(const lb_tensor* s, const lb_tensor* t, const lb_tensor* lab, bool has_labels,
                    int64_t kind, double gamma, double beta, double tau, int64_t ignore_index,
                    lb_kl_args* A, char* err) {
    memset(A, 0, sizeof(*A));
    if (lb_check_float(s, "student_logits", err) < 0 || lb_check_float(t, "teacher_logits", err) < 0)
        return -1;
    if (s->dim != 2 || !s->contiguous)
        return lb_fail(err, "student_logits: expected a contiguous 2-D (rows, V) tensor");
    if (t->dim != 2 || !t->contiguous || t->sizes[0] != s->sizes[0] ||
        t->sizes[1] != s->sizes[1])
        return lb_fail(err, "teacher_logits: expected a contiguous 2-D tensor of the student's "
                       "shape (%lld, %lld)", (long long)s->sizes[0], (long long)s->sizes[1]);
    if (s->sizes[1] <= 0)
        return lb_fail(err, "student_logits: the vocabulary dimension V must be > 0");
    if (lb_check_same_device(t, "teacher_logits", s, "student_logits", err)) return -1;
    if (has_labels) {
        if (lab->dtype != lb_t.dt_i64 || lab->dim != 1 || lab->sizes[0] != s->sizes[0] ||
            !lab->contiguous || lab->device_type != s->device_type ||
            lab->device_index != s->device_index)
            return lb_fail(err, "labels: expected a contiguous int64 (%lld,) tensor on the "
                           "logits' device", (long long)s->sizes[0]);
    }
    if (kind < LB_KL_FORWARD || kind > LB_KL_JSD)
        return lb_fail(err, "kind: unknown loss kind code %lld", (long long)kind);
    if (!(gamma >= 0.0 && gamma <= 1.0))
        return lb_fail(err, "gamma: must be in [0, 1], got %g", gamma);
    if (!(beta >= 0.0 && beta <= 1.0))
        return lb_fail(err, "beta: must be in [0, 1], got %g", beta);
    if (!(tau > 0.0) || isinf(tau))
        return lb_fail(err, "temperature: must be a finite number > 0, got %g", tau);
    if (isinf((float)(1.0 / tau)))
        return lb_fail(err, "temperature: %g is too small: 1 / temperature overflows float32 "
                       "(temperature must be >= 2.9387e-39)", tau);
    A->S = s->data;
    A->T = t->data;
    A->labels = has_labels ? (const int64_t*)lab->data : NULL;
    A->dtS = lb_float_dtype(s->dtype);
    A->dtT = lb_float_dtype(t->dtype);
    A->rows = s->sizes[0];
    A->V = s->sizes[1];
    A->kind = (int)kind;
    A->gamma = (float)gamma;
    A->beta = (float)beta;
    A->inv_tau = (float)(1.0 / tau);
    A->grad_scale = 1.0f;
    A->ignore_index = ignore_index;
    return 0;
}

/* Runs the kernel for A on s's device (no rows: nothing to run). With temperature < 1 a
 * finite logit can leave float32's safe range once divided (LB_KL_SAFE): the kernel counts
 * such rows and the call raises naming temperature (never a NaN loss). On CUDA that count is
 * read back, one host sync per call, only then. */
static int kl_launch(lb_call* c, const lb_tensor* s, lb_kl_args* A, const char* what) {
    int32_t overflow = 0;
    if (lb_call_exec(c, s)) return -1;
    if (A->rows == 0) return 0;
    if (!c->exec.cuda) {
        A->overflow = A->inv_tau > 1.0f ? &overflow : NULL;
        lb_kl_cpu(A);
    }
#ifdef LOWBIT_WITH_CUDA
    else {
        void* pc = NULL;
        const int64_t one = 1;
        A->overflow = NULL;
        if (A->inv_tau > 1.0f) {
            if (lb_call_tmp(c, 1, &one, lb_t.dt_i32, s, &pc) ||
                lb_cuda_status(lb_cuda_memset(pc, 0, 4, c->exec.stream), what, c->err))
                return -1;
            A->overflow = (int32_t*)pc;
        }
        if (lb_cuda_status(lb_kl_cuda(A, c->exec.stream), what, c->err) ||
            (pc && lb_cuda_status(lb_cuda_memcpy_d2h(&overflow, pc, 4, c->exec.stream), what,
                                  c->err)))
            return -1;
    }
#endif
    (void)what;
    if (overflow > 0)
        return lb_fail(c->err, "temperature: %g is too small for these logits: in %d rows a "
                       "logit / temperature exceeds 2^124 in magnitude (float32 would overflow "
                       "in the loss); use a larger temperature", 1.0 / A->inv_tau, overflow);
    return 0;
}

/* kl_loss(Tensor student, Tensor teacher, Tensor labels, int kind, float gamma, float beta,
 *         float temperature, int ignore_index, bool has_labels, bool with_grad,
 *         float grad_scale) -> (Tensor, Tensor) */
LB_BOXED(lb_boxed_kl_loss) {
    lb_call c;
    lb_tensor s, t, l;
    lb_kl_args A;
    const bool has_labels = lb_iv_bool(stack[8]), with_grad = lb_iv_bool(stack[9]);
    void *pl = NULL, *pg = NULL;
    lb_call_begin(&c, "lowbit::kl_loss", stack, 3);
    if (lb_call_arg(&c, 0, "student_logits", &s) || lb_call_arg(&c, 1, "teacher_logits", &t) ||
        lb_call_arg(&c, 2, "labels", &l) ||
        kl_check(&s, &t, &l, has_labels, lb_iv_int(stack[3]), lb_iv_double(stack[4]),
                 lb_iv_double(stack[5]), lb_iv_double(stack[6]), lb_iv_int(stack[7]), &A, c.err))
        goto fail;
    A.grad_scale = (float)lb_iv_double(stack[10]);
    {
        const int64_t rsz[1] = {s.sizes[0]}, gsz[2] = {s.sizes[0], s.sizes[1]}, zero[1] = {0};
        if (lb_call_out(&c, 1, rsz, lb_t.dt_f32, &s, &pl) ||
            (with_grad ? lb_call_out(&c, 2, gsz, s.dtype, &s, &pg)
                       : lb_call_out(&c, 1, zero, s.dtype, &s, &pg)))
            goto fail;
        A.loss = (float*)pl;
        A.grad = with_grad ? pg : NULL;
    }
    if (kl_launch(&c, &s, &A, "kl_loss")) goto fail;
    LB_CALL_END(c);
}

/* kl_loss_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor labels, int kind,
 *                  float gamma, float beta, float temperature, int ignore_index,
 *                  bool has_labels) -> Tensor */
LB_BOXED(lb_boxed_kl_loss_backward) {
    lb_call c;
    lb_tensor g, s, t, l;
    lb_kl_args A;
    void* pg = NULL;
    lb_call_begin(&c, "lowbit::kl_loss_backward", stack, 4);
    if (lb_call_arg(&c, 0, "grad_loss", &g) || lb_call_arg(&c, 1, "student_logits", &s) ||
        lb_call_arg(&c, 2, "teacher_logits", &t) || lb_call_arg(&c, 3, "labels", &l) ||
        kl_check(&s, &t, &l, lb_iv_bool(stack[9]), lb_iv_int(stack[4]), lb_iv_double(stack[5]),
                 lb_iv_double(stack[6]), lb_iv_double(stack[7]), lb_iv_int(stack[8]), &A, c.err))
        goto fail;
    if (g.dtype != lb_t.dt_f32 || g.dim != 1 || g.sizes[0] != s.sizes[0] || !g.contiguous ||
        g.device_type != s.device_type || g.device_index != s.device_index) {
        lb_fail(c.err, "grad_loss: expected a contiguous float32 (%lld,) tensor on the logits' "
                "device", (long long)s.sizes[0]);
        goto fail;
    }
    {
        const int64_t gsz[2] = {s.sizes[0], s.sizes[1]};
        if (lb_call_out(&c, 2, gsz, s.dtype, &s, &pg)) goto fail;
        A.grad = pg;
        A.row_scale = (const float*)g.data;
    }
    if (kl_launch(&c, &s, &A, "kl_loss_backward")) goto fail;
    LB_CALL_END(c);
}

const lb_op_def lb_ops_kl_loss[] = {
    {"kl_loss",
     "kl_loss(Tensor student, Tensor teacher, Tensor labels, int kind, float gamma, float beta, "
     "float temperature, int ignore_index, bool has_labels, bool with_grad, float grad_scale) "
     "-> (Tensor, Tensor)",
     lb_boxed_kl_loss, 1},
    {"kl_loss_backward",
     "kl_loss_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor labels, int kind, "
     "float gamma, float beta, float temperature, int ignore_index, bool has_labels) -> Tensor",
     lb_boxed_kl_loss_backward, 1},
    {NULL, NULL, NULL, 0},
};
