"""What the queue says about the service, read at once for the metrics and the status page
(wodmail.metrics, wodmail.statuspage): a handful of grouped reads, nothing per command.

A student is *active* when their last CREATE that ended done is not followed by a CLEANUP,
RESET or PURGE touching them (in any state but cancelled): they have a workshop deployed.
A *registration* is a CREATE the queue holds (done jobs are kept JOBKEEPDAYS).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field, replace

from wodmail.queue.records import (
    JOB_COLUMNS,
    JOB_STATES,
    OUTBOX_COLUMNS,
    RELAY_COLUMNS,
    Job,
    OutboxEntry,
    RelayEntry,
    job_from_row,
    outbox_from_row,
    relay_from_row,
)

DAY = 86400


@dataclass(frozen=True)
class QueueStatus:
    """The queue's figures at one moment (`read_status`)."""

    read_at: float
    jobs: dict[str, int]
    """Jobs by state, every state of JOB_STATES present."""
    jobs_by_verb: dict[tuple[str, str], int]
    """(verb, state) -> jobs."""
    callbacks: dict[str, int]
    """Outbox entries by state (pending: waiting to be delivered)."""
    relay: dict[str, int]
    """Relayed mails by state."""
    refused: dict[str, int]
    """Refused mails kept, by door."""
    oldest_waiting: float | None
    """When the queued job waiting longest arrived."""
    active: dict[str, int]
    """Workshop -> students active in it."""
    failed_jobs: list[Job] = field(default_factory=list)
    """Failed and set-aside (held) jobs, newest first (only with `history`)."""
    failed_callbacks: list[OutboxEntry] = field(default_factory=list)
    """Callbacks set aside after the app refused them, newest first (only with `history`)."""
    failed_relay: list[RelayEntry] = field(default_factory=list)
    """Relayed mails the MTA refused for good, newest first (only with `history`)."""
    registrations_by_day: list[tuple[int, int]] = field(default_factory=list)
    """(day since the epoch, CREATEs received that UTC day), for the last days (only with `history`)."""
    registrations_by_workshop: dict[str, int] = field(default_factory=dict)
    registrations: int = 0
    customers: int = 0
    """Distinct customers of those registrations."""
    first_registration: float | None = None

    @property
    def active_students(self) -> int:
        return sum(self.active.values())

    @property
    def needing_operator(self) -> int:
        """Failed and held jobs, callbacks and relayed mails set aside."""
        return (
            self.jobs.get("failed", 0)
            + self.jobs.get("held", 0)
            + self.callbacks.get("failed", 0)
            + self.relay.get("failed", 0)
        )


def read_status(conn: sqlite3.Connection, *, history: bool = False, days: int = 30, limit: int = 50) -> QueueStatus:
    """The queue's figures in one read transaction; with `history` also the registrations of
    the last `days` days and up to `limit` of each kind of failure."""
    conn.execute("BEGIN")
    try:
        now = time.time()
        by_verb: dict[tuple[str, str], int] = {
            (verb, state): count
            for verb, state, count in conn.execute("SELECT verb, state, count(*) FROM jobs GROUP BY verb, state")
        }
        jobs = dict.fromkeys(JOB_STATES, 0)
        for (_verb, state), count in by_verb.items():
            jobs[state] = jobs.get(state, 0) + count
        (oldest,) = conn.execute("SELECT min(received) FROM jobs WHERE state = 'queued'").fetchone()
        status = QueueStatus(
            read_at=now,
            jobs=jobs,
            jobs_by_verb=by_verb,
            callbacks=_grouped(conn, "SELECT state, count(*) FROM outbox GROUP BY state"),
            relay=_grouped(conn, "SELECT state, count(*) FROM relay GROUP BY state"),
            refused=_grouped(conn, "SELECT door, count(*) FROM refused GROUP BY door"),
            oldest_waiting=oldest,
            active=_active(conn),
        )
        if history:
            status = _with_history(conn, status, now - days * DAY, limit)
    finally:
        conn.execute("COMMIT")
    return status


def _grouped(conn: sqlite3.Connection, sql: str) -> dict[str, int]:
    return {str(key): count for key, count in conn.execute(sql)}


def _active(conn: sqlite3.Connection) -> dict[str, int]:
    ended: dict[int, int] = {}  # student -> the last job that ended their workshop
    for first, last, job_id in conn.execute(
        "SELECT stdid, last_stdid, max(id) FROM jobs WHERE verb != 'CREATE' AND state != 'cancelled'"
        " GROUP BY stdid, last_stdid"
    ):
        for stdid in range(first, last + 1):
            if ended.get(stdid, 0) < job_id:
                ended[stdid] = job_id
    active: dict[str, int] = {}
    for stdid, job_id, workshop in conn.execute(
        "SELECT stdid, id, json_extract(command, '$.workshop') FROM jobs WHERE id IN"
        " (SELECT max(id) FROM jobs WHERE verb = 'CREATE' AND state = 'done' GROUP BY stdid)"
    ):
        if job_id > ended.get(stdid, 0):
            name = str(workshop or "-")
            active[name] = active.get(name, 0) + 1
    return active


def _with_history(conn: sqlite3.Connection, status: QueueStatus, since: float, limit: int) -> QueueStatus:
    failed_jobs = [
        job_from_row(row)
        for row in conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('failed', 'held') ORDER BY id DESC LIMIT ?", (limit,)
        )
    ]
    failed_callbacks = [
        outbox_from_row(row)
        for row in conn.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = 'failed' ORDER BY id DESC LIMIT ?", (limit,)
        )
    ]
    failed_relay = [
        relay_from_row(row)
        for row in conn.execute(
            f"SELECT {RELAY_COLUMNS} FROM relay WHERE state = 'failed' ORDER BY id DESC LIMIT ?", (limit,)
        )
    ]
    by_day = conn.execute(
        "SELECT CAST(received / ? AS INTEGER) AS day, count(*) FROM jobs WHERE verb = 'CREATE' AND received >= ?"
        " GROUP BY day ORDER BY day",
        (DAY, since),
    ).fetchall()
    by_workshop = _grouped(
        conn, "SELECT json_extract(command, '$.workshop'), count(*) FROM jobs WHERE verb = 'CREATE' GROUP BY 1"
    )
    registrations, customers, first = conn.execute(
        "SELECT count(*), count(DISTINCT json_extract(command, '$.customer')), min(received) FROM jobs"
        " WHERE verb = 'CREATE'"
    ).fetchone()
    return replace(
        status,
        failed_jobs=failed_jobs,
        failed_callbacks=failed_callbacks,
        failed_relay=failed_relay,
        registrations_by_day=[(int(day), int(count)) for day, count in by_day],
        registrations_by_workshop=by_workshop,
        registrations=registrations,
        customers=customers,
        first_registration=first,
    )
