"""Student passwords: random, and the same every time a job is run again.

A host key of 32 bytes from `secrets` is made once (STATEDIR/password.key, 0600). A job's
password is HMAC-SHA256(key, "job/name") mapped onto letters and digits, so a job that is
run again after a crash sets, renders and reports the very same password without it ever
being stored anywhere: not in the queue, not in the outbox, not in a log. So the key must
never change once a job used it: it is made durably, before the daemon accepts anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import string
from pathlib import Path

from wodmail.durable import sync_folder

ALPHABET = string.ascii_letters + string.digits
LENGTH = 16
KEY_FILE = "password.key"


class PasswordMint:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the password key must be at least 32 bytes")
        self._key = key

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> PasswordMint:
        """Load the host key, making it on first use (`make_key`)."""
        path = state_dir / KEY_FILE
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = make_key(state_dir)
        if len(key) < 32:
            raise ValueError(f"{path} holds {len(key)} bytes, not a key: it was not made by wodmail")
        return cls(key)

    def password(self, job_id: int, name: str) -> str:
        """The password called `name` (e.g. 'student12') of job `job_id`."""
        chars: list[str] = []
        counter = 0
        limit = 256 - 256 % len(ALPHABET)  # unbiased: drop bytes past a multiple of the alphabet
        while len(chars) < LENGTH:
            block = hmac.new(self._key, f"{job_id}/{name}/{counter}".encode(), hashlib.sha256).digest()
            chars.extend(ALPHABET[b % len(ALPHABET)] for b in block if b < limit)
            counter += 1
        return "".join(chars[:LENGTH])


def make_key(state_dir: Path) -> bytes:
    """Make STATEDIR/password.key, whole and durable, unless another process made it first;
    return the key in place.

    The key is written to a temporary file and synced, linked into place, and the folder
    synced, all before the key is used: a crash or a power cut at any point leaves either
    no key (nothing was made with one) or this whole key, never a short or an unsynced one
    that a later run would read differently. A temporary file that a crash leaves behind
    is removed at the next start (`remove_temporaries`).
    """
    path = state_dir / KEY_FILE
    temporary = state_dir / f"{KEY_FILE}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(temporary, path)
        sync_folder(state_dir)
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes()


def remove_temporaries(state_dir: Path) -> list[str]:
    """Remove the temporary key files a crash left in STATEDIR; return their names.

    Only while no other process can be making a key (under the daemon's lock).
    """
    removed = []
    for stale in state_dir.glob(f"{KEY_FILE}.*.tmp"):
        stale.unlink(missing_ok=True)
        removed.append(stale.name)
    return removed
