"""Ring reservations across pid namespaces (open: ipc/ring.py judges producers by pid).

Run by test_namespaces.py like scenario.py. The server (one worker) runs as pid 5000 of its
pid namespace; two clients in another pid namespace call it at once: one sends 24 MB calls
(a long copy into its request-ring reservation), the other small calls in a loop. The worker,
woken by a small call's commit while the large one is still being written, finds the large
call's reservation, asks whether its producer's pid is alive *in the worker's namespace*, is
told no, and releases a live producer's reservation: that call is lost (RunnerTimeout), and
the bytes then written into released ring space can spoil other calls. Exits 0 when every call
of both clients got its own answer.
"""

from __future__ import annotations

import json
import os
import sys

from scenario import HERE, Party, check, mount_private

ROLES = os.path.join(HERE, "ring_race_roles.py")


def main() -> int:
    env = mount_private(sys.argv[1])
    server = Party(env, sys.executable, ROLES, "server", role=False, pid=5000)
    try:
        check(server.event().get("ready") is True, "the server did not start")
        big = Party(env, sys.executable, ROLES, "big", "40", role=False, pid=300)
        small = Party(env, sys.executable, ROLES, "small", "25", role=False, pid=400)
        got_big, got_small = big.event(), small.event()
        big.finish()
        small.finish()
        server.send("stop")
        server.event()
        server.finish()
    finally:
        server.kill()
    check(got_big.get("ok") == 40 and not got_small.get("errors"),
          f"calls were lost or spoiled: large {json.dumps(got_big)}, small {json.dumps(got_small)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
