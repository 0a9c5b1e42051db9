/* csrc/cpu/fake_quant.c: CPU kernels of the fake_quant family (fake-quant forward, its exact
 * BitDistiller backward, quantize/pack, dequantize/unpack): the drivers, which split rows over the
 * runtime's thread pool (torch's intra-op pool in the extension) and run the workers of the
 * kernel table in use (lb_rt.fq), and the scalar twin's table. The workers' bodies are in
 * csrc/cpu/fake_quant_impl.h; the x86 variants compile the same bodies in
 * csrc/cpu/arch/x86/fake_quant_avx2.c, fake_quant_avx512.c. */
#include "fake_quant_impl.h"

LB_FQ_KERNELS(scalar, LB_SCALAR_ATTR)

/* Rows per task: about 64K elements of work each. */
static int64_t row_grain(int64_t K) { return K >= 65536 ? 1 : 65536 / (K > 0 ? K : 1); }

int lb_fq_forward_cpu(const void* w, void* out, int dt, int64_t N, int64_t K, int64_t g,
                      const lb_fmt* f) {
    fq_ctx c = {0};
    c.w = w; c.out = out; c.dt = dt; c.N = N; c.K = K; c.g = g; c.f = f;
    lb_parallel(N, row_grain(K), lb_rt.fq->fwd, &c);
    return c.oom ? -1 : 0;
}

int lb_fq_backward_cpu(const void* grad, const void* w, void* gw, int dt, int64_t N, int64_t K,
                       int64_t g, const lb_fmt* f) {
    fq_ctx c = {0};
    c.w = w; c.grad = grad; c.out = gw; c.dt = dt; c.N = N; c.K = K; c.g = g; c.f = f;
    lb_parallel(N, row_grain(K), lb_rt.fq->bwd, &c);
    return c.oom ? -1 : 0;
}

int64_t lb_quantize_cpu(const void* w, int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f,
                        uint8_t* codes, float* scales, uint8_t* zeros) {
    fq_ctx c = {0};
    int64_t bad = 0;
    c.w = w; c.dt = dt; c.N = N; c.K = K; c.g = g; c.f = f;
    c.codes = codes; c.scales = scales; c.zeros = zeros;
    /* one slot per row, so threads never write the same counter */
    c.bad_per_row = (int64_t*)calloc((size_t)(N > 0 ? N : 1), sizeof(int64_t));
    if (!c.bad_per_row) return -1;
    lb_parallel(N, row_grain(K), lb_rt.fq->quant, &c);
    for (int64_t r = 0; r < N; ++r) bad += c.bad_per_row[r];
    free(c.bad_per_row);
    return c.oom ? -1 : bad;
}

int lb_dequantize_cpu(const uint8_t* codes, const float* scales, const uint8_t* zeros, void* out,
                      int dt, int64_t N, int64_t K, int64_t g, const lb_fmt* f) {
    fq_ctx c = {0};
    c.codes = (uint8_t*)codes; c.scales = (float*)scales; c.zeros = (uint8_t*)zeros;
    c.out = out; c.dt = dt; c.N = N; c.K = K; c.g = g; c.f = f;
    lb_parallel(N, row_grain(K), lb_rt.fq->dequant, &c);
    return c.oom ? -1 : 0;
}
