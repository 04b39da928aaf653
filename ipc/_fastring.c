/* The hot paths of ipc.ring in C: reserve, take and the lock-free pending check.
 *
 * Each function mirrors the pure-Python code of ipc/ring.py step for step on the common path
 * and gives up (returns SLOW) wherever that code does something rarer: a lock it cannot take
 * within a short spin (the holder may be dead: Python breaks such locks), cursors or a record
 * header that fail validation (Python resynchronises and raises CorruptRecord), a take that
 * looks past too many unfinished reservations. Giving up changes nothing that the Python code
 * would not also do, so the caller simply runs the Python version next. The byte layout is
 * docs/wire-format-ring.md; both implementations speak it and may share one ring.
 *
 * Every argument is trusted to come from ipc.ring (the address is that of a mapped ring);
 * nothing read from shared memory is.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

#define HEADER_SIZE 1024u
#define RECORD_HEADER_SIZE 64u
#define ALIGN 64u
#define H_LOCK 8
#define H_HEAD 16
#define H_READ 24
#define H_FREE 32
#define SCAN_LIMIT 256
#define LOCK_SPINS 256 /* then Python's lock path: it yields, naps and breaks dead locks */

enum { EMPTY, RESERVED, COMMITTED, TAKEN, RELEASED, SKIP };
enum { R_STATE, R_POS, R_SPAN, R_NBYTES, R_KIND, R_TAG, R_PID, R_TAKER };

#define SLOW (-2)
#define FULL (-1)

static inline uint64_t ld(volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void st(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static int lock(uint64_t *q, uint64_t me) {
    for (int i = 0; i < LOCK_SPINS; i++) {
        uint64_t expected = 0;
        if (ld(&q[H_LOCK]) == 0 &&
            __atomic_compare_exchange_n(&q[H_LOCK], &expected, me, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return 1;
        CPU_RELAX();
    }
    return 0;
}

static void unlock(uint64_t *q, uint64_t me) {
    if (ld(&q[H_LOCK]) == me) st(&q[H_LOCK], 0);
}

static inline uint64_t *rec_at(uint64_t *q, uint64_t cap, uint64_t pos) {
    return (uint64_t *)((char *)q + HEADER_SIZE + pos % cap);
}

/* ipc.ring.Ring._cursors: 1 when consistent */
static int cursors(uint64_t *q, uint64_t cap, uint64_t *head, uint64_t *read, uint64_t *free_) {
    *head = ld(&q[H_HEAD]);
    *read = ld(&q[H_READ]);
    *free_ = ld(&q[H_FREE]);
    if (!(*free_ <= *read && *read <= *head) || *head - *free_ > cap ||
        ((*head | *read | *free_) & 63))
        return 0;
    return 1;
}

/* ipc.ring.Ring._header: copies the validated header of the record at `pos` into h */
static int header(uint64_t *q, uint64_t cap, uint64_t pos, uint64_t head, uint64_t h[8]) {
    uint64_t off = pos % cap;
    volatile uint64_t *r = rec_at(q, cap, pos);
    for (int i = 0; i < 8; i++) h[i] = r[i];
    uint64_t state = h[R_STATE], span = h[R_SPAN];
    if (h[R_POS] != pos) return 0;
    if (state < RESERVED || state > SKIP) return 0;
    if (span < RECORD_HEADER_SIZE || span % ALIGN || off + span > cap || pos + span > head)
        return 0;
    if (state == SKIP) {
        if (off + span != cap) return 0;
    } else if (h[R_NBYTES] > span - RECORD_HEADER_SIZE) {
        return 0;
    }
    return 1;
}

/* the record header as ipc.ring.Ring._alloc packs it (taker 0) */
static inline void put_header(uint64_t *q, uint64_t cap, uint64_t pos, uint64_t state,
                              uint64_t span, uint64_t nbytes, uint64_t kind, uint64_t tag,
                              uint64_t pid) {
    volatile uint64_t *r = rec_at(q, cap, pos);
    r[R_STATE] = state; r[R_POS] = pos; r[R_SPAN] = span; r[R_NBYTES] = nbytes;
    r[R_KIND] = kind; r[R_TAG] = tag; r[R_PID] = pid; r[R_TAKER] = 0;
}

static int args_u64(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, uint64_t *out) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", want, nargs);
        return 0;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        out[i] = PyLong_AsUnsignedLongLong(args[i]);
        if (out[i] == (uint64_t)-1 && PyErr_Occurred()) return 0;
    }
    return 1;
}

/* alloc(base, capacity, span, nbytes, kind, tag, pid, me, early_wrap) -> position, or
 * -1 (full: the Python path sweeps with reaping and waits) or -2 (run the Python path). */
static PyObject *fast_alloc(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[9];
    if (!args_u64(args, nargs, 9, a)) return NULL;
    uint64_t *q = (uint64_t *)(uintptr_t)a[0];
    uint64_t cap = a[1], span = a[2], nbytes = a[3], kind = a[4], tag = a[5], pid = a[6];
    uint64_t me = a[7], early_wrap = a[8];
    uint64_t head, read, free_, h[8];

    if (!lock(q, me)) return PyLong_FromLong(SLOW);
    if (!cursors(q, cap, &head, &read, &free_)) goto slow;
    if (free_ != read) { /* Ring._sweep_free */
        uint64_t start = free_;
        while (free_ < read) {
            if (!header(q, cap, free_, head, h)) goto slow;
            if (h[R_STATE] != RELEASED && h[R_STATE] != SKIP) break;
            free_ += h[R_SPAN];
        }
        if (free_ != start) st(&q[H_FREE], free_);
    }
    uint64_t off = head % cap;
    if (free_ == head && off) {
        head += cap - off;
        read = free_ = head;
        st(&q[H_READ], head);
        st(&q[H_FREE], head);
        off = 0;
    }
    uint64_t pad;
    if (off >= early_wrap && head + cap - off + span - free_ <= cap)
        pad = cap - off;
    else
        pad = off + span > cap ? cap - off : 0;
    if (head + pad + span - free_ > cap) {
        unlock(q, me);
        return PyLong_FromLong(FULL);
    }
    if (pad) {
        if (free_ == head) {
            head += pad;
            st(&q[H_READ], head);
            st(&q[H_FREE], head);
        } else {
            put_header(q, cap, head, SKIP, pad, 0, 0, 0, pid);
            head += pad;
        }
    }
    put_header(q, cap, head, RESERVED, span, nbytes, kind, tag, pid);
    st(&q[H_HEAD], head + span);
    unlock(q, me);
    return PyLong_FromUnsignedLongLong(head);
slow:
    unlock(q, me);
    return PyLong_FromLong(SLOW);
}

/* take(base, capacity, taker, me) -> (pos, kind, tag, nbytes) of the record now TAKEN, or
 * 0 (nothing to take), or the pid of the producer of the oldest unfinished reservation passed
 * over (nothing taken: the caller checks that producer is alive), or -2 (run the Python path). */
static PyObject *fast_take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[4];
    if (!args_u64(args, nargs, 4, a)) return NULL;
    uint64_t *q = (uint64_t *)(uintptr_t)a[0];
    uint64_t cap = a[1], taker = a[2], me = a[3];
    uint64_t head, read, free_, h[8], reserved_pid = 0;

    if (!lock(q, me)) return PyLong_FromLong(SLOW);
    if (!cursors(q, cap, &head, &read, &free_)) goto slow;
    if (read == head) {
        unlock(q, me);
        return PyLong_FromLong(0);
    }
    uint64_t pos = read;
    int advancing = 1, steps = 0;
    while (pos < head) {
        if (steps >= SCAN_LIMIT) goto slow;
        if (!header(q, cap, pos, head, h)) goto slow;
        uint64_t state = h[R_STATE], span = h[R_SPAN];
        if (state == COMMITTED) {
            volatile uint64_t *r = rec_at(q, cap, pos);
            r[R_TAKER] = taker;
            st((uint64_t *)&r[R_STATE], TAKEN);
            if (advancing) st(&q[H_READ], pos + span);
            unlock(q, me);
            return Py_BuildValue("(KKKK)", (unsigned long long)pos,
                                 (unsigned long long)h[R_KIND], (unsigned long long)h[R_TAG],
                                 (unsigned long long)h[R_NBYTES]);
        }
        if (state == RESERVED) {
            if (!reserved_pid) reserved_pid = h[R_PID] ? h[R_PID] : 1;
            if (advancing) {
                advancing = 0;
                st(&q[H_READ], pos);
            }
        }
        pos += span;
        steps++;
    }
    if (advancing) st(&q[H_READ], pos);
    unlock(q, me);
    return PyLong_FromUnsignedLongLong(reserved_pid);
slow:
    unlock(q, me);
    return PyLong_FromLong(SLOW);
}

/* has_pending(base, capacity) -> bool: ipc.ring.Ring.has_pending, without the lock */
static PyObject *fast_has_pending(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[2];
    if (!args_u64(args, nargs, 2, a)) return NULL;
    uint64_t *q = (uint64_t *)(uintptr_t)a[0];
    uint64_t cap = a[1];
    uint64_t read = ld(&q[H_READ]), head = ld(&q[H_HEAD]);
    if (read >= head) Py_RETURN_FALSE;
    if (head - read > cap || (read & 63)) Py_RETURN_TRUE;
    uint64_t pos = read;
    for (int i = 0; i < 16; i++) {
        if (pos >= head) Py_RETURN_FALSE;
        uint64_t off = pos % cap;
        volatile uint64_t *r = rec_at(q, cap, pos);
        uint64_t state = r[R_STATE], p = r[R_POS], span = r[R_SPAN];
        if (state != RESERVED || p != pos) Py_RETURN_TRUE;
        if (span < RECORD_HEADER_SIZE || span % ALIGN || off + span > cap) Py_RETURN_TRUE;
        pos += span;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"alloc", (PyCFunction)(void (*)(void))fast_alloc, METH_FASTCALL,
     "alloc(base, capacity, span, nbytes, kind, tag, pid, me, early_wrap) -> pos | -1 | -2"},
    {"take", (PyCFunction)(void (*)(void))fast_take, METH_FASTCALL,
     "take(base, capacity, taker, me) -> (pos, kind, tag, nbytes) | 0 | pid | -2"},
    {"has_pending", (PyCFunction)(void (*)(void))fast_has_pending, METH_FASTCALL,
     "has_pending(base, capacity) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ipc._fastring",
    .m_doc = "C versions of ipc.ring's hot paths (optional: ipc.ring falls back to Python).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastring(void) { return PyModule_Create(&module); }
