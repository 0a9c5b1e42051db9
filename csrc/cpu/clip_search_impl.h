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

/* Block rows (FORMATS.md 1.8): the search per sub-block. For sub-block j of a block, candidate
 * (i, i') clamps that sub-block alone to [min_j (1 - i'/n_grid), max_j (1 - i/n_grid)] (the
 * block's other sub-blocks keep their values), the whole block is quantized by 1.8's rules (so a
 * candidate that lowers the block's d or dmin moves every sub-block's grid), and the score is the
 * block's output error, the sum over its sub-blocks k of d_k^T H_k d_k with the sub-block Gram
 * matrices (g = sub_block here). Each sub-block is searched on its own against the original
 * block; lo / hi are (N, K / sub_block). */
LB_INLINE void blk_clip_rows(clip_ctx* c, int64_t r0, int64_t r1) {
    const lb_fmt* f = c->f;
    const int64_t K = c->K, B = f->block, sub = f->sub_block, nsub = f->nsub, S = K / sub;
    float cl[LB_QK_MAX], q[LB_QK_MAX], d[LB_QK_MAX], hd[LB_QK_MAX];
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t b = 0; b < K / B; ++b) {
            const float* x = c->w + r * K + b * B;
            const float* H = c->gram + b * nsub * sub * sub;
            for (int64_t j = 0; j < nsub; ++j) {
                const float* xj = x + j * sub;
                float mx = xj[0], mn = xj[0];
                for (int64_t k = 1; k < sub; ++k) {
                    mx = xj[k] > mx ? xj[k] : mx;
                    mn = xj[k] < mn ? xj[k] : mn;
                }
                double best = INFINITY;
                float best_lo = mn, best_hi = mx;
                for (int i = 0; i < c->shrink; ++i) {
                    const float hi = mx * (1.0f - (float)i / (float)c->n_grid);
                    for (int i2 = 0; i2 < c->shrink; ++i2) {
                        const float lo = mn * (1.0f - (float)i2 / (float)c->n_grid);
                        double e = 0.0;
                        memcpy(cl, x, (size_t)B * sizeof(float));
                        for (int64_t k = j * sub; k < (j + 1) * sub; ++k) {
                            const float v = cl[k] < lo ? lo : cl[k];
                            cl[k] = v > hi ? hi : v;
                        }
                        lb_blk_fake_quant(f, cl, q);
                        for (int64_t k = 0; k < B; ++k) d[k] = q[k] - x[k];
                        for (int64_t k = 0; k < nsub; ++k)
                            e += quad_form(H + k * sub * sub, d + k * sub, hd, sub);
                        if (e < best) {
                            best = e;
                            best_lo = lo;
                            best_hi = hi;
                        }
                    }
                }
                c->lo[r * S + b * nsub + j] = best_lo;
                c->hi[r * S + b * nsub + j] = best_hi;
            }
        }
}

LB_INLINE void clip_rows(clip_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g, G = K / g;
    float* buf;
    if (c->f->storage == LB_STORE_BLOCKS) {
        blk_clip_rows(c, r0, r1);
        return;
    }
    buf = (float*)malloc((size_t)(4 * g) * sizeof(float));
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
