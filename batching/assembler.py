"""The batch assembler: which queued calls run together, and when (SPEC section 7).

The worker owns one Assembler per batchable method and drives it from one thread:

    assembler = Assembler[Job](max_batch_size, max_latency_ms)   # Job: the worker's payload
    assembler.add(PendingCall(rows, key, arrived, payload))   # for each call read
    batch = assembler.next_batch()          # after every add, and when time_to_next() elapses
    outcomes = batching.run_batch(...)      # timed: seconds
    assembler.record(rows, seconds)         # once per batch, failed ones too, BEFORE replying
    ... send the outcomes ...

Recording before replying matters: a caller that sends its next call as soon as it has its
result must be seen arriving after the batch ended, or it would look like a concurrent caller.

A call larger than ``max_batch_size`` is not the Assembler's business: the worker cuts it with
``batching.split_call`` first and adds the chunks together with ``add_all`` (admitted or
refused as one); ``add`` refuses such a call. ``PendingCall.arrived`` should be the time the
caller sent the call, so that time spent in the transport counts against ``max_latency_ms``.

``can_grow`` tells the worker whether taking another call could still add to the next batch;
the worker reads calls from the shared queue only while it can (or while no other worker
could take them), so that it does not hold calls that another, idle worker could run.

Dispatch rule, evaluated on the oldest queued call's key (``_plan``):
  1. full: the batch holds ``max_batch_size`` rows, or the next call of its key does not fit;
  2. backlog: other calls are queued behind the batch, so the worker would not idle anyway;
  3. otherwise wait, but only while another call is expected (the arrival stream is live and
     overlapping) within less time than joining it would save (the model's fixed cost), and
     no later than one expected gap before the oldest call's deadline
     ``arrived + max_latency - predict(rows)``. A lone sequential caller never overlaps, and the
     model saves nothing before it has seen two batch sizes, so such a call dispatches at once.
     (A mean gap shorter than the fixed cost means one-by-one service could not keep up, which
     is exactly when holding a call back for company pays.)
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, get_args

from .errors import Overloaded
from .latency import ArrivalEstimator, LatencyModel

OnOverload = Literal["queue", "reject"]
"""What to do with a call that cannot meet ``max_latency_ms``: queue it anyway, or reject it."""
ON_OVERLOAD: tuple[OnOverload, ...] = get_args(OnOverload)
# Dispatch this close to the planned moment counts as on time: timers and float sums are
# never exact, and a worker woken a hair early must not spin.
_SLACK = 1e-6

P = TypeVar("P")
"""The type of ``PendingCall.payload``: whatever the worker needs to run and answer a call."""


@dataclass(slots=True)
class PendingCall(Generic[P]):
    """One call waiting to be batched: its size, what it can be joined with, and when it came.

    ``key`` comes from ``batching.call_signature``; ``arrived`` is a time on the Assembler's
    clock (the enqueue time, when the transport knows it); ``payload`` is the worker's own,
    handed back untouched in the batch.
    """

    rows: int
    key: Hashable
    arrived: float
    payload: P


@dataclass(slots=True)
class _Plan:
    key: Hashable
    calls: int
    rows: int
    dispatch_at: float


class Assembler(Generic[P]):
    """Groups queued calls into batches of at most ``max_batch_size`` rows, first in first out.

    Generic over the payload type of its calls: ``next_batch`` hands back the ``PendingCall``
    objects that were added. Not thread-safe: one worker loop owns it.
    """

    def __init__(self, max_batch_size: int, max_latency_ms: float, *,
                 clock: Callable[[], float] = time.monotonic, model: LatencyModel | None = None,
                 on_overload: OnOverload = "queue", arrivals: ArrivalEstimator | None = None
                 ) -> None:
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if not max_latency_ms >= 0:
            raise ValueError(f"max_latency_ms must be >= 0, not {max_latency_ms}")
        if on_overload not in ON_OVERLOAD:
            raise ValueError(f"on_overload must be one of {ON_OVERLOAD}, not {on_overload!r}")
        self.max_batch_size = int(max_batch_size)
        self.max_latency = max_latency_ms / 1000.0
        self.on_overload = on_overload
        self.model = model if model is not None else LatencyModel()
        self.arrivals = arrivals if arrivals is not None else ArrivalEstimator()
        self._clock = clock
        self._queues: dict[Hashable, deque[tuple[int, PendingCall[P]]]] = {}
        self._seq = itertools.count()
        self._pending = 0
        self._pending_rows = 0
        # Dispatch time and rows of batches handed out and not yet recorded.
        self._inflight: deque[tuple[float, int]] = deque(maxlen=64)
        self._busy_until = -math.inf

    # -- intake ----------------------------------------------------------------------------

    def add(self, call: PendingCall[P]) -> None:
        """Queue a call. Raises ``Overloaded`` under on_overload="reject" when it cannot make
        its deadline given the queue ahead of it."""
        self.add_all([call])

    def add_all(self, calls: Sequence[PendingCall[P]]) -> None:
        """Queue the chunks of one split call, all or none: under on_overload="reject" the
        group is refused (``Overloaded``) when its last chunk could not make the deadline."""
        if not calls:
            return
        for call in calls:
            if not 0 <= call.rows <= self.max_batch_size:
                raise ValueError(f"a call of {call.rows} rows does not fit max_batch_size "
                                 f"{self.max_batch_size}; split it with batching.split_call "
                                 f"first")
        now = self._clock()
        if self.on_overload == "reject":
            rows = sum(call.rows for call in calls)
            expected = self._expected_latency(rows, calls[0].arrived, now)
            if expected > self.max_latency:
                raise Overloaded(f"a call of {rows} rows would take about "
                                 f"{expected * 1000:.1f} ms with {self._pending} calls queued "
                                 f"ahead, over max_latency_ms {self.max_latency * 1000:g}")
        for call in calls:
            self._push(call)

    def _push(self, call: PendingCall[P]) -> None:
        overlapped = self._pending > 0 or bool(self._inflight) or call.arrived < self._busy_until
        self.arrivals.observe(call.arrived, overlapped)
        queue = self._queues.get(call.key)
        if queue is None:
            queue = self._queues[call.key] = deque()
        queue.append((next(self._seq), call))
        self._pending += 1
        self._pending_rows += call.rows

    def _expected_latency(self, rows: int, arrived: float, now: float) -> float:
        """Waited so far + the rest of the running batches + the queue ahead, in full batches."""
        predict = self.model.predict
        running = sum(max(0.0, t + predict(n) - now) for t, n in self._inflight)
        full, rest = divmod(self._pending_rows + rows, self.max_batch_size)
        work = full * predict(self.max_batch_size) + (predict(rest) if rest else 0.0)
        return max(0.0, now - arrived) + running + work

    # -- dispatch --------------------------------------------------------------------------

    def _plan(self, now: float) -> _Plan | None:
        if not self._pending:
            return None
        key = min(self._queues, key=lambda k: self._queues[k][0][0])
        queue = self._queues[key]
        rows = calls = 0
        for _, call in queue:
            if rows + call.rows > self.max_batch_size:
                break
            rows += call.rows
            calls += 1
        if rows >= self.max_batch_size or calls < len(queue):
            return _Plan(key, calls, rows, -math.inf)  # full
        if len(self._queues) > 1:
            return _Plan(key, calls, rows, -math.inf)  # backlog
        live_until = self.arrivals.live_until()
        gap = self.arrivals.gap
        if live_until is None or gap is None or gap >= self.model.fixed_cost():
            return _Plan(key, calls, rows, -math.inf)  # no company expected
        oldest = queue[0][1].arrived
        last_useful = oldest + self.max_latency - self.model.predict(rows) - gap
        if last_useful <= live_until:
            return _Plan(key, calls, rows, last_useful)  # the deadline comes first
        return _Plan(key, calls, rows, live_until)  # the stream stalls first

    def next_batch(self, *, force: bool = False) -> list[PendingCall[P]] | None:
        """The calls to run now as one batch, oldest first, or None to keep waiting.

        ``force=True`` ignores the wait (for draining at shutdown).
        """
        now = self._clock()
        plan = self._plan(now)
        if plan is None or (now + _SLACK < plan.dispatch_at and not force):
            return None
        queue = self._queues[plan.key]
        batch = [queue.popleft()[1] for _ in range(plan.calls)]
        if not queue:
            del self._queues[plan.key]
        self._pending -= plan.calls
        self._pending_rows -= plan.rows
        self._inflight.append((now, plan.rows))
        return batch

    def time_to_next(self) -> float | None:
        """Seconds until ``next_batch`` may return a batch (0: now); None when nothing is queued.

        An arrival can bring that moment forward: call ``next_batch`` after every ``add``.
        """
        now = self._clock()
        plan = self._plan(now)
        if plan is None:
            return None
        wait = plan.dispatch_at - now
        return wait if wait > _SLACK else 0.0

    # -- feedback and introspection ----------------------------------------------------------

    def record(self, batch_rows: int, seconds: float, *, ran: bool = True) -> None:
        """Feed the execution time of a dispatched batch to the model (once per batch).

        ``ran=False``: the batch was dropped without running (every call in it had failed
        already); it stops counting as running, and the model learns nothing from it.
        """
        if ran:
            self.model.observe(batch_rows, seconds)
        if self._inflight:
            started, _ = self._inflight.popleft()
            self._busy_until = max(self._busy_until, started + seconds)

    def can_grow(self) -> bool:
        """Could a call added now still join the batch ``next_batch`` would hand out next?

        True while one key is queued and its rows do not fill a batch; False when the next
        batch is full, or when other calls are queued behind it (it is ready either way). The
        worker takes more calls from the shared queue only while this holds, so that it does
        not sit on calls another worker could run meanwhile.
        """
        return len(self._queues) == 1 and self._pending_rows < self.max_batch_size

    def pending(self) -> int:
        """Number of calls queued."""
        return self._pending

    def pending_rows(self) -> int:
        """Number of rows queued."""
        return self._pending_rows
