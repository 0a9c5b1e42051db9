/* csrc/ops/sparse24.c: dispatcher glue of the sparse24 family (2:4 structured sparsity): unboxes
 * the stack, checks every argument again (python/lowbit/sparse/sparse24.py checks first, naming
 * the argument), allocates outputs and calls the CPU kernels (csrc/cpu/sparse24.h) or the CUDA
 * launchers (cuda/sparse24.cuh). Every error path ends in lb_call_fail, which frees what the
 * call holds. The compressed layout is in csrc/layouts.h. */
#include "lb_check.h"

#include "../cpu/sparse24.h"
#ifdef LOWBIT_WITH_CUDA
#include "../../cuda/sparse24.cuh"
LB_STATIC_ASSERT(LB_CUDA_ERR_LEN == LB_ERR_LEN, "one error buffer size for glue and launchers");
#endif

/* x (M, K) float, contiguous, K a positive multiple of 4. */
static int check_x(const lb_tensor* x, char* err) {
    if (lb_check_float(x, "x", err) < 0) return -1;
    if (x->dim != 2 || !x->contiguous)
        return lb_fail(err, "x: expected a contiguous 2-D (M, K) tensor");
    if (x->sizes[1] % LB24_GROUP != 0 || x->sizes[1] == 0)
        return lb_fail(err, "x: in_features K = %lld must be a positive multiple of 4",
                       (long long)x->sizes[1]);
    return 0;
}

static int meta_bad_fail(int64_t row, char* err) {
    return lb_fail(err, "meta: row %lld holds an invalid 2:4 group (its two 2-bit indices "
                   "must be strictly increasing, padding nibbles zero)", (long long)row);
}

/* meta uint8 (N, meta_bytes(K)) on like's device; on CPU also its content: every group's two
 * indices strictly increasing and padding nibbles zero, so that no two kernels can read one
 * meta differently (sparse24_linear and sparse24_decompress agree by construction). With
 * `content` 0 the caller's CPU kernel checks the rows as it reads them instead (one pass over
 * meta, not two) and returns -2 (cpu_forward_status names the row). A CUDA
 * meta is not read here (that would cost a device sync per call): lowbit.sparse checks it
 * wherever a Sparse24Weight is built or a SparseLinear24 is loaded; nor is a check-only call's
 * description (it has no data: a fake kernel cannot see the content). */
static int check_meta(const lb_tensor* meta, const lb_tensor* like, const char* likename,
                      int64_t N, int64_t K, int content, char* err) {
    int64_t bad;
    if (meta->dtype != lb_t.dt_u8 || meta->dim != 2 || !meta->contiguous ||
        meta->sizes[0] != N || meta->sizes[1] != lb24_meta_bytes(K))
        return lb_fail(err, "meta: expected contiguous uint8 (%lld, %lld)", (long long)N,
                       (long long)lb24_meta_bytes(K));
    if (lb_check_same_device(meta, "meta", like, likename, err)) return -1;
    if (content && meta->device_type == lb_t.dev_cpu && meta->data && N > 0 &&
        (bad = lb24_meta_bad_row((const uint8_t*)meta->data, N, K)) >= 0)
        return meta_bad_fail(bad, err);
    return 0;
}

/* A CPU forward kernel's status: 0, -1 (out of memory) or -2 (meta holds a bad row). */
static int cpu_forward_status(int rc, const lb_tensor* meta, int64_t N, int64_t K,
                              const char* op, char* err) {
    if (rc == -2) return meta_bad_fail(lb24_meta_bad_row((const uint8_t*)meta->data, N, K), err);
    if (rc) return lb_fail(err, "x: out of memory for %s scratch", op);
    return 0;
}

/* K = 2 * (kept values per row), overflow-checked: values of shape (N, K/2). */
static int kept_to_k(const lb_tensor* v, int64_t* K, char* err) {
    if (lb_mul64(v->sizes[1], LB24_GROUP / LB24_KEPT, K))
        return lb_fail(err, "values: %lld kept values per row overflow K", (long long)v->sizes[1]);
    return 0;
}

/* sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor bias) -> Tensor (M, N) */
LB_BOXED(lb_boxed_sparse24_linear) {
    lb_call c;
    lb_tensor x, v, m, b;
    int64_t M, K, N;
    int hb;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::sparse24_linear", stack, 4);
    if (lb_call_arg(&c, 0, "x", &x) || lb_call_arg(&c, 1, "values", &v) ||
        lb_call_arg(&c, 2, "meta", &m) || lb_call_arg(&c, 3, "bias", &b) || check_x(&x, c.err))
        goto fail;
    M = x.sizes[0];
    K = x.sizes[1];
    if (v.dtype != x.dtype || v.dim != 2 || !v.contiguous || v.sizes[1] != K / 2 ||
        lb_check_same_device(&v, "values", &x, "x", c.err)) {
        lb_fail(c.err, "values: expected a contiguous (N, %lld) tensor of x's dtype and device",
                (long long)(K / 2));
        goto fail;
    }
    N = v.sizes[0];
    if (check_meta(&m, &x, "x", N, K, 0, c.err) || (hb = lb_check_bias(&b, &x, N, c.err)) < 0)
        goto fail;
    {
        const int64_t osz[2] = {M, N};
        if (lb_check_numel(osz, 2, 4, "x", c.err) || lb_call_out(&c, 2, osz, x.dtype, &x, &po) ||
            lb_call_exec(&c, &x))
            goto fail;
    }
    if (!c.exec.cuda) {
        const int rc = lb24_linear_cpu(x.data, lb_float_dtype(x.dtype), M, K, v.data,
                                       lb_float_dtype(v.dtype), (const uint8_t*)m.data, N,
                                       hb ? b.data : NULL, po);
        if (cpu_forward_status(rc, &m, N, K, "sparse24_linear", c.err))
            goto fail;
    }
#ifdef LOWBIT_WITH_CUDA
    else if (lb_cuda_status(lb24_linear_cuda(x.data, lb_float_dtype(x.dtype), M, K, v.data,
                                             (const uint8_t*)m.data, N, hb ? b.data : NULL, po,
                                             c.exec.stream),
                            "sparse24_linear", c.err))
        goto fail;
#endif
    LB_CALL_END(c);
}

/* sparse24_qlinear(Tensor x, Tensor codes, Tensor scales, Tensor zeros, Tensor meta,
 *                  Tensor bias, int fmt, int bits, int group_size, bool symmetric) -> Tensor
 * The kept values (N, K/2) packed as lowbit.quantize packs them (groups of group_size kept
 * values). CPU only: on CUDA the Python wrapper dequantizes and takes the float path. */
LB_BOXED(lb_boxed_sparse24_qlinear) {
    const char* const* names = lb_qweight_names;
    lb_call c;
    lb_tensor x, t[3], m, b;
    lb_fmt f;
    const int64_t g = lb_iv_int(stack[8]);
    int64_t M, K, N;
    int hb;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::sparse24_qlinear", stack, 6);
    if (lb_call_arg(&c, 0, "x", &x) || lb_call_arg(&c, 1, names[0], &t[0]) ||
        lb_call_arg(&c, 2, names[1], &t[1]) || lb_call_arg(&c, 3, names[2], &t[2]) ||
        lb_call_arg(&c, 4, "meta", &m) || lb_call_arg(&c, 5, "bias", &b) || check_x(&x, c.err))
        goto fail;
    M = x.sizes[0];
    K = x.sizes[1];
    if (x.device_type != lb_t.dev_cpu) {
        lb_fail(c.err, "x: sparse24_qlinear has a CPU kernel only");
        goto fail;
    }
    if (lb_check_spec(lb_iv_int(stack[6]), lb_iv_int(stack[7]), g, lb_iv_bool(stack[9]), K / 2,
                      &f, c.err) ||
        lb_check_not_blocks(&f, "sparse24_qlinear", c.err) ||
        lb_check_qweight(&t[0], &t[1], &t[2], names, &f, K / 2, g, &N, c.err) ||
        lb_check_same_device(&t[0], "codes", &x, "x", c.err) ||
        check_meta(&m, &x, "x", N, K, 0, c.err) || (hb = lb_check_bias(&b, &x, N, c.err)) < 0)
        goto fail;
    {
        const int64_t osz[2] = {M, N};
        if (lb_check_numel(osz, 2, 4, "x", c.err) || lb_call_out(&c, 2, osz, x.dtype, &x, &po) ||
            lb_call_exec(&c, &x))
            goto fail;
    }
    {
        const int rc = lb24_qlinear_cpu(x.data, lb_float_dtype(x.dtype), M, K,
                                        (const uint8_t*)t[0].data, (const float*)t[1].data,
                                        f.zeros ? (const uint8_t*)t[2].data : NULL, &f, g,
                                        (const uint8_t*)m.data, N, hb ? b.data : NULL, po);
        if (cpu_forward_status(rc, &m, N, K, "sparse24_qlinear", c.err)) goto fail;
    }
    LB_CALL_END(c);
}

/* sparse24_decompress(Tensor values, Tensor meta) -> Tensor (N, K) of values' dtype */
LB_BOXED(lb_boxed_sparse24_decompress) {
    lb_call c;
    lb_tensor v, m;
    int64_t N, K;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::sparse24_decompress", stack, 2);
    if (lb_call_arg(&c, 0, "values", &v) || lb_call_arg(&c, 1, "meta", &m)) goto fail;
    if (lb_float_dtype(v.dtype) < 0 || v.dim != 2 || !v.contiguous || v.sizes[1] % 2 != 0) {
        lb_fail(c.err, "values: expected a contiguous float (N, K/2) tensor with K a multiple of 4");
        goto fail;
    }
    N = v.sizes[0];
    if (kept_to_k(&v, &K, c.err) || check_meta(&m, &v, "values", N, K, 1, c.err)) goto fail;
    {
        const int64_t osz[2] = {N, K};
        if (lb_check_numel(osz, 2, 4, "values", c.err) ||
            lb_call_out(&c, 2, osz, v.dtype, &v, &po))
            goto fail;
    }
    if (N > 0 && K > 0) {
        if (lb_call_exec(&c, &v)) goto fail;
        if (!c.exec.cuda) {
            lb24_decompress_cpu(v.data, lb_float_dtype(v.dtype), (const uint8_t*)m.data, N, K, po);
        }
#ifdef LOWBIT_WITH_CUDA
        else if (lb_cuda_status(lb24_decompress_cuda(v.data, lb_float_dtype(v.dtype),
                                                     (const uint8_t*)m.data, N, K, po,
                                                     c.exec.stream),
                                "sparse24_decompress", c.err))
            goto fail;
#endif
    }
    LB_CALL_END(c);
}

/* sparse24_cslt_compress(Tensor dense) -> Tensor uint8: the pruned (N, K) float16/bfloat16 CUDA
 * weight in cuSPARSELt's compressed form (opaque bytes). */
LB_BOXED(lb_boxed_sparse24_cslt_compress) {
    lb_call c;
    lb_tensor w;
    lb_call_begin(&c, "lowbit::sparse24_cslt_compress", stack, 1);
    if (lb_call_arg(&c, 0, "dense", &w) || lb_check_weight(&w, "dense", c.err)) goto fail;
#ifdef LOWBIT_WITH_CUDA
    if (w.device_type != lb_t.dev_cuda || (w.dtype != lb_t.dt_f16 && w.dtype != lb_t.dt_bf16)) {
        lb_fail(c.err, "dense: cuSPARSELt takes a float16/bfloat16 CUDA tensor");
        goto fail;
    }
    {
        const int dt = lb_float_dtype(w.dtype);
        int64_t size = 0, ssize = 0;
        void *po = NULL, *ps = NULL;
        if (lb_call_exec(&c, &w) ||
            lb24_cslt_compressed_size(w.device_index, dt, w.sizes[0], w.sizes[1], &size, &ssize,
                                      c.err))
            goto fail;
        ssize = ssize > 0 ? ssize : 1;
        /* the scratch goes back to the caching allocator, which keeps it until the stream is
         * done with it */
        if (lb_call_out(&c, 1, &size, lb_t.dt_u8, &w, &po) ||
            lb_call_tmp(&c, 1, &ssize, lb_t.dt_u8, &w, &ps) ||
            lb24_cslt_compress(w.device_index, dt, w.sizes[0], w.sizes[1], w.data, po, ps,
                               c.exec.stream, c.err))
            goto fail;
    }
    lb_call_return(&c, stack);
    return;
#else
    lb_fail(c.err, "dense: this lowbit build has no CUDA (cuSPARSELt path unavailable)");
#endif
fail:
    lb_call_fail(&c);
}

/* sparse24_cslt_linear(Tensor x, Tensor packed, Tensor meta, Tensor bias, int N) -> Tensor
 * (M, N): x (M, K) float16/bfloat16 CUDA, packed from sparse24_cslt_compress of an (N, K)
 * weight, meta that weight's lb24 meta (the launcher finds the outputs a NaN/inf x at a pruned
 * position makes NaN, which cuSPARSELt does not see). */
LB_BOXED(lb_boxed_sparse24_cslt_linear) {
    lb_call c;
    lb_tensor x, p, m, b;
    const int64_t N = lb_iv_int(stack[4]);
    int hb;
    lb_call_begin(&c, "lowbit::sparse24_cslt_linear", stack, 4);
    if (lb_call_arg(&c, 0, "x", &x) || lb_call_arg(&c, 1, "packed", &p) ||
        lb_call_arg(&c, 2, "meta", &m) || lb_call_arg(&c, 3, "bias", &b) || check_x(&x, c.err))
        goto fail;
    if (N <= 0) {
        lb_fail(c.err, "N: must be positive, got %lld", (long long)N);
        goto fail;
    }
    if (check_meta(&m, &x, "x", N, x.sizes[1], 1, c.err) ||
        (hb = lb_check_bias(&b, &x, N, c.err)) < 0)
        goto fail;
#ifdef LOWBIT_WITH_CUDA
    if (x.device_type != lb_t.dev_cuda || (x.dtype != lb_t.dt_f16 && x.dtype != lb_t.dt_bf16)) {
        lb_fail(c.err, "x: cuSPARSELt takes a float16/bfloat16 CUDA tensor");
        goto fail;
    }
    if (p.dtype != lb_t.dt_u8 || p.dim != 1 || lb_check_same_device(&p, "packed", &x, "x", c.err)) {
        lb_fail(c.err, "packed: expected the uint8 buffer of sparse24_cslt_compress");
        goto fail;
    }
    {
        const int64_t osz[2] = {x.sizes[0], N};
        void* po = NULL;
        if (lb_check_numel(osz, 2, 2, "N", c.err) || lb_call_out(&c, 2, osz, x.dtype, &x, &po) ||
            lb_call_exec(&c, &x))
            goto fail;
        if (x.sizes[0] > 0 &&
            lb24_cslt_linear(x.device_index, lb_float_dtype(x.dtype), x.sizes[0], N, x.sizes[1],
                             x.data, p.data, (const uint8_t*)m.data, hb ? b.data : NULL, po,
                             c.exec.stream, c.err))
            goto fail;
    }
    lb_call_return(&c, stack);
    return;
#else
    (void)hb;
    lb_fail(c.err, "x: this lowbit build has no CUDA (cuSPARSELt path unavailable)");
#endif
fail:
    lb_call_fail(&c);
}

/* sparse24_grad_x(Tensor g, Tensor values, Tensor meta) -> Tensor (M, K): g (M, N) @ the pruned
 * weight, on the compressed form; CPU, M <= LB24_GRAD_X_MAX_M (larger M: decompress + matmul in
 * Python). */
LB_BOXED(lb_boxed_sparse24_grad_x) {
    lb_call c;
    lb_tensor g, v, m;
    int64_t M, N, K;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::sparse24_grad_x", stack, 3);
    if (lb_call_arg(&c, 0, "g", &g) || lb_call_arg(&c, 1, "values", &v) ||
        lb_call_arg(&c, 2, "meta", &m))
        goto fail;
    if (lb_float_dtype(g.dtype) < 0 || g.dim != 2 || !g.contiguous || g.device_type != lb_t.dev_cpu) {
        lb_fail(c.err, "g: expected a contiguous 2-D float CPU tensor");
        goto fail;
    }
    M = g.sizes[0];
    N = g.sizes[1];
    if (lb_float_dtype(v.dtype) < 0 || v.dim != 2 || !v.contiguous || v.sizes[0] != N ||
        lb_check_same_device(&v, "values", &g, "g", c.err)) {
        lb_fail(c.err, "values: expected a contiguous float (%lld, K/2) CPU tensor", (long long)N);
        goto fail;
    }
    if (kept_to_k(&v, &K, c.err)) goto fail;
    if (K % LB24_GROUP != 0) {
        lb_fail(c.err, "values: K = %lld is not a multiple of 4", (long long)K);
        goto fail;
    }
    if (M > LB24_GRAD_X_MAX_M) {
        lb_fail(c.err, "g: at most %d rows (got %lld)", LB24_GRAD_X_MAX_M, (long long)M);
        goto fail;
    }
    if (check_meta(&m, &g, "g", N, K, 1, c.err)) goto fail;
    {
        const int64_t osz[2] = {M, K};
        if (lb_check_numel(osz, 2, 4, "values", c.err) ||
            lb_call_out(&c, 2, osz, g.dtype, &g, &po) || lb_call_exec(&c, &g))
            goto fail;
    }
    if (lb24_grad_x_cpu(g.data, lb_float_dtype(g.dtype), M, N, v.data, lb_float_dtype(v.dtype),
                        (const uint8_t*)m.data, K, po)) {
        lb_fail(c.err, "g: out of memory for sparse24_grad_x scratch");
        goto fail;
    }
    LB_CALL_END(c);
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
     "sparse24_cslt_linear(Tensor x, Tensor packed, Tensor meta, Tensor bias, int N) -> Tensor",
     lb_boxed_sparse24_cslt_linear, 1},
    {NULL, NULL, NULL, 0},
};
