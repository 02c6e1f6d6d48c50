/* add_lora's per-call path in one C call (included by native.c).
 *
 * An eager add_lora whose two launches were bound once (a Bound of fl_bind) repeats them for
 * each new x / base_out. The Python side arms a Hot per plan (kernels/triton/launch.py,
 * _arm_hot and _arm_hot_desc) holding what that launch was made for; calling it
 *   hot(base_out, x, w, batch) -> bool
 * makes every check of the public op's fast validation (ops._fast_ok) and of the armed path
 * (same weights at the same version, batch, launch group, device, stream, thread, workspace
 * generation, no stream capture, the group's guards), builds the varying
 * slots (x and base_out, their strides, their tensor descriptors where the plan takes TMA
 * kernels) and launches the group. It returns False, having launched nothing, where any
 * check fails; the caller then takes the Python path, which validates (raising the public
 * errors) and launches the same kernels.
 *
 * fl_hot_add(base_out, x, w, batch) -> bool is the public op's entry: it finds the Hot of
 * w's plan for x's row count (w._fl_hot[T] is that plan's memo list, the Hot at HOT_MEMO)
 * and calls it where w's backend selection is the one the Hot was armed under.
 */

#define HOT_MEMO 5 /* launch.AddPlan.memo index of the armed per-call path */

enum { HOT_X_DESC = 1, HOT_OUT_DESC = 2 };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
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
    /* the call's contract (ops._fast_ok) */
    PyObject *tensor_type, *w_type, *b_type;
    long long t, k, n, num_slots, isz;
    PyObject *dtype;          /* w.dtype */
    PyObject *out_dtypes;     /* tuple: base_out dtypes add_lora takes */
    /* the launch */
    PyObject *launch;         /* fl_launch_bound (called in C) or a stand-in callable */
    PyObject *bound, *tables, *grids;
    int kind;                 /* HOT_X_DESC | HOT_OUT_DESC */
    PyObject *xdesc, *xtile;  /* xdesc(x, t, k, x_row_stride, xtile) */
    PyObject *odesc, *otile;  /* odesc(base_out, t, n, out_row_stride, otile) */
    PyObject *xraw, *oraw;    /* RawDesc standing in for those (None: call xdesc / odesc) */
    PyObject *t_obj, *k_obj, *n_obj;
    PyObject *on_decline;     /* callable() when the launch returned NotImplemented */
    unsigned long long calls; /* launches made */
} Hot;

static PyObject *s_hot_tensor; /* torch.Tensor, set by the first fl_hot */
static PyObject *s_version, *s_selection, *s_generation, *s_launches, *s_stride, *s_device,
    *s_num_tokens, *s_capacity, *s_max_slot, *s_fl_hot;

static PyObject *fl_launch_bound(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

#define HOT_FIELDS(X) \
    X(wref) X(bref) X(sel) X(reg) X(gdict) X(gname) X(group) X(gen_list) X(ready) \
    X(stream_of) X(capturing) X(stream_obj) X(dev_obj) X(device) X(tensor_type) X(w_type) \
    X(b_type) X(dtype) X(out_dtypes) X(launch) X(bound) X(tables) X(grids) X(xdesc) \
    X(xtile) X(odesc) X(otile) X(xraw) X(oraw) X(t_obj) X(k_obj) X(n_obj) X(on_decline)

static int hot_traverse(Hot *self, visitproc visit, void *arg) {
#define V(f) Py_VISIT(self->f);
    HOT_FIELDS(V)
#undef V
    return 0;
}

static int hot_clear(Hot *self) {
#define C(f) Py_CLEAR(self->f);
    HOT_FIELDS(C)
#undef C
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
    .tp_doc = "add_lora's armed per-call path: hot(base_out, x, w, batch) -> bool.",
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

/* A 2-d size (tensor.shape / tensor.stride()) into v: 1, or 0 (no error set). */
static int pair_ll(PyObject *seq, long long *v) {
    if (!seq) { PyErr_Clear(); return 0; }
    int ok = PyTuple_Check(seq) && PyTuple_GET_SIZE(seq) == 2;
    for (int i = 0; ok && i < 2; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(seq, i));
        if (v[i] == -1 && PyErr_Occurred()) { PyErr_Clear(); ok = 0; }
    }
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
 * it, or where raw is None, fn(o, rows, cols, row_stride, tile). New reference, or NULL with
 * an exception set. */
static PyObject *hot_desc(PyObject *raw, uint64_t addr, PyObject *fn, PyObject *o,
                          PyObject *rows, PyObject *cols, PyObject *st, PyObject *tile) {
    if (raw == Py_None) {
        PyObject *a[5] = {o, rows, cols, PyTuple_GET_ITEM(st, 0), tile};
        return PyObject_Vectorcall(fn, a, 5, NULL);
    }
    RawDesc *r = (RawDesc *)raw;
    r->addr = addr;
    r->shape[0] = PyLong_AsLongLong(rows);
    r->shape[1] = PyLong_AsLongLong(cols);
    r->strides[0] = PyLong_AsLongLong(PyTuple_GET_ITEM(st, 0));
    r->strides[1] = 1;
    if (PyErr_Occurred()) return NULL;
    Py_INCREF(raw);
    return raw;
}

/* Everything but the launch: 1 (launch) or 0 (the Python path takes the call). */
static int hot_checks(Hot *self, PyObject *out, PyObject *x, PyObject *w, PyObject *batch) {
    if ((PyObject *)Py_TYPE(x) != self->tensor_type ||
        (PyObject *)Py_TYPE(out) != self->tensor_type || (PyObject *)Py_TYPE(w) != self->w_type ||
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
    /* ops._fast_ok */
    long long xs[2], os[2];
    PyObject *shape = PyObject_GetAttr(x, s_shape);
    int ok = pair_ll(shape, xs) && xs[0] == self->t && xs[1] == self->k;
    Py_XDECREF(shape);
    if (!ok) return 0;
    shape = PyObject_GetAttr(out, s_shape);
    ok = pair_ll(shape, os) && os[0] == self->t && os[1] == self->n;
    Py_XDECREF(shape);
    if (!ok || !attr_is(x, s_dtype, self->dtype)) return 0;
    PyObject *odt = PyObject_GetAttr(out, s_dtype);
    if (!odt) { PyErr_Clear(); return 0; }
    Py_DECREF(odt);
    if (!in_tuple(odt, self->out_dtypes)) return 0;
    if ((self->kind & HOT_OUT_DESC) && odt != self->dtype) return 0;
    if (!on_device(self, x) || !on_device(self, out)) return 0;
    long long nt, cap;
    if (!attr_ll(batch, s_num_tokens, &nt) || !attr_ll(batch, s_capacity, &cap) ||
        nt > self->t || self->t > cap)
        return 0;
    PyObject *ms = PyObject_GetAttr(batch, s_max_slot);
    if (!ms) { PyErr_Clear(); return 0; }
    ok = ms == Py_None;
    if (!ok && PyLong_CheckExact(ms)) {
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

static PyObject *hot_call(Hot *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 4 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "hot(base_out, x, w, batch)");
        return NULL;
    }
    PyObject *out = args[0], *x = args[1];
    if (!self->launch || !hot_checks(self, out, x, args[2], args[3])) Py_RETURN_FALSE;
    long long xs[2], os[2];
    PyObject *xst = PyObject_CallMethodNoArgs(x, s_stride);
    int ok = pair_ll(xst, xs);
    PyObject *ost = ok ? PyObject_CallMethodNoArgs(out, s_stride) : NULL;
    ok = ok && pair_ll(ost, os);
    uint64_t xa = 0, oa = 0;
    if (ok && (self->kind & HOT_X_DESC)) ok = tma_ok(x, xs, self->k, self->isz, &xa);
    if (ok && (self->kind & HOT_OUT_DESC)) ok = tma_ok(out, os, self->n, self->isz, &oa);
    PyObject *xd = NULL, *od = NULL, *res = NULL;
    if (ok && (self->kind & HOT_X_DESC) &&
        !(xd = hot_desc(self->xraw, xa, self->xdesc, x, self->t_obj, self->k_obj, xst,
                        self->xtile)))
        goto done;
    if (ok && (self->kind & HOT_OUT_DESC) &&
        !(od = hot_desc(self->oraw, oa, self->odesc, out, self->t_obj, self->n_obj, ost,
                        self->otile)))
        goto done;
    if (!ok) {
        PyErr_Clear();
        res = Py_False;
        Py_INCREF(res);
        goto done;
    }
    /* the varying slots of the bound group, in the order launch._xgroup_slots / the plain
     * group bind them */
    PyObject *call[5 + 7] = {self->bound, self->tables, self->grids, self->stream_obj,
                             self->dev_obj};
    PyObject **v = call + 5;
    PyObject *xs0 = PyTuple_GET_ITEM(xst, 0), *xs1 = PyTuple_GET_ITEM(xst, 1);
    PyObject *os0 = PyTuple_GET_ITEM(ost, 0), *os1 = PyTuple_GET_ITEM(ost, 1);
    switch (self->kind) {
    case 0: /* x, its strides, base_out, its strides */
        v[0] = x; v[1] = xs0; v[2] = xs1; v[3] = out; v[4] = os0; v[5] = os1;
        v += 6;
        break;
    case HOT_X_DESC:
        v[0] = xd; v[1] = x; v[2] = xs0; v[3] = xs1; v[4] = out; v[5] = os0; v[6] = os1;
        v += 7;
        break;
    case HOT_OUT_DESC:
        v[0] = x; v[1] = xs0; v[2] = xs1; v[3] = od; v[4] = out; v[5] = os0;
        v += 6;
        break;
    default:
        v[0] = xd; v[1] = x; v[2] = xs0; v[3] = xs1; v[4] = od; v[5] = out; v[6] = os0;
        v += 7;
    }
    Py_ssize_t nc = v - call;
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
    res = Py_True;
    Py_INCREF(res);
done:
    Py_XDECREF(xst);
    Py_XDECREF(ost);
    Py_XDECREF(xd);
    Py_XDECREF(od);
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
    struct { const char *name; long long *dst; } ints[] = {
        {"ver", &h->ver}, {"gen", &h->gen}, {"dev_obj", &h->dev}, {"t_obj", &h->t},
        {"k_obj", &h->k}, {"n_obj", &h->n}, {"num_slots", &h->num_slots}, {"isz", &h->isz},
        {"kind", NULL}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        PyObject *o = PyDict_GetItemString(spec, ints[i].name);
        if (!o) {
            PyErr_Format(PyExc_KeyError, "fl_hot: spec lacks %s", ints[i].name);
            goto fail;
        }
        long long val = PyLong_AsLongLong(o);
        if (val == -1 && PyErr_Occurred()) goto fail;
        if (ints[i].dst) *ints[i].dst = val;
        else h->kind = (int)val;
    }
    if ((h->xraw != Py_None && (Py_TYPE(h->xraw) != &RawDescType ||
                                ((RawDesc *)h->xraw)->rank != 2)) ||
        (h->oraw != Py_None && (Py_TYPE(h->oraw) != &RawDescType ||
                                ((RawDesc *)h->oraw)->rank != 2))) {
        PyErr_SetString(PyExc_TypeError, "fl_hot: xraw / oraw must be rank-2 RawDescs or None");
        goto fail;
    }
    if (h->kind < 0 || h->kind > (HOT_X_DESC | HOT_OUT_DESC)) {
        PyErr_SetString(PyExc_ValueError, "fl_hot: kind must be 0-3");
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

/* fl_hot_add(base_out, x, w, batch) -> bool: the Hot of w's plan for x's rows, called. */
static PyObject *fl_hot_add(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "fl_hot_add(base_out, x, w, batch)");
        return NULL;
    }
    if (!s_hot_tensor || (PyObject *)Py_TYPE(args[1]) != s_hot_tensor) Py_RETURN_FALSE;
    PyObject *table = NULL; /* no AttributeError raised and cleared for weights never armed */
#if PY_VERSION_HEX >= 0x030D0000
    int found = PyObject_GetOptionalAttr(args[2], s_fl_hot, &table);
#else
    int found = _PyObject_LookupAttr(args[2], s_fl_hot, &table);
#endif
    if (found <= 0) { PyErr_Clear(); Py_RETURN_FALSE; }
    PyObject *shape = PyDict_CheckExact(table) ? PyObject_GetAttr(args[1], s_shape) : NULL;
    PyObject *memo = NULL;
    if (shape && PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) == 2)
        memo = PyDict_GetItemWithError(table, PyTuple_GET_ITEM(shape, 0));
    Py_XDECREF(shape);
    Py_DECREF(table); /* memo stays alive: the plan holds it */
    if (!memo || !PyList_CheckExact(memo) || PyList_GET_SIZE(memo) <= HOT_MEMO) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    PyObject *h = PyList_GET_ITEM(memo, HOT_MEMO);
    if (Py_TYPE(h) != &HotType || !hot_selected((Hot *)h, args[2])) Py_RETURN_FALSE;
    Py_INCREF(h); /* the call may drop it from the memo */
    PyObject *r = hot_call((Hot *)h, args, (size_t)nargs, NULL);
    Py_DECREF(h);
    return r;
}

static int hot_init_strings(void) {
    struct { PyObject **dst; const char *s; } names[] = {
        {&s_version, "version"}, {&s_selection, "_selection"}, {&s_generation, "generation"},
        {&s_launches, "launches"}, {&s_stride, "stride"}, {&s_device, "device"},
        {&s_num_tokens, "num_tokens"}, {&s_capacity, "capacity"}, {&s_max_slot, "max_slot"},
        {&s_fl_hot, "_fl_hot"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!(*names[i].dst = PyUnicode_InternFromString(names[i].s))) return -1;
    return 0;
}
