"""How long the queue remembers: done jobs and refused mails are forgotten after the
location's JOBKEEPDAYS and REFUSEDKEEPDAYS (the jobs process every hour, `wodmail prune`
on demand), and the write-ahead log is folded back into the database."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from wodmail.queue.copies import forget_copies
from wodmail.queue.schema import checkpoint
from wodmail.queue.writer import Writer

DAY = 86400.0
#: Done jobs pruned per transaction (the writer's other work waits for each one).
PRUNE_BATCH = 500


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


def prune_old(writer: Writer, job_days: float, refused_days: float) -> tuple[int, int]:
    """Forget what is older than the retention, a batch a transaction (the doors' and the
    jobs' writes go between them); then checkpoint. Returns (jobs, refused mails) forgotten.
    Blocks: call it from a thread or a command."""
    now = time.time()
    jobs = refused = 0
    while True:
        batch = writer.run_sync(prune(now - job_days * DAY, now - refused_days * DAY))
        jobs, refused = jobs + batch[0], refused + batch[1]
        if batch[0] < PRUNE_BATCH:
            break
    checkpoint(writer.path)
    return jobs, refused
