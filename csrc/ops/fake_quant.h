/* csrc/ops/fake_quant.h: kernel entry points of the fake_quant family, shared by its glue
 * (csrc/ops/fake_quant.c), CPU kernels (csrc/cpu/fake_quant.c) and CUDA launchers
 * (cuda/fake_quant.cu). */
#ifndef LOWBIT_OPS_FAKE_QUANT_H
#define LOWBIT_OPS_FAKE_QUANT_H

#include "../lb_ops.h"

/* Argument checks other families reuse: (fmt, bits, group_size, symmetric) against K, resolving
 * *f; a 2-D, non-empty, contiguous float32/bf16/f16 tensor. 0, or -1 with err naming the arg. */
int lb_check_spec(int64_t fmt, int64_t bits, int64_t g, bool sym, int64_t K, lb_fmt* f, char* err);
int lb_check_weight(const lb_tensor* t, const char* name, char* err);

/* ---- fake_quant family: CPU kernels (csrc/cpu/fake_quant.c) ----
 * w, grad, out: contiguous (N, K) in dtype dt (LB_DT_*); groups of g along K (g divides K). */
/* All return -1 when scratch memory could not be had. */
int lb_fq_forward_cpu(const void* w, void* out, int dt, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f);
int lb_fq_backward_cpu(const void* grad, const void* w, void* gw, int dt, int64_t N, int64_t K,
                       int64_t g, const lb_fmt* f);
/* Returns the number of groups holding NaN/Inf (codes are then unspecified), or -1. */
int64_t lb_quantize_cpu(const void* w, int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                        uint8_t* codes, float* scales, uint8_t* zeros);
int lb_dequantize_cpu(const uint8_t* codes, const float* scales, const uint8_t* zeros, void* out,
                      int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f);

/* ---- fake_quant family: CUDA launchers (cuda/fake_quant.cu); return 0 or a cudaError_t ---- */
#ifdef LOWBIT_WITH_CUDA
#ifdef __cplusplus
extern "C" {
#endif
int lb_fq_forward_cuda(const void* w, void* out, int dt, int64_t N, int64_t K, int64_t g,
                       const lb_fmt* f, void* stream);
int lb_fq_backward_cuda(const void* grad, const void* w, void* gw, int dt, int64_t N, int64_t K,
                        int64_t g, const lb_fmt* f, void* stream);
/* bad_groups: device int32 counter of groups holding NaN/Inf (caller zeroes it). */
int lb_quantize_cuda(const void* w, int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                     uint8_t* codes, float* scales, uint8_t* zeros, int32_t* bad_groups,
                     void* stream);
int lb_dequantize_cuda(const uint8_t* codes, const float* scales, const uint8_t* zeros, void* out,
                       int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f, void* stream);
#ifdef __cplusplus
}
#endif
#endif

#endif /* LOWBIT_OPS_FAKE_QUANT_H */
