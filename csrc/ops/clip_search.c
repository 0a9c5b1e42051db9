/* csrc/ops/qat.c: dispatcher glue of the qat family (clip_search: BitDistiller's asymmetric
 * clipping grid search on CPU; lowbit.qat.calibrate_clip_ calls it). */
#include <stdio.h>
#include <string.h>

#include "fake_quant.h"
#include "qat.h"

/* clip_search(Tensor w, Tensor gram, int fmt, int bits, int group_size, bool symmetric,
 *             int n_grid, int shrink) -> (Tensor lo, Tensor hi) */
static void lb_boxed_clip_search(StableIValue* stack, uint64_t nargs, uint64_t nouts) {
    char err[LB_ERR_LEN] = {0};
    AtenTensorHandle hw = (AtenTensorHandle)(uintptr_t)stack[0];
    AtenTensorHandle hg = (AtenTensorHandle)(uintptr_t)stack[1], hlo = NULL, hhi = NULL;
    lb_tensor w, gm;
    lb_fmt f;
    int64_t fmt = lb_iv_int(stack[2]), bits = lb_iv_int(stack[3]), g = lb_iv_int(stack[4]);
    bool sym = lb_iv_bool(stack[5]);
    int64_t n_grid = lb_iv_int(stack[6]), shrink = lb_iv_int(stack[7]);
    void *plo = NULL, *phi = NULL;
    (void)nargs;
    (void)nouts;
    if (lb_describe(hw, "w", &w, err) || lb_describe(hg, "gram", &gm, err) ||
        lb_check_weight(&w, "w", err) || lb_check_spec(fmt, bits, g, sym, w.sizes[1], &f, err))
        goto fail;
    if (w.dtype != lb_t.dt_f32 || w.device_type != lb_t.dev_cpu) {
        snprintf(err, LB_ERR_LEN, "w: clip_search takes a float32 CPU tensor");
        goto fail;
    }
    if (gm.dtype != lb_t.dt_f32 || gm.device_type != lb_t.dev_cpu || !gm.contiguous ||
        gm.dim != 3 || gm.sizes[0] != w.sizes[1] / g || gm.sizes[1] != g || gm.sizes[2] != g) {
        snprintf(err, LB_ERR_LEN, "gram: expected a contiguous float32 CPU tensor (%lld, %lld, %lld)",
                 (long long)(w.sizes[1] / g), (long long)g, (long long)g);
        goto fail;
    }
    if (n_grid < 1 || shrink < 1 || shrink > n_grid) {
        snprintf(err, LB_ERR_LEN, "n_grid: need 1 <= shrink <= n_grid, got %lld, %lld",
                 (long long)shrink, (long long)n_grid);
        goto fail;
    }
    {
        int64_t sz[2] = {w.sizes[0], w.sizes[1] / g};
        if (lb_empty(2, sz, lb_t.dt_f32, &w, &hlo, err) || lb_empty(2, sz, lb_t.dt_f32, &w, &hhi, err))
            goto fail;
    }
    lb_t.aoti_torch_get_data_ptr(hlo, &plo);
    lb_t.aoti_torch_get_data_ptr(hhi, &phi);
    if (lb_clip_search_cpu((const float*)w.data, (const float*)gm.data, w.sizes[0], w.sizes[1], g,
                           &f, (int)n_grid, (int)shrink, (float*)plo, (float*)phi)) {
        snprintf(err, LB_ERR_LEN, "out of memory for clip_search scratch");
        goto fail;
    }
    lb_release(&hw);
    lb_release(&hg);
    stack[0] = (StableIValue)(uintptr_t)hlo;
    stack[1] = (StableIValue)(uintptr_t)hhi;
    return;
fail:
    lb_release(&hw);
    lb_release(&hg);
    lb_release(&hlo);
    lb_release(&hhi);
    lb_raise("lowbit::clip_search", err);
}

const lb_op_def lb_ops_qat[] = {
    {"clip_search",
     "clip_search(Tensor w, Tensor gram, int fmt, int bits, int group_size, bool symmetric, "
     "int n_grid, int shrink) -> (Tensor, Tensor)",
     lb_boxed_clip_search, 0},
    {NULL, NULL, NULL, 0},
};
