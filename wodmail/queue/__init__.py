"""The durable queue: jobs, their steps, the callback outbox, refused and relayed mails, in SQLite.

One database file under STATEDIR, in WAL mode with `synchronous=FULL`: a transaction is
on disk (fsync'd) when COMMIT returns. Every write goes through one `Writer` thread that
commits whatever is waiting as one transaction (group commit): a burst of a thousand
mails costs a few dozen fsyncs, not a thousand, and nothing is answered before its
commit returned.

Job states:

    queued ──claim──▶ running ──▶ done
       ▲  │              │  └───▶ failed   (a step failed for good, retries ran out, or the
       │  │              │                  app's deadline passed: wodmail.appdeadline)
       └──┼─ backoff ────┘  └───▶ held     (interrupted MAX_CRASHES times: set aside)
          └──▶ cancelled   (a CREATE superseded by the student's CLEANUP or PURGE)

`wodmail retry ID` puts a failed or held job back to queued; it resumes after its last
finished step.

The package, one concern a module (the rest of wodmail uses the names below as
`queue.NAME`):

- `schema`: the file, its settings (WAL, synchronous=FULL) and its versioned schema;
- `writer`: the group-committing writer thread;
- every change, as a function of a connection run inside a transaction: `arrivals`
  (commands enqueued, mails refused, signature nonces), `runs` (a job claimed, its steps,
  its end, recovery and retry), `deliveries` (the callback outbox, relayed mails);
- `queries`: every read;
- `retention`: forgetting what is old (`prune`);
- `copies`: the commands dropped as copies of a job already taken, kept for operators;
- `drains`: drained workshops (DRAIN, RESUME); `replies`: the replies owed to commands;
- `records`: the rows as objects (Job, Step, OutboxEntry, Callback, RelayEntry).

No SQL lives outside this package.
"""

from __future__ import annotations

from wodmail.queue.arrivals import (
    REFUSED_MAIL_LIMIT,
    REFUSED_PER_PEER,
    REFUSED_TOTAL,
    enqueue,
    find_duplicate,
    find_nonce,
    forget_nonces_before,
    record_refusal,
    use_nonce,
)
from wodmail.queue.copies import Copy, copies_of, copy_count, get_copy, list_copies
from wodmail.queue.deliveries import (
    outbox_delivered,
    outbox_expired,
    outbox_failed,
    relay_failed,
    relay_mail,
    relay_retry,
    relay_sent,
)
from wodmail.queue.drains import ALL_WORKSHOPS, drain, drained, list_drains, resume
from wodmail.queue.queries import (
    callback_state,
    callbacks_of,
    due_relay_mails,
    get_job,
    get_refused,
    job_counts,
    job_states,
    jobs_of_student,
    latest_student_jobs,
    list_jobs,
    list_refused,
    list_relay,
    next_relay_attempt,
    oldest_waiting,
    open_jobs,
    outbox_counts,
    pending_callback_ids,
    pending_callbacks,
    refused_counts,
    relay_counts,
    steps_of,
    undelivered_callbacks,
)
from wodmail.queue.records import (
    JOB_COLUMNS,
    JOB_STATES,
    OUTBOX_COLUMNS,
    RELAY_COLUMNS,
    Callback,
    Drain,
    Enqueued,
    Job,
    OutboxEntry,
    RelayEntry,
    Step,
    job_from_row,
    outbox_from_row,
    relay_from_row,
)
from wodmail.queue.replies import jobs_owed_reply, refusal_replied, reply_queued
from wodmail.queue.retention import PRUNE_BATCH, prune, prune_old
from wodmail.queue.runs import (
    MAX_CRASHES,
    claim,
    fail_past_deadline,
    finish,
    postpone,
    recover,
    requeue_stopped,
    retry,
    step_done,
    step_failed,
)
from wodmail.queue.schema import (
    LOCK_WAIT,
    MIGRATIONS,
    checkpoint,
    connect,
    migrate,
    open_database,
)
from wodmail.queue.writer import (
    Writer,
)

__all__ = [
    "ALL_WORKSHOPS",
    "JOB_COLUMNS",
    "JOB_STATES",
    "LOCK_WAIT",
    "MAX_CRASHES",
    "MIGRATIONS",
    "OUTBOX_COLUMNS",
    "PRUNE_BATCH",
    "REFUSED_MAIL_LIMIT",
    "REFUSED_PER_PEER",
    "REFUSED_TOTAL",
    "RELAY_COLUMNS",
    "Callback",
    "Copy",
    "Drain",
    "Enqueued",
    "Job",
    "OutboxEntry",
    "RelayEntry",
    "Step",
    "Writer",
    "callback_state",
    "callbacks_of",
    "checkpoint",
    "claim",
    "connect",
    "copies_of",
    "copy_count",
    "drain",
    "drained",
    "due_relay_mails",
    "enqueue",
    "fail_past_deadline",
    "find_duplicate",
    "find_nonce",
    "finish",
    "forget_nonces_before",
    "get_copy",
    "get_job",
    "get_refused",
    "job_counts",
    "job_from_row",
    "job_states",
    "jobs_of_student",
    "jobs_owed_reply",
    "latest_student_jobs",
    "list_copies",
    "list_drains",
    "list_jobs",
    "list_refused",
    "list_relay",
    "migrate",
    "next_relay_attempt",
    "oldest_waiting",
    "open_database",
    "open_jobs",
    "outbox_counts",
    "outbox_delivered",
    "outbox_expired",
    "outbox_failed",
    "outbox_from_row",
    "pending_callback_ids",
    "pending_callbacks",
    "postpone",
    "prune",
    "prune_old",
    "record_refusal",
    "recover",
    "refusal_replied",
    "refused_counts",
    "relay_counts",
    "relay_failed",
    "relay_from_row",
    "relay_mail",
    "relay_retry",
    "relay_sent",
    "reply_queued",
    "requeue_stopped",
    "resume",
    "retry",
    "step_done",
    "step_failed",
    "steps_of",
    "undelivered_callbacks",
    "use_nonce",
]
