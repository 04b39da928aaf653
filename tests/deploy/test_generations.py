"""Issue 14.5: an answer reaches only the call it belongs to, however often a channel slot is
reused. A thread-per-request application: call A times out, its thread's channel is closed
and the slot is claimed again by call B's thread with a generation that differs from A's
only above bit 12 (4,096 reuses) or bit 20 (2**20 reuses; forced by writing the slot's
generation word in the control segment, as that many real reuses would). Both calls are the
first of their channel, so their tags are equal bit for bit: only the full 64-bit generation
in the request prefix tells them apart. A's late answer comes either from its worker (A's
method finishes while B waits) or from the supervisor (A's worker is killed while B waits:
the supervisor answers the calls a dead worker held); B must get B's own answer either way.

Before session 4 tags carried 12 bits of generation and every answerer routed by them: both
cases handed B A's answer (the 4,096 one included). Until this test's fix, the supervisor
still routed its dead-worker answers by the tag's 20 bits: the 2**20 case of
``supervisor`` handed B a WorkerDied meant for A."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from deploy_runnables import Single
from waiting import wait_for

import runnerlib
from runnerlib._shm import protocol as P
from runnerlib._shm.control import C_GEN, H_NWORKERS, W_INFLIGHT, W_PID, W_READY, W_STATE


def in_thread(fn):
    """Run ``fn`` in a thread of its own (its own channel) and return its outcome."""
    box: dict[str, object] = {}

    def body():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    return t, box


@pytest.mark.parametrize("late_from", ["worker", "supervisor"])
@pytest.mark.parametrize("reuses", [1 << 12, 1 << 20])
def test_a_late_answer_never_reaches_the_next_owner_of_a_reused_slot(late_from, reuses):
    runner = runnerlib.Runner(Single, name=f"gens-{late_from}-{reuses}", cpu=2)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        workers = runner._handle.ctl.workers  # a live view of the worker table
        try:
            _scenario(runner, late_from, reuses)
        finally:
            # a killed worker is being restarted: let it finish before the server stops
            wait_for(lambda: all(int(workers[i, W_STATE]) == W_READY for i in range(2)),
                     what="both workers ready")
            runner.destroy()


def _scenario(runner, late_from: str, reuses: int) -> None:
    handle = runner._handle
    ctl = handle.ctl
    assert int(ctl.header[H_NWORKERS]) == 2, "the test needs two workers"
    seen: dict[str, tuple[int, int]] = {}

    def call_a():
        ch = handle._thread_channel()
        seen["A"] = (ch.slot, ch.gen)
        try:
            # its worker would answer after 2 s (never, when it is killed first)
            return runner.slow.run("A", 2.0 if late_from == "worker" else 60.0, _timeout=0.3)
        finally:
            ch.close()  # the request is over: its thread's channel goes back

    t, box = in_thread(call_a)
    t.join(30)
    assert isinstance(box.get("error"), runnerlib.RunnerTimeout), box
    slot, gen_a = seen["A"]
    holder = [i for i in range(2) if int(ctl.workers[i, W_INFLIGHT]) == 1]
    assert len(holder) == 1, "one worker holds A"
    # the slot has been reused `reuses` times since: the next claim gets gen_a + reuses
    ctl.channels[slot, C_GEN] = gen_a + reuses - 1

    def call_b():
        ch = handle._thread_channel()
        seen["B"] = (ch.slot, ch.gen)
        return runner.slow.run("B", 3.0, _timeout=60)

    t, box = in_thread(call_b)
    wait_for(lambda: "B" in seen, what="B's channel")
    assert seen["B"] == (slot, gen_a + reuses)
    if reuses == 1 << P.GEN_BITS:  # A's tag and B's are equal bit for bit
        assert P.make_tag(slot, gen_a, 1) == P.make_tag(slot, gen_a + reuses, 1)
    other = 1 - holder[0]
    wait_for(lambda: int(ctl.workers[other, W_INFLIGHT]) == 1, what="B running")
    if late_from == "supervisor":  # A's worker dies: the supervisor answers A
        os.kill(int(ctl.workers[holder[0], W_PID]), signal.SIGKILL)
    t.join(60)
    assert box.get("value") == "B", box
    assert runner.slow.run("C", 0.0, _timeout=60) == "C"
