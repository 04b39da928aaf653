/* The codec's remembered decodes in C: one call turns a message seen before into its value.
 *
 * ipc/codec/decoder.py remembers, per message head (preamble, buffer table, envelope: the
 * bytes that were checked) and size, the structure a full decode found: a lone array, or a
 * call (args, kwargs) whose arguments are arrays, each array a tensor whose prefix bytes and
 * layout were checked. A later message with byte-equal head, size and prefixes decodes to
 * the same structure; only the arrays are new, views of the message's bytes. This is that
 * lookup and that construction, which take a dozen Python steps in decoder._fast_decode.
 *
 * remembered(data, at, cache, ndarray) -> value or None
 *   data     bytes: a private copy (immutable, this process's own); the message starts at
 *            offset ``at`` and runs to its end. The arrays view ``data`` (read-only, as
 *            bytes are) and keep it alive.
 *   cache    decoder.fast_decodes' dict: (head bytes, size) ->
 *            (is_call, ((offset, prefix bytes, (dtype, shape, strides, data offset, need)), ...)),
 *            need: the bytes from offset the array runs to (data offset + its bytes)
 *   ndarray  numpy.ndarray, called as ndarray(shape, dtype, data, offset, strides)
 * None: not a message seen before, or one of more than MAX_ARRAYS arrays (the caller runs the
 * full decode, which checks everything).
 * Every offset is checked against the message again, though the cache only holds layouts
 * that were validated for exactly this head and size.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PRE_SIZE 16
#define ENTRY_SIZE 16
#define HEAD_MAX 512 /* decoder._FAST_HEAD_MAX */
#define MAX_ARRAYS 16

static inline uint32_t u32_at(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v; /* little-endian hosts only (ipc.ring refuses others) */
}

static PyObject *fast_remembered(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "remembered(data, at, cache, ndarray)");
        return NULL;
    }
    PyObject *data = args[0], *cache = args[2], *ndarray = args[3];
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
        PyObject *where = PyLong_FromSsize_t(at + off + data_off);
        if (where == NULL) goto fail;
        /* positional: numpy parses keywords at twice the cost of the whole view */
        PyObject *argv[5] = {PyTuple_GET_ITEM(layout, 1), PyTuple_GET_ITEM(layout, 0), data,
                             where, PyTuple_GET_ITEM(layout, 2)};
        PyObject *a = PyObject_Vectorcall(ndarray, argv, 5, NULL);
        Py_DECREF(where);
        if (a == NULL) goto fail;
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
    {"remembered", (PyCFunction)(void (*)(void))fast_remembered, METH_FASTCALL,
     "remembered(data, at, cache, ndarray): the value of a message seen before, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ipc.codec._fastdecode",
    .m_doc = "The codec's remembered decodes in C (optional: decoder.py has the same path).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastdecode(void) {
    return PyModule_Create(&module);
}
