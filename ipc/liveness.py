"""Who is alive, judged by a lock the kernel drops when its holder dies, never by a bare pid.

Pids cannot be compared across PID namespaces: a sidecar container that shares /dev/shm but not
the pid namespace sees other numbers, and the same number names different processes in each.
So every process that creates entries in /dev/shm (segments, FIFOs) first makes itself an
*owner*: a random 8-hex owner id, and an ``flock(LOCK_EX)`` it holds for its whole life on
``/dev/shm/rl.<pid>.<owner id>.live`` (/dev/shm because every party that shares segments
shares it). Its entry names start their token with that id (ipc.names), so any process that
sees a name can find and probe the lock:

- the lock file is locked (``flock(LOCK_SH|LOCK_NB)`` fails): ALIVE;
- it exists and the probe's lock succeeds: DEAD, provably (the kernel released the holder's
  lock when its last descriptor closed: at exit, however the process died);
- it does not exist: GONE. An owner's lock file exists from before its first name until it is
  dead, and only a prober holding its lock after its death (ipc.segment's cleanup), or the
  owner itself at a clean exit with nothing left, removes it. So GONE means not alive, but
  entries of a GONE owner (segments of an older version, or a lock removed by hand) are not
  provably dead: cleanup leaves them unless told otherwise.

Fork: a child inherits the descriptor, hence the lock (one open file description). The child
closes its copy (never ``LOCK_UN``, which would release the parent's lock too) in an at-fork
hook and becomes an owner of its own on its first name. A child made without the hook (a C
``fork()``) is caught by the pid check in ``me()``.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import errno
import fcntl
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator

from ipc.errors import SegmentError
from ipc.names import SHM_DIR, Owner, parse_name

__all__ = ["Verdict", "me", "new_token", "verdict", "owner_alive", "is_mine", "probe_dead"]


class Verdict(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"  # its lock file exists and nobody holds it
    GONE = "gone"  # no lock file: not alive, and its entries not provably dead


_LOCK_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class _Identity:
    __slots__ = ("owner", "fd", "pid")

    def __init__(self, owner: Owner, fd: int, pid: int) -> None:
        self.owner = owner
        self.fd = fd
        self.pid = pid


_mine: _Identity | None = None
_guard = threading.Lock()


def me() -> Owner:
    """This process as an owner; the first call (in a process, or after a fork) takes the
    lock. Raises SegmentError when /dev/shm cannot hold the lock file."""
    global _mine
    ident = _mine
    pid = os.getpid()
    if ident is not None and ident.pid == pid:
        return ident.owner
    with _guard:
        ident = _mine
        if ident is not None and ident.pid != pid:  # forked without the at-fork hook
            _forget()
            ident = None
        if ident is None:
            ident = _mine = _become_owner(pid)
        return ident.owner


def _become_owner(pid: int) -> _Identity:
    for _ in range(16):
        oid = secrets.token_hex(4)
        path = os.path.join(SHM_DIR, Owner(pid, oid).lock_name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise SegmentError(f"cannot create the liveness lock {path}: {exc}") from exc
        try:
            # Blocks only while a prober holds its brief shared lock: until we hold ours, the
            # file looks DEAD, and a cleanup may have removed it (it owns nothing yet).
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                continue
        except OSError as exc:
            os.close(fd)
            raise SegmentError(f"cannot lock the liveness lock {path}: {exc}") from exc
        return _Identity(Owner(pid, oid), fd, pid)
    raise SegmentError("cannot create a liveness lock in /dev/shm")  # pragma: no cover


def _forget() -> None:
    """Drop an inherited identity: close our copy of the descriptor (the parent keeps its lock)."""
    global _mine
    ident, _mine = _mine, None
    if ident is not None:
        with contextlib.suppress(OSError):
            os.close(ident.fd)


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()  # another thread may have held it at the fork
    _forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def new_token() -> str:
    """A fresh 16-hex token for an entry name of this process: owner id, then 8 random hex."""
    return me().id + secrets.token_hex(4)


def is_mine(name_or_owner: str | Owner) -> bool:
    """True when the name (or owner) is this process's (without becoming an owner)."""
    owner = _owner(name_or_owner)
    ident = _mine
    return owner is not None and ident is not None and ident.pid == os.getpid() \
        and owner == ident.owner


def _owner(name_or_owner: str | Owner) -> Owner | None:
    if isinstance(name_or_owner, Owner):
        return name_or_owner
    parsed = parse_name(name_or_owner)
    return parsed.owner if parsed is not None else None


def _open_lock(owner: Owner) -> int | None:
    """A descriptor on the owner's lock file, None if there is none; raises OSError when it
    cannot be judged (not ours, not a plain file)."""
    path = os.path.join(SHM_DIR, owner.lock_name)
    try:
        fd = os.open(path, _LOCK_FLAGS)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise OSError(errno.EPERM, f"{path} is not a lock file of ours")
    except BaseException:
        os.close(fd)
        raise
    return fd


def verdict(name_or_owner: str | Owner) -> Verdict:
    """ALIVE, DEAD or GONE for the owner of a name (module docstring). A name that is not
    runnerlib's, or a lock that cannot be judged, is ALIVE: never call dead what is not
    provably so."""
    owner = _owner(name_or_owner)
    if owner is None:
        return Verdict.ALIVE
    if is_mine(owner):
        return Verdict.ALIVE
    try:
        fd = _open_lock(owner)
    except OSError:
        return Verdict.ALIVE
    if fd is None:
        return Verdict.GONE
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return Verdict.ALIVE  # EWOULDBLOCK: held; anything else: cannot tell
    finally:
        os.close(fd)  # also releases our probe lock
    return Verdict.DEAD


def owner_alive(name_or_owner: str | Owner) -> bool:
    """True while the process that made this name (or this owner) lives, in whatever PID
    namespace it runs, provided it shares /dev/shm with us."""
    return verdict(name_or_owner) is Verdict.ALIVE


@contextlib.contextmanager
def _holding_dead(owner: Owner) -> Iterator[bool]:
    fd = _open_lock(owner)
    if fd is None:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def probe_dead(owner: Owner, remove: Callable[[], None]) -> bool:
    """If ``owner`` is provably dead, run ``remove()`` (unlink its entries) while holding its
    lock, then remove the lock file, last, so that an interrupted cleanup leaves the proof in
    place for the next one. Returns whether it was dead."""
    if is_mine(owner):
        return False
    try:
        with _holding_dead(owner) as dead:
            if not dead:
                return False
            remove()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, owner.lock_name))
            return True
    except OSError:
        return False


def _release_at_exit() -> None:
    """At a clean exit with no entry of ours left, remove our lock file (a kill leaves it:
    the next cleanup, holding it, removes it)."""
    ident = _mine
    if ident is None or ident.pid != os.getpid():
        return
    prefix = f"rl.{ident.owner.pid}.{ident.owner.id}"
    lock = ident.owner.lock_name
    try:
        left = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix) and n != lock]
    except OSError:
        return
    if not left:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, lock))


atexit.register(_release_at_exit)
