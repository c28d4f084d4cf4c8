"""Reading the queue (any connection: the daemon's, or an operator's command)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from wodmail.queue.records import (
    JOB_COLUMNS,
    OUTBOX_COLUMNS,
    RELAY_COLUMNS,
    Job,
    OutboxEntry,
    RelayEntry,
    Step,
    job_from_row,
    outbox_from_row,
    relay_from_row,
)


def open_jobs(conn: sqlite3.Connection, after: int = 0) -> list[Job]:
    """Queued and running jobs with an id above `after`, in arrival order."""
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') AND id > ? ORDER BY id",
        (after,),
    ).fetchall()
    return [job_from_row(row) for row in rows]


def oldest_waiting(conn: sqlite3.Connection) -> Job | None:
    """The queued job that has waited longest."""
    row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
    return job_from_row(row) if row else None


def get_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return job_from_row(row) if row else None


def list_jobs(conn: sqlite3.Connection, states: Sequence[str] = (), limit: int = 50) -> list[Job]:
    if states:
        marks = ",".join("?" for _ in states)
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?",
            (*states, limit),
        ).fetchall()
    else:
        rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [job_from_row(row) for row in rows]


def jobs_of_student(conn: sqlite3.Connection, stdid: int, limit: int) -> list[Job]:
    """The last `limit` jobs that acted on student `stdid` (a RESET range that holds it too),
    newest first."""
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE stdid <= ? AND last_stdid >= ? ORDER BY id DESC LIMIT ?",
        (stdid, stdid, limit),
    ).fetchall()
    return [job_from_row(row) for row in rows]


def latest_student_jobs(conn: sqlite3.Connection, first: int, last: int) -> dict[int, Job]:
    """The last job of each student of first..last that has one (a RESET range counts for
    each of its students)."""
    latest: dict[int, int] = {}
    rows = conn.execute("SELECT id, stdid, last_stdid FROM jobs WHERE stdid BETWEEN ? AND ? ORDER BY id", (first, last))
    for job_id, low, high in rows:
        for stdid in range(max(low, first), min(high, last) + 1):
            latest[stdid] = job_id
    ids = sorted(set(latest.values()))
    jobs: dict[int, Job] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" for _ in chunk)
        for row in conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({marks})", chunk):
            job = job_from_row(row)
            jobs[job.id] = job
    return {stdid: jobs[job_id] for stdid, job_id in sorted(latest.items()) if job_id in jobs}


def job_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {state: count for state, count in conn.execute("SELECT state, count(*) FROM jobs GROUP BY state")}


def steps_of(conn: sqlite3.Connection, job_id: int) -> list[Step]:
    rows = conn.execute(
        "SELECT name, state, started, finished, attempts, result, error FROM steps WHERE job_id = ?"
        " ORDER BY started, rowid",
        (job_id,),
    ).fetchall()
    return [
        Step(name, state, started, finished, attempts, json.loads(result) if result else None, error)
        for name, state, started, finished, attempts, result, error in rows
    ]


def pending_callbacks(conn: sqlite3.Connection, after: int = 0) -> list[OutboxEntry]:
    """The callbacks still to deliver whose id is above `after`, in id order."""
    rows = conn.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND id > ? ORDER BY id", (after,)
    ).fetchall()
    return [outbox_from_row(row) for row in rows]


def pending_callback_ids(conn: sqlite3.Connection) -> set[int]:
    return {row[0] for row in conn.execute("SELECT id FROM outbox WHERE state = 'pending'")}


def callbacks_of(conn: sqlite3.Connection, job_id: int) -> list[OutboxEntry]:
    rows = conn.execute(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
    return [outbox_from_row(row) for row in rows]


def undelivered_callbacks(conn: sqlite3.Connection, limit: int) -> list[OutboxEntry]:
    """Callbacks pending or set aside, oldest first."""
    rows = conn.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state != 'delivered' ORDER BY id LIMIT ?", (limit,)
    ).fetchall()
    return [outbox_from_row(row) for row in rows]


def outbox_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {state: count for state, count in conn.execute("SELECT state, count(*) FROM outbox GROUP BY state")}


def refused_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many refused mails are kept, by door."""
    return {door: count for door, count in conn.execute("SELECT door, count(*) FROM refused GROUP BY door")}


def list_refused(conn: sqlite3.Connection, limit: int = 50) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, received, door, peer, sender, code, reason, size FROM refused ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()


def get_refused(conn: sqlite3.Connection, refused_id: int) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(
        "SELECT id, received, door, peer, sender, code, reason, size, mail FROM refused WHERE id = ?",
        (refused_id,),
    ).fetchone()
    return row


def job_states(conn: sqlite3.Connection, job_ids: Sequence[int]) -> dict[int, str]:
    """The state of each job of `job_ids` that exists."""
    marks = ",".join("?" for _ in job_ids)
    return dict(conn.execute(f"SELECT id, state FROM jobs WHERE id IN ({marks})", tuple(job_ids)).fetchall())


def callback_state(conn: sqlite3.Connection, entry_id: int) -> tuple[str, float | None] | None:
    """(state, expires) of outbox entry `entry_id`, or None if it is gone."""
    row = conn.execute("SELECT state, expires FROM outbox WHERE id = ?", (entry_id,)).fetchone()
    return (row[0], row[1]) if row else None


def due_relay_mails(conn: sqlite3.Connection, now: float, exclude: Sequence[int], limit: int) -> list[RelayEntry]:
    """Pending relayed mails due by `now`, not in `exclude` (being sent), oldest due first."""
    marks = ",".join("?" for _ in exclude)
    rows = conn.execute(
        f"SELECT {RELAY_COLUMNS}, mail FROM relay WHERE state = 'pending' AND next_attempt <= ?"
        f" AND id NOT IN ({marks}) ORDER BY next_attempt, id LIMIT ?",
        (now, *exclude, limit),
    ).fetchall()
    return [relay_from_row(row) for row in rows]


def next_relay_attempt(conn: sqlite3.Connection, exclude: Sequence[int]) -> float | None:
    """When the next pending relayed mail not in `exclude` is due, or None if none waits."""
    marks = ",".join("?" for _ in exclude)
    row = conn.execute(
        f"SELECT min(next_attempt) FROM relay WHERE state = 'pending' AND id NOT IN ({marks})", tuple(exclude)
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def list_relay(conn: sqlite3.Connection, limit: int = 50) -> list[RelayEntry]:
    """The relayed mails not yet passed on (oldest first), then the last ones passed on; no content."""
    waiting = conn.execute(
        f"SELECT {RELAY_COLUMNS} FROM relay WHERE state != 'sent' ORDER BY id LIMIT ?", (limit,)
    ).fetchall()
    sent = conn.execute(
        f"SELECT {RELAY_COLUMNS} FROM relay WHERE state = 'sent' ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [relay_from_row(row) for row in [*waiting, *reversed(sent)]]


def relay_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {state: count for state, count in conn.execute("SELECT state, count(*) FROM relay GROUP BY state")}
