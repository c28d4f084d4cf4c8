"""Student homes on this host: STUDENTDIR/student{stdid}, and the work done inside them.

Every student has a shell on this host and owns their home: they can swap any name in it
for a link, a FIFO or a deep tree while wodmail works, and run processes that race it. So
the work is split by who controls the names:

- **Root** acts only on names no student can change: STUDENTDIR itself (root's, not
  writable by students: checked at start), the name student{N} in it, and the trash
  folder beside the homes. Erasing a home is renaming it into the trash (root's, 0700: no
  student reaches anything in it by name any more) and making a fresh home with its owner
  and HOMEMODE; the keeper (wodmail.keeper) empties the trash in a process of its own.
- **Inside a home**, every read, write, delete and chmod runs with the student's own
  filesystem identity (wodmail.identity), through a descriptor of the home opened by root
  without following links: the kernel keeps the work to what the student could do anyway.
  The skeleton and the workshop are written that way, and the notebooks are read that way
  for the completion (in a thread, with bounds on bytes and time).
- **Processes**: a student's are all ended (wodmail.keeper) before a home is touched.

HOMEOWNER says who owns a home: `student` (the default: the host account student{stdid},
when there is one; otherwise the home is the daemon's), `none` (the daemon's user, no
switch), or a fixed `UID:GID`. HOMEMODE is the home folder's mode (default 0750), whatever
the skeleton's.

Work in a fresh home (skeleton, deployment) runs on the caller's event loop when STUDENTDIR
is on a local filesystem: nothing in it can block (every open is O_NONBLOCK and never
follows a link, the student's processes are ended and a FUSE mount of theirs refuses a
thread whose euid is root). On a network filesystem (NFS, CIFS, FUSE...), where one call
may wait on the network, it runs in a thread so that the other jobs go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import grp
import logging
import os
import pwd
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from wodmail import faults
from wodmail.erase import DIR_FLAGS
from wodmail.errors import ConfigError, StepFailed, TransientError
from wodmail.identity import Identity, acting_as, as_daemon, can_switch
from wodmail.keeper import TRASH
from wodmail.keeperclient import Keeper
from wodmail.location import HomeSettings, Location
from wodmail.safefs import READ_FLAGS, copy_new_file

log = logging.getLogger(__name__)

STUDENT_ACCOUNT = re.compile(r"student([0-9]+)")

T = TypeVar("T")

#: Filesystems where a call may wait on the network: work on homes there runs in threads.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs", "davfs", "sshfs"}
)

#: Filesystems that keep nothing through a power cut.
VOLATILE_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})

#: Seconds a host account's uid and gid (or its absence) are taken as known.
ACCOUNT_TTL = 5.0
#: A listing of the host's accounts that takes longer than this (seconds) is not made again:
#: each student's account is then asked for by name (see `Homes._account_entry`).
LISTING_BOUND = 0.05
#: Seconds a student's processes get between SIGTERM and SIGKILL.
END_GRACE = 2.0
#: Seconds reading a home (the completion) may take before the step fails.
READ_BOUND = 60.0

_libc = ctypes.CDLL(None, use_errno=True)


class HomeMissing(StepFailed):
    """student{N}'s home does not exist."""


class Homes:
    """The homes of one location (see the module's docstring)."""

    def __init__(
        self,
        student_dir: Path,
        skel_dir: Path | None = None,
        *,
        owner: str = HomeSettings.owner,
        mode: int = HomeSettings.mode,
    ) -> None:
        self.student_dir = Path(os.path.abspath(student_dir))
        self.skel_dir = skel_dir
        self._owner = owner
        self.mode = mode
        self._accounts: dict[int, tuple[float, Identity | None, bool]] = {}  # expiry, account, own group
        self._listed_until = 0.0
        self._listing = True
        """Whether the accounts are listed all at once (False after one listing was too slow)."""
        self.filesystem = filesystem_of(self.student_dir)
        self.threaded = self.filesystem in NETWORK_FILESYSTEMS or self.filesystem.startswith("fuse")
        self.trash = self.student_dir / TRASH
        self.keeper = Keeper(self.trash)
        self._flush: asyncio.Future[None] | None = None
        self._flush_next: asyncio.Future[None] | None = None

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """`work(*args)`, inline or in a thread as the filesystem of the homes asks (above)."""
        if self.threaded:
            return await asyncio.to_thread(work, *args)
        return work(*args)

    @classmethod
    def from_location(cls, location: Location) -> Homes:
        """The homes of `location`: STUDENTDIR, SKELDIR, HOMEOWNER and HOMEMODE."""
        return cls(location.student_dir, location.skel_dir, owner=location.homes.owner, mode=location.homes.mode)

    def describe(self) -> str:
        """Where the homes are, and how work on them runs (for the start's log)."""
        how = "in a thread (a network filesystem)" if self.threaded else "on the event loop"
        who = "as each home's owner" if can_switch() and self._owner != "none" else f"as uid {os.geteuid()}"
        return f"homes in {self.student_dir}, on {self.filesystem or '?'}: work on them runs {how}, {who}"

    def not_durable(self) -> str:
        """Why what is written to the homes cannot survive a power cut ("" when it can)."""
        if self.filesystem in VOLATILE_FILESYSTEMS:
            return f"the homes are on {self.filesystem}: nothing written in them survives a power cut"
        options = mount_options_of(self.student_dir)
        unsafe = sorted(options & {"nobarrier", "barrier=0", "data=writeback"})
        if unsafe:
            return f"the homes' filesystem is mounted {','.join(unsafe)}: a flush does not make it durable"
        return ""

    # ------------------------------------------------------------------- who

    def identity(self, stdid: int) -> Identity | None:
        """Who owns student{stdid}'s home and files, or None: the daemon itself."""
        if self._owner == "none":
            return None
        if self._owner == "student":
            return self._account(int(stdid))
        uid, gid = self._owner.split(":")
        return Identity(int(uid), int(gid))

    def _account(self, stdid: int) -> Identity | None:
        """The uid and gid of the host account student{stdid}, if there is one."""
        return self._account_entry(stdid)[0]

    def _account_entry(self, stdid: int) -> tuple[Identity | None, bool]:
        """The host account student{stdid} (or None), and whether its group is its own.

        Asked of the system (NSS: files, systemd, sssd...) at most once per ACCOUNT_TTL
        seconds per student, and for all students at once where it can: one lookup by name
        reads /etc/passwd up to the name (320 us for the last of 3,000 students, and as much
        again for /etc/group), where one listing of both (getpwall, getgrall: 3.4 ms) answers
        for every student of a burst. A student the listing did not name (a directory that
        does not list its users, an account made since) is asked for by name.
        """
        now = time.monotonic()
        known = self._accounts.get(stdid)
        if (known is None or known[0] <= now) and self._listing and now >= self._listed_until:
            self._list_accounts(now)
            known = self._accounts.get(stdid)
        if known is None or known[0] <= now:
            known = self._look_up(stdid, now)
        _expiry, account, own_group = known
        if account is not None and account.uid in (0, os.geteuid()):
            raise StepFailed(f"the host account student{stdid} has uid {account.uid}: refusing to act as it")
        return account, own_group

    def _look_up(self, stdid: int, now: float) -> tuple[float, Identity | None, bool]:
        """Ask the system for the account student{stdid} by name, and keep the answer."""
        name = f"student{stdid}"
        try:
            entry = pwd.getpwnam(name)
            account: Identity | None = Identity(entry.pw_uid, entry.pw_gid)
        except KeyError:
            account = None
        own_group = account is not None and _is_own_group(account.gid, name)
        if len(self._accounts) >= 10_000:
            self._accounts.clear()
        known = self._accounts[stdid] = (now + ACCOUNT_TTL, account, own_group)
        return known

    def _list_accounts(self, now: float) -> None:
        """Keep every student account the system lists, with whether its group is its own.

        The first entry of a name or a gid wins, as getpwnam and getgrgid answer. A listing
        slower than LISTING_BOUND (a large directory that lists its users) is not made again.
        """
        started = time.monotonic()
        groups: dict[int, str] = {}
        for group in grp.getgrall():
            groups.setdefault(group.gr_gid, group.gr_name)
        listed: dict[int, tuple[float, Identity | None, bool]] = {}
        expiry = now + ACCOUNT_TTL
        for entry in pwd.getpwall():
            found = STUDENT_ACCOUNT.fullmatch(entry.pw_name)
            if found is None or str(int(found[1])) != found[1]:
                continue  # not student{N} (student007 is no student's)
            own_group = groups.get(entry.pw_gid) == entry.pw_name
            listed.setdefault(int(found[1]), (expiry, Identity(entry.pw_uid, entry.pw_gid), own_group))
        self._accounts = listed
        self._listed_until = expiry
        took = time.monotonic() - started
        if took > LISTING_BOUND:
            self._listing = False
            log.info(
                "listing the host's accounts took %.0f ms: from now on each student's is asked for by name",
                took * 1000,
            )

    def forget_account(self, stdid: int) -> None:
        """Drop what is known of student{stdid}'s host account (it was just created)."""
        self._accounts.pop(int(stdid), None)

    # ------------------------------------------------------------------- root's part

    def check(self) -> None:
        """Make STUDENTDIR if it is missing; refuse one a student could change names in.

        Root acts on the names in STUDENTDIR (renames a home aside, makes a new one): that
        is safe only if no student may create, rename or remove a name there or on the way
        to it, symbolic links included (the folder holding a link must be safe too).
        """
        self.student_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        real = _safe_path(self.student_dir)
        st = os.stat(real)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise ConfigError(
                self.student_dir,
                "STUDENTDIR",
                f"{real} must belong to root (or uid {os.geteuid()}) and be writable by no one else,"
                " so that no student can change the names of the homes",
            )

    def _open_student_dir(self) -> int:
        self.student_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        return os.open(self.student_dir, DIR_FLAGS)

    def open_home(self, stdid: int) -> int:
        """A descriptor of student{stdid}'s home, opened by root without following a link."""
        folder = self._open_student_dir()
        try:
            return os.open(f"student{int(stdid)}", DIR_FLAGS, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise HomeMissing(f"{self.student_dir}/student{stdid} does not exist") from None
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StepFailed(f"{self.student_dir}/student{stdid} is not a folder") from None
            raise
        finally:
            os.close(folder)

    def _replace_home(self, stdid: int, identity: Identity | None) -> int:
        """Set student{stdid}'s home aside (into the trash) and make a fresh one; its fd."""
        name = f"student{int(stdid)}"
        folder = self._open_student_dir()
        try:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                    raise StepFailed(
                        f"{self.student_dir}/{name} is a symlink: refusing to touch a home that points elsewhere"
                    )
            with contextlib.suppress(FileExistsError):
                os.mkdir(TRASH, 0o700, dir_fd=folder)
            trash = os.open(TRASH, DIR_FLAGS, dir_fd=folder)
            try:
                if os.fstat(trash).st_uid != os.geteuid():
                    raise StepFailed(f"{self.trash} does not belong to uid {os.geteuid()}")
                aside = f"{name}.{time.time_ns()}.{secrets.token_hex(4)}"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(name, aside, src_dir_fd=folder, dst_dir_fd=trash)
            finally:
                os.close(trash)
            os.mkdir(name, 0o700, dir_fd=folder)
            home = os.open(name, DIR_FLAGS, dir_fd=folder)
            try:
                if identity is not None and can_switch():
                    os.fchown(home, identity.uid, identity.gid)
                os.fchmod(home, self.mode)
            except BaseException:
                os.close(home)
                raise
            return home
        finally:
            os.close(folder)

    # ------------------------------------------------------------------- the steps

    async def end_processes(self, stdid: int, grace: float = END_GRACE, *, leftovers: bool = True) -> str:
        """End every process of the host account student{stdid}, if there is one, and (with
        `leftovers`) remove what it left outside its home (shared temporary folders, IPC,
        crontab, at, linger)."""
        account, group_too = self._account_entry(int(stdid))
        if account is None:
            return "no host account"
        if not can_switch():
            return f"not root: the processes of student{stdid} are left running"
        try:
            name = f"student{stdid}"
            ended, left = await self.keeper.end_processes(
                account.uid, account.gid, grace, group_too, name if leftovers else ""
            )
        except OSError as exc:  # a busy or restarted keeper, processes that outlive the bound: again later
            raise TransientError(f"cannot end the processes of student{stdid} yet: {exc.strerror or exc}") from None
        outcome = "processes ended" if ended else "no process was running"
        return outcome + (f"; {left} things left outside the home removed" if left else "")

    async def end_processes_of(self, stdids: list[int], grace: float = END_GRACE) -> str:
        """`end_processes` for several students at once (a RESET's range)."""
        outcomes = await asyncio.gather(*(self.end_processes(stdid, grace) for stdid in stdids))
        ended = sum(1 for outcome in outcomes if outcome.startswith("processes ended"))
        return f"processes of {ended} of {len(stdids)} students ended"

    async def end_new_students_processes(self, stdid: int) -> str:
        """For CREATE: end whatever a former holder of the seat left running. What they left
        outside the home went at their CLEANUP, PURGE or RESET."""
        return await self.end_processes(stdid, leftovers=False)

    async def reset(self, stdid: int) -> None:
        """Erase student{stdid}'s home and put its skeleton back (CREATE, CLEANUP, RESET, PURGE).

        End the student's processes first: nothing here is safe against them otherwise.
        """
        identity = self.identity(stdid)
        home = self._replace_home(stdid, identity)
        try:
            if self.skel_dir is not None and self.skel_dir.is_dir():
                await self.run(self._as_owner, identity, copy_skeleton, home, self.skel_dir)
        finally:
            os.close(home)
        try:
            await self.keeper.empty_trash()
        except OSError as exc:  # the next start empties it
            log.warning("cannot wake the keeper to empty %s: %s", self.trash, exc)

    async def work_in_home(self, stdid: int, work: Callable[..., T], *args: object) -> T:
        """`work(home_fd, *args)` as the home's owner, inline or in a thread (see `run`)."""
        home = self.open_home(stdid)
        try:
            return await self.run(self._as_owner, self.identity(stdid), work, home, *args)
        finally:
            os.close(home)

    async def read_home(self, stdid: int, work: Callable[..., T], *args: object) -> T:
        """`work(home_fd, *args)` as the home's owner, always in a thread, within READ_BOUND."""
        home = self.open_home(stdid)
        thread = asyncio.to_thread(self._as_owner, self.identity(stdid), work, home, *args)
        try:
            return await asyncio.wait_for(thread, READ_BOUND)
        except TimeoutError:
            raise StepFailed(f"reading student{stdid}'s home took more than {READ_BOUND:.0f} s") from None
        finally:
            os.close(home)

    @staticmethod
    def _as_owner(identity: Identity | None, work: Callable[..., T], *args: object) -> T:
        with acting_as(identity):
            return work(*args)

    async def durable(self) -> None:
        """Wait until what was written to the homes' filesystem so far is on stable storage.

        One syncfs(2) serves every job waiting at the time (as the queue's group commit
        shares one fdatasync); a job arriving while one runs waits for the next.
        """
        if faults.SKIP_HOME_FLUSH:
            return
        wanted = self._flush_next
        if wanted is None:
            wanted = self._flush_next = asyncio.get_running_loop().create_future()
            if self._flush is None:
                self._start_flush()
        await asyncio.shield(wanted)

    def _start_flush(self) -> None:
        self._flush, self._flush_next = self._flush_next, None
        task = asyncio.ensure_future(asyncio.to_thread(self._syncfs))
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Future[None]) -> None:
        done, self._flush = self._flush, None
        if done is not None and not done.done():
            error = task.exception()
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        if self._flush_next is not None:
            self._start_flush()

    def _syncfs(self) -> None:
        folder = self._open_student_dir()
        try:
            if _libc.syncfs(folder) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"syncfs of {self.student_dir} failed: {os.strerror(code)}")
        finally:
            os.close(folder)


def _safe_path(path: Path, links: int = 0) -> Path:
    """The real path of `path`, checked from / down: no name on the way (symbolic links and
    what they lead to included) can be changed by anyone but root and the daemon's user.
    A name in a folder others may write to is safe only if that folder is sticky and the
    name is root's (or the daemon's): /tmp/x made by root, not by a student."""
    me = os.geteuid()
    current = Path("/")
    for name in Path(os.path.abspath(path)).parts[1:]:
        folder = os.stat(current)
        child = current / name
        st = os.lstat(child)
        if folder.st_mode & 0o022 and not (folder.st_mode & stat.S_ISVTX and st.st_uid in (0, me)):
            raise ConfigError(
                path, "STUDENTDIR", f"{child} can be renamed or replaced by others ({current} is writable by them)"
            )
        if stat.S_ISLNK(st.st_mode):
            if links > 40:
                raise ConfigError(path, "STUDENTDIR", f"{child}: too many symbolic links")
            current = _safe_path(current / os.readlink(child), links + 1)
        else:
            current = child
    return current


def _is_own_group(gid: int, name: str) -> bool:
    """Whether `gid` is the account `name`'s own group (same name): then its processes are
    the student's too. A shared group (users) is not: other people's processes have it."""
    try:
        return grp.getgrgid(gid).gr_name == name
    except KeyError:
        return False


def copy_skeleton(home: int, skeleton: Path) -> int:
    """Copy the skeleton folder's contents into the open, empty folder `home`; count them.

    Runs as the home's owner: the skeleton is read as the daemon (students need not be
    able to read it), every file and folder is created new (O_EXCL, never through a link),
    links are copied as links, modes as the skeleton has them (the home's own mode is
    HOMEMODE, set by root). Iterative: a deep skeleton needs no recursion.
    """
    count = 0
    pending: list[tuple[Path, int]] = [(skeleton, os.dup(home))]
    try:
        while pending:
            count += _copy_folder(*pending.pop(), pending)
    finally:  # a failure leaves no descriptor open
        for _, target in pending:
            os.close(target)
    return count


def _copy_folder(source: Path, target: int, pending: list[tuple[Path, int]]) -> int:
    """Copy `source`'s entries into the open folder `target` (closed at the end); its
    sub-folders are made and added to `pending`. Returns how many entries were copied."""
    count = 0
    try:
        with as_daemon():
            entries = sorted(os.scandir(source), key=lambda e: e.name)
        for entry in entries:
            with as_daemon():
                st = entry.stat(follow_symlinks=False)
                link = os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else None
            if link is not None:
                os.symlink(link, entry.name, dir_fd=target)
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(entry.name, 0o700, dir_fd=target)
                inner = os.open(entry.name, DIR_FLAGS, dir_fd=target)
                os.fchmod(inner, stat.S_IMODE(st.st_mode))
                pending.append((Path(entry.path), inner))
            elif stat.S_ISREG(st.st_mode):
                _copy_file(entry.path, target, entry.name, stat.S_IMODE(st.st_mode))
            else:
                continue  # a FIFO or device in /etc/skel is not copied into homes
            count += 1
    finally:
        os.close(target)
    return count


def _copy_file(source: str, folder: int, name: str, mode: int) -> None:
    with as_daemon():
        src = os.open(source, READ_FLAGS)
    try:
        copy_new_file(src, folder, name, mode)
    finally:
        os.close(src)


def mount_options_of(path: Path, mountinfo: str | None = None) -> set[str]:
    """The mount and superblock options of the filesystem `path` is on (empty if unknown)."""
    return set(mount_of(path, mountinfo)[2])


def filesystem_of(path: Path, mountinfo: str | None = None) -> str:
    """The type of the filesystem `path` is on (or would be, if it does not exist yet), from
    /proc/self/mountinfo (or the `mountinfo` text given); "" when it cannot be told."""
    return mount_of(path, mountinfo)[1]


def mount_of(path: Path, mountinfo: str | None = None) -> tuple[str, str, list[str]]:
    """(mount point, type, options) of the deepest mount holding `path`, from mountinfo(5);
    ("", "", []) when it cannot be told."""
    path, tail = Path(os.path.abspath(path)), ""
    while not path.exists() and path != path.parent:  # a folder to come is on its parent's
        path, tail = path.parent, os.path.join(path.name, tail)
    real = os.path.join(os.path.realpath(path), tail).rstrip("/") or "/"
    best, found = "", ("", "", list[str]())
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return found
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts, tail_fields = fields.split(), rest.split()
        if len(parts) < 6 or not tail_fields:
            continue
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4])
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            options = parts[5].split(",") + (tail_fields[2].split(",") if len(tail_fields) > 2 else [])
            best, found = mount_point, (mount_point, tail_fields[0], options)
    return found
