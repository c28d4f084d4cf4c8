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

On every erase of a home (wodmail.services.reset_home), when the location asks, as the
home's owner (wodmail.homes.work_in_home): HOMEACL entries (`u:wodadmin:rwx`) become the access
and default ACL of the home and what the skeleton put in it, as the platform this replaces gave
its admin user; and ACCOUNTSSHKEY makes a fresh key pair in ~/.ssh (id_ed25519, id_ecdsa or
id_rsa, as ssh-keygen names them), generated in this process by `cryptography`.

The hash's cost: the passwords wodmail makes are 16 random letters and digits (95 bits, see
wodmail.passwords). A hash's cost protects guessable passwords; against 2^95 guesses it adds
nothing, and it is paid on every change and every login. So the default cost is the scheme's
lowest (yescrypt 1: 1.5 ms here; sha512 1000 rounds: 0.6 ms); ACCOUNTHASHCOST sets another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import grp
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wodmail.erase import DIR_FLAGS
from wodmail.errors import ConfigError, StepFailed, TransientError
from wodmail.location import AccountSettings, AclEntry, Location, login_defs
from wodmail.safefs import write_new_file

log = logging.getLogger(__name__)

#: The PATH of the tools wodmail runs (and the only variable, with LC_ALL, they inherit).
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CHILD_ENV = {"PATH": TOOL_PATH, "LC_ALL": "C"}
PASSWD_FILE = Path("/etc/passwd")
#: glibc's lckpwdf() lock (fcntl) and shadow-utils' own lock file.
PWD_LOCK = Path("/etc/.pwd.lock")
SHADOW_LOCK = Path("/etc/shadow.lock")
#: Seconds a change waits for another process's shadow lock before its step is retried later.
LOCK_WAIT = 2.0
#: Most lines one chpasswd run takes.
BATCH_MAX = 1000
#: Seconds a chpasswd or useradd run may take (lckpwdf itself gives up after 15 s).
TOOL_TIMEOUT = 60.0
#: The schemes' crypt(5) prefixes and their cheapest cost (see the module's docstring).
PREFIXES = {"yescrypt": b"$y$", "sha512": b"$6$"}
CHEAPEST = {"yescrypt": 1, "sha512": 1000}
_HASH_RE = re.compile(r"\$(y|6)\$[./0-9A-Za-z$=]{8,200}")
_PAM_FILES = ("/etc/pam.d/common-password", "/etc/pam.d/system-auth", "/etc/pam.d/password-auth")

# --------------------------------------------------------------------------- hashing


@functools.cache
def _hashers() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that hash passwords, one per core: a burst's hundreds of hashes queue
    here, not in the event loop's default executor, where the homes' syncfs and the
    completion's reads would wait behind them."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="wodmail-hash")


@functools.cache
def _libcrypt() -> ctypes.CDLL:
    """libcrypt (libxcrypt), with the prototypes of the two calls wodmail makes."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1", use_errno=True)
    lib.crypt_gensalt_rn.restype = ctypes.c_char_p
    lib.crypt_gensalt_rn.argtypes = [
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
    ]
    lib.crypt_rn.restype = ctypes.c_char_p
    lib.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    return lib


def system_scheme(pam_files: Iterable[str] = _PAM_FILES, defs: dict[str, str] | None = None) -> str:
    """The scheme this host's passwords are hashed with: pam_unix's option in the PAM password
    stack, else ENCRYPT_METHOD of /etc/login.defs, else yescrypt."""
    for file in pam_files:
        try:
            lines = Path(file).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "password":
                continue
            # password CONTROL MODULE OPTIONS..., CONTROL maybe "[success=1 default=ignore]"
            module = next((i for i, word in enumerate(words) if word.endswith("pam_unix.so")), None)
            if module is not None:
                options = set(words[module + 1 :])
                if "yescrypt" in options:
                    return "yescrypt"
                if "sha512" in options:
                    return "sha512"
    method = (defs if defs is not None else login_defs()).get("ENCRYPT_METHOD", "").upper()
    if method == "SHA512":
        return "sha512"
    return "yescrypt"


def hash_password(password: str, scheme: str, cost: int | None = None) -> str:
    """A crypt(5) hash of `password` with a fresh random salt (libcrypt, in this process)."""
    prefix = PREFIXES[scheme]
    lib = _libcrypt()
    setting = ctypes.create_string_buffer(256)
    entropy = secrets.token_bytes(16)
    made = lib.crypt_gensalt_rn(prefix, cost or CHEAPEST[scheme], entropy, len(entropy), setting, len(setting))
    if not made:
        raise StepFailed(f"libcrypt cannot make a {scheme} salt: {os.strerror(ctypes.get_errno())}")
    data = ctypes.create_string_buffer(32768)  # struct crypt_data
    result = lib.crypt_rn(password.encode(), setting.value, data, len(data))
    if not result or result.startswith(b"*"):
        raise StepFailed(f"libcrypt cannot hash with {scheme}")
    text: str = bytes(result).decode("ascii")
    ctypes.memset(data, 0, len(data))
    if not _HASH_RE.fullmatch(text):  # never a colon or a newline: one line of chpasswd's input
        raise StepFailed(f"libcrypt made a {scheme} hash wodmail does not expect")
    return text


# --------------------------------------------------------------------------- /etc/passwd


@dataclass(frozen=True)
class Entry:
    """One line of /etc/passwd."""

    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


class PasswdFile:
    """/etc/passwd, read again only when it changed (inode, size, mtime)."""

    def __init__(self, path: Path = PASSWD_FILE) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, Entry] = {}

    def entries(self) -> dict[str, Entry]:
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            entries: dict[str, Entry] = {}
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                fields = line.split(":")
                if len(fields) != 7 or not fields[2].isdigit() or not fields[3].isdigit():
                    continue  # a comment, a NIS "+" line, a malformed line: not an account we use
                name, _, uid, gid, gecos, home, shell = fields
                entries.setdefault(name, Entry(name, int(uid), int(gid), gecos, home, shell))
            self._entries, self._stamp = entries, stamp
        return self._entries

    def get(self, name: str) -> Entry | None:
        return self.entries().get(name)


# --------------------------------------------------------------------------- the shadow lock


def lock_holder(lock: Path = PWD_LOCK, lock_file: Path = SHADOW_LOCK) -> int | None:
    """The pid of another process that holds the shadow lock now (lckpwdf's fcntl lock on
    /etc/.pwd.lock, or shadow-utils' /etc/shadow.lock of a live process), else None."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0) + b"\0" * 4
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
            kind, _whence, _start, _length, pid = struct.unpack("hhqqi", answer[: struct.calcsize("hhqqi")])
            if kind != fcntl.F_UNLCK:
                return pid if pid > 0 else -1
        finally:
            os.close(fd)
    try:
        pid = int(lock_file.read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    if pid > 0:
        try:
            os.kill(pid, 0)
            return pid
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
    return None


# --------------------------------------------------------------------------- ACLs

_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF


def acl_xattr(mode: int, named: Iterable[tuple[str, int, int]]) -> bytes:
    """The system.posix_acl_* value for `mode` plus named entries (("u"|"g", id, perms)); the
    mask is the union of the group class, as setfacl computes it."""
    users = sorted((ident, perms) for kind, ident, perms in named if kind == "u")
    groups = sorted((ident, perms) for kind, ident, perms in named if kind == "g")
    group_obj = (mode >> 3) & 7
    mask = group_obj
    for _, perms in users + groups:
        mask |= perms
    entries = [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED)]
    entries += [(_USER, perms, ident) for ident, perms in users]
    entries += [(_GROUP_OBJ, group_obj, _UNDEFINED)]
    entries += [(_GROUP, perms, ident) for ident, perms in groups]
    entries += [(_MASK, mask, _UNDEFINED), (_OTHER, mode & 7, _UNDEFINED)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def _set_acl(path: str, mode: int, named: list[tuple[str, int, int]], folder: bool) -> None:
    try:
        os.setxattr(path, "system.posix_acl_access", acl_xattr(mode, named))
        if folder:
            os.setxattr(path, "system.posix_acl_default", acl_xattr(mode, named))
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise StepFailed("the homes' filesystem does not support ACLs (HOMEACL)") from None
        raise


def apply_acl(home: int, named: list[tuple[str, int, int]], limit: int = 100_000) -> int:
    """Give `named` entries on the open home folder and everything in it (no link followed:
    every name is opened O_PATH|O_NOFOLLOW and changed through /proc/self/fd). Runs as the
    home's owner. Returns how many entries were changed."""
    count = 0
    pending = [os.dup(home)]
    try:
        while pending:
            folder = pending.pop()
            try:
                _set_acl(f"/proc/self/fd/{folder}", stat.S_IMODE(os.fstat(folder).st_mode), named, True)
                count += 1
                for name in os.listdir(folder):
                    if count >= limit:
                        raise StepFailed(f"more than {limit} entries in a fresh home: HOMEACL not applied to all")
                    try:
                        handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
                    except FileNotFoundError:
                        continue
                    try:
                        st = os.fstat(handle)
                        if stat.S_ISDIR(st.st_mode):
                            with contextlib.suppress(PermissionError):  # a folder the owner closed to itself
                                pending.append(os.open(name, DIR_FLAGS, dir_fd=folder))
                        elif stat.S_ISREG(st.st_mode):
                            _set_acl(f"/proc/self/fd/{handle}", stat.S_IMODE(st.st_mode), named, False)
                            count += 1
                    finally:
                        os.close(handle)
            finally:
                os.close(folder)
    finally:
        for folder in pending:
            os.close(folder)
    return count


# --------------------------------------------------------------------------- ssh keys


@dataclass(frozen=True, repr=False)
class KeyPair:
    """A key pair for a home: the file name (id_ed25519...), private and public parts."""

    name: str
    private: bytes
    public: bytes


def new_key_pair(kind: str, comment: str) -> KeyPair:
    """A fresh key pair in OpenSSH's formats (unencrypted, as `ssh-keygen -N ''` makes it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"no key type {kind}")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(f"id_{kind}", private, public + b" " + comment.encode() + b"\n")


def install_key_pair(home: int, pair: KeyPair) -> None:
    """Put `pair` in the open home's .ssh (made 0700 if missing), replacing files of the same
    name; runs as the home's owner, never through a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(".ssh", 0o700, dir_fd=home)
    try:
        folder = os.open(".ssh", DIR_FLAGS, dir_fd=home)
    except OSError as exc:
        raise StepFailed(f"~/.ssh is not a folder the student owns: {exc.strerror}") from None
    try:
        for name, data, mode in ((pair.name, pair.private, 0o600), (pair.name + ".pub", pair.public, 0o644)):
            temporary = f".{name}.{secrets.token_hex(4)}"
            write_new_file(folder, temporary, data, mode)
            os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        os.close(folder)


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
            cost = self.settings.hash_cost or CHEAPEST[self.scheme]
            parts.append(f"host passwords ({self.scheme}, cost {cost}) through chpasswd -e")
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
                found.append((entry.kind, _resolve(self.file, entry), entry.perms))
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
        # In a thread: libcrypt runs without the GIL (ctypes lets it go), so even the cheapest
        # cost (1.6 ms, a sixth of a CREATE's CPU) runs on the other core while the loop goes on.
        # The next chpasswd run waits for the hashes under way (`_company`): a RESET's range
        # still goes in one run.
        self._hashes_started += 1
        try:
            hashing = functools.partial(hash_password, password, self.scheme, self.settings.hash_cost)
            hashed = await asyncio.get_running_loop().run_in_executor(_hashers(), hashing)
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
        holder = await _wait_for_lock()
        if holder is not None:
            who = f"pid {holder}" if holder > 0 else "another process"
            raise TransientError(f"/etc/shadow is locked by {who} (lckpwdf): the password is set when it is free")
        lines = "".join(f"{change.name}:{change.hashed}\n" for change in batch).encode("ascii")
        self.runs += 1
        self.lines += len(batch)
        code, errors = await _run_tool(["chpasswd", "-e"], lines)
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
            holder = await _wait_for_lock()
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
                    code, errors = await _run_tool(["groupadd", "--gid", str(stdid + settings.gid_base), name])
                    if code != 0:
                        raise StepFailed(f"groupadd {name} failed (exit {code}): {errors}")
                    group = grp.getgrnam(name)
                if group.gr_gid == 0:
                    raise StepFailed(f"the group {name} is root's: {name} is not created")
                argv += ["--gid", name]
            else:
                argv += ["--user-group"]
            code, errors = await _run_tool([*argv, name])
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


def _resolve(file: object, entry: AclEntry) -> int:
    if entry.name.isdigit():
        return int(entry.name)
    try:
        if entry.kind == "u":
            return pwd.getpwnam(entry.name).pw_uid
        return grp.getgrnam(entry.name).gr_gid
    except KeyError:
        what = "user" if entry.kind == "u" else "group"
        raise ConfigError(file, "HOMEACL", f"no {what} {entry.name} on this host") from None


async def _wait_for_lock(bound: float = LOCK_WAIT) -> int | None:
    """Wait up to `bound` seconds for the shadow lock to be free; the holder if it is not."""
    deadline = time.monotonic() + bound
    while True:
        holder = lock_holder()
        if holder is None or time.monotonic() >= deadline:
            return holder
        await asyncio.sleep(0.02)


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


async def _run_tool(argv: list[str], stdin: bytes | None = None) -> tuple[int, str]:
    """Run a shadow-utils tool by name from TOOL_PATH with CHILD_ENV; (exit code, its stderr
    tail). Standard input is `stdin` (a pipe) or nothing."""
    program = shutil.which(argv[0], path=TOOL_PATH)
    if program is None:
        raise StepFailed(f"{argv[0]} is not installed (in {TOOL_PATH})")
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        program,
        *argv[1:],
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=CHILD_ENV,
        cwd="/",
    )
    try:
        _, errors = await asyncio.wait_for(process.communicate(stdin), timeout=TOOL_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TransientError(f"{argv[0]} ran longer than {TOOL_TIMEOUT:.0f} s") from None
    text = " ".join(errors.decode("utf-8", "replace").split())[-400:]
    log.debug("%s exited %s in %.3f s", argv[0], process.returncode, time.monotonic() - began)
    return process.returncode or 0, text
