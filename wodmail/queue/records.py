"""What the queue holds, as the rest of wodmail sees it: jobs, their steps, callbacks, and
the mails relayed to the site's MTA."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wodmail.command import Command

JOB_STATES = ("queued", "running", "done", "failed", "held", "cancelled")
"""Every state a job can be in (the package's docstring draws how one leads to another)."""


@dataclass(frozen=True)
class Callback:
    """One call to the registration app, kept in the outbox until it is delivered.

    A secret value (a student's password) is never stored: `secret_field` names the body
    key to fill at delivery time with the job's password called `secret_name`.
    """

    method: str
    path: str
    body: dict[str, str]
    secret_field: str | None = None
    secret_name: str | None = None


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    duplicate: bool
    cancelled: tuple[int, ...] = ()
    """The queued jobs this one superseded (wodmail.appdeadline), cancelled in its transaction."""
    refused: str | None = None
    """Why nothing was queued and the mail was recorded as refused (451: its workshop is
    drained); None: queued (or a copy)."""


@dataclass(frozen=True)
class Job:
    id: int
    command: Command
    state: str
    received: float
    attempts: int
    crashes: int
    retries: int
    not_before: float
    error: str | None = None
    outcome: str | None = None
    door: str = ""
    peer: str | None = None
    sender: str | None = None
    started: float | None = None
    finished: float | None = None
    deadline: float | None = None
    """When the registration app gives up on it (APPDEADLINE after its arrival; CREATE only)."""
    reply_to: str | None = None
    """Where its reply goes when it ends (wodmail.replies); None: it gets none."""
    reply_id: int | None = None
    """The relayed mail that carries its reply, once queued."""


@dataclass(frozen=True)
class Step:
    name: str
    state: str
    started: float
    finished: float | None
    attempts: int
    result: Any
    error: str | None


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    job_id: int
    student: int
    method: str
    path: str
    body: dict[str, str]
    secret_field: str | None
    secret_name: str | None
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    created: float
    delivered: float | None
    expires: float | None = None
    """An activating callback is never sent after this (its job's deadline); None: no limit."""

    def shown_body(self) -> dict[str, str]:
        """The body as an operator sees it (replies, `jobs show`, `outbox`): the secret the
        outbox fills in at delivery shown as ********."""
        body = dict(self.body)
        if self.secret_field:
            body[self.secret_field] = "********"
        return body


JOB_COLUMNS = (
    "id, command, state, received, attempts, crashes, retries, not_before, error, outcome, door, peer,"
    " sender, started, finished, deadline, reply_to, reply_id"
)


def job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        command=Command.from_json(row[1]),
        state=row[2],
        received=row[3],
        attempts=row[4],
        crashes=row[5],
        retries=row[6],
        not_before=row[7],
        error=row[8],
        outcome=row[9],
        door=row[10],
        peer=row[11],
        sender=row[12],
        started=row[13],
        finished=row[14],
        deadline=row[15],
        reply_to=row[16],
        reply_id=row[17],
    )


@dataclass(frozen=True)
class Drain:
    """A drained workshop (DRAIN): its CREATEs are refused until RESUME."""

    workshop: str
    """A workshop's name, or '*' (ALL_WORKSHOPS, wodmail.queue.drains): every workshop."""
    since: float
    by: str
    """Who drained it: the job and how its command was trusted, or the command line's user."""

    def refusal(self, workshop: str) -> str:
        """The 451's text for a CREATE for `workshop` while this drain holds."""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        every = " with every workshop (DRAIN all)" if self.workshop == "*" else ""
        return (
            f"{workshop} is drained{every} since {since} by {self.by}: no CREATE for it is taken until"
            " RESUME; try again later"
        )


OUTBOX_COLUMNS = (
    "id, job_id, student, method, path, body, secret_field, secret_name, state, attempts, next_attempt,"
    " last_error, created, delivered, expires"
)


def outbox_from_row(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(
        id=row[0],
        job_id=row[1],
        student=row[2],
        method=row[3],
        path=row[4],
        body=json.loads(row[5]),
        secret_field=row[6],
        secret_name=row[7],
        state=row[8],
        attempts=row[9],
        next_attempt=row[10],
        last_error=row[11],
        created=row[12],
        delivered=row[13],
        expires=row[14],
    )


@dataclass(frozen=True)
class RelayEntry:
    """A mail for a person, kept until the site's MTA (RELAYHOST) takes it (wodmail.relay)."""

    id: int
    received: float
    door: str
    peer: str | None
    auth: str
    """How the sender was allowed, as for a command ('legacy peer 10.0.0.5', ...)."""
    sender: str
    recipients: tuple[str, ...]
    size: int
    state: str
    """pending, sent (the MTA took it) or failed (refused MAX_REJECTIONS times: set aside)."""
    attempts: int
    rejections: int
    next_attempt: float
    last_error: str | None
    sent: float | None
    mail: bytes = b""
    """The content as received (read only to send it; erased once sent)."""


RELAY_COLUMNS = (
    "id, received, door, peer, auth, sender, recipients, size, state, attempts, rejections, next_attempt,"
    " last_error, sent"
)


def relay_from_row(row: Sequence[Any]) -> RelayEntry:
    """A row of RELAY_COLUMNS, maybe followed by the mail."""
    return RelayEntry(
        id=row[0],
        received=row[1],
        door=row[2],
        peer=row[3],
        auth=row[4],
        sender=row[5],
        recipients=tuple(json.loads(row[6])),
        size=row[7],
        state=row[8],
        attempts=row[9],
        rejections=row[10],
        next_attempt=row[11],
        last_error=row[12],
        sent=row[13],
        mail=bytes(row[14]) if len(row) > 14 and row[14] is not None else b"",
    )
