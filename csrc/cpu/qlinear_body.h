/* csrc/cpu/qlinear_body.h: the qlinear CPU kernels written once over a 16-lane vector
 * abstraction and included by three files -- csrc/cpu/qlinear.c (scalar twin) and
 * csrc/cpu/arch/x86/qlinear_avx2.c, qlinear_avx512.c -- each time with QL(name), the types
 * vf/vi/vt, QL_MR and the VF_/VI_/VT_ operations defined. One lane is one output row (see the
 * layout in csrc/layouts.h). Defines the lb_ql_*_worker_<isa> entry points of
 * csrc/cpu/qlinear_impl.h. Not a standalone header. */

/* Decodes every k of one 32-block: for each k runs STEP(cc, kk) with cc the vector of codes
 * (only the low 4 bits are meaningful for bits <= 4; 8-bit codes are masked) and kk = k % 32. */
#define QL_BLOCK(BITS, wb, STEP)                                                              \
    do {                                                                                      \
        if ((BITS) == 3) {                                                                    \
            vi qb_lo0 = VI_LOAD((wb)), qb_lo1 = VI_LOAD((wb) + 16), qb_hi = VI_LOAD((wb) + 32);      \
            QL_UNROLL32 for (int qb_t = 0; qb_t < 32; ++qb_t) {                        \
                vi qb_lo = VI_SRLI(qb_t < 16 ? qb_lo0 : qb_lo1, 2 * (qb_t & 15));                       \
                vi qb_h = qb_t >= 2 ? VI_SRLI(qb_hi, qb_t - 2) : VI_SLLI(qb_hi, 2 - qb_t);                \
                vi cc = VI_MERGE3(qb_lo, qb_h);                                                   \
                STEP(cc, qb_t);                                                                 \
            }                                                                                 \
        } else {                                                                              \
            QL_UNROLL8 for (int qb_w = 0; qb_w < (BITS); ++qb_w) {                     \
                vi qb_v = VI_LOAD((wb) + qb_w * 16);                                              \
                QL_UNROLL16 for (int qb_t = 0; qb_t < 32 / (BITS); ++qb_t) {           \
                    vi cc = VI_SRLI(qb_v, qb_t * (BITS));                                         \
                    if ((BITS) == 8) cc = VI_AND255(cc);                                      \
                    STEP(cc, qb_w * (32 / (BITS)) + qb_t);                                        \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    } while (0)

/* GEMV (M <= 4) over one tile of 16 rows. Per group, codes are turned into table values and
 * FMA'd with x; the group's scale is applied once at the group end:
 *   INT / NF-FP symmetric: y += p0 * (sum_k T[c_k] x_k - p1 * sum_k x_k)   (p1 = z, -qmin or 0)
 *   two-scale NF/FP:       y += s+ * sum_k T+[c_k] x_k + s- * sum_k T-[c_k] x_k
 * (T+ / T- the positive / negative parts of the level table). NS independent accumulators per
 * row of x hide the FMA latency. */
LB_INLINE void QL(gemv_tile)(const ql_ctx* c, int64_t nt, const int M, const int BITS,
                             const int TWO) {
    const int NS = M == 1 ? 4 : 2;
    const int64_t Kp = c->Kp, G = c->G, kbpg = c->kbpg;
    const vt T = VT_MAKE(TWO ? c->tblp : c->tbl), Tn = VT_MAKE(c->tbln);
    const int32_t* W = c->P + nt * c->KB * BITS * 16;
    const float* prm = c->prm + nt * G * 32;
    vf out[4];
    for (int m = 0; m < M; ++m) out[m] = VF_ZERO();
    for (int64_t gi = 0; gi < G; ++gi) {
        vf a[4][4], b[4][4];
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
        vf w_ = (BITS) == 8 ? VI_CVT(cc) : VT_LOOK(cc, T);                        \
        vf wn_ = TWO ? VT_LOOK(cc, Tn) : w_;                                      \
        for (int m = 0; m < M; ++m) {                                             \
            vf xb_ = VF_SET1(xk[m * Kp + k_]);                                    \
            a[m][k_ % NS] = VF_FMA(w_, xb_, a[m][k_ % NS]);                       \
            if (TWO) b[m][k_ % NS] = VF_FMA(wn_, xb_, b[m][k_ % NS]);             \
        }                                                                         \
    } while (0)
            QL_BLOCK(BITS, wb, QL_GEMV_STEP);
#undef QL_GEMV_STEP
        }
        {
            const vf p0 = VF_LOAD(prm + gi * 32), p1 = VF_LOAD(prm + gi * 32 + 16);
            for (int m = 0; m < M; ++m) {
                vf sa = a[m][0], sb = b[m][0];
                for (int s = 1; s < NS; ++s) {
                    sa = VF_ADD(sa, a[m][s]);
                    sb = VF_ADD(sb, b[m][s]);
                }
                if (TWO)
                    out[m] = VF_FMA(p0, sa, VF_FMA(p1, sb, out[m]));
                else
                    out[m] = VF_FMA(p0, VF_SUB(sa, VF_MUL(p1, VF_SET1(c->xs[m * G + gi]))),
                                    out[m]);
            }
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
 * B[(k - kb0*32) * ldb + lane]. */
LB_INLINE void QL(deq_tile)(const ql_ctx* c, int64_t nt, int64_t kb0, int64_t kb1, float* B,
                            const int64_t ldb, const int BITS, const int TWO) {
    const vt T = VT_MAKE(c->tbl);
    const int32_t* W = c->P + nt * c->KB * BITS * 16;
    const float* prm = c->prm + nt * c->G * 32;
    for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t gi = c->G == 1 ? 0 : kb / c->kbpg;
        const vf p0 = VF_LOAD(prm + gi * 32), p1 = VF_LOAD(prm + gi * 32 + 16);
        const int32_t* wb = W + kb * BITS * 16;
        float* bk = B + (kb - kb0) * 32 * ldb;
#define QL_DEQ_STEP(cc, kk)                                                                   \
    do {                                                                                      \
        vf w_ = (BITS) == 8 ? VI_CVT(cc) : VT_LOOK(cc, T);                                    \
        vf v_ = TWO ? VF_MUL(w_, VF_SELGE0(w_, p0, p1)) : VF_MUL(VF_SUB(w_, p1), p0);         \
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
    vf acc[QL_MR][2];
    const float* X = c->xf + m0 * c->Kp + k0;
    const int64_t Kp = c->Kp;
    for (int i = 0; i < MR; ++i) {
        acc[i][0] = first ? VF_ZERO() : VF_LOAD(C + i * 32);
        acc[i][1] = first ? VF_ZERO() : VF_LOAD(C + i * 32 + 16);
    }
    for (int64_t k = 0; k < kc; ++k) {
        const vf b0 = VF_LOAD(B + k * 32), b1 = VF_LOAD(B + k * 32 + 16);
        for (int i = 0; i < MR; ++i) {
            const vf xa = VF_SET1(X[i * Kp + k]);
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
LB_INLINE void QL(gemm_pairs)(ql_ctx* c, int64_t p0, int64_t p1, const int BITS, const int TWO) {
    float* B = (float*)aligned_alloc(64, QL_KC_BLOCKS * 32 * 32 * sizeof(float));
    float* C = (float*)aligned_alloc(64, (size_t)((c->M + QL_MR) * 32) * sizeof(float));
    if (!B || !C) {
        free(B);
        free(C);
        c->oom = 1;
        return;
    }
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t nt0 = 2 * p;
        for (int64_t kb0 = 0; kb0 < c->KB; kb0 += QL_KC_BLOCKS) {
            const int64_t kb1 = kb0 + QL_KC_BLOCKS < c->KB ? kb0 + QL_KC_BLOCKS : c->KB;
            const int64_t kc = (kb1 - kb0) * 32;
            QL(deq_tile)(c, nt0, kb0, kb1, B, 32, BITS, TWO);
            if (nt0 + 1 < c->NT)
                QL(deq_tile)(c, nt0 + 1, kb0, kb1, B + 16, 32, BITS, TWO);
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
}

/* Thread-pool entry points: [a, b) are tiles (GEMV) or tile pairs (GEMM). */
#define QL_GV_CASE(BB, TT, MM) \
    case BB * 100 + TT * 10 + MM: for (int64_t nt = a; nt < b; ++nt) QL(gemv_tile)(c, nt, MM, BB, TT); break;
#define QL_GV_M(BB, TT) QL_GV_CASE(BB, TT, 1) QL_GV_CASE(BB, TT, 2) QL_GV_CASE(BB, TT, 3) QL_GV_CASE(BB, TT, 4)
QL_ATTR void QL(gemv_worker)(int64_t a, int64_t b, void* ctx) {
    const ql_ctx* c = (const ql_ctx*)ctx;
    switch (c->bits * 100 + c->two * 10 + c->M) {
        QL_GV_M(2, 0) QL_GV_M(2, 1) QL_GV_M(3, 0) QL_GV_M(3, 1) QL_GV_M(4, 0) QL_GV_M(4, 1)
        QL_GV_M(8, 0)
        default: break;
    }
}
#undef QL_GV_M
#undef QL_GV_CASE

#define QL_GM_CASE(BB, TT) \
    case BB * 10 + TT: QL(gemm_pairs)(c, a, b, BB, TT); break;
QL_ATTR void QL(gemm_worker)(int64_t a, int64_t b, void* ctx) {
    ql_ctx* c = (ql_ctx*)ctx;
    switch (c->bits * 10 + c->two) {
        QL_GM_CASE(2, 0) QL_GM_CASE(2, 1) QL_GM_CASE(3, 0) QL_GM_CASE(3, 1) QL_GM_CASE(4, 0)
        QL_GM_CASE(4, 1) QL_GM_CASE(8, 0)
        default: break;
    }
}
#undef QL_GM_CASE

/* Rows [kb0*32, kb1*32) of W^T as float32 (., NT*16), K-blocks [a, b) of them (the input-gradient path, grad_x = grad_y W):
 * tiles innermost, so each of the 32 output rows of a K-block is written sequentially. */
#define QL_DT_CASE(BB, TT) \
    case BB * 10 + TT: \
        for (int64_t kb = a < c->kb0 ? c->kb0 : a; kb < b; ++kb) \
            for (int64_t nt = 0; nt < c->NT; ++nt) \
                QL(deq_tile)(c, nt, kb, kb + 1, (float*)c->y + (kb - c->kb0) * 32 * ld + nt * 16, ld, BB, TT); \
        break;
QL_ATTR void QL(deqt_worker)(int64_t a, int64_t b, void* ctx) {
    const ql_ctx* c = (const ql_ctx*)ctx;
    const int64_t ld = c->NT * 16;
    switch (c->bits * 10 + c->two) {
        QL_DT_CASE(2, 0) QL_DT_CASE(2, 1) QL_DT_CASE(3, 0) QL_DT_CASE(3, 1) QL_DT_CASE(4, 0)
        QL_DT_CASE(4, 1) QL_DT_CASE(8, 0)
        default: break;
    }
}
#undef QL_DT_CASE
