"""Student homes on this host: STUDENTDIR/student{stdid}, reset to their skeleton.

Nothing here follows a symlink out of STUDENTDIR: a home that is itself a symlink is
refused, and entries inside a home are removed without following links.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import time
from pathlib import Path

from wodmail.errors import StepFailed

log = logging.getLogger(__name__)


class Homes:
    def __init__(self, student_dir: Path, skel_dir: Path | None = None) -> None:
        self.student_dir = student_dir
        self.skel_dir = skel_dir

    def home(self, stdid: int) -> Path:
        """student{stdid}'s home; refused when it is a symlink (it could point anywhere)."""
        path = self.student_dir / f"student{int(stdid)}"
        if path.is_symlink():
            raise StepFailed(f"{path} is a symlink: refusing to touch a home that points elsewhere")
        return path

    def reset(self, stdid: int) -> None:
        """Empty student{stdid}'s home and put its skeleton back (CREATE, CLEANUP, RESET, PURGE)."""
        self.student_dir.mkdir(parents=True, exist_ok=True)
        home = self.home(stdid)
        home.mkdir(mode=0o750, exist_ok=True)
        for entry in os.scandir(home):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        if self.skel_dir is not None and self.skel_dir.is_dir():
            shutil.copytree(self.skel_dir, home, symlinks=True, dirs_exist_ok=True)

    def end_processes(self, stdid: int, grace: float = 2.0) -> int:
        """Stop every process of the host account student{stdid}, if there is one; return how many."""
        try:
            uid = pwd.getpwnam(f"student{int(stdid)}").pw_uid
        except KeyError:
            return 0
        pids = processes_of(uid)
        for pid in pids:
            signal_quietly(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [pid for pid in pids if alive(pid)]
        for pid in pids:
            signal_quietly(pid, signal.SIGKILL)
        return len(pids)


def processes_of(uid: int) -> list[int]:
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def signal_quietly(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
