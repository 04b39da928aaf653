/* The hot paths of ipc.ring in C: reserve, take, commit/abort, release, the pending check.
 *
 * Each function mirrors the pure-Python code of ipc/ring.py step for step on the common path
 * and gives up (Outcome SLOW) wherever that code does something rarer: a lock it cannot take
 * within a short spin (the holder may be dead: Python breaks such locks), cursors or a record
 * header that fail validation (Python resynchronises and raises CorruptRecord), a take that
 * looks past too many unfinished reservations. Giving up changes nothing that the Python code
 * would not also do, so the caller simply runs the Python version next. The byte layout is
 * docs/wire-format-ring.md; both implementations speak it and may share one ring.
 *
 * The layout constants below are compiled-in copies of ipc/ring_layout.py. layout() reports
 * them, and ipc.ring leaves this module unused (with a FastPathDisabled warning) unless every
 * one equals the Python description. Results are named: AllocResult and TakeResult are struct
 * sequences whose `outcome` is an ipc.ring_layout.Outcome value.
 *
 * Memory ordering (docs/wire-format-ring.md, "Memory ordering"): the lock is taken with an
 * acquire CAS and given back with a release store; commit, abort and release publish with a
 * release store into the record's state word; every read of a state word that decides whether
 * a record's bytes may be read (COMMITTED) or overwritten (RELEASED, SKIP) is an acquire load.
 *
 * Every argument is trusted to come from ipc.ring (the address is that of a mapped ring);
 * nothing read from shared memory is.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu */
#endif
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <structmember.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

/* ---- the layout (ipc/ring_layout.py) ------------------------------------------------------ */
#define API_VERSION 2
#define HEADER_SIZE 1024u
#define RECORD_HEADER_SIZE 64u
#define ALIGN 64u
/* ring header: byte offsets */
#define OFF_LOCK 64u
#define OFF_HEAD 128u
#define OFF_READ 192u
#define OFF_FREE 256u
/* record header: byte offsets from the record's start */
#define REC_STATE 0u
#define REC_POS 8u
#define REC_SPAN 16u
#define REC_NBYTES 24u
#define REC_KIND 32u
#define REC_TAG 40u
#define REC_PRODUCER_PID 48u
#define REC_TAKER 56u

enum { EMPTY = 0, RESERVED = 1, COMMITTED = 2, TAKEN = 3, RELEASED = 4, SKIP = 5 };
/* ipc.ring_layout.Outcome */
enum { OUT_OK = 0, OUT_FULL = 1, OUT_EMPTY = 2, OUT_BLOCKED = 3, OUT_SLOW = 4 };

#define SCAN_LIMIT 256
#define PENDING_PEEK 16
#define LOCK_SPINS 256 /* then Python's lock path: it yields, naps and breaks dead locks */
#define SPIN_CHECKS 8   /* spin_pending: looks between two sched_yield() calls... */
#define SPIN_PAUSES 8   /* ...each after this many pause instructions */

/* word indices */
#define W(off) ((off) / 8u)
#define H_LOCK W(OFF_LOCK)
#define H_HEAD W(OFF_HEAD)
#define H_READ W(OFF_READ)
#define H_FREE W(OFF_FREE)
#define R_STATE W(REC_STATE)
#define R_POS W(REC_POS)
#define R_SPAN W(REC_SPAN)
#define R_NBYTES W(REC_NBYTES)
#define R_KIND W(REC_KIND)
#define R_TAG W(REC_TAG)
#define R_PID W(REC_PRODUCER_PID)
#define R_TAKER W(REC_TAKER)
#define R_WORDS W(RECORD_HEADER_SIZE)

/* what the code below assumes of the layout */
_Static_assert(OFF_LOCK % 64 == 0 && OFF_HEAD % 64 == 0 && OFF_READ % 64 == 0 &&
                   OFF_FREE % 64 == 0,
               "every shared counter of the ring header on its own 64-byte line");
_Static_assert(OFF_LOCK != OFF_HEAD && OFF_HEAD != OFF_READ && OFF_READ != OFF_FREE &&
                   OFF_FREE + 8 <= HEADER_SIZE,
               "ring header words distinct and inside the header");
_Static_assert(R_WORDS == 8 && R_STATE < R_WORDS && R_POS < R_WORDS && R_SPAN < R_WORDS &&
                   R_NBYTES < R_WORDS && R_KIND < R_WORDS && R_TAG < R_WORDS &&
                   R_PID < R_WORDS && R_TAKER < R_WORDS,
               "a record header is eight u64 words");
_Static_assert(HEADER_SIZE % ALIGN == 0 && RECORD_HEADER_SIZE % ALIGN == 0 && ALIGN == 64,
               "records are 64-byte aligned (positions are tested with & 63)");

static inline uint64_t ld_acq(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t ld(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void st_rel(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void st(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* ---- results -------------------------------------------------------------------------------- */
/* Two small immutable types with named, read-only u64 fields (ipc.ring_layout.AllocResult and
 * TakeResult): cheaper to make than a struct sequence (no dict lookups, no ints until a field
 * is read), which matters on a ~3 us round trip. */
typedef struct {
    PyObject_HEAD
    uint64_t outcome, pos;
} AllocResultObject;

typedef struct {
    PyObject_HEAD
    uint64_t outcome, pos, kind, tag, nbytes, producer_pid;
} TakeResultObject;

static PyMemberDef alloc_members[] = {
    {"outcome", T_ULONGLONG, offsetof(AllocResultObject, outcome), READONLY,
     "Outcome.OK, FULL or SLOW"},
    {"pos", T_ULONGLONG, offsetof(AllocResultObject, pos), READONLY,
     "OK: the position of the record now RESERVED; else 0"},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef take_members[] = {
    {"outcome", T_ULONGLONG, offsetof(TakeResultObject, outcome), READONLY,
     "Outcome.OK, EMPTY, BLOCKED or SLOW"},
    {"pos", T_ULONGLONG, offsetof(TakeResultObject, pos), READONLY,
     "OK: the position of the record now TAKEN; else 0"},
    {"kind", T_ULONGLONG, offsetof(TakeResultObject, kind), READONLY, "OK: its kind; else 0"},
    {"tag", T_ULONGLONG, offsetof(TakeResultObject, tag), READONLY, "OK: its tag; else 0"},
    {"nbytes", T_ULONGLONG, offsetof(TakeResultObject, nbytes), READONLY,
     "OK: its payload length; else 0"},
    {"producer_pid", T_ULONGLONG, offsetof(TakeResultObject, producer_pid), READONLY,
     "BLOCKED: the producer of the first unfinished reservation passed over; else 0"},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *alloc_repr(PyObject *o) {
    AllocResultObject *r = (AllocResultObject *)o;
    return PyUnicode_FromFormat("AllocResult(outcome=%llu, pos=%llu)",
                                (unsigned long long)r->outcome, (unsigned long long)r->pos);
}

static PyObject *take_repr(PyObject *o) {
    TakeResultObject *r = (TakeResultObject *)o;
    return PyUnicode_FromFormat(
        "TakeResult(outcome=%llu, pos=%llu, kind=%llu, tag=%llu, nbytes=%llu, producer_pid=%llu)",
        (unsigned long long)r->outcome, (unsigned long long)r->pos,
        (unsigned long long)r->kind, (unsigned long long)r->tag,
        (unsigned long long)r->nbytes, (unsigned long long)r->producer_pid);
}

static PyTypeObject AllocResultType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipc._fastring.AllocResult",
    .tp_basicsize = sizeof(AllocResultObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What alloc() did (ipc.ring_layout.AllocResult).",
    .tp_members = alloc_members,
    .tp_repr = alloc_repr,
};

static PyTypeObject TakeResultType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipc._fastring.TakeResult",
    .tp_basicsize = sizeof(TakeResultObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What take() did (ipc.ring_layout.TakeResult).",
    .tp_members = take_members,
    .tp_repr = take_repr,
};

static PyObject *alloc_result(uint64_t outcome, uint64_t pos) {
    AllocResultObject *r = PyObject_New(AllocResultObject, &AllocResultType);
    if (r == NULL) return NULL;
    r->outcome = outcome;
    r->pos = pos;
    return (PyObject *)r;
}

static PyObject *take_result(uint64_t outcome, uint64_t pos, const uint64_t *h, uint64_t pid) {
    TakeResultObject *r = PyObject_New(TakeResultObject, &TakeResultType);
    if (r == NULL) return NULL;
    r->outcome = outcome;
    r->pos = pos;
    r->kind = h ? h[R_KIND] : 0;
    r->tag = h ? h[R_TAG] : 0;
    r->nbytes = h ? h[R_NBYTES] : 0;
    r->producer_pid = pid;
    return (PyObject *)r;
}

/* The results that carry nothing but their outcome are made once (they are immutable). */
static PyObject *ALLOC_FULL, *ALLOC_SLOW, *TAKE_EMPTY, *TAKE_SLOW;

static inline PyObject *shared(PyObject *r) { return Py_NewRef(r); }

/* __match_args__: the field names, in order (ipc.ring_layout checks them) */
static int set_match_args(PyTypeObject *type, PyMemberDef *members) {
    PyObject *names = PyTuple_New(0);
    if (names == NULL) return -1;
    for (PyMemberDef *m = members; m->name != NULL; m++) {
        PyObject *name = PyUnicode_FromString(m->name);
        if (name == NULL || _PyTuple_Resize(&names, PyTuple_GET_SIZE(names) + 1) < 0) {
            Py_XDECREF(name);
            Py_XDECREF(names);
            return -1;
        }
        PyTuple_SET_ITEM(names, PyTuple_GET_SIZE(names) - 1, name);
    }
    int rc = PyDict_SetItemString(type->tp_dict, "__match_args__", names);
    Py_DECREF(names);
    PyType_Modified(type);
    return rc;
}

/* ---- the lock and the validated reads -------------------------------------------------------- */
static int lock(uint64_t *q, uint64_t me) {
    for (int i = 0; i < LOCK_SPINS; i++) {
        uint64_t expected = 0;
        if (ld(&q[H_LOCK]) == 0 &&
            __atomic_compare_exchange_n(&q[H_LOCK], &expected, me, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return 1;
        CPU_RELAX();
    }
    return 0;
}

/* release: publishes every store of the critical section to the next holder */
static void unlock(uint64_t *q, uint64_t me) {
    if (ld(&q[H_LOCK]) == me) st_rel(&q[H_LOCK], 0);
}

static inline uint64_t *rec_at(uint64_t *q, uint64_t cap, uint64_t pos) {
    return (uint64_t *)((char *)q + HEADER_SIZE + pos % cap);
}

/* ipc.ring.Ring._cursors: 1 when consistent (the lock's acquire orders these loads) */
static int cursors(uint64_t *q, uint64_t cap, uint64_t *head, uint64_t *read, uint64_t *free_) {
    *head = ld(&q[H_HEAD]);
    *read = ld(&q[H_READ]);
    *free_ = ld(&q[H_FREE]);
    if (!(*free_ <= *read && *read <= *head) || *head - *free_ > cap ||
        ((*head | *read | *free_) & (ALIGN - 1)))
        return 0;
    return 1;
}

/* ipc.ring.Ring._header: copies the validated header of the record at `pos` into h. The
 * state is an acquire load: it pairs with the release store of commit (the payload may then
 * be read) and of abort/release (the bytes may then be overwritten). */
static int header(uint64_t *q, uint64_t cap, uint64_t pos, uint64_t head, uint64_t h[R_WORDS]) {
    uint64_t off = pos % cap;
    uint64_t *r = rec_at(q, cap, pos);
    h[R_STATE] = ld_acq(&r[R_STATE]);
    for (unsigned i = 0; i < R_WORDS; i++)
        if (i != R_STATE) h[i] = ld(&r[i]);
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

/* the record header as ipc.ring.Ring._alloc_py packs it (taker 0), under the lock */
static inline void put_header(uint64_t *q, uint64_t cap, uint64_t pos, uint64_t state,
                              uint64_t span, uint64_t nbytes, uint64_t kind, uint64_t tag,
                              uint64_t pid) {
    uint64_t *r = rec_at(q, cap, pos);
    st(&r[R_STATE], state); st(&r[R_POS], pos); st(&r[R_SPAN], span);
    st(&r[R_NBYTES], nbytes); st(&r[R_KIND], kind); st(&r[R_TAG], tag);
    st(&r[R_PID], pid); st(&r[R_TAKER], 0);
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

/* ---- operations ------------------------------------------------------------------------------ */

/* The allocation itself (ipc.ring.Ring._alloc_py): OUT_OK with *pos_out the position of the
 * record now RESERVED, OUT_FULL or OUT_SLOW. */
static uint64_t alloc_core(uint64_t *q, uint64_t cap, uint64_t span, uint64_t nbytes,
                           uint64_t kind, uint64_t tag, uint64_t pid, uint64_t me,
                           uint64_t early_wrap, uint64_t *pos_out) {
    uint64_t head, read, free_, h[R_WORDS];

    if (!lock(q, me)) return OUT_SLOW;
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
        return OUT_FULL;
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
    *pos_out = head;
    return OUT_OK;
slow:
    unlock(q, me);
    return OUT_SLOW;
}

/* alloc(base, capacity, span, nbytes, kind, tag, pid, me, early_wrap) -> AllocResult:
 * OK (a record RESERVED at pos), FULL (the Python path sweeps the read cursor too, and
 * waits) or SLOW (run the Python path). */
static PyObject *fast_alloc(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[9];
    if (!args_u64(args, nargs, 9, a)) return NULL;
    uint64_t pos = 0;
    uint64_t out = alloc_core((uint64_t *)(uintptr_t)a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                              a[7], a[8], &pos);
    if (out == OUT_OK) return alloc_result(OUT_OK, pos);
    return shared(out == OUT_FULL ? ALLOC_FULL : ALLOC_SLOW);
}

/* take(base, capacity, taker, me) -> TakeResult: OK (the record at pos is now TAKEN), EMPTY
 * (nothing to take), BLOCKED (nothing taken; producer_pid reserved the first unfinished record
 * passed over: the caller checks that it is alive) or SLOW (run the Python path). */
/* The take itself: OUT_OK (the record at *pos_out now TAKEN, its header in h), OUT_EMPTY,
 * OUT_BLOCKED (*blocked_by: the producer of the first unfinished reservation passed over) or
 * OUT_SLOW. */
static uint64_t take_core(uint64_t *q, uint64_t cap, uint64_t taker, uint64_t me,
                          uint64_t h[R_WORDS], uint64_t *pos_out, uint64_t *blocked_by) {
    uint64_t head, read, free_;
    int blocked = 0;

    if (!lock(q, me)) return OUT_SLOW;
    if (!cursors(q, cap, &head, &read, &free_)) goto slow;
    if (read == head) {
        unlock(q, me);
        return OUT_EMPTY;
    }
    uint64_t pos = read;
    int advancing = 1, steps = 0;
    while (pos < head) {
        if (steps >= SCAN_LIMIT) goto slow;
        if (!header(q, cap, pos, head, h)) goto slow;
        uint64_t state = h[R_STATE], span = h[R_SPAN];
        if (state == COMMITTED) {
            uint64_t *r = rec_at(q, cap, pos);
            st(&r[R_TAKER], taker);
            st(&r[R_STATE], TAKEN); /* published by the unlock */
            if (advancing) st(&q[H_READ], pos + span);
            unlock(q, me);
            *pos_out = pos;
            return OUT_OK;
        }
        if (state == RESERVED) {
            if (!blocked) {
                blocked = 1;
                *blocked_by = h[R_PID];
            }
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
    return blocked ? OUT_BLOCKED : OUT_EMPTY;
slow:
    unlock(q, me);
    return OUT_SLOW;
}

static PyObject *fast_take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[4];
    if (!args_u64(args, nargs, 4, a)) return NULL;
    uint64_t h[R_WORDS], pos = 0, blocked_by = 0;
    uint64_t out = take_core((uint64_t *)(uintptr_t)a[0], a[1], a[2], a[3], h, &pos,
                             &blocked_by);
    switch (out) {
    case OUT_OK: return take_result(OUT_OK, pos, h, 0);
    case OUT_EMPTY: return shared(TAKE_EMPTY);
    case OUT_BLOCKED: return take_result(OUT_BLOCKED, 0, NULL, blocked_by);
    default: return shared(TAKE_SLOW);
    }
}

/* finish(record, pos, state) -> None: commit (state COMMITTED) or abort (RELEASED) the
 * reservation whose header is at address `record`, if that header still names `pos`. The
 * release store publishes the payload (commit) or gives the bytes back (abort). */
static PyObject *fast_finish(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[3];
    if (!args_u64(args, nargs, 3, a)) return NULL;
    uint64_t *r = (uint64_t *)(uintptr_t)a[0];
    if (a[2] != COMMITTED && a[2] != RELEASED) {
        PyErr_Format(PyExc_ValueError, "a reservation finishes COMMITTED or RELEASED, not %llu",
                     (unsigned long long)a[2]);
        return NULL;
    }
    if (ld(&r[R_POS]) == a[1]) st_rel(&r[R_STATE], a[2]);
    Py_RETURN_NONE;
}

/* release(record, pos) -> None: give back the TAKEN record whose header is at address
 * `record`, if it still names `pos`. The release store orders every read of the payload
 * before the bytes can be reused. */
static PyObject *fast_release(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[2];
    if (!args_u64(args, nargs, 2, a)) return NULL;
    uint64_t *r = (uint64_t *)(uintptr_t)a[0];
    if (ld(&r[R_POS]) == a[1] && ld(&r[R_STATE]) == TAKEN) st_rel(&r[R_STATE], RELEASED);
    Py_RETURN_NONE;
}

/* has_pending(base, capacity) -> bool: ipc.ring.Ring.has_pending, without the lock (a hint:
 * take() decides under the lock; the doorbell's full fences make the hint safe to sleep on) */
/* the pending check itself: 1 when take() may find a record */
static int pending_core(uint64_t *q, uint64_t cap) {
    uint64_t read = ld_acq(&q[H_READ]), head = ld_acq(&q[H_HEAD]);
    if (read >= head) return 0;
    if (head - read > cap || (read & (ALIGN - 1))) return 1;
    uint64_t pos = read;
    for (int i = 0; i < PENDING_PEEK; i++) {
        if (pos >= head) return 0;
        uint64_t off = pos % cap;
        uint64_t *r = rec_at(q, cap, pos);
        uint64_t state = ld_acq(&r[R_STATE]), p = ld(&r[R_POS]), span = ld(&r[R_SPAN]);
        if (state != RESERVED || p != pos) return 1;
        if (span < RECORD_HEADER_SIZE || span % ALIGN || off + span > cap) return 1;
        pos += span;
    }
    return 1;
}

static PyObject *fast_has_pending(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[2];
    if (!args_u64(args, nargs, 2, a)) return NULL;
    if (pending_core((uint64_t *)(uintptr_t)a[0], a[1])) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

/* ---- whole-message paths (optional: ipc.ring uses them when present) ------------------------- */

#define PUT_STACK_PIECES 16 /* pieces a put keeps on the stack; more are allocated... */
#define PUT_MAX_PIECES 4096 /* ...up to this many (a MANY or MULTI record: 3 per message) */
#define BELL_SLEEPERS 0u /* doorbell block words (docs/wire-format-ring.md, "Doorbell block") */
#define BELL_NAMED 5u
#define BELL_MAX_BYTES 64u

static uint64_t u64_arg(PyObject *o, int *bad) {
    uint64_t v = PyLong_AsUnsignedLongLong(o);
    if (v == (uint64_t)-1 && PyErr_Occurred()) *bad = 1;
    return v;
}

/* This thread's id, cached per thread (gettid is a system call; the ring's callers would pay
 * it on every put and take). The forking thread's cache is cleared in the child, whose one
 * thread has an id of its own. */
static __thread uint64_t this_tid;

static void forget_tid(void) { this_tid = 0; }

/* `me` with this thread's id as its high half where the caller left that half 0 (put and
 * take_copy are passed the owner id alone). */
static uint64_t with_tid(uint64_t me) {
    if (me >> 32) return me;
    if (this_tid == 0) this_tid = (uint64_t)syscall(SYS_gettid) & 0xFFFFFFFFu;
    return me | this_tid << 32;
}

/* put(base, capacity, early_wrap, pid, me, kind, tag, nbytes, pieces, bell) -> int
 *
 * Reserve, write and commit one record of `nbytes` payload bytes in one call: `pieces` is a
 * tuple of (offset, buffer) pairs in increasing, non-overlapping order inside the payload;
 * the bytes between and after them are zeroed. Then, when `bell` (the address of a doorbell
 * block, or 0) is given: a full fence and the doorbell's sleeper count, capped at 64, which
 * is what the caller must write into the FIFO (0: nobody sleeps). -1: nothing was done
 * (the ring is full, its lock busy, or something the Python path must handle): run it.
 * `me` may be the owner id alone: the thread id is added here (with_tid). */
static PyObject *fast_put(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "expected 10 arguments, got %zd", nargs);
        return NULL;
    }
    int bad = 0;
    uint64_t a[8];
    for (int i = 0; i < 8; i++) a[i] = u64_arg(args[i], &bad);
    uint64_t bell = u64_arg(args[9], &bad);
    if (bad) return NULL;
    uint64_t *q = (uint64_t *)(uintptr_t)a[0];
    uint64_t cap = a[1], early_wrap = a[2], pid = a[3], me = with_tid(a[4]), kind = a[5];
    uint64_t tag = a[6];
    uint64_t nbytes = a[7];
    PyObject *pieces = args[8];
    if (!PyTuple_Check(pieces)) {
        PyErr_SetString(PyExc_TypeError, "pieces must be a tuple of (offset, buffer) pairs");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(pieces);
    if (n > PUT_MAX_PIECES || nbytes > cap / 2 - RECORD_HEADER_SIZE || kind >> 32)
        return PyLong_FromLong(-1);
    Py_buffer stack_views[PUT_STACK_PIECES];
    uint64_t stack_offs[PUT_STACK_PIECES];
    Py_buffer *views = stack_views;
    uint64_t *offs = stack_offs;
    if (n > PUT_STACK_PIECES) {
        views = PyMem_Malloc(sizeof(Py_buffer) * (size_t)n);
        offs = PyMem_Malloc(sizeof(uint64_t) * (size_t)n);
        if (views == NULL || offs == NULL) {
            PyMem_Free(views);
            PyMem_Free(offs);
            return PyErr_NoMemory();
        }
    }
    PyObject *out = NULL;
    Py_ssize_t got = 0;
    uint64_t end = 0;
    for (; got < n; got++) {
        PyObject *item = PyTuple_GET_ITEM(pieces, got);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "a piece is an (offset, buffer) pair");
            goto fail;
        }
        offs[got] = u64_arg(PyTuple_GET_ITEM(item, 0), &bad);
        if (bad) goto fail;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 1), &views[got], PyBUF_SIMPLE) < 0)
            goto fail;
        if (offs[got] < end || offs[got] > nbytes ||
            (uint64_t)views[got].len > nbytes - offs[got]) {
            PyBuffer_Release(&views[got]);
            PyErr_SetString(PyExc_ValueError, "pieces overlap or lie outside the payload");
            goto fail;
        }
        end = offs[got] + (uint64_t)views[got].len;
    }
    uint64_t span = (nbytes + RECORD_HEADER_SIZE + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
    uint64_t pos = 0;
    if (alloc_core(q, cap, span, nbytes, kind, tag, pid, me, early_wrap, &pos) != OUT_OK) {
        out = PyLong_FromLong(-1);
        goto fail;
    }
    uint64_t *r = rec_at(q, cap, pos);
    char *dst = (char *)r + RECORD_HEADER_SIZE;
    uint64_t at = 0;
    for (Py_ssize_t i = 0; i < got; i++) {
        if (offs[i] > at) memset(dst + at, 0, offs[i] - at);
        memcpy(dst + offs[i], views[i].buf, (size_t)views[i].len);
        at = offs[i] + (uint64_t)views[i].len;
    }
    if (nbytes > at) memset(dst + at, 0, nbytes - at);
    /* commit: the release store publishes the payload */
    if (ld(&r[R_POS]) == pos) st_rel(&r[R_STATE], COMMITTED);
    uint64_t wake = 0;
    if (bell) {
        /* the waker's half of the doorbell handshake: condition (the commit), full fence,
         * then the sleepers */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint64_t *b = (uint64_t *)(uintptr_t)bell;
        uint64_t sleepers = ld(&b[BELL_SLEEPERS]);
        uint64_t named = (uint64_t)__builtin_popcountll(ld(&b[BELL_NAMED]));
        wake = sleepers > BELL_MAX_BYTES ? BELL_MAX_BYTES : sleepers;
        wake = wake + named > BELL_MAX_BYTES ? BELL_MAX_BYTES : wake + named;
    }
    out = PyLong_FromUnsignedLongLong(wake);
fail:  /* and the way out: every view given back, allocated tables freed */
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    if (views != stack_views) {
        PyMem_Free(views);
        PyMem_Free(offs);
    }
    return out;
}

/* take_copy(base, capacity, taker, me, max_copy, release) -> tuple | None | int
 *
 * take(), and for a record of at most `max_copy` payload bytes a private copy of its payload:
 * (kind, tag, bytes, pos), the record given back at once when `release` is true (else it
 * stays TAKEN: give it back with release()). A larger record is taken and not copied:
 * (kind, tag, nbytes, pos). None: nothing to take. An int (an Outcome, BLOCKED or SLOW): nothing
 * was taken; run take(). `me` may be the owner id alone, as for put. */
static PyObject *fast_take_copy(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[6];
    if (!args_u64(args, nargs, 6, a)) return NULL;
    uint64_t *q = (uint64_t *)(uintptr_t)a[0];
    uint64_t cap = a[1], max_copy = a[4];
    uint64_t h[R_WORDS], pos = 0, blocked_by = 0;
    uint64_t out = take_core(q, cap, a[2], with_tid(a[3]), h, &pos, &blocked_by);
    if (out == OUT_EMPTY) Py_RETURN_NONE;
    if (out != OUT_OK) return PyLong_FromUnsignedLongLong(out);
    uint64_t *r = rec_at(q, cap, pos);
    uint64_t nbytes = h[R_NBYTES];
    PyObject *data;
    if (nbytes <= max_copy) {
        data = PyBytes_FromStringAndSize((const char *)r + RECORD_HEADER_SIZE, (Py_ssize_t)nbytes);
        /* release: every read of the payload (the copy) comes before the bytes are reused;
         * on a failed copy too, or the record would stay taken for good */
        if (a[5] || data == NULL)
            if (ld(&r[R_POS]) == pos && ld(&r[R_STATE]) == TAKEN) st_rel(&r[R_STATE], RELEASED);
        if (data == NULL) return NULL;
    } else {
        data = PyLong_FromUnsignedLongLong(nbytes);
        if (data == NULL) {
            if (ld(&r[R_POS]) == pos && ld(&r[R_STATE]) == TAKEN) st_rel(&r[R_STATE], RELEASED);
            return NULL;
        }
    }
    PyObject *kind = PyLong_FromUnsignedLongLong(h[R_KIND]);
    PyObject *tag = PyLong_FromUnsignedLongLong(h[R_TAG]);
    PyObject *p = PyLong_FromUnsignedLongLong(pos);
    if (kind == NULL || tag == NULL || p == NULL) {
        Py_XDECREF(kind); Py_XDECREF(tag); Py_XDECREF(p); Py_DECREF(data);
        return NULL;
    }
    PyObject *t = PyTuple_New(4);
    if (t == NULL) {
        Py_DECREF(kind); Py_DECREF(tag); Py_DECREF(p); Py_DECREF(data);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, kind);
    PyTuple_SET_ITEM(t, 1, tag);
    PyTuple_SET_ITEM(t, 2, data);
    PyTuple_SET_ITEM(t, 3, p);
    return t;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* spin_pending(base, capacity, ns) -> bool: spin up to `ns` nanoseconds (GIL released) until
 * has_pending() would say True. Looks every few hundred nanoseconds and yields the CPU every
 * few microseconds, so a peer or another thread on this CPU still runs. */
static PyObject *fast_spin_pending(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t a[3];
    if (!args_u64(args, nargs, 3, a)) return NULL;
    uint64_t *q = (uint64_t *)(uintptr_t)a[0];
    uint64_t cap = a[1];
    int got = pending_core(q, cap);
    if (got || a[2] == 0) return PyBool_FromLong(got);
    Py_BEGIN_ALLOW_THREADS
    uint64_t end = now_ns() + a[2];
    for (;;) {
        for (int i = 0; i < SPIN_CHECKS && !got; i++) {
            for (int k = 0; k < SPIN_PAUSES; k++) CPU_RELAX();
            got = pending_core(q, cap);
        }
        if (got || now_ns() >= end) break;
        sched_yield();
        got = pending_core(q, cap);
        if (got) break;
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(got);
}

/* current_cpu() -> int: the CPU this thread runs on (sched_getcpu, a vDSO call), -1 if unknown */
static PyObject *fast_current_cpu(PyObject *self, PyObject *unused) {
    return PyLong_FromLong((long)sched_getcpu());
}

/* layout() -> dict: the constants above, named as ipc.ring_layout.description() names them */
static PyObject *fast_layout(PyObject *self, PyObject *unused) {
    static const struct {
        const char *name;
        unsigned long long value;
    } items[] = {
        {"api_version", API_VERSION},
        {"header_size", HEADER_SIZE},
        {"record_header_size", RECORD_HEADER_SIZE},
        {"align", ALIGN},
        {"off_lock", OFF_LOCK},
        {"off_head", OFF_HEAD},
        {"off_read", OFF_READ},
        {"off_free", OFF_FREE},
        {"rec_state", REC_STATE},
        {"rec_pos", REC_POS},
        {"rec_span", REC_SPAN},
        {"rec_nbytes", REC_NBYTES},
        {"rec_kind", REC_KIND},
        {"rec_tag", REC_TAG},
        {"rec_producer_pid", REC_PRODUCER_PID},
        {"rec_taker", REC_TAKER},
        {"state_empty", EMPTY},
        {"state_reserved", RESERVED},
        {"state_committed", COMMITTED},
        {"state_taken", TAKEN},
        {"state_released", RELEASED},
        {"state_skip", SKIP},
        {"scan_limit", SCAN_LIMIT},
        {"pending_peek", PENDING_PEEK},
        {"outcome_ok", OUT_OK},
        {"outcome_full", OUT_FULL},
        {"outcome_empty", OUT_EMPTY},
        {"outcome_blocked", OUT_BLOCKED},
        {"outcome_slow", OUT_SLOW},
    };
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(items[i].value);
        if (v == NULL || PyDict_SetItemString(d, items[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyMethodDef methods[] = {
    {"layout", fast_layout, METH_NOARGS,
     "layout() -> dict: the compiled-in layout constants (ipc.ring_layout.description())"},
    {"alloc", (PyCFunction)(void (*)(void))fast_alloc, METH_FASTCALL,
     "alloc(base, capacity, span, nbytes, kind, tag, pid, me, early_wrap) -> AllocResult"},
    {"take", (PyCFunction)(void (*)(void))fast_take, METH_FASTCALL,
     "take(base, capacity, taker, me) -> TakeResult"},
    {"finish", (PyCFunction)(void (*)(void))fast_finish, METH_FASTCALL,
     "finish(record, pos, state) -> None: commit or abort a reservation (release store)"},
    {"release", (PyCFunction)(void (*)(void))fast_release, METH_FASTCALL,
     "release(record, pos) -> None: give back a taken record (release store)"},
    {"has_pending", (PyCFunction)(void (*)(void))fast_has_pending, METH_FASTCALL,
     "has_pending(base, capacity) -> bool"},
    {"put", (PyCFunction)(void (*)(void))fast_put, METH_FASTCALL,
     "put(base, capacity, early_wrap, pid, me, kind, tag, nbytes, pieces, bell) -> int: "
     "reserve, write, commit (and the doorbell's sleepers); -1: run the Python path"},
    {"take_copy", (PyCFunction)(void (*)(void))fast_take_copy, METH_FASTCALL,
     "take_copy(base, capacity, taker, me, max_copy, release) -> (kind, tag, bytes|nbytes, pos) "
     "| None | int"},
    {"current_cpu", fast_current_cpu, METH_NOARGS,
     "current_cpu() -> int: the CPU this thread runs on (-1: unknown)"},
    {"spin_pending", (PyCFunction)(void (*)(void))fast_spin_pending, METH_FASTCALL,
     "spin_pending(base, capacity, ns) -> bool: spin (GIL released) until has_pending()"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ipc._fastring",
    .m_doc = "C versions of ipc.ring's hot paths (optional: ipc.ring falls back to Python).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastring(void) {
    static int types_ready = 0;
    if (!types_ready) {
        if (PyType_Ready(&AllocResultType) < 0 || PyType_Ready(&TakeResultType) < 0 ||
            set_match_args(&AllocResultType, alloc_members) < 0 ||
            set_match_args(&TakeResultType, take_members) < 0)
            return NULL;
        ALLOC_FULL = alloc_result(OUT_FULL, 0);
        ALLOC_SLOW = alloc_result(OUT_SLOW, 0);
        TAKE_EMPTY = take_result(OUT_EMPTY, 0, NULL, 0);
        TAKE_SLOW = take_result(OUT_SLOW, 0, NULL, 0);
        if (ALLOC_FULL == NULL || ALLOC_SLOW == NULL || TAKE_EMPTY == NULL || TAKE_SLOW == NULL)
            return NULL;
        if (pthread_atfork(NULL, NULL, forget_tid) != 0) return PyErr_NoMemory();
        types_ready = 1;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "AllocResult", (PyObject *)&AllocResultType) < 0 ||
        PyModule_AddObjectRef(m, "TakeResult", (PyObject *)&TakeResultType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
