"""POSIX shared-memory segments with owner-tokened names, mode 0600 and crash cleanup.

A name ("/rl.<pid>.<token>[.<tag>]", grammar in ipc.names) starts its token with the owner id
of the process that made it, so a later process can tell a dead owner's segments from a live
one's by the owner's liveness lock (ipc.liveness), in any PID namespace, without a registry;
the random rest of the token makes each name unique. The pid is kept for display.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from functools import partial

import posix_ipc

from ipc import liveness
from ipc.atomics import address_of
from ipc.errors import SegmentError
from ipc.names import SHM_DIR, TAG_RE, Owner, ShmName, parse_name

__all__ = [
    "Segment",
    "owner_pid",
    "parse_name",
    "ShmName",
    "list_segments",
    "cleanup_stale",
    "remove_dead_owner",
    "pid_alive",
    "SHM_DIR",
    "make_name",
]

MADV_POPULATE_WRITE = 23
_PAGE = mmap.PAGESIZE

#: Test seam (SPEC 8, resource exhaustion): "ENOSPC" or "EMFILE[:tag,tag...]" makes
#: Segment.create fail as the kernel would, in this process and in processes that inherit
#: the environment (workers). Read at each create; creation is never on the hot path.
FAULT_ENV = "RUNNERLIB_FAULT_SEGMENT_CREATE"


def make_name(tag: str = "") -> str:
    """A fresh "/rl.<pid>.<token>[.<tag>]" name owned by this process (ipc.liveness)."""
    if tag and (not TAG_RE.fullmatch(tag) or tag in ("bell", "live")):
        raise ValueError(
            f"segment tag must match [A-Za-z0-9_-]{{1,32}}, not 'bell' or 'live': {tag!r}")
    owner = liveness.me()
    name = f"/rl.{owner.pid}.{liveness.new_token()}"
    return f"{name}.{tag}" if tag else name


def pid_alive(pid: int) -> bool:
    """True if `pid` names a live (non-zombie) process *of this PID namespace*. Only for a
    process's own children (and tests): it is never a verdict on a name's owner, which may
    live in another namespace (ipc.liveness)."""
    if pid <= 0 or pid > 0x7FFFFFFF:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True  # no procfs: trust kill()
    # state is the field after the parenthesised command name
    end = data.rfind(b")")
    state = data[end + 2 : end + 3] if end >= 0 else b""
    return state not in (b"Z", b"X")


def owner_pid(name: str) -> int | None:
    """The pid carried by a segment, FIFO or lock name (for display), or None if foreign."""
    parsed = parse_name(name)
    return parsed.pid if parsed is not None else None


def list_segments(prefix: str = "rl.") -> list[str]:
    """Names ("/rl....") of the shared-memory segments in /dev/shm starting with `prefix`
    (not FIFOs, not liveness locks)."""
    out: list[str] = []
    try:
        entries = os.scandir(SHM_DIR)
    except OSError:
        return out
    with entries:
        for e in entries:
            parsed = parse_name(e.name)
            if (e.name.startswith(prefix) and parsed is not None and parsed.is_segment
                    and e.is_file(follow_symlinks=False)):
                out.append("/" + e.name)
    return sorted(out)


def cleanup_stale(*, legacy: bool = False) -> list[str]:
    """Unlink every rl.* segment, bell FIFO and liveness lock of ours whose owner is provably
    dead (its lock file exists and nobody holds it); returns what was removed.

    Entries whose owner has no lock file (made by an older runnerlib, or whose lock someone
    removed by hand) are not provably dead and stay, unless ``legacy``: then the old rule
    applies to them, a dead pid *in this PID namespace* (wrong for entries of another
    namespace: use it only where every process of that version ran in this one)."""
    removed: list[str] = []
    for owner, entries in sorted(_entries_by_owner().items()):
        if liveness.is_mine(owner):
            continue
        if liveness.probe_dead(owner, partial(_unlink_into, entries, removed)):
            removed.append(owner.lock_name)
        elif (legacy and liveness.verdict(owner) is liveness.Verdict.GONE
              and not pid_alive(owner.pid)):
            removed.extend(_unlink(entries))
    return sorted(removed)


def remove_dead_owner(pid: int, owner_id: str | None = None) -> list[str]:
    """Unlink the entries of a dead owner: ``(pid, owner_id)``, or every owner named with
    ``pid`` (a process's own dead child, whose id it does not know) that is provably dead.
    A live process of another PID namespace with the same pid keeps its entries.
    Mappings that others hold stay valid."""
    removed: list[str] = []
    for owner, entries in _entries_by_owner().items():
        if owner.pid != pid or (owner_id is not None and owner.id != owner_id):
            continue
        if liveness.probe_dead(owner, partial(_unlink_into, entries, removed)):
            removed.append(owner.lock_name)
    return sorted(removed)


_Entries = list[tuple[str, ShmName]]


def _entries_by_owner() -> dict[Owner, _Entries]:
    """Our uid's runnerlib entries in /dev/shm (plain files and FIFOs), by owner."""
    uid = os.getuid()
    out: dict[Owner, _Entries] = {}
    try:
        entries = list(os.scandir(SHM_DIR))
    except OSError:
        return out
    for e in entries:
        parsed = parse_name(e.name)
        if parsed is None:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid != uid:
            continue
        if not (stat.S_ISREG(st.st_mode) or (parsed.is_bell and stat.S_ISFIFO(st.st_mode))):
            continue
        out.setdefault(parsed.owner, []).append((e.path, parsed))
    return out


def _unlink_into(entries: _Entries, removed: list[str]) -> None:
    removed.extend(_unlink(entries))


def _unlink(entries: _Entries) -> list[str]:
    """Unlink segments and FIFOs (not the lock: liveness.probe_dead removes it last)."""
    removed: list[str] = []
    for path, parsed in entries:
        if parsed.is_lock:
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(parsed.entry if parsed.is_bell else "/" + parsed.entry)
    return removed


class Segment:
    """One mapped POSIX shared-memory object."""

    __slots__ = ("name", "size", "address", "_mmap", "_buf", "_owner", "__weakref__")

    def __init__(self, name: str, mapping: mmap.mmap, *, owner: bool) -> None:
        self.name = name
        self.size = len(mapping)
        self._mmap: mmap.mmap | None = mapping
        self._buf: memoryview | None = memoryview(mapping)
        self.address = address_of(mapping)
        self._owner = owner

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, size: int, *, tag: str = "", prefault: int | None = None) -> Segment:
        """Create, size and map a new segment (mode 0600), prefaulting `prefault` bytes."""
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        _injected_fault(tag)
        for _ in range(8):
            name = make_name(tag)
            try:
                shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
                break
            except posix_ipc.ExistentialError:
                continue
            except (posix_ipc.Error, OSError, ValueError) as exc:
                raise SegmentError(f"cannot create shared memory {name}: {exc}") from exc
        else:  # pragma: no cover - 64 random bits colliding 8 times
            raise SegmentError("cannot find a free segment name")
        try:
            try:
                os.fchmod(shm.fd, 0o600)  # umask cannot widen it, but be explicit
                mapping = mmap.mmap(shm.fd, size)
            finally:
                shm.close_fd()
            _prefault(mapping, size if prefault is None else max(0, min(prefault, size)))
            return cls(name, mapping, owner=True)
        except BaseException as exc:
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.Error:
                pass
            if isinstance(exc, OSError) and not isinstance(exc, SegmentError):
                raise SegmentError(f"cannot map shared memory {name}: {exc}") from exc
            raise

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map an existing segment by name; the name must have the rl.<pid>.<token> form."""
        parsed = parse_name(name) if isinstance(name, str) and name.startswith("/") else None
        if parsed is None or not parsed.is_segment:
            raise SegmentError(f"not a runnerlib segment name: {name!r}")
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as exc:
            raise SegmentError(f"no such segment: {name}") from exc
        except (posix_ipc.Error, OSError) as exc:
            raise SegmentError(f"cannot open segment {name}: {exc}") from exc
        try:
            st = os.fstat(shm.fd)
            if st.st_uid != os.getuid():
                raise SegmentError(f"segment {name} belongs to uid {st.st_uid}, not to us")
            if st.st_size <= 0:
                raise SegmentError(f"segment {name} is empty")
            try:
                mapping = mmap.mmap(shm.fd, st.st_size)
            except OSError as exc:
                raise SegmentError(f"cannot map segment {name}: {exc}") from exc
        finally:
            shm.close_fd()
        return cls(name, mapping, owner=False)

    # -- access -------------------------------------------------------------------------------
    @property
    def buf(self) -> memoryview:
        """Writable byte view of the whole mapping."""
        if self._buf is None:
            raise SegmentError(f"segment {self.name} is closed")
        return self._buf

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def close(self) -> None:
        """Unmap. Views still alive keep the mapping (the mmap object) alive: never a segfault."""
        mapping, self._mmap = self._mmap, None
        buf, self._buf = self._buf, None
        if mapping is None:
            return
        if buf is not None:
            try:
                buf.release()
            except BufferError:
                pass  # someone exported from it; the memoryview keeps the mmap alive
        try:
            mapping.close()
        except BufferError:
            # Live exports (tokens of zero-copy records, numpy views...): dropping our reference
            # is enough, CPython unmaps when the last view goes.
            pass

    def unlink(self) -> None:
        """Remove the name (idempotent); mappings stay valid until closed."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass
        except posix_ipc.Error as exc:
            raise SegmentError(f"cannot unlink {self.name}: {exc}") from exc

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mmap is None else f"{self.size} bytes"
        return f"<Segment {self.name} {state}>"


def _injected_fault(tag: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, tags = spec.partition(":")
    if tags and tag not in tags.split(","):
        return
    code = getattr(errno, name.strip().upper(), errno.ENOSPC)
    raise SegmentError(
        f"cannot create shared memory for {tag or 'a segment'}: [Errno {code}] "
        f"{os.strerror(code)} (injected by {FAULT_ENV})"
    )


def _prefault(mapping: mmap.mmap, nbytes: int) -> None:
    """Fault pages in at setup so that first writes on the hot path do not pay ~10x."""
    if nbytes <= 0:
        return
    length = min(len(mapping), (nbytes + _PAGE - 1) // _PAGE * _PAGE)
    try:
        mapping.madvise(MADV_POPULATE_WRITE, 0, length)
        return
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            # out of memory or of tmpfs space: an error now, where touching the pages
            # would be a SIGBUS
            raise SegmentError(f"cannot populate {length} bytes of shared memory: {exc}") from exc
    except (ValueError, AttributeError):
        pass
    # kernel < 5.14 (EINVAL: unknown advice): touch each page instead
    import numpy as np

    view = np.frombuffer(mapping, dtype=np.uint8, count=length)
    try:
        view[::_PAGE] = view[::_PAGE]  # a write per page, contents unchanged
    finally:
        del view
