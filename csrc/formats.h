/* csrc/formats.h: the numerical contract of FORMATS.md as C: every format code and enum the ops
 * take (weight formats, kinds, dtypes, STE modes, distillation-loss kinds), the level tables,
 * per-group scales, the per-element encode / decode / fake-quant / gradient helpers, the group
 * parameters as quantize stores them, and bit packing; layout sizes come from csrc/layouts.h.
 * Shared by the C kernels (csrc/cpu), the CUDA kernels (cuda/) and the op glue. Everything here
 * is float32 math written so that C, SIMD-vectorised C and CUDA produce bit-identical results:
 * no FMA contraction (the build passes -ffp-contract=off / --fmad=false), IEEE division,
 * explicit rounding. Python reads these numbers from the module (csrc/module.c), never copies. */
#ifndef LOWBIT_FORMATS_H
#define LOWBIT_FORMATS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "layouts.h"

/* ---- the format table ----
 * Every weight format of FORMATS.md 1 is one row of lb_formats (csrc/formats.c); the `fmt` int of
 * the ops is the row's index. A row holds the format's whole definition: its name (QuantSpec.format),
 * the code widths it takes, how it is stored, its block structure, whether `symmetric` is free or
 * fixed, the kind (below) each value of `symmetric` resolves to, and its level tables. A kind is
 * the math of a group: how its parameters are computed and stored (lb_kinds: scales per group, zero
 * points, level table or integer codes) and the per-kind helpers of this header that compute group
 * parameters, encode, decode, fake-quantize and give the gradient (lb_group_params, lb_encode_k,
 * lb_decode_k, lb_quant_value_k, lb_grad_elem_k, lb_load_gparams / lb_store_gparams). Kernels
 * (CPU and CUDA) take the row resolved for one (format, bits, symmetric) by value (lb_fmt, built
 * by lb_fmt_init) and dispatch on its kind; nothing outside the rows and the kind helpers branches
 * on a format or a bit width. Python reads the rows through lowbit._C.formats() / kinds().
 *
 * Storage (lb_format.storage):
 *   LB_STORE_CODES   the codes as the per-row bitstream of lb_put_code (ceil(K*bits/8) bytes per
 *                    row) plus the kind's float32 scales (rows, G[, 2]) and uint8 zero points
 *                    (rows, G); the group length is the spec's group_size (any divisor of K).
 *   LB_STORE_BLOCKS  the row as K/block blocks of type_size bytes each, holding their own scales
 *                    (the GGUF block bytes of FORMATS.md 1.8: fp16 d/dmin, packed sub-block scale
 *                    codes and the packed quants); group_size is the block, fixed by the format;
 *                    the kind stores no scales or zero points outside the blocks (lb_kinds
 *                    scales = 0, zeros = 0). The rows of llama.cpp's block types (FORMATS.md
 *                    1.8, q8_0 .. q6_k) have this storage; their byte layout is the row's
 *                    `layout` and their block math the kind's (csrc/formats_ggml.h).
 *
 * Adding a format (the ten llama.cpp block types of FORMATS.md 1.8 are rows of this table):
 *   1. formats.h: its code LB_FMT_<NAME> before LB_FMT_COUNT; if its group math is none of the
 *      existing kinds, a LB_KIND_<NAME> before LB_KIND_COUNT and the case of each per-kind helper
 *      of this header (for a block kind: its per-block parameters, encode to / decode from the
 *      type_size bytes of one block, fake-quant value and gradient, FORMATS.md 1.8);
 *   2. csrc/formats.c: its row in lb_formats (name, bits, storage, block / sub_block / type_size,
 *      symmetric, kinds, level tables) and, for a new kind, its row in lb_kinds;
 *   3. tests/reference.py: its reference from FORMATS.md; tests/test_format_table.py then runs it
 *      through every op. The glue's checks (csrc/ops/lb_check.c), the shapes of quantize's
 *      outputs, lowbit._constants.FORMATS, QuantSpec and the fakes follow from the row.
 *   The qlinear CPU kernels run any row whose codes the packed layout holds (csrc/layouts.h:
 *   widths LB_QL_WIDTHS, level tables of at most 16 entries) on their instantiations per code
 *   width and decode kind (csrc/cpu/qlinear_impl.h); other rows take their canonical-code path. */
enum {
    LB_FMT_INT = 0, LB_FMT_NF = 1, LB_FMT_FP = 2,
    /* llama.cpp's block types (FORMATS.md 1.8), storage LB_STORE_BLOCKS */
    LB_FMT_Q8_0 = 3, LB_FMT_Q4_0 = 4, LB_FMT_Q5_0 = 5, LB_FMT_Q4_1 = 6, LB_FMT_Q5_1 = 7,
    LB_FMT_Q2_K = 8, LB_FMT_Q3_K = 9, LB_FMT_Q4_K = 10, LB_FMT_Q5_K = 11, LB_FMT_Q6_K = 12,
    LB_FMT_COUNT = 13
};
#define LB_MAX_BITS 8
/* Format kinds: the group math (format, symmetric) resolves to; every kernel dispatches on these.
 * The LB_KIND_G_* kinds are the block math of FORMATS.md 1.8 (csrc/formats_ggml.h):
 *   G_Q8    q8_0:        d = fp16(max|x| / qmax), q in [-qmax, qmax]
 *   G_SYM   q4_0, q5_0:  d = fp16(amax-signed(x) / -zero), q - zero in [-zero, zero - 1]
 *   G_ASYM  q4_1, q5_1:  d = fp16((max - min) / qmax), m = fp16(min), q in [0, qmax]
 *   G_ASYMK q2_k, q4_k, q5_k: super-block d, dmin; sub-block scale and min codes
 *   G_SYMK  q3_k, q6_k:  super-block d; signed sub-block scale codes */
enum {
    LB_KIND_INT_ASYM = 0, LB_KIND_INT_SYM = 1, LB_KIND_LVL2 = 2, LB_KIND_LVL1 = 3,
    LB_KIND_G_Q8 = 4, LB_KIND_G_SYM = 5, LB_KIND_G_ASYM = 6, LB_KIND_G_ASYMK = 7,
    LB_KIND_G_SYMK = 8, LB_KIND_COUNT = 9
};
/* Byte layouts of one block (lb_format.layout, LB_STORE_BLOCKS rows): ggml-common.h's
 * block_<type> of each type, packed / read by lb_blk_pack / lb_blk_unpack (formats_ggml.h). */
enum {
    LB_BLK_NONE = 0, LB_BLK_Q8_0, LB_BLK_Q4_0, LB_BLK_Q5_0, LB_BLK_Q4_1, LB_BLK_Q5_1,
    LB_BLK_Q2_K, LB_BLK_Q3_K, LB_BLK_Q4_K, LB_BLK_Q5_K, LB_BLK_Q6_K
};
/* Storage kinds (lb_format.storage, see above). */
enum { LB_STORE_CODES = 0, LB_STORE_BLOCKS = 1 };
/* Float dtypes as lowbit numbers them at the op boundary (the `dtype` int of dequantize). */
enum { LB_DT_F32 = 0, LB_DT_BF16 = 1, LB_DT_F16 = 2, LB_DT_COUNT = 3 };
/* Straight-through estimators of fake_quant (the `ste` int, FORMATS.md 1.5). */
enum { LB_STE_BITDISTILLER = 0, LB_STE_IDENTITY = 1 };
/* Distillation losses (the `kind` int of kl_loss, FORMATS.md 2). */
enum { LB_KL_FORWARD = 0, LB_KL_REVERSE = 1, LB_KL_CAKLD = 2, LB_KL_JSD = 3 };

/* Scale floors of FORMATS.md 1.1-1.4. */
#define LB_INT_EPS 1e-5f
#define LB_LVL_EPS 1e-8f
#define LB_MAX_LEVELS 16
/* Block rows: the largest block (ggml's QK_K) and the most sub-blocks in one block. */
#define LB_QK_MAX 256
#define LB_NSUB_MAX 16

/* One row of the format table. */
typedef struct {
    const char* name;    /* QuantSpec.format */
    uint32_t bits;       /* the code widths it takes: bit b set for b bits */
    int storage;         /* LB_STORE_* */
    int block;           /* LB_STORE_BLOCKS: elements per block (the fixed group); 0: any group */
    int sub_block;       /* elements per sub-block inside a block (0: none) */
    int type_size;       /* LB_STORE_BLOCKS: bytes per block */
    int scale_bits;      /* LB_STORE_BLOCKS with sub-blocks: bits of a sub-block scale code */
    int layout;          /* LB_STORE_BLOCKS: the block's byte layout (LB_BLK_*) */
    int half_at[2];      /* LB_STORE_BLOCKS: byte offsets of the block's fp16 d and dmin / m
                          * (-1: none), for checks of stored blocks */
    int symmetric;       /* -1: either value; 0 or 1: only that one */
    int kind[2];         /* the LB_KIND_* of symmetric = 0 / 1 (-1: not offered) */
    const float* levels[LB_MAX_BITS + 1]; /* level table per width (NULL: integer codes) */
    int nlev[LB_MAX_BITS + 1];            /* its size */
} lb_format;

/* One row of the kind table: what a group of that kind stores beside its codes. */
typedef struct {
    const char* name;
    int scales;  /* float32 scales per group: 1, 2 ([s+, s-]), or 0 (inside the blocks) */
    int zeros;   /* a uint8 zero point per group */
    int levels;  /* codes index the row's level table (else they are integers) */
} lb_kind;

#ifdef __cplusplus
extern "C" {
#endif
extern const lb_format lb_formats[LB_FMT_COUNT];
extern const lb_kind lb_kinds[LB_KIND_COUNT];
#ifdef __cplusplus
}
#endif

/* A resolved format: what every kernel needs to know about (format, bits, symmetric), by value
 * (CUDA kernels take it as a kernel argument). */
typedef struct {
    int fmt;         /* LB_FMT_*: its row */
    int kind;        /* LB_KIND_* */
    int bits;        /* bits per code */
    int storage, block, sub_block, type_size; /* the row's storage */
    int layout;      /* LB_BLK_* (block rows) */
    int nsub;        /* block rows: sub-blocks per block (block / sub_block) */
    int zero;        /* G_SYM: the code of value 0 (2^(b-1)); q - zero is the value */
    int cmax;        /* k kinds: G_ASYMK scale/min codes in [0, cmax], G_SYMK in [-cmax, cmax-1] */
    int nscales;     /* the kind's float32 scales per group (0, 1 or 2) */
    int zeros;       /* the kind stores uint8 zero points */
    int nlev;        /* level-table size (level kinds) */
    float qmax;      /* int asym: 2^b-1; int sym: 2^(b-1)-1; block kinds: the largest code q */
    float qmin;      /* int sym: -2^(b-1); block kinds: the smallest code q (FORMATS.md 1.8) */
    int scale_dt;    /* LB_DT_*: the dtype every scale is rounded to (FORMATS.md 1.6) */
    float lev[LB_MAX_LEVELS];      /* level table (level kinds) */
    float mid[LB_MAX_LEVELS];      /* decision thresholds, see lb_fmt_init */
} lb_fmt;

/* lb_fmt_init's failures, in the order lb_check_spec reports them. */
enum { LB_FMT_BAD_FORMAT = -1, LB_FMT_BAD_BITS = -2, LB_FMT_BAD_SYMMETRIC = -3 };
#ifdef __cplusplus
extern "C" {
#endif
/* Fill *f from row fmt for (bits, symmetric); 0, or one of LB_FMT_BAD_* (csrc/formats.c). */
int lb_fmt_init(lb_fmt* f, int64_t fmt, int64_t bits, int symmetric);
/* Bytes of one row of K elements in f's stored form (codes bitstream or blocks), -1 when it
 * overflows int64 or K is not a whole number of blocks. */
int64_t lb_fmt_row_bytes(const lb_fmt* f, int64_t K);
#ifdef __cplusplus
}
#endif

/* R(t) = sign(t) * floor(|t| + 0.5), round half away from zero, evaluated exactly as the
 * float32 expression of FORMATS.md (|t| + 0.5 is itself rounded to float32). */
LB_HD float lb_round_away(float t) { return copysignf(floorf(fabsf(t) + 0.5f), t); }
LB_HD float lb_clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Index of the nearest level to u: the number of thresholds strictly below u, with u clamped to
 * [-1, 1] first (the range of the tables, FORMATS.md 1.3). u leaves that range when a scale was
 * rounded below the group's extreme or clamped to its dtype's largest value (FORMATS.md 1.6: a
 * float16 s+ of 65504 for a group max of 3e5 gives u = 4.6); clamped, no u reaches the unused
 * slots (thresholds 2.0), so the index stays inside the table for every u. Branch-free so the
 * element loops vectorise; NaN gives 0. */
LB_HD int lb_nearest_index(const lb_fmt* f, float u) {
    int idx = 0, k;
    u = lb_clampf(u, -1.0f, 1.0f);
    for (k = 0; k < LB_MAX_LEVELS - 1; ++k) idx += (u > f->mid[k]) ? 1 : 0;
    return idx;
}

/* Per-group parameters. For INT asym: s, z. INT sym: s. LVL2: sp (s+), sn (s-). LVL1: s. */
typedef struct {
    float s, z, sp, sn;
} lb_gparams;

/* Statistics of one group that both directions need. */
typedef struct {
    float mx, mn, amax;  /* max, min, max |x| */
    int bad;             /* NaN or Inf present */
} lb_gstats;

/* The bits of a float32 and back (device intrinsics under CUDA; memcpy, which compiles to a
 * register move, elsewhere). */
LB_HD uint32_t lb_float_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}
LB_HD float lb_bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* A scale rounded to the scale dtype dt (FORMATS.md 1.6): to nearest even in dt, back to
 * float32. A nonzero scale that rounds to 0 becomes dt's smallest positive subnormal; a finite
 * scale that rounds past dt's largest finite value becomes that value (FORMATS.md 1.6 leaves
 * overflow open; lowbit saturates so that the grid stays finite and storable in dt). NaN and
 * inf pass through (their groups are NaN/Inf groups, handled before any scale is used). Done on
 * the bits, so C, every SIMD variant and CUDA round identically without half-float support. */
LB_HD float lb_round_scale(float s, int dt) {
    uint32_t u, a, sign;
    if (dt != LB_DT_BF16 && dt != LB_DT_F16) return s;
    u = lb_float_bits(s);
    sign = u & 0x80000000u;
    a = u ^ sign;
    if (a >= 0x7f800000u) return s;
    if (dt == LB_DT_BF16) {
        /* bfloat16 is the top half of float32: round away the low 16 bits, subnormals too */
        a = (a + 0x7fffu + ((a >> 16) & 1u)) & 0xffff0000u;
        if (a == 0x7f800000u) a = 0x7f7f0000u;      /* past 3.3895e38: the largest finite */
        else if (a == 0u) a = 0x00010000u;          /* 2^-133 */
    } else if (a >= 0x38800000u) {
        /* float16 normals (>= 2^-14): round away the low 13 of float32's 23 mantissa bits */
        a = (a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u;
        if (a > 0x477fe000u) a = 0x477fe000u;       /* past 65504: 65504 */
    } else {
        /* float16 subnormals: multiples of 2^-24. s * 2^24 is exact, rintf rounds to nearest
         * even, and the product back is exact (an integer <= 1024 times a power of two). */
        a = lb_float_bits(rintf(lb_bits_float(a) * 16777216.0f) * 5.9604644775390625e-08f);
        if (a == 0u) a = 0x33800000u;               /* 2^-24 */
    }
    return lb_bits_float(a | sign);
}

/* Scales of a group from its statistics (FORMATS.md 1.1-1.4), each computed in float32 with its
 * floor and then rounded to f->scale_dt (1.6) before anything uses it: z, codes and Q(x) all
 * see the rounded scale. */
LB_HD lb_gparams lb_group_params(const lb_fmt* f, lb_gstats st) {
    lb_gparams p;
    const int dt = f->scale_dt;
    p.s = 0.0f; p.z = 0.0f; p.sp = 0.0f; p.sn = 0.0f;
    switch (f->kind) {
    case LB_KIND_INT_ASYM: {
        float r = st.mx - st.mn;
        p.s = lb_round_scale((r >= LB_INT_EPS ? r : LB_INT_EPS) / f->qmax, dt);
        p.z = lb_clampf(rintf(-st.mn / p.s), 0.0f, f->qmax);
        break;
    }
    case LB_KIND_INT_SYM:
        p.s = lb_round_scale((st.amax >= LB_INT_EPS ? st.amax : LB_INT_EPS) / f->qmax, dt);
        break;
    case LB_KIND_LVL2:
        p.sp = lb_round_scale(st.mx >= LB_LVL_EPS ? st.mx : LB_LVL_EPS, dt);
        p.sn = lb_round_scale(-st.mn >= LB_LVL_EPS ? -st.mn : LB_LVL_EPS, dt);
        break;
    default:
        p.s = lb_round_scale(st.amax >= LB_LVL_EPS ? st.amax : LB_LVL_EPS, dt);
        break;
    }
    return p;
}

/* ---- per-element helpers. Each takes the kind as an argument: called with a constant (a
 * `case` of LB_FOR_KIND, a CUDA template parameter) the switch folds away and the element loop
 * vectorises; lb_encode / lb_decode / lb_grad_elem are the same with f->kind. ---- */

/* Runs STMT with the int constant NAME = f->kind, one case per kind. */
#define LB_FOR_KIND(kind, NAME, STMT)                                    \
    switch (kind) {                                                      \
    case LB_KIND_INT_ASYM: { const int NAME = LB_KIND_INT_ASYM; STMT; } break; \
    case LB_KIND_INT_SYM: { const int NAME = LB_KIND_INT_SYM; STMT; } break;   \
    case LB_KIND_LVL2: { const int NAME = LB_KIND_LVL2; STMT; } break;         \
    default: { const int NAME = LB_KIND_LVL1; STMT; } break;                   \
    }

/* The stored code of one value (FORMATS.md 1.7): INT asym q; INT sym q + 2^(b-1); levels: index. */
LB_HD int lb_encode_k(const lb_fmt* f, lb_gparams p, float x, const int kind) {
    switch (kind) {
    case LB_KIND_INT_ASYM:
        return (int)lb_clampf(lb_round_away(x / p.s) + p.z, 0.0f, f->qmax);
    case LB_KIND_INT_SYM:
        return (int)lb_clampf(lb_round_away(x / p.s), f->qmin, f->qmax) - (int)f->qmin;
    case LB_KIND_LVL2:
        return lb_nearest_index(f, x >= 0.0f ? x / p.sp : x / p.sn);
    default:
        return lb_nearest_index(f, x / p.s);
    }
}

/* The value a code stands for. For the two-scale kinds the sign of the level picks the scale (a
 * negative x whose level is 0 decodes to +0 either way). */
LB_HD float lb_decode_k(const lb_fmt* f, lb_gparams p, int code, const int kind) {
    switch (kind) {
    case LB_KIND_INT_ASYM:
        return ((float)code - p.z) * p.s;
    case LB_KIND_INT_SYM:
        return ((float)code + f->qmin) * p.s;
    case LB_KIND_LVL2: {
        float c = f->lev[code];
        return c >= 0.0f ? c * p.sp : c * p.sn;
    }
    default:
        return f->lev[code] * p.s;
    }
}

/* Q(x) of one value without the int round trip (what fake_quant computes), equal bit for bit to
 * lb_decode_k(lb_encode_k(x)) for every finite x -- which is what makes dequantize(quantize(W))
 * equal fake_quantize(W). The round trip turns a rounded -0 into code 0 and so +0; the float
 * form gets the same +0 from (c - z) (c == z gives +0 under round-to-nearest) and, for INT sym,
 * from the + 0.0f, where a plain c * s would keep the -0 of a small negative x. */
LB_HD float lb_quant_value_k(const lb_fmt* f, lb_gparams p, float x, const int kind) {
    switch (kind) {
    case LB_KIND_INT_ASYM: {
        float c = lb_clampf(lb_round_away(x / p.s) + p.z, 0.0f, f->qmax);
        return (c - p.z) * p.s;
    }
    case LB_KIND_INT_SYM:
        return (lb_clampf(lb_round_away(x / p.s), f->qmin, f->qmax) + 0.0f) * p.s;
    case LB_KIND_LVL2: {
        float c = f->lev[lb_nearest_index(f, x >= 0.0f ? x / p.sp : x / p.sn)];
        return c * (c >= 0.0f ? p.sp : p.sn);
    }
    default:
        return f->lev[lb_nearest_index(f, x / p.s)] * p.s;
    }
}

/* Gradient pieces of one element for ste="bitdistiller" (FORMATS.md 1.5), given upstream g:
 *   *gx    receives the direct dQ/dx * g (the clamp mask for INT, 1 for the level kinds);
 *   returns the element's contribution to dL/d(scale) of the scale it used; for LVL2,
 *   *to_neg says whether that was s- (x < 0, or NaN) rather than s+.
 * INT:    dL/ds += g * ((q - z) - m * x / s)          (z has zero gradient: rne)
 * levels: dL/ds += g * (c - u)                        (identity STE through the snap)
 * s is the rounded scale of p; the rounding has identity gradient (FORMATS.md 1.6), so these
 * sums are also the gradient of the float32 scale before rounding. */
LB_HD float lb_grad_elem_k(const lb_fmt* f, lb_gparams p, float x, float g, float* gx,
                           int* to_neg, const int kind) {
    *to_neg = 0;
    switch (kind) {
    case LB_KIND_INT_ASYM: {
        float t = x / p.s;
        float v = lb_round_away(t) + p.z;
        int m = (v >= 0.0f) && (v <= f->qmax);
        float q = lb_clampf(v, 0.0f, f->qmax);
        *gx = m ? g : 0.0f;
        return g * ((q - p.z) - (m ? t : 0.0f));
    }
    case LB_KIND_INT_SYM: {
        float t = x / p.s;
        float v = lb_round_away(t);
        int m = (v >= f->qmin) && (v <= f->qmax);
        float q = lb_clampf(v, f->qmin, f->qmax);
        *gx = m ? g : 0.0f;
        return g * (q - (m ? t : 0.0f));
    }
    case LB_KIND_LVL2: {
        int neg = !(x >= 0.0f);
        float u = neg ? x / p.sn : x / p.sp;
        float c = f->lev[lb_nearest_index(f, u)];
        *gx = g;
        *to_neg = neg;
        return g * (c - u);
    }
    default: {
        float u = x / p.s;
        float c = f->lev[lb_nearest_index(f, u)];
        *gx = g;
        return g * (c - u);
    }
    }
}

/* Whether a kind's scales are functions of the group's max and min (1: INT asym, two-scale levels)
 * or of its max |x| (0). */
LB_HD int lb_kind_two_sided(const int kind) {
    return kind == LB_KIND_INT_ASYM || kind == LB_KIND_LVL2;
}

/* The scale gradients of a group back to the elements that set the scales (FORMATS.md 1.5), from
 * the sums of lb_grad_elem_k's returns: s1 over the elements of the (only, or s+) scale, s2 over
 * those of s- (LVL2). *hi is what the group max (two-sided kinds) or the max |x| elements (times
 * sign(x)) receive in total, *lo what the group min receives; each is split evenly among its
 * ties (amax / amin). A scale at its floor has zero gradient. */
LB_HD void lb_scale_grad_k(const lb_fmt* f, lb_gstats st, float s1, float s2, float* hi,
                           float* lo, const int kind) {
    *lo = 0.0f;
    switch (kind) {
    case LB_KIND_INT_ASYM:
        *hi = st.mx - st.mn >= LB_INT_EPS ? s1 / f->qmax : 0.0f;
        *lo = -*hi;
        break;
    case LB_KIND_INT_SYM:
        *hi = st.amax >= LB_INT_EPS ? s1 / f->qmax : 0.0f;
        break;
    case LB_KIND_LVL2:
        *hi = st.mx >= LB_LVL_EPS ? s1 : 0.0f;
        *lo = -(-st.mn >= LB_LVL_EPS ? s2 : 0.0f);
        break;
    default:
        *hi = st.amax >= LB_LVL_EPS ? s1 : 0.0f;
        break;
    }
}

LB_HD int lb_encode(const lb_fmt* f, lb_gparams p, float x) { return lb_encode_k(f, p, x, f->kind); }
LB_HD float lb_decode(const lb_fmt* f, lb_gparams p, int code) {
    return lb_decode_k(f, p, code, f->kind);
}
/* Q(x) as decode(encode(x)) (the clipping search's candidate values). */
LB_HD float lb_fake_quant_value(const lb_fmt* f, lb_gparams p, float x) {
    return lb_decode(f, p, lb_encode(f, p, x));
}
LB_HD float lb_grad_elem(const lb_fmt* f, lb_gparams p, float x, float g, float* gx, int* to_neg) {
    return lb_grad_elem_k(f, p, x, g, gx, to_neg, f->kind);
}

/* ---- group parameters as quantize stores them (FORMATS.md 1.7): scales float32 (rows, G), or
 * (rows, G, 2) = [s+, s-] for LVL2; zeros uint8 (rows, G) for INT asym (NULL otherwise).
 * gidx = row * G + group. The float scales round-trip exactly (already rounded to the spec's
 * scale dtype, 1.6, so an exporter storing them in that dtype stores them exactly); z is an integer in [0, 255], so
 * (float)(uint8_t)z == z up to the sign of a zero, which no code or decoded value observes. ---- */
LB_HD lb_gparams lb_load_gparams(const lb_fmt* f, const float* scales, const uint8_t* zeros,
                                 int64_t gidx) {
    lb_gparams p;
    p.s = 0.0f; p.z = 0.0f; p.sp = 0.0f; p.sn = 0.0f;
    if (f->kind == LB_KIND_LVL2) {
        p.sp = scales[gidx * 2];
        p.sn = scales[gidx * 2 + 1];
    } else {
        p.s = scales[gidx];
        if (f->kind == LB_KIND_INT_ASYM && zeros) p.z = (float)zeros[gidx];
    }
    return p;
}
LB_HD void lb_store_gparams(const lb_fmt* f, lb_gparams p, float* scales, uint8_t* zeros,
                            int64_t gidx) {
    if (f->kind == LB_KIND_LVL2) {
        scales[gidx * 2] = p.sp;
        scales[gidx * 2 + 1] = p.sn;
    } else {
        scales[gidx] = p.s;
    }
    if (zeros) zeros[gidx] = (uint8_t)p.z;
}

/* ---- float <-> storage dtype (C side; CUDA uses its own intrinsics) ---- */
#ifndef __CUDACC__
LB_HD float lb_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Round to nearest even, NaN kept quiet: the same rounding torch uses for .to(bfloat16). */
LB_HD uint16_t lb_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
#endif

/* ---- bit packing (FORMATS.md 1.7) ----
 * Layout (lowbit's own): codes of one row form a little-endian bitstream; code j of the row
 * occupies bits [j*b, (j+1)*b) counting from bit 0 of byte 0; each row is padded to whole bytes
 * (lb_row_bytes). For b = 2, 4, 8 codes never straddle bytes; for b = 3 they may straddle two. */
LB_HD void lb_put_code(uint8_t* row, int64_t j, int bits, int code) {
    int64_t bit = j * bits;
    int64_t byte = bit >> 3;
    int sh = (int)(bit & 7);
    uint32_t v = (uint32_t)code << sh;
    row[byte] |= (uint8_t)(v & 0xffu);
    if (sh + bits > 8) row[byte + 1] |= (uint8_t)(v >> 8);
}
LB_HD int lb_get_code(const uint8_t* row, int64_t j, int bits) {
    int64_t bit = j * bits;
    int64_t byte = bit >> 3;
    int sh = (int)(bit & 7);
    uint32_t v = row[byte];
    if (sh + bits > 8) v |= (uint32_t)row[byte + 1] << 8;
    return (int)((v >> sh) & ((1u << bits) - 1u));
}

/* ---- the distillation losses (FORMATS.md 2): the argument block of one call, taken by the CPU
 * kernel (csrc/cpu/kl_loss.h) and the CUDA launcher (cuda/kl_loss.cuh) alike.
 * S (student) and T (teacher) are contiguous (rows, V) in dtypes dtS/dtT (LB_DT_*); labels
 * int64 (rows,) or NULL. Outputs:
 *   loss  float32 (rows,) or NULL: per-row loss (0 for masked rows; NaN for rows holding a NaN
 *         or +inf and for rows where the student or the teacher is -inf everywhere: no softmax)
 *   grad  (rows, V) in dtS or NULL: d loss_row / d S, times row_scale[r] if row_scale (float32
 *         (rows,)) is given, else times grad_scale. Zero for masked rows, NaN where the loss is
 *         NaN. ---- */
typedef struct {
    const void* S;
    const void* T;
    const int64_t* labels;
    const float* row_scale;
    float* loss;
    void* grad;
    int dtS, dtT;
    int64_t rows, V;
    int kind; /* LB_KL_* */
    float gamma, beta, inv_tau, grad_scale;
    int64_t ignore_index;
    /* NULL, or (temperature < 1) a counter of the rows where a finite logit divided by the
     * temperature exceeds LB_KL_SAFE in magnitude: those rows are skipped (loss and gradient 0)
     * and the glue raises. Below LB_KL_SAFE every loss term and log-ratio stays finite. */
    int32_t* overflow;
} lb_kl_args;
#define LB_KL_SAFE 2.1267647932558654e37f /* 2^124 */

/* ---- llama.cpp's block types (FORMATS.md 1.8): the LB_KIND_G_* block math and byte layouts ---- */
#include "formats_ggml.h"

#endif /* LOWBIT_FORMATS_H */
