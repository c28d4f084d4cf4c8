"""A job's run through the queue: claimed, its steps recorded, finished, postponed or
stopped at its deadline; at start-up the jobs a crash interrupted, and an operator's retry.
Each change is a function of a connection, run inside the writer's transaction."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from wodmail.appdeadline import activates, expired_callback
from wodmail.queue.records import Callback

#: A job interrupted this many times (the daemon died while running it) is set aside.
MAX_CRASHES = 3


def recover(conn: sqlite3.Connection) -> list[int]:
    """At start-up: jobs left running were interrupted; queue them again or set them aside."""
    held: list[int] = []
    rows = conn.execute("SELECT id, crashes FROM jobs WHERE state = 'running'").fetchall()
    for job_id, earlier in rows:
        crashes = earlier + 1
        if crashes >= MAX_CRASHES:
            conn.execute(
                "UPDATE jobs SET state = 'held', crashes = ?, finished = ?, error = ? WHERE id = ?",
                (
                    crashes,
                    time.time(),
                    f"interrupted {crashes} times while running: set aside for an operator (wodmail retry {job_id})",
                    job_id,
                ),
            )
            held.append(job_id)
        else:
            conn.execute("UPDATE jobs SET state = 'queued', crashes = ? WHERE id = ?", (crashes, job_id))
    return held


def requeue_stopped(job_ids: Sequence[int]) -> Callable[[sqlite3.Connection], None]:
    """Hand back jobs a clean shutdown interrupted: they are not crashes."""

    def run(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE jobs SET state = 'queued' WHERE id = ? AND state = 'running'", [(i,) for i in job_ids])

    return run


def claim(job_id: int) -> Callable[[sqlite3.Connection], dict[str, Any] | None]:
    """Mark a job running; return the results of the steps it already finished, or None when
    it is no longer queued (a later CLEANUP cancelled it since the worker read it)."""

    def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
        cursor = conn.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ?"
            " WHERE id = ? AND state IN ('queued', 'running')",
            (time.time(), job_id),
        )
        if cursor.rowcount == 0:
            return None
        rows = conn.execute("SELECT name, result FROM steps WHERE job_id = ? AND state = 'done'", (job_id,)).fetchall()
        return {name: json.loads(result) if result is not None else None for name, result in rows}

    return run


def step_done(
    job_id: int,
    student: int,
    name: str,
    started: float,
    result: Any = None,
    callbacks: Iterable[Callback] = (),
    finished: float | None = None,
) -> Callable[[sqlite3.Connection], None]:
    """Record a finished step and, in the same transaction, the callbacks it produced (an
    activating one expires at the job's deadline, if it has one). `finished`: when the step
    ended (a step held until the homes are flushed is recorded later); None: now."""
    made = tuple(callbacks)

    def run(conn: sqlite3.Connection) -> None:
        now = time.time()
        ended = finished if finished is not None else now
        deadline = None
        if any(activates(cb) for cb in made):
            row = conn.execute("SELECT deadline FROM jobs WHERE id = ?", (job_id,)).fetchone()
            deadline = row[0] if row else None
        conn.execute(
            "INSERT INTO steps (job_id, name, state, started, finished, result) VALUES (?, ?, 'done', ?, ?, ?)"
            " ON CONFLICT (job_id, name) DO UPDATE SET state = 'done', finished = excluded.finished,"
            " result = excluded.result, error = NULL, attempts = attempts + 1",
            (job_id, name, started, ended, json.dumps(result) if result is not None else None),
        )
        conn.executemany(
            "INSERT INTO outbox (job_id, student, method, path, body, secret_field, secret_name, created, expires)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    job_id,
                    student,
                    cb.method,
                    cb.path,
                    json.dumps(cb.body),
                    cb.secret_field,
                    cb.secret_name,
                    now,
                    deadline if activates(cb) else None,
                )
                for cb in made
            ],
        )

    return run


def step_failed(job_id: int, name: str, started: float, error: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO steps (job_id, name, state, started, finished, error) VALUES (?, ?, 'failed', ?, ?, ?)"
            " ON CONFLICT (job_id, name) DO UPDATE SET state = 'failed', finished = excluded.finished,"
            " error = excluded.error, attempts = attempts + 1",
            (job_id, name, started, time.time(), error),
        )

    return run


def finish(
    job_id: int, state: str, outcome: str | None = None, error: str | None = None
) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE jobs SET state = ?, finished = ?, outcome = ?, error = ? WHERE id = ?",
            (state, time.time(), outcome, error, job_id),
        )

    return run


def postpone(job_id: int, not_before: float, error: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'queued', not_before = ?, retries = retries + 1, error = ? WHERE id = ?",
            (not_before, error, job_id),
        )

    return run


def retry(job_id: int) -> Callable[[sqlite3.Connection], str]:
    """An operator's retry: a failed or held job goes back to the queue, and the callbacks
    of any job that the registration app refused until they were set aside go back to the
    outbox. Returns what was done, for the operator."""

    def run(conn: sqlite3.Connection) -> str:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise LookupError(f"no job {job_id}")
        if row[0] not in ("failed", "held"):
            cursor = conn.execute(
                "UPDATE outbox SET state = 'pending', next_attempt = 0, attempts = 0"
                " WHERE job_id = ? AND state = 'failed'",
                (job_id,),
            )
            if cursor.rowcount:
                return f"job {job_id} is {row[0]}: its {cursor.rowcount} set-aside callback(s) go out again"
            raise ValueError(
                f"job {job_id} is {row[0]} with no set-aside callback: only failed or held jobs can be retried"
            )
        now = time.time()
        # Its deadline, if it has one, moves with its arrival (SET reads the old `received`).
        conn.execute(
            "UPDATE jobs SET state = 'queued', not_before = 0, retries = 0, crashes = 0,"
            " deadline = deadline - received + ?, received = ? WHERE id = ?",
            (now, now, job_id),
        )
        conn.execute(
            "UPDATE outbox SET state = 'pending', next_attempt = 0, attempts = 0 WHERE job_id = ? AND state = 'failed'",
            (job_id,),
        )
        return f"job {job_id} was {row[0]}: queued again; the daemon takes it within seconds"

    return run


def fail_past_deadline(job_id: int, error: str) -> Callable[[sqlite3.Connection], None]:
    """A job stopped at its deadline: failed, and its activating callbacks still pending expired."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'failed', finished = ?, outcome = NULL, error = ? WHERE id = ?",
            (time.time(), error, job_id),
        )
        conn.execute(
            "UPDATE outbox SET state = 'expired', last_error = ? WHERE job_id = ? AND state = 'pending'"
            " AND expires IS NOT NULL",
            (expired_callback("the job did not finish within APPDEADLINE"), job_id),
        )

    return run
