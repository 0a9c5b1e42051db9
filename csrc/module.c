/* csrc/module.c: the extension module lowbit._C (plain Python C API): resolves the stable-ABI
 * table from the already-loaded libtorch, registers every op's schema and its CPU/CUDA kernels
 * in PyTorch's dispatcher, and exposes build facts and the CPU ISA switch to Python. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "lb_ops.h"
#include "lb_torch.h"

#ifndef LOWBIT_CUDA_ARCHS
#define LOWBIT_CUDA_ARCHS ""
#endif

/* Every op family's table (csrc/ops/<stem>.c); a family absent from this build is NULL. */
#define LB_FAMILY_ENTRY(stem) lb_ops_##stem,
static const lb_op_def* const lb_all_ops[] = {LB_OP_FAMILIES(LB_FAMILY_ENTRY)};
#undef LB_FAMILY_ENTRY
#define LB_N_FAMILIES (sizeof lb_all_ops / sizeof lb_all_ops[0])

/* Library handles live for the process: deleting one would deregister its ops. */
static TorchLibraryHandle lb_lib_def, lb_lib_cpu, lb_lib_cuda;
static int lb_loaded;

static void* lb_open_loaded(const char* path) {
    /* RTLD_NOLOAD: take the copy torch already loaded, never a second one. */
    void* h = dlopen(path, RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);
    return h;
}

/* _C.load(libtorch_cpu_path, libtorch_cuda_path or None, torch_version) */
static PyObject* lb_py_load(PyObject* self, PyObject* args) {
    const char *cpu_path, *cuda_path = NULL, *torch_version;
    void *hcpu, *hcuda = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "szs", &cpu_path, &cuda_path, &torch_version)) return NULL;
    if (lb_loaded) Py_RETURN_NONE;
    hcpu = lb_open_loaded(cpu_path);
    if (!hcpu) {
        PyErr_Format(PyExc_ImportError,
                     "lowbit: libtorch_cpu is not loaded from %s (torch %s): %s", cpu_path,
                     torch_version, dlerror());
        return NULL;
    }
    if (cuda_path) hcuda = lb_open_loaded(cuda_path);

#define LB_RESOLVE(name, ret, params)                                                          \
    *(void**)(&lb_t.name) = dlsym(hcpu, #name);                                                \
    if (!lb_t.name) {                                                                          \
        PyErr_Format(PyExc_ImportError,                                                        \
                     "lowbit: the installed torch %s lacks the stable-ABI symbol '%s' "        \
                     "(lowbit needs torch >= 2.11)",                                           \
                     torch_version, #name);                                                    \
        return NULL;                                                                           \
    }
    LB_TORCH_REQUIRED(LB_RESOLVE)
#undef LB_RESOLVE
#define LB_RESOLVE_OPT(name, ret, params) \
    *(void**)(&lb_t.name) = hcuda ? dlsym(hcuda, #name) : NULL;
    LB_TORCH_OPTIONAL(LB_RESOLVE_OPT)
#undef LB_RESOLVE_OPT

    if (lb_t.aoti_torch_abi_version() < LB_TORCH_ABI_FLOOR) {
        PyErr_Format(PyExc_ImportError,
                     "lowbit: torch %s reports stable ABI 0x%llx, older than the 2.11 floor",
                     torch_version, (unsigned long long)lb_t.aoti_torch_abi_version());
        return NULL;
    }
    lb_t.dt_f32 = lb_t.aoti_torch_dtype_float32();
    lb_t.dt_bf16 = lb_t.aoti_torch_dtype_bfloat16();
    lb_t.dt_f16 = lb_t.aoti_torch_dtype_float16();
    lb_t.dt_u8 = lb_t.aoti_torch_dtype_uint8();
    lb_t.dt_i32 = lb_t.aoti_torch_dtype_int32();
    lb_t.dt_i64 = lb_t.aoti_torch_dtype_int64();
    lb_t.dev_cpu = lb_t.aoti_torch_device_type_cpu();
    lb_t.dev_cuda = lb_t.aoti_torch_device_type_cuda();

    if (lb_t.aoti_torch_library_init_def("lowbit", __FILE__, __LINE__, &lb_lib_def) ||
        lb_t.aoti_torch_library_init_impl("lowbit", "CPU", __FILE__, __LINE__, &lb_lib_cpu)) {
        PyErr_SetString(PyExc_ImportError, "lowbit: could not create the 'lowbit' op library");
        return NULL;
    }
#ifdef LOWBIT_WITH_CUDA
    if (lb_t.aoti_torch_get_current_cuda_stream &&
        lb_t.aoti_torch_library_init_impl("lowbit", "CUDA", __FILE__, __LINE__, &lb_lib_cuda)) {
        PyErr_SetString(PyExc_ImportError, "lowbit: could not create the CUDA op library");
        return NULL;
    }
#endif
    for (size_t fi = 0; fi < LB_N_FAMILIES; ++fi) {
        if (!lb_all_ops[fi]) continue;
        for (const lb_op_def* op = lb_all_ops[fi]; op->name; ++op) {
            if (lb_t.aoti_torch_library_def(lb_lib_def, op->schema)) {
                PyErr_Format(PyExc_ImportError, "lowbit: could not define schema '%s'",
                             op->schema);
                return NULL;
            }
            if (lb_t.torch_library_impl(lb_lib_cpu, op->name, op->fn, LB_TORCH_ABI_FLOOR)) {
                PyErr_Format(PyExc_ImportError, "lowbit: could not register CPU '%s'", op->name);
                return NULL;
            }
            if (lb_lib_cuda && op->cuda &&
                lb_t.torch_library_impl(lb_lib_cuda, op->name, op->fn, LB_TORCH_ABI_FLOOR)) {
                PyErr_Format(PyExc_ImportError, "lowbit: could not register CUDA '%s'",
                             op->name);
                return NULL;
            }
        }
    }
    lb_isa = lb_isa_supported(LB_ISA_AVX512) ? LB_ISA_AVX512
             : lb_isa_supported(LB_ISA_AVX2) ? LB_ISA_AVX2
                                              : LB_ISA_SCALAR;
    lb_loaded = 1;
    Py_RETURN_NONE;
}

static PyObject* lb_py_set_isa(PyObject* self, PyObject* args) {
    int isa;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &isa)) return NULL;
    if (isa < LB_ISA_SCALAR || isa > LB_ISA_AVX512 || !lb_isa_supported(isa)) {
        PyErr_Format(PyExc_ValueError, "isa: %d is not supported on this CPU", isa);
        return NULL;
    }
    lb_isa = isa;
    Py_RETURN_NONE;
}

static PyObject* lb_py_get_isa(PyObject* self, PyObject* noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(lb_isa);
}

static PyObject* lb_py_isa_supported(PyObject* self, PyObject* args) {
    int isa;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &isa)) return NULL;
    return PyBool_FromLong(lb_isa_supported(isa));
}

static PyMethodDef lb_methods[] = {
    {"load", lb_py_load, METH_VARARGS,
     "load(libtorch_cpu, libtorch_cuda_or_None, torch_version): resolve and register ops"},
    {"set_isa", lb_py_set_isa, METH_VARARGS, "set_isa(code): 0 scalar, 1 avx2, 2 avx512"},
    {"get_isa", lb_py_get_isa, METH_NOARGS, "the active CPU ISA code"},
    {"isa_supported", lb_py_isa_supported, METH_VARARGS, "whether this CPU runs the ISA"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lb_module = {
    PyModuleDef_HEAD_INIT, "lowbit._C", "lowbit's C op library (see lowbit._ops)", -1, lb_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    PyObject* m = PyModule_Create(&lb_module);
    if (!m) return NULL;
#ifdef LOWBIT_WITH_CUDA
    if (PyModule_AddIntConstant(m, "CUDA_BUILT", 1)) goto fail;
#else
    if (PyModule_AddIntConstant(m, "CUDA_BUILT", 0)) goto fail;
#endif
    if (PyModule_AddStringConstant(m, "CUDA_ARCHS", LOWBIT_CUDA_ARCHS)) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
