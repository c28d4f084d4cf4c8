"""How long the queue remembers: done jobs and refused mails are forgotten after the
location's JOBKEEPDAYS and REFUSEDKEEPDAYS (the jobs process every hour, `wodmail prune`
on demand), and the write-ahead log is folded back into the database."""

from __future__ import annotations

import time

from wodmail.queue.schema import checkpoint
from wodmail.queue.writer import Writer
from wodmail.queue.writes import PRUNE_BATCH, prune

DAY = 86400.0


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
