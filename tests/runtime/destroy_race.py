"""destroy() while other threads are inside run(): every such call fails with a RunnerError
(StateError), and the process does not crash. Run by test_runtime as its own process."""

from __future__ import annotations

import threading
import time

from runtime_runnables import Sleeper

import runnerlib


def main() -> None:
    for round_ in range(5):
        runner = runnerlib.Runner(Sleeper, name=f"destroy-race-{round_}")
        with runnerlib.Server([runner]):
            runner.init_client(spawn=False)
            assert runner.sleep.run(0.0, _timeout=60) == 0.0
            outcomes: list[object] = []

            def caller(runner: runnerlib.Runner = runner, outcomes: list[object] = outcomes
                       ) -> None:
                try:
                    while True:
                        runner.sleep.run(0.05, _timeout=60)
                except runnerlib.RunnerError as exc:
                    outcomes.append(exc)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    outcomes.append(("unexpected", exc))

            threads = [threading.Thread(target=caller) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            runner.destroy()
            for t in threads:
                t.join(30)
                assert not t.is_alive(), "a call did not notice destroy()"
            assert len(outcomes) == 4 and all(
                isinstance(o, runnerlib.RunnerError) for o in outcomes), outcomes
    print("ok")


if __name__ == "__main__":
    main()
