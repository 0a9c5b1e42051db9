/* csrc/ops/lb_check.c: the handle set of one boxed call and the argument checks every op
 * family's glue shares (declared in csrc/ops/lb_check.h). */
#include "lb_check.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int lb_fail(char* err, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, LB_ERR_LEN, fmt, ap);
    va_end(ap);
    return -1;
}

/* The check-only call this thread runs (lb_check_run), NULL for a real one. */
static _Thread_local lb_check_call* lb_checking;

int lb_check_run(const lb_op_def* op, StableIValue* stack, uint64_t nargs, lb_check_call* chk) {
    chk->n_out = 0;
    chk->failed = 0;
    chk->stopped = 0;
    chk->err[0] = 0;
    lb_checking = chk;
    op->fn(stack, nargs, 0);
    lb_checking = NULL;
    return chk->failed ? -1 : 0;
}

/* ---- the call's handle set ---- */
void lb_call_begin(lb_call* c, const char* op, const StableIValue* stack, int n_in) {
    memset(c, 0, sizeof(*c));
    c->op = op;
    c->n_in = n_in;
    c->chk = lb_checking;
    lb_checking = NULL; /* one call per check (an op's glue makes one lb_call) */
    if (c->chk) return; /* descriptions, no handles */
    for (int i = 0; i < n_in; ++i) c->in[i] = (AtenTensorHandle)(uintptr_t)stack[i];
}

int lb_call_arg(lb_call* c, int i, const char* name, lb_tensor* t) {
    if (c->chk) {
        *t = c->chk->args[i];
        t->arg = i;
        if (t->dim > LB_MAX_DIM) /* lb_describe's own check */
            return lb_fail(c->err, "%s: at most %d dimensions are supported, got %lld", name,
                           LB_MAX_DIM, (long long)t->dim);
        return 0;
    }
    if (lb_describe(c->in[i], name, t, c->err)) return -1;
    t->arg = i;
    return 0;
}

static int lb_call_new(lb_call* c, AtenTensorHandle* slot, int is_out, int64_t ndim,
                       const int64_t* sizes, int32_t dtype, const lb_tensor* like, void** data) {
    *data = NULL;
    if (c->chk) {
        lb_check_call* k = c->chk;
        if (!is_out) return 0; /* scratch: nothing to report */
        if (k->n_out >= LB_CHECK_MAX_OUT || ndim > LB_MAX_DIM)
            return lb_fail(c->err, "output: too many results to describe");
        for (int64_t i = 0; i < ndim; ++i) k->out_sizes[k->n_out][i] = sizes[i];
        k->out_dim[k->n_out] = ndim;
        k->out_dtype[k->n_out] = dtype;
        k->out_like[k->n_out] = like->arg;
        k->n_out++;
        return 0;
    }
    if (lb_empty(ndim, sizes, dtype, like, slot, c->err)) return -1;
    if (lb_t.aoti_torch_get_data_ptr(*slot, data)) return lb_fail(c->err, "could not read a new tensor's data");
    return 0;
}

int lb_call_out(lb_call* c, int64_t ndim, const int64_t* sizes, int32_t dtype,
                const lb_tensor* like, void** data) {
    return lb_call_new(c, &c->out[c->n_out++], 1, ndim, sizes, dtype, like, data);
}

int lb_call_tmp(lb_call* c, int64_t ndim, const int64_t* sizes, int32_t dtype,
                const lb_tensor* like, void** data) {
    return lb_call_new(c, &c->tmp[c->n_tmp++], 0, ndim, sizes, dtype, like, data);
}

int lb_call_exec(lb_call* c, const lb_tensor* t) {
    if (c->chk) { /* the checks passed: the call ends here */
        c->chk->stopped = 1;
        return -1;
    }
    return lb_exec_begin(t, &c->exec, c->err);
}

static void lb_call_release(lb_call* c, int with_outputs) {
    lb_exec_end(&c->exec);
    for (int i = 0; i < c->n_in; ++i) lb_release(&c->in[i]);
    for (int i = 0; i < c->n_tmp; ++i) lb_release(&c->tmp[i]);
    if (with_outputs)
        for (int i = 0; i < c->n_out; ++i) lb_release(&c->out[i]);
}

void lb_call_return(lb_call* c, StableIValue* stack) {
    if (c->chk) return; /* the results are recorded */
    lb_call_release(c, 0);
    for (int i = 0; i < c->n_out; ++i) stack[i] = (StableIValue)(uintptr_t)c->out[i];
}

void lb_call_fail(lb_call* c) {
    if (c->chk) { /* no handles; reaching the work is a success, anything else the error */
        if (!c->chk->stopped) {
            c->chk->failed = 1;
            memcpy(c->chk->err, c->err, LB_ERR_LEN);
        }
        return;
    }
    lb_call_release(c, 1);
    lb_raise(c->op, c->err);
}

/* ---- scalar arguments ---- */
int lb_check_int(int64_t v, const char* name, int64_t lo, int64_t hi, char* err) {
    if (v < lo || v > hi)
        return lb_fail(err, "%s: must be in [%lld, %lld], got %lld", name, (long long)lo,
                       (long long)hi, (long long)v);
    return 0;
}

int lb_check_dtype_code(int64_t dt, const char* name, char* err) {
    if (dt < 0 || dt >= LB_DT_COUNT)
        return lb_fail(err, "%s: unknown dtype code %lld (0 float32, 1 bfloat16, 2 float16)", name,
                       (long long)dt);
    return 0;
}

int lb_check_spec(int64_t fmt, int64_t bits, int64_t g, bool sym, int64_t K, lb_fmt* f,
                  char* err) {
    switch (lb_fmt_init(f, fmt, bits, sym ? 1 : 0)) {
    case 0: break;
    case LB_FMT_BAD_FORMAT: return lb_fail(err, "format: unknown format code %lld", (long long)fmt);
    case LB_FMT_BAD_BITS:
        return lb_fail(err, "bits: %lld bits is not supported for format code %lld",
                       (long long)bits, (long long)fmt);
    default:
        return lb_fail(err, "symmetric: format %s takes symmetric=%s only", lb_formats[fmt].name,
                       sym ? "False" : "True");
    }
    if (g <= 0 || K % g != 0)
        return lb_fail(err, "group_size: %lld must be positive and divide K = %lld", (long long)g,
                       (long long)K);
    if (f->block && g != f->block)
        return lb_fail(err, "group_size: format %s has blocks of %d, got %lld",
                       lb_formats[fmt].name, f->block, (long long)g);
    return 0;
}

int lb_check_not_blocks(const lb_fmt* f, const char* op, char* err) {
    if (f->storage != LB_STORE_BLOCKS) return 0;
    return lb_fail(err, "format %s: %s does not take llama.cpp block types yet",
                   lb_formats[f->fmt].name, op);
}

/* ---- tensors ---- */
int lb_check_float(const lb_tensor* t, const char* name, char* err) {
    const int dt = lb_float_dtype(t->dtype);
    if (dt < 0) return lb_fail(err, "%s: dtype must be float32, bfloat16 or float16", name);
    return dt;
}

int lb_check_weight(const lb_tensor* t, const char* name, char* err) {
    if (lb_check_float(t, name, err) < 0) return -1;
    if (t->dim != 2)
        return lb_fail(err, "%s: expected a 2-D (out_features, in_features) tensor, got %lld-D",
                       name, (long long)t->dim);
    if (t->numel == 0) return lb_fail(err, "%s: empty tensor", name);
    if (!t->contiguous)
        return lb_fail(err, "%s: must be contiguous (the Python wrapper makes it so)", name);
    return 0;
}

int lb_check_same_device(const lb_tensor* b, const char* name, const lb_tensor* a,
                         const char* aname, char* err) {
    if (b->device_type != a->device_type || b->device_index != a->device_index)
        return lb_fail(err, "%s: must be on the device of %s", name, aname);
    return 0;
}

int lb_check_qweight(const lb_tensor* c, const lb_tensor* s, const lb_tensor* z,
                     const char* const names[3], const lb_fmt* f, int64_t K, int64_t g,
                     int64_t* N, char* err) {
    const int two = f->nscales == 2;
    const int64_t G = K / g, GZ = f->zeros ? G : 0;
    const int64_t rb = lb_fmt_row_bytes(f, K);
    if (rb < 0)
        return lb_fail(err, "K: %lld columns of %d bits overflow the row size", (long long)K,
                       f->bits);
    *N = c->dim == 2 ? c->sizes[0] : -1;
    if (c->dtype != lb_t.dt_u8 || c->dim != 2 || !c->contiguous || *N <= 0 || c->sizes[1] != rb)
        return lb_fail(err, "%s: expected a contiguous uint8 (N, %lld) tensor, N > 0, for K = %lld",
                       names[0], (long long)rb, (long long)K);
    if (s->dtype != lb_t.dt_f32 || !s->contiguous || s->dim != (two ? 3 : 2) ||
        s->sizes[0] != *N || s->sizes[1] != (f->nscales ? G : 0) || (two && s->sizes[2] != 2))
        return lb_fail(err, "%s: expected a contiguous float32 (%lld, %lld%s) tensor", names[1],
                       (long long)*N, (long long)(f->nscales ? G : 0), two ? ", 2" : "");
    if (z->dtype != lb_t.dt_u8 || z->dim != 2 || !z->contiguous || z->sizes[0] != *N ||
        z->sizes[1] != GZ)
        return lb_fail(err, "%s: expected a contiguous uint8 (%lld, %lld) tensor", names[2],
                       (long long)*N, (long long)GZ);
    if (lb_check_same_device(s, names[1], c, names[0], err) ||
        lb_check_same_device(z, names[2], c, names[0], err))
        return -1;
    return 0;
}

const char* const lb_qweight_names[3] = {"codes", "scales", "zeros"};

int lb_call_qweight(lb_call* c, lb_tensor t[3], const StableIValue* spec, int64_t K, lb_fmt* f,
                    int64_t* N) {
    const int64_t g = lb_iv_int(spec[2]);
    for (int i = 0; i < 3; ++i)
        if (lb_call_arg(c, i, lb_qweight_names[i], &t[i])) return -1;
    if (K <= 0) return lb_fail(c->err, "K: must be positive, got %lld", (long long)K);
    return lb_check_spec(lb_iv_int(spec[0]), lb_iv_int(spec[1]), g, lb_iv_bool(spec[3]), K, f,
                         c->err) ||
                   lb_check_qweight(&t[0], &t[1], &t[2], lb_qweight_names, f, K, g, N, c->err)
               ? -1
               : 0;
}

int lb_check_bias(const lb_tensor* b, const lb_tensor* x, int64_t N, char* err) {
    if (b->numel == 0) return 0;
    if (b->dim != 1 || b->sizes[0] != N || b->dtype != x->dtype || !b->contiguous ||
        b->device_type != x->device_type || b->device_index != x->device_index)
        return lb_fail(err, "bias: expected a contiguous (%lld,) tensor of x's dtype and device",
                       (long long)N);
    return 1;
}

int lb_check_numel(const int64_t* sizes, int n, int64_t elem_size, const char* name, char* err) {
    int64_t acc = elem_size;
    for (int i = 0; i < n; ++i)
        if (sizes[i] < 0 || lb_mul64(acc, sizes[i], &acc))
            return lb_fail(err, "%s: the result of this size does not fit in memory", name);
    return 0;
}
