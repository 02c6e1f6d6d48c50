/* The public ops' per-call paths in one C call each (included by native.c).
 *
 * An eager call whose launches were bound once (a Bound of fl_bind) repeats them for each new
 * x / y / base_out. The Python side arms a Hot per plan (kernels/triton/launch.py: _arm_hot
 * and _arm_hot_desc for add_lora, _arm_pub for lora_shrink and lora_expand) holding what that
 * launch was made for; calling it
 *   add_lora:    hot(base_out, x, w, batch) -> bool
 *   lora_shrink: hot(x, w, batch) -> y (a new float32 [S, T, R] tensor) or False
 *   lora_expand: hot(y, w, batch, base_out) -> bool
 * makes every check of the public op's validation and of the armed path (same weights at the
 * same version, batch, launch group, device, stream, thread, workspace generation, no stream
 * capture, the group's guards), builds the varying slots (the call's tensors, their strides,
 * their tensor descriptors where the plan takes TMA kernels, in the order of the Hot's
 * layout) and launches the group. It returns False, having launched nothing, where any check
 * fails; the caller then takes the Python path, which validates (raising the public errors)
 * and launches the same kernels.
 *
 * fl_hot_add / fl_hot_shrink / fl_hot_expand are the public ops' entries: each finds the Hot
 * of w's plan for the call's row count (w._fl_hot[T] is add_lora's plan memo list, the Hot at
 * HOT_MEMO; w._fl_hot_s[T] / w._fl_hot_e[T] a one-item list) and calls it where w's backend
 * selection is the one the Hot was armed under.
 */

#define HOT_MEMO 5 /* launch.AddPlan.memo index of the armed per-call path */

enum { HOT_X_DESC = 1, HOT_OUT_DESC = 2 };
enum { OP_ADD, OP_SHRINK, OP_EXPAND, OP_COUNT };
/* the varying values a layout names (launch.py mirrors these codes) */
enum { V_X, V_XS0, V_XS1, V_XD, V_O, V_OS0, V_OS1, V_OD, V_Y, V_YS0, V_YS1, V_YS2, V_COUNT };
#define HOT_MAX_VARYING 16

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int op;                   /* OP_ADD, OP_SHRINK, OP_EXPAND */
    /* what the launch was made for */
    PyObject *wref, *bref;    /* weakrefs to the weights and the batch */
    long long ver;            /* w.version */
    PyObject *sel;            /* w._selection when it picks the arming backend, else None */
    long long sel_gen;        /* sel[0]: the registry generation it was selected at */
    PyObject *reg;            /* the registry module's dict ("generation" == sel[0]) */
    PyObject *gdict, *gname;  /* gdict[gname] is group */
    PyObject *group;
    PyObject *gen_list;       /* gen_list[0] == gen: no workspace replaced since */
    long long gen;
    unsigned long ident;      /* thread */
    PyObject *ready;          /* callable: the group's guards */
    PyObject *stream_of;      /* callable(dev) -> the current raw stream */
    PyObject *capturing;      /* None: ask the driver; else callable() -> bool */
    PyObject *stream_obj, *dev_obj, *device;
    unsigned long long stream;
    long long dev;
    /* the call's contract (the public op's validation) */
    PyObject *tensor_type, *w_type, *b_type;
    long long t, k, n, s, r, num_slots, isz;
    int need_ms;              /* batch.max_slot must be known (not None) */
    PyObject *dtype;          /* w.dtype */
    PyObject *out_dtypes;     /* tuple: base_out dtypes the op takes */
    PyObject *ydtype;         /* lora_expand: y's dtype; lora_shrink: the new y's */
    PyObject *alloc, *yshape, *alloc_kw; /* lora_shrink: alloc(yshape, dtype=, device=) */
    /* the launch */
    PyObject *launch;         /* fl_launch_bound (called in C) or a stand-in callable */
    PyObject *bound, *tables, *grids;
    int kind;                 /* HOT_X_DESC | HOT_OUT_DESC */
    int nv;                   /* varying slots */
    unsigned char layout[HOT_MAX_VARYING]; /* V_* of each, in slot order */
    PyObject *xdesc, *xtile;  /* xdesc(x, t, k, x_row_stride, xtile) */
    PyObject *odesc, *otile;  /* odesc(base_out, t, n, out_row_stride, otile) */
    PyObject *xraw, *oraw;    /* RawDesc standing in for those (None: call xdesc / odesc) */
    PyObject *t_obj, *k_obj, *n_obj;
    PyObject *on_decline;     /* callable() when the launch returned NotImplemented */
    unsigned long long calls; /* launches made */
} Hot;

static PyObject *s_hot_tensor; /* torch.Tensor, set by the first fl_hot */
static PyObject *s_version, *s_selection, *s_generation, *s_launches, *s_stride, *s_device,
    *s_num_tokens, *s_capacity, *s_max_slot, *s_fl_hot, *s_fl_hot_s, *s_fl_hot_e;

static PyObject *fl_launch_bound(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

#define HOT_FIELDS(X) \
    X(wref) X(bref) X(sel) X(reg) X(gdict) X(gname) X(group) X(gen_list) X(ready) \
    X(stream_of) X(capturing) X(stream_obj) X(dev_obj) X(device) X(tensor_type) X(w_type) \
    X(b_type) X(dtype) X(out_dtypes) X(ydtype) X(alloc) X(yshape) X(launch) X(bound) \
    X(tables) X(grids) X(xdesc) X(xtile) X(odesc) X(otile) X(xraw) X(oraw) X(t_obj) X(k_obj) \
    X(n_obj) X(on_decline)

static int hot_traverse(Hot *self, visitproc visit, void *arg) {
#define V(f) Py_VISIT(self->f);
    HOT_FIELDS(V)
#undef V
    Py_VISIT(self->alloc_kw);
    return 0;
}

static int hot_clear(Hot *self) {
#define C(f) Py_CLEAR(self->f);
    HOT_FIELDS(C)
#undef C
    Py_CLEAR(self->alloc_kw);
    return 0;
}

static void hot_dealloc(Hot *self) {
    PyObject_GC_UnTrack(self);
    hot_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *hot_call(Hot *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *hot_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames) {
    return hot_call((Hot *)self, args, nargsf, kwnames);
}

static PyObject *hot_get_calls(Hot *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->calls);
}

static PyGetSetDef hot_getset[] = {
    {"calls", (getter)hot_get_calls, NULL, "launches made through this path", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lora_dispatch_native.Hot",
    .tp_basicsize = sizeof(Hot),
    .tp_dealloc = (destructor)hot_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_traverse = (traverseproc)hot_traverse,
    .tp_clear = (inquiry)hot_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Hot, vectorcall),
    .tp_getset = hot_getset,
    .tp_doc = "a public op's armed per-call path: hot(base_out, x, w, batch) -> bool "
              "(add_lora), hot(x, w, batch) -> y or False (lora_shrink), "
              "hot(y, w, batch, base_out) -> bool (lora_expand).",
};

/* An object's integer attribute into *v: 1, or 0 (missing / not an int: no error set). */
static int attr_ll(PyObject *o, PyObject *name, long long *v) {
    PyObject *a = PyObject_GetAttr(o, name);
    if (!a) { PyErr_Clear(); return 0; }
    int ok = PyLong_CheckExact(a);
    if (ok) {
        *v = PyLong_AsLongLong(a);
        if (*v == -1 && PyErr_Occurred()) { PyErr_Clear(); ok = 0; }
    }
    Py_DECREF(a);
    return ok;
}

/* An n-d size (tensor.shape / tensor.stride()) into v: 1, or 0 (no error set). */
static int ints_ll(PyObject *seq, Py_ssize_t n, long long *v) {
    if (!seq) { PyErr_Clear(); return 0; }
    int ok = PyTuple_Check(seq) && PyTuple_GET_SIZE(seq) == n;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(seq, i));
        if (v[i] == -1 && PyErr_Occurred()) { PyErr_Clear(); ok = 0; }
    }
    return ok;
}

/* o.shape == want (n ints): 1, or 0 (no error set). */
static int shape_is(PyObject *o, Py_ssize_t n, const long long *want) {
    long long v[3];
    PyObject *shape = PyObject_GetAttr(o, s_shape);
    int ok = ints_ll(shape, n, v);
    Py_XDECREF(shape);
    for (Py_ssize_t i = 0; ok && i < n; i++) ok = v[i] == want[i];
    return ok;
}

static PyObject *deref(PyObject *ref) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *o = NULL;
    if (PyWeakref_GetRef(ref, &o) < 0) PyErr_Clear();
    Py_XDECREF(o); /* only compared by identity; the caller holds the live object */
    return o;
#else
    return PyWeakref_GetObject(ref);
#endif
}

/* 1 where o's attribute name is (by identity) want; 0 otherwise (no error set). */
static int attr_is(PyObject *o, PyObject *name, PyObject *want) {
    PyObject *a = PyObject_GetAttr(o, name);
    if (!a) { PyErr_Clear(); return 0; }
    Py_DECREF(a);
    return a == want;
}

static int in_tuple(PyObject *o, PyObject *tup) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tup); i++)
        if (PyTuple_GET_ITEM(tup, i) == o) return 1;
    return 0;
}

/* o.device == self->device: 1, 0, or 0 with the error cleared. */
static int on_device(Hot *self, PyObject *o) {
    PyObject *d = PyObject_GetAttr(o, s_device);
    if (!d) { PyErr_Clear(); return 0; }
    int eq = d == self->device ? 1 : PyObject_RichCompareBool(d, self->device, Py_EQ);
    Py_DECREF(d);
    if (eq < 0) { PyErr_Clear(); return 0; }
    return eq;
}

/* The TMA contract of a row-major [rows, cols] operand (launch._tma_ready): unit inner stride,
 * rows not overlapping, 16-byte row pitch and base. */
static int tma_ok(PyObject *o, const long long *st, long long cols, long long isz,
                  uint64_t *addr) {
    if (st[1] != 1 || st[0] < cols || (st[0] * isz) % 16) return 0;
    if (data_ptr(o, addr)) { PyErr_Clear(); return 0; }
    return *addr % 16 == 0;
}

/* The descriptor of a [rows, cols] operand o at addr with strides st (a tuple): raw set to
 * it, or where raw is None, fn(o, rows, cols, row_stride, tile). A rank-3 raw is x's
 * [cols / sub, rows, sub] view (perm: the column blocks outermost) or out's
 * [rows, cols / sub, sub] one. New reference, or NULL with an exception set. */
static PyObject *hot_desc(PyObject *raw, uint64_t addr, PyObject *fn, PyObject *o,
                          PyObject *rows, PyObject *cols, PyObject *st, PyObject *tile,
                          int perm) {
    if (raw == Py_None) {
        PyObject *a[5] = {o, rows, cols, PyTuple_GET_ITEM(st, 0), tile};
        return PyObject_Vectorcall(fn, a, 5, NULL);
    }
    RawDesc *r = (RawDesc *)raw;
    r->addr = addr;
    if (r->rank == 3 && perm) { /* [cols / sub, rows, sub], strides (sub, row stride, 1) */
        r->shape[0] = PyLong_AsLongLong(cols) / r->shape[2];
        r->shape[1] = PyLong_AsLongLong(rows);
        r->strides[0] = r->shape[2];
        r->strides[1] = PyLong_AsLongLong(PyTuple_GET_ITEM(st, 0));
        r->strides[2] = 1;
        if (PyErr_Occurred()) return NULL;
        Py_INCREF(raw);
        return raw;
    }
    r->shape[0] = PyLong_AsLongLong(rows);
    r->strides[0] = PyLong_AsLongLong(PyTuple_GET_ITEM(st, 0));
    if (r->rank == 3) { /* [rows, cols / sub, sub]: the columns as sub-wide blocks */
        r->shape[1] = PyLong_AsLongLong(cols) / r->shape[2];
        r->strides[1] = r->shape[2];
        r->strides[2] = 1;
    } else {
        r->shape[1] = PyLong_AsLongLong(cols);
        r->strides[1] = 1;
    }
    if (PyErr_Occurred()) return NULL;
    Py_INCREF(raw);
    return raw;
}

/* Everything but the launch: 1 (launch) or 0 (the Python path takes the call). x, out, y:
 * the call's tensors the op takes (NULL where it takes none). */
static int hot_checks(Hot *self, PyObject *out, PyObject *x, PyObject *y, PyObject *w,
                      PyObject *batch) {
    PyObject *tt = self->tensor_type;
    if ((x && (PyObject *)Py_TYPE(x) != tt) || (out && (PyObject *)Py_TYPE(out) != tt) ||
        (y && (PyObject *)Py_TYPE(y) != tt) || (PyObject *)Py_TYPE(w) != self->w_type ||
        (PyObject *)Py_TYPE(batch) != self->b_type)
        return 0;
    if (deref(self->wref) != w || deref(self->bref) != batch) return 0;
    long long v;
    if (!attr_ll(w, s_version, &v) || v != self->ver) return 0;
    if (PyDict_GetItemWithError(self->gdict, self->gname) != self->group) {
        PyErr_Clear();
        return 0;
    }
    if (PyThread_get_thread_ident() != self->ident) return 0;
    PyObject *gen = PyList_GET_ITEM(self->gen_list, 0);
    v = PyLong_AsLongLong(gen);
    if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    if (v != self->gen) return 0;
    /* the public op's validation (ops._fast_ok for add_lora) */
    if (x) {
        long long want[2] = {self->t, self->k};
        if (!shape_is(x, 2, want) || !attr_is(x, s_dtype, self->dtype) || !on_device(self, x))
            return 0;
    }
    if (y) {
        long long want[3] = {self->s, self->t, self->r};
        if (!shape_is(y, 3, want) || !attr_is(y, s_dtype, self->ydtype) || !on_device(self, y))
            return 0;
    }
    if (out) {
        long long want[2] = {self->t, self->n};
        if (!shape_is(out, 2, want)) return 0;
        PyObject *odt = PyObject_GetAttr(out, s_dtype);
        if (!odt) { PyErr_Clear(); return 0; }
        Py_DECREF(odt);
        if (!in_tuple(odt, self->out_dtypes)) return 0;
        if ((self->kind & HOT_OUT_DESC) && odt != self->dtype) return 0;
        if (!on_device(self, out)) return 0;
    }
    long long nt, cap;
    if (!attr_ll(batch, s_num_tokens, &nt) || !attr_ll(batch, s_capacity, &cap) ||
        nt > self->t || self->t > cap)
        return 0;
    PyObject *ms = PyObject_GetAttr(batch, s_max_slot);
    if (!ms) { PyErr_Clear(); return 0; }
    int ok = ms == Py_None && !self->need_ms;
    if (ms != Py_None && PyLong_CheckExact(ms)) {
        v = PyLong_AsLongLong(ms);
        ok = !(v == -1 && PyErr_Occurred()) && v < self->num_slots;
        PyErr_Clear();
    }
    Py_DECREF(ms);
    if (!ok) return 0;
    /* the stream, capture and the group's guards */
    PyObject *s = PyObject_CallOneArg(self->stream_of, self->dev_obj);
    if (!s) { PyErr_Clear(); return 0; }
    ok = PyLong_Check(s) && PyLong_AsUnsignedLongLong(s) == self->stream;
    Py_DECREF(s);
    PyErr_Clear();
    if (!ok) return 0;
    if (self->capturing == Py_None) {
        CUstreamCaptureStatus st;
        if (!p_is_capturing ||
            p_is_capturing((CUstream)(uintptr_t)self->stream, &st) != CUDA_SUCCESS ||
            st != CU_STREAM_CAPTURE_STATUS_NONE)
            return 0;
    } else {
        PyObject *c = PyObject_CallNoArgs(self->capturing);
        if (!c) { PyErr_Clear(); return 0; }
        ok = c == Py_False;
        Py_DECREF(c);
        if (!ok) return 0;
    }
    PyObject *r = PyObject_CallNoArgs(self->ready);
    if (!r) { PyErr_Clear(); return 0; }
    ok = r == Py_True;
    Py_DECREF(r);
    return ok;
}

static const Py_ssize_t hot_nargs[OP_COUNT] = {4, 3, 4};

static PyObject *hot_call(Hot *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != hot_nargs[self->op] || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, self->op == OP_ADD ? "hot(base_out, x, w, batch)"
                                         : self->op == OP_SHRINK ? "hot(x, w, batch)"
                                                                 : "hot(y, w, batch, base_out)");
        return NULL;
    }
    PyObject *out = NULL, *x = NULL, *y = NULL, *w, *batch;
    switch (self->op) {
    case OP_ADD: out = args[0]; x = args[1]; w = args[2]; batch = args[3]; break;
    case OP_SHRINK: x = args[0]; w = args[1]; batch = args[2]; break;
    default: y = args[0]; w = args[1]; batch = args[2]; out = args[3];
    }
    if (!self->launch || !hot_checks(self, out, x, y, w, batch)) Py_RETURN_FALSE;
    PyObject *vals[V_COUNT] = {NULL};
    PyObject *xst = NULL, *ost = NULL, *yst = NULL, *xd = NULL, *od = NULL, *ynew = NULL;
    PyObject *res = NULL;
    long long xs[2], os[2], ys[3];
    int ok = 1;
    if (x) {
        xst = PyObject_CallMethodNoArgs(x, s_stride);
        ok = ints_ll(xst, 2, xs);
    }
    if (ok && out) {
        ost = PyObject_CallMethodNoArgs(out, s_stride);
        ok = ints_ll(ost, 2, os);
    }
    if (ok && y) {
        yst = PyObject_CallMethodNoArgs(y, s_stride);
        ok = ints_ll(yst, 3, ys);
    }
    uint64_t xa = 0, oa = 0;
    if (ok && (self->kind & HOT_X_DESC)) ok = tma_ok(x, xs, self->k, self->isz, &xa);
    if (ok && (self->kind & HOT_OUT_DESC)) ok = tma_ok(out, os, self->n, self->isz, &oa);
    if (!ok) {
        PyErr_Clear();
        res = Py_False;
        Py_INCREF(res);
        goto done;
    }
    if ((self->kind & HOT_X_DESC) &&
        !(xd = hot_desc(self->xraw, xa, self->xdesc, x, self->t_obj, self->k_obj, xst,
                        self->xtile, 1)))
        goto done;
    if ((self->kind & HOT_OUT_DESC) &&
        !(od = hot_desc(self->oraw, oa, self->odesc, out, self->t_obj, self->n_obj, ost,
                        self->otile, 0)))
        goto done;
    if (self->op == OP_SHRINK) { /* the op's result: alloc(yshape, dtype=ydtype, device=) */
        PyObject *a[3] = {self->yshape, self->ydtype, self->device};
        if (!(ynew = PyObject_Vectorcall(self->alloc, a, 1, self->alloc_kw))) goto done;
    }
    if (x) {
        vals[V_X] = x;
        vals[V_XS0] = PyTuple_GET_ITEM(xst, 0);
        vals[V_XS1] = PyTuple_GET_ITEM(xst, 1);
    }
    if (out) {
        vals[V_O] = out;
        vals[V_OS0] = PyTuple_GET_ITEM(ost, 0);
        vals[V_OS1] = PyTuple_GET_ITEM(ost, 1);
    }
    if (y) {
        vals[V_Y] = y;
        for (int i = 0; i < 3; i++) vals[V_YS0 + i] = PyTuple_GET_ITEM(yst, i);
    } else {
        vals[V_Y] = ynew;
    }
    vals[V_XD] = xd;
    vals[V_OD] = od;
    /* the varying slots of the bound group, in its slot order */
    PyObject *call[5 + HOT_MAX_VARYING] = {self->bound, self->tables, self->grids,
                                           self->stream_obj, self->dev_obj};
    for (int i = 0; i < self->nv; i++) call[5 + i] = vals[self->layout[i]];
    Py_ssize_t nc = 5 + self->nv;
    PyObject *r;
    if (PyCFunction_Check(self->launch) &&
        PyCFunction_GET_FUNCTION(self->launch) == (PyCFunction)(void (*)(void))fl_launch_bound)
        r = fl_launch_bound(NULL, call, nc);
    else
        r = PyObject_Vectorcall(self->launch, call, (size_t)nc, NULL);
    if (!r) goto done;
    if (r == Py_NotImplemented) {
        Py_DECREF(r);
        Py_CLEAR(self->launch); /* never again: the binding is stale */
        r = PyObject_CallNoArgs(self->on_decline);
        if (!r) goto done;
        Py_DECREF(r);
        res = Py_False;
        Py_INCREF(res);
        goto done;
    }
    Py_DECREF(r);
    self->calls++;
    PyObject *cnt = PyObject_GetAttr(self->group, s_launches);
    if (!cnt) goto done;
    PyObject *one = PyLong_FromLong(1);
    PyObject *next = one ? PyNumber_Add(cnt, one) : NULL;
    Py_DECREF(cnt);
    Py_XDECREF(one);
    if (!next) goto done;
    int sr = PyObject_SetAttr(self->group, s_launches, next);
    Py_DECREF(next);
    if (sr) goto done;
    if (ynew) {
        res = ynew;
        ynew = NULL;
    } else {
        res = Py_True;
        Py_INCREF(res);
    }
done:
    Py_XDECREF(xst);
    Py_XDECREF(ost);
    Py_XDECREF(yst);
    Py_XDECREF(xd);
    Py_XDECREF(od);
    Py_XDECREF(ynew);
    return res;
}

/* fl_hot(spec: dict) -> Hot. spec holds every field of Hot by name (see launch._hot_spec). */
static PyObject *fl_hot(PyObject *mod, PyObject *spec) {
    if (!PyDict_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "fl_hot(spec: dict)");
        return NULL;
    }
    Hot *h = PyObject_GC_New(Hot, &HotType);
    if (!h) return NULL;
    memset((char *)h + sizeof(PyObject), 0, sizeof(Hot) - sizeof(PyObject));
#define GET(f)                                                                             \
    {                                                                                      \
        PyObject *o = PyDict_GetItemString(spec, #f);                                      \
        if (!o) {                                                                          \
            PyErr_Format(PyExc_KeyError, "fl_hot: spec lacks %s", #f);                     \
            goto fail;                                                                     \
        }                                                                                  \
        Py_INCREF(o);                                                                      \
        h->f = o;                                                                          \
    }
    HOT_FIELDS(GET)
#undef GET
    if (!PyWeakref_CheckRef(h->wref) || !PyWeakref_CheckRef(h->bref) || !PyDict_Check(h->reg) ||
        !PyDict_Check(h->gdict) || !PyList_Check(h->gen_list) || !PyList_GET_SIZE(h->gen_list) ||
        (h->sel != Py_None && (!PyTuple_Check(h->sel) || PyTuple_GET_SIZE(h->sel) < 1)) ||
        !PyTuple_Check(h->out_dtypes)) {
        PyErr_SetString(PyExc_TypeError, "fl_hot: a spec entry has the wrong type");
        goto fail;
    }
    long long op, kind, need_ms;
    struct { const char *name; long long *dst; } ints[] = {
        {"ver", &h->ver}, {"gen", &h->gen}, {"dev_obj", &h->dev}, {"t_obj", &h->t},
        {"k_obj", &h->k}, {"n_obj", &h->n}, {"s", &h->s}, {"r", &h->r},
        {"num_slots", &h->num_slots}, {"isz", &h->isz}, {"kind", &kind}, {"op", &op},
        {"need_ms", &need_ms}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        PyObject *o = PyDict_GetItemString(spec, ints[i].name);
        if (!o) {
            PyErr_Format(PyExc_KeyError, "fl_hot: spec lacks %s", ints[i].name);
            goto fail;
        }
        long long val = PyLong_AsLongLong(o);
        if (val == -1 && PyErr_Occurred()) goto fail;
        *ints[i].dst = val;
    }
    /* descriptors of the operands the op's call has: x (add, shrink), out (add, expand) */
    if (op < 0 || op >= OP_COUNT || kind < 0 || kind > (HOT_X_DESC | HOT_OUT_DESC) ||
        (op == OP_SHRINK && (kind & HOT_OUT_DESC)) ||
        (op == OP_EXPAND && (kind & HOT_X_DESC))) {
        PyErr_SetString(PyExc_ValueError, "fl_hot: op must be 0-2, kind 0-3 (shrink: 0-1, "
                        "expand: 0 or 2)");
        goto fail;
    }
    h->op = (int)op;
    h->kind = (int)kind;
    h->need_ms = need_ms != 0;
    /* the layout: each code names a value the op's call has */
    PyObject *lay = PyDict_GetItemString(spec, "layout");
    if (!lay || !PyBytes_Check(lay) || PyBytes_GET_SIZE(lay) > HOT_MAX_VARYING) {
        PyErr_SetString(PyExc_TypeError, "fl_hot: layout must be bytes of at most 16 codes");
        goto fail;
    }
    h->nv = (int)PyBytes_GET_SIZE(lay);
    for (int i = 0; i < h->nv; i++) {
        unsigned char c = (unsigned char)PyBytes_AS_STRING(lay)[i];
        int has_x = h->op != OP_EXPAND, has_o = h->op != OP_SHRINK;
        int fine = c < V_COUNT &&
                   (c == V_Y ? h->op != OP_ADD
                    : c >= V_YS0 ? h->op == OP_EXPAND
                    : c == V_XD ? (h->kind & HOT_X_DESC) != 0
                    : c == V_OD ? (h->kind & HOT_OUT_DESC) != 0
                    : c <= V_XS1 ? has_x : has_o);
        if (!fine) {
            PyErr_Format(PyExc_ValueError, "fl_hot: layout code %d does not fit op %d kind %d",
                         (int)c, h->op, h->kind);
            goto fail;
        }
        h->layout[i] = c;
    }
    if (h->op == OP_SHRINK) {
        if (!PyCallable_Check(h->alloc) || !PyTuple_Check(h->yshape)) {
            PyErr_SetString(PyExc_TypeError, "fl_hot: a shrink needs alloc and yshape");
            goto fail;
        }
        if (!(h->alloc_kw = Py_BuildValue("(ss)", "dtype", "device"))) goto fail;
    }
    if ((h->xraw != Py_None && (Py_TYPE(h->xraw) != &RawDescType ||
                                (((RawDesc *)h->xraw)->rank != 2 &&
                                 (((RawDesc *)h->xraw)->rank != 3 ||
                                  ((RawDesc *)h->xraw)->shape[2] < 1)))) ||
        (h->oraw != Py_None && (Py_TYPE(h->oraw) != &RawDescType ||
                                (((RawDesc *)h->oraw)->rank != 2 &&
                                 (((RawDesc *)h->oraw)->rank != 3 ||
                                  ((RawDesc *)h->oraw)->shape[2] < 1))))) {
        PyErr_SetString(PyExc_TypeError, "fl_hot: xraw and oraw must be rank-2 or rank-3 "
                        "RawDescs or None");
        goto fail;
    }
    if (h->sel != Py_None) {
        h->sel_gen = PyLong_AsLongLong(PyTuple_GET_ITEM(h->sel, 0));
        if (h->sel_gen == -1 && PyErr_Occurred()) goto fail;
    }
    h->stream = PyLong_AsUnsignedLongLong(h->stream_obj);
    if (h->stream == (unsigned long long)-1 && PyErr_Occurred()) goto fail;
    PyObject *ident = PyDict_GetItemString(spec, "ident");
    if (!ident) {
        PyErr_SetString(PyExc_KeyError, "fl_hot: spec lacks ident");
        goto fail;
    }
    h->ident = PyLong_AsUnsignedLong(ident);
    if (h->ident == (unsigned long)-1 && PyErr_Occurred()) goto fail;
    if (!s_hot_tensor) {
        Py_INCREF(h->tensor_type);
        s_hot_tensor = h->tensor_type;
    }
    if (h->capturing == Py_None && !p_is_capturing) {
        if (load_cuda()) goto fail;
        if (!p_is_capturing) {
            PyErr_SetString(PyExc_RuntimeError, "fl_hot: libcuda lacks cuStreamIsCapturing");
            goto fail;
        }
    }
    h->vectorcall = hot_vectorcall;
    PyObject_GC_Track(h);
    return (PyObject *)h;
fail:
    Py_DECREF(h);
    return NULL;
}

/* Whether the public op dispatches w to the backend that armed h (ops._impl): w's cached
 * selection is the one h was armed under, at the registry's current generation. */
static int hot_selected(Hot *h, PyObject *w) {
    if (h->sel == Py_None || !attr_is(w, s_selection, h->sel)) return 0;
    PyObject *g = PyDict_GetItemWithError(h->reg, s_generation); /* borrowed */
    if (!g) { PyErr_Clear(); return 0; }
    long long v = PyLong_AsLongLong(g);
    if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    return v == h->sel_gen;
}

/* The Hot of op for this call, or NULL (no error set): w's per-T table (the attribute attr)
 * holds a list whose item idx is the Hot of w's plan for the call's row count, the rows of
 * args[trow]; args[tt] must be a plain tensor. */
static Hot *hot_find(PyObject *const *args, int op, Py_ssize_t tt, Py_ssize_t trow,
                     PyObject *w, PyObject *attr, Py_ssize_t idx) {
    if (!s_hot_tensor || (PyObject *)Py_TYPE(args[tt]) != s_hot_tensor) return NULL;
    PyObject *table = NULL; /* no AttributeError raised and cleared for weights never armed */
#if PY_VERSION_HEX >= 0x030D0000
    int found = PyObject_GetOptionalAttr(w, attr, &table);
#else
    int found = _PyObject_LookupAttr(w, attr, &table);
#endif
    if (found <= 0) { PyErr_Clear(); return NULL; }
    PyObject *shape = PyDict_CheckExact(table) ? PyObject_GetAttr(args[trow], s_shape) : NULL;
    PyObject *memo = NULL;
    if (shape && PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) >= 1)
        memo = PyDict_GetItemWithError(table, PyTuple_GET_ITEM(shape, 0));
    Py_XDECREF(shape);
    Py_DECREF(table); /* memo stays alive: the plan or w's table holds it */
    if (!memo || !PyList_CheckExact(memo) || PyList_GET_SIZE(memo) <= idx) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *h = PyList_GET_ITEM(memo, idx);
    if (Py_TYPE(h) != &HotType || ((Hot *)h)->op != op || !hot_selected((Hot *)h, w))
        return NULL;
    return (Hot *)h;
}

static PyObject *hot_entry(PyObject *const *args, Py_ssize_t nargs, Hot *h) {
    if (!h) Py_RETURN_FALSE;
    Py_INCREF(h); /* the call may drop it from its table */
    PyObject *r = hot_call(h, args, (size_t)nargs, NULL);
    Py_DECREF(h);
    return r;
}

/* fl_hot_add(base_out, x, w, batch) -> bool: the Hot of w's plan for x's rows, called. */
static PyObject *fl_hot_add(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "fl_hot_add(base_out, x, w, batch)");
        return NULL;
    }
    return hot_entry(args, nargs, hot_find(args, OP_ADD, 1, 1, args[2], s_fl_hot, HOT_MEMO));
}

/* fl_hot_shrink(x, w, batch) -> y or False: w._fl_hot_s[T][0], called. */
static PyObject *fl_hot_shrink(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fl_hot_shrink(x, w, batch)");
        return NULL;
    }
    return hot_entry(args, nargs, hot_find(args, OP_SHRINK, 0, 0, args[1], s_fl_hot_s, 0));
}

/* fl_hot_expand(y, w, batch, base_out) -> bool: w._fl_hot_e[T][0] (T: base_out's rows). */
static PyObject *fl_hot_expand(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "fl_hot_expand(y, w, batch, base_out)");
        return NULL;
    }
    return hot_entry(args, nargs, hot_find(args, OP_EXPAND, 0, 3, args[1], s_fl_hot_e, 0));
}

static int hot_init_strings(void) {
    struct { PyObject **dst; const char *s; } names[] = {
        {&s_version, "version"}, {&s_selection, "_selection"}, {&s_generation, "generation"},
        {&s_launches, "launches"}, {&s_stride, "stride"}, {&s_device, "device"},
        {&s_num_tokens, "num_tokens"}, {&s_capacity, "capacity"}, {&s_max_slot, "max_slot"},
        {&s_fl_hot, "_fl_hot"}, {&s_fl_hot_s, "_fl_hot_s"}, {&s_fl_hot_e, "_fl_hot_e"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!(*names[i].dst = PyUnicode_InternFromString(names[i].s))) return -1;
    return 0;
}
