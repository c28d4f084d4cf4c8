"""Processes that try to outlive their student's CLEANUP, PURGE or RESET.

Started once, this leaves behind: a process that ignores SIGTERM, SIGHUP and SIGINT; one
that re-spawns itself when sent SIGTERM; one that changes its pid every 100 milliseconds
(fork, parent exits); a new session (setsid) made by a double fork; a parent that forks
a new child whenever one of its children dies; and a scribbler that keeps writing files
into the home (so a home erased before the processes are ended fills up again). Every
one of them ends by itself after SECONDS, so a failed run leaks nothing for long.

usage: cling.py HOME SECONDS
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time

UNTIL = 0.0


def deaf() -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def idle() -> None:
    while time.time() < UNTIL:
        time.sleep(0.2)
    os._exit(0)


def detach() -> None:
    """Stop sharing the test's pipes: the test reads one line from the first process only."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


def spawn(role) -> None:
    if os.fork() == 0:
        detach()
        role()
        os._exit(0)


def ignores_term() -> None:
    deaf()
    idle()


def respawns() -> None:
    def again(signum, frame) -> None:
        if os.fork() != 0:
            os._exit(0)  # the old one goes; the new one returns and sleeps on

    signal.signal(signal.SIGTERM, again)
    idle()


def walks() -> None:
    deaf()
    while time.time() < UNTIL:
        time.sleep(0.1)
        if os.fork() != 0:
            os._exit(0)
    os._exit(0)


def new_session() -> None:
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    deaf()
    idle()


def keeps_children() -> None:
    deaf()
    children = set()
    while time.time() < UNTIL:
        while len(children) < 3:
            pid = os.fork()
            if pid == 0:
                deaf()
                idle()
            children.add(pid)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        children.discard(pid)
        time.sleep(0.1)
    os._exit(0)


def scribbles(home: str) -> None:
    deaf()
    count = 0
    while time.time() < UNTIL:
        try:
            folder = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
            os.mknod(f"scribble{count}", stat.S_IFREG | 0o644, dir_fd=folder)
            os.close(folder)
        except OSError:
            pass
        count += 1
        time.sleep(0.1)
    os._exit(0)


def main() -> None:
    global UNTIL
    home, seconds = sys.argv[1], float(sys.argv[2])
    UNTIL = time.time() + seconds
    for role in (ignores_term, respawns, walks, new_session, keeps_children, lambda: scribbles(home)):
        spawn(role)
    deaf()
    time.sleep(0.3)  # the grandchildren are born too
    print("ready", flush=True)
    detach()
    idle()


if __name__ == "__main__":
    main()
