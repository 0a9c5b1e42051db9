/* csrc/lb_ops.h: the op-table type each family (csrc/ops/<stem>.c) exports to module.c, and the
 * device execution context of the glue. A family's kernel entry points are declared in
 * csrc/cpu/<stem>.h and cuda/<stem>.cuh. */
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

/* Each op family's table, defined in csrc/ops/<stem>.c. Weak, so module.c can list every family
 * and skip the ones a build does not contain. */
#define LB_OP_FAMILIES(X) X(fake_quant) X(kl_loss) X(qlinear) X(sparse24) X(clip_search)
#define LB_DECLARE_FAMILY(stem) extern const lb_op_def lb_ops_##stem[] __attribute__((weak));
LB_OP_FAMILIES(LB_DECLARE_FAMILY)
#undef LB_DECLARE_FAMILY

/* ---- check-only calls: the argument checks of the fake kernels ----
 * A boxed kernel run on argument descriptions instead of tensors (python/lowbit/_fakes.py calls
 * it through lowbit._C.check for the meta device, FakeTensors and torch.compile): the glue's own
 * checks run unchanged on the descriptions (no data pointer), each result is recorded instead
 * of allocated, and the call ends where the work would begin (lb_call_exec), or at the first
 * failed check with its "<arg>: <what is wrong>" message. So a fake raises exactly where and as
 * the real op does, from the one copy of the checks. */
#define LB_CHECK_MAX_ARGS 24
#define LB_CHECK_MAX_OUT 4
typedef struct {
    lb_tensor args[LB_CHECK_MAX_ARGS]; /* the tensor arguments, by stack slot (no data) */
    int n_out;
    int64_t out_dim[LB_CHECK_MAX_OUT];
    int64_t out_sizes[LB_CHECK_MAX_OUT][LB_MAX_DIM];
    int32_t out_dtype[LB_CHECK_MAX_OUT];
    int out_like[LB_CHECK_MAX_OUT]; /* the argument whose device a result takes */
    int failed;
    char err[LB_ERR_LEN];
    /* set by the glue's helpers (csrc/ops/lb_check.c) */
    int stopped;
} lb_check_call;
/* Runs op's boxed kernel as a check-only call on stack (its scalar slots; tensor slots are read
 * from chk->args) and fills chk. Returns 0, or -1 if chk->failed. */
int lb_check_run(const lb_op_def* op, StableIValue* stack, uint64_t nargs, lb_check_call* chk);

/* An int constant lowbit._C exports: lb_cpu_constants (the CPU ISA codes, csrc/ops/lb_common.c)
 * and each family's lb_consts_<stem> (weak, like the op tables; a list ends with a NULL name). */
typedef struct {
    const char* name;
    long value;
} lb_int_constant;
extern const lb_int_constant lb_cpu_constants[];
#define LB_DECLARE_CONSTS(stem) extern const lb_int_constant lb_consts_##stem[] __attribute__((weak));
LB_OP_FAMILIES(LB_DECLARE_CONSTS)
#undef LB_DECLARE_CONSTS

/* The CPU ISA switch of the kernels (csrc/cpu/lb_cpu.h), for module.c: the names of the codes in
 * order (comma-separated), whether this CPU runs one, select one, the one in use. */
extern const char lb_isa_names[];
int lb_ops_isa_supported(int isa);
void lb_ops_isa_set(int isa);
int lb_ops_isa_code(void);
/* The scheme (LB_QS_*, csrc/cpu/qlinear.h) quant_linear runs for M rows of (fmt, bits,
 * symmetric) in accuracy mode act on the CPU, or -1 for an unknown act or format
 * (csrc/ops/qlinear.c). */
int lb_ops_ql_scheme(int act, int64_t fmt, int64_t bits, int symmetric, int64_t M, int packable);

/* Where a kernel runs: CPU, or CUDA with the current stream of the tensor's device and a device
 * guard set (custom ops get no automatic guard). lb_exec_begin returns 0 or -1 with err. */
typedef struct {
    int cuda;
    void* stream;
    DeviceGuardHandle guard;
} lb_exec;
int lb_exec_begin(const lb_tensor* t, lb_exec* e, char* err);
void lb_exec_end(lb_exec* e);
/* 0 if rc == 0, else -1 with "CUDA error in <what>: ..." in err. */
int lb_cuda_status(int rc, const char* what, char* err);

#ifdef LOWBIT_WITH_CUDA
#include "../cuda/lb_common.cuh"
#endif

#endif /* LOWBIT_OPS_H */
