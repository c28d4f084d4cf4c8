"""The outbox: delivers the queued callbacks to the registration app, and never drops one.

Verbs queue `Callback`s (wodmail.callbacks) in the same transaction that records their step
(wodmail.journal). The `Outbox` delivers them through the app's client (wodmail.regapp), in
order per student, retrying with capped exponential backoff and jitter (wodmail.backoff)
until the app takes them. A callback the app keeps refusing (a 4xx other than 401/408/429)
is set aside as failed after MAX_CLIENT_ERRORS tries, visible with `wodmail outbox`; none
is ever dropped silently.

A callback that activates a customer carries its job's deadline (the registration app's,
wodmail.appdeadline): one not delivered by then is never sent. Right before each try of
such a callback the outbox reads its row again: past the deadline it is marked `expired`
(its error names APPDEADLINE), and one a CLEANUP or PURGE expired meanwhile is dropped from
the line. Both stay visible in `wodmail outbox` and `wodmail jobs show`.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from wodmail import queue
from wodmail.appdeadline import expired_callback
from wodmail.backoff import backoff
from wodmail.errors import AppRefused, StepFailed, TransientError, TryLater
from wodmail.passwords import PasswordMint
from wodmail.queue import OutboxEntry
from wodmail.regapp import RegistrationApp
from wodmail.wakeups import wait_for_wake

log = logging.getLogger(__name__)

#: How often the outbox reads every pending callback again (see `Outbox`).
RESCAN_INTERVAL = 5.0
#: Client errors (4xx other than 401/408/429) a callback may meet before it is set aside.
MAX_CLIENT_ERRORS = 5
#: The longest wait between two tries of one callback (CALLBACKBACKOFFMAX).
BACKOFF_CAP = 300.0
#: The first wait after a failed try.
FIRST_BACKOFF = 1.0
#: Each wait is between this share of the backoff and all of it.
BACKOFF_JITTER = 0.5
#: While the doors take commands (one in the last DOORS_QUIET seconds), no delivery starts, for
#: at most HOLD_MAX seconds from the first command of that busy spell: the outbox runs in the
#: doors' process, and in a burst the mail is answered first. The callbacks queued meanwhile
#: go once the burst is in (or HOLD_MAX has passed), and are as many as ever.
DOORS_QUIET = 0.05
HOLD_MAX = 1.0
#: Why an activating callback was not sent.
PAST_DEADLINE = "not delivered within APPDEADLINE of its job's arrival: the registration app has given up"


class Outbox:
    """Delivers pending callbacks, in order per student, until each is taken.

    The pending callbacks live in memory, one line per student in id order. Each round
    reads from the queue only the rows added since the last one (the worker wakes the
    outbox when a job queues some) and, every RESCAN_INTERVAL, all pending rows, for those
    `wodmail retry` put back from another process. A line's head is sent once it is due,
    at most `concurrency` at once; the next one waits until the head is delivered or set
    aside, so a student's callbacks arrive in the order their jobs made them.
    """

    def __init__(
        self,
        db_path: Any,
        writer: queue.Writer,
        app: RegistrationApp,
        mint: PasswordMint,
        concurrency: int = 16,
        backoff_cap: float = BACKOFF_CAP,
        doors_busy: Callable[[], bool] | None = None,
    ) -> None:
        self._reader = queue.connect(db_path)
        self._writer = writer
        self._app = app
        self._mint = mint
        self._wake = asyncio.Event()
        self._concurrency = concurrency
        self._backoff_cap = backoff_cap
        self._lines: dict[int, list[OutboxEntry]] = {}
        self._known: set[int] = set()
        self._due: list[tuple[float, int, int]] = []
        """(next attempt, entry id, student) of line heads; stale items are skipped."""
        self._sending: dict[int, asyncio.Task[None]] = {}
        """Student -> the delivery of its line's head (its request, then its record)."""
        self._requesting = 0
        """Deliveries not yet past their request: at most `concurrency`. The record of an
        outcome (a group commit, tens of ms while jobs write too) holds the student's line,
        not a request slot: in a burst the slots would otherwise wait on the disk, and the
        callbacks fall behind the jobs."""
        self._highest = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._paused = False
        self._doors_busy = doors_busy
        self._held_since: float | None = None
        self.delivered = 0

    def wake(self) -> None:
        self._wake.set()

    def pause(self) -> None:
        """Start no more deliveries (those in flight finish): a crash point of the fault tests
        is about to fire in the jobs process (wodmail.faults)."""
        self._paused = True

    def close(self) -> None:
        self._reader.close()

    @property
    def idle(self) -> bool:
        """No callback in flight (none sent and not yet recorded)."""
        return not self._sending

    async def wait_idle(self) -> None:
        """Return once no callback is in flight."""
        await self._idle.wait()

    async def run(self) -> None:
        """Deliver until cancelled."""
        last_scan = 0.0
        try:
            while True:
                self._wake.clear()
                now = time.time()
                if self._holding(now):  # the doors take commands: not even a read of the queue
                    await wait_for_wake(self._wake, DOORS_QUIET)
                    continue
                rescan = now - last_scan >= RESCAN_INTERVAL
                if rescan:
                    last_scan = now
                self._load(rescan)
                self._start_due(now)
                timeout = RESCAN_INTERVAL if not self._due else self._due[0][0] - now
                await wait_for_wake(self._wake, min(RESCAN_INTERVAL, max(0.01, timeout)))
        finally:
            for task in self._sending.values():
                task.cancel()

    def _load(self, rescan: bool) -> None:
        """Add the pending rows not yet in a line (a read of the WAL: no thread needed)."""
        try:
            after = self._highest
            if rescan:  # the ids alone first (the pending index): usually every one is known
                unknown = queue.pending_callback_ids(self._reader) - self._known
                after = min(after, min(unknown, default=after + 1) - 1)
            rows = queue.pending_callbacks(self._reader, after=after)
        except sqlite3.Error as exc:
            log.warning("cannot read the outbox: %s", exc)
            return
        for entry in rows:
            self._highest = max(self._highest, entry.id)
            if entry.id in self._known:
                continue
            self._known.add(entry.id)
            line = self._lines.setdefault(entry.student, [])
            bisect.insort(line, entry, key=lambda e: e.id)
            if line[0] is entry:
                self._schedule(entry)

    def _holding(self, now: float) -> bool:
        """Whether deliveries wait for the doors (DOORS_QUIET, HOLD_MAX)."""
        if self._doors_busy is None or not self._doors_busy():
            self._held_since = None
            return False
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since < HOLD_MAX

    def _schedule(self, head: OutboxEntry) -> None:
        if head.student not in self._sending:
            heapq.heappush(self._due, (head.next_attempt, head.id, head.student))

    def _start_due(self, now: float) -> None:
        while self._due and self._due[0][0] <= now and self._requesting < self._concurrency and not self._paused:
            _when, entry_id, student = heapq.heappop(self._due)
            line = self._lines.get(student)
            if not line or line[0].id != entry_id or student in self._sending:
                continue  # stale: that head was delivered, or replaced by an earlier entry
            self._idle.clear()
            self._requesting += 1
            self._sending[student] = asyncio.create_task(self._deliver(line[0]), name=f"callback-{entry_id}")

    def _requested(self, slot: list[bool]) -> None:
        """The delivery holding `slot` is past its request (or sends none): its slot is free."""
        if slot:
            slot.clear()
            self._requesting -= 1
            self._wake.set()

    def _settled(self, entry: OutboxEntry, retry_at: float | None) -> None:
        """The head `entry` was delivered or set aside (`retry_at` None), or waits until then."""
        del self._sending[entry.student]
        line = self._lines[entry.student]
        if retry_at is None:
            line.pop(0)
            self._known.discard(entry.id)
        else:
            line[0] = replace(entry, attempts=entry.attempts + 1, next_attempt=retry_at)
        if line:
            self._schedule(line[0])
        else:
            del self._lines[entry.student]
        if not self._sending:
            self._idle.set()
        self._wake.set()

    async def _deliver(self, entry: OutboxEntry) -> None:
        body: dict[str, Any] = dict(entry.body)
        if entry.secret_field and entry.secret_name:
            body[entry.secret_field] = self._mint.password(entry.job_id, entry.secret_name)
        what = f"{entry.method} {entry.path}"
        retry_at: float | None = time.time() + 1.0
        slot = [True]
        try:
            if entry.expires is not None and not await self._still_due(entry, what):
                retry_at = None
                return
            retry_at = await self._send(entry, body, what, slot)
        except TryLater as exc:
            # The queue could not record the outcome (disk full, read-only STATEDIR): the
            # entry is still pending; it is sent again in a second.
            log.error("outbox: cannot record the delivery of %s: %s", what, exc)
        finally:
            self._requested(slot)
            self._settled(entry, retry_at)

    async def _still_due(self, entry: OutboxEntry, what: str) -> bool:
        """Whether an activating callback may still go out: still pending (a CLEANUP did not
        expire it) and before its deadline (else it is expired now, for good)."""
        try:
            row = queue.callback_state(self._reader, entry.id)
        except sqlite3.Error as exc:
            log.warning("outbox: cannot read callback %d again (%s): not sent now", entry.id, exc)
            raise TryLater(f"cannot read callback {entry.id}: {exc}") from None
        if row is None or row[0] != "pending":
            log.info("job %d: callback %s not sent: %s meanwhile", entry.job_id, what, row[0] if row else "gone")
            return False
        expires = row[1] if row[1] is not None else entry.expires
        if expires is not None and time.time() >= expires:
            await self._writer.run(queue.outbox_expired(entry.id, expired_callback(PAST_DEADLINE)))
            log.warning("job %d: callback %s not sent: %s", entry.job_id, what, PAST_DEADLINE)
            return False
        return True

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, first=FIRST_BACKOFF, cap=self._backoff_cap, jitter=BACKOFF_JITTER)

    async def _send(self, entry: OutboxEntry, body: dict[str, Any], what: str, slot: list[bool]) -> float | None:
        """One delivery try; its outcome is committed (`slot` freed once the request is
        answered). Returns when to try again, or None once the entry is delivered or set aside."""
        try:
            try:
                await self._app.request(entry.method, entry.path, body)
            finally:
                self._requested(slot)
        except TransientError as exc:
            retry_at = time.time() + self._backoff(entry.attempts + 1)
            log.info(
                "job %d: callback %s not delivered (%s), next try in %.1f s",
                entry.job_id,
                what,
                exc,
                retry_at - time.time(),
            )
            await self._writer.run(queue.outbox_failed(entry.id, retry_at, str(exc)))
            return retry_at
        except StepFailed as exc:
            # A request that can never be sent as it is (a control character in a value):
            # set aside at once, for an operator to see.
            log.warning("job %d: callback %s set aside: %s", entry.job_id, what, exc)
            await self._writer.run(queue.outbox_failed(entry.id, None, str(exc)))
            return None
        except AppRefused as exc:
            if entry.attempts + 1 >= MAX_CLIENT_ERRORS:
                log.warning("job %d: callback %s set aside: %s", entry.job_id, what, exc)
                await self._writer.run(queue.outbox_failed(entry.id, None, str(exc)))
                return None
            retry_at = time.time() + self._backoff(entry.attempts + 1)
            await self._writer.run(queue.outbox_failed(entry.id, retry_at, str(exc)))
            return retry_at
        await self._writer.run(queue.outbox_delivered(entry.id))
        self.delivered += 1
        return None
