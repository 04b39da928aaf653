/* The codec's remembered plans in C: a message seen before is encoded, laid out for the ring
 * and decoded each in one call (optional: encoder.py, decoder.py and ipc/fastpath.py have the
 * same paths in Python, which decide every case this code refuses).
 *
 * planned(value, share_above, plans) -> Encoded or None
 *   encoder.encode's fast path: a lone array, or a call (args, kwargs) of 1..8 arrays and no
 *   kwargs, whose signature ((dtype, shape, order) of each array; a call's starts with None)
 *   has a remembered plan in ``plans`` (encoder.plans' dict: signature -> (nbytes, head,
 *   ((offset, length, tensor entry), ...)) or None). None: anything else (a subclass, an
 *   array by reference, one of share_above bytes or more, an unseen signature): the Python
 *   path then plans (and remembers) it.
 *
 * pieces(plan, at, prefix) -> ((offset, buffer), ...) or None
 *   ipc.fastpath.pieces: the (offset, buffer) pieces of an Encoded whose writers all copy
 *   plain bytes (a tensor's prefix then its C-contiguous native data; a bytes buffer), placed
 *   at ``at`` after ``prefix`` (bytes or None) at offset 0. None: a buffer needs its writer.
 *
 * remembered(data, at, cache) -> value or None
 *   decoder._fast_decode for bytes: ``data`` is a private copy (immutable, this process's own),
 *   the message from offset ``at`` to its end. ``cache`` is decoder.fast_decodes' dict:
 *   (head bytes, size) -> (is_call, ((offset, prefix bytes, (dtype, shape, strides, data
 *   offset, need)), ...)). Arrays are read-only views of ``data`` (their base). None: not a
 *   message seen before, or an entry this code does not take (the full decode checks all).
 *   Every offset and every array's extent is checked against the message again, though the
 *   cache holds only layouts validated for exactly this head and size.
 *
 * configure(Encoded, write_tensor, write_bytes, SharedBlock): the types and writers the plans
 * name, given once by encoder.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <stdint.h>
#include <string.h>

#define PRE_SIZE 16
#define ENTRY_SIZE 16
#define HEAD_MAX 512     /* decoder._FAST_HEAD_MAX */
#define MAX_ARRAYS 16    /* a decode's stack buffer */
#define FAST_MAX_ARGS 8  /* encoder._FAST_MAX_ARGS */
#define STACK_PIECES 40  /* pieces kept on the stack; more (a MULTI record) on the heap */

static PyObject *Encoded, *write_tensor, *write_bytes, *SharedBlock;
static PyObject *str_C, *str_F, *str_bufs, *str_head;

static inline uint32_t u32_at(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v; /* little-endian hosts only (ipc.ring refuses others) */
}

static PyObject *fast_configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyType_Check(args[0]) || !PyType_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(Encoded, write_tensor, write_bytes, SharedBlock)");
        return NULL;
    }
    PyObject **slots[4] = {&Encoded, &write_tensor, &write_bytes, &SharedBlock};
    for (int i = 0; i < 4; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------ encoding */

/* encoder._by_reference: a view of a shared block (numpy's chain of bases reaches one), or an
 * array of share_above bytes or more. */
static int by_reference(PyArrayObject *a, Py_ssize_t share_above) {
    if (share_above && PyArray_NBYTES(a) >= share_above) return 1;
    PyObject *base = PyArray_BASE(a);
    while (base != NULL) {
        if ((PyObject *)Py_TYPE(base) == SharedBlock) return 1;
        if (!PyArray_Check(base)) return 0;
        base = PyArray_BASE((PyArrayObject *)base);
    }
    return 0;
}

/* encoder._array_sig: (dtype, shape, order) */
static PyObject *array_sig(PyArrayObject *a) {
    int nd = PyArray_NDIM(a);
    npy_intp *dims = PyArray_DIMS(a);
    PyObject *shape = PyTuple_New(nd);
    if (shape == NULL) return NULL;
    for (int i = 0; i < nd; i++) {
        PyObject *d = PyLong_FromSsize_t(dims[i]);
        if (d == NULL) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, i, d);
    }
    int flags = PyArray_FLAGS(a);
    PyObject *order = (nd > 1 && !(flags & NPY_ARRAY_C_CONTIGUOUS) &&
                       (flags & NPY_ARRAY_F_CONTIGUOUS)) ? str_F : str_C;
    PyObject *sig = PyTuple_Pack(3, (PyObject *)PyArray_DESCR(a), shape, order);
    Py_DECREF(shape);
    return sig;
}

static PyObject *fast_planned(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "planned(value, share_above, plans: dict)");
        return NULL;
    }
    if (Encoded == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "planned: configure() was not called");
        return NULL;
    }
    PyObject *value = args[0], *plans = args[2];
    Py_ssize_t share_above = PyLong_AsSsize_t(args[1]);
    if (share_above == -1 && PyErr_Occurred()) return NULL;
    PyObject *arrays[FAST_MAX_ARGS];
    Py_ssize_t count;
    int is_call;
    if (PyArray_CheckExact(value)) {
        arrays[0] = value;
        count = 1;
        is_call = 0;
    } else {
        if (!PyTuple_CheckExact(value) || PyTuple_GET_SIZE(value) != 2) Py_RETURN_NONE;
        PyObject *a = PyTuple_GET_ITEM(value, 0), *kw = PyTuple_GET_ITEM(value, 1);
        if (!PyTuple_CheckExact(a) || !PyDict_CheckExact(kw) || PyDict_GET_SIZE(kw)) Py_RETURN_NONE;
        count = PyTuple_GET_SIZE(a);
        if (count < 1 || count > FAST_MAX_ARGS) Py_RETURN_NONE;
        for (Py_ssize_t i = 0; i < count; i++) {
            arrays[i] = PyTuple_GET_ITEM(a, i);
            if (!PyArray_CheckExact(arrays[i])) Py_RETURN_NONE;
        }
        is_call = 1;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        if (by_reference((PyArrayObject *)arrays[i], share_above)) Py_RETURN_NONE;
    PyObject *sig = PyTuple_New(count + is_call);
    if (sig == NULL) return NULL;
    if (is_call) {
        Py_INCREF(Py_None);
        PyTuple_SET_ITEM(sig, 0, Py_None);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *s = array_sig((PyArrayObject *)arrays[i]);
        if (s == NULL) {
            Py_DECREF(sig);
            return NULL;
        }
        PyTuple_SET_ITEM(sig, i + is_call, s);
    }
    PyObject *hit = PyDict_GetItemWithError(plans, sig); /* borrowed */
    Py_DECREF(sig);
    if (hit == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE; /* unseen: the Python path plans and remembers it */
    }
    /* (nbytes, head, placed): anything else (None: always the walk) is the Python path's */
    if (!PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 3) Py_RETURN_NONE;
    PyObject *placed = PyTuple_GET_ITEM(hit, 2);
    if (!PyTuple_CheckExact(placed) || PyTuple_GET_SIZE(placed) != count) Py_RETURN_NONE;
    Py_INCREF(hit); /* held while the plan is built: a concurrent put may evict it */
    PyObject *out = NULL, *bufs = PyList_New(count);
    if (bufs == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *p = PyTuple_GET_ITEM(placed, i);
        if (!PyTuple_CheckExact(p) || PyTuple_GET_SIZE(p) != 3) {
            Py_CLEAR(bufs);
            Py_INCREF(Py_None);
            out = Py_None;
            goto done;
        }
        PyObject *payload = PyTuple_Pack(2, arrays[i], PyTuple_GET_ITEM(p, 2));
        if (payload == NULL) goto done;
        PyObject *b = PyTuple_Pack(4, PyTuple_GET_ITEM(p, 0), PyTuple_GET_ITEM(p, 1),
                                   write_tensor, payload);
        Py_DECREF(payload);
        if (b == NULL) goto done;
        PyList_SET_ITEM(bufs, i, b);
    }
    PyObject *argv[3] = {PyTuple_GET_ITEM(hit, 0), PyTuple_GET_ITEM(hit, 1), bufs};
    out = PyObject_Vectorcall(Encoded, argv, 3, NULL);
done:
    Py_XDECREF(bufs);
    Py_DECREF(hit);
    return out;
}

/* fastpath._plain: an array the ring's C put copies as it is */
static int plain(PyObject *arr, PyObject *order) {
    if (!PyArray_CheckExact(arr)) return 0;
    PyArrayObject *a = (PyArrayObject *)arr;
    int c = order == str_C ||
            (PyUnicode_Check(order) && PyUnicode_CompareWithASCIIString(order, "C") == 0);
    return c && PyArray_NDIM(a) > 0 && PyArray_IS_C_CONTIGUOUS(a) &&
           PyArray_ISNOTSWAPPED(a);
}

static int add_piece(PyObject **out, Py_ssize_t *n, Py_ssize_t off, PyObject *buf) {
    PyObject *o = PyLong_FromSsize_t(off);
    if (o == NULL) return -1;
    PyObject *t = PyTuple_Pack(2, o, buf);
    Py_DECREF(o);
    if (t == NULL) return -1;
    out[(*n)++] = t;
    return 1;
}

/* a plan's int field as a Py_ssize_t: 0 (no error set) when it is not one */
static int ssize_of(PyObject *o, Py_ssize_t *out) {
    if (!PyLong_CheckExact(o)) return 0;
    *out = PyLong_AsSsize_t(o);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* The pieces of one placed buffer (offset, length, writer, payload) into ``out``: 1, or 0
 * when its writer must write it (the Python path), or -1 with an error set. */
static int buffer_pieces(PyObject *b, Py_ssize_t at, PyObject **out, Py_ssize_t *n) {
    Py_ssize_t off, plen;
    if (!PyTuple_CheckExact(b) || PyTuple_GET_SIZE(b) != 4 ||
        !ssize_of(PyTuple_GET_ITEM(b, 0), &off))
        return 0;
    PyObject *writer = PyTuple_GET_ITEM(b, 2), *payload = PyTuple_GET_ITEM(b, 3);
    if (writer == write_bytes) return add_piece(out, n, at + off, payload);
    /* write_tensor: (array, (prefix, prefix length, dtype, order)) */
    if (writer != write_tensor || !PyTuple_CheckExact(payload) || PyTuple_GET_SIZE(payload) != 2)
        return 0;
    PyObject *arr = PyTuple_GET_ITEM(payload, 0), *entry = PyTuple_GET_ITEM(payload, 1);
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4 || !PyArray_Check(arr) ||
        !ssize_of(PyTuple_GET_ITEM(entry, 1), &plen))
        return 0;
    int ok = add_piece(out, n, at + off, PyTuple_GET_ITEM(entry, 0));
    if (ok != 1 || PyArray_NBYTES((PyArrayObject *)arr) == 0) return ok;
    if (!plain(arr, PyTuple_GET_ITEM(entry, 3))) return 0;
    return add_piece(out, n, at + off + plen, arr);
}

static PyObject *fast_pieces(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pieces(plan, at, prefix)");
        return NULL;
    }
    if (Encoded == NULL || (PyObject *)Py_TYPE(args[0]) != Encoded) Py_RETURN_NONE;
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred()) return NULL;
    PyObject *prefix = args[2];
    PyObject *head = PyObject_GetAttr(args[0], str_head);
    if (head == NULL) return NULL;
    PyObject *bufs = PyObject_GetAttr(args[0], str_bufs);
    if (bufs == NULL) {
        Py_DECREF(head);
        return NULL;
    }
    PyObject *stack[STACK_PIECES], **out = stack, *result = NULL;
    Py_ssize_t n = 0;
    int ok = 1;
    if (!PyList_CheckExact(bufs)) {
        ok = 0;
    } else if (PyList_GET_SIZE(bufs) > (STACK_PIECES - 2) / 2) { /* at most 2 per buffer */
        out = PyMem_Malloc(sizeof(PyObject *) * (size_t)(2 * PyList_GET_SIZE(bufs) + 2));
        if (out == NULL) {
            Py_DECREF(head);
            Py_DECREF(bufs);
            return PyErr_NoMemory();
        }
    }
    if (ok == 1 && prefix != Py_None) ok = add_piece(out, &n, 0, prefix);
    if (ok == 1) ok = add_piece(out, &n, at, head);
    for (Py_ssize_t i = 0; ok == 1 && i < PyList_GET_SIZE(bufs); i++)
        ok = buffer_pieces(PyList_GET_ITEM(bufs, i), at, out, &n);
    if (ok == 1) {
        result = PyTuple_New(n);
        if (result != NULL) {
            for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(result, i, out[i]);
            n = 0;
        }
    } else if (ok == 0) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(out[i]);
    if (out != stack) PyMem_Free(out);
    Py_DECREF(head);
    Py_DECREF(bufs);
    return result;
}

/* ------------------------------------------------------------------------------ decoding */

/* the tuple of ints ``t`` (at most NPY_MAXDIMS) into ``out``; -1 when it is not one */
static int intp_tuple(PyObject *t, npy_intp *out) {
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) > NPY_MAXDIMS) return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        PyObject *v = PyTuple_GET_ITEM(t, i);
        if (!PyLong_CheckExact(v)) return -1;
        out[i] = PyLong_AsSsize_t(v);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return (int)PyTuple_GET_SIZE(t);
}

/* One read-only view of ``data`` at ``start`` (an offset into it), checked to lie inside
 * [lo, hi) of it: NULL with no error set when the layout is not one to trust. */
static PyObject *view(PyObject *data, Py_ssize_t start, Py_ssize_t lo, Py_ssize_t hi,
                      PyObject *layout) {
    PyObject *descr = PyTuple_GET_ITEM(layout, 0);
    npy_intp dims[NPY_MAXDIMS], strides[NPY_MAXDIMS];
    if (!PyArray_DescrCheck(descr) || PyDataType_REFCHK((PyArray_Descr *)descr)) return NULL;
    int nd = intp_tuple(PyTuple_GET_ITEM(layout, 1), dims);
    if (nd < 0) return NULL;
    PyObject *st = PyTuple_GET_ITEM(layout, 2);
    Py_ssize_t item = PyDataType_ELSIZE((PyArray_Descr *)descr);
    npy_intp *sp = NULL;
    if (st != Py_None) {
        if (intp_tuple(st, strides) != nd) return NULL;
        sp = strides;
    }
    /* the extent: the lowest and highest byte an element of this layout touches */
    Py_ssize_t low = 0, high = item, span = item;
    int empty = 0;
    for (int i = nd - 1; i >= 0; i--) {
        if (dims[i] < 0) return NULL;
        if (dims[i] == 0) empty = 1;
        Py_ssize_t s = sp ? sp[i] : span;
        if (dims[i] > 1) {
            if ((s > 0 && dims[i] - 1 > (PY_SSIZE_T_MAX / 2) / s) ||
                (s < 0 && dims[i] - 1 > (PY_SSIZE_T_MAX / 2) / -s))
                return NULL;
            Py_ssize_t reach = (dims[i] - 1) * s;
            if (reach > 0) high += reach; else low += reach;
        }
        if (!sp) {
            if (dims[i] && span > (PY_SSIZE_T_MAX / 2) / dims[i]) return NULL;
            span *= dims[i] ? dims[i] : 1;
        }
    }
    if (!empty && (start + low < lo || start + high > hi)) return NULL;
    if (empty && (start < lo || start > hi)) return NULL;
    Py_INCREF(descr); /* stolen by NewFromDescr */
    PyObject *a = PyArray_NewFromDescr(&PyArray_Type, (PyArray_Descr *)descr, nd, dims, sp,
                                       PyBytes_AS_STRING(data) + start, 0, NULL);
    if (a == NULL) return NULL;
    Py_INCREF(data);
    if (PyArray_SetBaseObject((PyArrayObject *)a, data) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    PyArray_UpdateFlags((PyArrayObject *)a, NPY_ARRAY_UPDATE_ALL);
    return a;
}

static PyObject *fast_remembered(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "remembered(data, at, cache)");
        return NULL;
    }
    PyObject *data = args[0], *cache = args[2];
    if (!PyBytes_CheckExact(data) || !PyDict_CheckExact(cache)) {
        PyErr_SetString(PyExc_TypeError, "remembered: data must be bytes and cache a dict");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t total = PyBytes_GET_SIZE(data);
    if (at < 0 || at > total) {
        PyErr_SetString(PyExc_ValueError, "remembered: offset outside the data");
        return NULL;
    }
    const unsigned char *msg = (const unsigned char *)PyBytes_AS_STRING(data) + at;
    Py_ssize_t size = total - at;
    if (size < PRE_SIZE) Py_RETURN_NONE;
    uint64_t env_len = u32_at(msg + 8), n = u32_at(msg + 12);
    uint64_t end = PRE_SIZE + ENTRY_SIZE * n + env_len;
    if (end > HEAD_MAX || end > (uint64_t)size) Py_RETURN_NONE;

    PyObject *head = PyBytes_FromStringAndSize((const char *)msg, (Py_ssize_t)end);
    if (head == NULL) return NULL;
    PyObject *psize = PyLong_FromSsize_t(size);
    if (psize == NULL) {
        Py_DECREF(head);
        return NULL;
    }
    PyObject *key = PyTuple_Pack(2, head, psize);
    Py_DECREF(head);
    Py_DECREF(psize);
    if (key == NULL) return NULL;
    PyObject *hit = PyDict_GetItemWithError(cache, key); /* borrowed */
    Py_DECREF(key);
    if (hit == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(hit); /* held while arrays are made: a concurrent put may evict it */
    PyObject *out = NULL, *arrays[MAX_ARRAYS];
    Py_ssize_t made = 0;
    PyObject *tensors;
    int is_call;
    if (!PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 2) goto refuse;
    is_call = PyObject_IsTrue(PyTuple_GET_ITEM(hit, 0));
    tensors = PyTuple_GET_ITEM(hit, 1);
    if (is_call < 0 || !PyTuple_CheckExact(tensors)) goto refuse;
    Py_ssize_t count = PyTuple_GET_SIZE(tensors);
    if (count < 1 || count > MAX_ARRAYS || (!is_call && count != 1)) goto refuse;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *t = PyTuple_GET_ITEM(tensors, i);
        if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 3) goto refuse;
        PyObject *prefix = PyTuple_GET_ITEM(t, 1), *layout = PyTuple_GET_ITEM(t, 2);
        if (!PyBytes_CheckExact(prefix) || !PyTuple_CheckExact(layout) ||
            PyTuple_GET_SIZE(layout) != 5)
            goto refuse;
        if (!PyLong_CheckExact(PyTuple_GET_ITEM(t, 0)) ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(layout, 3)) ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(layout, 4)))
            goto refuse;
        Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 0));
        Py_ssize_t data_off = PyLong_AsSsize_t(PyTuple_GET_ITEM(layout, 3));
        Py_ssize_t need = PyLong_AsSsize_t(PyTuple_GET_ITEM(layout, 4));
        if (PyErr_Occurred()) goto refuse; /* past a Py_ssize_t: not one it stores */
        Py_ssize_t plen = PyBytes_GET_SIZE(prefix);
        if (off < 0 || data_off < 0 || need < 0 || off > size - plen ||
            need > size - off || data_off > need)
            goto refuse;
        if (memcmp(msg + off, PyBytes_AS_STRING(prefix), (size_t)plen) != 0) goto refuse;
        /* the array lies within its tensor's bytes: [off + data_off, off + need) */
        PyObject *a = view(data, at + off + data_off, at + off + data_off, at + off + need,
                           layout);
        if (a == NULL) {
            if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError)) goto fail;
            goto refuse;
        }
        arrays[made++] = a;
    }
    if (!is_call) {
        out = arrays[0];
        made = 0;
    } else {
        PyObject *tup = PyTuple_New(made);
        if (tup == NULL) goto fail;
        for (Py_ssize_t i = 0; i < made; i++) PyTuple_SET_ITEM(tup, i, arrays[i]);
        made = 0;
        PyObject *kw = PyDict_New();
        if (kw == NULL) {
            Py_DECREF(tup);
            goto fail;
        }
        out = PyTuple_Pack(2, tup, kw);
        Py_DECREF(tup);
        Py_DECREF(kw);
        if (out == NULL) goto fail;
    }
    Py_DECREF(hit);
    return out;
refuse: /* not seen before, or not a shape decoder.py stores: the Python path decides */
    PyErr_Clear();
    for (Py_ssize_t i = 0; i < made; i++) Py_DECREF(arrays[i]);
    Py_DECREF(hit);
    Py_RETURN_NONE;
fail:
    for (Py_ssize_t i = 0; i < made; i++) Py_DECREF(arrays[i]);
    Py_DECREF(hit);
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))fast_configure, METH_FASTCALL,
     "configure(Encoded, write_tensor, write_bytes, SharedBlock): what plans name"},
    {"planned", (PyCFunction)(void (*)(void))fast_planned, METH_FASTCALL,
     "planned(value, share_above, plans): the remembered plan of value, or None"},
    {"pieces", (PyCFunction)(void (*)(void))fast_pieces, METH_FASTCALL,
     "pieces(plan, at, prefix): the (offset, buffer) pieces of a plan, or None"},
    {"remembered", (PyCFunction)(void (*)(void))fast_remembered, METH_FASTCALL,
     "remembered(data, at, cache): the value of a message seen before, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ipc.codec._fastcodec",
    .m_doc = "The codec's remembered plans in C (optional: the Python modules have the same "
             "paths).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastcodec(void) {
    import_array();
    str_C = PyUnicode_InternFromString("C");
    str_F = PyUnicode_InternFromString("F");
    str_bufs = PyUnicode_InternFromString("_bufs");
    str_head = PyUnicode_InternFromString("_head");
    if (!str_C || !str_F || !str_bufs || !str_head) return NULL;
    return PyModule_Create(&module);
}
