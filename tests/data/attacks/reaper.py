"""Start attack programs, each as its student, and reap every process they leave behind.

Run by root (the test): `reaper.py SPECS`, SPECS a JSON list of {"uid", "gid", "stdout",
"argv"}: each argv runs with /usr/bin/python3 (no site, no environment variables) as
uid:gid with no supplementary groups, its standard output on the descriptor `stdout` (a
pipe the test passed down and reads "ready" from). The reaper is the child subreaper of all
it starts (prctl PR_SET_CHILD_SUBREAPER), as init is on a real host: processes an attack
orphans (double forks, setsid) are reaped when they end instead of lingering as zombies
(this machine's init reaps none). It exits once every one of them is gone.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def start(spec: dict) -> None:
    if os.fork() != 0:
        os.close(spec["stdout"])
        return
    try:
        os.dup2(spec["stdout"], 1)
        os.closerange(3, 4096)  # no other attack's pipe: each one's end is seen by the test
        os.setgroups([])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
        os.execv("/usr/bin/python3", ["/usr/bin/python3", "-B", "-S", "-E", *spec["argv"]])
    finally:
        os._exit(127)


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    for spec in json.loads(sys.argv[1]):
        start(spec)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


if __name__ == "__main__":
    main()
