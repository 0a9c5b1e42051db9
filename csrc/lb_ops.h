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
