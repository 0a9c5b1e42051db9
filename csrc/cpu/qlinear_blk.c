/* csrc/cpu/qlinear_blk.c: CPU kernels of the qlinear_blk family: y = x W^T (+ bias) with W in
 * llama.cpp's GGUF blocks (FORMATS.md 1.8), read in place, in the accuracy modes of FORMATS.md 4:
 *   - the driver (lb_qlb_forward_cpu): x to float32 rows, the rows an integer mode cannot
 *     represent (inf, nan, |x| > 2^64, 0 < max|x| < 2^-100) flagged and redone by the float
 *     kernel afterwards, so they propagate inf/nan as F.linear does;
 *   - the activation quantization of the integer modes: per row and per 32-block d = max|x| / 127
 *     (float32), q = rne(x / d) (llama.cpp's block_q8_0 with a float32 d), the sums of q per
 *     16-element half times d; "auto" adds the same quantization of the residual x - d q;
 *   - the scalar twins (lb_qlb_kernels_scalar), the reference of the family: the float kernel
 *     dequantizes each W row exactly (lb_blk_dequantize) and sums float32 products in order; the
 *     integer kernel runs formats_ggml.h's lb_blk_codes32 / lb_blk_dot32 per 32-chunk (integer
 *     dot products per sub-block, float32 epilogue S * dot + C * sum x8, times the block's d).
 * The x86 variants (csrc/cpu/arch/x86/qlinear_blk_*.c) compute the same sums with SIMD. Work is
 * split over W rows (lb_parallel): no sum crosses threads, so results do not depend on the
 * thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qlinear_blk_impl.h"

/* ================================ scalar twins ================================ */
static LB_SCALAR_ATTR void qlb_float_rows_scalar(int64_t a, int64_t b, void* ctx) {
    qlb_ctx* c = (qlb_ctx*)ctx;
    const lb_fmt* f = c->f;
    const int64_t K = c->K, nb = K / f->block;
    float* w = (float*)malloc((size_t)K * sizeof(float));
    if (!w) {
        c->oom = 1;
        return;
    }
    for (int64_t n = a; n < b; ++n) {
        const uint8_t* row = c->blocks + n * c->rb;
        for (int64_t i = 0; i < nb; ++i)
            lb_blk_dequantize(f, row + i * f->type_size, w + i * f->block);
        for (int64_t m = 0; m < c->M; ++m) {
            const float* x = c->xf + m * K;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += x[k] * w[k];
            qlb_store(c, m, n, acc);
        }
    }
    free(w);
}

static LB_SCALAR_ATTR void qlb_int_rows_scalar(int64_t a, int64_t b, void* ctx) {
    qlb_ctx* c = (qlb_ctx*)ctx;
    const lb_fmt* f = c->f;
    const int64_t K = c->K, M = c->M, cpb = f->block / 32; /* chunks per block */
    float* acc = (float*)malloc((size_t)c->V * sizeof(float));
    if (!acc) {
        c->oom = 1;
        return;
    }
    for (int64_t n = a; n < b; ++n) {
        const uint8_t* row = c->blocks + n * c->rb;
        for (int64_t v = 0; v < c->V; ++v) acc[v] = 0.0f;
        for (int64_t kb = 0; kb < c->KB; ++kb) {
            int q[32], nh;
            float S[2], C[2];
            nh = lb_blk_codes32(f, row + (kb / cpb) * f->type_size, (int)(kb % cpb) * 32, q, S, C);
            for (int64_t v = 0; v < c->V; ++v)
                acc[v] += c->xd[v * c->KB + kb] *
                          lb_blk_dot32(q, S, C, nh, c->x8 + v * K + kb * 32);
        }
        for (int64_t m = 0; m < M; ++m)
            qlb_store(c, m, n, c->passes == 2 ? acc[m] + acc[M + m] : acc[m]);
    }
    free(acc);
}

const struct lb_qlb_kernels lb_qlb_kernels_scalar = {qlb_float_rows_scalar, qlb_int_rows_scalar};

/* ================================ activations ================================ */
#define QLB_XMAX 0x1p64f      /* larger |x| takes the float path (integer sums may overflow) */
#define QLB_XMIN_INT 0x1p-100f /* a smaller nonzero max|x| too (d would underflow) */

typedef struct {
    qlb_ctx* c;
    const void* x;
    float* xf;   /* (M, K) */
    float* tmp;  /* integer modes: (M, K) the residual of pass 1 */
    int8_t* x8;
    float *xd, *xsd;
    uint8_t* bad;
    int integer;
} qlb_act_ctx;

static void qlb_act_rows(int64_t a, int64_t b, void* ctx) {
    const qlb_act_ctx* p = (const qlb_act_ctx*)ctx;
    const qlb_ctx* c = p->c;
    const int64_t K = c->K, KB = c->KB, M = c->M;
    for (int64_t m = a; m < b; ++m) {
        float* xr = p->xf + m * K;
        float amax = 0.0f;
        int finite = 1;
        lb_load_row(p->x, c->dt, m * K, K, 1.0f, xr);
        for (int64_t k = 0; k < K; ++k) {
            const float v = fabsf(xr[k]);
            finite &= v <= 3.4028235e38f; /* false for inf and nan */
            amax = v > amax ? v : amax;
        }
        p->bad[m] = !finite || amax > QLB_XMAX || (amax != 0.0f && amax < QLB_XMIN_INT);
        if (!p->integer) continue;
        if (c->passes == 2) memcpy(p->tmp + m * K, xr, (size_t)K * sizeof(float));
        for (int ps = 0; ps < c->passes; ++ps) {
            const int64_t v = ps * M + m;
            float* xs = c->passes == 2 ? p->tmp + m * K : xr;
            int8_t* q8 = p->x8 + v * K;
            for (int64_t kb = 0; kb < KB; ++kb) {
                float* xb = xs + kb * 32;
                float am = 0.0f, d;
                int32_t s[2] = {0, 0};
                if (p->bad[m]) { /* the float redo computes this row */
                    memset(q8 + kb * 32, 0, 32);
                    p->xd[v * KB + kb] = 0.0f;
                    p->xsd[v * 2 * KB + 2 * kb] = p->xsd[v * 2 * KB + 2 * kb + 1] = 0.0f;
                    continue;
                }
                for (int i = 0; i < 32; ++i) am = fabsf(xb[i]) > am ? fabsf(xb[i]) : am;
                d = am / 127.0f;
                for (int i = 0; i < 32; ++i) {
                    const float q = am > 0.0f ? rintf(xb[i] / d) : 0.0f;
                    q8[kb * 32 + i] = (int8_t)q;
                    s[i >> 4] += (int32_t)q;
                    if (ps == 0 && c->passes == 2) xb[i] = xb[i] - d * q; /* the residual */
                }
                p->xd[v * KB + kb] = d;
                p->xsd[v * 2 * KB + 2 * kb] = d * (float)s[0];
                p->xsd[v * 2 * KB + 2 * kb + 1] = d * (float)s[1];
            }
        }
    }
}

/* ================================ entry points ================================ */
int lb_qlb_scheme(int act, int64_t M) {
    if (act == LB_ACT_INT8) return LB_QS_INT8;
    if (act == LB_ACT_AUTO && M <= LB_QLB_AUTO_INT_MAX_M) return LB_QS_INT8X2;
    return LB_QS_FLOAT;
}

/* Rows of W per task: about 64k weights, a multiple of 4 (the variants' row tiles). */
static int64_t qlb_grain(int64_t K) {
    const int64_t g = (65536 / K + 3) / 4 * 4;
    return g > 4 ? g : 4;
}

int lb_qlb_forward_cpu(const void* x, int dt, int64_t M, int64_t N, int64_t K, const lb_fmt* f,
                       const uint8_t* blocks, const void* bias, int act, void* y) {
    qlb_ctx c;
    qlb_act_ctx a;
    const int sch = lb_qlb_scheme(act, M), integer = sch != LB_QS_FLOAT;
    float *xf = NULL, *bf = NULL, *tmp = NULL, *xd = NULL, *xsd = NULL;
    int8_t* x8 = NULL;
    uint8_t* bad = NULL;
    int64_t* map = NULL;
    int rc = 0;
    if (M <= 0 || N <= 0) return 0;
    memset(&c, 0, sizeof c);
    c.f = f; c.dt = dt; c.M = M; c.N = N; c.K = K; c.KB = K / 32;
    c.rb = K / f->block * f->type_size; c.blocks = blocks; c.y = y;
    c.passes = sch == LB_QS_INT8X2 ? 2 : 1;
    c.V = c.passes * M;
    xf = (float*)malloc((size_t)(M * K) * sizeof(float));
    bad = (uint8_t*)calloc((size_t)M, 1);
    bf = bias ? (float*)malloc((size_t)N * sizeof(float)) : NULL;
    if (integer) {
        x8 = (int8_t*)malloc((size_t)(c.V * K));
        xd = (float*)malloc((size_t)(c.V * c.KB) * sizeof(float));
        xsd = (float*)malloc((size_t)(c.V * 2 * c.KB) * sizeof(float));
        if (c.passes == 2) tmp = (float*)malloc((size_t)(M * K) * sizeof(float));
    }
    if (!xf || !bad || (bias && !bf) ||
        (integer && (!x8 || !xd || !xsd || (c.passes == 2 && !tmp)))) {
        rc = -1;
        goto done;
    }
    if (bf)
        for (int64_t n = 0; n < N; ++n) bf[n] = lb_ld1(bias, dt, n);
    c.bias = bf;
    a.c = &c; a.x = x; a.xf = xf; a.tmp = tmp; a.x8 = x8; a.xd = xd; a.xsd = xsd; a.bad = bad;
    a.integer = integer;
    lb_parallel(M, 1, qlb_act_rows, &a);
    c.xf = xf; c.x8 = x8; c.xd = xd; c.xsd = xsd;
    lb_parallel(N, qlb_grain(K), integer ? lb_rt.qlb->int_rows : lb_rt.qlb->float_rows, &c);
    if (c.oom) rc = -1;
    if (!rc && integer) {
        /* the rows the integer mode could not represent, again in float32 */
        int64_t nbad = 0;
        for (int64_t m = 0; m < M; ++m) nbad += bad[m];
        if (nbad) {
            qlb_ctx e = c;
            float* xb = (float*)malloc((size_t)(nbad * K) * sizeof(float));
            map = (int64_t*)malloc((size_t)nbad * sizeof(int64_t));
            if (!xb || !map) {
                free(xb);
                rc = -1;
                goto done;
            }
            nbad = 0;
            for (int64_t m = 0; m < M; ++m)
                if (bad[m]) {
                    memcpy(xb + nbad * K, xf + m * K, (size_t)K * sizeof(float));
                    map[nbad++] = m;
                }
            e.M = nbad; e.xf = xb; e.ymap = map; e.oom = 0;
            lb_parallel(N, qlb_grain(K), lb_rt.qlb->float_rows, &e);
            free(xb);
            if (e.oom) rc = -1;
        }
    }
done:
    free(xf); free(bad); free(bf); free(tmp); free(x8); free(xd); free(xsd); free(map);
    return rc;
}
