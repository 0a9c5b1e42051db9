/* csrc/ops/qlinear.h: kernel entry points of the qlinear family (packed low-bit linear layers),
 * shared by its glue (csrc/ops/qlinear.c), CPU kernels (csrc/cpu/qlinear.c) and CUDA launchers
 * (cuda/qlinear.cu).
 *
 * ---- The CPU kernel layout ("packed" + "params", built by lb_ql_pack_cpu) ----
 * The canonical per-row bitstream (codes/scales/zeros, formats.h) stays the source of truth;
 * the CPU kernels read a regrouped copy in which one SIMD lane is one output row:
 *   rows are cut into tiles of 16 (NT = ceil(N/16) tiles, missing rows are code 0, scale 0);
 *   K is padded with code 0 to Kp = KB*32 (KB = ceil(K/32));
 *   packed: int32 [NT][KB][bits][16]: for tile nt, K-block kb (k = kb*32 .. kb*32+31), word w,
 *           lane j (row nt*16+j):
 *     bits 2, 4, 8: word w holds the codes of k = kb*32 + w*cpw + t, t = 0..cpw-1
 *                   (cpw = 32/bits) at bits [t*bits, (t+1)*bits) -- one shift (+ mask for 8)
 *                   decodes 16 rows at one k;
 *     bits 3:       words 0, 1 hold the low 2 bits of k = kb*32 + w*16 + t at bits [2t, 2t+2)
 *                   (a 2-bit plane), word 2 holds bit 2 of k = kb*32 + t at bit t (a 1-bit
 *                   plane): exactly 3 bits per weight.
 *   params: float32 [NT][G][2][16]: per tile, group and lane a pair (p0, p1):
 *     INT asym (s, z), INT sym (s, -qmin) -- so every INT decodes as (code - p1) * p0,
 *     bit-identical to lb_decode; NF/FP symmetric (s, 0); NF/FP two-scale (s+, s-).
 * A code becomes a float through a 16-entry table indexed by its low 4 bits (one vpermps on
 * AVX-512; two permutes + a blend on AVX2): INT codes map to (float)code, NF/FP codes to their
 * normalised level (entries replicated for 2/3-bit codes so the high garbage bits of a shifted
 * word never need masking). 8-bit INT codes are masked and converted instead. */
#ifndef LOWBIT_OPS_QLINEAR_H
#define LOWBIT_OPS_QLINEAR_H

#include "../lb_ops.h"

#define LB_QL_TILE 16
#define LB_QL_KBLK 32

/* The fast layout applies when every group is a whole number of 32-blocks (g % 32 == 0) or
 * there is one group per row; otherwise the kernels read the canonical codes directly. */
static inline int lb_ql_packable(int64_t K, int64_t g) { return g % LB_QL_KBLK == 0 || g == K; }
static inline int64_t lb_ql_packed_words(int64_t N, int64_t K, int bits) {
    return ((N + LB_QL_TILE - 1) / LB_QL_TILE) * ((K + LB_QL_KBLK - 1) / LB_QL_KBLK) * bits *
           LB_QL_TILE;
}
static inline int64_t lb_ql_params_floats(int64_t N, int64_t G) {
    return ((N + LB_QL_TILE - 1) / LB_QL_TILE) * G * 2 * LB_QL_TILE;
}

/* ---- CPU (csrc/cpu/qlinear.c) ---- */
/* Builds packed/params from the canonical codes (zeros NULL unless INT asym). */
void lb_ql_pack_cpu(const uint8_t* codes, const float* scales, const uint8_t* zeros, int64_t N,
                    int64_t K, int64_t g, const lb_fmt* f, int32_t* packed, float* params);
/* y (M, N) of dtype dt = x (M, K) of dtype dt times W^T (+ bias, dtype dt, or NULL).
 * packed/params may be NULL (then the canonical codes are used). Returns -1 on OOM. */
int lb_ql_forward_cpu(const void* x, int dt, int64_t M, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f, const uint8_t* codes, const float* scales,
                      const uint8_t* zeros, const int32_t* packed, const float* params,
                      const void* bias, void* y);

/* Rows [kb0*32, kb1*32) of W^T as float32 ((kb1-kb0)*32, NT*16) (rows k >= K and columns
 * n >= N are padding) from the packed layout: the input-gradient path (grad_x = grad_y @ W, done
 * in K-chunks so no full float copy of W is ever allocated). Requires lb_ql_packable(K, g). */
void lb_ql_dequant_t_cpu(const int32_t* packed, const float* params, int64_t N, int64_t K,
                         int64_t g, const lb_fmt* f, int64_t kb0, int64_t kb1, float* wt);

/* ---- CUDA (cuda/qlinear.cu); returns 0 or a cudaError_t ---- */
#ifdef LOWBIT_WITH_CUDA
#ifdef __cplusplus
extern "C" {
#endif
int lb_ql_forward_cuda(const void* x, int dt, int64_t M, int64_t N, int64_t K, int64_t g,
                       const lb_fmt* f, const uint8_t* codes, const float* scales,
                       const uint8_t* zeros, const void* bias, void* y, void* stream);
#ifdef __cplusplus
}
#endif
#endif

#endif /* LOWBIT_OPS_QLINEAR_H */
