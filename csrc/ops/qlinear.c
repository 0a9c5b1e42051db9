/* csrc/ops/qlinear.c: dispatcher glue of the qlinear family (packed low-bit linear layers):
 * unboxes the stack, checks every argument again (the Python wrappers check first, naming the
 * user-facing argument), allocates outputs, and calls the CPU kernels or the CUDA launchers on
 * the current stream. Every error path frees what it holds before raising.
 *   qlinear_pack(codes, scales, zeros, fmt, bits, group_size, symmetric, K)
 *       -> (packed int32 (NT, KB*bits*16), params float32 (NT, G*32))   [CPU]
 *   quant_linear(x, codes, scales, zeros, packed, params, bias, fmt, bits, group_size,
 *                symmetric) -> y                                        [CPU, CUDA]
 * x (..., K) float32/bf16/f16 contiguous; y (..., N) of x's dtype; bias: (N) of x's dtype or an
 * empty tensor for none; packed/params: the CPU layout of csrc/ops/qlinear.h, or empty tensors
 * (the kernels then read the canonical codes). */
#include <stdio.h>
#include <string.h>

#include "fake_quant.h"
#include "qlinear.h"

/* codes (N, row_bytes(K)) uint8, scales (N, G[, 2]) float32, zeros (N, G or 0) uint8, one
 * device; resolves f and N. */
static int ql_check_packed(const lb_tensor* c, const lb_tensor* s, const lb_tensor* z,
                           int64_t fmt, int64_t bits, int64_t g, bool sym, int64_t K, lb_fmt* f,
                           int64_t* N, char* err) {
    int64_t G;
    if (K <= 0) {
        snprintf(err, LB_ERR_LEN, "x: in_features K must be positive, got %lld", (long long)K);
        return -1;
    }
    if (lb_check_spec(fmt, bits, g, sym, K, f, err)) return -1;
    G = K / g;
    *N = c->dim == 2 ? c->sizes[0] : -1;
    if (c->dtype != lb_t.dt_u8 || c->dim != 2 || !c->contiguous || *N <= 0 ||
        c->sizes[1] != lb_row_bytes(K, (int)bits)) {
        snprintf(err, LB_ERR_LEN, "qw: codes must be contiguous uint8 (N, %lld) for K = %lld",
                 (long long)lb_row_bytes(K, (int)bits), (long long)K);
        return -1;
    }
    if (s->dtype != lb_t.dt_f32 || !s->contiguous || s->dim < 2 || s->sizes[0] != *N ||
        s->sizes[1] != G ||
        (f->kind == LB_KIND_LVL2 ? (s->dim != 3 || s->sizes[2] != 2) : s->dim != 2)) {
        snprintf(err, LB_ERR_LEN, "qw: scales must be contiguous float32 (N, %lld%s)",
                 (long long)G, f->kind == LB_KIND_LVL2 ? ", 2" : "");
        return -1;
    }
    if (z->dtype != lb_t.dt_u8 || z->dim != 2 || !z->contiguous || z->sizes[0] != *N ||
        z->sizes[1] != (f->kind == LB_KIND_INT_ASYM ? G : 0)) {
        snprintf(err, LB_ERR_LEN, "qw: zeros must be contiguous uint8 (N, %lld)",
                 (long long)(f->kind == LB_KIND_INT_ASYM ? G : 0));
        return -1;
    }
    if (s->device_type != c->device_type || s->device_index != c->device_index ||
        z->device_type != c->device_type || z->device_index != c->device_index) {
        snprintf(err, LB_ERR_LEN, "qw: codes, scales and zeros must be on one device");
        return -1;
    }
    return 0;
}

/* qlinear_pack(Tensor codes, Tensor scales, Tensor zeros, int fmt, int bits, int group_size,
 * bool symmetric, int K) -> (Tensor, Tensor) */
static void lb_boxed_qlinear_pack(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle hc = (AtenTensorHandle)(uintptr_t)stack[0];
    AtenTensorHandle hs = (AtenTensorHandle)(uintptr_t)stack[1];
    AtenTensorHandle hz = (AtenTensorHandle)(uintptr_t)stack[2], hp = NULL, hq = NULL;
    lb_tensor c, s, z;
    lb_fmt f;
    int64_t fmt = lb_iv_int(stack[3]), bits = lb_iv_int(stack[4]), g = lb_iv_int(stack[5]);
    bool sym = lb_iv_bool(stack[6]);
    int64_t K = lb_iv_int(stack[7]), N = 0;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hc, "codes", &c, err) || lb_describe(hs, "scales", &s, err) ||
        lb_describe(hz, "zeros", &z, err) ||
        ql_check_packed(&c, &s, &z, fmt, bits, g, sym, K, &f, &N, err))
        goto fail;
    if (c.device_type != lb_t.dev_cpu) {
        snprintf(err, LB_ERR_LEN, "qw: the CPU kernel layout is built from CPU tensors");
        goto fail;
    }
    {
        const int64_t NT = (N + 15) / 16;
        int64_t psz[2] = {NT, lb_ql_packed_words(N, K, (int)bits) / NT};
        int64_t qsz[2] = {NT, lb_ql_params_floats(N, K / g) / NT};
        void *pp = NULL, *pq = NULL;
        if (lb_empty(2, psz, lb_t.dt_i32, &c, &hp, err) ||
            lb_empty(2, qsz, lb_t.dt_f32, &c, &hq, err))
            goto fail;
        lb_t.aoti_torch_get_data_ptr(hp, &pp);
        lb_t.aoti_torch_get_data_ptr(hq, &pq);
        lb_ql_pack_cpu((const uint8_t*)c.data, (const float*)s.data,
                       f.kind == LB_KIND_INT_ASYM ? (const uint8_t*)z.data : NULL, N, K, g, &f,
                       (int32_t*)pp, (float*)pq);
    }
    lb_release(&hc);
    lb_release(&hs);
    lb_release(&hz);
    stack[0] = (StableIValue)(uintptr_t)hp;
    stack[1] = (StableIValue)(uintptr_t)hq;
    return;
fail:
    lb_release(&hc);
    lb_release(&hs);
    lb_release(&hz);
    lb_release(&hp);
    lb_release(&hq);
    lb_raise("lowbit::qlinear_pack", err);
}

/* quant_linear(Tensor x, Tensor codes, Tensor scales, Tensor zeros, Tensor packed,
 * Tensor params, Tensor bias, int fmt, int bits, int group_size, bool symmetric) -> Tensor */
static void lb_boxed_quant_linear(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle h[7], out = NULL;
    static const char* names[7] = {"x", "codes", "scales", "zeros", "packed", "params", "bias"};
    lb_tensor t[7];
    lb_fmt f;
    lb_exec e = {0};
    int64_t fmt = lb_iv_int(stack[7]), bits = lb_iv_int(stack[8]), g = lb_iv_int(stack[9]);
    bool sym = lb_iv_bool(stack[10]);
    int64_t K, N = 0, M = 1;
    int dt, use_packed = 0;
    (void)nargs;
    (void)nouts;
    for (int i = 0; i < 7; ++i) h[i] = (AtenTensorHandle)(uintptr_t)stack[i];
    for (int i = 0; i < 7; ++i)
        if (lb_describe(h[i], names[i], &t[i], err)) goto fail;
    {
        const lb_tensor *x = &t[0], *pk = &t[4], *pr = &t[5], *b = &t[6];
        dt = lb_float_dtype(x->dtype);
        if (dt < 0) {
            snprintf(err, LB_ERR_LEN, "x: dtype must be float32, bfloat16 or float16");
            goto fail;
        }
        if (x->dim < 1 || !x->contiguous) {
            snprintf(err, LB_ERR_LEN, "x: expected a contiguous (..., K) tensor");
            goto fail;
        }
        K = x->sizes[x->dim - 1];
        if (ql_check_packed(&t[1], &t[2], &t[3], fmt, bits, g, sym, K, &f, &N, err)) goto fail;
        for (int64_t i = 0; i + 1 < x->dim; ++i) M *= x->sizes[i];
        for (int i = 1; i < 7; ++i)
            if (t[i].device_type != x->device_type || t[i].device_index != x->device_index) {
                snprintf(err, LB_ERR_LEN, "%s: must be on x's device", names[i]);
                goto fail;
            }
        if (b->numel != 0 && (b->dim != 1 || b->sizes[0] != N || b->dtype != x->dtype ||
                              !b->contiguous)) {
            snprintf(err, LB_ERR_LEN, "bias: expected a contiguous (%lld,) tensor of x's dtype",
                     (long long)N);
            goto fail;
        }
        if (pk->numel != 0 || pr->numel != 0) {
            if (pk->dtype != lb_t.dt_i32 || !pk->contiguous ||
                pk->numel != lb_ql_packed_words(N, K, (int)bits)) {
                snprintf(err, LB_ERR_LEN, "packed: expected %lld contiguous int32 words",
                         (long long)lb_ql_packed_words(N, K, (int)bits));
                goto fail;
            }
            if (pr->dtype != lb_t.dt_f32 || !pr->contiguous ||
                pr->numel != lb_ql_params_floats(N, K / g)) {
                snprintf(err, LB_ERR_LEN, "params: expected %lld contiguous float32 values",
                         (long long)lb_ql_params_floats(N, K / g));
                goto fail;
            }
            use_packed = 1;
        }
        {
            int64_t osz[LB_MAX_DIM];
            void* po = NULL;
            for (int64_t i = 0; i + 1 < x->dim; ++i) osz[i] = x->sizes[i];
            osz[x->dim - 1] = N;
            if (lb_empty(x->dim, osz, x->dtype, x, &out, err)) goto fail;
            lb_t.aoti_torch_get_data_ptr(out, &po);
            if (M == 0) goto done;
            if (lb_exec_begin(x, &e, err)) goto fail;
            if (!e.cuda) {
                if (lb_ql_forward_cpu(x->data, dt, M, N, K, g, &f, (const uint8_t*)t[1].data,
                                      (const float*)t[2].data, (const uint8_t*)t[3].data,
                                      use_packed ? (const int32_t*)pk->data : NULL,
                                      use_packed ? (const float*)pr->data : NULL,
                                      b->numel ? b->data : NULL, po)) {
                    snprintf(err, LB_ERR_LEN, "out of memory for quant_linear scratch");
                    goto fail;
                }
            }
#ifdef LOWBIT_WITH_CUDA
            else if (lb_cuda_status(lb_ql_forward_cuda(x->data, dt, M, N, K, g, &f,
                                                       (const uint8_t*)t[1].data,
                                                       (const float*)t[2].data,
                                                       (const uint8_t*)t[3].data,
                                                       b->numel ? b->data : NULL, po, e.stream),
                                    "quant_linear", err))
                goto fail;
#endif
            lb_exec_end(&e);
        }
    }
done:
    for (int i = 0; i < 7; ++i) lb_release(&h[i]);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
fail:
    lb_exec_end(&e);
    for (int i = 0; i < 7; ++i) lb_release(&h[i]);
    lb_release(&out);
    lb_raise("lowbit::quant_linear", err);
}

/* qlinear_dequant_t(Tensor packed, Tensor params, int fmt, int bits, int group_size,
 * bool symmetric, int N, int K, int kb0, int kb1) -> Tensor float32 ((kb1-kb0)*32, NT*16):
 * rows [32*kb0, 32*kb1) of W^T, padded (CPU). */
static void lb_boxed_qlinear_dequant_t(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle hp = (AtenTensorHandle)(uintptr_t)stack[0];
    AtenTensorHandle hq = (AtenTensorHandle)(uintptr_t)stack[1], out = NULL;
    lb_tensor p, q;
    lb_fmt f;
    int64_t fmt = lb_iv_int(stack[2]), bits = lb_iv_int(stack[3]), g = lb_iv_int(stack[4]);
    bool sym = lb_iv_bool(stack[5]);
    int64_t N = lb_iv_int(stack[6]), K = lb_iv_int(stack[7]);
    int64_t kb0 = lb_iv_int(stack[8]), kb1 = lb_iv_int(stack[9]);
    (void)nargs;
    (void)nouts;
    if (lb_describe(hp, "packed", &p, err) || lb_describe(hq, "params", &q, err)) goto fail;
    if (N <= 0 || K <= 0) {
        snprintf(err, LB_ERR_LEN, "N, K: must be positive");
        goto fail;
    }
    if (lb_check_spec(fmt, bits, g, sym, K, &f, err)) goto fail;
    if (kb0 < 0 || kb1 <= kb0 || kb1 > (K + 31) / 32) {
        snprintf(err, LB_ERR_LEN, "kb0, kb1: need 0 <= kb0 < kb1 <= %lld", (long long)((K + 31) / 32));
        goto fail;
    }
    if (!lb_ql_packable(K, g)) {
        snprintf(err, LB_ERR_LEN, "group_size: %lld has no packed CPU layout", (long long)g);
        goto fail;
    }
    if (p.device_type != lb_t.dev_cpu || q.device_type != lb_t.dev_cpu || p.dtype != lb_t.dt_i32 ||
        !p.contiguous || p.numel != lb_ql_packed_words(N, K, (int)bits)) {
        snprintf(err, LB_ERR_LEN, "packed: expected %lld contiguous int32 words on the CPU",
                 (long long)lb_ql_packed_words(N, K, (int)bits));
        goto fail;
    }
    if (q.dtype != lb_t.dt_f32 || !q.contiguous || q.numel != lb_ql_params_floats(N, K / g)) {
        snprintf(err, LB_ERR_LEN, "params: expected %lld contiguous float32 values",
                 (long long)lb_ql_params_floats(N, K / g));
        goto fail;
    }
    {
        int64_t osz[2] = {(kb1 - kb0) * 32, (N + 15) / 16 * 16};
        void* po = NULL;
        if (lb_empty(2, osz, lb_t.dt_f32, &p, &out, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(out, &po);
        lb_ql_dequant_t_cpu((const int32_t*)p.data, (const float*)q.data, N, K, g, &f,
                            kb0, kb1, (float*)po);
    }
    lb_release(&hp);
    lb_release(&hq);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
fail:
    lb_release(&hp);
    lb_release(&hq);
    lb_release(&out);
    lb_raise("lowbit::qlinear_dequant_t", err);
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
