"""Waiting on a condition in tests: polled, with a generous deadline and a message that says
what did not happen (tests never assert on elapsed time)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(cond: Callable[[], object], timeout: float = 30.0, what: str = "condition",
             poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(poll)
