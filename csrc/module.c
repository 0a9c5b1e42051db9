/* csrc/module.c: the extension module lowbit._C (plain Python C API): resolves the stable-ABI
 * table from the already-loaded libtorch, registers every op's schema and its CPU/CUDA kernels
 * in PyTorch's dispatcher, points the CPU kernels' runtime hook at torch's thread pool, and
 * exposes build facts, the CPU ISA switch and every format / layout constant to Python. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <stdint.h>
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
    lb_torch_install_runtime(); /* torch's pool, the best ISA of this CPU */
    lb_loaded = 1;
    Py_RETURN_NONE;
}

static PyObject* lb_py_set_isa(PyObject* self, PyObject* args) {
    int isa;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &isa)) return NULL;
    if (!lb_ops_isa_supported(isa)) {
        PyErr_Format(PyExc_ValueError, "isa: %d is not supported on this CPU", isa);
        return NULL;
    }
    lb_ops_isa_set(isa);
    Py_RETURN_NONE;
}

static PyObject* lb_py_get_isa(PyObject* self, PyObject* noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(lb_ops_isa_code());
}

static PyObject* lb_py_isa_supported(PyObject* self, PyObject* args) {
    int isa;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &isa)) return NULL;
    return PyBool_FromLong(lb_ops_isa_supported(isa));
}

/* _C.ql_scheme(act, fmt, bits, symmetric, M, packable): the QS_* scheme quant_linear runs
 * for M rows of that weight on the CPU (what "auto" resolves to). */
static PyObject* lb_py_ql_scheme(PyObject* self, PyObject* args) {
    int act, fmt, bits, sym, packable, sch;
    long long M;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiipLp", &act, &fmt, &bits, &sym, &M, &packable)) return NULL;
    if ((sch = lb_ops_ql_scheme(act, fmt, bits, sym, (int64_t)M, packable)) < 0) {
        PyErr_SetString(PyExc_ValueError, "ql_scheme: unknown act code or format");
        return NULL;
    }
    return PyLong_FromLong(sch);
}

/* ---- _C.check: the glue's checks on argument descriptions (the fakes, csrc/lb_ops.h) ---- */
static const lb_op_def* lb_find_op(const char* name) {
    for (size_t fi = 0; fi < LB_N_FAMILIES; ++fi)
        if (lb_all_ops[fi])
            for (const lb_op_def* op = lb_all_ops[fi]; op->name; ++op)
                if (!strcmp(op->name, name)) return op;
    return NULL;
}

/* The dtypes a description names (any other name is a dtype no check accepts). */
#define LB_CHECK_DTYPES(X) \
    X("float32", dt_f32) X("bfloat16", dt_bf16) X("float16", dt_f16) X("uint8", dt_u8) \
    X("int32", dt_i32) X("int64", dt_i64)
static int32_t lb_dtype_of_name(const char* name) {
#define LB_DT_FROM(n, field) \
    if (!strcmp(name, n)) return lb_t.field;
    LB_CHECK_DTYPES(LB_DT_FROM)
#undef LB_DT_FROM
    return INT32_MIN;
}
static const char* lb_name_of_dtype(int32_t dt) {
#define LB_DT_TO(n, field) \
    if (dt == lb_t.field) return n;
    LB_CHECK_DTYPES(LB_DT_TO)
#undef LB_DT_TO
    return "unknown";
}

/* One tensor description ("t", dtype name, device type "cpu" | "cuda" | other, device index,
 * contiguous, sizes) into t. */
static int lb_parse_tensor(PyObject* item, lb_tensor* t) {
    const char *tag, *dtype, *dev;
    int index, contiguous;
    PyObject* sizes;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(item, "sssipO", &tag, &dtype, &dev, &index, &contiguous, &sizes))
        return -1;
    memset(t, 0, sizeof *t);
    t->arg = -1;
    t->dtype = lb_dtype_of_name(dtype);
    t->device_type = !strcmp(dev, "cpu") ? lb_t.dev_cpu : !strcmp(dev, "cuda") ? lb_t.dev_cuda : -1000;
    t->device_index = index;
    t->contiguous = contiguous != 0;
    if ((n = PySequence_Size(sizes)) < 0) return -1;
    t->dim = n;
    t->numel = 1;
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* v = PySequence_GetItem(sizes, i);
        long long d = v ? PyLong_AsLongLong(v) : -1;
        Py_XDECREF(v);
        if (d == -1 && PyErr_Occurred()) return -1;
        if (i < LB_MAX_DIM) t->sizes[i] = d;
        t->numel *= d; /* sizes of a real tensor: the product fits */
    }
    return 0;
}

/* _C.check(op_name, args): runs the op's glue as a check-only call on args, one tagged tuple per
 * schema argument in order: ("t", ...) a tensor description (lb_parse_tensor), ("i", int),
 * ("f", float), ("b", bool). Raises the RuntimeError the op would raise, or returns its results
 * as a list of (sizes, dtype name, index of the argument whose device it takes). */
static PyObject* lb_py_check(PyObject* self, PyObject* args) {
    const char* name;
    PyObject *seq, *out;
    const lb_op_def* op;
    StableIValue stack[LB_CHECK_MAX_ARGS];
    static lb_check_call chk; /* under the GIL */
    Py_ssize_t n;
    (void)self;
    if (!PyArg_ParseTuple(args, "sO", &name, &seq)) return NULL;
    if (!(op = lb_find_op(name))) return PyErr_Format(PyExc_ValueError, "check: no op '%s'", name);
    if ((n = PySequence_Size(seq)) < 0) return NULL;
    if (n > LB_CHECK_MAX_ARGS) return PyErr_Format(PyExc_ValueError, "check: too many arguments");
    memset(&chk, 0, sizeof chk);
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* item = PySequence_GetItem(seq, i);
        const char* tag;
        int rc = -1;
        stack[i] = 0;
        if (item && PyTuple_Check(item) && PyTuple_GET_SIZE(item) >= 2 &&
            (tag = PyUnicode_AsUTF8(PyTuple_GET_ITEM(item, 0)))) {
            PyObject* v = PyTuple_GET_ITEM(item, 1);
            if (tag[0] == 't') {
                rc = lb_parse_tensor(item, &chk.args[i]);
            } else if (tag[0] == 'i') {
                long long x = PyLong_AsLongLong(v);
                if (!(x == -1 && PyErr_Occurred())) {
                    memcpy(&stack[i], &x, sizeof x);
                    rc = 0;
                }
            } else if (tag[0] == 'f') {
                double x = PyFloat_AsDouble(v);
                if (!(x == -1.0 && PyErr_Occurred())) {
                    memcpy(&stack[i], &x, sizeof x);
                    rc = 0;
                }
            } else if (tag[0] == 'b') {
                int x = PyObject_IsTrue(v);
                if (x >= 0) {
                    stack[i] = (StableIValue)x;
                    rc = 0;
                }
            }
        }
        Py_XDECREF(item);
        if (rc) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "check: argument %zd is not a tagged tuple", i);
            return NULL;
        }
    }
    if (lb_check_run(op, stack, (uint64_t)n, &chk)) {
        PyErr_SetString(PyExc_RuntimeError, chk.err);
        return NULL;
    }
    if (!(out = PyList_New(chk.n_out))) return NULL;
    for (int k = 0; k < chk.n_out; ++k) {
        PyObject* sz = PyTuple_New(chk.out_dim[k]);
        PyObject* item = NULL;
        for (int64_t i = 0; sz && i < chk.out_dim[k]; ++i) {
            PyObject* d = PyLong_FromLongLong(chk.out_sizes[k][i]);
            if (!d) {
                Py_CLEAR(sz);
                break;
            }
            PyTuple_SET_ITEM(sz, i, d);
        }
        if (sz) item = Py_BuildValue("(Nsi)", sz, lb_name_of_dtype(chk.out_dtype[k]), chk.out_like[k]);
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, item);
    }
    return out;
}

/* A tuple of Python floats from n floats (NULL with an exception set on failure). */
static PyObject* lb_py_floats(const float* v, int n) {
    PyObject* t = PyTuple_New(n);
    for (int i = 0; t && i < n; ++i) {
        PyObject* x = PyFloat_FromDouble((double)v[i]);
        if (!x) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

/* _C.formats(): the format table of csrc/formats.h, one dict per row in code order. */
static PyObject* lb_py_formats(PyObject* self, PyObject* noargs) {
    PyObject* out = PyTuple_New(LB_FMT_COUNT);
    (void)self;
    (void)noargs;
    for (int i = 0; out && i < LB_FMT_COUNT; ++i) {
        const lb_format* r = &lb_formats[i];
        PyObject *bits = PyList_New(0), *levels = PyDict_New(), *kinds, *row = NULL;
        for (int b = 1; bits && levels && b <= LB_MAX_BITS; ++b) {
            PyObject *key, *lv;
            if (!((r->bits >> b) & 1u)) continue;
            key = PyLong_FromLong(b);
            if (!key || PyList_Append(bits, key)) {
                Py_XDECREF(key);
                Py_CLEAR(bits);
                break;
            }
            if (r->levels[b]) {
                lv = lb_py_floats(r->levels[b], r->nlev[b]);
                if (!lv || PyDict_SetItem(levels, key, lv)) Py_CLEAR(levels);
                Py_XDECREF(lv);
            }
            Py_DECREF(key);
        }
        kinds = Py_BuildValue("(ii)", r->kind[0], r->kind[1]);
        if (bits && levels && kinds)
            row = Py_BuildValue(
                "{s:s,s:i,s:N,s:s,s:i,s:i,s:i,s:i,s:i,s:(ii),s:i,s:O,s:O}", "name", r->name,
                "code", i,
                "bits", PyList_AsTuple(bits), "storage",
                r->storage == LB_STORE_BLOCKS ? "blocks" : "codes", "block", r->block,
                "sub_block", r->sub_block, "type_size", r->type_size, "scale_bits",
                r->scale_bits, "layout", r->layout, "half_at", r->half_at[0], r->half_at[1],
                "symmetric", r->symmetric, "kinds", kinds,
                "levels", levels);
        Py_XDECREF(bits);
        Py_XDECREF(levels);
        Py_XDECREF(kinds);
        if (!row) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, row);
    }
    return out;
}

/* _C.kinds(): the kind table of csrc/formats.h, one dict per kind in code order. */
static PyObject* lb_py_kinds(PyObject* self, PyObject* noargs) {
    PyObject* out = PyTuple_New(LB_KIND_COUNT);
    (void)self;
    (void)noargs;
    for (int i = 0; out && i < LB_KIND_COUNT; ++i) {
        const lb_kind* k = &lb_kinds[i];
        PyObject* row = Py_BuildValue("{s:i,s:s,s:i,s:O,s:O}", "code", i, "name", k->name,
                                      "scales", k->scales, "zeros", k->zeros ? Py_True : Py_False,
                                      "levels", k->levels ? Py_True : Py_False);
        if (!row) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, row);
    }
    return out;
}

static PyMethodDef lb_methods[] = {
    {"load", lb_py_load, METH_VARARGS,
     "load(libtorch_cpu, libtorch_cuda_or_None, torch_version): resolve and register ops"},
    {"set_isa", lb_py_set_isa, METH_VARARGS, "set_isa(code): one of the ISA_* codes"},
    {"get_isa", lb_py_get_isa, METH_NOARGS, "the active CPU ISA code"},
    {"isa_supported", lb_py_isa_supported, METH_VARARGS, "whether this CPU runs the ISA"},
    {"check", lb_py_check, METH_VARARGS,
     "check(op_name, args): the op's argument checks on descriptions; its results' shapes"},
    {"formats", lb_py_formats, METH_NOARGS,
     "the format table (csrc/formats.h): one dict per row, in format-code order"},
    {"kinds", lb_py_kinds, METH_NOARGS,
     "the kind table (csrc/formats.h): one dict per kind, in kind-code order"},
    {"ql_scheme", lb_py_ql_scheme, METH_VARARGS,
     "ql_scheme(act, fmt, bits, symmetric, M, packable): the QS_* scheme quant_linear runs"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lb_module = {
    PyModuleDef_HEAD_INIT, "lowbit._C", "lowbit's C op library (see lowbit._ops)", -1, lb_methods,
    NULL, NULL, NULL, NULL,
};

/* ---- the constants Python reads instead of copying them (lowbit._C.<NAME>) ----
 * Formats and codes (csrc/formats.h; formats() and kinds() give the whole tables):
 *   FMT_<NAME>, FMT_<NAME>_BITS      per row of the format table: its `fmt` code and its bit
 *                                    widths as a mask (bit b set if b bits are supported)
 *   MAX_BITS                         the widest code (8)
 *   MAX_DIM                          the most dimensions an op's tensor argument may have (8)
 *   KIND_INT_ASYM, KIND_INT_SYM, KIND_LVL2, KIND_LVL1
 *                                    what (fmt, symmetric) resolves to: INT asymmetric (zero
 *                                    points stored), INT symmetric, two-scale NF/FP (scales
 *                                    (N, G, 2) = [s+, s-]), one-scale NF/FP
 *   DT_F32, DT_BF16, DT_F16          the float dtype codes (dequantize's `dtype`; the
 *                                    `scale_dtype` of fake_quant, fake_quant_backward,
 *                                    quantize and clip_search, FORMATS.md 1.6)
 *   STE_BITDISTILLER, STE_IDENTITY   fake_quant's `ste`
 *   KL_FORWARD, KL_REVERSE, KL_CAKLD, KL_JSD
 *                                    kl_loss's `kind`
 * CPU kernels (csrc/cpu/lb_cpu.h, through csrc/ops/lb_common.c):
 *   ISA_SCALAR, ISA_AVX2, ISA_AVX512, ISA_AVXVNNI, ISA_AVX512VNNI
 *                                    set_isa / get_isa / isa_supported codes; ISA_NAMES their
 *                                    names in code order, comma-separated
 * Layouts (csrc/layouts.h):
 *   (codes: a row of K b-bit codes is ceil(K*b / 8) bytes)
 *   QL_TILE                          rows per tile of the qlinear CPU layout (16)
 *   QL_WIDTHS                        the code widths the qlinear CPU layout holds, as a mask
 *   QL_KBLK                          K per block (32): packed is (ceil(N/16), ceil(K/32) *
 *                                    bits * 16) int32; the layout exists iff g % 32 == 0 or
 *                                    g == K
 *   QL_STEPS, QL_ABLK                integer-dot steps per K-block (8), activation block (32)
 *   ACT_FLOAT, ACT_INT8, ACT_AUTO    quant_linear's accuracy modes (FORMATS.md 4)
 *   QL_INT_MAX_M                     the most rows the integer kernels take (16)
 *   QS_FLOAT, QS_INT8, QS_INT8X2     what a mode runs (ql_scheme; csrc/ops/qlinear.c): float,
 *                                    int8 activations, int8 activations + an int8 quantized
 *                                    residual
 *   S24_GROUP, S24_KEPT              2:4 group length along K (4) and kept values per group (2)
 *   S24_GROUPS_PER_BYTE              meta nibbles per byte (2): meta is (N, ceil(K/4 / 2))
 *   S24_GRAD_X_MAX_M                 most rows of g sparse24_grad_x takes (8) */
#define LB_INT_CONSTANTS(X)                                                                     \
    X(MAX_BITS, LB_MAX_BITS) X(MAX_DIM, LB_MAX_DIM) X(QL_WIDTHS, LB_QL_WIDTHS)               \
    X(KIND_INT_ASYM, LB_KIND_INT_ASYM) X(KIND_INT_SYM, LB_KIND_INT_SYM)                         \
    X(KIND_LVL2, LB_KIND_LVL2) X(KIND_LVL1, LB_KIND_LVL1)                                       \
    X(DT_F32, LB_DT_F32) X(DT_BF16, LB_DT_BF16) X(DT_F16, LB_DT_F16)                            \
    X(STE_BITDISTILLER, LB_STE_BITDISTILLER) X(STE_IDENTITY, LB_STE_IDENTITY)                   \
    X(KL_FORWARD, LB_KL_FORWARD) X(KL_REVERSE, LB_KL_REVERSE) X(KL_CAKLD, LB_KL_CAKLD)          \
    X(KL_JSD, LB_KL_JSD)                                                                        \
    X(QL_TILE, LB_QL_TILE) X(QL_KBLK, LB_QL_KBLK) X(QL_STEPS, LB_QL_STEPS)                      \
    X(QL_ABLK, LB_QL_ABLK) X(QL_INT_MAX_M, LB_QL_INT_MAX_M)                                     \
    X(ACT_FLOAT, LB_ACT_FLOAT) X(ACT_INT8, LB_ACT_INT8) X(ACT_AUTO, LB_ACT_AUTO)                \
    X(S24_GROUP, LB24_GROUP) X(S24_KEPT, LB24_KEPT) X(S24_GROUPS_PER_BYTE, LB24_GROUPS_PER_BYTE) \
    X(S24_GRAD_X_MAX_M, LB24_GRAD_X_MAX_M)

PyMODINIT_FUNC PyInit__C(void) {
    PyObject* m = PyModule_Create(&lb_module);
    if (!m) return NULL;
#ifdef LOWBIT_WITH_CUDA
    if (PyModule_AddIntConstant(m, "CUDA_BUILT", 1)) goto fail;
#else
    if (PyModule_AddIntConstant(m, "CUDA_BUILT", 0)) goto fail;
#endif
    if (PyModule_AddStringConstant(m, "CUDA_ARCHS", LOWBIT_CUDA_ARCHS)) goto fail;
    if (PyModule_AddStringConstant(m, "ISA_NAMES", lb_isa_names)) goto fail;
#define LB_ADD_CONSTANT(name, value) \
    if (PyModule_AddIntConstant(m, #name, (long)(value))) goto fail;
    LB_INT_CONSTANTS(LB_ADD_CONSTANT)
#undef LB_ADD_CONSTANT
    /* the CPU's and the families' own lists (csrc/ops) */
    for (const lb_int_constant* k = lb_cpu_constants; k->name; ++k)
        if (PyModule_AddIntConstant(m, k->name, k->value)) goto fail;
#define LB_ADD_FAMILY_CONSTS(stem)                                               \
    if (lb_consts_##stem)                                                       \
        for (const lb_int_constant* k = lb_consts_##stem; k->name; ++k)         \
            if (PyModule_AddIntConstant(m, k->name, k->value)) goto fail;
    LB_OP_FAMILIES(LB_ADD_FAMILY_CONSTS)
#undef LB_ADD_FAMILY_CONSTS
    /* FMT_<NAME> (the row's code) and FMT_<NAME>_BITS (its widths as a mask), from the rows */
    for (int i = 0; i < LB_FMT_COUNT; ++i) {
        char key[64];
        int n = snprintf(key, sizeof key, "FMT_%s", lb_formats[i].name);
        for (int j = 4; j < n; ++j)
            if (key[j] >= 'a' && key[j] <= 'z') key[j] = (char)(key[j] - 'a' + 'A');
        if (PyModule_AddIntConstant(m, key, i)) goto fail;
        snprintf(key + n, sizeof key - (size_t)n, "_BITS");
        if (PyModule_AddIntConstant(m, key, (long)lb_formats[i].bits)) goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
