"""What arrives in the queue: commands enqueued (a copy found instead, earlier jobs
superseded), refused mails recorded, and the nonces of signed commands. Each change is a
function of a connection, run inside the writer's transaction (`Writer.run(enqueue(...))`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from wodmail.appdeadline import expired_callback, superseded
from wodmail.command import Command
from wodmail.inbound import InboundMail
from wodmail.queue.copies import record_copy
from wodmail.queue.drains import drained
from wodmail.queue.records import Enqueued

#: A refused mail keeps this much of its start: enough for an operator to see what it was
#: (its headers and first lines), not a copy of whatever a stranger sends.
REFUSED_MAIL_LIMIT = 4096
#: Refused mails kept per peer address (all local ones count as one), and in all: the
#: newest stay. A flood of refusals reuses the same pages of the database.
REFUSED_PER_PEER = 200
REFUSED_TOTAL = 5000


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
