"""Where clients find servers: one small JSON record per served runner, per namespace.

Records live in a private per-user directory (mode 0700): ``$RUNNERLIB_RUNTIME_DIR`` or
``/tmp/runnerlib-<uid>``, then one folder per namespace (``$RUNNERLIB_NAMESPACE``, default
``default``). A record names the runner's control segment and request ring; the segment names
carry unguessable tokens, so only a process that can read this directory can find them.
Spawning is serialised by an ``flock`` on ``<runner>.lock``, which the kernel releases if its
holder dies, so two processes racing to spawn end with one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ipc.segment import SHM_DIR, pid_alive

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][-._A-Za-z0-9]{0,62}$")


class ServerInfo(msgspec.Struct, frozen=True):
    runner: str
    namespace: str
    server_pid: int
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


def root_dir() -> Path:
    return Path(os.environ.get("RUNNERLIB_RUNTIME_DIR") or f"/tmp/runnerlib-{os.getuid()}")


def namespace_dir(ns: str | None = None) -> Path:
    """The namespace's directory, created private; refuses one that another user owns."""
    root = root_dir()
    path = root / (ns or namespace())
    for p in (root, path):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:
            pass
        st = p.stat()
        if st.st_uid != os.getuid():
            raise PermissionError(f"{p} belongs to another user; set RUNNERLIB_RUNTIME_DIR")
        if st.st_mode & 0o077:
            os.chmod(p, 0o700)
    return path


def _record_path(runner: str, ns: str | None = None) -> Path:
    return namespace_dir(ns) / f"{runner}.json"


@contextlib.contextmanager
def spawn_lock(runner: str, ns: str | None = None) -> Iterator[None]:
    """Hold the runner's spawn lock: only one process decides whether to start a server."""
    path = namespace_dir(ns) / f"{runner}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _segment_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def publish(info: ServerInfo) -> None:
    path = _record_path(info.runner, info.namespace)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode(info))
    os.replace(tmp, path)


def withdraw(runner: str, ns: str, server_pid: int) -> None:
    """Remove the record if it is still ours."""
    path = _record_path(runner, ns)
    info = _read(path)
    if info is not None and info.server_pid == server_pid:
        _remove_stale(path, info)


def _read(path: Path) -> ServerInfo | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ServerInfo)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def _remove_stale(path: Path, stale: ServerInfo) -> None:
    """Unlink a stale record unless a new server replaced it since it was read: records are
    published with an atomic rename, so a changed record is a different file."""
    if _read(path) == stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def find(runner: str, ns: str | None = None) -> ServerInfo | None:
    """The live server record for a runner, or None; stale records are removed."""
    path = _record_path(runner, ns)
    info = _read(path)
    if info is None:
        return None
    if (
        info.runner == runner
        and pid_alive(info.server_pid)
        and _segment_exists(info.control)
    ):
        return info
    _remove_stale(path, info)
    return None


def all_servers() -> list[ServerInfo]:
    """Every live record of this user, in every namespace."""
    root = root_dir()
    found: list[ServerInfo] = []
    if not root.is_dir():
        return found
    for ns_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not _NAMESPACE_RE.match(ns_dir.name):
            continue
        for rec in sorted(ns_dir.glob("*.json")):
            info = find(rec.stem, ns_dir.name)
            if info is not None:
                found.append(info)
    return found
