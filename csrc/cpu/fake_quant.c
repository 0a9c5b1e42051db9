/* csrc/cpu/fake_quant.c: CPU kernels of the fake_quant family (fake-quant forward, its exact
 * BitDistiller backward, quantize/pack, dequantize/unpack). One plain C body per kernel, always
 * inlined into three entry points: the scalar twin (*_ref, vectorisation off), AVX2 and AVX-512
 * (target attributes; the compiler vectorises the same loops), picked at run time by lb_isa.
 * Reductions use 16 fixed lanes so every variant sums in the same order: outputs and gradients
 * are bit-identical across ISAs. Rows are split over torch's intra-op thread pool. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/fake_quant.h"
#include "lb_cpu.h"


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

/* ---- dtype conversion of one row segment ---- */
LB_INLINE void load_f32(const void* src, int dt, int64_t off, int64_t n, float* dst) {
    if (dt == LB_DT_F32) {
        memcpy(dst, (const float*)src + off, (size_t)n * sizeof(float));
    } else if (dt == LB_DT_BF16) {
        const uint16_t* s = (const uint16_t*)src + off;
        for (int64_t i = 0; i < n; ++i) {
            uint32_t u = (uint32_t)s[i] << 16;
            memcpy(&dst[i], &u, 4);
        }
    } else {
        const _Float16* s = (const _Float16*)src + off;
        for (int64_t i = 0; i < n; ++i) dst[i] = (float)s[i];
    }
}

LB_INLINE void store_f32(void* dst, int dt, int64_t off, int64_t n, const float* src) {
    if (dt == LB_DT_F32) {
        memcpy((float*)dst + off, src, (size_t)n * sizeof(float));
    } else if (dt == LB_DT_BF16) {
        uint16_t* d = (uint16_t*)dst + off;
        for (int64_t i = 0; i < n; ++i) d[i] = lb_f32_to_bf16(src[i]);
    } else {
        _Float16* d = (_Float16*)dst + off;
        for (int64_t i = 0; i < n; ++i) d[i] = (_Float16)src[i];
    }
}

/* ---- group statistics ---- */
LB_INLINE lb_gstats group_stats(const float* x, int64_t g) {
    float mx[LANES], mn[LANES], am[LANES];
    int bad[LANES];
    lb_gstats st;
    int64_t i = 0;
    for (int j = 0; j < LANES; ++j) {
        mx[j] = -INFINITY;
        mn[j] = INFINITY;
        am[j] = 0.0f;
        bad[j] = 0;
    }
    for (; i + LANES <= g; i += LANES) {
        for (int j = 0; j < LANES; ++j) {
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
    for (int j = 1; j < LANES; ++j) {
        st.mx = mx[j] > st.mx ? mx[j] : st.mx;
        st.mn = mn[j] < st.mn ? mn[j] : st.mn;
        st.amax = am[j] > st.amax ? am[j] : st.amax;
        st.bad |= bad[j];
    }
    return st;
}

/* Sum in 16 fixed lanes, then the lanes in order: the same result on every ISA. */
LB_INLINE float lane_sum(const float* c, int64_t g) {
    float acc[LANES];
    int64_t i = 0;
    float s = 0.0f;
    for (int j = 0; j < LANES; ++j) acc[j] = 0.0f;
    for (; i + LANES <= g; i += LANES)
        for (int j = 0; j < LANES; ++j) acc[j] += c[i + j];
    for (int j = 0; i < g; ++i, ++j) acc[j] += c[i];
    for (int j = 0; j < LANES; ++j) s += acc[j];
    return s;
}

/* ---- per-kind element loops (explicit so each vectorises without a switch inside) ---- */
LB_INLINE void fwd_group(const lb_fmt* f, const float* x, float* q, int64_t g) {
    lb_gstats st = group_stats(x, g);
    lb_gparams p;
    if (st.bad) {
        for (int64_t i = 0; i < g; ++i) q[i] = NAN;
        return;
    }
    p = lb_group_params(f, st);
    switch (f->kind) {
    case LB_KIND_INT_ASYM:
        for (int64_t i = 0; i < g; ++i) {
            float c = lb_clampf(lb_round_away(x[i] / p.s) + p.z, 0.0f, f->qmax);
            q[i] = (c - p.z) * p.s;
        }
        break;
    case LB_KIND_INT_SYM:
        for (int64_t i = 0; i < g; ++i)
            /* + 0.0f: a code of 0 gives +0, exactly what dequantize decodes */
            q[i] = (lb_clampf(lb_round_away(x[i] / p.s), f->qmin, f->qmax) + 0.0f) * p.s;
        break;
    case LB_KIND_LVL2:
        for (int64_t i = 0; i < g; ++i) {
            float v = x[i];
            float s = v >= 0.0f ? p.sp : p.sn;
            float c = f->lev[lb_nearest_index(f, v / s)];
            q[i] = c * (c >= 0.0f ? p.sp : p.sn);
        }
        break;
    default:
        for (int64_t i = 0; i < g; ++i) q[i] = f->lev[lb_nearest_index(f, x[i] / p.s)] * p.s;
        break;
    }
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
    lb_gstats st = group_stats(x, g);
    lb_gparams p;
    if (st.bad) {
        for (int64_t i = 0; i < g; ++i) gx[i] = NAN;
        return;
    }
    p = lb_group_params(f, st);
    switch (f->kind) {
    case LB_KIND_INT_ASYM: {
        for (int64_t i = 0; i < g; ++i) {
            float t = x[i] / p.s;
            float v = lb_round_away(t) + p.z;
            int m = (v >= 0.0f) && (v <= f->qmax);
            float q = lb_clampf(v, 0.0f, f->qmax);
            gx[i] = m ? gq[i] : 0.0f;
            c1[i] = gq[i] * ((q - p.z) - (m ? t : 0.0f));
        }
        float r = st.mx - st.mn;
        float gr = r >= LB_INT_EPS ? lane_sum(c1, g) / f->qmax : 0.0f;
        add_to_ties(x, gx, g, st.mx, gr, 0);
        add_to_ties(x, gx, g, st.mn, -gr, 0);
        break;
    }
    case LB_KIND_INT_SYM: {
        for (int64_t i = 0; i < g; ++i) {
            float t = x[i] / p.s;
            float v = lb_round_away(t);
            int m = (v >= f->qmin) && (v <= f->qmax);
            float q = lb_clampf(v, f->qmin, f->qmax);
            gx[i] = m ? gq[i] : 0.0f;
            c1[i] = gq[i] * (q - (m ? t : 0.0f));
        }
        float ga = st.amax >= LB_INT_EPS ? lane_sum(c1, g) / f->qmax : 0.0f;
        add_to_ties(x, gx, g, st.amax, ga, 1);
        break;
    }
    case LB_KIND_LVL2: {
        for (int64_t i = 0; i < g; ++i) {
            float v = x[i];
            int neg = !(v >= 0.0f);
            float u = v / (neg ? p.sn : p.sp);
            float c = f->lev[lb_nearest_index(f, u)];
            float d = gq[i] * (c - u);
            gx[i] = gq[i];
            c1[i] = neg ? 0.0f : d;  /* to s+ */
            c2[i] = neg ? d : 0.0f;  /* to s- */
        }
        float gsp = st.mx >= LB_LVL_EPS ? lane_sum(c1, g) : 0.0f;
        float gsn = -st.mn >= LB_LVL_EPS ? lane_sum(c2, g) : 0.0f;
        add_to_ties(x, gx, g, st.mx, gsp, 0);
        add_to_ties(x, gx, g, st.mn, -gsn, 0);
        break;
    }
    default: {
        for (int64_t i = 0; i < g; ++i) {
            float u = x[i] / p.s;
            float c = f->lev[lb_nearest_index(f, u)];
            gx[i] = gq[i];
            c1[i] = gq[i] * (c - u);
        }
        float ga = st.amax >= LB_LVL_EPS ? lane_sum(c1, g) : 0.0f;
        add_to_ties(x, gx, g, st.amax, ga, 1);
        break;
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
            load_f32(c->w, c->dt, r * K + j, g, buf);
            fwd_group(c->f, buf, buf + g, g);
            store_f32(c->out, c->dt, r * K + j, g, buf + g);
        }
    free(buf);
}

LB_INLINE void bwd_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g;
    float* buf = (float*)malloc((size_t)(5 * g) * sizeof(float));
    if (!buf) { c->oom = 1; return; }
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < K; j += g) {
            load_f32(c->w, c->dt, r * K + j, g, buf);
            load_f32(c->grad, c->dt, r * K + j, g, buf + g);
            bwd_group(c->f, buf, buf + g, buf + 2 * g, buf + 3 * g, buf + 4 * g, g);
            store_f32(c->out, c->dt, r * K + j, g, buf + 2 * g);
        }
    free(buf);
}

LB_INLINE void quant_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g, G = K / g;
    const lb_fmt* f = c->f;
    const int64_t rb = lb_row_bytes(K, f->bits);
    const int nsc = f->kind == LB_KIND_LVL2 ? 2 : 1;
    float* buf = (float*)malloc((size_t)g * sizeof(float));
    int32_t* code = (int32_t*)malloc((size_t)g * sizeof(int32_t));
    if (!buf || !code) {
        free(buf);
        free(code);
        c->oom = 1;
        return;
    }
    for (int64_t r = r0; r < r1; ++r) {
        uint8_t* row = c->codes + r * rb;
        int64_t bad = 0;
        memset(row, 0, (size_t)rb);
        for (int64_t gi = 0; gi < G; ++gi) {
            const int64_t j = gi * g;
            lb_gstats st;
            lb_gparams p;
            load_f32(c->w, c->dt, r * K + j, g, buf);
            st = group_stats(buf, g);
            bad += st.bad;
            p = lb_group_params(f, st);
            switch (f->kind) {
            case LB_KIND_INT_ASYM:
                for (int64_t i = 0; i < g; ++i)
                    code[i] = (int32_t)lb_clampf(lb_round_away(buf[i] / p.s) + p.z, 0.0f, f->qmax);
                break;
            case LB_KIND_INT_SYM:
                for (int64_t i = 0; i < g; ++i)
                    code[i] = (int32_t)lb_clampf(lb_round_away(buf[i] / p.s), f->qmin, f->qmax) -
                              (int32_t)f->qmin;
                break;
            case LB_KIND_LVL2:
                for (int64_t i = 0; i < g; ++i) {
                    float v = buf[i];
                    code[i] = lb_nearest_index(f, v / (v >= 0.0f ? p.sp : p.sn));
                }
                break;
            default:
                for (int64_t i = 0; i < g; ++i) code[i] = lb_nearest_index(f, buf[i] / p.s);
                break;
            }
            for (int64_t i = 0; i < g; ++i) lb_put_code(row, j + i, f->bits, code[i]);
            if (nsc == 2) {
                c->scales[(r * G + gi) * 2] = p.sp;
                c->scales[(r * G + gi) * 2 + 1] = p.sn;
            } else {
                c->scales[r * G + gi] = p.s;
            }
            if (c->zeros) c->zeros[r * G + gi] = (uint8_t)p.z;
        }
        c->bad_per_row[r] = bad;
    }
    free(buf);
    free(code);
}

LB_INLINE void dequant_rows(fq_ctx* c, int64_t r0, int64_t r1) {
    const int64_t K = c->K, g = c->g, G = K / g;
    const lb_fmt* f = c->f;
    const int64_t rb = lb_row_bytes(K, f->bits);
    float* buf = (float*)malloc((size_t)g * sizeof(float));
    if (!buf) { c->oom = 1; return; }
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = c->codes + r * rb;
        for (int64_t gi = 0; gi < G; ++gi) {
            const int64_t j = gi * g;
            lb_gparams p;
            p.s = p.sp = p.sn = p.z = 0.0f;
            if (f->kind == LB_KIND_LVL2) {
                p.sp = c->scales[(r * G + gi) * 2];
                p.sn = c->scales[(r * G + gi) * 2 + 1];
            } else {
                p.s = c->scales[r * G + gi];
            }
            if (c->zeros) p.z = (float)c->zeros[r * G + gi];
            for (int64_t i = 0; i < g; ++i) buf[i] = lb_decode(f, p, lb_get_code(row, j + i, f->bits));
            store_f32(c->out, c->dt, r * K + j, g, buf);
        }
    }
    free(buf);
}

/* ---- the three ISA variants of each worker ---- */

#define LB_VARIANTS(name)                                                                 \
    LB_SCALAR_ATTR static void name##_ref(int64_t a, int64_t b, void* c) {                \
        name((fq_ctx*)c, a, b);                                                           \
    }                                                                                     \
    LB_AVX2_ATTR static void name##_avx2(int64_t a, int64_t b, void* c) {                 \
        name((fq_ctx*)c, a, b);                                                           \
    }                                                                                     \
    LB_AVX512_ATTR static void name##_avx512(int64_t a, int64_t b, void* c) {             \
        name((fq_ctx*)c, a, b);                                                           \
    }                                                                                     \
    static lb_parallel_fn name##_pick(void) {                                             \
        return lb_isa == LB_ISA_AVX512 ? name##_avx512                                    \
               : lb_isa == LB_ISA_AVX2 ? name##_avx2                                      \
                                       : name##_ref;                                      \
    }

LB_VARIANTS(fwd_rows)
LB_VARIANTS(bwd_rows)
LB_VARIANTS(quant_rows)
LB_VARIANTS(dequant_rows)

/* Rows per task: about 64K elements of work each. */
static int64_t row_grain(int64_t K) { return K >= 65536 ? 1 : 65536 / (K > 0 ? K : 1); }

int lb_fq_forward_cpu(const void* w, void* out, int dt, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f) {
    fq_ctx c = {0};
    c.w = w; c.out = out; c.dt = dt; c.N = N; c.K = K; c.g = g; c.f = f;
    lb_parallel(N, row_grain(K), fwd_rows_pick(), &c);
    return c.oom ? -1 : 0;
}

int lb_fq_backward_cpu(const void* grad, const void* w, void* gw, int dt, int64_t N, int64_t K,
                       int64_t g, const lb_fmt* f) {
    fq_ctx c = {0};
    c.w = w; c.grad = grad; c.out = gw; c.dt = dt; c.N = N; c.K = K; c.g = g; c.f = f;
    lb_parallel(N, row_grain(K), bwd_rows_pick(), &c);
    return c.oom ? -1 : 0;
}

int64_t lb_quantize_cpu(const void* w, int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                        uint8_t* codes, float* scales, uint8_t* zeros) {
    fq_ctx c = {0};
    int64_t bad = 0;
    c.w = w; c.dt = dt; c.N = N; c.K = K; c.g = g; c.f = f;
    c.codes = codes; c.scales = scales; c.zeros = zeros;
    /* one slot per row, so threads never write the same counter */
    c.bad_per_row = (int64_t*)calloc((size_t)(N > 0 ? N : 1), sizeof(int64_t));
    if (!c.bad_per_row) return -1;
    lb_parallel(N, row_grain(K), quant_rows_pick(), &c);
    for (int64_t r = 0; r < N; ++r) bad += c.bad_per_row[r];
    free(c.bad_per_row);
    return c.oom ? -1 : bad;
}

int lb_dequantize_cpu(const uint8_t* codes, const float* scales, const uint8_t* zeros, void* out,
                      int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f) {
    fq_ctx c = {0};
    c.codes = (uint8_t*)codes; c.scales = (float*)scales; c.zeros = (uint8_t*)zeros;
    c.out = out; c.dt = dt; c.N = N; c.K = K; c.g = g; c.f = f;
    lb_parallel(N, row_grain(K), dequant_rows_pick(), &c);
    return c.oom ? -1 : 0;
}
