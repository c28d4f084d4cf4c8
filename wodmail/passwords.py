"""Student passwords: random, and the same every time a job is run again.

A host key of 32 bytes from `secrets` is made once (STATEDIR/password.key, 0600). A job's
password is HMAC-SHA256(key, "job/name") mapped onto letters and digits, so a job that is
run again after a crash sets, renders and reports the very same password without it ever
being stored anywhere: not in the queue, not in the outbox, not in a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import string
from pathlib import Path

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
        """Load the host key, making it on first use.

        The key appears whole or not at all (written to a temporary file, synced, then
        linked into place), so a full disk or a crash never leaves a short key behind.
        """
        path = state_dir / KEY_FILE
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            pass
        temporary = state_dir / f"{KEY_FILE}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return cls(path.read_bytes())

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
