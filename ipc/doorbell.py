"""Cross-process wake-up: a sleepers counter in shared memory plus a named FIFO.

Waiters spin (yielding the CPU) before they block, and wakers pay a system call only when
somebody declared itself asleep, so back-to-back traffic never enters the kernel. A FIFO (not
a semaphore) because its fd is what lets asyncio/uvloop wait without a thread.

Protocol: the waker makes its condition true, fences, then reads `sleepers`; the waiter
increments `sleepers`, fences, then re-checks the condition. One of them must see the other:
both fences are full (sequentially consistent) fences, the only kind that orders a store
before a later load, on every machine (docs/wire-format-ring.md, "Memory ordering").
The waker writes one byte per declared sleeper and each woken waiter reads at most one, so
several waiters (in several processes) cannot steal each other's wake-up; a surplus byte only
causes one spurious, harmless wake-up later.

A waiter that can be killed while asleep (a worker) declares itself by a bit of its own in
the ``named`` word instead of in the counter: whoever sees it die clears its bit
(``forget_waiter``), so a dead sleeper never makes every later ``ring()`` pay a system call.
"""

from __future__ import annotations

import errno
import math
import os
import re
import select
import stat
import time
from collections.abc import Callable

from ipc import atomics, liveness
from ipc.errors import SegmentError
from ipc.segment import SHM_DIR, Segment

__all__ = ["Doorbell", "DOORBELL_SIZE"]

DOORBELL_SIZE = 64
MAGIC = int.from_bytes(b"RLBELL01", "little")
# u64 words of the 64-byte block: sleepers, magic, owner pid, token (16 ascii hex bytes in
# words 3-4), then the bit mask of named sleepers (bit i: named waiter i is asleep)
_W_SLEEPERS, _W_MAGIC, _W_PID, _W_TOKEN, _W_NAMED = 0, 1, 2, 3, 5
#: Named waiters a doorbell can tell apart (bits of one word); others use the counter.
NAMED_WAITERS = 64
_TOKEN_RE = re.compile(rb"[0-9a-f]{16}")
_MAX_BYTES = 64  # bytes written per ring(), at most


class Doorbell:
    """A wake-up point for one or many waiters, living in 64 bytes of a Segment + a FIFO."""

    def __init__(self, segment: Segment, offset: int, path: str, fd: int, owner: bool) -> None:
        self.segment = segment
        self.offset = offset
        self.path = path
        self._fd = fd
        self._owner = owner
        self._q: memoryview | None = segment.buf[offset : offset + DOORBELL_SIZE].cast("Q")
        self._addr = segment.address + offset

    @staticmethod
    def _check_offset(segment: Segment, offset: int) -> None:
        if offset < 0 or offset % 64 or offset + DOORBELL_SIZE > segment.size:
            raise ValueError(
                f"doorbell offset {offset} must be 64-aligned and inside the segment "
                f"({segment.size} bytes)"
            )

    @classmethod
    def create(cls, segment: Segment, offset: int) -> Doorbell:
        """Make the FIFO (mode 0600, in /dev/shm) and initialise the 64-byte block."""
        cls._check_offset(segment, offset)
        pid = liveness.me().pid  # the name leads to our liveness lock (ipc.liveness)
        for _ in range(8):
            token = liveness.new_token()
            path = f"{SHM_DIR}/rl.{pid}.{token}.bell"
            try:
                os.mkfifo(path, 0o600)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise SegmentError(f"cannot create doorbell FIFO {path}: {exc}") from exc
        else:  # pragma: no cover
            raise SegmentError("cannot find a free doorbell name")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            os.unlink(path)
            raise SegmentError(f"cannot open doorbell FIFO {path}: {exc}") from exc
        q = segment.buf[offset : offset + DOORBELL_SIZE].cast("Q")
        q[_W_SLEEPERS] = 0
        q[_W_NAMED] = 0
        q[_W_PID] = pid
        segment.buf[offset + 8 * _W_TOKEN : offset + 8 * _W_TOKEN + 16] = token.encode()
        q[_W_MAGIC] = MAGIC
        q.release()
        return cls(segment, offset, path, fd, owner=True)

    @classmethod
    def attach(cls, segment: Segment, offset: int) -> Doorbell:
        """Open the FIFO named by the (validated) block at `offset`."""
        cls._check_offset(segment, offset)
        block = bytes(segment.buf[offset : offset + DOORBELL_SIZE])
        magic = int.from_bytes(block[8:16], "little")
        pid = int.from_bytes(block[16:24], "little")
        token = block[24:40]
        if magic != MAGIC or not 0 < pid < 1 << 31 or not _TOKEN_RE.fullmatch(token):
            raise SegmentError(f"no doorbell at offset {offset} of {segment.name}")
        path = f"{SHM_DIR}/rl.{pid}.{token.decode()}.bell"
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise SegmentError(f"cannot open doorbell FIFO {path}: {exc}") from exc
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.getuid():
            os.close(fd)
            raise SegmentError(f"{path} is not a doorbell FIFO of ours")
        return cls(segment, offset, path, fd, owner=False)

    def fileno(self) -> int:
        if self._fd < 0:
            raise SegmentError("doorbell is closed")
        return self._fd

    @property
    def sleepers(self) -> int:
        """Declared sleepers: the counter plus the named ones."""
        q = self._q
        return 0 if q is None else q[_W_SLEEPERS] + q[_W_NAMED].bit_count()

    def _named(self, bit: int, on: bool) -> None:
        addr = self._addr + 8 * _W_NAMED
        while True:
            old = atomics.load64(addr)
            new = old | bit if on else old & ~bit
            if old == new or atomics.cas64(addr, old, new):
                return

    def forget_waiter(self, waiter: int) -> None:
        """Named waiter ``waiter`` is gone (it died, maybe asleep): stop counting it."""
        if self._q is not None and 0 <= waiter < NAMED_WAITERS:
            self._named(1 << waiter, False)

    # -- waker ------------------------------------------------------------------------------------
    def ring(self) -> None:
        """Wake the declared sleepers; no system call when nobody sleeps."""
        atomics.fence()
        q = self._q
        if q is None:
            return
        n = q[_W_SLEEPERS]
        named = q[_W_NAMED]
        if named:
            n += named.bit_count()
        if n:
            try:
                os.write(self._fd, b"\0" * (n if n < _MAX_BYTES else _MAX_BYTES))
            except BlockingIOError:
                pass  # FIFO full: plenty of wake-ups pending already
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EBADF):
                    raise

    @property
    def block_address(self) -> int:
        """The address of the 64-byte block while open (0 once closed): what a C waker reads
        the sleepers from (``ipc.ring.Ring.put``)."""
        return self._addr if self._q is not None else 0

    def wake(self, n: int) -> None:
        """The second half of ring(), for a waker that fenced and counted the sleepers
        itself (``ipc.ring.Ring.put``): write ``n`` wake-up bytes (at most 64)."""
        if n and self._fd >= 0:
            try:
                os.write(self._fd, b"\0" * (n if n < _MAX_BYTES else _MAX_BYTES))
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EBADF):
                    raise

    # -- waiters ----------------------------------------------------------------------------------
    def _spin(self, ready: Callable[[], bool], spin: float, deadline: float | None) -> bool:
        end = time.perf_counter() + spin
        if deadline is not None and deadline < end:
            end = deadline
        while True:
            os.sched_yield()
            if ready():
                return True
            if time.perf_counter() >= end:
                return False

    def wait(
        self,
        ready: Callable[[], bool],
        *,
        spin: float = 100e-6,
        timeout: float | None = None,
        waiter: int | None = None,
        spinner: Callable[[float], bool] | None = None,
    ) -> bool:
        """Wait until ready() is true; False after `timeout` seconds. ``waiter`` (0-63): sleep
        as that named waiter (see ``forget_waiter``) rather than in the anonymous counter.
        ``spinner(seconds)``: spins until ready() would be true, in place of the Python spin
        (``ipc.ring.Ring.spin_pending``, for ``ready=ring.has_pending``)."""
        if ready():
            return True
        deadline = None if timeout is None else time.perf_counter() + timeout
        if spin > 0:
            if spinner is not None:
                if spinner(spin if timeout is None or timeout > spin else timeout):
                    return True
            elif self._spin(ready, spin, deadline):
                return True
        fd = self.fileno()
        addr = self._addr
        bit = 1 << waiter if waiter is not None and 0 <= waiter < NAMED_WAITERS else 0
        while True:
            if bit:
                self._named(bit, True)
            else:
                atomics.fetch_add64(addr, 1)
            try:
                atomics.fence()
                if ready():
                    return True
                if deadline is None:
                    ms = None
                else:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        return False
                    ms = max(1, math.ceil(left * 1000))
                poller = select.poll()  # one per call: poll objects refuse concurrent use
                poller.register(fd, select.POLLIN)
                if poller.poll(ms):
                    try:
                        os.read(fd, 1)
                    except BlockingIOError:
                        pass  # another waiter took it
            finally:
                if bit:
                    self._named(bit, False)
                else:
                    atomics.fetch_add64(addr, -1)
            if ready():
                return True

    # -- a standing waiter -------------------------------------------------------------------------
    # An event loop with calls in flight keeps itself declared asleep for as long as it has any,
    # watching the fd with its own reader, instead of paying for a wait() per call.
    def arm(self) -> None:
        """Declare one standing sleeper; the caller must re-check its condition afterwards."""
        atomics.fetch_add64(self._addr, 1)
        atomics.fence()

    def disarm(self) -> None:
        atomics.fetch_add64(self._addr, -1)

    def drain(self) -> None:
        """Consume every pending wake-up byte (the FIFO is non-blocking)."""
        try:
            while len(os.read(self._fd, 4096)) == 4096:
                pass
        except (BlockingIOError, OSError):
            pass

    # -- teardown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the FIFO fd and drop the view of the block."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        q, self._q = self._q, None
        if q is not None:
            try:
                q.release()
            except BufferError:
                pass

    def unlink(self) -> None:
        """Remove the FIFO's name (idempotent)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> Doorbell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Doorbell {self.path}>"
