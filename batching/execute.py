"""Run one batch: join, call the method once, split; isolate the calls that make it fail.

When the joined call raises (or its result cannot be split), the batch is bisected and each
half re-run, down to single calls, so one bad call (a wrong shape, say) fails alone and the
others still get their results. The method therefore runs more than once on the good calls'
rows in that case (at most 2n-1 runs for n calls that all fail): fine for inference, wrong for
a method with side effects per row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .joining import Call, join_calls, split_result


@dataclass(slots=True)
class Outcome:
    """What one call of a batch gets back: a value, or the exception that failed it."""

    value: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value


def run_batch(fn: Callable[..., Any], calls: Sequence[Call], batch_dim_in: int,
              batch_dim_out: int) -> list[Outcome]:
    """Run ``fn`` once over the joined ``calls``; one Outcome per call, in order."""
    if not calls:
        return []
    try:
        args, kwargs, sizes = join_calls(calls, batch_dim_in)
        parts = split_result(fn(*args, **kwargs), sizes, batch_dim_out)
    except Exception as exc:
        if len(calls) == 1:
            return [Outcome(error=exc)]
        half = len(calls) // 2
        return (run_batch(fn, calls[:half], batch_dim_in, batch_dim_out)
                + run_batch(fn, calls[half:], batch_dim_in, batch_dim_out))
    return [Outcome(value=part) for part in parts]


async def run_batch_async(fn: Callable[..., Awaitable[Any]], calls: Sequence[Call],
                          batch_dim_in: int, batch_dim_out: int) -> list[Outcome]:
    """``run_batch`` for an ``async def`` method."""
    if not calls:
        return []
    try:
        args, kwargs, sizes = join_calls(calls, batch_dim_in)
        parts = split_result(await fn(*args, **kwargs), sizes, batch_dim_out)
    except Exception as exc:
        if len(calls) == 1:
            return [Outcome(error=exc)]
        half = len(calls) // 2
        return (await run_batch_async(fn, calls[:half], batch_dim_in, batch_dim_out)
                + await run_batch_async(fn, calls[half:], batch_dim_in, batch_dim_out))
    return [Outcome(value=part) for part in parts]
