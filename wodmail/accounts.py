"""The students' host accounts: the password the hub's PAM checks, creation, keys and ACLs.

The hub logs students in through PAM (JupyterHub's PAMAuthenticator, as the platform this
replaces does), so on every verb that changes a password (CREATE, CLEANUP, PURGE, each student
of a RESET) student{N}'s shadow entry gets the new one, with ACCOUNTS: unix:

- **The password never leaves this process.** It is hashed here (libcrypt's crypt_rn, the
  scheme pam_unix uses on this host, or ACCOUNTHASH) and only the hash is written, with
  `chpasswd -e` reading `name:hash` lines on its standard input: no argument, no environment
  variable, no file, no log line of any process ever holds the password. Children get an
  environment of their own (PATH and LC_ALL only): the daemon's secrets (env:NAME values) are
  not passed on.
- **One writer, few spawns.** /etc/shadow has one writer at a time (lckpwdf). Changes are
  group-committed: while a `chpasswd` runs, the changes that arrive wait and all go to the next
  one, as many lines as there are (a burst of 100 CREATEs takes a handful of spawns, not 100).
  A lone change is written at once: nothing waits for company. If a batch fails, its lines are
  written one by one, so one bad line fails only its own job.
- **Only student accounts.** The name is always `student{N}` with N an integer in
  STUDENTMIN..STUDENTMAX. Before anything is written, the account is read from /etc/passwd (the
  file chpasswd changes, not NSS): its uid must be in ACCOUNTUIDMIN..ACCOUNTUIDMAX (never 0,
  never wodmail's own), equal to N + ACCOUNTUIDBASE when that is set, and its home must be
  STUDENTDIR/student{N}. Anything else is a clear failure naming the account, and nothing is
  written. A student cannot change any of these fields (chfn and chsh change neither).
- **Creation** (ACCOUNTCREATE: true): a missing student{N} is made with `useradd` (its own
  group, ACCOUNTSHELL, ACCOUNTGROUPS, uid N + ACCOUNTUIDBASE or one useradd picks within the
  range, home STUDENTDIR/student{N} made by wodmail.homes); an existing one is never made again.
- **Locks held by others**: when another process holds the shadow lock (a `passwd`, `vipw`,
  `useradd` run by an admin), the step fails at once as transient, naming the holder, and the
  job is retried with backoff: it never waits inside the single writer and holds up the others.

The hash, /etc/passwd and the shadow lock are wodmail.shadow's; the ACL and the key pair a
fresh home gets are wodmail.homeaccess's.
"""

from __future__ import annotations

import asyncio
import functools
import grp
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wodmail.errors import ConfigError, StepFailed, TransientError
from wodmail.homeaccess import KeyPair, acl_id, apply_acl, install_key_pair, new_key_pair
from wodmail.location import AccountSettings, Location
from wodmail.shadow import (
    TOOL_PATH,
    Entry,
    PasswdFile,
    describe_cost,
    hash_password,
    hashers,
    run_tool,
    system_scheme,
    wait_for_lock,
)

log = logging.getLogger(__name__)

#: Most lines one chpasswd run takes.
BATCH_MAX = 1000

# --------------------------------------------------------------------------- the accounts


@dataclass
class _Change:
    name: str
    hashed: str
    done: asyncio.Future[str]


class Accounts:
    """The host accounts of one location's students (see the module's docstring)."""

    def __init__(
        self,
        settings: AccountSettings,
        student_dir: Path,
        limits: tuple[int, int],
        *,
        passwd: PasswdFile | None = None,
        on_created: Callable[[int], None] | None = None,
        file: object = "the location",
    ) -> None:
        self.file = file
        self.settings = settings
        self.student_dir = Path(os.path.abspath(student_dir))
        self.limits = limits
        self.scheme = settings.hash_scheme if settings.hash_scheme != "system" else system_scheme()
        self.passwd = passwd or PasswdFile()
        self.on_created = on_created
        self._queue: list[_Change] = []
        self._draining: asyncio.Future[None] | None = None
        self._hashes_started = self._hashes_ended = 0
        self._hash_ended: asyncio.Event | None = None
        self._writer: asyncio.Lock | None = None
        self._acl_ids: list[tuple[str, int, int]] | None = None
        #: Most lines one chpasswd run takes (1: one run per change, for comparison).
        self.batch_max = BATCH_MAX
        #: chpasswd runs so far, and lines written (the measure of batching).
        self.runs = 0
        self.lines = 0

    @classmethod
    def from_location(cls, location: Location, on_created: Callable[[int], None] | None = None) -> Accounts | None:
        """The accounts of `location`; None when it asks for nothing (the embedded default)."""
        settings = location.accounts
        if not settings.enabled and settings.ssh_key == "none" and not settings.home_acl:
            return None
        owner = location.homes.owner
        if settings.ssh_key != "none" and owner != "student":
            raise ConfigError(location.file, "ACCOUNTSSHKEY", "the key belongs to the student: needs HOMEOWNER student")
        limits = (location.student_min, location.student_max)
        return cls(settings, location.student_dir, limits, on_created=on_created, file=location.file)

    @property
    def sets_passwords(self) -> bool:
        return self.settings.enabled

    @property
    def furnishes_homes(self) -> bool:
        return self.settings.ssh_key != "none" or bool(self.settings.home_acl)

    def describe(self) -> str:
        parts = []
        if self.sets_passwords:
            cost = describe_cost(self.scheme, self.settings.hash_cost)
            parts.append(f"host passwords ({self.scheme}, {cost}) through chpasswd -e")
            if self.settings.create:
                parts.append(f"missing accounts created (uids {self.settings.uid_min}..{self.settings.uid_max})")
        if self.settings.ssh_key != "none":
            parts.append(f"a new {self.settings.ssh_key} key pair on every erase")
        if self.settings.home_acl:
            parts.append("home ACL " + ",".join(str(entry) for entry in self.settings.home_acl))
        return "accounts: " + "; ".join(parts)

    def check(self) -> None:
        """What the start needs: root, the tools, the names HOMEACL and ACCOUNTGROUPS give."""
        if self.sets_passwords:
            if os.geteuid() != 0:
                raise ConfigError(self.file, "ACCOUNTS", "unix changes /etc/shadow: wodmail must run as root")
            tools = ["chpasswd"] + (["useradd", "groupadd"] if self.settings.create else [])
            for tool in tools:
                if shutil.which(tool, path=TOOL_PATH) is None:
                    raise ConfigError(self.file, "ACCOUNTS", f"{tool} is not installed (in {TOOL_PATH})")
            hash_password(secrets.token_hex(8), self.scheme, self.settings.hash_cost)  # libcrypt has the scheme
        if self.settings.create:
            if not os.path.isabs(self.settings.shell) or not os.access(self.settings.shell, os.X_OK):
                raise ConfigError(self.file, "ACCOUNTSHELL", f"{self.settings.shell} is not an executable")
            for group in self.settings.groups:
                try:
                    grp.getgrnam(group)
                except KeyError:
                    raise ConfigError(self.file, "ACCOUNTGROUPS", f"no group {group} on this host") from None
        self.acl_ids()

    def acl_ids(self) -> list[tuple[str, int, int]]:
        """HOMEACL as (kind, id, perms); a name must exist on this host."""
        if self._acl_ids is None:
            found = []
            for entry in self.settings.home_acl:
                found.append((entry.kind, acl_id(self.file, entry), entry.perms))
            self._acl_ids = found
        return self._acl_ids

    # ------------------------------------------------------------------ the password

    async def set_password(self, stdid: int, password: str) -> str:
        """Give student{stdid}'s host account `password` (as a hash); what was done."""
        entry = self.account_to_set(stdid)
        created = ""
        if entry is None:
            entry = await self._create(stdid)
            created = " (account created)"
            self._check(stdid, entry)
        # In a thread: libcrypt runs without the GIL (ctypes lets it go), so even the default
        # cost (0.4 ms) runs on the other core while the loop goes on.
        # The next chpasswd run waits for the hashes under way (`_company`): a RESET's range
        # still goes in one run.
        self._hashes_started += 1
        try:
            hashing = functools.partial(hash_password, password, self.scheme, self.settings.hash_cost)
            hashed = await asyncio.get_running_loop().run_in_executor(hashers(), hashing)
        finally:
            self._hashes_ended += 1
            if self._hash_ended is not None:
                self._hash_ended.set()
        run = await self._change(entry.name, hashed)  # queued at once: no await before the append
        return f"host password set{created}, {run}"

    def account_to_set(self, stdid: int) -> Entry | None:
        """student{stdid}'s account, whose password `set_password` may set; None when it is
        missing and is to be created (ACCOUNTCREATE). StepFailed when it may not be touched:
        missing (without ACCOUNTCREATE), or not a student account (`_check`). Reads
        /etc/passwd only: PLAN asks it too (wodmail.plansteps)."""
        name = self._name(stdid)
        entry = self.passwd.get(name)
        if entry is None:
            if not self.settings.create:
                raise StepFailed(f"the host account {name} does not exist: create it, or set ACCOUNTCREATE: true")
            return None
        self._check(stdid, entry)
        return entry

    def _name(self, stdid: int) -> str:
        stdid = int(stdid)
        low, high = self.limits
        if not low <= stdid <= high:
            raise StepFailed(
                f"student{stdid} is outside STUDENTMIN..STUDENTMAX ({low}..{high}): its account is not touched"
            )
        return f"student{stdid}"

    def _check(self, stdid: int, entry: Entry) -> None:
        """Refuse an account that is not student{stdid}'s: nothing is written for it."""
        settings = self.settings
        why = ""
        if entry.uid in (0, os.geteuid()):
            why = f"it has uid {entry.uid}"
        elif not settings.uid_min <= entry.uid <= settings.uid_max:
            allowed = f"{settings.uid_min}..{settings.uid_max}"
            why = f"its uid {entry.uid} is outside ACCOUNTUIDMIN..ACCOUNTUIDMAX ({allowed})"
        elif settings.uid_base is not None and entry.uid != stdid + settings.uid_base:
            why = f"its uid {entry.uid} is not {stdid + settings.uid_base} (ACCOUNTUIDBASE {settings.uid_base})"
        elif entry.gid == 0:
            why = "its group is root's"
        elif not _same_path(entry.home, self.student_dir / entry.name):
            why = f"its home is {entry.home}, not {self.student_dir / entry.name} (STUDENTDIR)"
        if why:
            raise StepFailed(f"the host account {entry.name} is not a student account: {why}; it is left as it is")

    async def _change(self, name: str, hashed: str) -> str:
        """Write `name:hashed` with the next chpasswd run; what that run was."""
        change = _Change(name, hashed, asyncio.get_running_loop().create_future())
        self._queue.append(change)
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())
        return await asyncio.shield(change.done)

    async def _company(self) -> None:
        """Wait for the hashes that were under way when the batch was about to be taken (a
        couple of milliseconds at most: each ends, well or not): their lines join it. Those
        started later go to the next run, so a steady stream never holds a run back."""
        awaited = self._hashes_started
        while self._hashes_ended < awaited and len(self._queue) < self.batch_max:
            if self._hash_ended is None:
                self._hash_ended = asyncio.Event()
            self._hash_ended.clear()
            await self._hash_ended.wait()

    def _lock(self) -> asyncio.Lock:
        if self._writer is None:
            self._writer = asyncio.Lock()
        return self._writer

    async def _drain(self) -> None:
        try:
            while self._queue:
                async with self._lock():
                    await self._company()
                    batch, self._queue = self._queue[: self.batch_max], self._queue[self.batch_max :]
                    await self._write(batch)
        finally:
            self._draining = None

    async def _write(self, batch: list[_Change]) -> None:
        """One chpasswd run for `batch`; one per line if the batch as a whole fails."""
        began = time.monotonic()
        try:
            await self._chpasswd(batch)
        except TransientError as exc:
            for change in batch:
                _settle(change.done, exc)
            return
        except StepFailed as exc:
            if len(batch) == 1:
                _settle(batch[0].done, exc)
                return
            for change in batch:  # which line was it? each alone
                await self._write([change])
            return
        except Exception as exc:  # noqa: BLE001 - handed to every job of the batch, which records it
            for change in batch:
                _settle(change.done, exc)
            return
        took = (time.monotonic() - began) * 1000
        run = f"chpasswd run {self.runs} of {len(batch)} line(s), {took:.0f} ms"
        for change in batch:
            _settle(change.done, run)

    async def _chpasswd(self, batch: list[_Change]) -> None:
        holder = await wait_for_lock()
        if holder is not None:
            who = f"pid {holder}" if holder > 0 else "another process"
            raise TransientError(f"/etc/shadow is locked by {who} (lckpwdf): the password is set when it is free")
        lines = "".join(f"{change.name}:{change.hashed}\n" for change in batch).encode("ascii")
        self.runs += 1
        self.lines += len(batch)
        code, errors = await run_tool(["chpasswd", "-e"], lines)
        if code == 0:
            return
        for change in batch:
            errors = errors.replace(change.hashed, "(hash)")
        if "lock" in errors:
            raise TransientError(f"chpasswd could not lock /etc/shadow: {errors}")
        raise StepFailed(f"chpasswd failed (exit {code}): {errors}")

    # ------------------------------------------------------------------ creation

    async def _create(self, stdid: int) -> Entry:
        """useradd student{stdid}, under the writer lock; the new entry."""
        name = f"student{stdid}"
        settings = self.settings
        async with self._lock():
            entry = self.passwd.get(name)
            if entry is not None:  # made meanwhile
                return entry
            holder = await wait_for_lock()
            if holder is not None:
                raise TransientError(f"/etc/passwd is locked by pid {holder}: {name} is created when it is free")
            argv = [
                "useradd",
                "--no-create-home",
                "--home-dir",
                str(self.student_dir / name),
                "--shell",
                settings.shell,
                "--comment",
                "wodmail student",
                "--key",
                f"UID_MIN={settings.uid_min}",
                "--key",
                f"UID_MAX={settings.uid_max}",
            ]
            if settings.uid_base is not None:
                argv += ["--uid", str(stdid + settings.uid_base)]
            if settings.groups:
                argv += ["--groups", ",".join(settings.groups)]
            try:
                group = grp.getgrnam(name)
            except KeyError:
                group = None
            if group is not None or settings.gid_base is not None:
                if group is None:
                    assert settings.gid_base is not None
                    code, errors = await run_tool(["groupadd", "--gid", str(stdid + settings.gid_base), name])
                    if code != 0:
                        raise StepFailed(f"groupadd {name} failed (exit {code}): {errors}")
                    group = grp.getgrnam(name)
                if group.gr_gid == 0:
                    raise StepFailed(f"the group {name} is root's: {name} is not created")
                argv += ["--gid", name]
            else:
                argv += ["--user-group"]
            code, errors = await run_tool([*argv, name])
            if code != 0:
                raise StepFailed(f"useradd {name} failed (exit {code}): {errors}")
            entry = self.passwd.get(name)
            if entry is None:
                raise StepFailed(f"useradd {name} succeeded but /etc/passwd has no {name}")
            log.info("host account %s created (uid %d)", name, entry.uid)
        if self.on_created is not None:
            self.on_created(stdid)
        return entry

    # ------------------------------------------------------------------ the home

    async def key_pair(self, stdid: int) -> KeyPair | None:
        """A fresh key pair for student{stdid} (None: ACCOUNTSSHKEY none); made in a thread."""
        if self.settings.ssh_key == "none":
            return None
        comment = f"student{int(stdid)}@{socket.gethostname()}"
        return await asyncio.to_thread(new_key_pair, self.settings.ssh_key, comment)

    def furnish_home(self, home: int, pair: KeyPair | None) -> str:
        """HOMEACL and the key pair, in the open fresh home, as its owner; what was done."""
        done = []
        named = self.acl_ids()
        if named:
            count = apply_acl(home, named)
            done.append(f"ACL on {count} entries")
        if pair is not None:
            install_key_pair(home, pair)
            done.append(f"new key ~/.ssh/{pair.name}")
        return ", ".join(done)


def _same_path(home: str, expected: Path) -> bool:
    """Whether an account's home is `expected`, as written or once links are resolved."""
    return os.path.normpath(home) == str(expected) or os.path.realpath(home) == os.path.realpath(expected)


def _settle(future: asyncio.Future[str], outcome: str | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
        future.add_done_callback(_seen)
    else:
        future.set_result(outcome)


def _seen(future: asyncio.Future[str]) -> None:
    if not future.cancelled():
        future.exception()
