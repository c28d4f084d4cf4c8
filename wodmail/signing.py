"""Signed commands: who may send a command from anywhere.

A signed command mail carries one header::

    X-Wodmail-Signature: v1; key=<key id>; ts=<unix seconds>; nonce=<random>; sig=<hex>

where `sig` is HMAC-SHA256, under one of the location's SIGNINGKEYS, of::

    wodmail-signature v1 \\n <location name> \\n <ts> \\n <nonce> \\n <Command.canonical()>

(newline-separated, no spaces around them). The canonical command holds the verb, the
student (or range), the customer, the customer's address and the workshop, so changing
any of them breaks the signature; the location name keeps a command signed for staging
from running in production. A signature is refused (550, with the reason) when its key is
unknown, when it does not match, when `ts` is further than SIGNATUREWINDOW seconds from
now (either way), and when its nonce was already used: nonces are kept in the queue
database, in the same transaction as the job they brought, for as long as their
signature could still be accepted.

A key's id is not configured: it is the first 16 hex digits of SHA-256 over a fixed
prefix and the key, so any holder of the key can compute it and nothing about the key
leaks from it. Location keys (checked when the location is loaded: wodmail.location):

    SIGNINGKEYS       at most two keys (the current one first, the next one during a
                      rotation), each given as `env:NAME` or `file:/path`, never in clear;
                      each at least 32 characters. `wodmail send` signs with the first.
    SIGNATUREWINDOW   seconds a signature stays valid, default 300 (30..86400)

`wodmail send` (wodmail/send.py) composes signed mails; `sign` and `signature_text` are
what another client needs to do the same.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wodmail import queue
from wodmail.command import SIGNATURE_HEADER, Command, MailFields
from wodmail.errors import NotPermitted
from wodmail.location import Location, SigningSettings

HEADER = SIGNATURE_HEADER
VERSION = "v1"
DEFAULT_WINDOW = SigningSettings.window
#: How long past its window a nonce is kept anyway (clock changes, a window made larger).
NONCE_MARGIN = 60

_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_TS_RE = re.compile(r"[0-9]{1,12}")
_SIG_RE = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("key", "ts", "nonce", "sig")


def key_id(secret: bytes) -> str:
    """The public id of a signing key: 16 hex digits that reveal nothing of the key."""
    return hashlib.sha256(b"wodmail signing key id\x00" + secret).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """One of the location's SIGNINGKEYS."""

    id: str
    secret: bytes = field(repr=False)

    @classmethod
    def from_text(cls, text: str) -> SigningKey:
        secret = text.encode("utf-8")
        return cls(key_id(secret), secret)


@dataclass(frozen=True)
class Signature:
    """The parsed value of an X-Wodmail-Signature header."""

    key_id: str
    timestamp: int
    nonce: str
    sig: str

    @property
    def header_value(self) -> str:
        return f"{VERSION}; key={self.key_id}; ts={self.timestamp}; nonce={self.nonce}; sig={self.sig}"

    @classmethod
    def parse(cls, value: str) -> Signature:
        """Parse a header value strictly; raise `NotPermitted` saying what is wrong with it."""
        parts = [part.strip() for part in value.split(";")]
        if not parts or parts[0] != VERSION:
            shown = parts[0][:20] if parts else ""
            raise NotPermitted(f"signature version {shown!r} is not supported (expected {VERSION})")
        found: dict[str, str] = {}
        for part in parts[1:]:
            name, eq, text = part.partition("=")
            name = name.strip().lower()
            if not eq or name not in _FIELDS:
                raise NotPermitted(f"signature header is malformed: unexpected {part[:30]!r}")
            if name in found:
                raise NotPermitted(f"signature header is malformed: {name}= given twice")
            found[name] = text.strip()
        missing = [name for name in _FIELDS if name not in found]
        if missing:
            raise NotPermitted("signature header is malformed: missing " + ", ".join(f"{m}=" for m in missing))
        if not _KEY_ID_RE.fullmatch(found["key"]):
            raise NotPermitted("signature header is malformed: key= is not a 16-hex-digit key id")
        if not _TS_RE.fullmatch(found["ts"]):
            raise NotPermitted("signature header is malformed: ts= is not a Unix time in seconds")
        if not _NONCE_RE.fullmatch(found["nonce"]):
            raise NotPermitted("signature header is malformed: nonce= is not 16 to 128 of [A-Za-z0-9_-]")
        if not _SIG_RE.fullmatch(found["sig"]):
            raise NotPermitted("signature header is malformed: sig= is not 64 lower-case hex digits")
        return cls(found["key"], int(found["ts"]), found["nonce"], found["sig"])


def signature_text(command: Command, location_name: str, timestamp: int, nonce: str) -> bytes:
    """The bytes a signature covers."""
    return "\n".join(
        ("wodmail-signature " + VERSION, location_name, str(timestamp), nonce, command.canonical())
    ).encode("utf-8")


def _mac(key: SigningKey, text: bytes) -> str:
    return hmac.new(key.secret, text, hashlib.sha256).hexdigest()


def sign(
    command: Command,
    location_name: str,
    key: SigningKey,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> Signature:
    """Sign `command` for the location called `location_name` (its file's stem)."""
    ts = int(time.time()) if timestamp is None else timestamp
    once = secrets.token_urlsafe(18) if nonce is None else nonce
    return Signature(key.id, ts, once, _mac(key, signature_text(command, location_name, ts, once)))


def signature_of(fields: MailFields) -> str | None:
    """The X-Wodmail-Signature of a mail's fields, or None; refuses several or an unreadable one."""
    if not fields.signatures:
        return None
    if len(fields.signatures) > 1:
        raise NotPermitted(f"the mail has {len(fields.signatures)} {HEADER} headers: a signed command has one")
    if not fields.signatures[0]:
        raise NotPermitted(f"unreadable {HEADER} header")
    return fields.signatures[0]


@dataclass(frozen=True)
class Verified:
    """A signature that matched: which key, and the nonce to remember."""

    key_id: str
    timestamp: int
    nonce: str

    @property
    def auth(self) -> str:
        return f"signed with key {self.key_id}"


class Signatures:
    """The location's signing keys and window: verifies signatures, remembers nonces."""

    def __init__(self, location_name: str, keys: tuple[SigningKey, ...], window: int = DEFAULT_WINDOW) -> None:
        self.location_name = location_name
        self.keys = keys
        self.window = window
        self._by_id = {key.id: key for key in keys}

    @classmethod
    def from_location(cls, location: Location) -> Signatures:
        """The location's SIGNINGKEYS and SIGNATUREWINDOW (checked when it was loaded)."""
        keys = tuple(SigningKey.from_text(text) for text in location.signing.keys)
        return cls(location.name, keys, location.signing.window)

    def verify(self, value: str, command: Command, now: float | None = None) -> Verified:
        """Check a signature header value against `command`; raise `NotPermitted` with the reason."""
        if not self.keys:
            raise NotPermitted(f"signed commands are not accepted: location {self.location_name} has no SIGNINGKEYS")
        signature = Signature.parse(value)
        key = self._by_id.get(signature.key_id)
        if key is None:
            raise NotPermitted(f"signature key {signature.key_id} is not one of this location's SIGNINGKEYS")
        expected = _mac(key, signature_text(command, self.location_name, signature.timestamp, signature.nonce))
        if not hmac.compare_digest(expected, signature.sig):
            raise NotPermitted(
                f"signature does not match the command (altered, signed with another key, "
                f"or signed for another location than {self.location_name})"
            )
        age = int(time.time() if now is None else now) - signature.timestamp
        if age > self.window:
            raise NotPermitted(f"signature is stale: signed {age} s ago, more than SIGNATUREWINDOW {self.window} s")
        if -age > self.window:
            raise NotPermitted(
                f"signature is from the future: dated {-age} s ahead, more than SIGNATUREWINDOW {self.window} s"
            )
        return Verified(key.id, signature.timestamp, signature.nonce)

    def enqueue_once(
        self, verified: Verified, store: Callable[[sqlite3.Connection], Any]
    ) -> Callable[[sqlite3.Connection], Any]:
        """`store` (the job's insert), run only if the nonce is new, which is then recorded in
        the same transaction; a used nonce raises `NotPermitted` and nothing is stored."""

        def run(conn: sqlite3.Connection) -> Any:
            queue.forget_nonces_before(conn, time.time() - self.window - NONCE_MARGIN)
            row = queue.find_nonce(conn, verified.nonce)
            if row is not None:
                used = f" (by job {row[0]})" if row[0] is not None else ""
                raise NotPermitted(f"signature replayed: its nonce was already used{used}")
            result = store(conn)
            if getattr(result, "refused", None) is not None:
                return result  # refused for now (a drained workshop): the same mail may come again
            queue.use_nonce(conn, verified.nonce, verified.key_id, verified.timestamp, getattr(result, "job_id", None))
            return result

        return run
