/* csrc/ops/clip_search.c: dispatcher glue of the clip_search family (BitDistiller's asymmetric
 * clipping grid search on CPU, csrc/cpu/clip_search.h; lowbit.qat.calibrate_clip_ calls it).
 * Every error path ends in lb_call_fail, which frees what the call holds. */
#include <limits.h>

#include "lb_check.h"

#include "../cpu/clip_search.h"

/* clip_search(Tensor w, Tensor gram, int fmt, int bits, int group_size, bool symmetric,
 *             int n_grid, int shrink, int scale_dtype=0) -> (Tensor lo, Tensor hi)
 * Candidates are scored on the grid fake_quant(scale_dtype) trains on (FORMATS.md 1.6). A block
 * row (FORMATS.md 1.8) searches per sub-block: gram (K / sub_block, sub_block, sub_block), lo and
 * hi (N, K / sub_block). */
LB_BOXED(lb_boxed_clip_search) {
    lb_call c;
    lb_tensor w, gm;
    lb_fmt f;
    const int64_t n_grid = lb_iv_int(stack[6]), shrink = lb_iv_int(stack[7]);
    int64_t g = lb_iv_int(stack[4]);
    const int64_t sdt = lb_iv_int(stack[8]);
    void *plo = NULL, *phi = NULL;
    lb_call_begin(&c, "lowbit::clip_search", stack, 2);
    if (lb_call_arg(&c, 0, "w", &w) || lb_call_arg(&c, 1, "gram", &gm) ||
        lb_check_weight(&w, "w", c.err) ||
        lb_check_spec(lb_iv_int(stack[2]), lb_iv_int(stack[3]), g, lb_iv_bool(stack[5]),
                      w.sizes[1], &f, c.err))
        goto fail;
    /* block rows search per sub-block: the gram and the bounds are per sub-block */
    if (f.storage == LB_STORE_BLOCKS) g = f.sub_block;
    if (w.dtype != lb_t.dt_f32 || w.device_type != lb_t.dev_cpu) {
        lb_fail(c.err, "w: clip_search takes a float32 CPU tensor");
        goto fail;
    }
    if (gm.dtype != lb_t.dt_f32 || gm.device_type != lb_t.dev_cpu || !gm.contiguous ||
        gm.dim != 3 || gm.sizes[0] != w.sizes[1] / g || gm.sizes[1] != g || gm.sizes[2] != g) {
        lb_fail(c.err, "gram: expected a contiguous float32 CPU tensor (%lld, %lld, %lld)",
                (long long)(w.sizes[1] / g), (long long)g, (long long)g);
        goto fail;
    }
    /* the kernel counts grid steps in C int: range-check before narrowing */
    if (lb_check_int(n_grid, "n_grid", 1, INT_MAX, c.err) ||
        lb_check_int(shrink, "shrink", 1, n_grid, c.err) ||
        lb_check_dtype_code(sdt, "scale_dtype", c.err))
        goto fail;
    f.scale_dt = (int)sdt;
    {
        const int64_t sz[2] = {w.sizes[0], w.sizes[1] / g};
        if (lb_call_out(&c, 2, sz, lb_t.dt_f32, &w, &plo) ||
            lb_call_out(&c, 2, sz, lb_t.dt_f32, &w, &phi) || lb_call_exec(&c, &w))
            goto fail;
    }
    if (lb_clip_search_cpu((const float*)w.data, (const float*)gm.data, w.sizes[0], w.sizes[1], g,
                           &f, (int)n_grid, (int)shrink, (float*)plo, (float*)phi)) {
        lb_fail(c.err, "w: out of memory for clip_search scratch");
        goto fail;
    }
    LB_CALL_END(c);
}

const lb_op_def lb_ops_clip_search[] = {
    {"clip_search",
     "clip_search(Tensor w, Tensor gram, int fmt, int bits, int group_size, bool symmetric, "
     "int n_grid, int shrink, int scale_dtype=0) -> (Tensor, Tensor)",
     lb_boxed_clip_search, 0},
    {NULL, NULL, NULL, 0},
};
