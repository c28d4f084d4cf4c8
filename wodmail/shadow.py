"""The host's password files, as wodmail reads and writes them: a password's hash in the
scheme pam_unix uses here (libcrypt, in this process), /etc/passwd's entries, the shadow lock,
and the shadow-utils tools run with an environment of their own.

The hash's cost: the passwords wodmail makes are 16 random letters and digits (95 bits, see
wodmail.passwords). A hash's cost protects guessable passwords; against 2^95 guesses it adds
nothing, and it is paid on every change and every login. So the default is cheap:

- yescrypt: N=256 blocks of 1 KiB (256 KiB, 0.4 ms here), a quarter of libxcrypt's cheapest
  cost 1 (N=1024: 1 MiB, 1.5 ms, half of it the kernel zeroing the fresh memory libxcrypt
  maps for every hash). crypt_gensalt makes the cost-1 setting ("$y$j75$" and the salt);
  its N is then lowered from 2^10 to 2^8 ("$y$j55$"), a setting yescrypt's own encoding
  allows and pam_unix checks like any other (libcrypt reads the parameters from the hash);
- sha512: 1000 rounds, the least the scheme allows (0.9 ms).

ACCOUNTHASHCOST sets libxcrypt's cost (yescrypt 1..11) or sha512's rounds instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import fcntl
import functools
import logging
import os
import re
import secrets
import shutil
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wodmail.errors import StepFailed, TransientError
from wodmail.location import login_defs

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
#: Seconds a chpasswd or useradd run may take (lckpwdf itself gives up after 15 s).
TOOL_TIMEOUT = 60.0
#: The schemes' crypt(5) prefixes and their cheapest cost (see the module's docstring).
PREFIXES = {"yescrypt": b"$y$", "sha512": b"$6$"}
CHEAPEST = {"yescrypt": 1, "sha512": 1000}
#: The default yescrypt setting's parameters: libxcrypt's cost 1 ("j": its default flags,
#: "7": N=2^10, "5": r=8) with N lowered to 2^8 ("5"). See the module's docstring.
YESCRYPT_COST_1 = b"$y$j75$"
YESCRYPT_DEFAULT = b"$y$j55$"
_HASH_RE = re.compile(r"\$(y|6)\$[./0-9A-Za-z$=]{8,200}")
_PAM_FILES = ("/etc/pam.d/common-password", "/etc/pam.d/system-auth", "/etc/pam.d/password-auth")

# --------------------------------------------------------------------------- hashing


@functools.cache
def hashers() -> concurrent.futures.ThreadPoolExecutor:
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


def describe_cost(scheme: str, cost: int | None) -> str:
    """The hash's cost in words, for the start's log."""
    if cost is None and scheme == "yescrypt":
        return "N=256 r=8, 256 KiB"
    if scheme == "sha512":
        return f"{cost or CHEAPEST[scheme]} rounds"
    return f"cost {cost or CHEAPEST[scheme]}"


def hash_password(password: str, scheme: str, cost: int | None = None) -> str:
    """A crypt(5) hash of `password` with a fresh random salt (libcrypt, in this process)."""
    prefix = PREFIXES[scheme]
    lib = _libcrypt()
    setting = ctypes.create_string_buffer(256)
    entropy = secrets.token_bytes(16)
    made = lib.crypt_gensalt_rn(prefix, cost or CHEAPEST[scheme], entropy, len(entropy), setting, len(setting))
    if not made:
        raise StepFailed(f"libcrypt cannot make a {scheme} salt: {os.strerror(ctypes.get_errno())}")
    if scheme == "yescrypt" and cost is None and setting.value.startswith(YESCRYPT_COST_1):
        setting.value = YESCRYPT_DEFAULT + setting.value[len(YESCRYPT_COST_1) :]
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


async def wait_for_lock(bound: float = LOCK_WAIT) -> int | None:
    """Wait up to `bound` seconds for the shadow lock to be free; the holder if it is not."""
    deadline = time.monotonic() + bound
    while True:
        holder = lock_holder()
        if holder is None or time.monotonic() >= deadline:
            return holder
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- the tools


async def run_tool(argv: list[str], stdin: bytes | None = None) -> tuple[int, str]:
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
