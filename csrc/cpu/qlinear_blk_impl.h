/* csrc/cpu/qlinear_blk_impl.h: what csrc/cpu/qlinear_blk.c (driver, activation quantization,
 * scalar twins) and its x86 variants (csrc/cpu/arch/x86/qlinear_blk_*.c) share: the kernel
 * context, the family's kernel table (struct lb_qlb_kernels), and the per-block parameter decode
 * every variant runs. Internal to the qlinear_blk CPU kernels.
 *
 * The kernels read W's GGUF blocks in place, one 32-element chunk at a time: its codes as the
 * signed q of FORMATS.md 1.8 minus the zero code (q8_0, q3_k, q6_k as stored; q4_0 / q5_0 minus
 * 8 / 16; the asymmetric types' q >= 0), and per 16-element half of the chunk h a scale S_h and
 * a constant C_h, so that value = S_h * q + C_h bit for bit as ggml's dequantize_row_* computes
 * it (C = m for q4_1 / q5_1, -M_j for q2_k / q4_k / q5_k, 0 otherwise; S_h * q + 0 and
 * S_h * q + (-M) round as S_h * q and S_h * q - M do). Halves: the 16-wide sub-blocks (q2_k,
 * q3_k, q6_k) give each half its own S / C; the 32-wide ones give both halves the same. */
#ifndef LOWBIT_CPU_QLINEAR_BLK_IMPL_H
#define LOWBIT_CPU_QLINEAR_BLK_IMPL_H

#include <stdlib.h>
#include <string.h>

#include "lb_cpu.h"
#include "qlinear.h"
#include "qlinear_blk.h"

typedef struct {
    const lb_fmt* f;
    int dt;
    int passes;               /* integer kernels: 1 (int8) or 2 (int8 + int8 residual) */
    int64_t M, N, K, KB, rb;  /* KB = K / 32 chunks; rb: bytes of one W row */
    int64_t V;                /* integer kernels: virtual rows, row p*M + m = pass p of row m */
    const uint8_t* blocks;    /* W: (N, rb) GGUF blocks */
    const float* xf;          /* float kernels: x as float32 (M, K) */
    const int8_t* x8;         /* (V, K) int8 activations, natural order */
    const float* xd;          /* (V, KB) their block scales */
    const float* xsd;         /* (V, 2 KB): xd * sum of x8 over each 16-element half */
    const float* bias;        /* float32 (N) or NULL */
    const int64_t* ymap;      /* output row of each x row (NULL: the same row) */
    void* y;
    volatile int oom;
} qlb_ctx;

/* The family's kernel table (csrc/cpu/lb_cpu.h): worker entry points over W rows [a, b). */
struct lb_qlb_kernels {
    lb_parallel_fn float_rows; /* act="float" (and "auto" past LB_QLB_AUTO_INT_MAX_M) */
    lb_parallel_fn int_rows;   /* act="int8" / "auto": int8 activations, integer dots */
};

/* The fp16 reader of the parameter decode (x86 variants define it as F16C's vcvtph2ps first:
 * exact either way). */
#ifndef QLB_HALF
#define QLB_HALF(p) lb_get_half(p)
#endif

/* S[h], C[h] of the halves h of the block at b (2 for a 32-block, 16 for a 256-block), as
 * the header comment says. Compiled per layout L (a constant where the variants inline it). */
LB_INLINE void qlb_block_params(int L, const uint8_t* b, float* S, float* C) {
    switch (L) {
    case LB_BLK_Q8_0:
    case LB_BLK_Q4_0:
    case LB_BLK_Q5_0:
        S[0] = S[1] = QLB_HALF(b);
        C[0] = C[1] = 0.0f;
        break;
    case LB_BLK_Q4_1:
    case LB_BLK_Q5_1:
        S[0] = S[1] = QLB_HALF(b);
        C[0] = C[1] = QLB_HALF(b + 2);
        break;
    case LB_BLK_Q2_K: {
        const float d = QLB_HALF(b + 80), dm = QLB_HALF(b + 82);
        for (int j = 0; j < 16; ++j) {
            S[j] = d * (float)(b[j] & 15);
            C[j] = -(dm * (float)(b[j] >> 4));
        }
        break;
    }
    case LB_BLK_Q3_K: {
        const uint8_t* sc = b + 96;
        const float d = QLB_HALF(b + 108);
        for (int j = 0; j < 16; ++j) {
            const int low = j < 8 ? (sc[j] & 15) : (sc[j - 8] >> 4);
            const int high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
            S[j] = d * (float)((low | (high << 4)) - 32);
            C[j] = 0.0f;
        }
        break;
    }
    case LB_BLK_Q4_K:
    case LB_BLK_Q5_K: {
        const uint8_t* s = b + 4;
        const float d = QLB_HALF(b), dm = QLB_HALF(b + 2);
        for (int j = 0; j < 8; ++j) {
            const int sc = j < 4 ? (s[j] & 63) : ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
            const int mc = j < 4 ? (s[j + 4] & 63) : ((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
            S[2 * j] = S[2 * j + 1] = d * (float)sc;
            C[2 * j] = C[2 * j + 1] = -(dm * (float)mc);
        }
        break;
    }
    case LB_BLK_Q6_K: {
        const float d = QLB_HALF(b + 208);
        for (int j = 0; j < 16; ++j) {
            S[j] = d * (float)(int)(int8_t)b[192 + j];
            C[j] = 0.0f;
        }
        break;
    }
    default:
        break;
    }
}

/* Whether the layout's C is ever nonzero (the asymmetric types). */
#define QLB_HAS_C(L)                                                                    \
    ((L) == LB_BLK_Q4_1 || (L) == LB_BLK_Q5_1 || (L) == LB_BLK_Q2_K || (L) == LB_BLK_Q4_K || \
     (L) == LB_BLK_Q5_K)
/* The zero code a stored code loses to become the signed q of the chunk decode. */
#define QLB_ZERO(L) ((L) == LB_BLK_Q4_0 ? 8 : (L) == LB_BLK_Q5_0 ? 16 : 0)

/* Every layout, for the variants' per-layout instantiations: X(L). */
#define QLB_LAYOUTS(X)                                                                     \
    X(LB_BLK_Q8_0) X(LB_BLK_Q4_0) X(LB_BLK_Q5_0) X(LB_BLK_Q4_1) X(LB_BLK_Q5_1) X(LB_BLK_Q2_K) \
    X(LB_BLK_Q3_K) X(LB_BLK_Q4_K) X(LB_BLK_Q5_K) X(LB_BLK_Q6_K)

/* y[row, n] = v + bias[n], rounded to the output dtype, row = ymap[m] (or m). */
LB_INLINE void qlb_store(const qlb_ctx* c, int64_t m, int64_t n, float v) {
    lb_st1(c->y, c->dt, (c->ymap ? c->ymap[m] : m) * c->N + n, c->bias ? v + c->bias[n] : v);
}

#endif /* LOWBIT_CPU_QLINEAR_BLK_IMPL_H */
