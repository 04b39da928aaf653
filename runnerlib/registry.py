"""Where clients find servers: one small JSON record per served runner, per namespace.

Records live in a private per-user runtime directory (``runtime_dir``), one folder per
namespace (``$RUNNERLIB_NAMESPACE``, default ``default``). A record names the runner's control
segment and request ring; the segment names carry unguessable tokens, so only a process that
can read this directory can find them. Spawning is serialised by an ``flock`` on
``<runner>.lock``, which the kernel releases if its holder dies, so two processes racing to
spawn end with one server.

The directory is another user's target (a predictable name in /tmp): it is opened without
following links and checked (owner, mode) through its descriptor, and every file in it is
opened relative to that descriptor with ``O_NOFOLLOW``, so a link planted in place of the
directory, of a record or of a lock is never followed and nothing outside is ever chmod-ed or
written. Liveness of a server is its owner lock (ipc.liveness), never its pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ipc.liveness import owner_alive
from ipc.segment import SHM_DIR
from ipc.segment import pid_alive as pid_alive  # noqa: F401 - own children only, never a verdict

__all__ = [
    "ServerInfo", "namespace", "root_dir", "namespace_dir", "spawn_lock", "publish", "withdraw",
    "find", "all_servers", "owner_alive", "TMP_CANDIDATES",
]

log = logging.getLogger("runnerlib.registry")

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][-._A-Za-z0-9]{0,62}$")
#: ``/tmp/runnerlib-<uid>``, then ``.1`` ... ``.7``: the first that is ours or that we can
#: create wins, the same one for every process of the user (the same squatters stand in the
#: way of all of them).
TMP_CANDIDATES = 8
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_warned: set[str] = set()


class ServerInfo(msgspec.Struct, frozen=True):
    runner: str
    namespace: str
    server_pid: int  # for display: the server's liveness is its control segment's owner lock
    control: str
    request_ring: str
    class_ref: str
    methods: list[str]
    started: float


def namespace() -> str:
    ns = os.environ.get("RUNNERLIB_NAMESPACE", "default")
    if not _NAMESPACE_RE.match(ns):
        raise ValueError(
            f"RUNNERLIB_NAMESPACE={ns!r} is not a valid namespace: use letters, digits, '-', "
            "'.', '_' (at most 63 characters)"
        )
    return ns


# -- the verified runtime directory ------------------------------------------------------------

class _NotOurs(OSError):
    """A directory entry that is not a private directory of ours (the squatter in the text)."""


def _open_private(parent_fd: int | None, name: str, *, fix_mode: bool = True) -> int:
    """mkdir ``name`` 0700 (relative to ``parent_fd``) unless it exists, then open it without
    following a link and check it through the descriptor: a directory, ours, no group or other
    bits (removed with fchmod when ``fix_mode``: it is ours). Raises _NotOurs naming what is in
    the way, OSError for other failures."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _NotOurs(exc.errno, _describe(parent_fd, name)) from exc
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise _NotOurs(errno.EPERM, f"a directory owned by uid {st.st_uid}")
        if stat.S_IMODE(st.st_mode) & 0o077:
            if not fix_mode:
                raise _NotOurs(errno.EPERM, f"a directory of ours with mode "
                                            f"{stat.S_IMODE(st.st_mode):o}")
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _describe(parent_fd: int | None, name: str) -> str:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return "something that vanished"
    kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode)
            else "a directory" if stat.S_ISDIR(st.st_mode) else "a file")
    return f"{kind} owned by uid {st.st_uid}"


def _warn_once(key: str, msg: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def _open_root() -> tuple[int, str]:
    """(descriptor, path) of the verified runtime directory:
    ``$RUNNERLIB_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/runnerlib``, else the first of
    ``/tmp/runnerlib-<uid>``, ``/tmp/runnerlib-<uid>.1``, ... that is ours or creatable."""
    explicit = os.environ.get("RUNNERLIB_RUNTIME_DIR")
    if explicit:
        path = os.path.abspath(explicit)
        head, tail = os.path.split(path)
        try:
            parent = os.open(head, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise PermissionError(f"RUNNERLIB_RUNTIME_DIR={explicit}: {exc}") from exc
        try:
            return _open_private(parent, tail), path
        except _NotOurs as exc:
            raise PermissionError(
                f"RUNNERLIB_RUNTIME_DIR={explicit} is {exc.strerror}, not a private directory "
                "of this user: point it at a directory you own") from None
        finally:
            os.close(parent)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        try:
            parent = os.open(xdg, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            parent = -1
        if parent >= 0:
            try:
                return _open_private(parent, "runnerlib"), os.path.join(xdg, "runnerlib")
            except _NotOurs as exc:
                _warn_once(f"xdg:{xdg}", "runnerlib: %s/runnerlib is %s; using /tmp instead",
                           xdg, exc.strerror)
            except OSError as exc:
                _warn_once(f"xdg:{xdg}", "runnerlib: cannot use %s/runnerlib (%s); using /tmp",
                           xdg, exc)
            finally:
                os.close(parent)
    tmp = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        base = f"runnerlib-{os.getuid()}"
        for i in range(TMP_CANDIDATES):
            name = base if i == 0 else f"{base}.{i}"
            try:
                return _open_private(tmp, name), f"/tmp/{name}"
            except _NotOurs as exc:
                _warn_once(f"tmp:{name}", "runnerlib: /tmp/%s is %s, not ours: another user "
                           "may be squatting it; trying the next name (set XDG_RUNTIME_DIR or "
                           "RUNNERLIB_RUNTIME_DIR to avoid /tmp)", name, exc.strerror)
        raise PermissionError(
            f"/tmp/{base} and its {TMP_CANDIDATES - 1} alternatives are all taken by someone "
            "else: set RUNNERLIB_RUNTIME_DIR to a private directory")
    finally:
        os.close(tmp)


def root_dir() -> Path:
    """The verified runtime directory (created if missing)."""
    fd, path = _open_root()
    os.close(fd)
    return Path(path)


@contextlib.contextmanager
def _dir_fd(ns: str | None = None) -> Iterator[int]:
    """A descriptor on the verified namespace directory, opened relative to the verified root,
    so that no path component can be swapped for a link between the check and the use."""
    ns = ns or namespace()
    if not _NAMESPACE_RE.match(ns):
        raise ValueError(f"invalid namespace {ns!r}")
    root, path = _open_root()
    try:
        try:
            fd = _open_private(root, ns)
        except _NotOurs as exc:
            raise PermissionError(f"{path}/{ns} is {exc.strerror}, not ours") from None
    finally:
        os.close(root)
    try:
        yield fd
    finally:
        os.close(fd)


def namespace_dir(ns: str | None = None) -> Path:
    """The namespace's directory, created private (for display and tests; runnerlib itself
    opens files through the verified descriptor)."""
    ns = ns or namespace()
    with _dir_fd(ns):
        pass
    return root_dir() / ns


def _open_file(dir_fd: int, name: str, flags: int) -> int:
    """Open ``name`` in the verified directory without following a link; a link or a
    non-file planted there is removed (the directory is ours) and the open retried once."""
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in (0, 1):
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP or attempt:
                raise
            os.unlink(name, dir_fd=dir_fd)  # a symbolic link in place of our file
            continue
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
            return fd
        os.close(fd)
        if attempt or not flags & os.O_CREAT:
            raise PermissionError(f"{name} in the runtime directory is not a file of ours")
        os.unlink(name, dir_fd=dir_fd)
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def spawn_lock(runner: str, ns: str | None = None) -> Iterator[None]:
    """Hold the runner's spawn lock: only one process decides whether to start a server."""
    with _dir_fd(ns) as dfd:
        fd = _open_file(dfd, f"{runner}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _segment_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def publish(info: ServerInfo) -> None:
    """Write the record atomically: a fresh temporary file (O_EXCL, no link followed), then a
    rename over ``<runner>.json`` (rename replaces a link, never follows it)."""
    with _dir_fd(info.namespace) as dfd:
        final = f"{info.runner}.json"
        tmp = f"{info.runner}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.json.encode(info))
            os.replace(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def withdraw(runner: str, ns: str, control: str) -> None:
    """Remove the record if it is still ours (names our control segment)."""
    with _dir_fd(ns) as dfd:
        info = _read(dfd, runner)
        if info is not None and info.control == control:
            _remove_stale(dfd, runner, info)


def _read(dir_fd: int, runner: str) -> ServerInfo | None:
    try:
        fd = os.open(f"{runner}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(1 << 20)
        return msgspec.json.decode(data, type=ServerInfo)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    finally:
        os.close(fd)


def _remove_stale(dir_fd: int, runner: str, stale: ServerInfo) -> None:
    """Unlink a stale record unless a new server replaced it since it was read: records are
    published with an atomic rename, so a changed record is a different file."""
    if _read(dir_fd, runner) == stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{runner}.json", dir_fd=dir_fd)


def _live(info: ServerInfo, runner: str) -> bool:
    return info.runner == runner and owner_alive(info.control) and _segment_exists(info.control)


def find(runner: str, ns: str | None = None) -> ServerInfo | None:
    """The live server record for a runner, or None; records of provably dead servers are
    removed. Live = the control segment's owner (the server) holds its liveness lock, in
    whatever PID namespace it runs, and the segment exists."""
    with _dir_fd(ns) as dfd:
        return _find(dfd, runner)


def _find(dir_fd: int, runner: str) -> ServerInfo | None:
    info = _read(dir_fd, runner)
    if info is None:
        return None
    if _live(info, runner):
        return info
    _remove_stale(dir_fd, runner, info)
    return None


def all_servers() -> list[ServerInfo]:
    """Every live record of this user, in every namespace."""
    found: list[ServerInfo] = []
    try:
        root, _path = _open_root()
    except OSError:
        return found
    try:
        names = sorted(os.listdir(root))
    finally:
        os.close(root)
    for ns in names:
        if not _NAMESPACE_RE.match(ns):
            continue
        try:
            with _dir_fd(ns) as dfd:
                recs = sorted(n[:-5] for n in os.listdir(dfd) if n.endswith(".json"))
                for rec in recs:
                    info = _find(dfd, rec)
                    if info is not None:
                        found.append(info)
        except OSError:
            continue
    return found
