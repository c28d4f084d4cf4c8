"""Commands dropped as copies of a job already taken, kept so an operator sees them.

A command is a copy (`arrivals.find_duplicate`) when its mail was seen before (the same
Message-ID: a redelivery), or when it is the same command as the student's latest job and
that job has not failed (a resend after a failure is how the sender asks for another try;
the legacy client sends no Message-ID). A copy is answered 250 ("already have this command
as job N") and never run; its arrival is recorded here, in the same transaction, with the
job it repeats: `wodmail jobs` lists it beside the jobs, `wodmail jobs show N` under the job
it repeats, and `wodmail jobs show cM` on its own. Bounded: the newest COPIES_PER_JOB of a job and
COPIES_TOTAL in all are kept, and they are forgotten with their job, or after JOBKEEPDAYS.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wodmail.command import Command
from wodmail.inbound import InboundMail

COPIES_PER_JOB = 20
COPIES_TOTAL = 5000

SAME_MESSAGE = "the same Message-ID: a redelivered mail"
SAME_COMMAND = "the same command as the student's latest job"

COPY_COLUMNS = "id, job_id, received, door, peer, sender, reason, command"


@dataclass(frozen=True)
class Copy:
    """A command dropped as a copy of job `job_id`: when and how it came, and why."""

    id: int
    job_id: int
    received: float
    door: str
    peer: str | None
    sender: str | None
    reason: str
    command: Command


def copy_from_row(row: Sequence[Any]) -> Copy:
    return Copy(
        id=row[0],
        job_id=row[1],
        received=row[2],
        door=row[3],
        peer=row[4],
        sender=row[5],
        reason=row[6],
        command=Command.from_json(row[7]),
    )


def record_copy(conn: sqlite3.Connection, job_id: int, command: Command, mail: InboundMail) -> int:
    """Keep the arrival of `command`, found a copy of job `job_id` (`find_duplicate`), inside
    the enqueue's transaction; its id. Drops the oldest copies beyond COPIES_PER_JOB for that
    job and COPIES_TOTAL in all."""
    message_id, state = conn.execute("SELECT message_id, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    same_message = command.message_id is not None and command.message_id == message_id
    reason = SAME_MESSAGE if same_message else f"{SAME_COMMAND} ({state})"
    cursor = conn.execute(
        "INSERT INTO copies (job_id, received, door, peer, sender, reason, command) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (job_id, time.time(), mail.door, mail.peer, mail.mail_from[:320], reason, command.to_json()),
    )
    assert cursor.lastrowid is not None
    conn.execute(
        "DELETE FROM copies WHERE job_id = ? AND id <= (SELECT id FROM copies WHERE job_id = ?"
        " ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (job_id, job_id, COPIES_PER_JOB),
    )
    conn.execute(
        "DELETE FROM copies WHERE id <= (SELECT id FROM copies ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (COPIES_TOTAL,),
    )
    return cursor.lastrowid


def forget_copies(conn: sqlite3.Connection, job_ids: Sequence[tuple[int]], before: float) -> None:
    """Forget the copies of the jobs `job_ids` (about to be pruned), and every copy that
    arrived before `before`; inside the prune's transaction."""
    conn.executemany("DELETE FROM copies WHERE job_id = ?", job_ids)
    conn.execute("DELETE FROM copies WHERE received < ?", (before,))


def get_copy(conn: sqlite3.Connection, copy_id: int) -> Copy | None:
    row = conn.execute(f"SELECT {COPY_COLUMNS} FROM copies WHERE id = ?", (copy_id,)).fetchone()
    return copy_from_row(row) if row else None


def copies_of(conn: sqlite3.Connection, job_id: int) -> list[Copy]:
    """The copies kept of job `job_id`, oldest first."""
    rows = conn.execute(f"SELECT {COPY_COLUMNS} FROM copies WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
    return [copy_from_row(row) for row in rows]


def list_copies(conn: sqlite3.Connection, limit: int = 50) -> list[Copy]:
    """The newest `limit` copies, newest first."""
    rows = conn.execute(f"SELECT {COPY_COLUMNS} FROM copies ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [copy_from_row(row) for row in rows]


def copy_count(conn: sqlite3.Connection) -> int:
    """How many copies are kept."""
    return int(conn.execute("SELECT count(*) FROM copies").fetchone()[0])
