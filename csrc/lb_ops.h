/* csrc/lb_ops.h: the op tables each family (csrc/ops/<stem>.c) exports to module.c, and the
 * kernel entry points (csrc/cpu/<stem>.c, cuda/<stem>.cu) the glue calls. */
#ifndef LOWBIT_OPS_H
#define LOWBIT_OPS_H

#include <stdint.h>

#include "formats.h"
#include "lb_torch.h"

typedef struct {
    const char* name;    /* op name inside the lowbit namespace */
    const char* schema;  /* full schema given to the dispatcher */
    lb_boxed_fn fn;      /* boxed kernel; it dispatches on the tensors' device itself */
    int cuda;            /* also registered under the CUDA key (when built with CUDA) */
} lb_op_def;

extern const lb_op_def lb_ops_fake_quant[];

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
const char* lb_cuda_error_string(int err);
/* Copies n bytes device->host on stream and waits (for small results such as counters). */
int lb_cuda_memcpy_d2h(void* dst, const void* src, int64_t n, void* stream);
int lb_cuda_memset(void* dst, int value, int64_t n, void* stream);
#ifdef __cplusplus
}
#endif
#endif

#endif /* LOWBIT_OPS_H */
