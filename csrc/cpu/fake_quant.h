/* csrc/cpu/fake_quant.h: the CPU kernels of the fake_quant family (csrc/cpu/fake_quant.c):
 * fake-quant forward, its exact BitDistiller backward, quantize/pack, dequantize/unpack. */
#ifndef LOWBIT_CPU_FAKE_QUANT_H
#define LOWBIT_CPU_FAKE_QUANT_H

#include "../formats.h"

/* w, grad, out: contiguous (N, K) in dtype dt (LB_DT_*); groups of g along K (g divides K).
 * All return -1 when scratch memory could not be had. */
int lb_fq_forward_cpu(const void* w, void* out, int dt, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f);
int lb_fq_backward_cpu(const void* grad, const void* w, void* gw, int dt, int64_t N, int64_t K,
                       int64_t g, const lb_fmt* f);
/* codes (N, lb_row_bytes(K)), scales/zeros as lb_store_gparams writes them (zeros NULL unless
 * INT asym). Returns the number of groups holding NaN/Inf (codes are then unspecified), or -1. */
int64_t lb_quantize_cpu(const void* w, int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                        uint8_t* codes, float* scales, uint8_t* zeros);
int lb_dequantize_cpu(const uint8_t* codes, const float* scales, const uint8_t* zeros, void* out,
                      int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f);

#endif /* LOWBIT_CPU_FAKE_QUANT_H */
