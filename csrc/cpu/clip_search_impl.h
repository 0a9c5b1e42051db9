/* csrc/cpu/clip_search_impl.h: what csrc/cpu/clip_search.c (driver, scalar twin) and its x86
 * variants (csrc/cpu/arch/x86/clip_search_avx2.c, clip_search_avx512.c) share: the kernel
 * context, the row worker's body (plain C, inlined into each variant and vectorised for its
 * target) and the family's kernel table. Candidate quantization uses formats.h exactly as
 * fake_quantize does. Internal to the clip_search CPU kernel. */
#ifndef LOWBIT_CPU_CLIP_SEARCH_IMPL_H
#define LOWBIT_CPU_CLIP_SEARCH_IMPL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "clip_search.h"
#include "lb_cpu.h"

/* The family's kernel table (csrc/cpu/lb_cpu.h). */
struct lb_clip_kernels {
    lb_parallel_fn rows; /* the search over rows [a, b) */
};

typedef struct {
    const float* w;
    const float* gram;
    int64_t N, K, g;
    const lb_fmt* f;
    int n_grid, shrink;
    float *lo, *hi;
    volatile int oom;
} clip_ctx;

/* Q(c) of one group with the group's own statistics (what fake_quantize computes). */
LB_INLINE void quant_group(const lb_fmt* f, const float* c, float* q, int64_t g) {
    lb_gstats st;
    lb_gparams p;
    st.mx = c[0];
    st.mn = c[0];
    st.amax = fabsf(c[0]);
    st.bad = 0;
    for (int64_t i = 1; i < g; ++i) {
        float v = c[i], a = fabsf(v);
        st.mx = v > st.mx ? v : st.mx;
        st.mn = v < st.mn ? v : st.mn;
        st.amax = a > st.amax ? a : st.amax;
    }
    p = lb_group_params(f, st);
    for (int64_t i = 0; i < g; ++i) q[i] = lb_fake_quant_value(f, p, c[i]);
}

/* d^T H d for a symmetric g x g H: Hd is built as a sum of H's rows scaled by d (no float
 * reduction inside the g^2 loop, so it vectorises), then one g-long dot product in double. */
LB_INLINE double quad_form(const float* H, const float* d, float* hd, int64_t g) {
    double e = 0.0;
    for (int64_t r = 0; r < g; ++r) hd[r] = 0.0f;
    for (int64_t c = 0; c < g; ++c) {
        const float* h = H + c * g;
        const float dc = d[c];
        for (int64_t r = 0; r < g; ++r) hd[r] += h[r] * dc;
    }
    for (int64_t r = 0; r < g; ++r) e += (double)hd[r] * d[r];
    return e;
}

LB_INLINE void clip_rows(clip_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g, G = K / g;
    float* buf = (float*)malloc((size_t)(4 * g) * sizeof(float));
    if (!buf) { c->oom = 1; return; }
    float *cl = buf, *q = buf + g, *d = buf + 2 * g, *hd = buf + 3 * g;
    for (int64_t r = r0; r < r1; ++r) {
        for (int64_t gi = 0; gi < G; ++gi) {
            const float* x = c->w + r * K + gi * g;
            const float* H = c->gram + gi * g * g;
            float mx = x[0], mn = x[0];
            for (int64_t i = 1; i < g; ++i) {
                mx = x[i] > mx ? x[i] : mx;
                mn = x[i] < mn ? x[i] : mn;
            }
            double best = INFINITY;
            float best_lo = mn, best_hi = mx;
            for (int i = 0; i < c->shrink; ++i) {
                float hi = mx * (1.0f - (float)i / (float)c->n_grid);
                for (int j = 0; j < c->shrink; ++j) {
                    float lo = mn * (1.0f - (float)j / (float)c->n_grid);
                    for (int64_t k = 0; k < g; ++k) {
                        float v = x[k] < lo ? lo : x[k];
                        cl[k] = v > hi ? hi : v;
                    }
                    quant_group(c->f, cl, q, g);
                    for (int64_t k = 0; k < g; ++k) d[k] = q[k] - x[k];
                    double e = quad_form(H, d, hd, g);
                    if (e < best) {
                        best = e;
                        best_lo = lo;
                        best_hi = hi;
                    }
                }
            }
            c->lo[r * G + gi] = best_lo;
            c->hi[r * G + gi] = best_hi;
        }
    }
    free(buf);
}

/* The kernel table of one ISA variant, lb_clip_kernels_<isa>, its worker compiled with ATTR. */
#define LB_CLIP_KERNELS(isa, ATTR)                                                            \
    ATTR static void clip_rows_##isa(int64_t a, int64_t b, void* c) {                         \
        clip_rows((clip_ctx*)c, a, b);                                                        \
    }                                                                                         \
    const struct lb_clip_kernels lb_clip_kernels_##isa = {clip_rows_##isa};

#endif /* LOWBIT_CPU_CLIP_SEARCH_IMPL_H */
