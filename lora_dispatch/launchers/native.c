/* Native key + launch path of fast_launch (built at first use, see native.py).
 *
 * One Launcher object per kernel. A call fl_launch(launcher, grid, stream, dev, *slots)
 *   1. computes the specialisation key of the slots (the kernel's parameters, then the
 *      num_warps / num_stages / num_ctas options) as pairs of 64-bit words (tag, value),
 *   2. finds the variant registered under that key,
 *   3. packs the parameters by the variant's types and calls cuLaunchKernelEx,
 * and returns the variant's CompiledKernel. It returns NotImplemented (nothing launched)
 * whenever a slot is outside what this file keys (the Python path then handles the call
 * exactly) or no variant is registered under the key.
 *
 * fl_launch_group does this for up to MAX_GROUP kernels, looking every call up before the
 * first launch; fl_bind keys a group's fixed slots once into a Bound, and fl_launch_bound
 * then keys only the slots that vary per call.
 *
 * Key tags per slot (see codes below). The pairs mirror the inline key expressions of
 * spec.py and refine Triton's own specialisation: equal pairs imply an equal Triton key.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda.h"

/* slot codes */
enum { C_SKIP = 0, C_GENERIC = 1, C_GENERIC_SA = 2, C_GENERIC_NOSPEC = 3, C_CONSTEXPR = 4,
       C_OPTION = 5 };
/* variant parameter types */
enum { T_SKIP = 0, T_PTR, T_I8, T_I16, T_I32, T_I64, T_U8, T_U16, T_U32, T_U64, T_FP32,
       T_FP64, T_DESC };
/* key tags */
enum { G_UNSET = 0, G_TENSOR, G_INT32, G_ONE, G_BIG, G_NONE, G_FLOAT, G_BOOL, G_CINT,
       G_CBOOL, G_CNONE, G_NOTSET, G_CSTR, G_DESC };

#define MAX_SLOTS 64
#define MAX_PARAMS (3 * MAX_SLOTS + 2) /* a descriptor expands to 1 + 2 * rank parameters */
#define MAX_DESC_RANK 5
#define MAX_LAYOUTS 255

typedef CUresult (*launch_ex_t)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*ctx_get_t)(CUcontext *);
typedef CUresult (*ctx_set_t)(CUcontext);
typedef CUresult (*dev_get_t)(CUdevice *, int);
typedef CUresult (*retain_t)(CUcontext *, CUdevice);
typedef CUresult (*ptr_attr_t)(void *, CUpointer_attribute, CUdeviceptr);
typedef CUresult (*err_str_t)(CUresult, const char **);
typedef CUresult (*encode_tiled_t)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                   const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                   const cuuint32_t *, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion,
                                   CUtensorMapFloatOOBfill);

static launch_ex_t p_launch_ex;
static ctx_get_t p_ctx_get;
static ctx_set_t p_ctx_set;
static dev_get_t p_dev_get;
static retain_t p_retain;
static ptr_attr_t p_ptr_attr;
static err_str_t p_err_str;
static encode_tiled_t p_encode_tiled; /* NULL on drivers without TMA */
typedef CUresult (*is_capturing_t)(CUstream, CUstreamCaptureStatus *);
static is_capturing_t p_is_capturing; /* hot.c */

static PyObject *s_data_ptr, *s_dtype, *s_base, *s_block_shape, *s_layout, *s_shape,
    *s_strides, *s_padding, *s_nan;

/* What a compiled variant fixes about one tensor-descriptor parameter (Triton's
 * tensordesc_meta), as int32 words in the types blob passed to fl_register. */
typedef struct {
    int32_t swizzle, elem_size, elem_type, fp4_padded, rank;
    int32_t block[MAX_DESC_RANK]; /* the variant's block, outermost dimension first */
} DescMeta;

/* The last CUtensorMap encoded for one slot and what it was encoded from. */
typedef struct {
    CUtensorMap map; /* first: 64-byte aligned with the struct */
    DescMeta meta;
    uint64_t addr;
    int64_t shape[MAX_DESC_RANK], strides[MAX_DESC_RANK];
    int padding, valid;
} DescCache;

typedef struct {
    uint64_t hash;
    uint64_t *key; /* 2 * nslots words */
    CUfunction fn;
    unsigned int block, grid_mult, shared;
    int coop, pdl, n_null;
    uint8_t *types; /* nparams */
    DescMeta *descs; /* one per T_DESC parameter, in order (NULL if none) */
    PyObject *kernel;
    PyObject **strs; /* nslots: the str constexprs keyed by hash (compared on a match) */
} Entry;

typedef struct {
    PyObject_HEAD
    int nparams, nslots;
    uint8_t codes[MAX_SLOTS];
    PyObject *dtypes;       /* tuple of torch.dtype, index = key value / 2 */
    PyObject *tensor_types; /* tuple of accepted tensor classes */
    PyObject *not_set;      /* the option "not passed" marker */
    PyObject *desc_types;   /* tuple of host tensor-descriptor classes (may be empty) */
    PyObject *layouts;      /* list: shared-memory layouts seen, index = key value */
    DescCache *dcache;      /* nparams entries, allocated at the first descriptor launch */
    Entry *entries;
    int n_entries, cap;
    uint64_t last_ok[MAX_SLOTS]; /* last pointer validated per slot */
    unsigned long long hits;
    unsigned long long encodes; /* CUtensorMaps encoded (the others were reused) */
} Launcher;

static void entry_free(Entry *e, int nslots) {
    PyMem_Free(e->key);
    PyMem_Free(e->types);
    PyMem_Free(e->descs);
    e->descs = NULL;
    Py_CLEAR(e->kernel);
    if (e->strs) {
        for (int i = 0; i < nslots; i++) Py_XDECREF(e->strs[i]);
        PyMem_Free(e->strs);
        e->strs = NULL;
    }
}

static void launcher_dealloc(Launcher *self) {
    for (int i = 0; i < self->n_entries; i++) entry_free(&self->entries[i], self->nslots);
    PyMem_Free(self->entries);
    Py_XDECREF(self->dtypes);
    Py_XDECREF(self->tensor_types);
    Py_XDECREF(self->not_set);
    Py_XDECREF(self->desc_types);
    Py_XDECREF(self->layouts);
    free(self->dcache);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject LauncherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lora_dispatch_native.Launcher",
    .tp_basicsize = sizeof(Launcher),
    .tp_dealloc = (destructor)launcher_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-kernel native key and variant table.",
};

static int is_tensor(Launcher *self, PyObject *o) {
    PyTypeObject *t = Py_TYPE(o);
    Py_ssize_t n = PyTuple_GET_SIZE(self->tensor_types);
    for (Py_ssize_t i = 0; i < n; i++)
        if ((PyObject *)t == PyTuple_GET_ITEM(self->tensor_types, i)) return 1;
    return 0;
}

/* Index of a tensor's dtype in the launcher's table, or -1 (-2 with an exception set). */
static Py_ssize_t dtype_index(Launcher *self, PyObject *tensor) {
    PyObject *dt = PyObject_GetAttr(tensor, s_dtype);
    if (!dt) return -2;
    Py_ssize_t n = PyTuple_GET_SIZE(self->dtypes), idx = -1;
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyTuple_GET_ITEM(self->dtypes, i) == dt) { idx = i; break; }
    Py_DECREF(dt);
    return idx;
}

/* A tensor's data_ptr(), or -1 with an exception set (0 is a valid result). */
static int data_ptr(PyObject *tensor, uint64_t *addr) {
    PyObject *p = PyObject_CallMethodNoArgs(tensor, s_data_ptr);
    if (!p) return -1;
    unsigned long long a = PyLong_AsUnsignedLongLong(p);
    Py_DECREF(p);
    if (a == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *addr = a;
    return 0;
}

/* 1 + index of a descriptor's shared-memory layout among those seen (interned by equality,
 * which is what Triton's key compares through the layout's repr); 0 for descriptors
 * without one; -1 when the table is full or the comparison fails (Python path). */
static int layout_index(Launcher *self, PyObject *desc) {
    PyObject *lay = PyObject_GetAttr(desc, s_layout);
    if (!lay) {
        PyErr_Clear();
        return 0;
    }
    if (lay == Py_None) {
        Py_DECREF(lay);
        return 0;
    }
    Py_ssize_t n = PyList_GET_SIZE(self->layouts);
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyList_GET_ITEM(self->layouts, i) == lay) { Py_DECREF(lay); return (int)i + 1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *known = PyList_GET_ITEM(self->layouts, i);
        if (Py_TYPE(known) != Py_TYPE(lay)) continue;
        int eq = PyObject_RichCompareBool(known, lay, Py_EQ);
        if (eq < 0) { PyErr_Clear(); Py_DECREF(lay); return -1; }
        if (eq) { Py_DECREF(lay); return (int)i + 1; }
    }
    int r = -1;
    if (n < MAX_LAYOUTS && PyObject_Hash(lay) != -1 && PyList_Append(self->layouts, lay) == 0)
        r = (int)n + 1;
    PyErr_Clear();
    Py_DECREF(lay);
    return r;
}

/* Key of a host tensor descriptor (class ``cls`` of the launcher's table): Triton keys it
 * by its base's dtype, its block shape and its layout. Returns 1, 0 (Python path) or -1. */
static int key_desc(Launcher *self, Py_ssize_t cls, PyObject *o, uint64_t *tag, uint64_t *val,
                    uint64_t *ptr) {
    PyObject *base = PyObject_GetAttr(o, s_base);
    if (!base) { PyErr_Clear(); return 0; }
    int r = 0;
    Py_ssize_t idx = -1;
    if (is_tensor(self, base)) {
        idx = dtype_index(self, base);
        if (idx == -2 || (idx >= 0 && data_ptr(base, ptr))) r = -1;
    }
    Py_DECREF(base);
    if (r < 0) return -1;
    if (idx < 0 || idx >= 32) return 0;
    PyObject *bs = PyObject_GetAttr(o, s_block_shape);
    if (!bs) { PyErr_Clear(); return 0; }
    PyObject *fast = PySequence_Fast(bs, "block_shape");
    Py_DECREF(bs);
    if (!fast) { PyErr_Clear(); return 0; }
    Py_ssize_t rank = PySequence_Fast_GET_SIZE(fast);
    uint64_t dims = 0;
    r = rank >= 1 && rank <= MAX_DESC_RANK;
    for (Py_ssize_t i = 0; r && i < rank; i++) {
        PyObject *d = PySequence_Fast_GET_ITEM(fast, i);
        long v = PyLong_CheckExact(d) ? PyLong_AsLong(d) : -1;
        if (v < 1 || v > 256) { PyErr_Clear(); r = 0; break; }
        dims |= (uint64_t)(v - 1) << (8 * i);
    }
    Py_DECREF(fast);
    if (!r) return 0;
    int li = layout_index(self, o);
    if (li < 0) return 0;
    *tag = G_DESC;
    *val = (uint64_t)idx | ((uint64_t)cls << 5) | ((uint64_t)rank << 7) | ((uint64_t)li << 10) |
           (dims << 18);
    return 1;
}

/* A host tensor descriptor given by its fields (fl_raw_desc): keyed as the descriptor it was
 * made from for one launcher, its base address, shape and strides set by the C caller that
 * owns it before each launch (hot.c), so no Python descriptor is built per call. */
typedef struct {
    PyObject_HEAD
    PyObject *launcher; /* the Launcher its key words are for */
    uint64_t tag, val;  /* those key words */
    uint64_t addr;
    int rank, padding;
    int64_t shape[MAX_DESC_RANK], strides[MAX_DESC_RANK];
} RawDesc;

static void raw_desc_dealloc(RawDesc *self) {
    Py_XDECREF(self->launcher);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject RawDescType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lora_dispatch_native.RawDesc",
    .tp_basicsize = sizeof(RawDesc),
    .tp_dealloc = (destructor)raw_desc_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A tensor descriptor as raw fields, keyed for one launcher (fl_raw_desc).",
};

/* Key of one slot. Returns 1 on success, 0 when the slot is outside this keyer
 * (the Python path takes the call), -1 with an exception set. */
static int key_slot(Launcher *self, int code, PyObject *o, uint64_t *tag, uint64_t *val,
                    uint64_t *ptr, int64_t *ival, double *fval) {
    if (code == C_SKIP) {
        *tag = G_UNSET; *val = 0;
        return 1;
    }
    if (code == C_CONSTEXPR || code == C_OPTION) {
        if (code == C_OPTION && o == self->not_set) { *tag = G_NOTSET; *val = 0; return 1; }
        if (o == Py_None) { *tag = G_CNONE; *val = 0; return code == C_CONSTEXPR; }
        if (PyBool_Check(o)) { *tag = G_CBOOL; *val = (o == Py_True); return 1; }
        if (code == C_CONSTEXPR && PyUnicode_CheckExact(o)) {
            Py_hash_t hv = PyObject_Hash(o);
            if (hv == -1) return -1;
            *tag = G_CSTR; *val = (uint64_t)hv;
            return 1;
        }
        if (PyLong_CheckExact(o)) {
            int overflow = 0;
            long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
            if (overflow || (v == -1 && PyErr_Occurred())) { PyErr_Clear(); return 0; }
            *tag = G_CINT; *val = (uint64_t)v;
            return 1;
        }
        return 0;
    }
    /* generic parameter */
    if (o == Py_None) { *tag = G_NONE; *val = 0; return 1; }
    if (PyFloat_CheckExact(o)) {
        *tag = G_FLOAT; *val = 0; *fval = PyFloat_AS_DOUBLE(o);
        return 1;
    }
    if (PyBool_Check(o)) {
        *tag = G_BOOL; *val = (o == Py_True); *ival = (o == Py_True);
        return 1;
    }
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
            *tag = G_BIG;
            *val = 2 + (code == C_GENERIC_SA ? !(u & 15) : 0);
            *ival = (int64_t)u;
            return 1;
        }
        if (overflow < 0) return 0;
        *ival = v;
        if (v == 1 && code != C_GENERIC_NOSPEC) { *tag = G_ONE; *val = 0; return 1; }
        if (v >= INT32_MIN && v <= INT32_MAX) {
            *tag = G_INT32;
            *val = code == C_GENERIC_SA ? !(v & 15) : 1;
        } else {
            *tag = G_BIG;
            *val = code == C_GENERIC_SA ? !(v & 15) : 0;
        }
        return 1;
    }
    if (is_tensor(self, o)) {
        Py_ssize_t idx = dtype_index(self, o);
        if (idx == -2) return -1;
        if (idx < 0) return 0;
        uint64_t addr;
        if (data_ptr(o, &addr)) return -1;
        *ptr = addr;
        *tag = G_TENSOR;
        *val = 2 * (uint64_t)idx + (code == C_GENERIC_SA ? !(addr & 15) : 0);
        return 1;
    }
    if (Py_TYPE(o) == &RawDescType) {
        RawDesc *r = (RawDesc *)o;
        if (r->launcher != (PyObject *)self) return 0;
        *tag = r->tag;
        *val = r->val;
        *ptr = r->addr;
        return 1;
    }
    Py_ssize_t nd = PyTuple_GET_SIZE(self->desc_types);
    for (Py_ssize_t i = 0; i < nd; i++)
        if ((PyObject *)Py_TYPE(o) == PyTuple_GET_ITEM(self->desc_types, i))
            return key_desc(self, i, o, tag, val, ptr);
    return 0;
}

static inline uint64_t mix(uint64_t h, uint64_t w) {
    h ^= w + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

/* Start of a key's hash chain; each slot then mixes in its two words, in order. */
static inline uint64_t hash_seed(long long dev) { return mix(0x51ed270b27f3ULL, (uint64_t)dev); }

/* One call's key and the values read while computing it (reused to pack parameters). */
typedef struct {
    uint64_t key[2 * MAX_SLOTS];
    uint64_t hash;
    uint64_t ptrs[MAX_SLOTS];
    int64_t ivals[MAX_SLOTS];
    double fvals[MAX_SLOTS];
    PyObject *objs[MAX_SLOTS]; /* the slots (borrowed: the caller's arguments) */
} KeyState;

/* Fill ks from dev (args[0]) and the slots after it; returns 1, 0 (unsupported) or -1. */
static int compute_key(Launcher *self, PyObject *const *args, KeyState *ks, long long *dev) {
    *dev = PyLong_AsLongLong(args[0]);
    if (*dev == -1 && PyErr_Occurred()) return -1;
    PyObject *const *slots = args + 1;
    uint64_t h = hash_seed(*dev);
    for (int i = 0; i < self->nslots; i++) {
        ks->objs[i] = slots[i];
        int r = key_slot(self, self->codes[i], slots[i], &ks->key[2 * i], &ks->key[2 * i + 1],
                         &ks->ptrs[i], &ks->ivals[i], &ks->fvals[i]);
        if (r != 1) return r;
        h = mix(mix(h, ks->key[2 * i]), ks->key[2 * i + 1]);
    }
    ks->hash = h;
    return 1;
}

static int strs_equal(const Entry *e, PyObject *const *slots, int nslots) {
    if (!e->strs) return 1;
    for (int i = 0; i < nslots; i++) {
        PyObject *a = e->strs[i];
        if (a && a != slots[i] && PyUnicode_Compare(a, slots[i]) != 0) {
            PyErr_Clear();
            return 0;
        }
    }
    return 1;
}

static int parse_head(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t head,
                      Launcher **self) {
    if (nargs < 1 || Py_TYPE(args[0]) != &LauncherType) {
        PyErr_SetString(PyExc_TypeError, "first argument must be a native Launcher");
        return -1;
    }
    *self = (Launcher *)args[0];
    if (nargs != head + (*self)->nslots) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd",
                     head + (Py_ssize_t)(*self)->nslots, nargs);
        return -1;
    }
    return 0;
}

static int load_cuda(void) {
    if (p_launch_ex) return 0;
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        PyErr_Format(PyExc_RuntimeError, "fast_launch native path: cannot load libcuda.so.1: %s",
                     dlerror());
        return -1;
    }
    p_ctx_get = (ctx_get_t)dlsym(h, "cuCtxGetCurrent");
    p_ctx_set = (ctx_set_t)dlsym(h, "cuCtxSetCurrent");
    p_dev_get = (dev_get_t)dlsym(h, "cuDeviceGet");
    p_retain = (retain_t)dlsym(h, "cuDevicePrimaryCtxRetain");
    p_ptr_attr = (ptr_attr_t)dlsym(h, "cuPointerGetAttribute");
    p_err_str = (err_str_t)dlsym(h, "cuGetErrorString");
    p_encode_tiled = (encode_tiled_t)dlsym(h, "cuTensorMapEncodeTiled");
    p_is_capturing = (is_capturing_t)dlsym(h, "cuStreamIsCapturing");
    launch_ex_t lx = (launch_ex_t)dlsym(h, "cuLaunchKernelEx");
    if (!p_ctx_get || !p_ctx_set || !p_dev_get || !p_retain || !p_ptr_attr || !p_err_str || !lx) {
        PyErr_SetString(PyExc_RuntimeError, "fast_launch native path: libcuda lacks a symbol");
        return -1;
    }
    p_launch_ex = lx;
    return 0;
}

static PyObject *cuda_error(CUresult r, const char *what) {
    const char *s = NULL;
    if (p_err_str) p_err_str(r, &s);
    PyErr_Format(PyExc_RuntimeError, "fast_launch native path: %s failed: %s (%d)", what,
                 s ? s : "unknown error", (int)r);
    return NULL;
}

/* One launch resolved on the host: the variant, its grid and the call's key state. */
typedef struct {
    Entry *e;
    long long g[3];
    long long dev;
    KeyState ks;
} Prepared;

/* A grid tuple of 1-3 ints into g (missing dimensions 1). Returns 1, 0 (the Python path
 * takes the call) or -1 with an exception set. */
static int parse_grid(PyObject *grid, long long *g) {
    g[0] = g[1] = g[2] = 1;
    if (!PyTuple_CheckExact(grid)) return 0;
    Py_ssize_t gl = PyTuple_GET_SIZE(grid);
    if (gl < 1 || gl > 3) return 0;
    for (Py_ssize_t i = 0; i < gl; i++) {
        PyObject *o = PyTuple_GET_ITEM(grid, i);
        if (!PyLong_CheckExact(o)) return 0;
        g[i] = PyLong_AsLongLong(o);
        if (g[i] == -1 && PyErr_Occurred()) return -1;
        if (g[i] < 0 || g[i] > 0x7fffffffLL) return 0;
    }
    return 1;
}

/* The variant registered under p->ks (key, hash and slots) into p->e. Returns 1 (found)
 * or 0 (no variant, or one whose pointer / descriptor parameters the slots do not fit). */
static int lookup(Launcher *self, Prepared *p) {
    size_t kb = sizeof(uint64_t) * 2 * (size_t)self->nslots;
    for (int i = 0; i < self->n_entries; i++) {
        Entry *e = &self->entries[i];
        if (e->hash == p->ks.hash && !memcmp(e->key, p->ks.key, kb) &&
            strs_equal(e, p->ks.objs, self->nslots)) {
            for (int j = 0; j < self->nparams; j++) {
                if (e->types[j] == T_PTR && p->ks.key[2 * j] != G_TENSOR) return 0;
                if (e->types[j] == T_DESC && p->ks.key[2 * j] != G_DESC) return 0;
            }
            p->e = e;
            return 1;
        }
    }
    return 0;
}

/* Grid tuple and key of one call, then its variant. Returns 1 (found), 0 (the Python path
 * takes the call: unsupported slot or grid, or no variant yet) or -1 with an exception set. */
static int prepare(Launcher *self, PyObject *grid, PyObject *const *dev_and_slots,
                   Prepared *p) {
    int r = parse_grid(grid, p->g);
    if (r != 1) return r;
    r = compute_key(self, dev_and_slots, &p->ks, &p->dev);
    if (r != 1) return r;
    return lookup(self, p);
}

/* Make the device's primary context current if no context is (as Triton's launcher does). */
static int ensure_context(long long dev) {
    if (load_cuda()) return -1;
    CUcontext ctx = NULL;
    CUresult cr = p_ctx_get(&ctx);
    if (cr != CUDA_SUCCESS) { cuda_error(cr, "cuCtxGetCurrent"); return -1; }
    if (!ctx) {
        CUdevice d;
        if ((cr = p_dev_get(&d, (int)dev)) != CUDA_SUCCESS) {
            cuda_error(cr, "cuDeviceGet");
            return -1;
        }
        if ((cr = p_retain(&ctx, d)) != CUDA_SUCCESS) {
            cuda_error(cr, "cuDevicePrimaryCtxRetain");
            return -1;
        }
        if ((cr = p_ctx_set(ctx)) != CUDA_SUCCESS) {
            cuda_error(cr, "cuCtxSetCurrent");
            return -1;
        }
    }
    return 0;
}

/* The device pointer of a tensor argument's address (validated like Triton's launcher,
 * once per new address and slot). 0, or -1 with an exception set. */
static int device_ptr(Launcher *self, int i, uint64_t *ptr) {
    if (!*ptr || *ptr == self->last_ok[i]) return 0;
    uint64_t dp;
    CUresult cr = p_ptr_attr(&dp, CU_POINTER_ATTRIBUTE_DEVICE_POINTER, *ptr);
    if (cr == CUDA_ERROR_INVALID_VALUE) {
        PyErr_Format(PyExc_ValueError,
                     "Pointer argument (at %d) cannot be accessed from Triton (cpu tensor?)", i);
        return -1;
    }
    if (cr != CUDA_SUCCESS) { cuda_error(cr, "cuPointerGetAttribute"); return -1; }
    *ptr = dp;
    self->last_ok[i] = dp;
    return 0;
}

/* Read n ints of a descriptor's sequence attribute into out. 0, or -1 with an exception. */
static int read_ints(PyObject *desc, PyObject *name, int n, int64_t *out, int i) {
    PyObject *seq = PyObject_GetAttr(desc, name);
    if (!seq) return -1;
    PyObject *fast = PySequence_Fast(seq, "a descriptor's shape / strides must be a sequence");
    Py_DECREF(seq);
    if (!fast) return -1;
    int r = 0;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        PyErr_Format(PyExc_ValueError, "tensor descriptor (at %d): %U has %zd entries, the "
                     "kernel was compiled for rank %d", i, name,
                     PySequence_Fast_GET_SIZE(fast), n);
        r = -1;
    }
    for (int j = 0; !r && j < n; j++) {
        out[j] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, j));
        if (out[j] == -1 && PyErr_Occurred()) r = -1;
    }
    Py_DECREF(fast);
    return r;
}

/* The CUtensorMap of descriptor slot i for variant meta m (encoded as Triton's
 * fill_tma_descriptor does; the last one per slot is kept and reused while its inputs are
 * unchanged), plus its shape and strides. Returns the map, or NULL with an exception. */
static CUtensorMap *desc_map(Launcher *self, int i, const DescMeta *m, PyObject *desc,
                             uint64_t addr, int64_t *shape, int64_t *strides) {
    int n = m->rank, padding;
    if (Py_TYPE(desc) == &RawDescType) {
        const RawDesc *r = (const RawDesc *)desc;
        if (r->rank != n) {
            PyErr_Format(PyExc_ValueError, "tensor descriptor (at %d): rank %d, the kernel "
                         "was compiled for rank %d", i, r->rank, n);
            return NULL;
        }
        memcpy(shape, r->shape, sizeof(int64_t) * (size_t)n);
        memcpy(strides, r->strides, sizeof(int64_t) * (size_t)n);
        padding = r->padding;
    } else {
        if (read_ints(desc, s_shape, n, shape, i) || read_ints(desc, s_strides, n, strides, i))
            return NULL;
        padding = -1;
    }
    if (strides[n - 1] != 1) {
        PyErr_Format(PyExc_ValueError, "tensor descriptor (at %d): last dimension must be "
                     "contiguous (stride 1)", i);
        return NULL;
    }
    if (m->fp4_padded) shape[n - 1] *= 2;
    if (padding < 0) {
        PyObject *pad = PyObject_GetAttr(desc, s_padding);
        if (!pad) return NULL;
        padding = PyUnicode_Check(pad) && PyUnicode_Compare(pad, s_nan) == 0;
        Py_DECREF(pad);
    }
    if (!self->dcache) {
        void *mem = NULL;
        size_t bytes = sizeof(DescCache) * (size_t)self->nparams;
        if (posix_memalign(&mem, 64, bytes)) { PyErr_NoMemory(); return NULL; }
        memset(mem, 0, bytes);
        self->dcache = mem;
    }
    DescCache *c = &self->dcache[i];
    size_t sb = sizeof(int64_t) * (size_t)n;
    if (c->valid && c->addr == addr && c->padding == padding &&
        !memcmp(&c->meta, m, sizeof *m) && !memcmp(c->shape, shape, sb) &&
        !memcmp(c->strides, strides, sb))
        return &c->map;
    if (!p_encode_tiled) {
        PyErr_SetString(PyExc_RuntimeError, "fast_launch native path: this driver has no "
                        "cuTensorMapEncodeTiled");
        return NULL;
    }
    cuuint64_t dims[MAX_DESC_RANK], bstrides[MAX_DESC_RANK];
    cuuint32_t box[MAX_DESC_RANK], estr[MAX_DESC_RANK] = {1, 1, 1, 1, 1};
    for (int j = 0; j < n; j++) {
        dims[n - 1 - j] = (cuuint64_t)shape[j];
        box[n - 1 - j] = (cuuint32_t)m->block[j];
    }
    for (int j = 0; j + 1 < n; j++) bstrides[n - 2 - j] = (cuuint64_t)(m->elem_size * strides[j]);
    c->valid = 0;
    CUresult cr = p_encode_tiled(
        &c->map, (CUtensorMapDataType)m->elem_type, (cuuint32_t)n, (void *)(uintptr_t)addr,
        dims, bstrides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
        (CUtensorMapSwizzle)m->swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
        padding ? CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA
                : CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (cr != CUDA_SUCCESS) {
        cuda_error(cr, "cuTensorMapEncodeTiled");
        return NULL;
    }
    self->encodes++;
    c->meta = *m;
    c->addr = addr;
    c->padding = padding;
    memcpy(c->shape, shape, sb);
    memcpy(c->strides, strides, sb);
    c->valid = 1;
    return &c->map;
}

/* Pack the parameters of a prepared call and launch it on stream. 0, or -1 with an
 * exception set. An empty grid launches nothing (as in Triton). */
static int launch_prepared(Launcher *self, Prepared *p, unsigned long long stream) {
    Entry *e = p->e;
    self->hits++;
    if (p->g[0] * p->g[1] * p->g[2] == 0) return 0;
    uint64_t *ptrs = p->ks.ptrs; /* replaced by the validated device pointers below */
    const int64_t *ivals = p->ks.ivals;
    const double *fvals = p->ks.fvals;
    CUresult cr;
    union { uint64_t u; int64_t i; int32_t i32; int16_t i16; int8_t i8; uint32_t u32;
            uint16_t u16; uint8_t u8; float f; double d; } store[MAX_PARAMS];
    void *params[MAX_PARAMS];
    int np = 0, nd = 0;
    for (int i = 0; i < self->nparams; i++) {
        if (np + 1 + 2 * MAX_DESC_RANK + e->n_null > MAX_PARAMS) {
            PyErr_SetString(PyExc_SystemError, "fast_launch native path: too many parameters");
            return -1;
        }
        switch (e->types[i]) {
        case T_SKIP:
            continue;
        case T_PTR:
            if (device_ptr(self, i, &ptrs[i])) return -1;
            store[np].u = ptrs[i];
            break;
        case T_DESC: {
            const DescMeta *m = &e->descs[nd++];
            int64_t shape[MAX_DESC_RANK], strides[MAX_DESC_RANK];
            if (device_ptr(self, i, &ptrs[i])) return -1;
            CUtensorMap *map = desc_map(self, i, m, p->ks.objs[i], ptrs[i], shape, strides);
            if (!map) return -1;
            params[np++] = map;
            for (int j = 0; j < m->rank; j++) {
                store[np].i32 = (int32_t)shape[j];
                params[np] = &store[np];
                np++;
            }
            for (int j = 0; j < m->rank; j++) {
                store[np].i = strides[j];
                params[np] = &store[np];
                np++;
            }
            continue;
        }
        case T_FP32: store[np].f = (float)fvals[i]; break;
        case T_FP64: store[np].d = fvals[i]; break;
        case T_I8: store[np].i8 = (int8_t)ivals[i]; break;
        case T_I16: store[np].i16 = (int16_t)ivals[i]; break;
        case T_I32: store[np].i32 = (int32_t)ivals[i]; break;
        case T_I64: store[np].i = ivals[i]; break;
        case T_U8: store[np].u8 = (uint8_t)ivals[i]; break;
        case T_U16: store[np].u16 = (uint16_t)ivals[i]; break;
        case T_U32: store[np].u32 = (uint32_t)ivals[i]; break;
        case T_U64: store[np].u = (uint64_t)ivals[i]; break;
        default:
            PyErr_SetString(PyExc_SystemError, "fast_launch native path: bad type code");
            return -1;
        }
        params[np] = &store[np];
        np++;
    }
    for (int j = 0; j < e->n_null; j++) {
        store[np].u = 0;
        params[np] = &store[np];
        np++;
    }
    CUlaunchAttribute attrs[4];
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDimX = (unsigned int)p->g[0] * e->grid_mult;
    cfg.gridDimY = (unsigned int)p->g[1];
    cfg.gridDimZ = (unsigned int)p->g[2];
    cfg.blockDimX = e->block;
    cfg.blockDimY = 1;
    cfg.blockDimZ = 1;
    cfg.sharedMemBytes = e->shared;
    cfg.hStream = (CUstream)(uintptr_t)stream;
    cfg.attrs = attrs;
    unsigned int na = 0;
    if (e->pdl) {
        memset(&attrs[na], 0, sizeof attrs[na]);
        attrs[na].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attrs[na].value.programmaticStreamSerializationAllowed = 1;
        na++;
    }
    if (e->coop) {
        memset(&attrs[na], 0, sizeof attrs[na]);
        attrs[na].id = CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
        attrs[na].value.cooperative = 1;
        na++;
    }
    if (e->grid_mult != 1) {
        memset(&attrs[na], 0, sizeof attrs[na]);
        attrs[na].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attrs[na].value.clusterDim.x = e->grid_mult;
        attrs[na].value.clusterDim.y = 1;
        attrs[na].value.clusterDim.z = 1;
        na++;
        memset(&attrs[na], 0, sizeof attrs[na]);
        attrs[na].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE;
        attrs[na].value.clusterSchedulingPolicyPreference = CU_CLUSTER_SCHEDULING_POLICY_SPREAD;
        na++;
    }
    cfg.numAttrs = na;
    cr = p_launch_ex(&cfg, e->fn, params, NULL);
    if (cr != CUDA_SUCCESS) { cuda_error(cr, "cuLaunchKernelEx"); return -1; }
    return 0;
}

/* fl_launch(launcher, grid: tuple of 1-3 ints, stream, dev, *slots) */
static PyObject *fl_launch(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    Launcher *self;
    if (parse_head(args, nargs, 4, &self)) return NULL;
    unsigned long long stream = PyLong_AsUnsignedLongLong(args[2]);
    if (stream == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Prepared p;
    int r = prepare(self, args[1], args + 3, &p);
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NOTIMPLEMENTED;
    if (p.g[0] * p.g[1] * p.g[2] != 0 && ensure_context(p.dev)) return NULL;
    if (launch_prepared(self, &p, stream)) return NULL;
    Py_INCREF(p.e->kernel);
    return p.e->kernel;
}

#define MAX_GROUP 4

/* Check fl_launch_group's head (launchers, grids, stream, dev) and prepare every call of the
 * group into p. Returns 1, 0 (some call takes the Python path: nothing prepared) or -1. */
static int group_prepare(PyObject *const *args, Py_ssize_t nargs, Prepared *p, Py_ssize_t *n,
                         unsigned long long *stream, int *any) {
    if (nargs < 4 || !PyTuple_CheckExact(args[0]) || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "fl_launch_group(launchers: tuple, grids: tuple, stream, dev, *slots)");
        return -1;
    }
    *n = PyTuple_GET_SIZE(args[0]);
    if (*n < 1 || *n > MAX_GROUP || PyTuple_GET_SIZE(args[1]) != *n) {
        PyErr_Format(PyExc_ValueError, "a group has 1 to %d launchers and one grid each",
                     MAX_GROUP);
        return -1;
    }
    Py_ssize_t want = 4;
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *l = PyTuple_GET_ITEM(args[0], i);
        if (Py_TYPE(l) != &LauncherType) {
            PyErr_SetString(PyExc_TypeError, "launchers must be native Launchers");
            return -1;
        }
        want += ((Launcher *)l)->nslots;
    }
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", want, nargs);
        return -1;
    }
    *stream = PyLong_AsUnsignedLongLong(args[2]);
    if (*stream == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    PyObject *dv[MAX_SLOTS + 1]; /* a launcher's key reads (dev, *its slots) */
    *any = 0;
    Py_ssize_t off = 4;
    for (Py_ssize_t i = 0; i < *n; i++) {
        Launcher *l = (Launcher *)PyTuple_GET_ITEM(args[0], i);
        dv[0] = args[3];
        memcpy(dv + 1, args + off, sizeof(PyObject *) * (size_t)l->nslots);
        int r = prepare(l, PyTuple_GET_ITEM(args[1], i), dv, &p[i]);
        if (r != 1) return r;
        *any |= (p[i].g[0] * p[i].g[1] * p[i].g[2]) != 0;
        off += l->nslots;
    }
    return 1;
}

/* fl_launch_group(launchers: tuple, grids: tuple, stream, dev, *slots): launch every kernel
 * of the group in order on one stream, each taking the next nslots slots. Every call is
 * keyed and looked up before the first launch: if any would take the Python path, nothing
 * is launched and NotImplemented is returned. */
static PyObject *fl_launch_group(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    Prepared p[MAX_GROUP];
    Py_ssize_t n;
    unsigned long long stream;
    int any;
    int r = group_prepare(args, nargs, p, &n, &stream, &any);
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NOTIMPLEMENTED;
    if (any && ensure_context(p[0].dev)) return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (launch_prepared((Launcher *)PyTuple_GET_ITEM(args[0], i), &p[i], stream))
            return NULL;
    Py_RETURN_NONE;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* reps (args[0]) of an fl_time_* call: >= 1, or -1 with an exception set. */
static long parse_reps(PyObject *const *args, Py_ssize_t nargs, const char *usage) {
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    long reps = PyLong_AsLong(args[0]);
    if (reps == -1 && PyErr_Occurred()) return -1;
    if (reps < 1) {
        PyErr_SetString(PyExc_ValueError, "reps must be >= 1");
        return -1;
    }
    return reps;
}

/* The second half of an fl_time_* call: the n prepared launches repeated reps times;
 * (prep_ns / reps, launch ns per repetition). */
static PyObject *time_launches(PyObject *const *launchers, Py_ssize_t n, Prepared *p,
                               long reps, unsigned long long stream, long long dev, int any,
                               double prep_ns) {
    if (any && ensure_context(dev)) return NULL;
    double t0 = now_ns();
    for (long k = 0; k < reps; k++)
        for (Py_ssize_t i = 0; i < n; i++)
            if (launch_prepared((Launcher *)launchers[i], &p[i], stream)) return NULL;
    double t1 = now_ns();
    return Py_BuildValue("(dd)", prep_ns / reps, (t1 - t0) / reps);
}

/* fl_time_group(reps, launchers, grids, stream, dev, *slots) -> (prepare_ns, launch_ns):
 * fl_launch_group's two halves timed apart (benchmarks): the keys and table lookups of
 * every call, then the packing and the driver launches of the group, each repeated reps
 * times in C; nanoseconds per repetition. None where the group would not launch. */
static PyObject *fl_time_group(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    long reps = parse_reps(args, nargs, "fl_time_group(reps, launchers, grids, stream, dev, "
                                        "*slots)");
    if (reps < 0) return NULL;
    Prepared p[MAX_GROUP];
    Py_ssize_t n;
    unsigned long long stream;
    int any, r = 1;
    double t0 = now_ns();
    for (long k = 0; k < reps && r == 1; k++)
        r = group_prepare(args + 1, nargs - 1, p, &n, &stream, &any);
    double t1 = now_ns();
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NONE;
    return time_launches(PySequence_Fast_ITEMS(args[1]), n, p, reps, stream, p[0].dev, any,
                         t1 - t0);
}

/* A launch group keyed once (fl_bind): every slot but the varying ones, per launcher. */
typedef struct {
    PyObject_HEAD
    int n;     /* launchers (0 once cleared) */
    int nvary; /* varying slots, all launchers */
    long long dev;
    PyObject *launchers[MAX_GROUP];
    int nv[MAX_GROUP];                  /* varying slots per launcher */
    int first[MAX_GROUP];               /* its first varying slot (nslots if none) */
    uint8_t vidx[MAX_GROUP][MAX_SLOTS]; /* their indices among its slots */
    KeyState ks[MAX_GROUP]; /* fixed slots keyed; hash: the chain up to first; objs: strong
                             * references (NULL where varying) */
} Bound;

static int bound_traverse(Bound *self, visitproc visit, void *arg) {
    for (int i = 0; i < MAX_GROUP; i++) {
        Py_VISIT(self->launchers[i]);
        for (int j = 0; j < MAX_SLOTS; j++) Py_VISIT(self->ks[i].objs[j]);
    }
    return 0;
}

static int bound_clear(Bound *self) {
    self->n = 0;
    for (int i = 0; i < MAX_GROUP; i++) {
        Py_CLEAR(self->launchers[i]);
        for (int j = 0; j < MAX_SLOTS; j++) Py_CLEAR(self->ks[i].objs[j]);
    }
    return 0;
}

static void bound_dealloc(Bound *self) {
    PyObject_GC_UnTrack(self);
    bound_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject BoundType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lora_dispatch_native.Bound",
    .tp_basicsize = sizeof(Bound),
    .tp_dealloc = (destructor)bound_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)bound_traverse,
    .tp_clear = (inquiry)bound_clear,
    .tp_doc = "A launch group's fixed slots, keyed once (fl_bind).",
};

/* fl_bind(launchers: tuple, varying: tuple, dev, *slots) -> Bound or None: key every slot of
 * the group (as fl_launch_group takes them) but those at the sorted indices varying, whose
 * values here are placeholders, and keep the other slot objects. None when a fixed slot is
 * outside this keyer. The fixed tensors must keep their storage while the Bound is used. */
static PyObject *fl_bind(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 3 || !PyTuple_CheckExact(args[0]) || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "fl_bind(launchers: tuple, varying: tuple, dev, *slots)");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args[0]), want = 3;
    if (n < 1 || n > MAX_GROUP) {
        PyErr_Format(PyExc_ValueError, "a group has 1 to %d launchers", MAX_GROUP);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *l = PyTuple_GET_ITEM(args[0], i);
        if (Py_TYPE(l) != &LauncherType) {
            PyErr_SetString(PyExc_TypeError, "launchers must be native Launchers");
            return NULL;
        }
        want += ((Launcher *)l)->nslots;
    }
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", want, nargs);
        return NULL;
    }
    long long dev = PyLong_AsLongLong(args[2]);
    if (dev == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t nvary = PyTuple_GET_SIZE(args[1]), total = want - 3;
    Py_ssize_t vary[MAX_GROUP * MAX_SLOTS];
    if (nvary > total) {
        PyErr_Format(PyExc_ValueError, "varying holds %zd indices for %zd slots", nvary, total);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < nvary; k++) {
        PyObject *o = PyTuple_GET_ITEM(args[1], k);
        vary[k] = PyLong_AsSsize_t(o);
        if (vary[k] == -1 && PyErr_Occurred()) return NULL;
        if (vary[k] < 0 || vary[k] >= total || (k && vary[k] <= vary[k - 1])) {
            PyErr_Format(PyExc_ValueError, "varying must hold sorted, distinct slot indices "
                         "below %zd", total);
            return NULL;
        }
    }
    Bound *b = PyObject_GC_New(Bound, &BoundType);
    if (!b) return NULL;
    memset((char *)b + sizeof(PyObject), 0, sizeof(Bound) - sizeof(PyObject));
    b->dev = dev;
    b->nvary = (int)nvary;
    PyObject *const *slots = args + 3;
    Py_ssize_t off = 0, v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Launcher *l = (Launcher *)PyTuple_GET_ITEM(args[0], i);
        Py_INCREF(l);
        b->launchers[i] = (PyObject *)l;
        b->n = (int)i + 1;
        KeyState *ks = &b->ks[i];
        uint64_t h = hash_seed(dev);
        b->first[i] = l->nslots;
        for (int j = 0; j < l->nslots; j++) {
            if (v < nvary && vary[v] == off + j) {
                if (!b->nv[i]) b->first[i] = j;
                b->vidx[i][b->nv[i]++] = (uint8_t)j;
                v++;
                continue;
            }
            PyObject *o = slots[off + j];
            int r = key_slot(l, l->codes[j], o, &ks->key[2 * j], &ks->key[2 * j + 1],
                             &ks->ptrs[j], &ks->ivals[j], &ks->fvals[j]);
            if (r != 1) {
                Py_DECREF(b);
                if (r < 0) return NULL;
                Py_RETURN_NONE;
            }
            Py_INCREF(o);
            ks->objs[j] = o;
            if (!b->nv[i]) h = mix(mix(h, ks->key[2 * j]), ks->key[2 * j + 1]);
        }
        ks->hash = h;
        off += l->nslots;
    }
    PyObject_GC_Track(b);
    return (PyObject *)b;
}

/* Launcher i's key state for vals (its varying slots, in order): the fixed slots copied from
 * the Bound (launch_prepared replaces the copied pointers), the varying ones keyed, then the
 * hash chain of compute_key resumed at the first varying slot. Returns 1, 0 or -1. */
static int bound_key(Bound *b, int i, PyObject *const *vals, KeyState *ks) {
    Launcher *l = (Launcher *)b->launchers[i];
    const KeyState *c = &b->ks[i];
    size_t ns = (size_t)l->nslots;
    memcpy(ks->key, c->key, sizeof(uint64_t) * 2 * ns);
    memcpy(ks->ptrs, c->ptrs, sizeof(uint64_t) * ns);
    memcpy(ks->ivals, c->ivals, sizeof(int64_t) * ns);
    memcpy(ks->fvals, c->fvals, sizeof(double) * ns);
    memcpy(ks->objs, c->objs, sizeof(PyObject *) * ns);
    for (int k = 0; k < b->nv[i]; k++) {
        int j = b->vidx[i][k];
        ks->objs[j] = vals[k];
        int r = key_slot(l, l->codes[j], vals[k], &ks->key[2 * j], &ks->key[2 * j + 1],
                         &ks->ptrs[j], &ks->ivals[j], &ks->fvals[j]);
        if (r != 1) return r;
    }
    uint64_t h = c->hash;
    for (int j = b->first[i]; j < l->nslots; j++)
        h = mix(mix(h, ks->key[2 * j]), ks->key[2 * j + 1]);
    ks->hash = h;
    return 1;
}

/* Check fl_launch_bound's head (bound, launchers, grids, stream, dev) and prepare every call
 * of the group into p. Returns 1, 0 (launchers or dev other than bound, or some call takes
 * the Python path: nothing prepared) or -1. */
static int bound_prepare(PyObject *const *args, Py_ssize_t nargs, Prepared *p,
                         unsigned long long *stream, int *any) {
    if (nargs < 5 || Py_TYPE(args[0]) != &BoundType || !PyTuple_CheckExact(args[1]) ||
        !PyTuple_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "fl_launch_bound(bound, launchers: tuple, "
                                         "grids: tuple, stream, dev, *values)");
        return -1;
    }
    Bound *b = (Bound *)args[0];
    if (nargs != 5 + b->nvary) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd",
                     5 + (Py_ssize_t)b->nvary, nargs);
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args[1]);
    if (PyTuple_GET_SIZE(args[2]) != n) {
        PyErr_SetString(PyExc_ValueError, "one grid per launcher");
        return -1;
    }
    *stream = PyLong_AsUnsignedLongLong(args[3]);
    if (*stream == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    long long dev = PyLong_AsLongLong(args[4]);
    if (dev == -1 && PyErr_Occurred()) return -1;
    if (n != b->n || !n || dev != b->dev) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyTuple_GET_ITEM(args[1], i) != b->launchers[i]) return 0;
    PyObject *const *vals = args + 5;
    *any = 0;
    for (int i = 0; i < b->n; i++) {
        int r = parse_grid(PyTuple_GET_ITEM(args[2], i), p[i].g);
        if (r != 1) return r;
        r = bound_key(b, i, vals, &p[i].ks);
        if (r != 1) return r;
        p[i].dev = dev;
        if (!lookup((Launcher *)b->launchers[i], &p[i])) return 0;
        *any |= (p[i].g[0] * p[i].g[1] * p[i].g[2]) != 0;
        vals += b->nv[i];
    }
    return 1;
}

/* fl_launch_bound(bound, launchers: tuple, grids: tuple, stream, dev, *values): fl_launch_group
 * for the slots of fl_bind with values in the varying ones. NotImplemented (nothing launched)
 * when launchers are not the bound ones, dev is not the bound one or some call would take
 * the Python path. */
static PyObject *fl_launch_bound(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    Prepared p[MAX_GROUP];
    unsigned long long stream;
    int any;
    int r = bound_prepare(args, nargs, p, &stream, &any);
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NOTIMPLEMENTED;
    Bound *b = (Bound *)args[0];
    if (any && ensure_context(b->dev)) return NULL;
    for (int i = 0; i < b->n; i++)
        if (launch_prepared((Launcher *)b->launchers[i], &p[i], stream)) return NULL;
    Py_RETURN_NONE;
}

/* fl_time_bound(reps, bound, launchers, grids, stream, dev, *values) -> (prepare_ns,
 * launch_ns): fl_time_group for fl_launch_bound. None where it would not launch. */
static PyObject *fl_time_bound(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    long reps = parse_reps(args, nargs, "fl_time_bound(reps, bound, launchers, grids, "
                                        "stream, dev, *values)");
    if (reps < 0) return NULL;
    Prepared p[MAX_GROUP];
    unsigned long long stream;
    int any, r = 1;
    double t0 = now_ns();
    for (long k = 0; k < reps && r == 1; k++)
        r = bound_prepare(args + 1, nargs - 1, p, &stream, &any);
    double t1 = now_ns();
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NONE;
    Bound *b = (Bound *)args[1];
    return time_launches(b->launchers, b->n, p, reps, stream, b->dev, any, t1 - t0);
}

/* fl_bound_key(bound, i, dev, *values) -> bytes or None: launcher i's key as fl_launch_bound
 * computes it (equal to fl_key of its full slots); None for another dev or an unsupported
 * value. */
static PyObject *fl_bound_key(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 3 || Py_TYPE(args[0]) != &BoundType) {
        PyErr_SetString(PyExc_TypeError, "fl_bound_key(bound, i, dev, *values)");
        return NULL;
    }
    Bound *b = (Bound *)args[0];
    if (nargs != 3 + b->nvary) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd",
                     3 + (Py_ssize_t)b->nvary, nargs);
        return NULL;
    }
    long i = PyLong_AsLong(args[1]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= b->n) {
        PyErr_SetString(PyExc_IndexError, "launcher index out of range");
        return NULL;
    }
    long long dev = PyLong_AsLongLong(args[2]);
    if (dev == -1 && PyErr_Occurred()) return NULL;
    if (dev != b->dev) Py_RETURN_NONE;
    PyObject *const *vals = args + 3;
    for (long k = 0; k < i; k++) vals += b->nv[k];
    KeyState ks;
    int r = bound_key(b, (int)i, vals, &ks);
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(
        (const char *)ks.key,
        (Py_ssize_t)(sizeof(uint64_t) * 2 * ((Launcher *)b->launchers[i])->nslots));
}

/* fl_key(launcher, dev, *slots) -> bytes or None */
static PyObject *fl_key(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    Launcher *self;
    if (parse_head(args, nargs, 2, &self)) return NULL;
    KeyState ks;
    long long dev;
    int r = compute_key(self, args + 1, &ks, &dev);
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)ks.key,
                                     (Py_ssize_t)(sizeof(uint64_t) * 2 * self->nslots));
}

/* fl_register(launcher, dev, key: bytes, fn: int, block, grid_mult, shared, coop, pdl,
 *             n_null, types: bytes, kernel, slots: tuple[, descs: bytes])
 * descs: one DescMeta (10 int32: swizzle, elem_size, elem_type, fp4_padded, rank,
 * block[5]) per T_DESC parameter, in parameter order. */
static PyObject *fl_register(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if ((nargs != 13 && nargs != 14) || Py_TYPE(args[0]) != &LauncherType ||
        !PyTuple_Check(args[12]) || (nargs == 14 && !PyBytes_Check(args[13]))) {
        PyErr_SetString(PyExc_TypeError, "fl_register takes 13 or 14 arguments");
        return NULL;
    }
    Launcher *self = (Launcher *)args[0];
    long long dev = PyLong_AsLongLong(args[1]);
    if (dev == -1 && PyErr_Occurred()) return NULL;
    PyObject *kb = args[2], *tb = args[10];
    size_t klen = sizeof(uint64_t) * 2 * (size_t)self->nslots;
    if (!PyBytes_Check(kb) || (size_t)PyBytes_GET_SIZE(kb) != klen) {
        PyErr_SetString(PyExc_ValueError, "key must be the bytes fl_key returned");
        return NULL;
    }
    if (!PyBytes_Check(tb) || PyBytes_GET_SIZE(tb) != self->nparams) {
        PyErr_SetString(PyExc_ValueError, "types must hold one byte per kernel parameter");
        return NULL;
    }
    const uint8_t *types = (const uint8_t *)PyBytes_AS_STRING(tb);
    Py_ssize_t ndesc = 0;
    for (int i = 0; i < self->nparams; i++) {
        if (types[i] > T_DESC) {
            PyErr_SetString(PyExc_ValueError, "unknown parameter type code");
            return NULL;
        }
        ndesc += types[i] == T_DESC;
    }
    Py_ssize_t db = nargs == 14 ? PyBytes_GET_SIZE(args[13]) : 0;
    if (db != ndesc * (Py_ssize_t)sizeof(DescMeta)) {
        PyErr_Format(PyExc_ValueError, "descs must hold %zd bytes per tensor-descriptor "
                     "parameter (%zd of them)", (Py_ssize_t)sizeof(DescMeta), ndesc);
        return NULL;
    }
    const DescMeta *dm = ndesc ? (const DescMeta *)PyBytes_AS_STRING(args[13]) : NULL;
    for (Py_ssize_t i = 0; i < ndesc; i++) {
        int ok = dm[i].rank >= 1 && dm[i].rank <= MAX_DESC_RANK && dm[i].elem_size > 0;
        for (int j = 0; ok && j < dm[i].rank; j++) ok = dm[i].block[j] >= 1 &&
                                                        dm[i].block[j] <= 256;
        if (!ok) {
            PyErr_SetString(PyExc_ValueError, "bad tensor-descriptor metadata");
            return NULL;
        }
    }
    unsigned long long fn = PyLong_AsUnsignedLongLong(args[3]);
    long block = PyLong_AsLong(args[4]), mult = PyLong_AsLong(args[5]);
    long shared = PyLong_AsLong(args[6]), coop = PyLong_AsLong(args[7]);
    long pdl = PyLong_AsLong(args[8]), n_null = PyLong_AsLong(args[9]);
    if (PyErr_Occurred()) return NULL;
    if (block <= 0 || mult <= 0 || shared < 0 || n_null < 0 || n_null > 2) {
        PyErr_SetString(PyExc_ValueError, "bad launch geometry");
        return NULL;
    }
    const uint64_t *key = (const uint64_t *)PyBytes_AS_STRING(kb);
    uint64_t h = hash_seed(dev);
    for (int i = 0; i < 2 * self->nslots; i++) h = mix(h, key[i]);
    PyObject *slots = args[12];
    if (PyTuple_GET_SIZE(slots) != self->nslots) {
        PyErr_SetString(PyExc_ValueError, "slots must hold the call's parameters and options");
        return NULL;
    }
    int has_str = 0;
    for (int i = 0; i < self->nslots; i++) {
        if (key[2 * i] == G_CSTR) {
            PyObject *o = PyTuple_GET_ITEM(slots, i);
            if (!PyUnicode_CheckExact(o) || (uint64_t)PyObject_Hash(o) != key[2 * i + 1]) {
                PyErr_SetString(PyExc_ValueError, "slots do not match the key");
                return NULL;
            }
            has_str = 1;
        }
    }
    for (int i = 0; i < self->n_entries; i++)
        if (self->entries[i].hash == h && !memcmp(self->entries[i].key, key, klen) &&
            strs_equal(&self->entries[i], &PyTuple_GET_ITEM(slots, 0), self->nslots))
            Py_RETURN_FALSE;
    if (self->n_entries == self->cap) {
        int cap = self->cap ? 2 * self->cap : 4;
        Entry *ne = PyMem_Realloc(self->entries, sizeof(Entry) * (size_t)cap);
        if (!ne) return PyErr_NoMemory();
        self->entries = ne;
        self->cap = cap;
    }
    Entry *e = &self->entries[self->n_entries];
    e->key = PyMem_Malloc(klen);
    e->types = PyMem_Malloc((size_t)self->nparams + 1);
    if (!e->key || !e->types) {
        PyMem_Free(e->key);
        PyMem_Free(e->types);
        return PyErr_NoMemory();
    }
    e->strs = NULL;
    e->descs = NULL;
    if (ndesc) {
        e->descs = PyMem_Malloc(sizeof(DescMeta) * (size_t)ndesc);
        if (!e->descs) {
            PyMem_Free(e->key);
            PyMem_Free(e->types);
            return PyErr_NoMemory();
        }
        memcpy(e->descs, dm, sizeof(DescMeta) * (size_t)ndesc);
    }
    if (has_str) {
        e->strs = PyMem_Calloc((size_t)self->nslots, sizeof(PyObject *));
        if (!e->strs) {
            PyMem_Free(e->key);
            PyMem_Free(e->types);
            PyMem_Free(e->descs);
            return PyErr_NoMemory();
        }
        for (int i = 0; i < self->nslots; i++) {
            if (key[2 * i] == G_CSTR) {
                e->strs[i] = PyTuple_GET_ITEM(slots, i);
                Py_INCREF(e->strs[i]);
            }
        }
    }
    memcpy(e->key, key, klen);
    memcpy(e->types, types, (size_t)self->nparams);
    e->hash = h;
    e->fn = (CUfunction)(uintptr_t)fn;
    e->block = (unsigned int)block;
    e->grid_mult = (unsigned int)mult;
    e->shared = (unsigned int)shared;
    e->coop = (int)coop;
    e->pdl = (int)pdl;
    e->n_null = (int)n_null;
    Py_INCREF(args[11]);
    e->kernel = args[11];
    self->n_entries++;
    Py_RETURN_TRUE;
}

/* fl_new(codes: bytes, nparams, dtypes: tuple, tensor_types: tuple, not_set
 *        [, desc_types: tuple]) */
static PyObject *fl_new(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if ((nargs != 5 && nargs != 6) || !PyBytes_Check(args[0]) || !PyTuple_Check(args[2]) ||
        !PyTuple_Check(args[3]) || (nargs == 6 && !PyTuple_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError,
                        "fl_new(codes: bytes, nparams, dtypes, types, not_set[, desc_types])");
        return NULL;
    }
    PyObject *layouts = PyList_New(0);
    if (!layouts) return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    long np = PyLong_AsLong(args[1]);
    if (np == -1 && PyErr_Occurred()) return NULL;
    if (n > MAX_SLOTS || np < 0 || np > n) {
        PyErr_Format(PyExc_ValueError, "at most %d slots", MAX_SLOTS);
        Py_DECREF(layouts);
        return NULL;
    }
    const uint8_t *codes = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (codes[i] > C_OPTION) {
            PyErr_SetString(PyExc_ValueError, "unknown slot code");
            Py_DECREF(layouts);
            return NULL;
        }
    }
    Launcher *self = PyObject_New(Launcher, &LauncherType);
    if (!self) { Py_DECREF(layouts); return NULL; }
    self->nslots = (int)n;
    self->nparams = (int)np;
    memset(self->codes, 0, sizeof self->codes);
    memcpy(self->codes, codes, (size_t)n);
    memset(self->last_ok, 0, sizeof self->last_ok);
    Py_INCREF(args[2]);
    self->dtypes = args[2];
    Py_INCREF(args[3]);
    self->tensor_types = args[3];
    Py_INCREF(args[4]);
    self->not_set = args[4];
    self->desc_types = nargs == 6 ? args[5] : PyTuple_New(0);
    if (nargs == 6) Py_INCREF(args[5]);
    self->layouts = layouts;
    self->dcache = NULL;
    self->entries = NULL;
    self->n_entries = self->cap = 0;
    self->hits = 0;
    self->encodes = 0;
    return (PyObject *)self;
}

/* fl_info(launcher) -> (hits, variants) */
static PyObject *fl_info(PyObject *mod, PyObject *arg) {
    if (Py_TYPE(arg) != &LauncherType) {
        PyErr_SetString(PyExc_TypeError, "expected a native Launcher");
        return NULL;
    }
    Launcher *self = (Launcher *)arg;
    return Py_BuildValue("(Ki)", self->hits, self->n_entries);
}

/* fl_encodes(launcher) -> CUtensorMaps encoded so far */
static PyObject *fl_encodes(PyObject *mod, PyObject *arg) {
    if (Py_TYPE(arg) != &LauncherType) {
        PyErr_SetString(PyExc_TypeError, "expected a native Launcher");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(((Launcher *)arg)->encodes);
}

/* fl_clear(launcher): forget every variant */
static PyObject *fl_clear(PyObject *mod, PyObject *arg) {
    if (Py_TYPE(arg) != &LauncherType) {
        PyErr_SetString(PyExc_TypeError, "expected a native Launcher");
        return NULL;
    }
    Launcher *self = (Launcher *)arg;
    for (int i = 0; i < self->n_entries; i++) entry_free(&self->entries[i], self->nslots);
    self->n_entries = 0;
    memset(self->last_ok, 0, sizeof self->last_ok);
    if (self->dcache) memset(self->dcache, 0, sizeof(DescCache) * (size_t)self->nparams);
    Py_RETURN_NONE;
}

/* fl_raw_desc(launcher, desc) -> RawDesc or None: a RawDesc keyed as the host descriptor desc
 * for launcher, with desc's address, shape, strides and padding (None where desc is not
 * keyed in C). */
static PyObject *fl_raw_desc(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || Py_TYPE(args[0]) != &LauncherType) {
        PyErr_SetString(PyExc_TypeError, "fl_raw_desc(launcher, desc)");
        return NULL;
    }
    Launcher *l = (Launcher *)args[0];
    PyObject *d = args[1];
    Py_ssize_t nd = PyTuple_GET_SIZE(l->desc_types), cls = -1;
    for (Py_ssize_t i = 0; i < nd; i++)
        if ((PyObject *)Py_TYPE(d) == PyTuple_GET_ITEM(l->desc_types, i)) cls = i;
    if (cls < 0) Py_RETURN_NONE;
    uint64_t tag, val, addr;
    int r = key_desc(l, cls, d, &tag, &val, &addr);
    if (r < 0) return NULL;
    if (!r) Py_RETURN_NONE;
    int rank = (int)((val >> 7) & 7);
    RawDesc *o = PyObject_New(RawDesc, &RawDescType);
    if (!o) return NULL;
    memset((char *)o + sizeof(PyObject), 0, sizeof(RawDesc) - sizeof(PyObject));
    Py_INCREF(l);
    o->launcher = (PyObject *)l;
    o->tag = tag;
    o->val = val;
    o->addr = addr;
    o->rank = rank;
    if (read_ints(d, s_shape, rank, o->shape, 0) || read_ints(d, s_strides, rank, o->strides, 0)) {
        Py_DECREF(o);
        return NULL;
    }
    PyObject *pad = PyObject_GetAttr(d, s_padding);
    if (!pad) { Py_DECREF(o); return NULL; }
    o->padding = PyUnicode_Check(pad) && PyUnicode_Compare(pad, s_nan) == 0;
    Py_DECREF(pad);
    return (PyObject *)o;
}

#include "hot.c"

static PyMethodDef methods[] = {
    {"fl_hot", fl_hot, METH_O, "arm a public op's per-call path: Hot"},
    {"fl_raw_desc", (PyCFunction)(void (*)(void))fl_raw_desc, METH_FASTCALL,
     "a descriptor as raw fields keyed for a launcher: RawDesc or None"},
    {"fl_hot_add", (PyCFunction)(void (*)(void))fl_hot_add, METH_FASTCALL,
     "add_lora through the Hot of w's plan for x's rows: bool"},
    {"fl_hot_shrink", (PyCFunction)(void (*)(void))fl_hot_shrink, METH_FASTCALL,
     "lora_shrink through the Hot of w's plan for x's rows: y or False"},
    {"fl_hot_expand", (PyCFunction)(void (*)(void))fl_hot_expand, METH_FASTCALL,
     "lora_expand through the Hot of w's plan for base_out's rows: bool"},
    {"fl_launch", (PyCFunction)(void (*)(void))fl_launch, METH_FASTCALL, "launch or NotImplemented"},
    {"fl_launch_group", (PyCFunction)(void (*)(void))fl_launch_group, METH_FASTCALL,
     "launch a group of kernels or NotImplemented"},
    {"fl_time_group", (PyCFunction)(void (*)(void))fl_time_group, METH_FASTCALL,
     "(prepare_ns, launch_ns) per repetition of a group"},
    {"fl_bind", (PyCFunction)(void (*)(void))fl_bind, METH_FASTCALL,
     "key a group's fixed slots once: Bound or None"},
    {"fl_launch_bound", (PyCFunction)(void (*)(void))fl_launch_bound, METH_FASTCALL,
     "launch a bound group with its varying slots or NotImplemented"},
    {"fl_time_bound", (PyCFunction)(void (*)(void))fl_time_bound, METH_FASTCALL,
     "(prepare_ns, launch_ns) per repetition of a bound group"},
    {"fl_bound_key", (PyCFunction)(void (*)(void))fl_bound_key, METH_FASTCALL,
     "a bound launcher's key bytes or None"},
    {"fl_key", (PyCFunction)(void (*)(void))fl_key, METH_FASTCALL, "native key bytes or None"},
    {"fl_register", (PyCFunction)(void (*)(void))fl_register, METH_FASTCALL, "store a variant"},
    {"fl_new", (PyCFunction)(void (*)(void))fl_new, METH_FASTCALL, "new Launcher"},
    {"fl_info", fl_info, METH_O, "(hits, variants)"},
    {"fl_encodes", fl_encodes, METH_O, "CUtensorMaps encoded"},
    {"fl_clear", fl_clear, METH_O, "forget variants"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "lora_dispatch_native", NULL, -1,
                                    methods};

PyMODINIT_FUNC PyInit_lora_dispatch_native(void) {
    if (PyType_Ready(&LauncherType) < 0 || PyType_Ready(&BoundType) < 0 ||
        PyType_Ready(&HotType) < 0 || PyType_Ready(&RawDescType) < 0)
        return NULL;
    s_data_ptr = PyUnicode_InternFromString("data_ptr");
    s_dtype = PyUnicode_InternFromString("dtype");
    s_base = PyUnicode_InternFromString("base");
    s_block_shape = PyUnicode_InternFromString("block_shape");
    s_layout = PyUnicode_InternFromString("layout");
    s_shape = PyUnicode_InternFromString("shape");
    s_strides = PyUnicode_InternFromString("strides");
    s_padding = PyUnicode_InternFromString("padding");
    s_nan = PyUnicode_InternFromString("nan");
    if (!s_data_ptr || !s_dtype || !s_base || !s_block_shape || !s_layout || !s_shape ||
        !s_strides || !s_padding || !s_nan || hot_init_strings())
        return NULL;
    return PyModule_Create(&moddef);
}
