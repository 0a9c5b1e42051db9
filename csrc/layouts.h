/* csrc/layouts.h: every storage-layout size of lowbit (packed code rows, the qlinear CPU kernel
 * layout, the 2:4 compressed layout) with its constants and static asserts, and the
 * overflow-checked arithmetic that computes those sizes from user integers. Included by
 * csrc/formats.h; shared by the C kernels, the CUDA kernels and the op glue (which exports the
 * constants to Python, see csrc/module.c). */
#ifndef LOWBIT_LAYOUTS_H
#define LOWBIT_LAYOUTS_H

#include <stdint.h>

#ifdef __CUDACC__
#define LB_HD static __host__ __device__ __forceinline__
#else
#define LB_HD static inline __attribute__((always_inline))
#endif

#ifdef __cplusplus
#define LB_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define LB_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* ---- checked int64 arithmetic: 0 on success, -1 when the exact result does not fit ---- */
LB_HD int lb_mul64(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out) ? -1 : 0; }
LB_HD int lb_add64(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out) ? -1 : 0; }
/* ceil(a / b) for a >= 0, b > 0, without the overflow of a + b - 1. */
LB_HD int64_t lb_cdiv64(int64_t a, int64_t b) { return a / b + (a % b != 0); }

/* ---- packed code rows (FORMATS.md 1.6): a row of K codes of b bits is ceil(K*b / 8) bytes ---- */
LB_HD int64_t lb_row_bytes(int64_t K, int bits) { return lb_cdiv64(K * bits, 8); }
LB_HD int lb_row_bytes_checked(int64_t K, int64_t bits, int64_t* out) {
    int64_t kb;
    if (K < 0 || bits < 0 || lb_mul64(K, bits, &kb)) return -1;
    *out = lb_cdiv64(kb, 8);
    return 0;
}

/* ---- the qlinear CPU kernel layout ("packed" + "params", built by lb_ql_pack_cpu) ----
 * The canonical per-row bitstream (codes/scales/zeros) stays the source of truth; the CPU
 * kernels read a regrouped copy in which one SIMD lane is one output row:
 *   rows are cut into tiles of LB_QL_TILE = 16 (NT = ceil(N/16) tiles, missing rows are code 0,
 *   scale 0); K is padded with code 0 to Kp = KB*32 (KB = ceil(K/LB_QL_KBLK));
 *   packed: int32 [NT][KB][bits][16]: for tile nt, K-block kb (k = kb*32 .. kb*32+31), word w,
 *           lane j (row nt*16+j):
 *     bits 2, 4, 8: word w holds the codes of k = kb*32 + w*cpw + t, t = 0..cpw-1
 *                   (cpw = 32/bits) at bits [t*bits, (t+1)*bits) -- one shift (+ mask for 8)
 *                   decodes 16 rows at one k;
 *     bits 3:       words 0, 1 hold the low 2 bits of k = kb*32 + w*16 + t at bits [2t, 2t+2)
 *                   (a 2-bit plane), word 2 holds bit 2 of k = kb*32 + t at bit t (a 1-bit
 *                   plane): exactly 3 bits per weight.
 *   params: float32 [NT][G][LB_QL_PARAMS][16]: per tile, group and lane a pair (p0, p1):
 *     INT asym (s, z), INT sym (s, -qmin) -- so every INT decodes as (code - p1) * p0,
 *     bit-identical to lb_decode; NF/FP symmetric (s, 0); NF/FP two-scale (s+, s-).
 * A code becomes a float through a 16-entry table indexed by its low 4 bits (one vpermps on
 * AVX-512; two permutes + a blend on AVX2): INT codes map to (float)code, NF/FP codes to their
 * normalised level (entries replicated for 2/3-bit codes so the high garbage bits of a shifted
 * word never need masking). 8-bit INT codes are masked and converted instead. */
#define LB_QL_TILE 16  /* output rows per tile: one AVX-512 register of float32 lanes */
#define LB_QL_KBLK 32  /* K per block: one 32-bit word per bit of a code, per lane */
#define LB_QL_PARAMS 2 /* floats per (tile lane, group): (p0, p1) */
LB_STATIC_ASSERT(LB_QL_TILE == 16, "the qlinear kernels hold one tile in 16 float32 lanes");
LB_STATIC_ASSERT(LB_QL_KBLK == 32, "a K-block of b-bit codes must fill exactly b 32-bit words");
LB_STATIC_ASSERT(LB_QL_PARAMS == 2, "params hold (p0, p1) per lane and group");

/* The fast layout applies when every group is a whole number of K-blocks or there is one group
 * per row; otherwise the kernels read the canonical codes directly. */
LB_HD int lb_ql_packable(int64_t K, int64_t g) { return g % LB_QL_KBLK == 0 || g == K; }
LB_HD int64_t lb_ql_tiles(int64_t N) { return lb_cdiv64(N, LB_QL_TILE); }
LB_HD int64_t lb_ql_kblocks(int64_t K) { return lb_cdiv64(K, LB_QL_KBLK); }
/* int32 words of packed and float32 values of params (sizes validated by the _checked form). */
LB_HD int64_t lb_ql_packed_words(int64_t N, int64_t K, int bits) {
    return lb_ql_tiles(N) * lb_ql_kblocks(K) * bits * LB_QL_TILE;
}
LB_HD int64_t lb_ql_params_floats(int64_t N, int64_t G) {
    return lb_ql_tiles(N) * G * LB_QL_PARAMS * LB_QL_TILE;
}
LB_HD int lb_ql_sizes_checked(int64_t N, int64_t K, int64_t bits, int64_t G, int64_t* words,
                              int64_t* params) {
    int64_t a, b;
    if (N < 0 || K < 0 || bits < 0 || G < 0) return -1;
    if (lb_mul64(lb_ql_tiles(N), lb_ql_kblocks(K), &a) || lb_mul64(a, bits * LB_QL_TILE, &a) ||
        lb_mul64(lb_ql_tiles(N), G, &b) || lb_mul64(b, LB_QL_PARAMS * LB_QL_TILE, &b))
        return -1;
    *words = a;
    *params = b;
    return 0;
}

/* ---- lowbit's compressed 2:4 layout (the "lb24" layout) of a pruned W (N, K), K % 4 == 0 ----
 *   groups   : G = K / 4 runs of LB24_GROUP = 4 consecutive elements along K; group q covers
 *              k = 4q .. 4q+3, of which LB24_KEPT = 2 are kept.
 *   values   : (N, K/2) in W's dtype; row n holds the 2 kept values of group q at [2q] and
 *              [2q+1], the lower in-group index first (so values are "in order" along K).
 *   meta     : uint8 (N, MB) with MB = ceil(G / 2) = lb24_meta_bytes(K). Each group has one
 *              nibble: bits 0-1 = in-group index i0 of value [2q], bits 2-3 = index i1 of
 *              value [2q+1], i0 < i1. Group q sits in byte q / 2, low nibble for even q, high
 *              nibble for odd q (a trailing odd group leaves the high nibble zero).
 *              Equivalently, kept value j of a row (j = 2q + s) has its 2-bit index at bit
 *              offset 2*j of the row's little-endian bitstream, so a 32-bit load at byte 4t
 *              gives the 16 indices of kept values 16t .. 16t+15 (lane l at bits 2l, 2l+1).
 *   The element kept as value j sits at k = 4 * (j / 2) + idx(j).
 * 2:4 + low bits: the kept values (N, K/2) are quantized with a QuantSpec exactly as
 *   lowbit.quantize packs any (N, K/2) weight (the formats.h bitstream, groups of g kept
 *   values); meta is unchanged. int4 g128 (asymmetric): per 256 original weights, 128 4-bit
 *   codes + a float32 scale + a uint8 zero point, and 256 2-bit indices: 3.16 bits. */
#define LB24_GROUP 4          /* elements per 2:4 group along K */
#define LB24_KEPT 2           /* kept values per group */
#define LB24_GROUPS_PER_BYTE 2 /* meta nibbles per byte */
#define LB24_GRAD_X_MAX_M 8   /* rows of the upstream gradient sparse24_grad_x takes */
LB_STATIC_ASSERT(LB24_GROUP == 4 && LB24_KEPT == 2,
                 "a meta nibble holds the two 2-bit in-group indices of one group");
LB_STATIC_ASSERT(LB24_GROUPS_PER_BYTE * 4 == 8, "two nibbles per meta byte");

LB_HD int64_t lb24_meta_bytes(int64_t K) { return lb_cdiv64(K / LB24_GROUP, LB24_GROUPS_PER_BYTE); }

#endif /* LOWBIT_LAYOUTS_H */
