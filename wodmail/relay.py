"""Relaying: the mails for people that the registration app sends through our doors.

When the registration app has no mail service of its own (no SendGrid key) it sends every
mail meant for a person (welcome, credentials with the password, expiring, expired,
deployment issue, badge) through the backend's SMTP port, with the same crude client as its
commands. The intake (wodmail.intake) takes such a mail when it is not a command and comes
from a peer allowed to send commands there (LEGACYPEERS on the legacy door; TRUSTEDPEERS and
TRUSTEDSENDERS, or SMTP AUTH, on the standard door): it commits it to the queue's relay
table and answers 250 only then. Without RELAYHOST it is refused as any non-command mail.

`MailRelay` runs in the jobs process (wodmail.jobs) beside the worker: it
passes each such mail to the site's MTA at RELAYHOST with Python's smtplib (in a thread),
the envelope as it was given (MAIL FROM, every RCPT TO), the content as it was received
with one trace header (`Received:`) on top. A try that fails for a reason that may pass
(the MTA down or answering 4xx) is tried again with capped exponential backoff
(wodmail.backoff), for as long as it takes: nothing is dropped. A mail the MTA keeps
refusing (5xx) MAX_REJECTIONS times is set aside as failed; `wodmail relay` lists every
mail not yet passed on, and `wodmail relay retry ID` sends a set-aside one again.

Once the MTA took a mail its content is erased from the queue (the credentials mail holds
a password); the record (who, when, size) stays, and is forgotten with the done jobs. No
log line carries content or addresses: a mail's id, its size, its peer and the MTA's reply
code only.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import smtplib
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from wodmail import queue
from wodmail.backoff import backoff
from wodmail.errors import TryLater
from wodmail.location.parts import RelaySettings
from wodmail.queue import RelayEntry
from wodmail.wakeups import wait_for_wake

log = logging.getLogger(__name__)

#: Mails passed to the MTA at once (each on its own connection).
CONCURRENCY = 4
#: How often the relay looks for mails another process put back (`wodmail relay retry`).
POLL_INTERVAL = 2.0
#: The first wait after a failed try; it doubles up to RELAYBACKOFFMAX, with jitter.
FIRST_BACKOFF = 1.0
BACKOFF_JITTER = 0.5
#: Times the MTA may refuse a mail for good (5xx) before it is set aside for an operator.
MAX_REJECTIONS = 3
#: Seconds an SMTP dialogue with the MTA may take per operation.
TIMEOUT = 60.0


@dataclass(frozen=True)
class Outcome:
    """How one try ended: `sent`, or not, and whether trying again may help."""

    sent: bool
    transient: bool = True
    error: str = ""
    """The MTA's reply or the connection's error, for the operator (never logged whole)."""
    code: int | None = None


def trace_header(entry: RelayEntry, hostname: str) -> bytes:
    """The `Received:` line a relay adds on top (RFC 5321 4.4), ending as the mail's lines do."""
    peer = f"[{entry.peer}]" if entry.peer else "localhost"
    date = email.utils.formatdate(entry.received, localtime=True)
    line = f"Received: from {peer} by {hostname} (wodmail, {entry.door} door) id relay-{entry.id}; {date}"
    return line.encode("ascii", "replace") + (b"\r\n" if b"\r\n" in entry.mail[:1000] else b"\n")


def send_mail(settings: RelaySettings, hostname: str, entry: RelayEntry) -> Outcome:
    """One try: pass `entry` to the MTA with smtplib. Blocking: run it in a thread."""
    assert settings.host is not None
    data = trace_header(entry, hostname) + entry.mail
    addresses = [entry.sender, *entry.recipients]
    options: list[str] = []
    try:
        with smtplib.SMTP(settings.host, settings.port, local_hostname=hostname, timeout=TIMEOUT) as client:
            client.ehlo_or_helo_if_needed()
            if not data.isascii() and client.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            if not all(address.isascii() for address in addresses):
                if not client.has_extn("smtputf8"):
                    return Outcome(False, False, "an address is not ASCII and the MTA does not offer SMTPUTF8")
                options.append("SMTPUTF8")
            refused = client.sendmail(entry.sender, list(entry.recipients), data, mail_options=options)
            client.quit()
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _text in exc.recipients.values()]
        shown = "; ".join(f"{code} {_text(text)}" for code, text in exc.recipients.values())
        transient = any(400 <= code < 500 for code in codes)
        return Outcome(False, transient, f"every recipient refused: {shown}", min(codes, default=None))
    except smtplib.SMTPResponseException as exc:
        code = exc.smtp_code
        error = f"{type(exc).__name__}: {code} {_text(exc.smtp_error)}"
        return Outcome(False, not 500 <= code < 600, error, code)
    except (OSError, smtplib.SMTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return Outcome(False, True, f"cannot reach the MTA at {settings.where}: {reason}")
    if refused:
        shown = "; ".join(f"{code} {_text(text)}" for code, text in refused.values())
        return Outcome(True, error=f"{len(refused)} of {len(entry.recipients)} recipients refused: {shown}")
    return Outcome(True)


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())[:300]


class MailRelay:
    """Passes the queue's relayed mails to RELAYHOST, at most CONCURRENCY at once, each
    until the MTA takes it (or refuses it MAX_REJECTIONS times)."""

    def __init__(self, db_path: Path, writer: queue.Writer, settings: RelaySettings) -> None:
        self._reader = queue.connect(db_path)
        self._writer = writer
        self._settings = settings
        self._hostname = socket.getfqdn() or "localhost"
        self._wake = asyncio.Event()
        self._sending: dict[int, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._reader.close()

    @property
    def idle(self) -> bool:
        return not self._sending

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        """Pass mails on until cancelled."""
        try:
            while True:
                self._wake.clear()
                now = time.time()
                next_due = self._start_due(now)
                timeout = POLL_INTERVAL if next_due is None else min(POLL_INTERVAL, next_due - now)
                await wait_for_wake(self._wake, max(0.01, timeout))
        finally:
            for task in self._sending.values():
                task.cancel()

    def _start_due(self, now: float) -> float | None:
        """Start the mails that are due (a read of the WAL); when the next one is due."""
        room = CONCURRENCY - len(self._sending)
        if room <= 0:
            return None
        try:
            due = queue.due_relay_mails(self._reader, now, exclude=tuple(self._sending), limit=room)
            next_due = queue.next_relay_attempt(self._reader, exclude=tuple(self._sending))
        except sqlite3.Error as exc:
            log.warning("cannot read the relay queue: %s", exc)
            return None
        for entry in due:
            self._idle.clear()
            self._sending[entry.id] = asyncio.create_task(self._deliver(entry), name=f"relay-{entry.id}")
        return next_due

    async def _deliver(self, entry: RelayEntry) -> None:
        try:
            outcome = await asyncio.to_thread(send_mail, self._settings, self._hostname, entry)
            await self._record(entry, outcome)
        except TryLater as exc:
            log.error("relay %d: cannot record the outcome: %s", entry.id, exc)
        finally:
            del self._sending[entry.id]
            if not self._sending:
                self._idle.set()
            self._wake.set()

    async def _record(self, entry: RelayEntry, outcome: Outcome) -> None:
        tries = entry.attempts + 1
        if outcome.sent:
            await self._writer.run(queue.relay_sent(entry.id, outcome.error or None))
            self.sent += 1
            log.info(
                "relay %d: passed to %s: %d bytes, %d recipient(s), from %s, %.3f s after receipt%s",
                entry.id,
                self._settings.where,
                entry.size,
                len(entry.recipients),
                entry.peer or "this host",
                time.time() - entry.received,
                "; some recipients refused (wodmail relay)" if outcome.error else "",
            )
            return
        rejections = entry.rejections + (0 if outcome.transient else 1)
        if rejections >= MAX_REJECTIONS:
            await self._writer.run(queue.relay_failed(entry.id, None, outcome.error, rejected=True))
            log.warning(
                "relay %d: set aside after %d refusals by %s (%s); see wodmail relay",
                entry.id,
                rejections,
                self._settings.where,
                outcome.code,
            )
            return
        cap = self._settings.backoff_max
        retry_at = time.time() + backoff(tries, first=min(FIRST_BACKOFF, cap), cap=cap, jitter=BACKOFF_JITTER)
        await self._writer.run(queue.relay_failed(entry.id, retry_at, outcome.error, rejected=not outcome.transient))
        log.info(
            "relay %d: not passed to %s (%s), try %d; next in %.1f s",
            entry.id,
            self._settings.where,
            outcome.code or "no answer",
            tries,
            retry_at - time.time(),
        )
