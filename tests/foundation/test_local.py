"""init_local: the Runnable runs in this process."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from runnerlib import Runnable, Runner, RunnerTimeout, StateError

BUILT: list[object] = []


class Model(Runnable):
    def __init__(self, offset: int = 0):
        self.offset = offset
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.threads: set[int] = set()
        BUILT.append(self)

    @Runnable.method(batchable=True)
    def add(self, x, **kwargs):
        return x + self.offset, kwargs

    @Runnable.method
    def slow(self, seconds):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.get_ident())
        time.sleep(seconds)
        with self.lock:
            self.active -= 1
        return seconds

    @Runnable.method
    async def coro(self, x):
        await asyncio.sleep(0)
        return asyncio.get_running_loop(), x

    @Runnable.method
    async def slow_coro(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @Runnable.method
    def count(self, n, pause=0.0):
        for i in range(n):
            time.sleep(pause)
            yield i

    @Runnable.method
    async def acount(self, n, pause=0.0):
        for i in range(n):
            await asyncio.sleep(pause)
            yield i

    @Runnable.method
    def fail(self, exc):
        raise exc

    @Runnable.method
    def again(self, x):
        return self.runner.add.run(x)[0]  # re-entrant call through the same runner


@pytest.fixture
def runner():
    r = Runner(Model, runnable_init_params={"offset": 10})
    r.init_local(quiet=True)
    yield r
    r.destroy()


def test_init_local_builds_at_once_and_warns(logs):
    BUILT.clear()
    r = Runner(Model)
    assert BUILT == []
    r.init_local()
    try:
        assert len(BUILT) == 1
        assert "testing" in logs.text
    finally:
        r.destroy()


def test_init_local_quiet(logs):
    r = Runner(Model)
    r.init_local(quiet=True)
    r.destroy()
    assert "testing" not in logs.text


def test_run_plain(runner):
    assert runner.add.run(1) == (11, {})
    assert runner.add.run(1, flag=True) == (11, {"flag": True})


def test_timeout_keyword_is_stripped(runner):
    assert runner.add.run(1, _timeout=5) == (11, {})
    assert asyncio.run(runner.add.async_run(1, _timeout=5, k=1)) == (11, {"k": 1})


@pytest.mark.parametrize("bad", [0, -1, "1", True])
def test_bad_per_call_timeout(runner, bad):
    with pytest.raises(ValueError, match="_timeout"):
        runner.add.run(1, _timeout=bad)


def test_run_generator_returns_list(runner):
    assert runner.count.run(3) == [0, 1, 2]
    assert runner.acount.run(3) == [0, 1, 2]
    assert asyncio.run(runner.count.async_run(2)) == [0, 1]
    assert asyncio.run(runner.acount.async_run(2)) == [0, 1]


def test_run_async_method_from_sync_code(runner):
    _, x = runner.coro.run(5)
    assert x == 5


def test_async_method_runs_on_callers_loop(runner):
    async def main():
        loop, x = await runner.coro.async_run(1)
        return loop is asyncio.get_running_loop(), x

    assert asyncio.run(main()) == (True, 1)


def test_async_run_does_not_block_the_loop(runner):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        await runner.slow.async_run(0.3)
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 5


def test_sync_methods_run_one_at_a_time_on_one_thread(runner):
    async def main():
        await asyncio.gather(*(runner.slow.async_run(0.05) for _ in range(4)))

    asyncio.run(main())
    threads = [threading.Thread(target=runner.slow.run, args=(0.05,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model = runner.handle.instance
    assert model.max_active == 1
    assert len(model.threads) == 1


def test_async_stream_generators(runner):
    async def collect(it):
        return [x async for x in it]

    assert asyncio.run(collect(runner.count.async_stream(3))) == [0, 1, 2]
    assert asyncio.run(collect(runner.acount.async_stream(3))) == [0, 1, 2]


def test_async_stream_is_incremental(runner):
    async def main():
        t0 = time.monotonic()
        stamps = []
        async for _ in runner.count.async_stream(3, pause=0.1):
            stamps.append(time.monotonic() - t0)
        return stamps

    stamps = asyncio.run(main())
    assert stamps[0] < stamps[-1] - 0.1  # the first chunk arrived before the last was made


def test_async_stream_of_plain_method_yields_one_result(runner):
    async def main():
        return [x async for x in runner.add.async_stream(1)], [
            x[1] async for x in runner.coro.async_stream(2)
        ]

    assert asyncio.run(main()) == ([(11, {})], [2])


def test_async_stream_closed_early(runner):
    async def main():
        async for x in runner.count.async_stream(100):
            if x == 2:
                break
        return runner.add.run(1)

    assert asyncio.run(main())[0] == 11


def test_per_call_timeout_sync(runner):
    t0 = time.monotonic()
    with pytest.raises(RunnerTimeout, match="slow") as info:
        runner.slow.run(0.5, _timeout=0.05)
    assert time.monotonic() - t0 < 0.4
    assert isinstance(info.value, TimeoutError)


def test_per_call_timeout_async(runner):
    async def main():
        with pytest.raises(RunnerTimeout):
            await runner.slow_coro.async_run(1, _timeout=0.05)
        with pytest.raises(RunnerTimeout):
            await runner.slow.async_run(0.3, _timeout=0.05)
        with pytest.raises(RunnerTimeout):
            async for _ in runner.acount.async_stream(10, pause=0.05, _timeout=0.12):
                pass

    asyncio.run(main())


def test_runner_timeout_is_the_default():
    r = Runner(Model, timeout=0.05)
    r.init_local(quiet=True)
    try:
        with pytest.raises(RunnerTimeout):
            r.slow.run(0.3)
        assert r.slow.run(0.3, _timeout=2) == 0.3
    finally:
        r.destroy()


def test_exceptions_propagate_unchanged(runner):
    with pytest.raises(KeyError, match="k"):
        runner.fail.run(KeyError("k"))

    async def main():
        with pytest.raises(ValueError, match="v"):
            await runner.fail.async_run(ValueError("v"))

    asyncio.run(main())


def test_method_raising_timeout_error_is_not_a_runner_timeout(runner):
    with pytest.raises(TimeoutError) as info:
        runner.fail.run(TimeoutError("mine"))
    assert not isinstance(info.value, RunnerTimeout)


def test_reentrant_call_does_not_deadlock(runner):
    runner.handle.instance.runner = runner
    assert runner.again.run(1) == 11


def test_calls_after_destroy():
    r = Runner(Model)
    r.init_local(quiet=True)
    handle = r.handle
    r.destroy()
    with pytest.raises(StateError):
        r.add.run(1)
    with pytest.raises(StateError, match="destroyed"):
        handle.run_method(r.add, (1,), {}, None)
