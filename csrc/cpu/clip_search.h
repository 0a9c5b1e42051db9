/* csrc/cpu/clip_search.h: the CPU kernel of the clip_search family (csrc/cpu/clip_search.c):
 * BitDistiller's asymmetric clipping grid search, the calibration step of QAT. */
#ifndef LOWBIT_CPU_CLIP_SEARCH_H
#define LOWBIT_CPU_CLIP_SEARCH_H

#include "../formats.h"

/* w: contiguous float32 (N, K); gram: contiguous float32 (K/g, g, g), the per-group sum of
 * x x^T over calibration tokens. For every (row, group) tries hi = max*(1 - i/n_grid),
 * lo = min*(1 - j/n_grid) for i, j in [0, shrink), quantizes clamp(w, lo, hi) with f, and keeps
 * the pair with the smallest (q - w)^T H (q - w) (first minimum in (i, j) order). Writes
 * lo, hi: (N, K/g) float32. Block rows (FORMATS.md 1.8) search per sub-block (g, the gram's
 * size and lo / hi are per sub-block; csrc/cpu/clip_search_impl.h blk_clip_rows). Returns -1
 * when scratch memory could not be had. */
int lb_clip_search_cpu(const float* w, const float* gram, int64_t N, int64_t K, int64_t g,
                       const lb_fmt* f, int n_grid, int shrink, float* lo, float* hi);

#endif /* LOWBIT_CPU_CLIP_SEARCH_H */
