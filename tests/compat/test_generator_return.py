"""A method that is not a generator function but returns a generator streams its items, as
BentoML's local runner handle streams them (``async_stream`` iterates whatever the method
returns).

The worker streams whatever a method returns when it is a generator; the local handle does the
same, and ``run``/``async_run`` return the list of its items on both.
"""

from __future__ import annotations

import asyncio

import pytest
from compat_generators import Counter

import runnerlib as bentoml


async def _collect(stream):
    return [x async for x in stream]


@pytest.mark.parametrize("mode", ["local", "client"])
def test_returned_generator_streams(mode):
    runner = bentoml.Runner(Counter, name=f"counter-{mode}", cpu=1)
    if mode == "local":
        runner.init_local(quiet=True)
    else:
        runner.init_client()
    try:
        assert asyncio.run(_collect(runner.count.async_stream(3))) == [0, 10, 20]
    finally:
        runner.destroy()


@pytest.mark.parametrize("mode", ["local", "client"])
def test_returned_generator_is_listed_by_run(mode):
    runner = bentoml.Runner(Counter, name=f"counter-run-{mode}", cpu=1)
    if mode == "local":
        runner.init_local(quiet=True)
    else:
        runner.init_client()
    try:
        assert runner.count.run(3) == [0, 10, 20]
        assert asyncio.run(runner.count.async_run(2)) == [0, 10]
    finally:
        runner.destroy()
