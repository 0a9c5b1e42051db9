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

/* ---- the qlinear CPU kernel layout ("packed", built by lb_ql_pack_cpu) ----
 * On the CPU this is the one stored form of the codes of a weight whose group size has the
 * layout (lb_ql_packable); the canonical bitstream above is derived from it on demand (save,
 * export, CUDA, dequantize: lb_ql_unpack_cpu). Scales and zero points have no kernel copy: the
 * kernels read the canonical float32 (N, G) / (N, G, 2) scales and uint8 (N, G) zero points, so
 * an edit of either is seen at once and nothing can go stale.
 *   rows are cut into tiles of LB_QL_TILE = 16 (NT = ceil(N/16) tiles, missing rows are code 0);
 *   K is padded with code 0 to Kp = KB*32 (KB = ceil(K/LB_QL_KBLK));
 *   packed: int32 [NT][KB][bits][16]: tile nt, K-block kb (k = kb*32 .. kb*32+31), word w,
 *           lane j (row nt*16+j):
 *     bits 2, 4, 8: word w holds the codes of k = kb*32 + w*cpw + t, t = 0..cpw-1
 *                   (cpw = 32/bits) at bits [t*bits, (t+1)*bits): the canonical bitstream's
 *                   32-bit word kb*bits + w of row nt*16+j, so packing is a transpose of words;
 *     bits 3:       words 0, 1 hold the low 2 bits of k = kb*32 + 16w + t at bits [2t, 2t+2)
 *                   (a 2-bit plane, as for bits 2); word 2 holds bit 2 of the code of
 *                   k = kb*32 + 16w + 4i + s (w in 0..1, i and s in 0..3) at bit 8i + 4w + s
 *                   (a 1-bit plane): exactly 3 bits per weight.
 * Integer dot products. Every width gives, per 32-bit lane, 4 codes of one row as 4 bytes in
 * LB_QL_STEPS = 8 steps per K-block, each a shift and a byte mask of one word (3-bit: of two,
 * OR'd): step t is word t*bits/8 (3-bit: t/4) shifted right by (t % (8/bits))*bits (3-bit:
 * 2*(t%4)), and byte i of it holds the code of k = kb*32 + lb_ql_step_k(bits, t, i). That is the
 * u8 operand of a 4-way u8 x s8 dot product (vpdpbusd, vpmaddubsw + vpmaddwd) whose s8 operand
 * is the same 4 activations for all 16 rows (one broadcast 32-bit word): the activations are
 * reordered once per call to this step order (lb_ql_step_k) so one decoded vector feeds every
 * activation row. Float kernels decode the same words one k at a time through a 16-entry table
 * (INT codes -> exact integers, NF/FP codes -> normalised levels; entries replicated for 2/3-bit
 * codes so the high garbage bits of a shifted word never need masking). */
#define LB_QL_TILE 16  /* output rows per tile: one AVX-512 register of 32-bit lanes */
#define LB_QL_KBLK 32  /* K per block: one 32-bit word per bit of a code, per lane */
#define LB_QL_STEPS 8  /* dot-product steps per K-block: 4 codes per lane each */
#define LB_QL_ABLK 32  /* activation block of the integer modes (one int8 scale per row, block) */
LB_STATIC_ASSERT(LB_QL_TILE == 16, "the qlinear kernels hold one tile in 16 32-bit lanes");
LB_STATIC_ASSERT(LB_QL_KBLK == 32, "a K-block of b-bit codes must fill exactly b 32-bit words");
LB_STATIC_ASSERT(LB_QL_STEPS * 4 == LB_QL_KBLK, "a step gives 4 codes per lane");
LB_STATIC_ASSERT(LB_QL_ABLK == LB_QL_KBLK, "an activation block is one K-block");

/* The code widths the layout holds (bit b set for b bits): the 32 codes of a K-block fill whole
 * 32-bit words (2, 4, 8) or the 2 + 1 bit planes of the 3-bit form. */
#define LB_QL_WIDTHS ((1u << 2) | (1u << 3) | (1u << 4) | (1u << 8))
LB_HD int lb_ql_width_ok(int64_t bits) {
    return bits >= 0 && bits < 32 && ((LB_QL_WIDTHS >> bits) & 1u);
}

/* The k offset inside a K-block of byte i (0..3) of dot-product step t (0..7). */
LB_HD int lb_ql_step_k(int bits, int t, int i) {
    if (bits == 8) return 4 * t + i;
    if (bits == 4) return 8 * (t >> 1) + 2 * i + (t & 1);
    return 16 * (t >> 2) + 4 * i + (t & 3); /* 2 and 3 bits */
}

/* The fast layout applies when every group is a whole number of K-blocks or there is one group
 * per row; otherwise the kernels read the canonical codes directly. */
LB_HD int lb_ql_packable(int64_t K, int64_t g) { return g % LB_QL_KBLK == 0 || g == K; }
LB_HD int64_t lb_ql_tiles(int64_t N) { return lb_cdiv64(N, LB_QL_TILE); }
LB_HD int64_t lb_ql_kblocks(int64_t K) { return lb_cdiv64(K, LB_QL_KBLK); }
/* int32 words of packed (sizes validated by the _checked form). */
LB_HD int64_t lb_ql_packed_words(int64_t N, int64_t K, int bits) {
    return lb_ql_tiles(N) * lb_ql_kblocks(K) * bits * LB_QL_TILE;
}
LB_HD int lb_ql_words_checked(int64_t N, int64_t K, int64_t bits, int64_t* words) {
    int64_t a;
    if (N < 0 || K < 0 || bits < 0) return -1;
    if (lb_mul64(lb_ql_tiles(N), lb_ql_kblocks(K), &a) || lb_mul64(a, bits * LB_QL_TILE, &a))
        return -1;
    *words = a;
    return 0;
}

/* Accuracy modes of quant_linear (FORMATS.md 4; the `act` int of the op). */
enum { LB_ACT_FLOAT = 0, LB_ACT_INT8 = 1, LB_ACT_AUTO = 2, LB_ACT_COUNT = 3 };
/* CUDA's integer kernels serve M <= LB_QL_INT_MAX_M rows (larger M runs its float path); the CPU
 * integer kernels serve every M (batched passes, csrc/cpu/qlinear_int_body.h). */
#define LB_QL_INT_MAX_M 16

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
