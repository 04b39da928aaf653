"""The names runnerlib gives its entries in /dev/shm, parsed in one place.

Three kinds of entry share one grammar, ``rl.<pid>.<token>[.<tag>]``:

- a shared-memory segment: ``rl.<pid>.<16 hex>[.<tag>]`` (``shm_open`` takes it with a leading
  slash: ``/rl....``);
- a doorbell FIFO: ``rl.<pid>.<16 hex>.bell``;
- an owner's liveness lock (ipc.liveness): ``rl.<pid>.<8 hex>.live``.

Segments and FIFOs made by this version have a token whose first 8 hex digits are the owner id
of the process that made them, so the name alone leads to the owner's lock. The pid is there
for people reading ``ls /dev/shm`` and for segments of older versions (random 16-hex tokens):
it is never a liveness verdict by itself (another pid namespace has the same numbers).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["SHM_DIR", "BELL_TAG", "LOCK_TAG", "Owner", "ShmName", "parse_name", "TAG_RE"]

SHM_DIR = "/dev/shm"
BELL_TAG = "bell"
LOCK_TAG = "live"
TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_RE = re.compile(
    r"rl\.([1-9][0-9]{0,9})\.(?:([0-9a-f]{16})(?:\.([A-Za-z0-9_-]{1,32}))?|([0-9a-f]{8})\.live)"
)
_PID_MAX = 0x7FFFFFFF


class Owner(NamedTuple):
    """A process as its names and its lock know it: pid (for display) and owner id (8 hex)."""

    pid: int
    id: str

    @property
    def lock_name(self) -> str:
        """The entry in /dev/shm that the owner holds an flock on while it lives."""
        return f"rl.{self.pid}.{self.id}.{LOCK_TAG}"


class ShmName(NamedTuple):
    """A parsed entry name. ``token`` is 16 hex for segments and FIFOs, 8 for locks."""

    pid: int
    token: str
    tag: str

    @property
    def owner(self) -> Owner:
        """Whose entry this is. For segments of older versions the first 8 hex digits of the
        token name no lock (ipc.liveness then finds none: the owner is unknown)."""
        return Owner(self.pid, self.token[:8])

    @property
    def is_lock(self) -> bool:
        return self.tag == LOCK_TAG

    @property
    def is_bell(self) -> bool:
        return self.tag == BELL_TAG

    @property
    def is_segment(self) -> bool:
        return not (self.is_lock or self.is_bell)

    @property
    def entry(self) -> str:
        """The file name in /dev/shm (no slash)."""
        base = f"rl.{self.pid}.{self.token}"
        return f"{base}.{self.tag}" if self.tag else base


def parse_name(name: str) -> ShmName | None:
    """Parse a /dev/shm entry name or a segment name (a leading slash is allowed); None when
    it is not one of runnerlib's names."""
    if not isinstance(name, str):
        return None
    m = _RE.fullmatch(name[1:] if name.startswith("/") else name)
    if m is None:
        return None
    pid = int(m.group(1))
    if pid > _PID_MAX:
        return None
    if m.group(4) is not None:
        return ShmName(pid, m.group(4), LOCK_TAG)
    tag = m.group(3) or ""
    if tag == LOCK_TAG:  # "live" is reserved for locks, which have 8-hex tokens
        return None
    return ShmName(pid, m.group(2), tag)
