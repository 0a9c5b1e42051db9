/* csrc/cpu/clip_search.c: CPU kernel of the clip_search family — BitDistiller's asymmetric
 * clipping search (the calibration step of QAT). The output error of a group's candidate is
 * d^T H d with d = Q(clamp(w)) - w and H the group's Gram matrix of calibration activations, so
 * each candidate costs one g x g matrix-vector product instead of a pass over the tokens. The
 * driver splits rows over the runtime's thread pool and runs the worker of the kernel table in
 * use (lb_rt.clip); the body is in csrc/cpu/clip_search_impl.h, compiled here as the scalar
 * twin and in csrc/cpu/arch/x86/clip_search_avx2.c, clip_search_avx512.c for x86. */
#include "clip_search_impl.h"

LB_CLIP_KERNELS(scalar, LB_SCALAR_ATTR)

int lb_clip_search_cpu(const float* w, const float* gram, int64_t N, int64_t K, int64_t g,
                       const lb_fmt* f, int n_grid, int shrink, float* lo, float* hi) {
    clip_ctx c;
    memset(&c, 0, sizeof c);
    c.w = w; c.gram = gram; c.N = N; c.K = K; c.g = g; c.f = f;
    c.n_grid = n_grid; c.shrink = shrink; c.lo = lo; c.hi = hi;
    lb_parallel(N, 1, lb_rt.clip->rows, &c);
    return c.oom ? -1 : 0;
}
