"""Client-process bodies of the reliability tests (run under multiprocessing spawn).

Every call carries a payload unique to (client, coroutine, index) and its answer is checked by
content, so an answer that reached the wrong caller, or a torn or stale one, is a mismatch, not
just a miscount. Clients report cumulative counts on a queue every second and once at the end,
so a client killed by the chaos test still accounts for the calls it completed.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

IMAGE_SHAPE = (224, 224, 3)
BIG_ELEMS = (64 << 20) // 8  # a 64 MiB int64 array


def _uid(cid: int, k: int, i: int) -> int:
    return (cid << 40) | (k << 24) | (i & 0xFFFFFF)


def small(uid: int, rows: int) -> np.ndarray:
    return (np.arange(rows * 8, dtype=np.int64) + uid * 8).reshape(rows, 8)


def image(uid: int) -> np.ndarray:
    img = np.full(IMAGE_SHAPE, uid % 251, dtype=np.uint8)
    img[0, :8, 0] = np.frombuffer(uid.to_bytes(8, "little"), dtype=np.uint8)
    img[-1, -1, :] = (uid >> 8) % 256
    return img


def table(uid: int):
    import pyarrow as pa

    n = 1 + uid % 7
    return pa.table({"uid": [uid] * n, "row": list(range(n)),
                     "s": [f"r{uid}-{j}" for j in range(n)]})


def value(uid: int) -> dict:
    return {"uid": uid, "s": f"call {uid}", "t": (uid, b"\x00" + uid.to_bytes(8, "little")),
            "l": [uid, None, 2.5, [True, str(uid)]]}


def big(uid: int) -> np.ndarray:
    x = np.arange(BIG_ELEMS, dtype=np.int64)
    x += uid
    return x


class Tally:
    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.ok = 0
        self.died = 0
        self.timeout = 0
        self.overdue = 0
        self.kinds: dict[str, int] = {}
        self.mismatch: list[str] = []
        self.errors: list[str] = []
        self.n_mismatch = 0
        self.n_errors = 0
        self.max_elapsed = 0.0

    def snapshot(self) -> dict:
        return {"cid": self.cid, "ok": self.ok, "died": self.died, "timeout": self.timeout,
                "overdue": self.overdue, "kinds": dict(self.kinds),
                "n_mismatch": self.n_mismatch, "mismatch": self.mismatch[:5],
                "n_errors": self.n_errors, "errors": self.errors[:5],
                "max_elapsed": self.max_elapsed}

    def bad(self, what: str) -> None:
        self.n_mismatch += 1
        self.mismatch.append(what)

    def error(self, what: str) -> None:
        self.n_errors += 1
        self.errors.append(what)


def _check(kind: str, uid: int, sent, got) -> bool:
    if kind == "small":
        return (isinstance(got, np.ndarray) and got.shape == sent.shape
                and got.dtype == sent.dtype and np.array_equal(got, sent + 1))
    if kind == "image":
        return (isinstance(got, np.ndarray) and got.shape == sent.shape
                and got.dtype == sent.dtype and np.array_equal(got, sent))
    if kind == "table":
        return got.equals(sent)
    if kind == "big":
        return (isinstance(got, np.ndarray) and got.shape == sent.shape
                and int(got[0]) == uid and np.array_equal(got, sent))
    return got == sent


def _pick(i: int, mix: bool) -> str:
    if not mix:
        return "small"
    if i % 211 == 17:
        return "image"
    if i % 97 == 5:
        return "table"
    if i % 43 == 3:
        return "value"
    return "small"


def run_client(name: str, cid: int, calls: int, seconds: float, concurrency: int, mix: bool,
               call_timeout: float, tolerate: bool, out) -> None:
    """`concurrency` coroutines call until `calls` calls are done (0: no limit) or `seconds`
    passed; each answer is checked by content. With `tolerate`, WorkerDied and RunnerTimeout
    are counted (the chaos contract) instead of being errors."""
    import faulthandler

    import uvloop
    from soak_runnables import soak_runner

    import runnerlib

    faulthandler.enable()  # a crash prints where it happened
    runner = soak_runner(name)
    runner.init_client(spawn=False)
    tally = Tally(cid)
    stop_at = time.monotonic() + seconds
    budget = [calls if calls else 1 << 62]

    async def one(k: int) -> None:
        i = 0
        while budget[0] > 0 and time.monotonic() < stop_at:
            budget[0] -= 1
            kind = _pick(i, mix)
            uid = _uid(cid, k, i)
            i += 1
            if kind == "small":
                sent, method = small(uid, 1 + uid % 3), runner.add_one
            elif kind == "image":
                sent, method = image(uid), runner.echo
            elif kind == "table":
                sent, method = table(uid), runner.echo
            else:
                sent, method = value(uid), runner.echo
            t0 = time.monotonic()
            try:
                got = await method.async_run(sent, _timeout=call_timeout)
            except runnerlib.WorkerDied:
                if not tolerate:
                    tally.error(f"{kind} {uid}: WorkerDied")
                tally.died += 1
            except runnerlib.RunnerTimeout:
                if not tolerate:
                    tally.error(f"{kind} {uid}: RunnerTimeout")
                tally.timeout += 1
            except Exception as exc:  # every other error is a failure of the contract...
                name = type(exc).__name__
                if tolerate == "hostile":  # ...except under hostile bytes, where it is counted
                    tally.kinds["error:" + name] = tally.kinds.get("error:" + name, 0) + 1
                    if len(tally.errors) < 5:
                        tally.errors.append(f"{kind} {uid}: {name}: {exc}"[:300])
                else:
                    tally.error(f"{kind} {uid}: {name}: {exc}"[:500])
            else:
                if _check(kind, uid, sent, got):
                    tally.ok += 1
                    tally.kinds[kind] = tally.kinds.get(kind, 0) + 1
                else:
                    tally.bad(f"{kind} {uid}: got {got!r:.200}")
                del got
            elapsed = time.monotonic() - t0
            tally.max_elapsed = max(tally.max_elapsed, elapsed)
            if elapsed > call_timeout + 5:
                tally.overdue += 1

    async def reporter() -> None:
        while True:
            await asyncio.sleep(1.0)
            out.put(("progress", cid, tally.snapshot()))

    async def main() -> None:
        rep = asyncio.ensure_future(reporter())
        await asyncio.gather(*(one(k) for k in range(concurrency)))
        rep.cancel()

    try:
        uvloop.run(main())
    except BaseException as exc:
        tally.error(f"client crashed: {type(exc).__name__}: {exc}"[:500])
    finally:
        out.put(("done", cid, tally.snapshot()))
        runner.destroy()


def run_big(name: str, cid: int, count: int, call_timeout: float, tolerate: bool, out) -> None:
    """`count` sequential round trips of 64 MiB arrays, checked by content."""
    from soak_runnables import soak_runner

    import runnerlib

    runner = soak_runner(name)
    runner.init_client(spawn=False)
    tally = Tally(cid)
    try:
        for i in range(count):
            uid = _uid(cid, 0, i)
            sent = big(uid)
            try:
                got = runner.echo.run(sent, _timeout=call_timeout)
            except (runnerlib.WorkerDied, runnerlib.RunnerTimeout) as exc:
                if not tolerate:
                    tally.error(f"big {uid}: {type(exc).__name__}")
                continue
            except Exception as exc:
                tally.error(f"big {uid}: {type(exc).__name__}: {exc}"[:500])
                continue
            if _check("big", uid, sent, got):
                tally.ok += 1
                tally.kinds["big"] = tally.kinds.get("big", 0) + 1
            else:
                tally.bad(f"big {uid}")
            del got, sent
    finally:
        out.put(("done", cid, tally.snapshot()))
        runner.destroy()


def call_until_killed(name: str, ready, concurrency: int) -> None:
    """A client that keeps calls in flight until it is SIGKILLed (chaos victim)."""
    import uvloop
    from soak_runnables import soak_runner

    runner = soak_runner(name)
    runner.init_client(spawn=False)

    async def one(k: int) -> None:
        i = 0
        while True:
            uid = _uid(999, k, i)
            i += 1
            try:
                await runner.add_one.async_run(small(uid, 1), _timeout=30)
            except Exception:
                pass
            if i == 5:
                ready.set()

    async def main() -> None:
        await asyncio.gather(*(one(k) for k in range(concurrency)))

    uvloop.run(main())


def scribble(names: list[str], seconds: float, seed: int, header: bool, out) -> None:
    """A hostile process of the same user: writes random bytes into rings near their live
    records (and, with `header`, into the ring headers' cursor words) for `seconds`."""
    import random

    from ipc.segment import Segment

    rng = random.Random(seed)
    segs = []
    for n in names:
        try:
            segs.append(Segment.attach(n))
        except Exception:
            pass
    written = writes = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop and segs:
        seg = rng.choice(segs)
        buf = seg.buf
        cap = seg.size - 1024
        if header and rng.random() < 0.05:
            off = rng.choice((128, 192, 256)) + rng.randrange(8)  # head, read, free cursors
            n = rng.randint(1, 8 - (off % 8))
        else:
            head = int.from_bytes(buf[128:136], "little")
            off = 1024 + (head - rng.randrange(1 << 16)) % cap
            n = min(rng.randint(1, 64), seg.size - off)
        buf[off:off + n] = rng.randbytes(n)
        written += n
        writes += 1
        if writes % 50 == 0:
            time.sleep(0.001)
    for sg in segs:
        sg.close()
    out.put(("scribbled", written, writes))
