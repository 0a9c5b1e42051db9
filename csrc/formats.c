/* csrc/formats.c: the format table (one row per weight format of FORMATS.md 1, declared and
 * documented in csrc/formats.h, with how to add a row), the kind table, their level tables, and
 * the resolution of one (format, bits, symmetric) into the by-value lb_fmt every kernel takes.
 * Plain C with no torch or Python: the glue, the CPU kernels' tests and the CUDA launchers' hosts
 * all read the same rows. */
#include "formats.h"

/* Normalised level tables (sorted ascending, endpoints -1 and 1), FORMATS.md 1.3. */
static const float lb_nf3[] = {-1.0f, -0.5350227355957031f, -0.2469314038753510f, 0.0f,
                               0.1833375245332718f, 0.3819939494132996f, 0.6229856610298157f,
                               1.0f};
static const float lb_nf4[] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
/* FP4 E2M1 {0, +-0.5, +-1, +-1.5, +-2, +-3, +-4, +-6} / 6: 15 distinct values (+0 and -0 share). */
static const float lb_fp4[] = {-1.0f, -4.0f / 6.0f, -3.0f / 6.0f, -2.0f / 6.0f, -1.5f / 6.0f,
                               -1.0f / 6.0f, -0.5f / 6.0f, 0.0f, 0.5f / 6.0f, 1.0f / 6.0f,
                               1.5f / 6.0f, 2.0f / 6.0f, 3.0f / 6.0f, 4.0f / 6.0f, 1.0f};
/* FP3 E2M0 {0, +-1, +-2, +-4} / 4: 7 distinct values. */
static const float lb_fp3[] = {-1.0f, -0.5f, -0.25f, 0.0f, 0.25f, 0.5f, 1.0f};

#define LB_NLEV(t) ((int)(sizeof(t) / sizeof((t)[0])))
#define LB_BITS1(b) (1u << (b))
LB_STATIC_ASSERT(LB_NLEV(lb_nf3) == 8 && LB_NLEV(lb_nf4) == 16, "NF3 has 8 levels, NF4 16");
LB_STATIC_ASSERT(LB_NLEV(lb_fp3) == 7 && LB_NLEV(lb_fp4) == 15, "FP3 has 7 levels, FP4 15");
LB_STATIC_ASSERT(LB_NLEV(lb_nf4) <= LB_MAX_LEVELS && LB_NLEV(lb_fp4) <= (1 << 4) &&
                     LB_NLEV(lb_nf3) <= (1 << 3) && LB_NLEV(lb_fp3) <= (1 << 3),
                 "a b-bit code indexes its level table");

const lb_kind lb_kinds[LB_KIND_COUNT] = {
    /*                   name        scales zeros levels */
    [LB_KIND_INT_ASYM] = {"int_asym", 1,    1,    0}, /* FORMATS.md 1.1: s, z */
    [LB_KIND_INT_SYM] = {"int_sym",   1,    0,    0}, /* 1.2: s */
    [LB_KIND_LVL2] = {"levels_two",   2,    0,    1}, /* 1.3: [s+, s-] */
    [LB_KIND_LVL1] = {"levels_one",   1,    0,    1}, /* 1.4: s */
    /* FORMATS.md 1.8: every parameter lives inside the GGUF block (formats_ggml.h) */
    [LB_KIND_G_Q8] = {"ggml_q8",      0,    0,    0}, /* d from max|x| */
    [LB_KIND_G_SYM] = {"ggml_sym",    0,    0,    0}, /* d from amax-signed, offset codes */
    [LB_KIND_G_ASYM] = {"ggml_asym",  0,    0,    0}, /* d, m */
    [LB_KIND_G_ASYMK] = {"ggml_asym_k", 0,  0,    0}, /* d, dmin, sub-block scale/min codes */
    [LB_KIND_G_SYMK] = {"ggml_sym_k", 0,    0,    0}, /* d, signed sub-block scale codes */
};

/* llama.cpp's block types (FORMATS.md 1.8): bits of the codes, block and sub-block sizes,
 * ggml-common.h's block bytes (type_size), the fixed `symmetric` and the kind, the bits of the
 * sub-block scale codes (k types) and the byte layout. symmetric says whether the type has a
 * zero offset / min (0) or not (1). */
#define LB_GGML_ROW(nm, b, blk, sub, ts, sym, knd, sbits, lay, h0, h1)                          \
    {.name = nm, .bits = LB_BITS1(b), .storage = LB_STORE_BLOCKS, .block = blk,                \
     .sub_block = sub, .type_size = ts, .scale_bits = sbits, .layout = lay,                    \
     .half_at = {h0, h1}, .symmetric = sym, .kind = {(sym) ? -1 : (knd), (sym) ? (knd) : -1}}

const lb_format lb_formats[LB_FMT_COUNT] = {
    [LB_FMT_INT] = {.name = "int",
                    .bits = LB_BITS1(2) | LB_BITS1(3) | LB_BITS1(4) | LB_BITS1(8),
                    .storage = LB_STORE_CODES,
                    .symmetric = -1,
                    .kind = {LB_KIND_INT_ASYM, LB_KIND_INT_SYM}},
    [LB_FMT_NF] = {.name = "nf",
                   .bits = LB_BITS1(3) | LB_BITS1(4),
                   .storage = LB_STORE_CODES,
                   .symmetric = -1,
                   .kind = {LB_KIND_LVL2, LB_KIND_LVL1},
                   .levels = {[3] = lb_nf3, [4] = lb_nf4},
                   .nlev = {[3] = LB_NLEV(lb_nf3), [4] = LB_NLEV(lb_nf4)}},
    [LB_FMT_FP] = {.name = "fp",
                   .bits = LB_BITS1(3) | LB_BITS1(4),
                   .storage = LB_STORE_CODES,
                   .symmetric = -1,
                   .kind = {LB_KIND_LVL2, LB_KIND_LVL1},
                   .levels = {[3] = lb_fp3, [4] = lb_fp4},
                   .nlev = {[3] = LB_NLEV(lb_fp3), [4] = LB_NLEV(lb_fp4)}},
    /* name, bits, block, sub-block, bytes, symmetric, kind, scale-code bits, layout, and the
     * byte offsets of the block's fp16 scales (d; dmin or m; -1: none) */
    [LB_FMT_Q8_0] = LB_GGML_ROW("q8_0", 8, 32,  32, 34,  1, LB_KIND_G_Q8,    0, LB_BLK_Q8_0, 0, -1),
    [LB_FMT_Q4_0] = LB_GGML_ROW("q4_0", 4, 32,  32, 18,  1, LB_KIND_G_SYM,   0, LB_BLK_Q4_0, 0, -1),
    [LB_FMT_Q5_0] = LB_GGML_ROW("q5_0", 5, 32,  32, 22,  1, LB_KIND_G_SYM,   0, LB_BLK_Q5_0, 0, -1),
    [LB_FMT_Q4_1] = LB_GGML_ROW("q4_1", 4, 32,  32, 20,  0, LB_KIND_G_ASYM,  0, LB_BLK_Q4_1, 0, 2),
    [LB_FMT_Q5_1] = LB_GGML_ROW("q5_1", 5, 32,  32, 24,  0, LB_KIND_G_ASYM,  0, LB_BLK_Q5_1, 0, 2),
    [LB_FMT_Q2_K] = LB_GGML_ROW("q2_k", 2, 256, 16, 84,  0, LB_KIND_G_ASYMK, 4, LB_BLK_Q2_K, 80, 82),
    [LB_FMT_Q3_K] = LB_GGML_ROW("q3_k", 3, 256, 16, 110, 1, LB_KIND_G_SYMK,  6, LB_BLK_Q3_K, 108, -1),
    [LB_FMT_Q4_K] = LB_GGML_ROW("q4_k", 4, 256, 32, 144, 0, LB_KIND_G_ASYMK, 6, LB_BLK_Q4_K, 0, 2),
    [LB_FMT_Q5_K] = LB_GGML_ROW("q5_k", 5, 256, 32, 176, 0, LB_KIND_G_ASYMK, 6, LB_BLK_Q5_K, 0, 2),
    [LB_FMT_Q6_K] = LB_GGML_ROW("q6_k", 6, 256, 16, 210, 1, LB_KIND_G_SYMK,  8, LB_BLK_Q6_K, 208, -1),
};
/* ggml-common.h's static asserts, restated: the block bytes of each type. */
LB_STATIC_ASSERT(34 == 2 + 32 && 18 == 2 + 16 && 22 == 2 + 4 + 16 && 20 == 2 + 2 + 16 &&
                     24 == 2 + 2 + 4 + 16, "block_q8_0 .. block_q5_1");
LB_STATIC_ASSERT(84 == 16 + 64 + 2 + 2 && 110 == 32 + 64 + 12 + 2 && 144 == 2 + 2 + 12 + 128 &&
                     176 == 2 + 2 + 12 + 32 + 128 && 210 == 128 + 64 + 16 + 2,
                 "block_q2_K .. block_q6_K");
LB_STATIC_ASSERT(LB_QK_MAX == 256 && LB_NSUB_MAX == 16, "the largest block and sub-block count");

int lb_fmt_init(lb_fmt* f, int64_t fmt, int64_t bits, int symmetric) {
    const lb_format* r;
    const lb_kind* k;
    int kind, i;
    memset(f, 0, sizeof *f);
    f->scale_dt = LB_DT_F32; /* the ops that compute scales set theirs (scale_dtype) */
    if (fmt < 0 || fmt >= LB_FMT_COUNT) return LB_FMT_BAD_FORMAT;
    r = &lb_formats[fmt];
    /* range first: the narrowing to int below must not turn 2**32 + 4 into 4 */
    if (bits < 1 || bits > LB_MAX_BITS || !((r->bits >> bits) & 1u)) return LB_FMT_BAD_BITS;
    symmetric = symmetric ? 1 : 0;
    if ((r->symmetric >= 0 && symmetric != r->symmetric) || r->kind[symmetric] < 0)
        return LB_FMT_BAD_SYMMETRIC;
    kind = r->kind[symmetric];
    k = &lb_kinds[kind];
    f->fmt = (int)fmt;
    f->kind = kind;
    f->bits = (int)bits;
    f->storage = r->storage;
    f->block = r->block;
    f->sub_block = r->sub_block;
    f->type_size = r->type_size;
    f->nscales = k->scales;
    f->zeros = k->zeros;
    if (k->levels) {
        f->nlev = r->nlev[bits];
        for (i = 0; i < f->nlev; ++i) f->lev[i] = r->levels[bits][i];
        /* Decision thresholds. (a+b)*0.5 is exact in float32 for these tables; a value exactly on
         * a threshold goes to the lower level (FORMATS.md allows either). Unused slots stay above
         * 1, the largest u lb_nearest_index lets through, so they never count. */
        for (i = 0; i + 1 < f->nlev; ++i) f->mid[i] = (f->lev[i] + f->lev[i + 1]) * 0.5f;
        for (; i < LB_MAX_LEVELS; ++i) f->mid[i] = 2.0f;
    } else if (kind == LB_KIND_INT_SYM) {
        f->qmax = (float)((1 << (bits - 1)) - 1);
        f->qmin = -(float)(1 << (bits - 1));
    } else {
        f->qmax = (float)((1 << bits) - 1);
    }
    if (r->storage == LB_STORE_BLOCKS) {
        /* the code ranges of FORMATS.md 1.8 from the kind, the width and the scale-code bits */
        f->layout = r->layout;
        f->nsub = r->block / r->sub_block;
        switch (kind) {
        case LB_KIND_G_Q8:  /* q in [-127, 127] */
            f->qmin = -(float)((1 << (bits - 1)) - 1);
            f->qmax = (float)((1 << (bits - 1)) - 1);
            break;
        case LB_KIND_G_SYM: /* stored q in [0, 2^b - 1], value q - 2^(b-1) */
            f->zero = 1 << (bits - 1);
            break;
        case LB_KIND_G_ASYMK: /* q in [0, 2^b - 1]; codes in [0, 2^sb - 1] */
            f->cmax = (1 << r->scale_bits) - 1;
            break;
        case LB_KIND_G_SYMK: /* q in [-2^(b-1), 2^(b-1) - 1]; codes in [-2^(sb-1), 2^(sb-1) - 1] */
            f->qmin = -(float)(1 << (bits - 1));
            f->qmax = (float)((1 << (bits - 1)) - 1);
            f->cmax = 1 << (r->scale_bits - 1);
            break;
        default: /* G_ASYM: q in [0, 2^b - 1] */
            break;
        }
    }
    return 0;
}

int64_t lb_fmt_row_bytes(const lb_fmt* f, int64_t K) {
    int64_t rb;
    if (f->storage == LB_STORE_BLOCKS) {
        if (K < 0 || f->block <= 0 || K % f->block != 0 ||
            lb_mul64(K / f->block, f->type_size, &rb))
            return -1;
        return rb;
    }
    return lb_row_bytes_checked(K, f->bits, &rb) ? -1 : rb;
}
