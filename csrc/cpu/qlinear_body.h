/* csrc/cpu/qlinear_body.h: the float kernels of the qlinear family (act="float", the GEMM of
 * large M, the exact path of rows the integer modes cannot represent, and W^T for the input
 * gradient), written once over a 16-lane vector abstraction and included by three files --
 * csrc/cpu/qlinear.c (scalar twin) and csrc/cpu/arch/x86/qlinear_avx2.c, qlinear_avx512.c --
 * each time with QL(name), the types ql_vf / ql_vi / ql_vt, QL_MR and the VF_/VI_/VT_ operations
 * defined.
 * One lane is one output row (see the layout in csrc/layouts.h). Defines the
 * lb_ql_{gemv,gemm,deqt}_worker_<isa> entry points of csrc/cpu/qlinear_impl.h. Not a
 * standalone header. */

#ifndef QL_SPECIALISE
#define QL_SPECIALISE LB_INLINE
#endif

/* Decodes every k of one 32-block: for each k runs STEP(cc, kk) with cc the vector of codes
 * (only the low 4 bits are meaningful for bits <= 4; 8-bit codes are masked) and kk = k % 32.
 * 3-bit: the 2-bit plane word gives bits 0-1 of k = 16w + t, and bit 8i + 4w + s of the 1-bit
 * plane (t = 4i + s) bit 2, shifted there. */
#define QL_BLOCK(BITS, wb, STEP)                                                              \
    do {                                                                                      \
        if ((BITS) == 3) {                                                                    \
            ql_vi qb_hi = VI_LOAD((wb) + 32);                                                    \
            QL_UNROLL32 for (int qb_k = 0; qb_k < 32; ++qb_k) {                               \
                const int qb_w = qb_k >> 4, qb_t = qb_k & 15;                                 \
                const int qb_b = 8 * (qb_t >> 2) + 4 * qb_w + (qb_t & 3) - 2;                 \
                ql_vi qb_lo = VI_SRLI(VI_LOAD((wb) + 16 * qb_w), 2 * qb_t);                      \
                ql_vi qb_h = qb_b >= 0 ? VI_SRLI(qb_hi, qb_b) : VI_SLLI(qb_hi, -qb_b);           \
                ql_vi cc = VI_MERGE3(qb_lo, qb_h);                                               \
                STEP(cc, qb_k);                                                               \
            }                                                                                 \
        } else {                                                                              \
            QL_UNROLL8 for (int qb_w = 0; qb_w < (BITS); ++qb_w) {                            \
                ql_vi qb_v = VI_LOAD((wb) + qb_w * 16);                                          \
                QL_UNROLL16 for (int qb_t = 0; qb_t < 32 / (BITS); ++qb_t) {                  \
                    ql_vi cc = VI_SRLI(qb_v, qb_t * (BITS));                                     \
                    if ((BITS) == 8) cc = VI_AND255(cc);                                      \
                    STEP(cc, qb_w * (32 / (BITS)) + qb_t);                                    \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    } while (0)

/* GEMV (M <= 4, act="float") over one tile of 16 rows. Per group, codes are turned into table
 * values (INT: the exact integer code minus the zero point per lane -- z, or -qmin for INT
 * sym -- so the sums never cancel and huge x cannot overflow them) and FMA'd with x; the
 * group's scale is applied once at the group end:
 *   INT / NF-FP symmetric: y += p0 * sum_k (T[c_k] - z) x_k
 *   two-scale NF/FP:       y += s+ * sum_k T+[c_k] x_k + s- * sum_k T-[c_k] x_k
 * (T+ / T- the positive / negative parts of the level table). NS independent accumulators per
 * row of x hide the FMA latency. */
/* (QL_SPECIALISE: the SIMD variants inline each kernel into one copy per constant argument
 * set; the scalar twin keeps one generic copy of each, see csrc/cpu/qlinear.c.) */
QL_SPECIALISE void QL(gemv_tile)(const ql_ctx* c, int64_t nt, const float* tp, const int M,
                             const int BITS, const int KD) {
    const int NS = M == 1 ? 4 : 2;
    const int64_t Kp = c->Kp, G = c->G, kbpg = c->kbpg;
    const ql_vt T = VT_MAKE(KD == QF_TWO ? c->tblp : c->tbl), Tn = VT_MAKE(c->tbln);
    const int32_t* W = c->P + nt * c->KB * BITS * 16;
    ql_vf out[4];
    for (int m = 0; m < M; ++m) out[m] = VF_ZERO();
    for (int64_t gi = 0; gi < G; ++gi) {
        ql_vf a[4][4], b[4][4];
        const ql_vf p0 = VF_LOAD(tp + gi * 32), p1 = VF_LOAD(tp + gi * 32 + 16);
        for (int m = 0; m < M; ++m)
            for (int s = 0; s < NS; ++s) {
                a[m][s] = VF_ZERO();
                b[m][s] = VF_ZERO();
            }
        for (int64_t kb = gi * kbpg; kb < (gi + 1) * kbpg; ++kb) {
            const int32_t* wb = W + kb * BITS * 16;
            const float* xk = c->xf + kb * 32;
#define QL_GEMV_STEP(cc, kk)                                                      \
    do {                                                                          \
        const int k_ = (kk);                                                      \
        ql_vf w_ = (BITS) == 8 ? VI_CVT(cc) : VT_LOOK(cc, T);                        \
        ql_vf wn_ = KD == QF_TWO ? VT_LOOK(cc, Tn) : w_;                             \
        if (KD == QF_ZP) w_ = VF_SUB(w_, p1);                                     \
        for (int m = 0; m < M; ++m) {                                             \
            ql_vf xb_ = VF_SET1(xk[m * Kp + k_]);                                    \
            a[m][k_ % NS] = VF_FMA(w_, xb_, a[m][k_ % NS]);                       \
            if (KD == QF_TWO) b[m][k_ % NS] = VF_FMA(wn_, xb_, b[m][k_ % NS]);    \
        }                                                                         \
    } while (0)
            QL_BLOCK(BITS, wb, QL_GEMV_STEP);
#undef QL_GEMV_STEP
        }
        for (int m = 0; m < M; ++m) {
            ql_vf sa = a[m][0], sb = b[m][0];
            for (int s = 1; s < NS; ++s) {
                sa = VF_ADD(sa, a[m][s]);
                sb = VF_ADD(sb, b[m][s]);
            }
            if (KD == QF_TWO)
                out[m] = VF_FMA(p0, sa, VF_FMA(p1, sb, out[m]));
            else
                out[m] = VF_FMA(p0, sa, out[m]);
        }
    }
    for (int m = 0; m < M; ++m) {
        float tmp[16] __attribute__((aligned(64)));
        int64_t n0 = nt * 16;
        VF_STORE(tmp, out[m]);
        ql_store(c, m, n0, tmp, c->N - n0 < 16 ? c->N - n0 : 16);
    }
}

/* Exact values (bit-identical to lb_decode) of one tile for K-blocks [kb0, kb1) into
 * B[(k - kb0*32) * ldb + lane]; tp: the tile's float parameters of groups [gb, ...). */
QL_SPECIALISE void QL(deq_tile)(const ql_ctx* c, int64_t nt, int64_t kb0, int64_t kb1, float* B,
                            const int64_t ldb, const float* tp, int64_t gb, const int BITS,
                            const int TWO) {
    const ql_vt T = VT_MAKE(c->tbl);
    const int32_t* W = c->P + nt * c->KB * BITS * 16;
    for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t gi = (c->G == 1 ? 0 : kb / c->kbpg) - gb;
        const ql_vf p0 = VF_LOAD(tp + gi * 32), p1 = VF_LOAD(tp + gi * 32 + 16);
        const int32_t* wb = W + kb * BITS * 16;
        float* bk = B + (kb - kb0) * 32 * ldb;
#define QL_DEQ_STEP(cc, kk)                                                                   \
    do {                                                                                      \
        ql_vf w_ = (BITS) == 8 ? VI_CVT(cc) : VT_LOOK(cc, T);                                    \
        ql_vf v_ = TWO ? VF_MUL(w_, VF_SELGE0(w_, p0, p1)) : VF_MUL(VF_SUB(w_, p1), p0);         \
        VF_STORE(bk + (kk) * ldb, v_);                                                         \
    } while (0)
        QL_BLOCK(BITS, wb, QL_DEQ_STEP);
#undef QL_DEQ_STEP
    }
}

/* C[0:MR, 0:32] (+)= X[m0:m0+MR, k0:k0+kc] . B[0:kc, 0:32]: MR x 2 vector accumulators, x
 * broadcast, two B vectors per k. */
LB_INLINE void QL(micro)(const ql_ctx* c, const float* B, int64_t m0, int64_t k0, int64_t kc,
                         float* C, const int MR, int first) {
    ql_vf acc[QL_MR][2];
    const float* X = c->xf + m0 * c->Kp + k0;
    const int64_t Kp = c->Kp;
    for (int i = 0; i < MR; ++i) {
        acc[i][0] = first ? VF_ZERO() : VF_LOAD(C + i * 32);
        acc[i][1] = first ? VF_ZERO() : VF_LOAD(C + i * 32 + 16);
    }
    for (int64_t k = 0; k < kc; ++k) {
        const ql_vf b0 = VF_LOAD(B + k * 32), b1 = VF_LOAD(B + k * 32 + 16);
        for (int i = 0; i < MR; ++i) {
            const ql_vf xa = VF_SET1(X[i * Kp + k]);
            acc[i][0] = VF_FMA(xa, b0, acc[i][0]);
            acc[i][1] = VF_FMA(xa, b1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; ++i) {
        VF_STORE(C + i * 32, acc[i][0]);
        VF_STORE(C + i * 32 + 16, acc[i][1]);
    }
}

#define QL_KC_BLOCKS 8 /* 256 k per B panel: 32 KiB of floats */

/* GEMM over pairs of tiles [p0, p1): dequantise a 256 x 32 panel of W, multiply it by every
 * MR-row block of x into a float accumulator panel C (M x 32), then add bias and store. */
QL_SPECIALISE void QL(gemm_pairs)(ql_ctx* c, int64_t p0, int64_t p1, const int BITS, const int TWO) {
    const int64_t G = c->G;
    float* B = (float*)aligned_alloc(64, QL_KC_BLOCKS * 32 * 32 * sizeof(float));
    float* C = (float*)aligned_alloc(64, (size_t)((c->M + QL_MR) * 32) * sizeof(float));
    float* tp = (float*)malloc((size_t)(2 * G * 32) * sizeof(float));
    if (!B || !C || !tp) {
        free(B);
        free(C);
        free(tp);
        c->oom = 1;
        return;
    }
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t nt0 = 2 * p;
        lb_ql_tile_params(c, nt0, 0, G, 0, tp);
        if (nt0 + 1 < c->NT) lb_ql_tile_params(c, nt0 + 1, 0, G, 0, tp + G * 32);
        for (int64_t kb0 = 0; kb0 < c->KB; kb0 += QL_KC_BLOCKS) {
            const int64_t kb1 = kb0 + QL_KC_BLOCKS < c->KB ? kb0 + QL_KC_BLOCKS : c->KB;
            const int64_t kc = (kb1 - kb0) * 32;
            QL(deq_tile)(c, nt0, kb0, kb1, B, 32, tp, 0, BITS, TWO);
            if (nt0 + 1 < c->NT)
                QL(deq_tile)(c, nt0 + 1, kb0, kb1, B + 16, 32, tp + G * 32, 0, BITS, TWO);
            else
                for (int64_t k = 0; k < kc; ++k) memset(B + k * 32 + 16, 0, 16 * sizeof(float));
            for (int64_t m0 = 0; m0 < c->M; m0 += QL_MR) {
                const int64_t mr = c->M - m0 < QL_MR ? c->M - m0 : QL_MR;
                float* Cm = C + m0 * 32;
                switch (mr) {
#define QL_MR_CASE(R) \
    case R: QL(micro)(c, B, m0, kb0 * 32, kc, Cm, R, kb0 == 0); break;
                    QL_MR_CASE(1)
                    QL_MR_CASE(2)
                    QL_MR_CASE(3)
#if QL_MR >= 4
                    QL_MR_CASE(4)
#endif
#if QL_MR >= 6
                    QL_MR_CASE(5)
                    QL_MR_CASE(6)
#endif
#undef QL_MR_CASE
                    default: break;
                }
            }
        }
        {
            const int64_t n0 = nt0 * 16, cnt = c->N - n0 < 32 ? c->N - n0 : 32;
            for (int64_t m = 0; m < c->M; ++m) ql_store(c, m, n0, C + m * 32, cnt);
        }
    }
    free(B);
    free(C);
    free(tp);
}

/* Thread-pool entry points: [a, b) are tiles (GEMV) or tile pairs (GEMM). The instantiation is
 * the weight's shape (width c->bits, decode kind c->kd; QL_FLOAT_SHAPES / QL_DEQ_SHAPES), which
 * the drivers only send here when lb_ql_holds the format. */
#define QL_GV_CASE(BB, KK, MM) \
    case BB * 100 + KK * 10 + MM: QL(gemv_tile)(c, nt, tp, MM, BB, KK); break;
#define QL_GV_SHAPE(BB, KK) QL_GV_CASE(BB, KK, 1) QL_GV_CASE(BB, KK, 2) QL_GV_CASE(BB, KK, 3) QL_GV_CASE(BB, KK, 4)
QL_ATTR void QL(gemv_worker)(int64_t a, int64_t b, void* ctx) {
    ql_ctx* c = (ql_ctx*)ctx;
    float* tp = (float*)malloc((size_t)(c->G * 32) * sizeof(float));
    if (!tp) {
        c->oom = 1;
        return;
    }
    for (int64_t nt = a; nt < b; ++nt) {
        lb_ql_tile_params(c, nt, 0, c->G, 0, tp);
        switch (c->bits * 100 + c->kd * 10 + c->M) {
            QL_FLOAT_SHAPES(QL_GV_SHAPE)
            default: break;
        }
    }
    free(tp);
}
#undef QL_GV_SHAPE
#undef QL_GV_CASE

#define QL_GM_CASE(BB, TT) \
    case BB * 10 + TT: QL(gemm_pairs)(c, a, b, BB, TT); break;
QL_ATTR void QL(gemm_worker)(int64_t a, int64_t b, void* ctx) {
    ql_ctx* c = (ql_ctx*)ctx;
    switch (c->bits * 10 + (c->kd == QF_TWO)) {
        QL_DEQ_SHAPES(QL_GM_CASE)
        default: break;
    }
}
#undef QL_GM_CASE

/* Rows [kb0*32, kb1*32) of W^T as float32 (., NT*16), K-blocks [a, b) of them (the input-gradient
 * path, grad_x = grad_y W): tiles innermost, so each of the 32 output rows of a K-block is
 * written sequentially; each (tile, block) reads its one group's parameters. */
#define QL_DT_CASE(BB, TT) \
    case BB * 10 + TT: \
        for (int64_t kb = a < c->kb0 ? c->kb0 : a; kb < b; ++kb) \
            for (int64_t nt = 0; nt < c->NT; ++nt) { \
                const int64_t gi = c->G == 1 ? 0 : kb / c->kbpg; \
                lb_ql_tile_params(c, nt, gi, gi + 1, 0, tp); \
                QL(deq_tile)(c, nt, kb, kb + 1, (float*)c->y + (kb - c->kb0) * 32 * ld + nt * 16, ld, tp, gi, BB, TT); \
            } \
        break;
QL_ATTR void QL(deqt_worker)(int64_t a, int64_t b, void* ctx) {
    const ql_ctx* c = (const ql_ctx*)ctx;
    const int64_t ld = c->NT * 16;
    float tp[32] __attribute__((aligned(64)));
    switch (c->bits * 10 + (c->kd == QF_TWO)) {
        QL_DEQ_SHAPES(QL_DT_CASE)
        default: break;
    }
}
#undef QL_DT_CASE
#undef QL_SPECIALISE
