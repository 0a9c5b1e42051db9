/* csrc/ops/lb_common.c: the resolved stable-ABI table and the helpers the op glue shares (tensor
 * description, allocation, errors, unboxing, the device context), the torch side of the CPU
 * kernels' runtime hook (torch's thread pool and thread count), and module.c's way to the CPU
 * ISA switch. */
#include "../lb_ops.h"

#include "../cpu/lb_cpu.h"

#include <stdio.h>
#include <string.h>

lb_torch_api lb_t;

int lb_describe(AtenTensorHandle h, const char* argname, lb_tensor* t, char* err) {
    int64_t *sz = NULL, *st = NULL;
    memset(t, 0, sizeof(*t));
    t->h = h;
    t->arg = -1;
    if (h == NULL) {
        snprintf(err, LB_ERR_LEN, "%s: expected a tensor, got None", argname);
        return -1;
    }
    if (lb_t.aoti_torch_get_dim(h, &t->dim) || lb_t.aoti_torch_get_numel(h, &t->numel) ||
        lb_t.aoti_torch_get_dtype(h, &t->dtype) ||
        lb_t.aoti_torch_get_device_type(h, &t->device_type) ||
        lb_t.aoti_torch_get_device_index(h, &t->device_index) ||
        lb_t.aoti_torch_is_contiguous(h, &t->contiguous) ||
        lb_t.aoti_torch_get_data_ptr(h, &t->data)) {
        snprintf(err, LB_ERR_LEN, "%s: could not read tensor metadata", argname);
        return -1;
    }
    if (t->dim > LB_MAX_DIM) {
        snprintf(err, LB_ERR_LEN, "%s: at most %d dimensions are supported, got %lld", argname,
                 LB_MAX_DIM, (long long)t->dim);
        return -1;
    }
    if (lb_t.aoti_torch_get_sizes(h, &sz) || lb_t.aoti_torch_get_strides(h, &st)) {
        snprintf(err, LB_ERR_LEN, "%s: could not read sizes/strides", argname);
        return -1;
    }
    for (int64_t i = 0; i < t->dim; ++i) {
        t->sizes[i] = sz[i];
        t->strides[i] = st[i];
    }
    return 0;
}

int lb_float_dtype(int32_t d) {
    if (d == lb_t.dt_f32) return 0;
    if (d == lb_t.dt_bf16) return 1;
    if (d == lb_t.dt_f16) return 2;
    return -1;
}

int32_t lb_torch_dtype(int lb_dtype) {
    return lb_dtype == 0 ? lb_t.dt_f32 : (lb_dtype == 1 ? lb_t.dt_bf16 : lb_t.dt_f16);
}

int lb_empty(int64_t ndim, const int64_t* sizes, int32_t dtype, const lb_tensor* like,
             AtenTensorHandle* out, char* err) {
    int64_t strides[LB_MAX_DIM];
    int64_t acc = 1;
    *out = NULL;
    for (int64_t i = ndim - 1; i >= 0; --i) {
        strides[i] = acc;
        /* the callers size outputs from checked arithmetic; this is the last line of defence */
        if (sizes[i] < 0 || lb_mul64(acc, sizes[i] > 0 ? sizes[i] : 1, &acc)) {
            snprintf(err, LB_ERR_LEN, "output: a %lld-d result of this size does not fit in memory",
                     (long long)ndim);
            return -1;
        }
    }
    if (lb_t.aoti_torch_empty_strided(ndim, sizes, strides, dtype, like->device_type,
                                      like->device_index, out)) {
        snprintf(err, LB_ERR_LEN, "out of memory allocating a %lld-d tensor", (long long)ndim);
        *out = NULL;
        return -1;
    }
    return 0;
}

void lb_release(AtenTensorHandle* h) {
    if (*h) lb_t.aoti_torch_delete_tensor_object(*h);
    *h = NULL;
}

void lb_raise(const char* func, const char* msg) {
    lb_t.aoti_torch_check(false, func, __FILE__, (uint32_t)__LINE__, msg);
}

int64_t lb_iv_int(StableIValue v) {
    int64_t x;
    memcpy(&x, &v, sizeof x);
    return x;
}
bool lb_iv_bool(StableIValue v) { return (v & 0xffu) != 0; }
double lb_iv_double(StableIValue v) {
    double x;
    memcpy(&x, &v, sizeof x);
    return x;
}

/* ---- the CPU ISA switch, for module.c ---- */
const char lb_isa_names[] = LB_ISA_NAMES;
const lb_int_constant lb_cpu_constants[] = {
    {"ISA_SCALAR", LB_ISA_SCALAR},   {"ISA_AVX2", LB_ISA_AVX2},
    {"ISA_AVX512", LB_ISA_AVX512},   {"ISA_AVXVNNI", LB_ISA_AVXVNNI},
    {"ISA_AVX512VNNI", LB_ISA_AVX512VNNI}, {NULL, 0},
};
int lb_ops_isa_supported(int isa) { return lb_isa_supported(isa); }
void lb_ops_isa_set(int isa) { lb_isa_set(isa); }
int lb_ops_isa_code(void) { return lb_isa_code(); }

/* ---- the CPU runtime hook on torch ---- */
static int lb_torch_num_threads(void) {
    uint32_t n = 1;
    if (lb_t.torch_get_num_threads(&n) || n == 0) n = 1;
    return (int)n;
}

static void lb_torch_parallel(int64_t n, int64_t grain, lb_parallel_fn fn, void* ctx) {
    /* torch's parallel_for runs fn on its intra-op pool, sized by torch.set_num_threads */
    if (lb_t.torch_parallel_for(0, n, grain, fn, ctx)) fn(0, n, ctx);
}

void lb_torch_install_runtime(void) {
    lb_rt.parallel_for = lb_torch_parallel;
    lb_rt.num_threads = lb_torch_num_threads;
    lb_isa_set(lb_isa_best());
}

/* ---- device execution context (see lb_ops.h) ---- */
int lb_exec_begin(const lb_tensor* t, lb_exec* e, char* err) {
    memset(e, 0, sizeof(*e));
    if (t->device_type == lb_t.dev_cpu) return 0;
#ifdef LOWBIT_WITH_CUDA
    if (t->device_type == lb_t.dev_cuda && lb_t.aoti_torch_get_current_cuda_stream) {
        e->cuda = 1;
        if (lb_t.aoti_torch_create_device_guard(t->device_index, &e->guard) ||
            lb_t.aoti_torch_get_current_cuda_stream(t->device_index, &e->stream)) {
            snprintf(err, LB_ERR_LEN, "could not set up CUDA device %d", t->device_index);
            if (e->guard) lb_t.aoti_torch_delete_device_guard(e->guard);
            e->guard = NULL;
            return -1;
        }
        return 0;
    }
#endif
    snprintf(err, LB_ERR_LEN, "unsupported device type %d (lowbit runs on CPU%s)",
             t->device_type,
#ifdef LOWBIT_WITH_CUDA
             " and CUDA"
#else
             "; this build has no CUDA"
#endif
    );
    return -1;
}

void lb_exec_end(lb_exec* e) {
    if (e->guard) lb_t.aoti_torch_delete_device_guard(e->guard);
    e->guard = NULL;
}

#ifdef LOWBIT_WITH_CUDA
int lb_cuda_status(int rc, const char* what, char* err) {
    if (rc == 0) return 0;
    snprintf(err, LB_ERR_LEN, "CUDA error in %s: %s", what, lb_cuda_error_string(rc));
    return -1;
}
#endif
