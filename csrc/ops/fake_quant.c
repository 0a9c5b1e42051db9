/* csrc/ops/fake_quant.c: dispatcher glue of the fake_quant family: unboxes the stack, checks
 * every argument again (the Python wrappers check first), allocates outputs, and calls the CPU
 * kernels (csrc/cpu/fake_quant.h) or the CUDA launchers (cuda/fake_quant.cuh) on the current
 * stream. Every error path ends in lb_call_fail, which frees what the call holds. */
#include "lb_check.h"

#include "../cpu/fake_quant.h"
#ifdef LOWBIT_WITH_CUDA
#include "../../cuda/fake_quant.cuh"
#endif

/* The `scale_dtype` argument (FORMATS.md 1.6, an LB_DT_* code) into f->scale_dt. */
static int lb_fq_scale_dtype(StableIValue v, lb_fmt* f, char* err) {
    const int64_t dt = lb_iv_int(v);
    if (lb_check_dtype_code(dt, "scale_dtype", err)) return -1;
    f->scale_dt = (int)dt;
    return 0;
}

/* Forward (with_grad == 0) or ste="bitdistiller" backward (stack: grad, w, ...) of fake_quant:
 * the shared body of the two boxed kernels below. spec: the (fmt, bits, group_size, symmetric)
 * slots; sdt: the scale_dtype slot. */
static void lb_fq_run(const char* opname, int with_grad, const StableIValue* spec,
                      StableIValue sdt, StableIValue* stack) {
    lb_call c;
    lb_tensor w, gr;
    lb_fmt f;
    const int64_t g = lb_iv_int(spec[2]);
    int dt, rc = 0;
    void* po = NULL;
    lb_call_begin(&c, opname, stack, with_grad ? 2 : 1);
    if (lb_call_arg(&c, with_grad, "w", &w) || lb_check_weight(&w, "w", c.err) ||
        lb_check_spec(lb_iv_int(spec[0]), lb_iv_int(spec[1]), g, lb_iv_bool(spec[3]), w.sizes[1],
                      &f, c.err) ||
        lb_fq_scale_dtype(sdt, &f, c.err))
        goto fail;
    if (with_grad && (lb_call_arg(&c, 0, "grad", &gr) || lb_check_weight(&gr, "grad", c.err)))
        goto fail;
    if (with_grad && (gr.dtype != w.dtype || gr.sizes[0] != w.sizes[0] ||
                      gr.sizes[1] != w.sizes[1] || gr.device_type != w.device_type ||
                      gr.device_index != w.device_index)) {
        lb_fail(c.err, "grad: must match w in shape, dtype and device");
        goto fail;
    }
    dt = lb_float_dtype(w.dtype);
    if (lb_call_out(&c, 2, w.sizes, w.dtype, &w, &po) || lb_call_exec(&c, &w)) goto fail;
    if (!c.exec.cuda) {
        rc = with_grad ? lb_fq_backward_cpu(gr.data, w.data, po, dt, w.sizes[0], w.sizes[1], g, &f)
                       : lb_fq_forward_cpu(w.data, po, dt, w.sizes[0], w.sizes[1], g, &f);
        if (rc) {
            lb_fail(c.err, "w: out of memory for %s scratch", opname);
            goto fail;
        }
    }
#ifdef LOWBIT_WITH_CUDA
    else {
        rc = with_grad ? lb_fq_backward_cuda(gr.data, w.data, po, dt, w.sizes[0], w.sizes[1], g,
                                             &f, c.exec.stream)
                       : lb_fq_forward_cuda(w.data, po, dt, w.sizes[0], w.sizes[1], g, &f,
                                            c.exec.stream);
        if (lb_cuda_status(rc, opname, c.err)) goto fail;
    }
#endif
    LB_CALL_END(c);
}

/* fake_quant(Tensor w, int fmt, int bits, int group_size, bool symmetric, int ste,
 *            int scale_dtype=0) -> Tensor */
LB_BOXED(lb_boxed_fake_quant) {
    const int64_t ste = lb_iv_int(stack[5]);
    if (ste != LB_STE_BITDISTILLER && ste != LB_STE_IDENTITY) {
        lb_call c;
        lb_call_begin(&c, "lowbit::fake_quant", stack, 1);
        lb_fail(c.err, "ste: unknown mode code %lld", (long long)ste);
        lb_call_fail(&c);
        return;
    }
    lb_fq_run("lowbit::fake_quant", 0, stack + 1, stack[6], stack);
}

/* fake_quant_backward(Tensor grad, Tensor w, int fmt, int bits, int group_size, bool symmetric,
 *                     int scale_dtype=0) -> Tensor: dL/dw for ste="bitdistiller" (the identity
 * STE needs no kernel). */
LB_BOXED(lb_boxed_fake_quant_backward) {
    lb_fq_run("lowbit::fake_quant_backward", 1, stack + 2, stack[6], stack);
}

/* quantize(Tensor w, int fmt, int bits, int group_size, bool symmetric, int scale_dtype=0)
 * -> (Tensor codes, Tensor scales, Tensor zeros)
 * codes uint8 (N, row_bytes) [bitstream layout of formats.h lb_put_code]; scales float32 (N, G)
 * or (N, G, 2) = [s+, s-] for two-scale formats, holding values exact in scale_dtype; zeros
 * uint8 (N, G) for INT asym, else (N, 0). */
LB_BOXED(lb_boxed_quantize) {
    lb_call c;
    lb_tensor w;
    lb_fmt f;
    const int64_t g = lb_iv_int(stack[3]);
    int64_t N, K, G, bad = 0;
    void *pc = NULL, *ps = NULL, *pz = NULL;
    lb_call_begin(&c, "lowbit::quantize", stack, 1);
    if (lb_call_arg(&c, 0, "w", &w) || lb_check_weight(&w, "w", c.err) ||
        lb_check_spec(lb_iv_int(stack[1]), lb_iv_int(stack[2]), g, lb_iv_bool(stack[4]),
                      w.sizes[1], &f, c.err) ||
        lb_fq_scale_dtype(stack[5], &f, c.err))
        goto fail;
    N = w.sizes[0];
    K = w.sizes[1];
    G = K / g;
    {
        /* the shapes the format's row gives: codes (N, row bytes), the kind's scales (N, G) or
         * (N, G, 2) and zero points (N, G), (N, 0) where it has none */
        const int64_t csz[2] = {N, lb_fmt_row_bytes(&f, K)};
        const int64_t ssz[3] = {N, f.nscales ? G : 0, 2};
        const int64_t zsz[2] = {N, f.zeros ? G : 0};
        if (lb_call_out(&c, 2, csz, lb_t.dt_u8, &w, &pc) ||
            lb_call_out(&c, f.nscales == 2 ? 3 : 2, ssz, lb_t.dt_f32, &w, &ps) ||
            lb_call_out(&c, 2, zsz, lb_t.dt_u8, &w, &pz))
            goto fail;
    }
    if (!f.zeros) pz = NULL;
    if (lb_call_exec(&c, &w)) goto fail;
    if (!c.exec.cuda) {
        bad = lb_quantize_cpu(w.data, lb_float_dtype(w.dtype), N, K, g, &f, (uint8_t*)pc,
                              (float*)ps, (uint8_t*)pz);
        if (bad < 0) {
            lb_fail(c.err, "w: out of memory for quantize scratch");
            goto fail;
        }
    }
#ifdef LOWBIT_WITH_CUDA
    else {
        const int64_t one = 1;
        void* pb = NULL;
        int32_t nbad = 0;
        if (lb_call_tmp(&c, 1, &one, lb_t.dt_i32, &w, &pb) ||
            lb_cuda_status(lb_cuda_memset(pb, 0, 4, c.exec.stream), "quantize", c.err) ||
            lb_cuda_status(lb_quantize_cuda(w.data, lb_float_dtype(w.dtype), N, K, g, &f,
                                            (uint8_t*)pc, (float*)ps, (uint8_t*)pz,
                                            (int32_t*)pb, c.exec.stream),
                           "quantize", c.err) ||
            lb_cuda_status(lb_cuda_memcpy_d2h(&nbad, pb, 4, c.exec.stream), "quantize", c.err))
            goto fail;
        bad = nbad;
    }
#endif
    if (bad > 0) {
        lb_fail(c.err, "w: contains NaN or Inf (%lld groups); cannot quantize", (long long)bad);
        goto fail;
    }
    LB_CALL_END(c);
}

/* dequantize(Tensor codes, Tensor scales, Tensor zeros, int fmt, int bits, int group_size,
 * bool symmetric, int K, int dtype) -> Tensor (N, K) of dtype (LB_DT_*) */
LB_BOXED(lb_boxed_dequantize) {
    lb_call c;
    lb_tensor t[3];
    lb_fmt f;
    const int64_t g = lb_iv_int(stack[5]), K = lb_iv_int(stack[7]), dt = lb_iv_int(stack[8]);
    int64_t N;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::dequantize", stack, 3);
    if (lb_check_dtype_code(dt, "dtype", c.err) || lb_call_qweight(&c, t, stack + 3, K, &f, &N))
        goto fail;
    {
        const int64_t osz[2] = {N, K};
        const uint8_t* pz = f.zeros ? (const uint8_t*)t[2].data : NULL;
        if (lb_check_numel(osz, 2, 4, "K", c.err) ||
            lb_call_out(&c, 2, osz, lb_torch_dtype((int)dt), &t[0], &po) ||
            lb_call_exec(&c, &t[0]))
            goto fail;
        if (!c.exec.cuda) {
            if (lb_dequantize_cpu((const uint8_t*)t[0].data, (const float*)t[1].data, pz, po,
                                  (int)dt, N, K, g, &f)) {
                lb_fail(c.err, "codes: out of memory for dequantize scratch");
                goto fail;
            }
        }
#ifdef LOWBIT_WITH_CUDA
        else if (lb_cuda_status(lb_dequantize_cuda((const uint8_t*)t[0].data,
                                                   (const float*)t[1].data, pz, po, (int)dt, N,
                                                   K, g, &f, c.exec.stream),
                                "dequantize", c.err))
            goto fail;
#endif
    }
    LB_CALL_END(c);
}

const lb_op_def lb_ops_fake_quant[] = {
    {"fake_quant",
     "fake_quant(Tensor w, int fmt, int bits, int group_size, bool symmetric, int ste, "
     "int scale_dtype=0) -> Tensor",
     lb_boxed_fake_quant, 1},
    {"fake_quant_backward",
     "fake_quant_backward(Tensor grad, Tensor w, int fmt, int bits, int group_size, "
     "bool symmetric, int scale_dtype=0) -> Tensor",
     lb_boxed_fake_quant_backward, 1},
    {"quantize",
     "quantize(Tensor w, int fmt, int bits, int group_size, bool symmetric, "
     "int scale_dtype=0) -> (Tensor, Tensor, Tensor)",
     lb_boxed_quantize, 1},
    {"dequantize",
     "dequantize(Tensor codes, Tensor scales, Tensor zeros, int fmt, int bits, int group_size, "
     "bool symmetric, int K, int dtype) -> Tensor",
     lb_boxed_dequantize, 1},
    {NULL, NULL, NULL, 0},
};
