/* csrc/ops/lb_check.h: the helpers every op family's glue (csrc/ops/<stem>.c) shares: one boxed
 * call's handle set (owned arguments, results, scratch, device context, error text) that frees
 * every tensor handle on any failure path and raises; range checks of int schema arguments
 * before they are narrowed; and the argument checks of weights, format specs, packed weights
 * (codes + scales + zeros), devices and sizes. Messages read "<arg>: <what is wrong>". */
#ifndef LOWBIT_OPS_CHECK_H
#define LOWBIT_OPS_CHECK_H

#include "../lb_ops.h"

#define LB_CALL_MAX_IN 8
#define LB_CALL_MAX_OUT 4

/* One boxed call. lb_call_begin takes the first n_in stack slots (the op's Tensor arguments,
 * owned handles). Results made with lb_call_out go to the stack in order on success; scratch
 * made with lb_call_tmp is freed on every path. */
typedef struct {
    const char* op; /* "lowbit::<name>" */
    char err[LB_ERR_LEN];
    AtenTensorHandle in[LB_CALL_MAX_IN];
    AtenTensorHandle out[LB_CALL_MAX_OUT];
    AtenTensorHandle tmp[LB_CALL_MAX_OUT];
    int n_in, n_out, n_tmp;
    lb_exec exec;
    lb_check_call* chk; /* a check-only call (csrc/lb_ops.h), else NULL */
} lb_call;

void lb_call_begin(lb_call* c, const char* op, const StableIValue* stack, int n_in);
/* Describes input i as `name` (lb_describe; a check-only call's description); 0 or -1 with
 * c->err set. */
int lb_call_arg(lb_call* c, int i, const char* name, lb_tensor* t);
/* A new contiguous result / scratch tensor on like's device; *data gets its storage (a check-only
 * call records the result and sets *data to NULL). */
int lb_call_out(lb_call* c, int64_t ndim, const int64_t* sizes, int32_t dtype,
                const lb_tensor* like, void** data);
int lb_call_tmp(lb_call* c, int64_t ndim, const int64_t* sizes, int32_t dtype,
                const lb_tensor* like, void** data);
/* Enters t's device (lb_exec_begin into c->exec; left by lb_call_return / lb_call_fail). The line
 * between the checks and the work: every kernel runs after it. In a check-only call it returns
 * -1 and the call's `goto fail` ends it as a success. */
int lb_call_exec(lb_call* c, const lb_tensor* t);
/* Success: frees the inputs and scratch, leaves the device, puts the results on the stack. */
void lb_call_return(lb_call* c, StableIValue* stack);
/* Failure: frees everything the call holds, then raises c->err as a torch error. */
void lb_call_fail(lb_call* c);

/* The definition line of a boxed kernel (the dispatcher's calling convention). */
#define LB_BOXED(name)                                                                 \
    static void name(StableIValue* stack, uint64_t nargs __attribute__((unused)),     \
                     uint64_t nouts __attribute__((unused)))
/* The end of a boxed kernel's body: success returns the results; the label fail: (where every
 * `goto fail` lands) frees what the call holds and raises. */
#define LB_CALL_END(c)             \
    lb_call_return(&(c), stack);   \
    return;                        \
fail:                              \
    lb_call_fail(&(c))

/* Formats err ("<arg>: <what is wrong>") and returns -1. */
int lb_fail(char* err, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

/* An int schema argument in [lo, hi]: 0, or -1 with "<name>: must be in [lo, hi], got v". */
int lb_check_int(int64_t v, const char* name, int64_t lo, int64_t hi, char* err);
/* A float dtype code (LB_DT_*) named `name`. */
int lb_check_dtype_code(int64_t dt, const char* name, char* err);

/* (fmt, bits, group_size, symmetric) against K (> 0) columns, resolving *f. */
int lb_check_spec(int64_t fmt, int64_t bits, int64_t g, bool sym, int64_t K, lb_fmt* f,
                  char* err);
/* An op without a path for block rows (LB_STORE_BLOCKS, FORMATS.md 1.8) yet: -1 with
 * "format <name>: <op> does not take llama.cpp block types yet" for such a row, else 0. */
int lb_check_not_blocks(const lb_fmt* f, const char* op, char* err);
/* A 2-D, non-empty, contiguous float32/bf16/f16 tensor. */
int lb_check_weight(const lb_tensor* t, const char* name, char* err);
/* A float32/bf16/f16 tensor: its LB_DT_* code, or -1 with err. */
int lb_check_float(const lb_tensor* t, const char* name, char* err);
/* b on a's device (names the second argument). */
int lb_check_same_device(const lb_tensor* b, const char* name, const lb_tensor* a,
                         const char* aname, char* err);
/* The packed weight of K columns in format f: codes uint8 (N, row_bytes(K)), scales float32
 * (N, G) or (N, G, 2), zeros uint8 (N, G for INT asym else 0), contiguous, one device; sets *N.
 * names: the three arguments' names. */
int lb_check_qweight(const lb_tensor* codes, const lb_tensor* scales, const lb_tensor* zeros,
                     const char* const names[3], const lb_fmt* f, int64_t K, int64_t g,
                     int64_t* N, char* err);
/* The schema names of a packed weight's tensors: "codes", "scales", "zeros". */
extern const char* const lb_qweight_names[3];
/* The prologue of an op whose first three tensors are a packed weight of K columns with
 * (fmt, bits, group_size, symmetric) in spec[0..3]: describes them, then checks K > 0, the spec
 * and the packed weight; resolves *f and *N. */
int lb_call_qweight(lb_call* c, lb_tensor t[3], const StableIValue* spec, int64_t K, lb_fmt* f,
                    int64_t* N);
/* bias: numel 0 means none (returns 0), else (N,) of x's dtype, contiguous, on x's device
 * (returns 1); -1 with err. */
int lb_check_bias(const lb_tensor* b, const lb_tensor* x, int64_t N, char* err);
/* The product of n sizes must fit (as a tensor of elem_size bytes per element); names the
 * argument the sizes come from. */
int lb_check_numel(const int64_t* sizes, int n, int64_t elem_size, const char* name, char* err);

#endif /* LOWBIT_OPS_CHECK_H */
