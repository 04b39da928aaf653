"""The default runtime directory under attack, run by test_runtime_dir.py inside a private mount
namespace (``unshare --mount --propagation private python runtime_dir_scenario.py``) with fresh
tmpfs mounts on /tmp and /dev/shm, so the host's are never touched (issue 14, case 6).

Planted before runnerlib runs (as another user would, here by root with chown):
- ``/tmp/runnerlib-<uid>``: a directory owned by uid 65534 (squatted);
- ``/tmp/runnerlib-<uid>.1``: a symbolic link to a victim directory (mode 0755);
- then, once runnerlib has picked ``/tmp/runnerlib-<uid>.2``: symbolic links in place of the
  server record and of the spawn lock, pointing at victim files.
runnerlib must follow no link, chmod nothing of the victim's, write nothing through a link, and
still start and serve; a client in another process must find the same directory.
Exit status 0 when all of that holds; otherwise the reason is on stderr.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = "squatted"
NS = "attack"


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def _needed_under_tmp() -> list[str]:
    """The top-level entries of /tmp this run needs (a checkout or a venv that lives there, as
    a CI clone may): they are bound into the fresh /tmp, so that imports and the workers
    still find them."""
    found = set()
    for path in [HERE, sys.prefix, sys.base_prefix, sys.executable, *sys.path]:
        real = os.path.realpath(path) if path else ""
        if real.startswith("/tmp/"):
            found.add(real.split("/")[2])
    return sorted(found)


def main() -> int:
    keep = _needed_under_tmp()
    old_tmp = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)  # the old /tmp, past the mount
    for target, mode in (("/tmp", "1777"), ("/dev/shm", "1777")):
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"mode={mode},size=256m", "tmpfs", target],
                       check=True)
    for name in keep:
        os.mkdir(f"/tmp/{name}")
        # --no-canonicalize: mount would resolve the fd's link to "/tmp", now the new one
        subprocess.run(["mount", "--no-canonicalize", "--bind",
                        f"/proc/{os.getpid()}/fd/{old_tmp}/{name}", f"/tmp/{name}"], check=True)
    os.close(old_tmp)
    for var in ("RUNNERLIB_RUNTIME_DIR", "XDG_RUNTIME_DIR"):
        os.environ.pop(var, None)
    os.environ["RUNNERLIB_NAMESPACE"] = NS
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, HERE)
    uid = os.getuid()
    base = f"/tmp/runnerlib-{uid}"

    os.mkdir(base, 0o755)
    os.chown(base, 65534, 65534)
    victim = "/tmp/victim"
    os.mkdir(victim, 0o755)
    os.chmod(victim, 0o755)
    os.symlink(victim, f"{base}.1")
    secret = os.path.join(victim, "precious")
    with open(secret, "w") as f:
        f.write("do not overwrite\n")

    from runnerlib import registry

    root = registry.root_dir()
    check(str(root) == f"{base}.2", f"runnerlib chose {root}, not {base}.2")
    check(stat.S_IMODE(os.stat(victim).st_mode) == 0o755, "the victim directory was chmod-ed")
    st = os.stat(base)
    check(st.st_uid == 65534 and stat.S_IMODE(st.st_mode) == 0o755, "the squatted dir changed")
    check(os.listdir(base) == [] and sorted(os.listdir(victim)) == ["precious"],
          f"runnerlib wrote into a directory not its own: {os.listdir(base)} {os.listdir(victim)}")
    st = os.stat(root)
    check(st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700, f"{root} is not private")

    ns_dir = registry.namespace_dir()
    os.symlink(secret, os.path.join(ns_dir, f"{RUNNER}.json"))
    os.symlink(os.path.join(victim, "lock-through-link"), os.path.join(ns_dir, f"{RUNNER}.lock"))
    check(registry.find(RUNNER) is None, "a link in place of the record was read as a record")

    from deploy_roles import Doubler

    import runnerlib

    runner = runnerlib.Runner(Doubler, name=RUNNER, cpu=1)
    with runnerlib.Server([runner]):
        rec = os.path.join(ns_dir, f"{RUNNER}.json")
        check(not os.path.islink(rec) and os.path.isfile(rec), "the record is not a plain file")
        with open(secret) as f:
            check(f.read() == "do not overwrite\n", "the record was written through the link")
        check(sorted(os.listdir(victim)) == ["precious"],
              f"a file was created through a link: {os.listdir(victim)}")
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "deploy_roles.py"), "client", RUNNER],
            capture_output=True, text=True, timeout=300)
        check('"results": [42]' in out.stdout,
              f"a client in another process could not call the server: {out.stdout}{out.stderr}")
    check(stat.S_IMODE(os.stat(victim).st_mode) == 0o755, "the victim directory was chmod-ed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
