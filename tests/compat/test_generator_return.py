"""A method that is not a generator function but returns a generator streams its items, as
BentoML's local runner handle streams them (``async_stream`` iterates whatever the method
returns).

Fails today: the worker (and the local handle) treat the returned generator as one value,
which cannot be encoded. The fix belongs to the worker's owner; these tests say what it must
do.
"""

from __future__ import annotations

import asyncio

import pytest
from compat_generators import Counter

import runnerlib as bentoml


async def _collect(stream):
    return [x async for x in stream]


@pytest.mark.xfail(strict=False, reason="worker fix pending")
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
