"""Every change to the queue: each a function of a connection, run inside the writer's
transaction (`Writer.run(enqueue(...))`)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from wodmail.command import Command
from wodmail.inbound import InboundMail
from wodmail.queue.records import Callback, Enqueued

#: A job interrupted this many times (the daemon died while running it) is set aside.
MAX_CRASHES = 3
#: A refused mail keeps this much of its start: enough for an operator to see what it was
#: (its headers and first lines), not a copy of whatever a stranger sends.
REFUSED_MAIL_LIMIT = 4096
#: Refused mails kept per peer address (all local ones count as one), and in all: the
#: newest stay. A flood of refusals reuses the same pages of the database.
REFUSED_PER_PEER = 200
REFUSED_TOTAL = 5000
#: Done jobs pruned per transaction (the writer's other work waits for each one).
PRUNE_BATCH = 500


def enqueue(command: Command, mail: InboundMail) -> Callable[[sqlite3.Connection], Enqueued]:
    """Add `command`, unless it is a copy of one already taken (see `find_duplicate`)."""

    def run(conn: sqlite3.Connection) -> Enqueued:
        duplicate = find_duplicate(conn, command)
        if duplicate is not None:
            return Enqueued(duplicate, duplicate=True)
        cursor = conn.execute(
            "INSERT INTO jobs (received, door, peer, sender, message_id, verb, stdid, last_stdid,"
            " canonical, command) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                mail.door,
                mail.peer,
                mail.mail_from[:320],
                command.message_id,
                command.verb,
                command.stdid,
                command.last_stdid,
                command.canonical(),
                command.to_json(),
            ),
        )
        assert cursor.lastrowid is not None
        return Enqueued(cursor.lastrowid, duplicate=False)

    return run


def find_duplicate(conn: sqlite3.Connection, command: Command) -> int | None:
    """The job `command` repeats, if any.

    A mail seen before (same Message-ID) is a redelivery. Without a Message-ID (the legacy
    client sends none), the same command as the student's latest job is a resend, unless
    that job failed: then the resend is how the sender asks for another try.
    """
    if command.message_id:
        row = conn.execute(
            "SELECT id FROM jobs WHERE message_id = ? ORDER BY id LIMIT 1", (command.message_id,)
        ).fetchone()
        if row:
            return int(row[0])
    row = conn.execute(
        "SELECT id, canonical, state FROM jobs WHERE stdid = ? ORDER BY id DESC LIMIT 1",
        (command.stdid,),
    ).fetchone()
    if row and row[1] == command.canonical() and row[2] in ("queued", "running", "done"):
        return int(row[0])
    return None


def record_refusal(mail: InboundMail, code: int, reason: str) -> Callable[[sqlite3.Connection], int]:
    def run(conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "INSERT INTO refused (received, door, peer, sender, code, reason, size, mail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                mail.door,
                mail.peer,
                mail.mail_from[:320],
                code,
                reason,
                len(mail.data),
                mail.data[:REFUSED_MAIL_LIMIT],
            ),
        )
        assert cursor.lastrowid is not None
        conn.execute(
            "DELETE FROM refused WHERE peer IS ? AND id <= (SELECT id FROM refused WHERE peer IS ?"
            " ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (mail.peer, mail.peer, REFUSED_PER_PEER),
        )
        conn.execute(
            "DELETE FROM refused WHERE id <= (SELECT id FROM refused ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (REFUSED_TOTAL,),
        )
        return cursor.lastrowid

    return run


def prune(jobs_before: float, refused_before: float) -> Callable[[sqlite3.Connection], tuple[int, int]]:
    """Forget (up to PRUNE_BATCH) done jobs finished before `jobs_before` whose callbacks
    were all delivered, with their steps and callbacks, and the mails refused before
    `refused_before`. Failed and held jobs, and a done job with a callback still pending or
    set aside, stay for an operator. Returns (jobs, refused mails) removed: call again
    while it removes a full batch of jobs."""

    def run(conn: sqlite3.Connection) -> tuple[int, int]:
        ids = [
            (row[0],)
            for row in conn.execute(
                "SELECT id FROM jobs WHERE state = 'done' AND finished < ? AND NOT EXISTS"
                " (SELECT 1 FROM outbox WHERE outbox.job_id = jobs.id AND outbox.state != 'delivered')"
                " ORDER BY finished LIMIT ?",
                (jobs_before, PRUNE_BATCH),
            )
        ]
        conn.executemany("DELETE FROM steps WHERE job_id = ?", ids)
        conn.executemany("DELETE FROM outbox WHERE job_id = ?", ids)
        conn.executemany("UPDATE signature_nonces SET job_id = NULL WHERE job_id = ?", ids)
        conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
        refused = conn.execute("DELETE FROM refused WHERE received < ?", (refused_before,)).rowcount
        return len(ids), refused

    return run


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


def claim(job_id: int) -> Callable[[sqlite3.Connection], dict[str, Any]]:
    """Mark a job running; return the results of the steps it already finished."""

    def run(conn: sqlite3.Connection) -> dict[str, Any]:
        conn.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ? WHERE id = ?",
            (time.time(), job_id),
        )
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
) -> Callable[[sqlite3.Connection], None]:
    """Record a finished step and, in the same transaction, the callbacks it produced."""

    def run(conn: sqlite3.Connection) -> None:
        now = time.time()
        conn.execute(
            "INSERT INTO steps (job_id, name, state, started, finished, result) VALUES (?, ?, 'done', ?, ?, ?)"
            " ON CONFLICT (job_id, name) DO UPDATE SET state = 'done', finished = excluded.finished,"
            " result = excluded.result, error = NULL, attempts = attempts + 1",
            (job_id, name, started, now, json.dumps(result) if result is not None else None),
        )
        conn.executemany(
            "INSERT INTO outbox (job_id, student, method, path, body, secret_field, secret_name, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (job_id, student, cb.method, cb.path, json.dumps(cb.body), cb.secret_field, cb.secret_name, now)
                for cb in callbacks
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
        conn.execute(
            "UPDATE jobs SET state = 'queued', not_before = 0, retries = 0, crashes = 0, received = ? WHERE id = ?",
            (time.time(), job_id),
        )
        conn.execute(
            "UPDATE outbox SET state = 'pending', next_attempt = 0, attempts = 0 WHERE job_id = ? AND state = 'failed'",
            (job_id,),
        )
        return f"job {job_id} was {row[0]}: queued again; the daemon takes it within seconds"

    return run


def outbox_delivered(entry_id: int) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE outbox SET state = 'delivered', delivered = ?, attempts = attempts + 1, last_error = NULL"
            " WHERE id = ?",
            (time.time(), entry_id),
        )

    return run


def outbox_failed(entry_id: int, next_attempt: float | None, error: str) -> Callable[[sqlite3.Connection], None]:
    """A failed delivery: try again at `next_attempt`, or (None) give up, visible as failed."""

    def run(conn: sqlite3.Connection) -> None:
        if next_attempt is None:
            conn.execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error, entry_id),
            )
        else:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?",
                (next_attempt, error, entry_id),
            )

    return run


def forget_nonces_before(conn: sqlite3.Connection, signed: float) -> None:
    """Signatures dated before `signed` are refused as stale: their nonces need no keeping."""
    conn.execute("DELETE FROM signature_nonces WHERE signed < ?", (signed,))


def find_nonce(conn: sqlite3.Connection, nonce: str) -> tuple[int | None] | None:
    """(the job it made, if any) when a signature with `nonce` was taken before, else None."""
    row = conn.execute("SELECT job_id FROM signature_nonces WHERE nonce = ?", (nonce,)).fetchone()
    return (row[0],) if row is not None else None


def use_nonce(conn: sqlite3.Connection, nonce: str, key_id: str, signed: float, job_id: int | None) -> None:
    conn.execute(
        "INSERT INTO signature_nonces (nonce, key_id, signed, job_id) VALUES (?, ?, ?, ?)",
        (nonce, key_id, signed, job_id),
    )
