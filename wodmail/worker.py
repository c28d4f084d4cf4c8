"""Running jobs: one at a time per student, in arrival order; different students in parallel.

The `Scheduler` keeps, for every student, the queue of that student's open jobs (a RESET
range is in the queue of each of its students). A job may run when it heads the queue of
every student it touches and is due. The `Worker` takes such jobs, at most WORKERS at
once, runs each through its verb (from a `VerbRegistry`, wodmail.verbspec) with the step
journal of wodmail.journal, and records how it ended.

A job with a deadline (a CREATE: the registration app gives up on it after APPDEADLINE,
wodmail.appdeadline) is not started past it, is stopped when it is reached while it runs,
and is not retried past it: it fails, its error naming APPDEADLINE. A job cancelled in the
queue (a CREATE superseded by a CLEANUP or PURGE) leaves the scheduler as soon as the
worker reads the job that cancelled it, so the CLEANUP does not wait for the CREATE's
next try.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from wodmail import queue
from wodmail.appdeadline import SUPERSEDES, past_deadline
from wodmail.backoff import backoff
from wodmail.errors import StepFailed, TransientError, TryLater
from wodmail.figures import JobFigures
from wodmail.journal import JobRun
from wodmail.passwords import PasswordMint
from wodmail.queue import Job
from wodmail.services import Services
from wodmail.verbspec import Verb
from wodmail.wakeups import wait_for_wake

log = logging.getLogger(__name__)

#: How often the worker looks for jobs that another process (`wodmail deliver`) queued.
POLL_INTERVAL = 1.0
#: How often it also looks for old jobs queued again (`wodmail retry`).
RESCAN_INTERVAL = 5.0
#: The wait before a job's first retry after a transient failure; it doubles each time.
FIRST_RETRY = 1.0
#: Each wait is between this share of the backoff and all of it.
RETRY_JITTER = 0.5
#: How long a job waits when the queue cannot record its progress (disk full, read-only).
QUEUE_UNAVAILABLE_WAIT = 5.0


class PastDeadline(Exception):
    """A job's deadline came while it ran (its verb was stopped there)."""


class Scheduler:
    """Which open job may run next: per-student order, nothing twice at once.

    `lines` keeps each student's open jobs in arrival order. A job is a candidate when it
    heads the line of every student it touches and is not running; candidates wait in a
    heap by id (arrival order), postponed ones in a heap by due time. Each event (a job
    added, ended or postponed) looks only at the lines it touches, so a burst of a
    thousand queued students costs no more per job than a single one.
    """

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.lines: dict[int, deque[int]] = {}
        self.running: set[int] = set()
        self.highest = 0
        self._candidates: list[int] = []
        self._queued: set[int] = set()
        self._later: list[tuple[float, int]] = []

    def add(self, job: Job) -> None:
        if job.id in self.jobs:
            return
        self.jobs[job.id] = job
        self.highest = max(self.highest, job.id)
        for stdid in job.command.students:
            self.lines.setdefault(stdid, deque()).append(job.id)
        self._consider(job.id)

    def postpone(self, job: Job) -> None:
        """A job that ran and must wait (until `job.not_before`) keeps its place in line."""
        self.jobs[job.id] = job
        self.running.discard(job.id)
        self._consider(job.id)

    def start(self, job_id: int) -> None:
        self.running.add(job_id)

    def remove(self, job_id: int) -> None:
        job = self.jobs.pop(job_id)
        self.running.discard(job_id)
        for stdid in job.command.students:
            line = self.lines[stdid]
            line.remove(job_id)
            if line:
                self._consider(line[0])
            else:
                del self.lines[stdid]

    def ready(self, now: float, limit: int) -> tuple[list[Job], float | None]:
        """Up to `limit` jobs that may start now, oldest first, and when the next postponed
        one becomes due (if any). The caller starts every job returned."""
        while self._later and self._later[0][0] <= now:
            _due, job_id = heapq.heappop(self._later)
            self._consider(job_id)
        startable: list[Job] = []
        while self._candidates and len(startable) < limit:
            job_id = heapq.heappop(self._candidates)
            self._queued.discard(job_id)
            job = self.jobs.get(job_id)
            if job is None or job_id in self.running or not self._heads(job):
                continue
            if job.not_before > now:
                heapq.heappush(self._later, (job.not_before, job_id))
                continue
            startable.append(job)
        return startable, (self._later[0][0] if self._later else None)

    def _heads(self, job: Job) -> bool:
        return all(self.lines[s][0] == job.id for s in job.command.students)

    def _consider(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or job_id in self.running or job_id in self._queued or not self._heads(job):
            return
        self._queued.add(job_id)
        heapq.heappush(self._candidates, job_id)


class Worker:
    def __init__(
        self,
        db_path: Path,
        writer: queue.Writer,
        services: Services,
        verbs: Mapping[str, Verb],
        mint: PasswordMint,
        *,
        concurrency: int,
        retry_for: float,
        backoff_cap: float = 300.0,
        on_callbacks: Callable[[], None] | None = None,
        on_end: Callable[[], None] | None = None,
        figures: JobFigures | None = None,
    ) -> None:
        self._reader = queue.connect(db_path)
        self._on_end = on_end
        """Called when a job ended (its reply may be due: wodmail.replies)."""
        self._writer = writer
        self._services = services
        self._verbs = verbs
        self._mint = mint
        self._concurrency = concurrency
        self._retry_for = retry_for
        self._backoff_cap = backoff_cap
        self._on_callbacks = on_callbacks
        self._figures = figures
        """The jobs ended and their steps' durations, counted for the metrics (wodmail.figures)."""
        self.scheduler = Scheduler()
        self._wake = asyncio.Event()
        self._arrived = False
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._stopping = False
        self.finished = 0

    def wake(self, _job_id: int | None = None) -> None:
        """New jobs are in the queue (the doors' process says so)."""
        self._arrived = True
        self._wake.set()

    async def run(self) -> None:
        """Take and run jobs until `stop` is called."""
        last_scan = last_look = 0.0
        while not self._stopping:
            self._wake.clear()
            now = time.time()
            if now - last_scan >= RESCAN_INTERVAL:
                self._load(rescan=True)
                last_scan = last_look = now
            elif self._arrived or now - last_look >= POLL_INTERVAL:
                # The query only reads ids above the highest seen.
                self._arrived = False
                self._load(rescan=False)
                last_look = now
            startable, next_due = self.scheduler.ready(now, self._concurrency - len(self._tasks))
            for job in startable:
                self.scheduler.start(job.id)
                self._tasks[job.id] = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
            timeout = POLL_INTERVAL if next_due is None else max(0.0, min(POLL_INTERVAL, next_due - now))
            await wait_for_wake(self._wake, timeout)

    def _load(self, rescan: bool) -> None:
        """Add the open jobs the scheduler does not hold yet. A read of the WAL, never waiting
        for the writer: cheaper inline than in a thread, and nothing ends while it runs (a
        job leaves the scheduler only once its end is committed, so it is never read back).

        Then drop the jobs waiting here that the queue cancelled: on a rescan every one no
        longer open, else those ahead of a new job that supersedes (wodmail.appdeadline)."""
        try:
            jobs = queue.open_jobs(self._reader, 0 if rescan else self.scheduler.highest)
            added = [job for job in jobs if job.id not in self.scheduler.jobs]
            for job in added:
                self.scheduler.add(job)
            running = self.scheduler.running
            if rescan:
                gone = set(self.scheduler.jobs) - running - {job.id for job in jobs}
            else:
                ahead = {
                    job_id
                    for job in added
                    if job.command.verb in SUPERSEDES
                    for stdid in job.command.students
                    for job_id in self.scheduler.lines.get(stdid, ())
                    if job_id < job.id and job_id not in running
                }
                states = queue.job_states(self._reader, sorted(ahead)) if ahead else {}
                gone = {job_id for job_id in ahead if states.get(job_id) not in ("queued", "running")}
        except sqlite3.Error as exc:
            log.warning("cannot read the queue: %s", exc)
            return
        for job_id in sorted(gone):
            log.info("job %d: cancelled in the queue, not run", job_id)
            self.scheduler.remove(job_id)

    async def stop(self, grace: float) -> None:
        """Stop taking jobs; let running ones finish for `grace` seconds, then hand them back."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._tasks.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        interrupted = [job_id for job_id in self._tasks]
        if interrupted:
            await self._writer.run(queue.requeue_stopped(interrupted))
        self._reader.close()

    async def _run_job(self, job: Job) -> None:
        try:
            await self._execute(job)
        except TryLater as exc:
            # The queue cannot commit (disk full, read-only STATEDIR). The job keeps its place
            # and is tried again; its finished steps are skipped then, the rest converge.
            log.error(
                "job %d: the queue cannot record progress (%s); trying again in %.0f s",
                job.id,
                exc,
                QUEUE_UNAVAILABLE_WAIT,
            )
            self.scheduler.postpone(replace(job, not_before=time.time() + QUEUE_UNAVAILABLE_WAIT))
        finally:
            self._tasks.pop(job.id, None)
            self._wake.set()

    async def _execute(self, job: Job) -> None:
        command = job.command
        label = command.label
        if job.deadline is not None and time.time() >= job.deadline:
            await self._fail_past_deadline(job, label, job.error)
            return
        done = await self._writer.run(queue.claim(job.id))
        if done is None:
            log.info("job %d: %s was cancelled before it ran", job.id, label)
            self.scheduler.remove(job.id)
            return
        run = JobRun(
            job,
            done,
            self._writer,
            self._mint,
            self._on_callbacks,
            self._services.homes.durable,
            callbacks_enabled=self._services.callbacks_enabled,
            on_step=self._figures.step_took if self._figures is not None else None,
        )
        started = time.monotonic()
        try:
            outcome = await self._run_verb(job, run)
        except PastDeadline:
            await self._fail_past_deadline(job, label, None)
            return
        except TransientError as exc:
            if time.time() - job.received < self._retry_for:
                delay = backoff(job.retries + 1, first=FIRST_RETRY, cap=self._backoff_cap, jitter=RETRY_JITTER)
                not_before = time.time() + delay
                if job.deadline is not None and not_before >= job.deadline:
                    await self._fail_past_deadline(job, label, str(exc))
                    return
                log.info("job %d: %s: %s; retrying in %.1f s", job.id, label, exc, delay)
                await self._writer.run(queue.postpone(job.id, not_before, str(exc)))
                self.scheduler.postpone(replace(job, not_before=not_before, retries=job.retries + 1))
                return
            await self._end(job, "failed", None, f"gave up after {self._retry_for:.0f} s: {exc}")
            log.warning("job %d: %s failed: %s", job.id, label, exc)
            return
        except StepFailed as exc:
            await self._end(job, "failed", None, str(exc))
            log.warning("job %d: %s failed: %s", job.id, label, exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %d: %s: unexpected error", job.id, label)
            await self._end(job, "failed", None, f"internal error: {type(exc).__name__}: {exc}")
            return
        await run.flush()
        await self._end(job, "done", outcome, None)
        log.info("job %d: %s done in %.3f s: %s", job.id, label, time.monotonic() - started, outcome)

    async def _run_verb(self, job: Job, run: JobRun) -> str:
        """The job's verb, stopped at the job's deadline if it has one (PastDeadline)."""
        verb = self._verbs[job.command.verb]
        if job.deadline is None:
            return await verb.run(run, self._services)
        loop = asyncio.get_running_loop()
        timer = asyncio.timeout_at(loop.time() + (job.deadline - time.time()))
        try:
            async with timer:
                return await verb.run(run, self._services)
        except TimeoutError:
            if timer.expired():
                raise PastDeadline from None
            raise

    async def _fail_past_deadline(self, job: Job, label: str, last_error: str | None) -> None:
        assert job.deadline is not None
        error = past_deadline(job.received, job.deadline, last_error)
        await self._writer.run(queue.fail_past_deadline(job.id, error))
        self.scheduler.remove(job.id)
        self.finished += 1
        if self._figures is not None:
            self._figures.job_ended(job.command.verb, "failed")
        if self._on_end is not None:
            self._on_end()
        log.warning("job %d: %s failed: %s", job.id, label, error)

    async def _end(self, job: Job, state: str, outcome: str | None, error: str | None) -> None:
        await self._writer.run(queue.finish(job.id, state, outcome, error))
        self.scheduler.remove(job.id)
        self.finished += 1
        if self._figures is not None:
            self._figures.job_ended(job.command.verb, state)
        if self._on_end is not None:
            self._on_end()
