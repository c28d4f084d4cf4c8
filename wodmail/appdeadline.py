"""The registration app's deadline on a CREATE, and what a later CLEANUP or PURGE does to it.

The app (wod-api-db, its CheckCustomers job, every 20 s) gives up on a registration whose
customer is still not active 10 minutes after it started: it sends CLEANUP for the student,
then a "deployment issue" mail to the person, and resets the registration. A CREATE that
finished after that, or that ran after that CLEANUP, would activate a customer the app has
already cleaned. So:

- a CREATE carries a deadline, APPDEADLINE seconds (default 600, the app's 10 minutes)
  after its arrival (`jobs.deadline`). The worker (wodmail.worker) does not start it after
  the deadline, stops it at the deadline while it runs, and does not retry it past the
  deadline: the job fails, its error naming APPDEADLINE. The app counts from the
  registration, a few seconds before the mail arrives: a site that wants a margin sets
  APPDEADLINE lower.
- the callbacks that activate the customer (`active: "true"`) carry the same deadline
  (`outbox.expires`): one not delivered by then is never sent. The outbox (wodmail.outbox)
  marks it `expired`, visible in `wodmail outbox` and `wodmail jobs show`; the other
  callbacks of the job (the student's password) still go out, they activate nothing.
- a CLEANUP or PURGE that arrives while a CREATE for the same student waits or retries
  (state queued) supersedes it, in the transaction that queues it (wodmail.queue.enqueue):
  the CREATE is `cancelled`, its error naming the job that superseded it, and the
  activating callbacks of that student's earlier jobs still pending are expired. A CREATE
  already running goes on (its steps converge; the deadline still stops it), and the
  CLEANUP runs after it, in arrival order as always.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the queue imports this module: no import of it at run time
    from wodmail.queue.records import Callback

#: The verbs the registration app waits for, and gives up on after APPDEADLINE.
DEADLINE_VERBS = frozenset({"CREATE"})
#: A verb's arrival cancels the queued jobs of these verbs for the same student.
SUPERSEDES: dict[str, frozenset[str]] = {"CLEANUP": frozenset({"CREATE"}), "PURGE": frozenset({"CREATE"})}


def deadline_for(verb: str, seconds: float) -> float | None:
    """The deadline's length for a job of `verb`, or None: the app does not wait for it."""
    return seconds if verb in DEADLINE_VERBS else None


def activates(callback: Callback) -> bool:
    """Whether `callback` activates a customer (the one a late CREATE must never send)."""
    return callback.body.get("active") == "true"


def past_deadline(received: float, deadline: float, last_error: str | None = None) -> str:
    """The error of a job stopped at its deadline."""
    arrived = time.strftime("%H:%M:%S", time.localtime(received))
    text = (
        f"not finished within APPDEADLINE ({deadline - received:.0f} s from its arrival at {arrived}): stopped;"
        " the registration app has given up on it, and no late `active` is sent"
    )
    return f"{text} (last error: {last_error})" if last_error else text


def superseded(job_id: int, verb: str) -> str:
    """The error of a job cancelled by a later one."""
    return f"cancelled: superseded by job {job_id} ({verb}), which arrived before it finished"


def expired_callback(reason: str) -> str:
    """The error of an activating callback that will never be sent."""
    return f"not sent: {reason}"
