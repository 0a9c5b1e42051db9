/* csrc/lb_torch.h: lowbit's own C declarations of the PyTorch stable-ABI functions it uses
 * (prototypes copied by hand from torch/csrc/inductor/aoti_torch/c/shim.h and
 * torch/csrc/stable/c/shim.h, which are C++-only), resolved at import time with dlsym into one
 * table, plus the small helpers every op's glue shares (tensor description, allocation, errors,
 * unboxing; csrc/ops/lb_common.c). Only csrc/module.c and the glue (csrc/ops) include it. */
#ifndef LOWBIT_TORCH_H
#define LOWBIT_TORCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int32_t AOTITorchError;
typedef struct AtenTensorOpaque* AtenTensorHandle;
typedef struct TorchLibraryOpaque* TorchLibraryHandle;
typedef struct DeviceGuardOpaque* DeviceGuardHandle;
typedef uint64_t StableIValue;
typedef void (*lb_boxed_fn)(StableIValue* stack, uint64_t nargs, uint64_t nouts);
typedef void (*lb_torch_parallel_fn)(int64_t begin, int64_t end, void* ctx);

/* The floor: torch 2.11 (TORCH_ABI_VERSION layout major<<56 | minor<<48 | patch<<40). Passed as
 * the extension build version so newer torch keeps 2.11 semantics for our schemas. */
#define LB_TORCH_ABI_FLOOR 0x020B000000000000ULL

/* X(name, return type, parameter list): the required symbols, all in libtorch_cpu. */
#define LB_TORCH_REQUIRED(X)                                                                     \
    X(aoti_torch_abi_version, uint64_t, (void))                                                 \
    X(aoti_torch_check, void, (bool cond, const char* func, const char* file, uint32_t line,    \
                               const char* msg))                                                \
    X(aoti_torch_library_init_def, AOTITorchError,                                              \
      (const char* ns, const char* file, uint32_t line, TorchLibraryHandle* out))               \
    X(aoti_torch_library_init_impl, AOTITorchError,                                             \
      (const char* ns, const char* k, const char* file, uint32_t line, TorchLibraryHandle* out)) \
    X(aoti_torch_library_def, AOTITorchError, (TorchLibraryHandle lib, const char* schema))     \
    X(torch_library_impl, AOTITorchError,                                                       \
      (TorchLibraryHandle lib, const char* name, lb_boxed_fn fn, uint64_t build_version))       \
    X(aoti_torch_delete_tensor_object, AOTITorchError, (AtenTensorHandle t))                    \
    X(aoti_torch_get_data_ptr, AOTITorchError, (AtenTensorHandle t, void** out))                \
    X(aoti_torch_get_dim, AOTITorchError, (AtenTensorHandle t, int64_t* out))                   \
    X(aoti_torch_get_numel, AOTITorchError, (AtenTensorHandle t, int64_t* out))                 \
    X(aoti_torch_get_sizes, AOTITorchError, (AtenTensorHandle t, int64_t** out))                \
    X(aoti_torch_get_strides, AOTITorchError, (AtenTensorHandle t, int64_t** out))              \
    X(aoti_torch_get_dtype, AOTITorchError, (AtenTensorHandle t, int32_t* out))                 \
    X(aoti_torch_get_device_type, AOTITorchError, (AtenTensorHandle t, int32_t* out))           \
    X(aoti_torch_get_device_index, AOTITorchError, (AtenTensorHandle t, int32_t* out))          \
    X(aoti_torch_is_contiguous, AOTITorchError, (AtenTensorHandle t, bool* out))                \
    X(aoti_torch_empty_strided, AOTITorchError,                                                 \
      (int64_t ndim, const int64_t* sizes, const int64_t* strides, int32_t dtype,               \
       int32_t device_type, int32_t device_index, AtenTensorHandle* out))                       \
    X(aoti_torch_create_device_guard, AOTITorchError, (int32_t index, DeviceGuardHandle* out))  \
    X(aoti_torch_delete_device_guard, AOTITorchError, (DeviceGuardHandle g))                    \
    X(aoti_torch_dtype_float32, int32_t, (void))                                                \
    X(aoti_torch_dtype_bfloat16, int32_t, (void))                                               \
    X(aoti_torch_dtype_float16, int32_t, (void))                                                \
    X(aoti_torch_dtype_uint8, int32_t, (void))                                                  \
    X(aoti_torch_dtype_int32, int32_t, (void))                                                  \
    X(aoti_torch_dtype_int64, int32_t, (void))                                                  \
    X(aoti_torch_device_type_cpu, int32_t, (void))                                              \
    X(aoti_torch_device_type_cuda, int32_t, (void))                                             \
    X(torch_parallel_for, AOTITorchError,                                                       \
      (int64_t begin, int64_t end, int64_t grain, lb_torch_parallel_fn fn, void* ctx))                \
    X(torch_get_num_threads, AOTITorchError, (uint32_t* out))

/* Optional: only in libtorch_cuda, and only needed when a CUDA tensor reaches a kernel. */
#define LB_TORCH_OPTIONAL(X) \
    X(aoti_torch_get_current_cuda_stream, AOTITorchError, (int32_t index, void** stream))

typedef struct {
#define LB_FIELD(name, ret, params) ret(*name) params;
    LB_TORCH_REQUIRED(LB_FIELD)
    LB_TORCH_OPTIONAL(LB_FIELD)
#undef LB_FIELD
    /* dtype and device codes, read once at load */
    int32_t dt_f32, dt_bf16, dt_f16, dt_u8, dt_i32, dt_i64, dev_cpu, dev_cuda;
} lb_torch_api;

extern lb_torch_api lb_t;

/* ---- helpers shared by the op glue (csrc/ops/lb_common.c) ---- */

#define LB_MAX_DIM 8
#define LB_ERR_LEN 512

/* What a kernel needs to know about a tensor argument. */
typedef struct {
    AtenTensorHandle h;
    void* data;
    int64_t dim, numel;
    int64_t sizes[LB_MAX_DIM];
    int64_t strides[LB_MAX_DIM];
    int32_t dtype, device_type, device_index;
    bool contiguous;
    int arg; /* its slot among the op's arguments (lb_call_arg), -1 if none */
} lb_tensor;

/* Reads the tensor's metadata; returns 0, or -1 with a message in err. */
int lb_describe(AtenTensorHandle h, const char* argname, lb_tensor* t, char* err);
/* lowbit dtype code (LB_DT_*) of a torch dtype code, -1 if it is not a float type we take. */
int lb_float_dtype(int32_t torch_dtype);
int32_t lb_torch_dtype(int lb_dtype);
/* Allocates a contiguous tensor like device of `like`; returns 0 or -1 with err. */
int lb_empty(int64_t ndim, const int64_t* sizes, int32_t dtype, const lb_tensor* like,
             AtenTensorHandle* out, char* err);
void lb_release(AtenTensorHandle* h);
/* Throws the message as a torch error (a C++ exception; callers free everything first). */
void lb_raise(const char* func, const char* msg);
/* Unboxing of scalar stack slots. */
int64_t lb_iv_int(StableIValue v);
bool lb_iv_bool(StableIValue v);
double lb_iv_double(StableIValue v);
/* Points the CPU kernels' runtime hook (csrc/cpu/lb_cpu.h) at torch's intra-op thread pool
 * (its OpenMP pool in the stock wheels, sized by torch.set_num_threads). */
void lb_torch_install_runtime(void);

#endif /* LOWBIT_TORCH_H */
