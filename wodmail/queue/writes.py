"""Every change to the queue: each a function of a connection, run inside the writer's
transaction (`Writer.run(enqueue(...))`)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from wodmail.appdeadline import activates, expired_callback, superseded
from wodmail.command import Command
from wodmail.inbound import InboundMail
from wodmail.queue.copies import forget_copies, record_copy
from wodmail.queue.drains import drained
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


def enqueue(
    command: Command,
    mail: InboundMail,
    *,
    deadline_after: float | None = None,
    supersedes: frozenset[str] = frozenset(),
    reply_to: str | None = None,
    drainable: bool = False,
) -> Callable[[sqlite3.Connection], Enqueued]:
    """Add `command`, unless it is a copy of one already taken (see `find_duplicate`).

    `deadline_after`: seconds after its arrival the job must be finished by (the app's
    deadline, wodmail.appdeadline). `supersedes`: the verbs whose queued jobs for the same
    students this one cancels, in the same transaction. `reply_to`: where the job's reply
    goes once it ended (wodmail.replies). `drainable`: its verb is refused while its
    workshop is drained (wodmail.queue.drains): then nothing is queued, the mail is recorded
    as refused (451) in this transaction, and `Enqueued.refused` says why."""

    def run(conn: sqlite3.Connection) -> Enqueued:
        duplicate = find_duplicate(conn, command)
        if duplicate is not None:
            record_copy(conn, duplicate, command, mail)  # shown to operators, never run
            return Enqueued(duplicate, duplicate=True)
        if drainable and command.workshop is not None:
            drain = drained(conn, command.workshop)
            if drain is not None:
                reason = drain.refusal(command.workshop)
                record_refusal(mail, 451, reason)(conn)
                return Enqueued(0, duplicate=False, refused=reason)
        now = time.time()
        cursor = conn.execute(
            "INSERT INTO jobs (received, door, peer, sender, message_id, verb, stdid, last_stdid,"
            " canonical, command, deadline, reply_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                now,
                mail.door,
                mail.peer,
                mail.mail_from[:320],
                command.message_id,
                command.verb,
                command.stdid,
                command.last_stdid,
                command.canonical(),
                command.to_json(),
                now + deadline_after if deadline_after is not None else None,
                reply_to,
            ),
        )
        assert cursor.lastrowid is not None
        cancelled = _supersede(conn, cursor.lastrowid, command, supersedes, now) if supersedes else ()
        return Enqueued(cursor.lastrowid, duplicate=False, cancelled=cancelled)

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
    if command.operands is not None:
        return None  # a command without a student (HELP, STATUS) is a copy only by its Message-ID
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
    were all delivered, with their steps, callbacks and copies (and every copy that came
    before `jobs_before`), and the mails refused before
    `refused_before`. Failed and held jobs, and a done job with a callback still pending or
    set aside, stay for an operator. Returns (jobs, refused mails) removed: call again
    while it removes a full batch of jobs."""

    def run(conn: sqlite3.Connection) -> tuple[int, int]:
        ids = [
            (row[0],)
            for row in conn.execute(
                "SELECT id FROM jobs WHERE state = 'done' AND finished < ? AND NOT EXISTS"
                " (SELECT 1 FROM outbox WHERE outbox.job_id = jobs.id AND outbox.state NOT IN ('delivered', 'expired'))"
                " ORDER BY finished LIMIT ?",
                (jobs_before, PRUNE_BATCH),
            )
        ]
        conn.executemany("DELETE FROM steps WHERE job_id = ?", ids)
        conn.executemany("DELETE FROM outbox WHERE job_id = ?", ids)
        conn.executemany("UPDATE signature_nonces SET job_id = NULL WHERE job_id = ?", ids)
        forget_copies(conn, ids, jobs_before)
        conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
        conn.execute("DELETE FROM relay WHERE state = 'sent' AND sent < ?", (jobs_before,))
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
) -> Callable[[sqlite3.Connection], None]:
    """Record a finished step and, in the same transaction, the callbacks it produced (an
    activating one expires at the job's deadline, if it has one)."""
    made = tuple(callbacks)

    def run(conn: sqlite3.Connection) -> None:
        now = time.time()
        deadline = None
        if any(activates(cb) for cb in made):
            row = conn.execute("SELECT deadline FROM jobs WHERE id = ?", (job_id,)).fetchone()
            deadline = row[0] if row else None
        conn.execute(
            "INSERT INTO steps (job_id, name, state, started, finished, result) VALUES (?, ?, 'done', ?, ?, ?)"
            " ON CONFLICT (job_id, name) DO UPDATE SET state = 'done', finished = excluded.finished,"
            " result = excluded.result, error = NULL, attempts = attempts + 1",
            (job_id, name, started, now, json.dumps(result) if result is not None else None),
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


# --- the registration app's deadline (wodmail.appdeadline) ---------------------------------------


def _supersede(
    conn: sqlite3.Connection, job_id: int, command: Command, verbs: frozenset[str], now: float
) -> tuple[int, ...]:
    """Cancel the queued jobs of `verbs` for `command`'s students that came before `job_id`,
    and expire the activating callbacks of those students' earlier jobs still pending."""
    marks = ",".join("?" for _ in verbs)
    ids = tuple(
        row[0]
        for row in conn.execute(
            f"SELECT id FROM jobs WHERE stdid <= ? AND last_stdid >= ? AND state = 'queued' AND id < ?"
            f" AND verb IN ({marks}) ORDER BY id",
            (command.last_stdid, command.stdid, job_id, *sorted(verbs)),
        )
    )
    reason = superseded(job_id, command.verb)
    conn.executemany(
        "UPDATE jobs SET state = 'cancelled', finished = ?, error = ? WHERE id = ? AND state = 'queued'",
        [(now, reason, cancelled) for cancelled in ids],
    )
    why = expired_callback(f"job {job_id} ({command.verb}) arrived before it was delivered")
    conn.execute(
        "UPDATE outbox SET state = 'expired', last_error = ? WHERE state = 'pending' AND expires IS NOT NULL"
        " AND job_id < ? AND student BETWEEN ? AND ?",
        (why, job_id, command.stdid, command.last_stdid),
    )
    return ids


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


def outbox_expired(entry_id: int, error: str) -> Callable[[sqlite3.Connection], None]:
    """An activating callback past its deadline: never sent, kept as expired for the operator."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE outbox SET state = 'expired', last_error = ? WHERE id = ? AND state = 'pending'", (error, entry_id)
        )

    return run


# --- mails relayed to RELAYHOST (wodmail.relay) ------------------------------------------------


def relay_mail(mail: InboundMail, auth: str) -> Callable[[sqlite3.Connection], int]:
    """Keep a mail to pass on to the site's MTA, its envelope as given; its id."""

    def run(conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "INSERT INTO relay (received, door, peer, auth, sender, recipients, size, mail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                mail.door,
                mail.peer,
                auth,
                mail.mail_from,
                json.dumps(list(mail.rcpt_tos)),
                len(mail.data),
                mail.data,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    return run


def relay_sent(relay_id: int, note: str | None) -> Callable[[sqlite3.Connection], None]:
    """The MTA took the mail: its content is erased (secure_delete overwrites it), its record stays."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE relay SET state = 'sent', sent = ?, attempts = attempts + 1, last_error = ?, mail = x''"
            " WHERE id = ?",
            (time.time(), note, relay_id),
        )

    return run


def relay_failed(
    relay_id: int, next_attempt: float | None, error: str, *, rejected: bool
) -> Callable[[sqlite3.Connection], None]:
    """A try that failed: again at `next_attempt`, or (None) set aside as failed."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE relay SET state = ?, attempts = attempts + 1, rejections = rejections + ?,"
            " next_attempt = ?, last_error = ? WHERE id = ?",
            (
                "pending" if next_attempt is not None else "failed",
                1 if rejected else 0,
                next_attempt if next_attempt is not None else 0,
                error,
                relay_id,
            ),
        )

    return run


def relay_retry(relay_id: int | None) -> Callable[[sqlite3.Connection], int]:
    """An operator's retry of a set-aside mail (None: of every one); how many go out again."""

    def run(conn: sqlite3.Connection) -> int:
        if relay_id is not None:
            row = conn.execute("SELECT state FROM relay WHERE id = ?", (relay_id,)).fetchone()
            if row is None:
                raise LookupError(f"no relayed mail {relay_id}")
            if row[0] != "failed":
                raise ValueError(f"relayed mail {relay_id} is {row[0]}: only a failed one can be retried")
        cursor = conn.execute(
            "UPDATE relay SET state = 'pending', next_attempt = 0, rejections = 0 WHERE state = 'failed'"
            + (" AND id = ?" if relay_id is not None else ""),
            (relay_id,) if relay_id is not None else (),
        )
        return cursor.rowcount

    return run
