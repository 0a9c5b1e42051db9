/* csrc/cpu/fake_quant_impl.h: what csrc/cpu/fake_quant.c (drivers, scalar twins) and its x86
 * variants (csrc/cpu/arch/x86/fake_quant_avx2.c, fake_quant_avx512.c) share: the kernel context,
 * the row workers' bodies (plain C, always inlined into each variant, where the compiler
 * vectorises the same loops for the variant's target), and the family's kernel table. The
 * per-element math is formats.h's (lb_quant_value_k, lb_encode_k, lb_grad_elem_k, the group
 * parameters), instantiated per kind so each element loop vectorises without a switch inside.
 * Reductions use LB_LANES fixed lanes so every variant sums in the same order: outputs and
 * gradients are bit-identical across ISAs. Internal to the fake_quant CPU kernels. */
#ifndef LOWBIT_CPU_FAKE_QUANT_IMPL_H
#define LOWBIT_CPU_FAKE_QUANT_IMPL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fake_quant.h"
#include "lb_cpu.h"

/* The family's kernel table (csrc/cpu/lb_cpu.h): the row workers over [a, b) rows of one call. */
struct lb_fq_kernels {
    lb_parallel_fn fwd;     /* fake-quant forward */
    lb_parallel_fn bwd;     /* its ste="bitdistiller" backward */
    lb_parallel_fn quant;   /* quantize: codes, scales, zero points */
    lb_parallel_fn dequant; /* dequantize */
};

typedef struct {
    const void* w;
    const void* grad;
    void* out;
    int dt;
    int64_t N, K, g;
    const lb_fmt* f;
    uint8_t* codes;
    float* scales;
    uint8_t* zeros;
    int64_t* bad_per_row; /* quantize: groups with NaN/Inf, one slot per row */
    volatile int oom;     /* a worker could not get scratch memory */
} fq_ctx;

/* ---- group statistics ---- */
LB_INLINE lb_gstats group_stats(const float* x, int64_t g) {
    float mx[LB_LANES], mn[LB_LANES], am[LB_LANES];
    int bad[LB_LANES];
    lb_gstats st;
    int64_t i = 0;
    for (int j = 0; j < LB_LANES; ++j) {
        mx[j] = -INFINITY;
        mn[j] = INFINITY;
        am[j] = 0.0f;
        bad[j] = 0;
    }
    for (; i + LB_LANES <= g; i += LB_LANES) {
        for (int j = 0; j < LB_LANES; ++j) {
            float v = x[i + j], a = fabsf(v);
            mx[j] = v > mx[j] ? v : mx[j];
            mn[j] = v < mn[j] ? v : mn[j];
            am[j] = a > am[j] ? a : am[j];
            bad[j] |= !(a <= 3.4028234663852886e38f);  /* NaN or Inf */
        }
    }
    for (int j = 0; i < g; ++i, ++j) {
        float v = x[i], a = fabsf(v);
        mx[j] = v > mx[j] ? v : mx[j];
        mn[j] = v < mn[j] ? v : mn[j];
        am[j] = a > am[j] ? a : am[j];
        bad[j] |= !(a <= 3.4028234663852886e38f);
    }
    st.mx = mx[0];
    st.mn = mn[0];
    st.amax = am[0];
    st.bad = bad[0];
    for (int j = 1; j < LB_LANES; ++j) {
        st.mx = mx[j] > st.mx ? mx[j] : st.mx;
        st.mn = mn[j] < st.mn ? mn[j] : st.mn;
        st.amax = am[j] > st.amax ? am[j] : st.amax;
        st.bad |= bad[j];
    }
    return st;
}

/* ---- per-kind element loops (explicit so each vectorises without a switch inside) ---- */
LB_INLINE void fwd_group(const lb_fmt* f, const float* x, float* q, int64_t g) {
    lb_gstats st;
    if (f->storage == LB_STORE_BLOCKS) { /* g is the block (FORMATS.md 1.8) */
        lb_blk_fake_quant(f, x, q);
        return;
    }
    st = group_stats(x, g);
    lb_gparams p;
    if (st.bad) {
        for (int64_t i = 0; i < g; ++i) q[i] = NAN;
        return;
    }
    p = lb_group_params(f, st);
    LB_FOR_KIND(f->kind, KIND, for (int64_t i = 0; i < g; ++i) q[i] = lb_quant_value_k(f, p, x[i], KIND))
}

/* Adds share/count to every element equal to target (amax/amin's even split among ties);
 * sgn: multiply by sign(x) (for max|x|). */
LB_INLINE void add_to_ties(const float* x, float* gx, int64_t g, float target, float share,
                           int use_abs) {
    int64_t cnt = 0;
    for (int64_t i = 0; i < g; ++i) cnt += ((use_abs ? fabsf(x[i]) : x[i]) == target);
    if (cnt == 0 || share == 0.0f) return;
    float each = share / (float)cnt;
    for (int64_t i = 0; i < g; ++i) {
        float v = x[i];
        if ((use_abs ? fabsf(v) : v) == target)
            gx[i] += use_abs ? (v > 0.0f ? each : (v < 0.0f ? -each : 0.0f)) : each;
    }
}

/* Backward of one group for ste="bitdistiller" (FORMATS.md 1.5); c1/c2 are scratch. */
LB_INLINE void bwd_group(const lb_fmt* f, const float* x, const float* gq, float* gx, float* c1,
                         float* c2, int64_t g) {
    lb_gstats st;
    lb_gparams p;
    if (f->storage == LB_STORE_BLOCKS) {
        lb_blk_grad(f, x, gq, gx);
        return;
    }
    st = group_stats(x, g);
    if (st.bad) {
        for (int64_t i = 0; i < g; ++i) gx[i] = NAN;
        return;
    }
    p = lb_group_params(f, st);
    /* gx = the direct term; c1 (c2) = each element's share of dL/d(s) (dL/d(s-) for LVL2) */
    LB_FOR_KIND(f->kind, KIND, for (int64_t i = 0; i < g; ++i) {
        int neg;
        const float d = lb_grad_elem_k(f, p, x[i], gq[i], &gx[i], &neg, KIND);
        c1[i] = neg ? 0.0f : d;
        if (KIND == LB_KIND_LVL2) c2[i] = neg ? d : 0.0f;
    })
    /* the scale gradients go to the elements that set the scale (FORMATS.md 1.5) */
    {
        const float s1 = lb_lane_sum(c1, g), s2 = f->nscales == 2 ? lb_lane_sum(c2, g) : 0.0f;
        float hi, lo;
        LB_FOR_KIND(f->kind, KIND, lb_scale_grad_k(f, st, s1, s2, &hi, &lo, KIND))
        if (lb_kind_two_sided(f->kind)) {
            add_to_ties(x, gx, g, st.mx, hi, 0);
            add_to_ties(x, gx, g, st.mn, lo, 0);
        } else {
            add_to_ties(x, gx, g, st.amax, hi, 1);
        }
    }
}

/* ---- row workers (the bodies every ISA variant inlines) ---- */
LB_INLINE void fwd_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g;
    float* buf = (float*)malloc((size_t)(2 * g) * sizeof(float));
    if (!buf) { c->oom = 1; return; }
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < K; j += g) {
            lb_load_row(c->w, c->dt, r * K + j, g, 1.0f, buf);
            fwd_group(c->f, buf, buf + g, g);
            lb_store_row(c->out, c->dt, r * K + j, g, buf + g);
        }
    free(buf);
}

LB_INLINE void bwd_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g;
    float* buf = (float*)malloc((size_t)(5 * g) * sizeof(float));
    if (!buf) { c->oom = 1; return; }
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < K; j += g) {
            lb_load_row(c->w, c->dt, r * K + j, g, 1.0f, buf);
            lb_load_row(c->grad, c->dt, r * K + j, g, 1.0f, buf + g);
            bwd_group(c->f, buf, buf + g, buf + 2 * g, buf + 3 * g, buf + 4 * g, g);
            lb_store_row(c->out, c->dt, r * K + j, g, buf + 2 * g);
        }
    free(buf);
}

/* Block rows (FORMATS.md 1.8): each row is K / block GGUF blocks of type_size bytes. */
LB_INLINE void blk_quant_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const lb_fmt* f = c->f;
    const int64_t K = c->K, nb = K / f->block, rb = nb * f->type_size;
    float buf[LB_QK_MAX];
    for (int64_t r = r0; r < r1; ++r) {
        int64_t bad = 0;
        for (int64_t b = 0; b < nb; ++b) {
            lb_load_row(c->w, c->dt, r * K + b * f->block, f->block, 1.0f, buf);
            bad += lb_blk_quantize(f, buf, c->codes + r * rb + b * f->type_size);
        }
        c->bad_per_row[r] = bad;
    }
}

LB_INLINE void blk_dequant_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const lb_fmt* f = c->f;
    const int64_t K = c->K, nb = K / f->block, rb = nb * f->type_size;
    float buf[LB_QK_MAX];
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t b = 0; b < nb; ++b) {
            lb_blk_dequantize(f, c->codes + r * rb + b * f->type_size, buf);
            lb_store_row(c->out, c->dt, r * K + b * f->block, f->block, buf);
        }
}

LB_INLINE void quant_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g, G = K / g;
    const lb_fmt* f = c->f;
    const int64_t rb = lb_row_bytes(K, f->bits);
    if (f->storage == LB_STORE_BLOCKS) {
        blk_quant_rows(c, r0, r1);
        return;
    }
    /* one block: g floats of the group, then its g codes */
    float* buf = (float*)malloc((size_t)g * (sizeof(float) + sizeof(int32_t)));
    int32_t* code = (int32_t*)(buf + g);
    if (!buf) { c->oom = 1; return; }
    for (int64_t r = r0; r < r1; ++r) {
        uint8_t* row = c->codes + r * rb;
        int64_t bad = 0;
        memset(row, 0, (size_t)rb);
        for (int64_t gi = 0; gi < G; ++gi) {
            const int64_t j = gi * g;
            lb_gstats st;
            lb_gparams p;
            lb_load_row(c->w, c->dt, r * K + j, g, 1.0f, buf);
            st = group_stats(buf, g);
            bad += st.bad;
            p = lb_group_params(f, st);
            LB_FOR_KIND(f->kind, KIND,
                        for (int64_t i = 0; i < g; ++i) code[i] = lb_encode_k(f, p, buf[i], KIND))
            for (int64_t i = 0; i < g; ++i) lb_put_code(row, j + i, f->bits, code[i]);
            lb_store_gparams(f, p, c->scales, c->zeros, r * G + gi);
        }
        c->bad_per_row[r] = bad;
    }
    free(buf);
}

LB_INLINE void dequant_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g, G = K / g;
    const lb_fmt* f = c->f;
    const int64_t rb = lb_row_bytes(K, f->bits);
    float* buf;
    if (f->storage == LB_STORE_BLOCKS) {
        blk_dequant_rows(c, r0, r1);
        return;
    }
    buf = (float*)malloc((size_t)g * sizeof(float));
    if (!buf) { c->oom = 1; return; }
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = c->codes + r * rb;
        for (int64_t gi = 0; gi < G; ++gi) {
            const int64_t j = gi * g;
            const lb_gparams p = lb_load_gparams(f, c->scales, c->zeros, r * G + gi);
            for (int64_t i = 0; i < g; ++i) buf[i] = lb_decode(f, p, lb_get_code(row, j + i, f->bits));
            lb_store_row(c->out, c->dt, r * K + j, g, buf);
        }
    }
    free(buf);
}

/* The kernel table of one ISA variant, lb_fq_kernels_<isa>, its workers compiled with ATTR. */
#define LB_FQ_KERNELS(isa, ATTR)                                                                \
    ATTR static void fq_fwd_##isa(int64_t a, int64_t b, void* c) { fwd_rows((fq_ctx*)c, a, b); } \
    ATTR static void fq_bwd_##isa(int64_t a, int64_t b, void* c) { bwd_rows((fq_ctx*)c, a, b); } \
    ATTR static void fq_quant_##isa(int64_t a, int64_t b, void* c) {                            \
        quant_rows((fq_ctx*)c, a, b);                                                           \
    }                                                                                           \
    ATTR static void fq_dequant_##isa(int64_t a, int64_t b, void* c) {                          \
        dequant_rows((fq_ctx*)c, a, b);                                                         \
    }                                                                                           \
    const struct lb_fq_kernels lb_fq_kernels_##isa = {fq_fwd_##isa, fq_bwd_##isa,               \
                                                      fq_quant_##isa, fq_dequant_##isa};

#endif /* LOWBIT_CPU_FAKE_QUANT_IMPL_H */
