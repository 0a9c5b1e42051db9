/* csrc/ops/kl_loss.c: dispatcher glue of the kl_loss family: unboxes the stack, checks every
 * argument again (python/lowbit/kl_loss.py checks first, with friendlier messages), allocates
 * outputs, and calls the CPU kernel or the CUDA launcher on the current stream. Every error path
 * frees what it holds before raising.
 *
 *   kl_loss(student, teacher, labels, kind, gamma, beta, temperature, ignore_index, has_labels,
 *           with_grad, grad_scale) -> (loss_per_row float32 (rows,), grad)
 *       grad = grad_scale * d loss_row / d student, (rows, V) in the student's dtype, when
 *       with_grad; else an empty (0,) tensor.
 *   kl_loss_backward(grad_loss, student, teacher, labels, kind, gamma, beta, temperature,
 *                    ignore_index, has_labels) -> grad (rows, V)
 *       recomputes the row statistics and writes grad_loss[r] * d loss_row / d student. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kl_loss.h"

static int kl_same_device(const lb_tensor* a, const lb_tensor* b) {
    return a->device_type == b->device_type && a->device_index == b->device_index;
}

/* Checks the tensors and scalars shared by both ops and fills the kernel arguments. */
static int kl_check(const lb_tensor* s, const lb_tensor* t, const lb_tensor* lab, bool has_labels,
                    int64_t kind, double gamma, double beta, double tau, int64_t ignore_index,
                    lb_kl_args* A, char* err) {
    memset(A, 0, sizeof(*A));
    if (lb_float_dtype(s->dtype) < 0) {
        snprintf(err, LB_ERR_LEN, "student_logits: dtype must be float32, bfloat16 or float16");
        return -1;
    }
    if (lb_float_dtype(t->dtype) < 0) {
        snprintf(err, LB_ERR_LEN, "teacher_logits: dtype must be float32, bfloat16 or float16");
        return -1;
    }
    if (s->dim != 2 || !s->contiguous) {
        snprintf(err, LB_ERR_LEN, "student_logits: expected a contiguous 2-D (rows, V) tensor");
        return -1;
    }
    if (t->dim != 2 || !t->contiguous || t->sizes[0] != s->sizes[0] ||
        t->sizes[1] != s->sizes[1]) {
        snprintf(err, LB_ERR_LEN,
                 "teacher_logits: expected a contiguous 2-D tensor of the student's shape "
                 "(%lld, %lld)",
                 (long long)s->sizes[0], (long long)s->sizes[1]);
        return -1;
    }
    if (s->sizes[1] <= 0) {
        snprintf(err, LB_ERR_LEN, "student_logits: the vocabulary dimension V must be > 0");
        return -1;
    }
    if (!kl_same_device(s, t)) {
        snprintf(err, LB_ERR_LEN, "teacher_logits: must be on the student's device");
        return -1;
    }
    if (has_labels) {
        if (lab->dtype != lb_t.dt_i64 || lab->dim != 1 || lab->sizes[0] != s->sizes[0] ||
            !lab->contiguous || !kl_same_device(s, lab)) {
            snprintf(err, LB_ERR_LEN,
                     "labels: expected a contiguous int64 (%lld,) tensor on the logits' device",
                     (long long)s->sizes[0]);
            return -1;
        }
    }
    if (kind < LB_KL_FORWARD || kind > LB_KL_JSD) {
        snprintf(err, LB_ERR_LEN, "kind: unknown loss kind code %lld", (long long)kind);
        return -1;
    }
    if (!(gamma >= 0.0 && gamma <= 1.0)) {
        snprintf(err, LB_ERR_LEN, "gamma: must be in [0, 1], got %g", gamma);
        return -1;
    }
    if (!(beta >= 0.0 && beta <= 1.0)) {
        snprintf(err, LB_ERR_LEN, "beta: must be in [0, 1], got %g", beta);
        return -1;
    }
    if (!(tau > 0.0) || isinf(tau)) {
        snprintf(err, LB_ERR_LEN, "temperature: must be a finite number > 0, got %g", tau);
        return -1;
    }
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

static int kl_launch(const lb_tensor* s, lb_kl_args* A, const char* what, char* err) {
    lb_exec e = {0};
    if (lb_exec_begin(s, &e, err)) return -1;
    if (A->rows == 0) {
        lb_exec_end(&e);
        return 0;
    }
    if (!e.cuda) {
        lb_kl_cpu(A);
    }
#ifdef LOWBIT_WITH_CUDA
    else if (lb_cuda_status(lb_kl_cuda(A, e.stream), what, err)) {
        lb_exec_end(&e);
        return -1;
    }
#endif
    (void)what;
    lb_exec_end(&e);
    return 0;
}

/* kl_loss(Tensor student, Tensor teacher, Tensor labels, int kind, float gamma, float beta,
 *         float temperature, int ignore_index, bool has_labels, bool with_grad,
 *         float grad_scale) -> (Tensor, Tensor) */
static void lb_boxed_kl_loss(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle hs = (AtenTensorHandle)(uintptr_t)stack[0];
    AtenTensorHandle ht = (AtenTensorHandle)(uintptr_t)stack[1];
    AtenTensorHandle hl = (AtenTensorHandle)(uintptr_t)stack[2];
    AtenTensorHandle hloss = NULL, hgrad = NULL;
    lb_tensor s, t, l;
    lb_kl_args A;
    bool has_labels = lb_iv_bool(stack[8]), with_grad = lb_iv_bool(stack[9]);
    double grad_scale = lb_iv_double(stack[10]);
    (void)nargs;
    (void)nouts;
    if (lb_describe(hs, "student_logits", &s, err) || lb_describe(ht, "teacher_logits", &t, err) ||
        lb_describe(hl, "labels", &l, err) ||
        kl_check(&s, &t, &l, has_labels, lb_iv_int(stack[3]), lb_iv_double(stack[4]),
                 lb_iv_double(stack[5]), lb_iv_double(stack[6]), lb_iv_int(stack[7]), &A, err))
        goto fail;
    A.grad_scale = (float)grad_scale;
    {
        int64_t rsz[1] = {s.sizes[0]};
        int64_t gsz[2] = {s.sizes[0], s.sizes[1]};
        int64_t zero[1] = {0};
        void *pl = NULL, *pg = NULL;
        if (lb_empty(1, rsz, lb_t.dt_f32, &s, &hloss, err)) goto fail;
        if (with_grad ? lb_empty(2, gsz, s.dtype, &s, &hgrad, err)
                      : lb_empty(1, zero, s.dtype, &s, &hgrad, err))
            goto fail;
        lb_t.aoti_torch_get_data_ptr(hloss, &pl);
        lb_t.aoti_torch_get_data_ptr(hgrad, &pg);
        A.loss = (float*)pl;
        A.grad = with_grad ? pg : NULL;
    }
    if (kl_launch(&s, &A, "kl_loss", err)) goto fail;
    lb_release(&hs);
    lb_release(&ht);
    lb_release(&hl);
    stack[0] = (StableIValue)(uintptr_t)hloss;
    stack[1] = (StableIValue)(uintptr_t)hgrad;
    return;
fail:
    lb_release(&hs);
    lb_release(&ht);
    lb_release(&hl);
    lb_release(&hloss);
    lb_release(&hgrad);
    lb_raise("lowbit::kl_loss", err);
}

/* kl_loss_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor labels, int kind,
 *                  float gamma, float beta, float temperature, int ignore_index,
 *                  bool has_labels) -> Tensor */
static void lb_boxed_kl_loss_backward(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle hg = (AtenTensorHandle)(uintptr_t)stack[0];
    AtenTensorHandle hs = (AtenTensorHandle)(uintptr_t)stack[1];
    AtenTensorHandle ht = (AtenTensorHandle)(uintptr_t)stack[2];
    AtenTensorHandle hl = (AtenTensorHandle)(uintptr_t)stack[3];
    AtenTensorHandle hgrad = NULL;
    lb_tensor g, s, t, l;
    lb_kl_args A;
    bool has_labels = lb_iv_bool(stack[9]);
    (void)nargs;
    (void)nouts;
    if (lb_describe(hg, "grad_loss", &g, err) || lb_describe(hs, "student_logits", &s, err) ||
        lb_describe(ht, "teacher_logits", &t, err) || lb_describe(hl, "labels", &l, err) ||
        kl_check(&s, &t, &l, has_labels, lb_iv_int(stack[4]), lb_iv_double(stack[5]),
                 lb_iv_double(stack[6]), lb_iv_double(stack[7]), lb_iv_int(stack[8]), &A, err))
        goto fail;
    if (g.dtype != lb_t.dt_f32 || g.dim != 1 || g.sizes[0] != s.sizes[0] || !g.contiguous ||
        !kl_same_device(&g, &s)) {
        snprintf(err, LB_ERR_LEN,
                 "grad_loss: expected a contiguous float32 (%lld,) tensor on the logits' device",
                 (long long)s.sizes[0]);
        goto fail;
    }
    {
        int64_t gsz[2] = {s.sizes[0], s.sizes[1]};
        void* pg = NULL;
        if (lb_empty(2, gsz, s.dtype, &s, &hgrad, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(hgrad, &pg);
        A.grad = pg;
        A.row_scale = (const float*)g.data;
    }
    if (kl_launch(&s, &A, "kl_loss_backward", err)) goto fail;
    lb_release(&hg);
    lb_release(&hs);
    lb_release(&ht);
    lb_release(&hl);
    stack[0] = (StableIValue)(uintptr_t)hgrad;
    return;
fail:
    lb_release(&hg);
    lb_release(&hs);
    lb_release(&ht);
    lb_release(&hl);
    lb_release(&hgrad);
    lb_raise("lowbit::kl_loss_backward", err);
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
