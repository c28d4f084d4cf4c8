"""The replies owed to commands (wodmail.replies): a job with a reply address gets one reply,
queued in the relay table in the transaction that records it (`jobs.reply_id`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from wodmail.inbound import InboundMail
from wodmail.queue.deliveries import relay_mail
from wodmail.queue.records import JOB_COLUMNS, Job, job_from_row

#: The states a job ends in; its reply is due then.
ENDED = ("done", "failed", "held", "cancelled")


def jobs_owed_reply(conn: sqlite3.Connection, limit: int) -> list[Job]:
    """Jobs that ended with a reply address and no reply yet, oldest first."""
    marks = ",".join("?" for _ in ENDED)
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE reply_to IS NOT NULL AND reply_id IS NULL AND state IN ({marks})"
        " ORDER BY id LIMIT ?",
        (*ENDED, limit),
    ).fetchall()
    return [job_from_row(row) for row in rows]


def reply_queued(job_id: int, reply: InboundMail) -> Callable[[sqlite3.Connection], int | None]:
    """Queue `reply` for RELAYHOST and mark job `job_id` answered, once: the relay mail's id,
    or None when the job already has its reply."""

    def run(conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT reply_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row[0] is not None:
            return None
        relay_id = relay_mail(reply, f"reply to job {job_id}")(conn)
        conn.execute("UPDATE jobs SET reply_id = ? WHERE id = ?", (relay_id, job_id))
        return relay_id

    return run


def refusal_replied(
    record: Callable[[sqlite3.Connection], int], reply: InboundMail
) -> Callable[[sqlite3.Connection], int]:
    """A refusal's record (`record_refusal`) and its reply, in one transaction; the record's id."""

    def run(conn: sqlite3.Connection) -> int:
        refused_id = record(conn)
        relay_mail(reply, f"reply to refused mail {refused_id}")(conn)
        return refused_id

    return run
