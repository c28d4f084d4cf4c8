"""Replies: one mail back for each signed command and each command from the admin socket.

Who gets one (`reply_address`, decided at the door, once the sender is authenticated):

- a command from the admin socket (`wodmail send` as root): the local user the kernel
  named (SO_PEERCRED), as `user@<this host's name>`;
- a signed command (X-Wodmail-Signature that matched): the first address of its
  `Reply-To`, else of its `From` (the signature covers the command, not these headers: a
  reply holds nothing secret, see below);
- nobody else: the registration app's unsigned commands (legacy door, TRUSTEDPEERS,
  TRUSTEDSENDERS, SMTP AUTH, `deliver`) never get one, and without RELAYHOST nothing does.

Never a loop (RFC 3834): no reply to a mail with `Auto-Submitted` (other than `no`),
`Precedence: bulk | list | junk`, a `List-Id`, our own `X-Wodmail-Reply`, a sender like
MAILER-DAEMON, or an empty return path (a bounce; the admin socket, whose envelope is
`wodmail send`'s own, excepted). Every reply is marked `Auto-Submitted: auto-replied`
and `X-Wodmail-Reply`, and leaves with an empty envelope sender, so that no responder
answers it and no bounce comes back.

What a reply says: for a command taken, once its job ended (done, failed, held or
cancelled) its state, outcome or error, each step with its result and each callback (a
password field shown as ********: a CREATE's password goes to the registration app only,
it is never stored, and never in a reply); for a command refused after its sender was
authenticated, the refusal (a temporary one, 4xx, is not answered: the sender's side tries
again and that try is answered). One reply per command: the job's reply is queued once,
in the same transaction that marks it sent (`wodmail.queue.replies`).

Replies leave like the app's mails for people: through the relay table to RELAYHOST
(wodmail.relay), durably, retried until the MTA takes them. `Replier` runs in the jobs
process and queues the replies of the jobs that ended; a refusal's reply is queued by the
door with the refusal's record.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import functools
import logging
import pwd
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

from wodmail import queue
from wodmail.errors import TryLater
from wodmail.inbound import InboundMail
from wodmail.location import Location
from wodmail.queue import Job
from wodmail.reports import job_report
from wodmail.wakeups import wait_for_wake

log = logging.getLogger(__name__)

#: The header our replies carry (with the job's id): a mail that has it is never answered.
MARK_HEADER = "X-Wodmail-Reply"
#: The door a reply enters the relay table by (`wodmail relay` shows it).
REPLY_DOOR = "reply"
#: Precedence values of mail no one answers.
_BULK = frozenset({"bulk", "list", "junk"})
#: Senders that are mail systems, not people (bounces, notices).
_SYSTEM_SENDERS = re.compile(r"(mailer-daemon|postmaster|no-?reply|do-?not-?reply)@", re.IGNORECASE)
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")
#: Characters of a header value read here (longer ones are cut: nothing here needs more).
_FIELD_LIMIT = 998
#: How often the replier looks for ended jobs when nothing woke it.
POLL_INTERVAL = 2.0
#: Replies queued per pass.
BATCH = 100


@dataclass(frozen=True)
class Origin:
    """The header fields of a command mail that decide whether and where to reply."""

    subject: str = ""
    message_id: str | None = None
    sender: str = ""
    """From."""
    reply_to: str = ""
    auto_submitted: str = ""
    precedence: str = ""
    list_id: str = ""
    marked: bool = False
    """It carries X-Wodmail-Reply: it is one of our replies."""

    @classmethod
    def of(cls, data: bytes) -> Origin:
        """Read the fields, as raw text (compat32: linear time, whatever a header holds)."""
        try:
            message = BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
        except Exception:  # noqa: BLE001 - an unreadable mail gets no reply
            return cls(auto_submitted="unreadable")

        def field(name: str) -> str:
            value = message.get(name)
            if value is None:
                return ""
            text = str(value) if not isinstance(value, str) else value
            return " ".join(text[:_FIELD_LIMIT].split())

        message_id = _MESSAGE_ID.search(field("Message-ID"))
        return cls(
            subject=field("Subject"),
            message_id=message_id.group(0) if message_id else None,
            sender=field("From"),
            reply_to=field("Reply-To"),
            auto_submitted=field("Auto-Submitted"),
            precedence=field("Precedence"),
            list_id=field("List-Id"),
            marked=message.get(MARK_HEADER) is not None,
        )

    def loop_risk(self) -> str | None:
        """Why answering this mail could start a loop, or None."""
        if self.marked:
            return f"it is a reply of ours ({MARK_HEADER})"
        if self.auto_submitted and self.auto_submitted.lower() != "no":
            return f"Auto-Submitted: {self.auto_submitted[:40]}"
        if self.precedence.lower() in _BULK:
            return f"Precedence: {self.precedence}"
        if self.list_id:
            return "it came through a mailing list (List-Id)"
        if _SYSTEM_SENDERS.search(self.sender):
            return "its sender is a mail system"
        return None


def plain_address(address: str) -> bool:
    """An address a reply can go to as it is: local@domain, printable, no space or <>."""
    local, at, domain = address.rpartition("@")
    return (
        bool(at and local and domain)
        and len(address) <= 254
        and all(ch.isprintable() and not ch.isspace() and ch not in "<>\"'\\,;" for ch in address)
    )


def first_address(value: str) -> str | None:
    for _name, address in email.utils.getaddresses([value]):
        if plain_address(address):
            return address
    return None


@functools.cache
def host_name() -> str:
    """This host's name in replies (From, Message-ID, the admin's address); looked up once."""
    return socket.getfqdn() or "localhost"


def admin_address(uid: int) -> str | None:
    """The local user `uid` as an address on this host, e.g. root@jupyter3.example.com."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
    address = f"{name}@{host_name()}"
    return address if plain_address(address) else None


def reply_address(mail: InboundMail, origin: Origin, location: Location) -> tuple[str | None, str]:
    """Where the reply to an authenticated command goes (see the module's docstring), and
    why there is none when there is none. The caller has authenticated the sender: the
    admin socket's user, or a signature that matched."""
    if not location.relay.host:
        return None, "no RELAYHOST to send replies through"
    risk = origin.loop_risk()
    if risk is not None:
        return None, risk
    if mail.door == "admin":
        client = mail.local_client
        address = admin_address(client.uid) if client is not None and client.uid is not None else None
        return address, "" if address else "the admin's user has no name"
    if mail.mail_from in ("", "<>"):  # aiosmtpd gives MAIL FROM:<> as "<>"
        return None, "an empty return path (a bounce)"
    address = first_address(origin.reply_to) or first_address(origin.sender)
    return address, "" if address else "no usable Reply-To or From address"


def _message(location: Location, to: str, subject: str, in_reply_to: str | None, mark: str, body: str) -> EmailMessage:
    message = EmailMessage()
    sender = location.relay.reply_from or f"wodmail@{host_name()}"
    message["From"] = email.utils.formataddr((f"wodmail ({location.name})", sender))
    message["To"] = to
    message["Subject"] = subject[:200]
    message["Date"] = email.utils.formatdate(localtime=True)
    message["Message-ID"] = email.utils.make_msgid("wodmail", domain=host_name())
    if in_reply_to is not None and _MESSAGE_ID.fullmatch(in_reply_to):
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message[MARK_HEADER] = mark
    message.set_content(body)
    return message


def as_relayed(message: EmailMessage, to: str) -> InboundMail:
    """A reply as the relay table keeps it: an empty envelope sender (RFC 3834), one recipient."""
    data = message.as_bytes(policy=email.policy.SMTP)
    return InboundMail(door=REPLY_DOOR, peer=None, mail_from="", data=data, rcpt_tos=(to,))


def job_reply(location: Location, job: Job, report: list[str]) -> InboundMail:
    """The reply to a job that ended: `report` is its description (wodmail.reports.job_report)."""
    assert job.reply_to is not None
    command = job.command
    subject = f"Re: {command.label} [job {job.id} {job.state}]"
    lead = {
        "done": "Your command ran.",
        "failed": "Your command failed: see its error and steps below (`wodmail retry` runs it again).",
        "held": "Your command was set aside after it interrupted the jobs process; an operator must look.",
        "cancelled": "Your command was cancelled before it ran.",
    }.get(job.state, f"Your command is {job.state}.")
    body = "\n".join([lead, "", *report, "", f"-- wodmail on {location.name} ({host_name()})"]) + "\n"
    message = _message(location, job.reply_to, subject, command.message_id, f"job {job.id}", body)
    return as_relayed(message, job.reply_to)


def refusal_reply(location: Location, to: str, origin: Origin, code: int, reason: str) -> InboundMail:
    """The reply to a command refused at the door after its sender was authenticated."""
    subject = f"Re: {origin.subject or 'your command'} [refused]"
    body = (
        f"Your command was refused: {code} {reason}\n\nNothing was queued: correct the command and send it"
        f" again. HELP lists the verbs and the workshops of this host.\n\n-- wodmail on {location.name}"
        f" ({host_name()})\n"
    )
    return as_relayed(_message(location, to, subject, origin.message_id, "refused", body), to)


class Replier:
    """In the jobs process: queues the reply of every job that ended and is owed one (a
    reply address, no reply yet), each in one transaction with the mark that it was sent;
    `on_queued` wakes the relay."""

    def __init__(self, db_path: Path, writer: queue.Writer, location: Location, on_queued: Callable[[], None]) -> None:
        self._reader = queue.connect(db_path)
        self._writer = writer
        self._location = location
        self._on_queued = on_queued
        self._wake = asyncio.Event()
        self.queued = 0

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._reader.close()

    async def run(self) -> None:
        """Queue replies until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.queue_owed()
            except (sqlite3.Error, TryLater) as exc:
                log.warning("cannot queue replies now: %s", exc)
            except Exception:  # the loop's boundary: the next pass tries again, the jobs go on
                log.exception("queueing replies failed")
            await wait_for_wake(self._wake, POLL_INTERVAL)

    async def queue_owed(self) -> int:
        """Queue the replies owed now; how many."""
        count = 0
        for job in queue.jobs_owed_reply(self._reader, BATCH):
            report = job_report(self._reader, job, time.time())
            relay_id = await self._writer.run(queue.reply_queued(job.id, job_reply(self._location, job, report)))
            if relay_id is not None:
                log.info("job %d: reply queued as relay mail %d", job.id, relay_id)
                count += 1
        if count:
            self.queued += count
            self._on_queued()
        return count
