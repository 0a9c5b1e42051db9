/* csrc/cpu/qlinear_int_body.h: the integer-dot kernels of the qlinear family (act="int8" and
 * act="auto"'s int8 x2, every M), written once over a vector of QVL 32-bit lanes and
 * included by csrc/cpu/qlinear.c (scalar twin, 16 lanes) and csrc/cpu/arch/x86/qlinear_avx2.c,
 * qlinear_avxvnni.c (8 lanes), qlinear_avx512.c, qlinear_avx512vnni.c (16 lanes), each time with
 * QI(name), QI_ATTR, QVL, QI_MB_OFF / QI_MB_PN (the most activation rows of a pass whose three
 * accumulators each -- block int32, group float, output -- stay in registers), QI_MB_OFF_BIG /
 * QI_MB_PN_BIG (the rows of a batched pass: two register accumulators per row, the outputs
 * summed in memory), the types ql_qv
 * (int32 lanes), ql_qg (float lanes), ql_qt (a 16-byte table) and the QV_ / QG_ / QT_ operations
 * defined. Defines lb_ql_int_tiles_<isa> (csrc/cpu/qlinear_impl.h). Not a standalone header.
 *
 * Batches (any M): the activations are quantized once per call (ql_act_rows_body); each tile of
 * 16 output rows is decoded once per pass of up to QI_MB_*_BIG activation rows (12 on AVX-512),
 * so a decoded weight vector feeds that many vpdpbusd, each with its activation word a
 * broadcast from one pointer (the chunked layout of ql_xblock). Threads split the tiles (N).
 *
 * One lane is one output row (the layout of csrc/layouts.h). Per K-block and step t, one shift
 * and mask of a packed word gives 4 codes of every row of the tile as bytes (u8); a byte table
 * (vpshufb) turns NF/FP codes into integers; a 4-way u8 x s8 dot product adds them times the
 * 4 int8 activations of step t (one broadcast 32-bit word) into an int32 lane -- for each of up
 * to MB activation rows, so one decoded vector feeds them all. The int32 block sums are exact;
 * per block and activation row they are scaled once by the row's block scale d (float32), per
 * group by the row's group parameters, the zero point folded in through the activation sums
 * (p0 * (sum_b d_b sum u q - p1 * sum_b d_b sum q)), never per weight. */

#define QI_MB_BIG 16 /* the array bound of the per-row accumulators */
#ifndef QV_ZACC
#define QV_ZACC QV_ZERO /* a fresh zero accumulator (x86: a zeroing idiom, see the variants) */
#endif

/* The u8 codes of step t of the K-block at wb (lane h*QVL.. of each word). */
#define QI_CODES(BITS, wb, t, out)                                                          \
    do {                                                                                    \
        if ((BITS) == 8) {                                                                  \
            out = QV_LOAD((wb) + (t) * 16);                                                 \
        } else if ((BITS) == 4) {                                                           \
            out = QV_AND(QV_SRLI(QV_LOAD((wb) + ((t) >> 1) * 16), 4 * ((t) & 1)), m15);     \
        } else {                                                                            \
            out = QV_AND(QV_SRLI(QV_LOAD((wb) + ((t) >> 2) * 16), 2 * ((t) & 3)), m3);      \
            if ((BITS) == 3) {                                                              \
                const int sh_ = 4 * ((t) >> 2) + ((t) & 3) - 2;                             \
                ql_qv h_ = sh_ >= 0 ? QV_SRLI(hw, sh_) : QV_SLLI(hw, -sh_);                    \
                out = QV_OR(out, QV_AND(h_, m4));                                           \
            }                                                                               \
        }                                                                                   \
    } while (0)

/* acc[v0 + v][16] = sum over groups of the tile's outputs for activation rows v0 .. v0+MB-1.
 * The SIMD variants inline it into one specialised copy per (BITS, SCH, MB); the scalar twin
 * (QI_TILE_ONE_COPY) keeps one generic copy: 30 unrolled copies on 16-lane structs cost half a
 * minute of compile time for a path only CPUs without AVX2 run. */
#ifdef QI_TILE_ONE_COPY
static __attribute__((noinline)) void QI(tile)
#else
LB_INLINE void QI(tile)
#endif
(const ql_ctx* c, const int32_t* W, const float* tp, int64_t v0,
                        float* acc, const int BITS, const int SCH, const int MB) {
    /* a batched pass (more rows than QI_MB_OFF / QI_MB_PN): the outputs are summed in acc, one
     * load and store per row and group */
    const int OUTM = MB > (SCH == QI_PN ? QI_MB_PN : QI_MB_OFF);
    const int64_t KB = c->KB, G = c->G, kbpg = c->kbpg;
    /* rows v0 .. v0+MB-1 lie in one chunk (ql_xblock): one pointer for all of them */
    const int32_t* xq = (const int32_t*)c->xq + ql_xblock(v0, 0, KB) * 8;
    const float* xd = c->xd + ql_xblock(v0, 0, KB);
    const float* xz = c->xz + v0 * G;
    const ql_qt TA = QT_MAKE(c->lta), TB = QT_MAKE(c->ltb);
    const ql_qv m3 = QV_SET1(0x03030303), m4 = QV_SET1(0x04040404), m15 = QV_SET1(0x0F0F0F0F);
    (void)TA, (void)TB, (void)m3, (void)m4, (void)m15;
    for (int h = 0; h < 16 / QVL; ++h) {
        ql_qg out[QI_MB_BIG];
        if (!OUTM)
            for (int v = 0; v < MB; ++v) out[v] = QG_ZERO();
        for (int64_t gi = 0; gi < G; ++gi) {
            ql_qg fa[QI_MB_BIG], fb[QI_MB_BIG];
            for (int v = 0; v < MB; ++v) {
                fa[v] = QG_ZERO();
                fb[v] = QG_ZERO();
            }
            for (int64_t kb = gi * kbpg; kb < (gi + 1) * kbpg; ++kb) {
                const int32_t* wb = W + kb * BITS * 16 + h * QVL;
                const ql_qv hw = BITS == 3 ? QV_LOAD(wb + 32) : QV_ZERO();
                ql_qv ia[QI_MB_BIG], ib[QI_MB_BIG];
                (void)hw;
                for (int v = 0; v < MB; ++v) {
                    ia[v] = QV_ZACC();
                    ib[v] = QV_ZACC();
                }
                QI_UNROLL8 for (int t = 0; t < LB_QL_STEPS; ++t) {
                    ql_qv u, ua, ub;
                    QI_CODES(BITS, wb, t, u);
                    ua = SCH == QI_OFF ? u : QV_LUT(u, TA);
                    ub = SCH == QI_PN ? QV_LUT(u, TB) : u;
                    (void)ub;
                    for (int v = 0; v < MB; ++v) {
                        const int32_t xv = xq[(kb * QL_XCHUNK + v) * 8 + t];
                        ia[v] = BITS == 8 ? QV_DOT8(ia[v], ua, xv) : QV_DOT(ia[v], ua, xv);
                        if (SCH == QI_PN) ib[v] = QV_DOT(ib[v], ub, xv);
                    }
                }
                for (int v = 0; v < MB; ++v) {
                    const ql_qg d = QG_SET1(xd[kb * QL_XCHUNK + v]);
                    fa[v] = QG_FMA(QV_CVT(ia[v]), d, fa[v]);
                    if (SCH == QI_PN) fb[v] = QG_FMA(QV_CVT(ib[v]), d, fb[v]);
                }
            }
            {
                const ql_qg p0 = QG_LOAD(tp + gi * 32 + h * QVL);
                const ql_qg p1 = QG_LOAD(tp + gi * 32 + 16 + h * QVL);
                for (int v = 0; v < MB; ++v) {
                    float* ap = acc + (v0 + v) * 16 + h * QVL;
                    ql_qg o = !OUTM ? out[v] : gi ? QG_LOAD(ap) : QG_ZERO();
                    if (SCH == QI_PN)
                        o = QG_FMA(p0, fa[v], QG_FNMA(p1, fb[v], o));
                    else
                        o = QG_FMA(p0, QG_FNMA(p1, QG_SET1(xz[v * G + gi]), fa[v]), o);
                    if (OUTM) QG_STORE(ap, o);
                    else out[v] = o;
                }
            }
        }
        if (!OUTM)
            for (int v = 0; v < MB; ++v) QG_STORE(acc + (v0 + v) * 16 + h * QVL, out[v]);
    }
}

#define QI_CASE(BB, SS, MM) \
    case BB * 1000 + SS * 100 + MM: QI(tile)(c, W, tp, v0, acc, BB, SS, MM); break;
#if QI_MB_OFF >= 8
#define QI_CASES_OFF(BB, SS) QI_CASE(BB, SS, 1) QI_CASE(BB, SS, 2) QI_CASE(BB, SS, 4) QI_CASE(BB, SS, 8) \
    QI_CASE(BB, SS, QI_MB_OFF_BIG)
#else
#define QI_CASES_OFF(BB, SS) QI_CASE(BB, SS, 1) QI_CASE(BB, SS, 2) QI_CASE(BB, SS, 4) \
    QI_CASE(BB, SS, QI_MB_OFF_BIG)
#endif
#if QI_MB_PN >= 4
#define QI_CASES_PN(BB, SS) QI_CASE(BB, SS, 1) QI_CASE(BB, SS, 2) QI_CASE(BB, SS, 4) \
    QI_CASE(BB, SS, QI_MB_PN_BIG)
#else
#define QI_CASES_PN(BB, SS) QI_CASE(BB, SS, 1) QI_CASE(BB, SS, 2) QI_CASE(BB, SS, QI_MB_PN_BIG)
#endif
/* the activation-row chunks (MB) of each scheme: QI_PN holds two accumulators per row */
#define QI_CASES_QI_OFF(BB) QI_CASES_OFF(BB, QI_OFF)
#define QI_CASES_QI_LOFF(BB) QI_CASES_OFF(BB, QI_LOFF)
#define QI_CASES_QI_PN(BB) QI_CASES_PN(BB, QI_PN)
#define QI_SHAPE(BB, SS) QI_CASES_##SS(BB)

/* Thread-pool entry point: [a, b) are tiles. Per tile: its integer group parameters, then the
 * activation rows in chunks of MB (largest first), then the passes of each row summed. */
QI_ATTR void QI(int_tiles)(int64_t a, int64_t b, void* ctx) {
    ql_ctx* c = (ql_ctx*)ctx;
    const int64_t V = c->V, M = c->M;
    const int mbmax = c->sch == QI_PN ? QI_MB_PN : QI_MB_OFF;
    const int mbbig = c->sch == QI_PN ? QI_MB_PN_BIG : QI_MB_OFF_BIG;
    float* tp = (float*)malloc((size_t)(c->G * 32) * sizeof(float));
    float* acc = (float*)aligned_alloc(64, (size_t)(V * 16) * sizeof(float));
    if (!tp || !acc) {
        free(tp);
        free(acc);
        c->oom = 1;
        return;
    }
    for (int64_t nt = a; nt < b; ++nt) {
        const int32_t* W = c->P + nt * c->KB * c->bits * 16;
        const int64_t n0 = nt * 16, cnt = c->N - n0 < 16 ? c->N - n0 : 16;
        lb_ql_tile_params(c, nt, 0, c->G, 1, tp);
        for (int64_t v0 = 0; v0 < V;) {
            /* the rows left in v0's chunk (a pass never crosses one, see ql_xblock) */
            const int64_t ce = (v0 / QL_XCHUNK + 1) * QL_XCHUNK;
            const int64_t left = (ce < V ? ce : V) - v0;
            const int mb = left >= mbbig                ? mbbig
                           : left >= 8 && mbmax >= 8 ? 8
                           : left >= 4 && mbmax >= 4 ? 4
                           : left >= 2               ? 2
                                                     : 1;
            switch (c->bits * 1000 + c->sch * 100 + mb) { /* the shape (QL_INT_SHAPES) */
                QL_INT_SHAPES(QI_SHAPE)
                default: break;
            }
            v0 += mb;
        }
        for (int64_t m = 0; m < M; ++m) {
            float o[16];
            for (int j = 0; j < 16; ++j)
                o[j] = c->passes == 2 ? acc[m * 16 + j] + acc[(M + m) * 16 + j] : acc[m * 16 + j];
            ql_store(c, m, n0, o, cnt);
        }
    }
    free(tp);
    free(acc);
}
#undef QI_CASE
#undef QI_CASES_OFF
#undef QI_CASES_PN
#undef QI_CASES_QI_OFF
#undef QI_CASES_QI_LOFF
#undef QI_CASES_QI_PN
#undef QI_SHAPE
#undef QI_CODES
