"""Student homes on this host: STUDENTDIR/student{stdid}, reset to their skeleton.

Nothing here follows a symlink out of STUDENTDIR: a home that is itself a symlink is
refused, and entries inside a home are removed without following links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from wodmail.errors import ConfigError, StepFailed
from wodmail.location import Location

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Filesystems where a call may wait on the network: work on homes there runs in threads.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs", "davfs", "sshfs"}
)

#: Seconds a host account's uid and gid (or its absence) are taken as known.
ACCOUNT_TTL = 5.0

_FIXED_OWNER = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")
_MODE = re.compile(r"0?[0-7]{3}")


class Homes:
    """The homes of one location.

    HOMEOWNER says who owns a home and what is deployed in it: `student` (the default: the
    host account student{stdid}, when there is one; nothing is chowned otherwise), `none`,
    or a fixed `UID:GID`. HOMEMODE is the home folder's mode (default 0750, written as an
    octal string such as "0750").

    Work on homes (`run`) happens on the caller's event loop when STUDENTDIR is on a local
    filesystem: there a file is made in tens of microseconds, less than handing the work
    to a thread and back costs, and a thread would only fight the event loop for the GIL at
    every system call. On a network filesystem (NFS, CIFS, FUSE...), where one call may
    wait on the network, it runs in a thread so that the other jobs go on meanwhile.
    """

    def __init__(
        self,
        student_dir: Path,
        skel_dir: Path | None = None,
        *,
        owner: str = "student",
        mode: int = 0o750,
    ) -> None:
        self.student_dir = student_dir
        self.skel_dir = skel_dir
        self._owner = owner
        self.mode = mode
        self._accounts: dict[int, tuple[float, tuple[int, int] | None]] = {}
        self.filesystem = filesystem_of(student_dir)
        self.threaded = self.filesystem in NETWORK_FILESYSTEMS or self.filesystem.startswith("fuse")

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """`work(*args)`, inline or in a thread as the filesystem of the homes asks (above)."""
        if self.threaded:
            return await asyncio.to_thread(work, *args)
        return work(*args)

    @classmethod
    def from_location(cls, location: Location) -> Homes:
        owner = location.values.get("HOMEOWNER", "student")
        if not isinstance(owner, str) or not (owner in ("student", "none") or _FIXED_OWNER.fullmatch(owner)):
            raise ConfigError(location.file, "HOMEOWNER", "must be student, none or UID:GID (numbers)")
        mode_text = location.values.get("HOMEMODE", "0750")
        if not isinstance(mode_text, str) or not _MODE.fullmatch(mode_text):
            raise ConfigError(location.file, "HOMEMODE", 'must be an octal mode in quotes, e.g. "0750"')
        return cls(location.student_dir, location.skel_dir, owner=owner, mode=int(mode_text, 8))

    def describe(self) -> str:
        """Where the homes are, and how work on them runs (for the start's log)."""
        how = "in a thread (a network filesystem)" if self.threaded else "on the event loop"
        return f"homes in {self.student_dir}, on {self.filesystem or '?'}: work on them runs {how}"

    def owner(self, stdid: int) -> tuple[int, int] | None:
        """Who owns student{stdid}'s home and files, or None to leave them as made."""
        if self._owner == "none":
            return None
        if self._owner == "student":
            return self._account(int(stdid))
        uid, gid = self._owner.split(":")
        return int(uid), int(gid)

    def _account(self, stdid: int) -> tuple[int, int] | None:
        """The uid and gid of the host account student{stdid}, if there is one.

        Asked of the system (NSS: files, systemd, sssd...) at most once per ACCOUNT_TTL
        seconds per student: one lookup walks a dozen userdb folders (110 us here), and a
        job asks twice (its home, its files) within milliseconds.
        """
        now = time.monotonic()
        known = self._accounts.get(stdid)
        if known is not None and known[0] > now:
            return known[1]
        try:
            entry = pwd.getpwnam(f"student{stdid}")
            account: tuple[int, int] | None = (entry.pw_uid, entry.pw_gid)
        except KeyError:
            account = None
        if len(self._accounts) >= 10_000:
            self._accounts.clear()
        self._accounts[stdid] = (now + ACCOUNT_TTL, account)
        return account

    def home(self, stdid: int) -> Path:
        """student{stdid}'s home; refused when it is a symlink (it could point anywhere)."""
        path = self.student_dir / f"student{int(stdid)}"
        if path.is_symlink():
            raise StepFailed(f"{path} is a symlink: refusing to touch a home that points elsewhere")
        return path

    async def reset(self, stdid: int) -> None:
        """Empty student{stdid}'s home and put its skeleton back (CREATE, CLEANUP, RESET, PURGE)."""
        await self.run(self.reset_now, stdid)

    def reset_now(self, stdid: int) -> None:
        """`reset`, done by the calling thread."""
        self.student_dir.mkdir(parents=True, exist_ok=True)
        home = self.home(stdid)
        home.mkdir(mode=self.mode, exist_ok=True)
        os.chmod(home, self.mode, follow_symlinks=False)
        owner = self.owner(stdid)
        if owner is not None:
            os.chown(home, *owner, follow_symlinks=False)
        for entry in os.scandir(home):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        if self.skel_dir is not None and self.skel_dir.is_dir():
            shutil.copytree(self.skel_dir, home, symlinks=True, dirs_exist_ok=True)
            if owner is not None:
                for root, folders, files in os.walk(home):
                    for name in folders + files:
                        os.chown(os.path.join(root, name), *owner, follow_symlinks=False)

    async def end_processes(self, stdid: int, grace: float = 2.0) -> int:
        """Stop every process of the host account student{stdid}, if there is one; return how many."""
        account = self._account(int(stdid))
        if account is None:
            return 0
        pids = processes_of(account[0])
        for pid in pids:
            signal_quietly(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
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


def filesystem_of(path: Path, mountinfo: str | None = None) -> str:
    """The type of the filesystem `path` is on (or would be, if it does not exist yet), from
    /proc/self/mountinfo (or the `mountinfo` text given); "" when it cannot be told."""
    path, tail = Path(os.path.abspath(path)), ""
    while not path.exists() and path != path.parent:  # a folder to come is on its parent's
        path, tail = path.parent, os.path.join(path.name, tail)
    real = os.path.join(os.path.realpath(path), tail).rstrip("/") or "/"
    best, kind = "", ""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4])
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, rest.split()[0]
    return kind
