/* csrc/cpu/kl_loss_impl.h: the body of the kl_loss family's CPU kernel (FORMATS.md section 2),
 * shared by csrc/cpu/kl_loss.c (driver, scalar twin) and its x86 variants
 * (csrc/cpu/arch/x86/kl_loss_avx2.c, kl_loss_avx512.c), with the family's kernel table: per row of
 * (rows, V) student/teacher logits, the forward KL, reverse KL, CAKLD(gamma) or JSD(beta) loss
 * and its gradient with respect to the student logits, without any rows x V temporary besides
 * the gradient itself.
 *
 * Per row (a = T / tau, b = S / tau, all float32; row sums in double):
 *   pass 1, one sweep in blocks of BLK elements held in L1: online max and sum of exp for both
 *     distributions (the running sums are rescaled when a block raises the max), and the two
 *     weighted sums  W_T = sum e^(a - mT) (a - b),  W_S = sum e^(b - mS) (b - a). Then
 *       FKL = W_T / Z_T - (mT - mS) - log Z_T + log Z_S
 *       RKL = W_S / Z_S - (mS - mT) - log Z_S + log Z_T
 *     (sum p (log p - log q) with log p = a - mT - log Z_T; written with a - b per element so two
 *     close logit rows of magnitude 1e4 lose nothing to cancellation).
 *   JSD only, pass 2: sum p log(p/m) and sum q log(q/m), m = beta p + (1-beta) q (needs log m per
 *     element, so it cannot be folded into pass 1).
 *   last pass (when a gradient is wanted), over the same row (now in L2): with
 *     q = exp(b - mS - log Z_S), p = exp(a - mT - log Z_T),
 *       d FKL / d b = q - p
 *       d RKL / d b = q (log q - log p - RKL)
 *       d JSD / d b = (1 - beta) q (log q - log m - KL(q || m))
 *     times 1/tau (d b / d S) and the row's scale, cast to the student's dtype.
 *
 * Edge cases (documented in python/lowbit/kl_loss.py too):
 *   - an entry that is -inf in both rows has p = q = 0: it contributes 0 and its gradient is
 *     exactly 0 (every p log p / q log q term is selected away when the probability is 0, never
 *     computed as 0 * inf);
 *   - masked rows (label == ignore_index): loss 0, gradient 0;
 *   - a row with no finite logit in the student or in the teacher (-inf everywhere) has no
 *     distribution (softmax is 0/0 there): loss and gradient NaN, as torch's softmax gives,
 *     whatever the kind, gamma or beta (never 0: a 0 would be discontinuous with the row that
 *     keeps one finite teacher logit, whose reverse KL is +inf);
 *   - NaN or +inf anywhere in a row: loss and gradient of the row are NaN;
 *   - CAKLD with gamma 0 or 1 is exactly FKL or RKL (so an infinite unused term cannot turn into
 *     0 * inf); JSD with beta 0 or 1 is exactly 0 (m equals one of the two distributions).
 *
 * Variants: the scalar twin (vectorisation off) uses libm expf/logf; the AVX2 and AVX-512
 * variants inline the same C body with the polynomial lb_kl_expf/lb_kl_logf below (Cephes
 * coefficients, Cody-Waite reduction, <= 2 ulp on the ranges used here) so that gcc vectorises
 * the loops (libm's expf is a call it will not vectorise without -ffast-math). Unlike the
 * fake_quant kernels the variants are therefore NOT bit-identical to each other; each stays
 * within a few float32 ulps of the reference (the tests check every variant to 1e-5). Internal to
 * the kl_loss CPU kernel. */
#ifndef LOWBIT_CPU_KL_LOSS_IMPL_H
#define LOWBIT_CPU_KL_LOSS_IMPL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kl_loss.h"
#include "lb_cpu.h"

/* The family's kernel table (csrc/cpu/lb_cpu.h). */
struct lb_kl_kernels {
    lb_parallel_fn rows; /* the losses (and gradients) of rows [a, b) of one lb_kl_args */
};

/* Without this gcc will not if-convert `cond ? 0 : x * y` (the multiply might raise an FP
 * exception it must not speculate), and every select below would block vectorisation. Nothing
 * here reads the FP exception flags; results are unchanged. */
#pragma GCC optimize("no-trapping-math")

#define BLK 1024 /* elements per block: the four float blocks (16 KiB) stay in L1 */

/* ---- vectorisable expf / logf (branch-free; gcc turns the selects into blends) ---- */
/* Explicit fused multiply-adds (the build has -ffp-contract=off): only the AVX2/AVX-512
 * variants, whose targets include FMA, reach the polynomials; measured ~1.5x faster than the
 * separate multiply/add form there and at least as accurate. */
#define KL_FMA(a, b, c) __builtin_fmaf((a), (b), (c))

/* exp(x): -inf -> 0, NaN -> NaN, overflow -> inf; denormal results via a two-factor 2^n. */
LB_INLINE float lb_kl_expf(float x) {
    const float hi = 88.7228164672851562f, lo = -103.972084045410156f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    float n = KL_FMA(xc, 1.44269504088896341f, 12582912.0f) - 12582912.0f; /* rint */
    float r = KL_FMA(n, -0.693359375f, xc);
    r = KL_FMA(n, 2.12194440e-4f, r);
    float z = r * r;
    float y = KL_FMA(1.9875691500e-4f, r, 1.3981999507e-3f);
    y = KL_FMA(y, r, 8.3334519073e-3f);
    y = KL_FMA(y, r, 4.1665795894e-2f);
    y = KL_FMA(y, r, 1.6666665459e-1f);
    y = KL_FMA(y, r, 5.0000001201e-1f);
    y = KL_FMA(y, z, r) + 1.0f;
    int32_t ni = (int32_t)n;
    int32_t e1 = ni >> 1, e2 = ni - e1; /* each in [-75, 64]: both factors are normal */
    float res = (y * lb_u32_as_f32((uint32_t)(e1 + 127) << 23)) * lb_u32_as_f32((uint32_t)(e2 + 127) << 23);
    res = x < lo ? 0.0f : res;
    res = x > hi ? INFINITY : res;
    return res;
}

/* log(x): 0 -> -inf, +inf -> inf, x < 0 or NaN -> NaN; denormals handled. */
LB_INLINE float lb_kl_logf(float x) {
    int den = x < 1.17549435e-38f;
    float xs = den ? x * 8388608.0f : x;
    uint32_t u = lb_f32_as_u32(xs);
    int32_t e = (int32_t)((u >> 23) & 0xffu) - 126 - (den ? 23 : 0);
    float m = lb_u32_as_f32((u & 0x007fffffu) | 0x3f000000u); /* [0.5, 1) */
    int small = m < 0.707106781186547524f;
    e = small ? e - 1 : e;
    float f = small ? (m + m) - 1.0f : m - 1.0f;
    float z = f * f;
    float y = KL_FMA(7.0376836292e-2f, f, -1.1514610310e-1f);
    y = KL_FMA(y, f, 1.1676998740e-1f);
    y = KL_FMA(y, f, -1.2420140846e-1f);
    y = KL_FMA(y, f, 1.4249322787e-1f);
    y = KL_FMA(y, f, -1.6668057665e-1f);
    y = KL_FMA(y, f, 2.0000714765e-1f);
    y = KL_FMA(y, f, -2.4999993993e-1f);
    y = KL_FMA(y, f, 3.3333331174e-1f);
    float fe = (float)e;
    y = y * f * z;
    y = KL_FMA(fe, -2.12194440e-4f, y);
    y = KL_FMA(-0.5f, z, y);
    float r = KL_FMA(fe, 0.693359375f, f + y);
    r = x == 0.0f ? -INFINITY : r;
    r = x == INFINITY ? INFINITY : r;
    r = (x < 0.0f || x != x) ? NAN : r;
    return r;
}

/* libm in the scalar twin, the polynomials in the SIMD variants (libm is a compile-time
 * constant of every always-inlined body, so the choice folds away). */
#define KL_EXP(x) (libm ? expf(x) : lb_kl_expf(x))
#define KL_LOG(x) (libm ? logf(x) : lb_kl_logf(x))

/* ---- a block of one value ---- */
LB_INLINE void kl_fill(void* dst, int dt, int64_t off, int64_t n, float v) {
    float buf[BLK];
    for (int64_t i = 0; i < BLK; ++i) buf[i] = v;
    for (int64_t j = 0; j < n; j += BLK) lb_store_row(dst, dt, off + j, n - j < BLK ? n - j : BLK, buf);
}

/* ---- per-row statistics ---- */
typedef struct {
    float mT, mS;       /* row maxima of a and b */
    double lzT, lzS;    /* log of sum exp(x - m) */
    double fkl, rkl;    /* the row's forward / reverse KL */
    int nan, degenerate, overflow;
} kl_row;

/* Pass 1 (see the file comment). */
LB_INLINE void kl_pass1(const lb_kl_args* A, int64_t r, float* a, float* b, float* c0,
                        float* c1, kl_row* st, int libm) {
    const int64_t V = A->V, base = r * V;
    float mT = -INFINITY, mS = -INFINITY;
    double ZT = 0.0, ZS = 0.0, WT = 0.0, WS = 0.0;
    int nan = 0, ovf = 0;
    for (int64_t j = 0; j < V; j += BLK) {
        const int64_t n = V - j < BLK ? V - j : BLK;
        float lmT[LB_LANES], lmS[LB_LANES];
        int bad[LB_LANES];
        int64_t i;
        lb_load_row(A->T, A->dtT, base + j, n, A->inv_tau, a);
        lb_load_row(A->S, A->dtS, base + j, n, A->inv_tau, b);
        if (A->overflow) { /* temperature < 1: finite logits that leave the safe range */
            lb_load_row(A->T, A->dtT, base + j, n, 1.0f, c0);
            lb_load_row(A->S, A->dtS, base + j, n, 1.0f, c1);
            for (i = 0; i < n; ++i)
                ovf |= ((fabsf(a[i]) > LB_KL_SAFE) & (fabsf(c0[i]) <= 3.4028234663852886e38f)) |
                       ((fabsf(b[i]) > LB_KL_SAFE) & (fabsf(c1[i]) <= 3.4028234663852886e38f));
        }
        for (int l = 0; l < LB_LANES; ++l) {
            lmT[l] = lmS[l] = -INFINITY;
            bad[l] = 0;
        }
        for (i = 0; i + LB_LANES <= n; i += LB_LANES)
            for (int l = 0; l < LB_LANES; ++l) {
                float x = a[i + l], y = b[i + l];
                lmT[l] = x > lmT[l] ? x : lmT[l];
                lmS[l] = y > lmS[l] ? y : lmS[l];
                bad[l] |= (x != x) | (y != y) | (x == INFINITY) | (y == INFINITY);
            }
        for (int l = 0; i < n; ++i, ++l) {
            float x = a[i], y = b[i];
            lmT[l] = x > lmT[l] ? x : lmT[l];
            lmS[l] = y > lmS[l] ? y : lmS[l];
            bad[l] |= (x != x) | (y != y) | (x == INFINITY) | (y == INFINITY);
        }
        float bT = lmT[0], bS = lmS[0];
        for (int l = 1; l < LB_LANES; ++l) {
            bT = lmT[l] > bT ? lmT[l] : bT;
            bS = lmS[l] > bS ? lmS[l] : bS;
            nan |= bad[l];
        }
        nan |= bad[0];
        if (bT > mT) {
            if (ZT > 0.0) {
                double f = exp((double)mT - (double)bT);
                ZT *= f;
                WT *= f;
            }
            mT = bT;
        }
        if (bS > mS) {
            if (ZS > 0.0) {
                double f = exp((double)mS - (double)bS);
                ZS *= f;
                WS *= f;
            }
            mS = bS;
        }
        /* a row (so far) all -inf: shift by 0 instead, exp(-inf - 0) = 0 and no NaN */
        const float sT = mT > -INFINITY ? mT : 0.0f, sS = mS > -INFINITY ? mS : 0.0f;
        /* element terms into c0/c1 and over a/b (read before written), then lane sums */
        for (i = 0; i < n; ++i) {
            float x = a[i], y = b[i];
            float ea = KL_EXP(x - sT), eb = KL_EXP(y - sS);
            float d = x - y;
            c0[i] = ea;
            c1[i] = eb;
            a[i] = ea > 0.0f ? ea * d : 0.0f;
            b[i] = eb > 0.0f ? eb * -d : 0.0f;
        }
        ZT += lb_lane_sum(c0, n);
        ZS += lb_lane_sum(c1, n);
        WT += lb_lane_sum(a, n);
        WS += lb_lane_sum(b, n);
    }
    st->mT = mT;
    st->mS = mS;
    st->nan = nan;
    st->overflow = ovf;
    st->degenerate = !(ZT > 0.0) || !(ZS > 0.0);
    st->lzT = st->degenerate ? 0.0 : log(ZT);
    st->lzS = st->degenerate ? 0.0 : log(ZS);
    /* mT - mS rounded in float32 like the per-element a - b, so identical rows give exactly 0 */
    const float dm = mT - mS;
    st->fkl = st->degenerate ? 0.0 : (WT / ZT - (double)dm) - (st->lzT - st->lzS);
    st->rkl = st->degenerate ? 0.0 : (WS / ZS + (double)dm) - (st->lzS - st->lzT);
}

/* JSD pass 2: KL(p || m) and KL(q || m). */
LB_INLINE void kl_jsd_sums(const lb_kl_args* A, int64_t r, float* a, float* b, const kl_row* st,
                           double* kp_out, double* kq_out, int libm) {
    const int64_t V = A->V, base = r * V;
    const float mT = st->mT, mS = st->mS, lzT = (float)st->lzT, lzS = (float)st->lzS;
    const float be = A->beta, ob = 1.0f - A->beta;
    double KP = 0.0, KQ = 0.0;
    for (int64_t j = 0; j < V; j += BLK) {
        const int64_t n = V - j < BLK ? V - j : BLK;
        lb_load_row(A->T, A->dtT, base + j, n, A->inv_tau, a);
        lb_load_row(A->S, A->dtS, base + j, n, A->inv_tau, b);
        for (int64_t i = 0; i < n; ++i) {
            float lp = (a[i] - mT) - lzT, lq = (b[i] - mS) - lzS;
            float p = KL_EXP(lp), q = KL_EXP(lq);
            float m = be * p + ob * q;
            float lm = KL_LOG(m);
            float tp = p * (lp - lm), tq = q * (lq - lm);
            tp = p > 0.0f ? tp : 0.0f;
            tq = q > 0.0f ? tq : 0.0f;
            a[i] = m > 0.0f ? tp : 0.0f;
            b[i] = m > 0.0f ? tq : 0.0f;
        }
        KP += lb_lane_sum(a, n);
        KQ += lb_lane_sum(b, n);
    }
    *kp_out = KP;
    *kq_out = KQ;
}

/* Gradient modes of the last pass. */
enum { G_FKL, G_RKL, G_MIX, G_JSD };

/* Last pass: writes the row's gradient (see the file comment). c is the row constant the mode
 * needs: RKL/MIX: (mS - mT) + (lzS - lzT) + RKL, so log q - log p - RKL = (b - a) - c;
 * JSD: KL(q || m). wr = gamma (MIX) or 1 - beta (JSD). */
LB_INLINE void kl_grad_pass(const lb_kl_args* A, int64_t r, float* a, float* b, const kl_row* st,
                            int mode, float c, float wr, float sc, int libm) {
    const int64_t V = A->V, base = r * V;
    const float mT = st->mT, mS = st->mS, lzT = (float)st->lzT, lzS = (float)st->lzS;
    const float wf = 1.0f - wr, be = A->beta;
    for (int64_t j = 0; j < V; j += BLK) {
        const int64_t n = V - j < BLK ? V - j : BLK;
        lb_load_row(A->T, A->dtT, base + j, n, A->inv_tau, a);
        lb_load_row(A->S, A->dtS, base + j, n, A->inv_tau, b);
        /* the gradient overwrites b (each element is read before it is written) */
        switch (mode) {
        case G_FKL:
            for (int64_t i = 0; i < n; ++i) {
                float p = KL_EXP((a[i] - mT) - lzT), q = KL_EXP((b[i] - mS) - lzS);
                b[i] = (q - p) * sc;
            }
            break;
        case G_RKL:
            for (int64_t i = 0; i < n; ++i) {
                float q = KL_EXP((b[i] - mS) - lzS);
                float g = q * ((b[i] - a[i]) - c);
                b[i] = q > 0.0f ? g * sc : 0.0f;
            }
            break;
        case G_MIX:
            for (int64_t i = 0; i < n; ++i) {
                float p = KL_EXP((a[i] - mT) - lzT), q = KL_EXP((b[i] - mS) - lzS);
                float g = q * ((b[i] - a[i]) - c);
                g = q > 0.0f ? g : 0.0f;
                b[i] = (wf * (q - p) + wr * g) * sc;
            }
            break;
        default: /* G_JSD */
            for (int64_t i = 0; i < n; ++i) {
                float lp = (a[i] - mT) - lzT, lq = (b[i] - mS) - lzS;
                float p = KL_EXP(lp), q = KL_EXP(lq);
                float m = be * p + wr * q;
                float lm = KL_LOG(m);
                float g = (wr * (q * ((lq - lm) - c))) * sc;
                g = q > 0.0f ? g : 0.0f;
                b[i] = m > 0.0f ? g : 0.0f;
            }
            break;
        }
        lb_store_row(A->grad, A->dtS, base + j, n, b);
    }
}

LB_INLINE void kl_rows(const lb_kl_args* A, int64_t r0, int64_t r1, int libm) {
    float a[BLK] __attribute__((aligned(64)));
    float b[BLK] __attribute__((aligned(64)));
    float c0[BLK] __attribute__((aligned(64)));
    float c1[BLK] __attribute__((aligned(64)));
    const int64_t V = A->V;
    for (int64_t r = r0; r < r1; ++r) {
        kl_row st;
        double loss = 0.0;
        float sc = (A->row_scale ? A->row_scale[r] : A->grad_scale) * A->inv_tau;
        if (A->labels && A->labels[r] == A->ignore_index) {
            if (A->loss) A->loss[r] = 0.0f;
            if (A->grad) kl_fill(A->grad, A->dtS, r * V, V, 0.0f);
            continue;
        }
        kl_pass1(A, r, a, b, c0, c1, &st, libm);
        if (st.overflow) { /* the glue raises; the outputs are never returned */
            __atomic_fetch_add(A->overflow, 1, __ATOMIC_RELAXED);
            if (A->loss) A->loss[r] = 0.0f;
            if (A->grad) kl_fill(A->grad, A->dtS, r * V, V, 0.0f);
            continue;
        }
        if (st.nan || st.degenerate) { /* see the file comment: no 0 for a row without logits */
            if (A->loss) A->loss[r] = NAN;
            if (A->grad) kl_fill(A->grad, A->dtS, r * V, V, NAN);
            continue;
        }
        int mode;
        float c = 0.0f, wr = 0.0f;
        const double cr = ((double)st.mS - (double)st.mT) + (st.lzS - st.lzT);
        switch (A->kind) {
        case LB_KL_FORWARD:
            loss = st.fkl;
            mode = G_FKL;
            break;
        case LB_KL_REVERSE:
            loss = st.rkl;
            mode = G_RKL;
            c = (float)(cr + st.rkl);
            break;
        case LB_KL_CAKLD:
            if (A->gamma == 0.0f) {
                loss = st.fkl;
                mode = G_FKL;
            } else if (A->gamma == 1.0f) {
                loss = st.rkl;
                mode = G_RKL;
                c = (float)(cr + st.rkl);
            } else {
                loss = (double)A->gamma * st.rkl + (1.0 - (double)A->gamma) * st.fkl;
                mode = G_MIX;
                c = (float)(cr + st.rkl);
                wr = A->gamma;
            }
            break;
        default: /* JSD */
            mode = G_JSD;
            if (A->beta == 0.0f || A->beta == 1.0f) {
                if (A->loss) A->loss[r] = 0.0f;
                if (A->grad) kl_fill(A->grad, A->dtS, r * V, V, 0.0f);
                continue;
            } else {
                double kp, kq;
                kl_jsd_sums(A, r, a, b, &st, &kp, &kq, libm);
                loss = (double)A->beta * kp + (1.0 - (double)A->beta) * kq;
                c = (float)kq;
                wr = 1.0f - A->beta;
            }
            break;
        }
        if (A->loss) A->loss[r] = (float)loss;
        if (A->grad) kl_grad_pass(A, r, a, b, &st, mode, c, wr, sc, libm);
    }
}

/* The kernel table of one ISA variant, lb_kl_kernels_<isa>, its worker compiled with ATTR:
 * libm (LIBM 1) in the scalar twin, the polynomials (LIBM 0) in the SIMD variants. */
#define LB_KL_KERNELS(isa, ATTR, LIBM)                                                         \
    ATTR static void kl_rows_##isa(int64_t a, int64_t b, void* c) {                            \
        kl_rows((const lb_kl_args*)c, a, b, LIBM);                                             \
    }                                                                                          \
    const struct lb_kl_kernels lb_kl_kernels_##isa = {kl_rows_##isa};

#endif /* LOWBIT_CPU_KL_LOSS_IMPL_H */
