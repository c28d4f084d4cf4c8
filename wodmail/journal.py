"""The step journal: one run of one job, each of its steps done once and recorded durably.

The worker (wodmail.worker) makes a `JobRun` for each job it runs and hands it to the
verb; the verb runs its steps through it (`step`, `callbacks`). The journal is the queue's
steps table: a run after a crash or a transient failure finds the steps already done there
and skips them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from wodmail import faults, queue
from wodmail.errors import WodmailError
from wodmail.faults import crash_point
from wodmail.passwords import PasswordMint
from wodmail.queue import Callback, Job


class JobRun:
    """One run of one job: its command, its passwords, and its steps, each done once.

    A step that finished in an earlier run of the same job (before a crash, or before a
    transient failure) is not done again: `step` returns the result it recorded then.

    A step is recorded only once its effects are durable. A step `on_disk` (it wrote to the
    homes) is held back, and so is every step after it, until the next barrier: before the
    job's callbacks are queued (the app is never told of a workshop a power cut can take
    back) and at the job's end. A barrier waits for the homes' filesystem to be flushed
    (`flush_disk`, one syncfs shared by every job waiting then), then records the held steps
    in order. A crash before it only means doing those steps again: each converges.

    `on_callbacks` is called once callbacks are queued (it wakes the outbox); `flush_disk`
    flushes the homes' filesystem (wodmail.homes.Homes.durable); `on_step(verb, step,
    seconds)` is told how long each step that ran took (wodmail.figures).
    """

    def __init__(
        self,
        job: Job,
        done: dict[str, Any],
        writer: queue.Writer,
        mint: PasswordMint,
        on_callbacks: Callable[[], None] | None = None,
        flush_disk: Callable[[], Awaitable[None]] | None = None,
        *,
        callbacks_enabled: bool = True,
        on_step: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.job = job
        self.command = job.command
        self._done = done
        self._writer = writer
        self._mint = mint
        self._on_callbacks = on_callbacks
        self._flush_disk = flush_disk
        self._callbacks_enabled = callbacks_enabled
        self._on_step = on_step
        self._unflushed: list[asyncio.Future[None]] = []
        self._held: list[Callable[[sqlite3.Connection], None]] = []
        self._disk_written = False

    @property
    def id(self) -> int:
        return self.job.id

    def password(self, name: str) -> str:
        """The job's password called `name`; the same in every run of this job."""
        return self._mint.password(self.job.id, name)

    async def step(self, name: str, action: Callable[..., Awaitable[Any]], *args: Any, on_disk: bool = False) -> Any:
        """Run `await action(*args)` once for this job; `on_disk`: it writes to the homes."""
        if name in self._done:
            return self._done[name]
        started = time.time()
        await crash_point(self.command, name, "start")
        try:
            result = await action(*args)
        except WodmailError as exc:
            await self._writer.run(queue.step_failed(self.job.id, name, started, str(exc)))
            raise
        except Exception as exc:
            await self._writer.run(
                queue.step_failed(self.job.id, name, started, f"internal error: {type(exc).__name__}: {exc}")
            )
            raise
        finished = time.time()
        if self._on_step is not None:
            self._on_step(self.command.verb, name, finished - started)
        await crash_point(self.command, name, "done")
        self._done[name] = result
        write = queue.step_done(self.job.id, self.command.stdid, name, started, result, finished=finished)
        if on_disk or self._held:
            self._disk_written = self._disk_written or on_disk
            self._held.append(write)
        else:
            self._submit(write)
        if faults.POINTS:
            await self.flush()
            await crash_point(self.command, name, "recorded")
        return result

    def _submit(self, write: Callable[[sqlite3.Connection], None]) -> None:
        # Not awaited: every step converges when run again, so losing this record in a crash
        # only means doing the step once more. The writer commits in order, so the record is
        # durable no later than the next awaited write (callbacks, the job's end).
        record = self._writer.submit(write)
        record.add_done_callback(_seen)  # a job that fails later never flushes: no "never retrieved"
        self._unflushed.append(record)

    async def barrier(self) -> None:
        """Flush the homes if a held step wrote to them, then record the held steps."""
        if not self._held:
            return
        if self._disk_written and self._flush_disk is not None:
            await self._flush_disk()
        held, self._held, self._disk_written = self._held, [], False
        for write in held:
            self._submit(write)

    async def flush(self) -> None:
        """Wait until every step record made so far is committed (and raise if one failed)."""
        await self.barrier()
        pending, self._unflushed = self._unflushed, []
        for future in pending:
            await future

    async def callbacks(self, name: str, *callbacks: Callback) -> None:
        """Queue callbacks to the registration app, exactly once, as one step (recorded as
        not sent when the location has no registration app: `callbacks_enabled` False)."""
        if name in self._done:
            return
        if not self._callbacks_enabled:
            await self._record(name, "APIENDPOINT not set: not sent", ())
            return
        await self._record(name, f"{len(callbacks)} queued", callbacks)
        if self._on_callbacks is not None:
            self._on_callbacks()

    async def _record(self, name: str, result: str, callbacks: tuple[Callback, ...]) -> None:
        await self.barrier()
        started = time.time()
        await crash_point(self.command, name, "start")
        await self._writer.run(queue.step_done(self.job.id, self.command.stdid, name, started, result, callbacks))
        self._done[name] = result
        await crash_point(self.command, name, "recorded")


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
