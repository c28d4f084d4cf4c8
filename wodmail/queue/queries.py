"""Reading the queue (any connection: the daemon's, or an operator's command)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from wodmail.queue.records import JOB_COLUMNS, OUTBOX_COLUMNS, Job, OutboxEntry, Step, job_from_row, outbox_from_row


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
