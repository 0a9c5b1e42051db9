/* csrc/ops/fake_quant.c: dispatcher glue of the fake_quant family: unboxes the stack, checks
 * every argument again (the Python wrappers check first), allocates outputs, and calls the CPU
 * kernels or the CUDA launchers on the current stream. Every error path frees what it holds
 * before raising. */
#include <stdio.h>
#include <string.h>

#include "fake_quant.h"

/* Checks (fmt, bits, group_size, symmetric) against a weight of K columns and resolves f. */
int lb_check_spec(int64_t fmt, int64_t bits, int64_t g, bool sym, int64_t K, lb_fmt* f,
                         char* err) {
    if (fmt < 0 || fmt > 2) {
        snprintf(err, LB_ERR_LEN, "format: unknown format code %lld", (long long)fmt);
        return -1;
    }
    if (lb_fmt_init(f, (int)fmt, (int)bits, sym ? 1 : 0)) {
        snprintf(err, LB_ERR_LEN, "bits: %lld bits is not supported for format code %lld",
                 (long long)bits, (long long)fmt);
        return -1;
    }
    if (g <= 0 || K % g != 0) {
        snprintf(err, LB_ERR_LEN, "group_size: %lld must be positive and divide K = %lld",
                 (long long)g, (long long)K);
        return -1;
    }
    return 0;
}

/* A 2-D, non-empty, contiguous float weight. */
int lb_check_weight(const lb_tensor* t, const char* name, char* err) {
    if (lb_float_dtype(t->dtype) < 0) {
        snprintf(err, LB_ERR_LEN, "%s: dtype must be float32, bfloat16 or float16", name);
        return -1;
    }
    if (t->dim != 2) {
        snprintf(err, LB_ERR_LEN, "%s: expected a 2-D (out_features, in_features) tensor, got %lld-D",
                 name, (long long)t->dim);
        return -1;
    }
    if (t->numel == 0) {
        snprintf(err, LB_ERR_LEN, "%s: empty tensor", name);
        return -1;
    }
    if (!t->contiguous) {
        snprintf(err, LB_ERR_LEN, "%s: must be contiguous (the Python wrapper makes it so)", name);
        return -1;
    }
    return 0;
}

/* Forward (hg == NULL) or ste="bitdistiller" backward (hg = upstream gradient) of fake_quant:
 * the shared body of the two boxed kernels below. Takes ownership of hg and hw. */
static void lb_fq_run(const char* opname, AtenTensorHandle hg, AtenTensorHandle hw,
                      const StableIValue* spec_args, StableIValue* stack) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle out = NULL;
    lb_tensor w, gr;
    lb_fmt f;
    lb_exec e = {0};
    int64_t fmt = lb_iv_int(spec_args[0]), bits = lb_iv_int(spec_args[1]);
    int64_t g = lb_iv_int(spec_args[2]);
    bool sym = lb_iv_bool(spec_args[3]);
    int dt, rc = 0;
    void* po = NULL;
    if (lb_describe(hw, "w", &w, err) || lb_check_weight(&w, "w", err) ||
        lb_check_spec(fmt, bits, g, sym, w.sizes[1], &f, err))
        goto fail;
    if (hg && (lb_describe(hg, "grad", &gr, err) || lb_check_weight(&gr, "grad", err)))
        goto fail;
    if (hg && (gr.dtype != w.dtype || gr.sizes[0] != w.sizes[0] || gr.sizes[1] != w.sizes[1] ||
               gr.device_type != w.device_type || gr.device_index != w.device_index)) {
        snprintf(err, LB_ERR_LEN, "grad: must match w in shape, dtype and device");
        goto fail;
    }
    dt = lb_float_dtype(w.dtype);
    if (lb_empty(2, w.sizes, w.dtype, &w, &out, err)) goto fail;
    lb_t.aoti_torch_get_data_ptr(out, &po);
    if (lb_exec_begin(&w, &e, err)) goto fail;
    if (!e.cuda) {
        rc = hg ? lb_fq_backward_cpu(gr.data, w.data, po, dt, w.sizes[0], w.sizes[1], g, &f)
                : lb_fq_forward_cpu(w.data, po, dt, w.sizes[0], w.sizes[1], g, &f);
        if (rc) {
            snprintf(err, LB_ERR_LEN, "out of memory for %s scratch", opname);
            goto fail;
        }
    }
#ifdef LOWBIT_WITH_CUDA
    else {
        rc = hg ? lb_fq_backward_cuda(gr.data, w.data, po, dt, w.sizes[0], w.sizes[1], g, &f,
                                      e.stream)
                : lb_fq_forward_cuda(w.data, po, dt, w.sizes[0], w.sizes[1], g, &f, e.stream);
        if (lb_cuda_status(rc, opname, err)) goto fail;
    }
#endif
    lb_exec_end(&e);
    lb_release(&hg);
    lb_release(&hw);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
fail:
    lb_exec_end(&e);
    lb_release(&hg);
    lb_release(&hw);
    lb_release(&out);
    lb_raise(opname, err);
}

/* fake_quant(Tensor w, int fmt, int bits, int group_size, bool symmetric, int ste) -> Tensor */
static void lb_boxed_fake_quant(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    int64_t ste = lb_iv_int(stack[5]);
    (void)nargs;
    (void)nouts;
    if (ste != 0 && ste != 1) {
        char err[LB_ERR_LEN];
        AtenTensorHandle hw = (AtenTensorHandle)(uintptr_t)stack[0];
        snprintf(err, LB_ERR_LEN, "ste: unknown mode code %lld", (long long)ste);
        lb_release(&hw);
        lb_raise("lowbit::fake_quant", err);
        return;
    }
    lb_fq_run("lowbit::fake_quant", NULL, (AtenTensorHandle)(uintptr_t)stack[0], stack + 1,
              stack);
}

/* fake_quant_backward(Tensor grad, Tensor w, int fmt, int bits, int group_size, bool symmetric)
 * -> Tensor: dL/dw for ste="bitdistiller" (the identity STE needs no kernel). */
static void lb_boxed_fake_quant_backward(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    (void)nargs;
    (void)nouts;
    lb_fq_run("lowbit::fake_quant_backward", (AtenTensorHandle)(uintptr_t)stack[0],
              (AtenTensorHandle)(uintptr_t)stack[1], stack + 2, stack);
}

/* quantize(Tensor w, int fmt, int bits, int group_size, bool symmetric)
 * -> (Tensor codes, Tensor scales, Tensor zeros)
 * codes uint8 (N, row_bytes) [bitstream layout of formats.h lb_put_code]; scales float32 (N, G)
 * or (N, G, 2) = [s+, s-] for two-scale formats; zeros uint8 (N, G) for INT asym, else (N, 0). */
static void lb_boxed_quantize(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle hw = (AtenTensorHandle)(uintptr_t)stack[0];
    AtenTensorHandle hc = NULL, hs = NULL, hz = NULL, hbad = NULL;
    lb_tensor w;
    lb_fmt f;
    lb_exec e = {0};
    int64_t fmt = lb_iv_int(stack[1]), bits = lb_iv_int(stack[2]), g = lb_iv_int(stack[3]);
    bool sym = lb_iv_bool(stack[4]);
    int64_t N, K, G, bad = 0;
    void *pc = NULL, *ps = NULL, *pz = NULL;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hw, "w", &w, err) || lb_check_weight(&w, "w", err) ||
        lb_check_spec(fmt, bits, g, sym, w.sizes[1], &f, err))
        goto fail;
    N = w.sizes[0];
    K = w.sizes[1];
    G = K / g;
    {
        int64_t csz[2] = {N, lb_row_bytes(K, (int)bits)};
        int64_t ssz[3] = {N, G, 2};
        int64_t zsz[2] = {N, f.kind == LB_KIND_INT_ASYM ? G : 0};
        if (lb_empty(2, csz, lb_t.dt_u8, &w, &hc, err) ||
            lb_empty(f.kind == LB_KIND_LVL2 ? 3 : 2, ssz, lb_t.dt_f32, &w, &hs, err) ||
            lb_empty(2, zsz, lb_t.dt_u8, &w, &hz, err))
            goto fail;
    }
    lb_t.aoti_torch_get_data_ptr(hc, &pc);
    lb_t.aoti_torch_get_data_ptr(hs, &ps);
    lb_t.aoti_torch_get_data_ptr(hz, &pz);
    if (f.kind != LB_KIND_INT_ASYM) pz = NULL;
    if (lb_exec_begin(&w, &e, err)) goto fail;
    if (!e.cuda) {
        bad = lb_quantize_cpu(w.data, lb_float_dtype(w.dtype), N, K, g, &f, (uint8_t*)pc,
                              (float*)ps, (uint8_t*)pz);
        if (bad < 0) {
            snprintf(err, LB_ERR_LEN, "out of memory for quantize scratch");
            goto fail;
        }
    }
#ifdef LOWBIT_WITH_CUDA
    else {
        int64_t one = 1;
        void* pb = NULL;
        int32_t nbad = 0;
        if (lb_empty(1, &one, lb_t.dt_i32, &w, &hbad, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(hbad, &pb);
        if (lb_cuda_status(lb_cuda_memset(pb, 0, 4, e.stream), "quantize", err) ||
            lb_cuda_status(lb_quantize_cuda(w.data, lb_float_dtype(w.dtype), N, K, g, &f,
                                            (uint8_t*)pc, (float*)ps, (uint8_t*)pz,
                                            (int32_t*)pb, e.stream),
                           "quantize", err) ||
            lb_cuda_status(lb_cuda_memcpy_d2h(&nbad, pb, 4, e.stream), "quantize", err))
            goto fail;
        bad = nbad;
    }
#endif
    lb_exec_end(&e);
    if (bad > 0) {
        snprintf(err, LB_ERR_LEN, "w: contains NaN or Inf (%lld groups); cannot quantize",
                 (long long)bad);
        goto fail;
    }
    lb_release(&hbad);
    lb_release(&hw);
    stack[0] = (StableIValue)(uintptr_t)hc;
    stack[1] = (StableIValue)(uintptr_t)hs;
    stack[2] = (StableIValue)(uintptr_t)hz;
    return;
fail:
    lb_exec_end(&e);
    lb_release(&hw);
    lb_release(&hc);
    lb_release(&hs);
    lb_release(&hz);
    lb_release(&hbad);
    lb_raise("lowbit::quantize", err);
}

/* dequantize(Tensor codes, Tensor scales, Tensor zeros, int fmt, int bits, int group_size,
 * bool symmetric, int K, int dtype) -> Tensor (N, K) of dtype (0 f32, 1 bf16, 2 f16) */
static void lb_boxed_dequantize(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle hc = (AtenTensorHandle)(uintptr_t)stack[0];
    AtenTensorHandle hs = (AtenTensorHandle)(uintptr_t)stack[1];
    AtenTensorHandle hz = (AtenTensorHandle)(uintptr_t)stack[2], out = NULL;
    lb_tensor c, s, z;
    lb_fmt f;
    lb_exec e = {0};
    int64_t fmt = lb_iv_int(stack[3]), bits = lb_iv_int(stack[4]), g = lb_iv_int(stack[5]);
    bool sym = lb_iv_bool(stack[6]);
    int64_t K = lb_iv_int(stack[7]), dt = lb_iv_int(stack[8]);
    int64_t N, G;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hc, "codes", &c, err) || lb_describe(hs, "scales", &s, err) ||
        lb_describe(hz, "zeros", &z, err))
        goto fail;
    if (K <= 0) {
        snprintf(err, LB_ERR_LEN, "K: must be positive, got %lld", (long long)K);
        goto fail;
    }
    if (lb_check_spec(fmt, bits, g, sym, K, &f, err)) goto fail;
    if (dt < 0 || dt > 2) {
        snprintf(err, LB_ERR_LEN, "dtype: unknown dtype code %lld", (long long)dt);
        goto fail;
    }
    G = K / g;
    N = c.dim == 2 ? c.sizes[0] : -1;
    if (c.dtype != lb_t.dt_u8 || c.dim != 2 || !c.contiguous || N <= 0 ||
        c.sizes[1] != lb_row_bytes(K, (int)bits)) {
        snprintf(err, LB_ERR_LEN, "codes: expected contiguous uint8 (N, %lld)",
                 (long long)lb_row_bytes(K, (int)bits));
        goto fail;
    }
    if (s.dtype != lb_t.dt_f32 || !s.contiguous || s.sizes[0] != N || s.sizes[1] != G ||
        (f.kind == LB_KIND_LVL2 ? (s.dim != 3 || s.sizes[2] != 2) : s.dim != 2)) {
        snprintf(err, LB_ERR_LEN, "scales: expected contiguous float32 (N, %lld%s)", (long long)G,
                 f.kind == LB_KIND_LVL2 ? ", 2" : "");
        goto fail;
    }
    if (z.dtype != lb_t.dt_u8 || z.dim != 2 || !z.contiguous || z.sizes[0] != N ||
        z.sizes[1] != (f.kind == LB_KIND_INT_ASYM ? G : 0)) {
        snprintf(err, LB_ERR_LEN, "zeros: expected contiguous uint8 (N, %lld)",
                 (long long)(f.kind == LB_KIND_INT_ASYM ? G : 0));
        goto fail;
    }
    if (s.device_type != c.device_type || s.device_index != c.device_index ||
        z.device_type != c.device_type || z.device_index != c.device_index) {
        snprintf(err, LB_ERR_LEN, "scales: codes, scales and zeros must be on one device");
        goto fail;
    }
    {
        int64_t osz[2] = {N, K};
        void* po = NULL;
        const uint8_t* pz = f.kind == LB_KIND_INT_ASYM ? (const uint8_t*)z.data : NULL;
        if (lb_empty(2, osz, lb_torch_dtype((int)dt), &c, &out, err)) goto fail;
        lb_t.aoti_torch_get_data_ptr(out, &po);
        if (lb_exec_begin(&c, &e, err)) goto fail;
        if (!e.cuda) {
            if (lb_dequantize_cpu((const uint8_t*)c.data, (const float*)s.data, pz, po, (int)dt,
                                  N, K, g, &f)) {
                snprintf(err, LB_ERR_LEN, "out of memory for dequantize scratch");
                goto fail;
            }
        }
#ifdef LOWBIT_WITH_CUDA
        else if (lb_cuda_status(lb_dequantize_cuda((const uint8_t*)c.data, (const float*)s.data,
                                                   pz, po, (int)dt, N, K, g, &f, e.stream),
                                "dequantize", err))
            goto fail;
#endif
        lb_exec_end(&e);
    }
    lb_release(&hc);
    lb_release(&hs);
    lb_release(&hz);
    stack[0] = (StableIValue)(uintptr_t)out;
    return;
fail:
    lb_exec_end(&e);
    lb_release(&hc);
    lb_release(&hs);
    lb_release(&hz);
    lb_release(&out);
    lb_raise("lowbit::dequantize", err);
}

const lb_op_def lb_ops_fake_quant[] = {
    {"fake_quant",
     "fake_quant(Tensor w, int fmt, int bits, int group_size, bool symmetric, int ste) -> Tensor",
     lb_boxed_fake_quant, 1},
    {"fake_quant_backward",
     "fake_quant_backward(Tensor grad, Tensor w, int fmt, int bits, int group_size, "
     "bool symmetric) -> Tensor",
     lb_boxed_fake_quant_backward, 1},
    {"quantize",
     "quantize(Tensor w, int fmt, int bits, int group_size, bool symmetric) "
     "-> (Tensor, Tensor, Tensor)",
     lb_boxed_quantize, 1},
    {"dequantize",
     "dequantize(Tensor codes, Tensor scales, Tensor zeros, int fmt, int bits, int group_size, "
     "bool symmetric, int K, int dtype) -> Tensor",
     lb_boxed_dequantize, 1},
    {NULL, NULL, NULL, 0},
};
