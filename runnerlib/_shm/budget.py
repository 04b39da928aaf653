"""The shared-memory budget of a server, and the sizes that follow from it.

A container's /dev/shm is small (Docker's default is 64 MiB, a Kubernetes memory-backed
emptyDir often as small), and a tmpfs that runs out makes the next page touched a SIGBUS. So a
server works within a budget: ``shm_budget`` in the configuration or ``RUNNERLIB_SHM_BUDGET``,
else half of what /dev/shm has free when the server starts. The request ring, the largest
channel ring a client may create, the handoff pools' idle segments and the largest message
follow from it, never above the sizes a roomy host gets. The server writes them into its
control segment header (docs/wire-format-session.md), so that its clients and workers follow
the server's budget rather than one of their own; a header word of 0 (a server that predates
the budget) means "no limit from the server".
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ipc.segment import SHM_DIR, list_segments, owner_pid
from runnerlib._shm.control import (
    H_CHANNEL_RING,
    H_HANDOFF_KEEP,
    H_MESSAGE_LIMIT,
    H_REQUEST_RING,
    H_SHM_BUDGET,
    Control,
)
from runnerlib._shm.protocol import shm_space

MAX_HANDOFF_KEEP = 2  # what a pool keeps on a roomy host
MIN_REQUEST_RING = 1 << 20
MIN_CHANNEL_RING = 256 << 10
#: The default budget: this share of the space /dev/shm has free when the server starts.
DEFAULT_SHARE = 0.5


class Sizes(NamedTuple):
    """What one runner of a server may use."""

    budget: int  # the server's whole budget, in bytes
    request_ring: int  # data bytes of the runner's request ring
    channel_ring: int  # the largest response ring a client channel may create
    handoff_keep: int  # idle handoff segments a pool keeps warm
    message_limit: int  # the largest message (a call's arguments, an answer) in bytes


def default_budget() -> int:
    """Half of what /dev/shm has free now (at least what the smallest rings need)."""
    free, _ = shm_space()
    return max(int(free * DEFAULT_SHARE), 4 * MIN_REQUEST_RING)


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def plan(budget: int, runners: int = 1, *, request_cap: int) -> Sizes:
    """Sizes for each of ``runners`` runners of a server with ``budget`` bytes: a request ring
    of a quarter of the runner's share (never above ``request_cap``, the size a roomy host
    gets) and channel rings of at most a sixteenth (powers of two; a client never creates one
    larger than its own default either); messages up to a quarter of the share, so that a
    call's arguments and its answer (each in a handoff segment) fit beside the rings."""
    share = max(budget // max(runners, 1), 1)
    request = min(max(_pow2_floor(share // 4), MIN_REQUEST_RING), request_cap)
    channel = max(_pow2_floor(share // 16), MIN_CHANNEL_RING)
    keep = MAX_HANDOFF_KEEP if share >= 512 << 20 else 1
    return Sizes(budget, request, channel, keep, max(share // 4, 1))


def publish(ctl: Control, sizes: Sizes) -> None:
    """Write the sizes into a control segment header the server is creating."""
    h = ctl.header
    h[H_SHM_BUDGET] = sizes.budget
    h[H_REQUEST_RING] = sizes.request_ring
    h[H_CHANNEL_RING] = sizes.channel_ring
    h[H_HANDOFF_KEEP] = sizes.handoff_keep
    h[H_MESSAGE_LIMIT] = sizes.message_limit


def _word(ctl: Control, index: int, default: int, low: int = 1) -> int:
    """A header word as a client or worker reads it: out-of-range values (an older server's
    zero, hostile bytes) give ``default``."""
    value = int(ctl.header[index])
    return value if low <= value <= 1 << 48 else default


def channel_ring(ctl: Control, wanted: int) -> int:
    """The response ring a client creates: what it wants, within the server's budget."""
    return min(wanted, _word(ctl, H_CHANNEL_RING, wanted, MIN_CHANNEL_RING))


def handoff_keep(ctl: Control) -> int:
    """Idle segments a sender's handoff pool keeps warm."""
    return min(_word(ctl, H_HANDOFF_KEEP, MAX_HANDOFF_KEEP), MAX_HANDOFF_KEEP)


def reader_keep(ctl: Control) -> int:
    """Segments a receiver keeps mapped for reuse. A mapping keeps the pages of a segment its
    sender has dropped from its pool, so a tight budget keeps only the latest one; a roomy
    one keeps today's 4 (mapping a large segment afresh costs a page fault per page)."""
    keep = handoff_keep(ctl)
    return 2 * keep if keep >= MAX_HANDOFF_KEEP else 1


def message_limit(ctl: Control) -> int:
    """The largest message the server's budget allows; 0 for no limit."""
    return _word(ctl, H_MESSAGE_LIMIT, 0)


def used_by(pids: set[int]) -> int:
    """Bytes of /dev/shm that the rl.* segments of these processes occupy (pages allocated,
    not sizes: a ring that was never filled costs only the pages it touched)."""
    total = 0
    for name in list_segments():
        if owner_pid(name) in pids:
            try:
                st = os.stat(os.path.join(SHM_DIR, name.lstrip("/")), follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
    return total
