/* csrc/ops/qlinear.c: dispatcher glue of the qlinear family (packed low-bit linear layers):
 * unboxes the stack, checks every argument again (the Python wrappers check first, naming the
 * user-facing argument), allocates outputs, and calls the CPU kernels (csrc/cpu/qlinear.h) or
 * the CUDA launcher (cuda/qlinear.cuh) on the current stream. Every error path ends in
 * lb_call_fail, which frees what the call holds. Each op's schema is written once, beside its
 * kernel (QL_*_SCHEMA), with an enum naming its stack slots in schema order:
 *   qlinear_pack        canonical codes -> the CPU layout of csrc/layouts.h       [CPU]
 *   qlinear_unpack      the CPU layout -> canonical codes                         [CPU]
 *   quant_linear        y = x W^T (+ bias)                                        [CPU, CUDA]
 *   qlinear_dequant_t   rows [32*kb0, 32*kb1) of W^T, padded                      [CPU]
 * x (..., K) float32/bf16/f16 contiguous; y (..., N) of x's dtype; bias: (N) of x's dtype or an
 * empty tensor for none; a weight is its canonical scales / zeros plus its codes either as the
 * CPU layout of csrc/layouts.h (packed; codes empty) or canonical (codes; packed empty); act:
 * the accuracy mode (LB_ACT_*, FORMATS.md 4; the CUDA kernels compute every mode in float).
 * llama.cpp's block types (FORMATS.md 1.8): codes are the GGUF blocks, scales / zeros (N, 0),
 * packed empty; the CPU runs csrc/cpu/qlinear_blk.h, CUDA lb_ql_forward_blk_cuda. */
#include <stdio.h>

#include "lb_check.h"

#include "../cpu/qlinear.h"
#include "../cpu/qlinear_blk.h"
#ifdef LOWBIT_WITH_CUDA
#include "../../cuda/qlinear.cuh"
#endif

/* The packed layout's (NT, KB*bits*16) shape for (N, K, bits), overflow-checked (K names the
 * culprit). */
static int ql_packed_shape(int64_t N, int64_t K, int bits, int64_t shape[2], char* err) {
    int64_t words;
    if (lb_ql_words_checked(N, K, bits, &words))
        return lb_fail(err, "K: the kernel layout of a (%lld, %lld) weight overflows",
                       (long long)N, (long long)K);
    shape[0] = lb_ql_tiles(N);
    shape[1] = shape[0] ? words / shape[0] : 0;
    return 0;
}

static int ql_check_packed(const lb_tensor* p, const int64_t shape[2], char* err) {
    if (p->dtype != lb_t.dt_i32 || !p->contiguous || p->dim != 2 || p->sizes[0] != shape[0] ||
        p->sizes[1] != shape[1])
        return lb_fail(err, "packed: expected a contiguous int32 (%lld, %lld) tensor",
                       (long long)shape[0], (long long)shape[1]);
    return 0;
}

/* scales / zeros of a weight of K columns (N taken from scales): the checks of
 * lb_check_qweight without the codes. */
static int ql_check_params(const lb_tensor* s, const lb_tensor* z, const lb_fmt* f, int64_t K,
                           int64_t g, int64_t* N, char* err) {
    const int two = f->nscales == 2;
    const int64_t G = K / g, GZ = f->zeros ? G : 0;
    *N = s->dim >= 1 ? s->sizes[0] : -1;
    if (s->dtype != lb_t.dt_f32 || !s->contiguous || s->dim != (two ? 3 : 2) || *N <= 0 ||
        s->sizes[1] != G || (two && s->sizes[2] != 2))
        return lb_fail(err, "scales: expected a contiguous float32 (N, %lld%s) tensor, N > 0",
                       (long long)G, two ? ", 2" : "");
    if (z->dtype != lb_t.dt_u8 || z->dim != 2 || !z->contiguous || z->sizes[0] != *N ||
        z->sizes[1] != GZ)
        return lb_fail(err, "zeros: expected a contiguous uint8 (%lld, %lld) tensor",
                       (long long)*N, (long long)GZ);
    return lb_check_same_device(z, "zeros", s, "scales", err);
}

/* The code widths the packed layout holds (csrc/layouts.h LB_QL_WIDTHS). */
static int ql_check_bits(int64_t bits, char* err) {
    if (!lb_ql_width_ok(bits)) {
        char list[64] = "";
        size_t n = 0;
        for (int b = 1; b <= LB_MAX_BITS; ++b)
            if (lb_ql_width_ok(b))
                n += (size_t)snprintf(list + n, sizeof list - n, "%s%d", n ? ", " : "", b);
        return lb_fail(err, "bits: must be one of %s, got %lld", list, (long long)bits);
    }
    return 0;
}

/* packed int32 (NT, KB*bits*16) from canonical codes uint8 (N, ceil(K*bits/8)) */
#define QL_PACK_SCHEMA "qlinear_pack(Tensor codes, int bits, int K) -> Tensor"
enum { QLP_CODES, QLP_BITS, QLP_K };
LB_BOXED(lb_boxed_qlinear_pack) {
    lb_call c;
    lb_tensor t;
    const int64_t bits = lb_iv_int(stack[QLP_BITS]), K = lb_iv_int(stack[QLP_K]);
    int64_t rb, shape[2] = {0, 0};
    void* pp = NULL;
    lb_call_begin(&c, "lowbit::qlinear_pack", stack, 1);
    if (lb_call_arg(&c, QLP_CODES, "codes", &t)) goto fail;
    if (ql_check_bits(bits, c.err)) goto fail;
    if (K <= 0 || lb_row_bytes_checked(K, bits, &rb)) {
        lb_fail(c.err, "K: must be positive and K * bits fit in int64, got %lld", (long long)K);
        goto fail;
    }
    if (t.device_type != lb_t.dev_cpu || t.dtype != lb_t.dt_u8 || t.dim != 2 || !t.contiguous ||
        t.sizes[0] <= 0 || t.sizes[1] != rb) {
        lb_fail(c.err, "codes: expected a contiguous uint8 (N, %lld) CPU tensor, N > 0",
                (long long)rb);
        goto fail;
    }
    if (ql_packed_shape(t.sizes[0], K, (int)bits, shape, c.err) ||
        lb_check_numel(shape, 2, 4, "K", c.err) ||
        lb_call_out(&c, 2, shape, lb_t.dt_i32, &t, &pp) || lb_call_exec(&c, &t))
        goto fail;
    lb_ql_pack_cpu((const uint8_t*)t.data, t.sizes[0], K, (int)bits, (int32_t*)pp);
    LB_CALL_END(c);
}

/* canonical codes uint8 (N, ceil(K*bits/8)) back from packed: the exact inverse of the pack */
#define QL_UNPACK_SCHEMA "qlinear_unpack(Tensor packed, int N, int K, int bits) -> Tensor"
enum { QLU_PACKED, QLU_N, QLU_K, QLU_BITS };
LB_BOXED(lb_boxed_qlinear_unpack) {
    lb_call c;
    lb_tensor t;
    const int64_t N = lb_iv_int(stack[QLU_N]), K = lb_iv_int(stack[QLU_K]);
    const int64_t bits = lb_iv_int(stack[QLU_BITS]);
    int64_t rb, shape[2] = {0, 0};
    void* po = NULL;
    lb_call_begin(&c, "lowbit::qlinear_unpack", stack, 1);
    if (lb_call_arg(&c, QLU_PACKED, "packed", &t)) goto fail;
    if (ql_check_bits(bits, c.err)) goto fail;
    if (N <= 0 || K <= 0 || lb_row_bytes_checked(K, bits, &rb)) {
        lb_fail(c.err, "%s: must be positive, got %lld", N <= 0 ? "N" : "K",
                (long long)(N <= 0 ? N : K));
        goto fail;
    }
    if (ql_packed_shape(N, K, (int)bits, shape, c.err) || ql_check_packed(&t, shape, c.err))
        goto fail;
    if (t.device_type != lb_t.dev_cpu) {
        lb_fail(c.err, "packed: the CPU kernel layout lives on the CPU");
        goto fail;
    }
    {
        const int64_t osz[2] = {N, rb};
        if (lb_check_numel(osz, 2, 1, "N", c.err) || lb_call_out(&c, 2, osz, lb_t.dt_u8, &t, &po) ||
            lb_call_exec(&c, &t))
            goto fail;
        lb_ql_unpack_cpu((const int32_t*)t.data, N, K, (int)bits, (uint8_t*)po);
    }
    LB_CALL_END(c);
}

/* y (..., N) = x (..., K) W^T (+ bias) in accuracy mode act */
#define QL_LINEAR_SCHEMA                                                                     \
    "quant_linear(Tensor x, Tensor codes, Tensor scales, Tensor zeros, Tensor packed, "       \
    "Tensor bias, int fmt, int bits, int group_size, bool symmetric, int act) -> Tensor"
enum { QLL_X, QLL_CODES, QLL_SCALES, QLL_ZEROS, QLL_PACKED, QLL_BIAS, QLL_FMT, QLL_BITS,
       QLL_GROUP_SIZE, QLL_SYMMETRIC, QLL_ACT, QLL_NTENSORS = QLL_FMT };
LB_BOXED(lb_boxed_quant_linear) {
    static const char* names[QLL_NTENSORS] = {"x", "codes", "scales", "zeros", "packed", "bias"};
    lb_call c;
    lb_tensor t[QLL_NTENSORS];
    lb_fmt f;
    const lb_tensor *x = &t[QLL_X], *pk = &t[QLL_PACKED], *b = &t[QLL_BIAS];
    const lb_tensor *codes = &t[QLL_CODES], *scales = &t[QLL_SCALES], *zeros = &t[QLL_ZEROS];
    const int64_t g = lb_iv_int(stack[QLL_GROUP_SIZE]), act = lb_iv_int(stack[QLL_ACT]);
    int64_t K, N = 0, M = 1;
    int dt, hb, use_packed, blk;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::quant_linear", stack, QLL_NTENSORS);
    for (int i = 0; i < QLL_NTENSORS; ++i)
        if (lb_call_arg(&c, i, names[i], &t[i])) goto fail;
    if ((dt = lb_check_float(x, "x", c.err)) < 0) goto fail;
    if (x->dim < 1 || !x->contiguous) {
        lb_fail(c.err, "x: expected a contiguous (..., K) tensor");
        goto fail;
    }
    K = x->sizes[x->dim - 1];
    if (K <= 0) {
        lb_fail(c.err, "x: in_features K must be positive, got %lld", (long long)K);
        goto fail;
    }
    if (lb_check_spec(lb_iv_int(stack[QLL_FMT]), lb_iv_int(stack[QLL_BITS]), g,
                      lb_iv_bool(stack[QLL_SYMMETRIC]), K, &f, c.err) ||
        lb_check_int(act, "act", 0, LB_ACT_COUNT - 1, c.err))
        goto fail;
    blk = f.storage == LB_STORE_BLOCKS;
    use_packed = pk->numel != 0;
    if (blk && use_packed) {
        lb_fail(c.err, "packed: format %s has no packed CPU layout (the kernels read the GGUF "
                "blocks in codes; pass an empty tensor)", lb_formats[f.fmt].name);
        goto fail;
    }
    if (use_packed) {
        int64_t shape[2] = {0, 0};
        if (codes->numel != 0) {
            lb_fail(c.err, "codes: must be empty when packed is given (one form of the codes)");
            goto fail;
        }
        if (!lb_ql_packable(K, g)) {
            lb_fail(c.err, "packed: group_size %lld has no packed CPU layout", (long long)g);
            goto fail;
        }
        if (!lb_ql_holds(&f)) {
            lb_fail(c.err, "packed: format code %lld has no packed CPU layout",
                    (long long)f.fmt);
            goto fail;
        }
        if (ql_check_params(scales, zeros, &f, K, g, &N, c.err) ||
            ql_packed_shape(N, K, f.bits, shape, c.err) || ql_check_packed(pk, shape, c.err))
            goto fail;
        if (pk->device_type != lb_t.dev_cpu) {
            lb_fail(c.err, "packed: the CPU kernel layout runs on the CPU only");
            goto fail;
        }
    } else if (lb_check_qweight(codes, scales, zeros, lb_qweight_names, &f, K, g, &N, c.err)) {
        goto fail;
    }
    for (int64_t i = 0; i + 1 < x->dim; ++i) M *= x->sizes[i]; /* x exists: no overflow */
    for (int i = QLL_X + 1; i < QLL_NTENSORS; ++i)
        if (t[i].numel != 0 && lb_check_same_device(&t[i], names[i], x, "x", c.err)) goto fail;
    if ((hb = lb_check_bias(b, x, N, c.err)) < 0) goto fail;
    {
        int64_t osz[LB_MAX_DIM];
        for (int64_t i = 0; i + 1 < x->dim; ++i) osz[i] = x->sizes[i];
        osz[x->dim - 1] = N;
        if (lb_check_numel(osz, (int)x->dim, 4, "x", c.err) ||
            lb_call_out(&c, x->dim, osz, x->dtype, x, &po))
            goto fail;
    }
    if (M > 0) {
        if (lb_call_exec(&c, x)) goto fail;
        if (!c.exec.cuda && blk) {
            if (lb_qlb_forward_cpu(x->data, dt, M, N, K, &f, (const uint8_t*)codes->data,
                                   hb ? b->data : NULL, (int)act, po)) {
                lb_fail(c.err, "x: out of memory for quant_linear scratch");
                goto fail;
            }
        } else if (!c.exec.cuda) {
            if (lb_ql_forward_cpu(x->data, dt, M, N, K, g, &f, (const uint8_t*)codes->data,
                                  (const float*)scales->data, (const uint8_t*)zeros->data,
                                  use_packed ? (const int32_t*)pk->data : NULL,
                                  hb ? b->data : NULL, (int)act, po)) {
                lb_fail(c.err, "x: out of memory for quant_linear scratch");
                goto fail;
            }
        }
#ifdef LOWBIT_WITH_CUDA
        else if (blk) {
            if (lb_cuda_status(lb_ql_forward_blk_cuda(x->data, dt, M, N, K, &f,
                                                      (const uint8_t*)codes->data,
                                                      hb ? b->data : NULL, (int)act, po,
                                                      c.exec.stream),
                               "quant_linear", c.err))
                goto fail;
        } else if (lb_cuda_status(lb_ql_forward_cuda(x->data, dt, M, N, K, g, &f,
                                                   (const uint8_t*)codes->data,
                                                   (const float*)scales->data,
                                                   (const uint8_t*)zeros->data, hb ? b->data : NULL,
                                                   po, c.exec.stream),
                                "quant_linear", c.err))
            goto fail;
#endif
    }
    LB_CALL_END(c);
}

/* float32 ((kb1-kb0)*32, NT*16): rows [32*kb0, 32*kb1) of W^T, padded (the input gradient) */
#define QL_DEQUANT_T_SCHEMA                                                                  \
    "qlinear_dequant_t(Tensor packed, Tensor scales, Tensor zeros, int fmt, int bits, "      \
    "int group_size, bool symmetric, int N, int K, int kb0, int kb1) -> Tensor"
enum { QLD_PACKED, QLD_SCALES, QLD_ZEROS, QLD_FMT, QLD_BITS, QLD_GROUP_SIZE, QLD_SYMMETRIC,
       QLD_N, QLD_K, QLD_KB0, QLD_KB1 };
LB_BOXED(lb_boxed_qlinear_dequant_t) {
    lb_call c;
    lb_tensor p, s, z;
    lb_fmt f;
    const int64_t g = lb_iv_int(stack[QLD_GROUP_SIZE]);
    const int64_t N = lb_iv_int(stack[QLD_N]), K = lb_iv_int(stack[QLD_K]);
    const int64_t kb0 = lb_iv_int(stack[QLD_KB0]), kb1 = lb_iv_int(stack[QLD_KB1]);
    int64_t shape[2] = {0, 0}, Ns = 0;
    void* po = NULL;
    lb_call_begin(&c, "lowbit::qlinear_dequant_t", stack, 3);
    if (lb_call_arg(&c, QLD_PACKED, "packed", &p) || lb_call_arg(&c, QLD_SCALES, "scales", &s) ||
        lb_call_arg(&c, QLD_ZEROS, "zeros", &z))
        goto fail;
    if (N <= 0 || K <= 0) {
        lb_fail(c.err, "%s: must be positive, got %lld", N <= 0 ? "N" : "K",
                (long long)(N <= 0 ? N : K));
        goto fail;
    }
    if (lb_check_spec(lb_iv_int(stack[QLD_FMT]), lb_iv_int(stack[QLD_BITS]), g,
                      lb_iv_bool(stack[QLD_SYMMETRIC]), K, &f, c.err) ||
        lb_check_not_blocks(&f, "qlinear_dequant_t", c.err) ||
        lb_check_int(kb0, "kb0", 0, lb_ql_kblocks(K) - 1, c.err) ||
        lb_check_int(kb1, "kb1", kb0 + 1, lb_ql_kblocks(K), c.err))
        goto fail;
    if (!lb_ql_packable(K, g)) {
        lb_fail(c.err, "group_size: %lld has no packed CPU layout", (long long)g);
        goto fail;
    }
    if (!lb_ql_holds(&f)) {
        lb_fail(c.err, "format: format code %lld has no packed CPU layout", (long long)f.fmt);
        goto fail;
    }
    if (ql_packed_shape(N, K, f.bits, shape, c.err) || ql_check_packed(&p, shape, c.err) ||
        ql_check_params(&s, &z, &f, K, g, &Ns, c.err))
        goto fail;
    if (Ns != N) {
        lb_fail(c.err, "scales: has %lld rows, expected N = %lld", (long long)Ns, (long long)N);
        goto fail;
    }
    if (p.device_type != lb_t.dev_cpu || s.device_type != lb_t.dev_cpu) {
        lb_fail(c.err, "packed: the CPU kernel layout lives on the CPU");
        goto fail;
    }
    {
        /* (kb1 - kb0) * 32 <= Kp and NT * 16 fit: the packed layout of this size exists */
        const int64_t osz[2] = {(kb1 - kb0) * LB_QL_KBLK, lb_ql_tiles(N) * LB_QL_TILE};
        if (lb_check_numel(osz, 2, 4, "N", c.err) ||
            lb_call_out(&c, 2, osz, lb_t.dt_f32, &p, &po) || lb_call_exec(&c, &p))
            goto fail;
        lb_ql_dequant_t_cpu((const int32_t*)p.data, (const float*)s.data,
                            (const uint8_t*)z.data, N, K, g, &f, kb0, kb1, (float*)po);
    }
    LB_CALL_END(c);
}

int lb_ops_ql_scheme(int act, int64_t fmt, int64_t bits, int symmetric, int64_t M, int packable) {
    lb_fmt f;
    if (act < 0 || act >= LB_ACT_COUNT || lb_fmt_init(&f, fmt, bits, symmetric)) return -1;
    if (f.storage == LB_STORE_BLOCKS) return lb_qlb_scheme(act, M); /* the GGUF-block kernels */
    return lb_ql_scheme(act, &f, M, packable && lb_ql_holds(&f));
}

const lb_int_constant lb_consts_qlinear[] = {
    {"QS_FLOAT", LB_QS_FLOAT}, {"QS_INT8", LB_QS_INT8}, {"QS_INT8X2", LB_QS_INT8X2}, {NULL, 0},
};

const lb_op_def lb_ops_qlinear[] = {
    {"qlinear_dequant_t", QL_DEQUANT_T_SCHEMA, lb_boxed_qlinear_dequant_t, 0},
    {"qlinear_pack", QL_PACK_SCHEMA, lb_boxed_qlinear_pack, 0},
    {"qlinear_unpack", QL_UNPACK_SCHEMA, lb_boxed_qlinear_unpack, 0},
    {"quant_linear", QL_LINEAR_SCHEMA, lb_boxed_quant_linear, 1},
    {NULL, NULL, NULL, 0},
};
