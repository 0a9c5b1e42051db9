/* csrc/ops/sparse24.c: dispatcher glue of the sparse24 family (2:4 structured sparsity): unboxes
 * the stack, checks every argument again (python/lowbit/sparse24.py checks first, naming the
 * argument), allocates outputs and calls the CPU kernels or the CUDA launchers. Every error
 * path frees what it holds before raising. The compressed layout is in csrc/ops/sparse24.h. */
#include <stdio.h>
#include <string.h>

#include "fake_quant.h"
#include "sparse24.h"

#define LB24_MAX_ARGS 12

typedef struct {
    AtenTensorHandle h[LB24_MAX_ARGS];
    int n;
} lb24_handles;

static void lb24_release_all(lb24_handles* hs) {
    for (int i = 0; i < hs->n; ++i) lb_release(&hs->h[i]);
}

static int same_device(const lb_tensor* a, const lb_tensor* b) {
    return a->device_type == b->device_type && a->device_index == b->device_index;
}

/* x (M, K) float, contiguous, K % 4 == 0. */
static int check_x(const lb_tensor* x, char* err) {
    if (lb_float_dtype(x->dtype) < 0) {
        snprintf(err, LB_ERR_LEN, "x: dtype must be float32, bfloat16 or float16");
        return -1;
    }
    if (x->dim != 2 || !x->contiguous) {
        snprintf(err, LB_ERR_LEN, "x: expected a contiguous 2-D (M, K) tensor");
        return -1;
    }
    if (x->sizes[1] % 4 != 0 || x->sizes[1] == 0) {
        snprintf(err, LB_ERR_LEN, "x: in_features K = %lld must be a positive multiple of 4",
                 (long long)x->sizes[1]);
        return -1;
    }
    return 0;
}

static int check_meta(const lb_tensor* meta, const lb_tensor* like, int64_t N, int64_t K,
                      char* err) {
    if (meta->dtype != lb_t.dt_u8 || meta->dim != 2 || !meta->contiguous ||
        meta->sizes[0] != N || meta->sizes[1] != lb24_meta_bytes(K)) {
        snprintf(err, LB_ERR_LEN, "meta: expected contiguous uint8 (%lld, %lld)", (long long)N,
                 (long long)lb24_meta_bytes(K));
        return -1;
    }
    if (!same_device(meta, like)) {
        snprintf(err, LB_ERR_LEN, "meta: must be on the same device as x");
        return -1;
    }
    return 0;
}

/* bias: numel 0 means none, else (N,) of x's dtype on x's device. Returns 1 if present. */
static int check_bias(const lb_tensor* b, const lb_tensor* x, int64_t N, char* err) {
    if (b->numel == 0) return 0;
    if (b->dim != 1 || b->sizes[0] != N || b->dtype != x->dtype || !b->contiguous ||
        !same_device(b, x)) {
        snprintf(err, LB_ERR_LEN, "bias: expected a contiguous (%lld,) tensor of x's dtype and device",
                 (long long)N);
        return -1;
    }
    return 1;
}

/* sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor bias) -> Tensor (M, N) */
static void lb_boxed_sparse24_linear(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    lb24_handles hs = {{(AtenTensorHandle)(uintptr_t)stack[0], (AtenTensorHandle)(uintptr_t)stack[1],
                        (AtenTensorHandle)(uintptr_t)stack[2], (AtenTensorHandle)(uintptr_t)stack[3]},
                       4};
    AtenTensorHandle out = NULL;
    lb_tensor x, v, m, b;
    lb_exec e = {0};
    int64_t M, K, N;
    int hb;
    void* po = NULL;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hs.h[0], "x", &x, err) || lb_describe(hs.h[1], "values", &v, err) ||
        lb_describe(hs.h[2], "meta", &m, err) || lb_describe(hs.h[3], "bias", &b, err) ||
        check_x(&x, err))
        goto fail;
    M = x.sizes[0];
    K = x.sizes[1];
    if (v.dtype != x.dtype || v.dim != 2 || !v.contiguous || v.sizes[1] != K / 2 ||
        !same_device(&v, &x)) {
        snprintf(err, LB_ERR_LEN,
                 "values: expected a contiguous (N, %lld) tensor of x's dtype and device",
                 (long long)(K / 2));
        goto fail;
    }
    N = v.sizes[0];
    if (check_meta(&m, &x, N, K, err) || (hb = check_bias(&b, &x, N, err)) < 0) goto fail;
    {
        int64_t osz[2] = {M, N};
        if (lb_empty(2, osz, x.dtype, &x, &out, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(out, &po);
    }
    if (lb_exec_begin(&x, &e, err)) goto fail;
    if (!e.cuda) {
        if (lb24_linear_cpu(x.data, lb_float_dtype(x.dtype), M, K, v.data,
                            lb_float_dtype(v.dtype), (const uint8_t*)m.data, N,
                            hb ? b.data : NULL, po)) {
            snprintf(err, LB_ERR_LEN, "out of memory for sparse24_linear scratch");
            goto fail;
        }
    }
#ifdef LOWBIT_WITH_CUDA
    else if (lb_cuda_status(lb24_linear_cuda(x.data, lb_float_dtype(x.dtype), M, K, v.data,
                                             (const uint8_t*)m.data, N, hb ? b.data : NULL, po,
                                             e.stream),
                            "sparse24_linear", err))
        goto fail;
#endif
    lb_exec_end(&e);
    lb24_release_all(&hs);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
fail:
    lb_exec_end(&e);
    lb24_release_all(&hs);
    lb_release(&out);
    lb_raise("lowbit::sparse24_linear", err);
}

/* sparse24_qlinear(Tensor x, Tensor codes, Tensor scales, Tensor zeros, Tensor meta,
 *                  Tensor bias, int fmt, int bits, int group_size, bool symmetric) -> Tensor
 * The kept values (N, K/2) packed as lowbit.quantize packs them (groups of group_size kept
 * values). CPU only: on CUDA the Python wrapper dequantizes and takes the float path. */
static void lb_boxed_sparse24_qlinear(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    lb24_handles hs = {{(AtenTensorHandle)(uintptr_t)stack[0], (AtenTensorHandle)(uintptr_t)stack[1],
                        (AtenTensorHandle)(uintptr_t)stack[2], (AtenTensorHandle)(uintptr_t)stack[3],
                        (AtenTensorHandle)(uintptr_t)stack[4], (AtenTensorHandle)(uintptr_t)stack[5]},
                       6};
    AtenTensorHandle out = NULL;
    lb_tensor x, c, s, z, m, b;
    lb_fmt f;
    int64_t fmt = lb_iv_int(stack[6]), bits = lb_iv_int(stack[7]), g = lb_iv_int(stack[8]);
    bool sym = lb_iv_bool(stack[9]);
    int64_t M, K, K2, N, G;
    int hb;
    void* po = NULL;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hs.h[0], "x", &x, err) || lb_describe(hs.h[1], "codes", &c, err) ||
        lb_describe(hs.h[2], "scales", &s, err) || lb_describe(hs.h[3], "zeros", &z, err) ||
        lb_describe(hs.h[4], "meta", &m, err) || lb_describe(hs.h[5], "bias", &b, err) ||
        check_x(&x, err))
        goto fail;
    M = x.sizes[0];
    K = x.sizes[1];
    K2 = K / 2;
    if (x.device_type != lb_t.dev_cpu) {
        snprintf(err, LB_ERR_LEN, "x: sparse24_qlinear has a CPU kernel only");
        goto fail;
    }
    if (lb_check_spec(fmt, bits, g, sym, K2, &f, err)) goto fail;
    G = K2 / g;
    N = c.dim == 2 ? c.sizes[0] : -1;
    if (c.dtype != lb_t.dt_u8 || c.dim != 2 || !c.contiguous || N <= 0 ||
        c.sizes[1] != lb_row_bytes(K2, (int)bits) || !same_device(&c, &x)) {
        snprintf(err, LB_ERR_LEN, "codes: expected contiguous uint8 (N, %lld) on x's device",
                 (long long)lb_row_bytes(K2, (int)bits));
        goto fail;
    }
    if (s.dtype != lb_t.dt_f32 || !s.contiguous || s.dim < 2 || s.sizes[0] != N ||
        s.sizes[1] != G || (f.kind == LB_KIND_LVL2 ? (s.dim != 3 || s.sizes[2] != 2) : s.dim != 2) ||
        !same_device(&s, &x)) {
        snprintf(err, LB_ERR_LEN, "scales: expected contiguous float32 (N, %lld%s)", (long long)G,
                 f.kind == LB_KIND_LVL2 ? ", 2" : "");
        goto fail;
    }
    if (z.dtype != lb_t.dt_u8 || z.dim != 2 || !z.contiguous || z.sizes[0] != N ||
        z.sizes[1] != (f.kind == LB_KIND_INT_ASYM ? G : 0) || !same_device(&z, &x)) {
        snprintf(err, LB_ERR_LEN, "zeros: expected contiguous uint8 (N, %lld)",
                 (long long)(f.kind == LB_KIND_INT_ASYM ? G : 0));
        goto fail;
    }
    if (check_meta(&m, &x, N, K, err) || (hb = check_bias(&b, &x, N, err)) < 0) goto fail;
    {
        int64_t osz[2] = {M, N};
        if (lb_empty(2, osz, x.dtype, &x, &out, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(out, &po);
    }
    if (lb24_qlinear_cpu(x.data, lb_float_dtype(x.dtype), M, K, (const uint8_t*)c.data,
                         (const float*)s.data,
                         f.kind == LB_KIND_INT_ASYM ? (const uint8_t*)z.data : NULL, &f, g,
                         (const uint8_t*)m.data, N, hb ? b.data : NULL, po)) {
        snprintf(err, LB_ERR_LEN, "out of memory for sparse24_qlinear scratch");
        goto fail;
    }
    lb24_release_all(&hs);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
fail:
    lb24_release_all(&hs);
    lb_release(&out);
    lb_raise("lowbit::sparse24_qlinear", err);
}

/* sparse24_decompress(Tensor values, Tensor meta) -> Tensor (N, K) of values' dtype */
static void lb_boxed_sparse24_decompress(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    lb24_handles hs = {{(AtenTensorHandle)(uintptr_t)stack[0], (AtenTensorHandle)(uintptr_t)stack[1]},
                       2};
    AtenTensorHandle out = NULL;
    lb_tensor v, m;
    lb_exec e = {0};
    int64_t N, K;
    void* po = NULL;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hs.h[0], "values", &v, err) || lb_describe(hs.h[1], "meta", &m, err))
        goto fail;
    if (lb_float_dtype(v.dtype) < 0 || v.dim != 2 || !v.contiguous || v.sizes[1] % 2 != 0) {
        snprintf(err, LB_ERR_LEN,
                 "values: expected a contiguous float (N, K/2) tensor with K a multiple of 4");
        goto fail;
    }
    N = v.sizes[0];
    K = 2 * v.sizes[1];
    if (check_meta(&m, &v, N, K, err)) goto fail;
    {
        int64_t osz[2] = {N, K};
        if (lb_empty(2, osz, v.dtype, &v, &out, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(out, &po);
    }
    if (N == 0 || K == 0) goto done;
    if (lb_exec_begin(&v, &e, err)) goto fail;
    if (!e.cuda) {
        lb24_decompress_cpu(v.data, lb_float_dtype(v.dtype), (const uint8_t*)m.data, N, K, po);
    }
#ifdef LOWBIT_WITH_CUDA
    else if (lb_cuda_status(lb24_decompress_cuda(v.data, lb_float_dtype(v.dtype),
                                                 (const uint8_t*)m.data, N, K, po, e.stream),
                            "sparse24_decompress", err))
        goto fail;
#endif
    lb_exec_end(&e);
done:
    lb24_release_all(&hs);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
fail:
    lb_exec_end(&e);
    lb24_release_all(&hs);
    lb_release(&out);
    lb_raise("lowbit::sparse24_decompress", err);
}

/* sparse24_cslt_compress(Tensor dense) -> Tensor uint8: the pruned (N, K) float16/bfloat16 CUDA
 * weight in cuSPARSELt's compressed form (opaque bytes). */
static void lb_boxed_sparse24_cslt_compress(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    lb24_handles hs = {{(AtenTensorHandle)(uintptr_t)stack[0]}, 1};
    AtenTensorHandle out = NULL, scratch = NULL;
    lb_tensor w;
    lb_exec e = {0};
    (void)nargs;
    (void)nouts;
    if (lb_describe(hs.h[0], "dense", &w, err) || lb_check_weight(&w, "dense", err)) goto fail;
#ifdef LOWBIT_WITH_CUDA
    if (w.device_type != lb_t.dev_cuda || (w.dtype != lb_t.dt_f16 && w.dtype != lb_t.dt_bf16)) {
        snprintf(err, LB_ERR_LEN, "dense: cuSPARSELt takes a float16/bfloat16 CUDA tensor");
        goto fail;
    }
    {
        int dt = lb_float_dtype(w.dtype);
        int64_t size = 0, ssize = 0;
        void *po = NULL, *ps = NULL;
        if (lb_exec_begin(&w, &e, err)) goto fail;
        if (lb24_cslt_compressed_size(w.device_index, dt, w.sizes[0], w.sizes[1], &size, &ssize,
                                      err))
            goto fail;
        ssize = ssize > 0 ? ssize : 1;
        if (lb_empty(1, &size, lb_t.dt_u8, &w, &out, err) ||
            lb_empty(1, &ssize, lb_t.dt_u8, &w, &scratch, err))
            goto fail;
        lb_t.aoti_torch_get_data_ptr(out, &po);
        lb_t.aoti_torch_get_data_ptr(scratch, &ps);
        if (lb24_cslt_compress(w.device_index, dt, w.sizes[0], w.sizes[1], w.data, po, ps,
                               e.stream, err))
            goto fail;
        lb_exec_end(&e);
    }
    lb_release(&scratch); /* the caching allocator keeps it alive until the stream is done */
    lb24_release_all(&hs);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
#else
    snprintf(err, LB_ERR_LEN, "dense: this lowbit build has no CUDA (cuSPARSELt path unavailable)");
#endif
fail:
    lb_exec_end(&e);
    lb24_release_all(&hs);
    lb_release(&out);
    lb_release(&scratch);
    lb_raise("lowbit::sparse24_cslt_compress", err);
}

/* sparse24_cslt_linear(Tensor x, Tensor packed, Tensor bias, int N) -> Tensor (M, N):
 * x (M, K) float16/bfloat16 CUDA, packed from sparse24_cslt_compress of an (N, K) weight. */
static void lb_boxed_sparse24_cslt_linear(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    lb24_handles hs = {{(AtenTensorHandle)(uintptr_t)stack[0], (AtenTensorHandle)(uintptr_t)stack[1],
                        (AtenTensorHandle)(uintptr_t)stack[2]},
                       3};
    AtenTensorHandle out = NULL;
    lb_tensor x, p, b;
    lb_exec e = {0};
    int64_t N = lb_iv_int(stack[3]);
    int hb;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hs.h[0], "x", &x, err) || lb_describe(hs.h[1], "packed", &p, err) ||
        lb_describe(hs.h[2], "bias", &b, err) || check_x(&x, err))
        goto fail;
    if (N <= 0) {
        snprintf(err, LB_ERR_LEN, "N: must be positive, got %lld", (long long)N);
        goto fail;
    }
    if ((hb = check_bias(&b, &x, N, err)) < 0) goto fail;
#ifdef LOWBIT_WITH_CUDA
    if (x.device_type != lb_t.dev_cuda || (x.dtype != lb_t.dt_f16 && x.dtype != lb_t.dt_bf16)) {
        snprintf(err, LB_ERR_LEN, "x: cuSPARSELt takes a float16/bfloat16 CUDA tensor");
        goto fail;
    }
    if (p.dtype != lb_t.dt_u8 || p.dim != 1 || !same_device(&p, &x)) {
        snprintf(err, LB_ERR_LEN, "packed: expected the uint8 buffer of sparse24_cslt_compress");
        goto fail;
    }
    {
        int64_t osz[2] = {x.sizes[0], N};
        void* po = NULL;
        if (lb_empty(2, osz, x.dtype, &x, &out, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(out, &po);
        if (lb_exec_begin(&x, &e, err)) goto fail;
        if (x.sizes[0] > 0 &&
            lb24_cslt_linear(x.device_index, lb_float_dtype(x.dtype), x.sizes[0], N, x.sizes[1],
                             x.data, p.data, hb ? b.data : NULL, po, e.stream, err))
            goto fail;
        lb_exec_end(&e);
    }
    lb24_release_all(&hs);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
#else
    snprintf(err, LB_ERR_LEN, "x: this lowbit build has no CUDA (cuSPARSELt path unavailable)");
#endif
fail:
    lb_exec_end(&e);
    lb24_release_all(&hs);
    lb_release(&out);
    lb_raise("lowbit::sparse24_cslt_linear", err);
}

/* sparse24_grad_x(Tensor g, Tensor values, Tensor meta) -> Tensor (M, K): g (M, N) @ the pruned
 * weight, on the compressed form; CPU, M <= 8 (larger M: decompress + matmul in Python). */
static void lb_boxed_sparse24_grad_x(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    lb24_handles hs = {{(AtenTensorHandle)(uintptr_t)stack[0], (AtenTensorHandle)(uintptr_t)stack[1],
                        (AtenTensorHandle)(uintptr_t)stack[2]},
                       3};
    AtenTensorHandle out = NULL;
    lb_tensor g, v, m;
    int64_t M, N, K;
    void* po = NULL;
    int rc;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hs.h[0], "g", &g, err) || lb_describe(hs.h[1], "values", &v, err) ||
        lb_describe(hs.h[2], "meta", &m, err))
        goto fail;
    if (lb_float_dtype(g.dtype) < 0 || g.dim != 2 || !g.contiguous || g.device_type != lb_t.dev_cpu) {
        snprintf(err, LB_ERR_LEN, "g: expected a contiguous 2-D float CPU tensor");
        goto fail;
    }
    M = g.sizes[0];
    N = g.sizes[1];
    if (lb_float_dtype(v.dtype) < 0 || v.dim != 2 || !v.contiguous || v.sizes[0] != N ||
        !same_device(&v, &g)) {
        snprintf(err, LB_ERR_LEN, "values: expected a contiguous float (%lld, K/2) CPU tensor",
                 (long long)N);
        goto fail;
    }
    K = 2 * v.sizes[1];
    if (K % 4 != 0) {
        snprintf(err, LB_ERR_LEN, "values: K = %lld is not a multiple of 4", (long long)K);
        goto fail;
    }
    if (M > 8) {
        snprintf(err, LB_ERR_LEN, "g: at most 8 rows (got %lld)", (long long)M);
        goto fail;
    }
    if (check_meta(&m, &g, N, K, err)) goto fail;
    {
        int64_t osz[2] = {M, K};
        if (lb_empty(2, osz, g.dtype, &g, &out, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(out, &po);
    }
    rc = lb24_grad_x_cpu(g.data, lb_float_dtype(g.dtype), M, N, v.data, lb_float_dtype(v.dtype),
                         (const uint8_t*)m.data, K, po);
    if (rc) {
        snprintf(err, LB_ERR_LEN, "out of memory for sparse24_grad_x scratch");
        goto fail;
    }
    lb24_release_all(&hs);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
fail:
    lb24_release_all(&hs);
    lb_release(&out);
    lb_raise("lowbit::sparse24_grad_x", err);
}

const lb_op_def lb_ops_sparse24[] = {
    {"sparse24_linear", "sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor bias) -> Tensor",
     lb_boxed_sparse24_linear, 1},
    {"sparse24_qlinear",
     "sparse24_qlinear(Tensor x, Tensor codes, Tensor scales, Tensor zeros, Tensor meta, "
     "Tensor bias, int fmt, int bits, int group_size, bool symmetric) -> Tensor",
     lb_boxed_sparse24_qlinear, 0},
    {"sparse24_grad_x", "sparse24_grad_x(Tensor g, Tensor values, Tensor meta) -> Tensor",
     lb_boxed_sparse24_grad_x, 0},
    {"sparse24_decompress", "sparse24_decompress(Tensor values, Tensor meta) -> Tensor",
     lb_boxed_sparse24_decompress, 1},
    {"sparse24_cslt_compress", "sparse24_cslt_compress(Tensor dense) -> Tensor",
     lb_boxed_sparse24_cslt_compress, 1},
    {"sparse24_cslt_linear",
     "sparse24_cslt_linear(Tensor x, Tensor packed, Tensor bias, int N) -> Tensor",
     lb_boxed_sparse24_cslt_linear, 1},
    {NULL, NULL, NULL, 0},
};
