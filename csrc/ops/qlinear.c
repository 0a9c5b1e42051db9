/* csrc/ops/qlinear.c: dispatcher glue of the qlinear family (packed low-bit linear layers):
 * unboxes the stack, checks every argument again (the Python wrappers check first, naming the
 * user-facing argument), allocates outputs, and calls the CPU kernels (csrc/cpu/qlinear.h) or
 * the CUDA launcher (cuda/qlinear.cuh) on the current stream. Every error path ends in
 * lb_call_fail, which frees what the call holds.
 *   qlinear_pack(codes, scales, zeros, fmt, bits, group_size, symmetric, K)
 *       -> (packed int32 (NT, KB*bits*16), params float32 (NT, G*32))   [CPU]
 *   quant_linear(x, codes, scales, zeros, packed, params, bias, fmt, bits, group_size,
 *                symmetric) -> y                                        [CPU, CUDA]
 *   qlinear_dequant_t(packed, params, fmt, bits, group_size, symmetric, N, K, kb0, kb1)
 *       -> rows [32*kb0, 32*kb1) of W^T, padded                        [CPU]
 * x (..., K) float32/bf16/f16 contiguous; y (..., N) of x's dtype; bias: (N) of x's dtype or an
 * empty tensor for none; packed/params: the CPU layout of csrc/layouts.h, or empty tensors (the
 * kernels then read the canonical codes). */
#include "lb_check.h"

#include "../cpu/qlinear.h"
#ifdef LOWBIT_WITH_CUDA
#include "../../cuda/qlinear.cuh"
#endif

/* The kernel layout's sizes for (N, K, bits, G), overflow-checked (K names the culprit). */
static int ql_layout_sizes(int64_t N, int64_t K, int bits, int64_t G, int64_t* words,
                           int64_t* params, char* err) {
    if (lb_ql_sizes_checked(N, K, bits, G, words, params))
        return lb_fail(err, "K: the kernel layout of a (%lld, %lld) weight overflows",
                       (long long)N, (long long)K);
    return 0;
}

/* qlinear_pack(Tensor codes, Tensor scales, Tensor zeros, int fmt, int bits, int group_size,
 * bool symmetric, int K) -> (Tensor, Tensor) */
LB_BOXED(lb_boxed_qlinear_pack) {
    lb_call c;
    lb_tensor t[3];
    lb_fmt f;
    const int64_t g = lb_iv_int(stack[5]), K = lb_iv_int(stack[7]);
    int64_t N = 0, words = 0, nparams = 0;
    void *pp = NULL, *pq = NULL;
    lb_call_begin(&c, "lowbit::qlinear_pack", stack, 3);
    if (lb_call_qweight(&c, t, stack + 3, K, &f, &N) ||
        ql_layout_sizes(N, K, f.bits, K / g, &words, &nparams, c.err))
        goto fail;
    if (t[0].device_type != lb_t.dev_cpu) {
        lb_fail(c.err, "codes: the CPU kernel layout is built from CPU tensors");
        goto fail;
    }
    {
        const int64_t NT = lb_ql_tiles(N);
        const int64_t psz[2] = {NT, words / NT}, qsz[2] = {NT, nparams / NT};
        if (lb_call_out(&c, 2, psz, lb_t.dt_i32, &t[0], &pp) ||
            lb_call_out(&c, 2, qsz, lb_t.dt_f32, &t[0], &pq))
            goto fail;
        lb_ql_pack_cpu((const uint8_t*)t[0].data, (const float*)t[1].data,
                       f.kind == LB_KIND_INT_ASYM ? (const uint8_t*)t[2].data : NULL, N, K, g, &f,
                       (int32_t*)pp, (float*)pq);
    }
    LB_CALL_END(c);
}

/* quant_linear(Tensor x, Tensor codes, Tensor scales, Tensor zeros, Tensor packed,
 * Tensor params, Tensor bias, int fmt, int bits, int group_size, bool symmetric) -> Tensor */
LB_BOXED(lb_boxed_quant_linear) {
    static const char* names[7] = {"x", "codes", "scales", "zeros", "packed", "params", "bias"};
    lb_call c;
    lb_tensor t[7];
    lb_fmt f;
    const lb_tensor *x = &t[0], *pk = &t[4], *pr = &t[5], *b = &t[6];
    const int64_t g = lb_iv_int(stack[9]);
    int64_t K, N = 0, M = 1, words = 0, nparams = 0;
    int dt, hb, use_packed = 0;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::quant_linear", stack, 7);
    for (int i = 0; i < 7; ++i)
        if (lb_call_arg(&c, i, names[i], &t[i])) goto fail;
    if ((dt = lb_check_float(x, "x", c.err)) < 0) goto fail;
    if (x->dim < 1 || !x->contiguous) {
        lb_fail(c.err, "x: expected a contiguous (..., K) tensor");
        goto fail;
    }
    K = x->sizes[x->dim - 1];
    if (K <= 0) {
        lb_fail(c.err, "x: in_features K must be positive, got %lld", (long long)K);
        goto fail;
    }
    if (lb_check_spec(lb_iv_int(stack[7]), lb_iv_int(stack[8]), g, lb_iv_bool(stack[10]), K, &f,
                      c.err) ||
        lb_check_qweight(&t[1], &t[2], &t[3], lb_qweight_names, &f, K, g, &N, c.err))
        goto fail;
    for (int64_t i = 0; i + 1 < x->dim; ++i) M *= x->sizes[i]; /* x exists: no overflow */
    for (int i = 1; i < 7; ++i)
        if (lb_check_same_device(&t[i], names[i], x, "x", c.err)) goto fail;
    if ((hb = lb_check_bias(b, x, N, c.err)) < 0) goto fail;
    if (pk->numel != 0 || pr->numel != 0) {
        if (ql_layout_sizes(N, K, f.bits, K / g, &words, &nparams, c.err)) goto fail;
        if (pk->dtype != lb_t.dt_i32 || !pk->contiguous || pk->numel != words) {
            lb_fail(c.err, "packed: expected %lld contiguous int32 words", (long long)words);
            goto fail;
        }
        if (pr->dtype != lb_t.dt_f32 || !pr->contiguous || pr->numel != nparams) {
            lb_fail(c.err, "params: expected %lld contiguous float32 values", (long long)nparams);
            goto fail;
        }
        use_packed = 1;
    }
    {
        int64_t osz[LB_MAX_DIM];
        for (int64_t i = 0; i + 1 < x->dim; ++i) osz[i] = x->sizes[i];
        osz[x->dim - 1] = N;
        if (lb_check_numel(osz, (int)x->dim, 4, "x", c.err) ||
            lb_call_out(&c, x->dim, osz, x->dtype, x, &po))
            goto fail;
    }
    if (M > 0) {
        if (lb_call_exec(&c, x)) goto fail;
        if (!c.exec.cuda) {
            if (lb_ql_forward_cpu(x->data, dt, M, N, K, g, &f, (const uint8_t*)t[1].data,
                                  (const float*)t[2].data, (const uint8_t*)t[3].data,
                                  use_packed ? (const int32_t*)pk->data : NULL,
                                  use_packed ? (const float*)pr->data : NULL,
                                  hb ? b->data : NULL, po)) {
                lb_fail(c.err, "x: out of memory for quant_linear scratch");
                goto fail;
            }
        }
#ifdef LOWBIT_WITH_CUDA
        else if (lb_cuda_status(lb_ql_forward_cuda(x->data, dt, M, N, K, g, &f,
                                                   (const uint8_t*)t[1].data,
                                                   (const float*)t[2].data,
                                                   (const uint8_t*)t[3].data, hb ? b->data : NULL,
                                                   po, c.exec.stream),
                                "quant_linear", c.err))
            goto fail;
#endif
    }
    LB_CALL_END(c);
}

/* qlinear_dequant_t(Tensor packed, Tensor params, int fmt, int bits, int group_size,
 * bool symmetric, int N, int K, int kb0, int kb1) -> Tensor float32 ((kb1-kb0)*32, NT*16):
 * rows [32*kb0, 32*kb1) of W^T, padded (CPU). */
LB_BOXED(lb_boxed_qlinear_dequant_t) {
    lb_call c;
    lb_tensor p, q;
    lb_fmt f;
    const int64_t g = lb_iv_int(stack[4]);
    const int64_t N = lb_iv_int(stack[6]), K = lb_iv_int(stack[7]);
    const int64_t kb0 = lb_iv_int(stack[8]), kb1 = lb_iv_int(stack[9]);
    int64_t words = 0, nparams = 0;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::qlinear_dequant_t", stack, 2);
    if (lb_call_arg(&c, 0, "packed", &p) || lb_call_arg(&c, 1, "params", &q)) goto fail;
    if (N <= 0 || K <= 0) {
        lb_fail(c.err, "%s: must be positive, got %lld", N <= 0 ? "N" : "K",
                (long long)(N <= 0 ? N : K));
        goto fail;
    }
    if (lb_check_spec(lb_iv_int(stack[2]), lb_iv_int(stack[3]), g, lb_iv_bool(stack[5]), K, &f,
                      c.err) ||
        lb_check_int(kb0, "kb0", 0, lb_ql_kblocks(K) - 1, c.err) ||
        lb_check_int(kb1, "kb1", kb0 + 1, lb_ql_kblocks(K), c.err))
        goto fail;
    if (!lb_ql_packable(K, g)) {
        lb_fail(c.err, "group_size: %lld has no packed CPU layout", (long long)g);
        goto fail;
    }
    if (ql_layout_sizes(N, K, f.bits, K / g, &words, &nparams, c.err)) goto fail;
    if (p.device_type != lb_t.dev_cpu || q.device_type != lb_t.dev_cpu || p.dtype != lb_t.dt_i32 ||
        !p.contiguous || p.numel != words) {
        lb_fail(c.err, "packed: expected %lld contiguous int32 words on the CPU", (long long)words);
        goto fail;
    }
    if (q.dtype != lb_t.dt_f32 || !q.contiguous || q.numel != nparams) {
        lb_fail(c.err, "params: expected %lld contiguous float32 values", (long long)nparams);
        goto fail;
    }
    {
        /* (kb1 - kb0) * 32 <= Kp and NT * 16 fit: the packed layout of this size exists */
        const int64_t osz[2] = {(kb1 - kb0) * LB_QL_KBLK, lb_ql_tiles(N) * LB_QL_TILE};
        if (lb_check_numel(osz, 2, 4, "N", c.err) || lb_call_out(&c, 2, osz, lb_t.dt_f32, &p, &po))
            goto fail;
        lb_ql_dequant_t_cpu((const int32_t*)p.data, (const float*)q.data, N, K, g, &f, kb0, kb1,
                            (float*)po);
    }
    LB_CALL_END(c);
}

const lb_op_def lb_ops_qlinear[] = {
    {"qlinear_dequant_t",
     "qlinear_dequant_t(Tensor packed, Tensor params, int fmt, int bits, int group_size, "
     "bool symmetric, int N, int K, int kb0, int kb1) -> Tensor",
     lb_boxed_qlinear_dequant_t, 0},
    {"qlinear_pack",
     "qlinear_pack(Tensor codes, Tensor scales, Tensor zeros, int fmt, int bits, int group_size, "
     "bool symmetric, int K) -> (Tensor, Tensor)",
     lb_boxed_qlinear_pack, 0},
    {"quant_linear",
     "quant_linear(Tensor x, Tensor codes, Tensor scales, Tensor zeros, Tensor packed, "
     "Tensor params, Tensor bias, int fmt, int bits, int group_size, bool symmetric) -> Tensor",
     lb_boxed_quant_linear, 1},
    {NULL, NULL, NULL, 0},
};
