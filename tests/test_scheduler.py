"""The scheduler and the worker (wodmail.worker), driven directly on a real queue in tmp_path.

Commands for one student run one at a time in arrival order (a RESET range waits for, and
holds, each of its students); different students run in parallel; a job that must wait
keeps its place in line; a transient failure is retried with backoff until RETRYFOR.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Site
from wodmail import queue
from wodmail.command import parse_command
from wodmail.errors import StepFailed, TransientError
from wodmail.inbound import InboundMail
from wodmail.location import load_location
from wodmail.passwords import PasswordMint
from wodmail.transport import HttpClient
from wodmail.verbspec import VerbRegistry, VerbSpec
from wodmail.wiring import build_services
from wodmail.worker import Scheduler, Worker

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services


def enqueue(db_path: Path, *subjects: str) -> list[queue.Job]:
    """Commit commands to a real queue; the open jobs, as the worker reads them."""
    writer = queue.Writer(db_path)
    try:
        for subject in subjects:
            raw = f"Subject: {subject}\n\nWKSHP-SampleReset\n".encode()
            mail = InboundMail("smtp", "192.0.2.1", "app@example.com", raw)
            writer.run_sync(queue.enqueue(parse_command(raw), mail))
    finally:
        writer.close()
    reader = queue.connect(db_path)
    try:
        return queue.open_jobs(reader)
    finally:
        reader.close()


def ids(jobs: list[queue.Job]) -> list[int]:
    return [job.id for job in jobs]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return queue.open_database(tmp_path / "state")


# -- the scheduler ------------------------------------------------------------------------------


def test_one_student_at_a_time_in_arrival_order_others_in_parallel(db_path: Path) -> None:
    scheduler = Scheduler()
    for job in enqueue(db_path, "CLEANUP 5 c5", "PURGE 5 c5", "CLEANUP 6 c6", "CREATE 5 c9"):
        scheduler.add(job)
    startable, next_due = scheduler.ready(time.time(), limit=10)
    assert ids(startable) == [1, 3] and next_due is None
    for job in startable:
        scheduler.start(job.id)
    assert scheduler.ready(time.time(), limit=10) == ([], None)  # running: not handed out twice
    scheduler.remove(3)
    assert scheduler.ready(time.time(), limit=10) == ([], None)  # 6's line is empty; 5's head runs
    scheduler.remove(1)
    assert ids(scheduler.ready(time.time(), limit=10)[0]) == [2]
    scheduler.start(2)
    scheduler.remove(2)
    assert ids(scheduler.ready(time.time(), limit=10)[0]) == [4]
    assert scheduler.highest == 4


def test_a_range_waits_for_each_of_its_students_and_holds_them(db_path: Path) -> None:
    scheduler = Scheduler()
    jobs = enqueue(db_path, "CLEANUP 1102 c1", "RESET 1101,1103 c7", "CREATE 1101 c2", "CREATE 1104 c3")
    for job in jobs:
        scheduler.add(job)
    assert ids(scheduler.ready(time.time(), limit=10)[0]) == [1, 4]
    scheduler.start(1)
    scheduler.start(4)
    scheduler.remove(1)
    assert ids(scheduler.ready(time.time(), limit=10)[0]) == [2]  # 1101's CREATE waits behind it
    scheduler.start(2)
    scheduler.remove(2)
    assert ids(scheduler.ready(time.time(), limit=10)[0]) == [3]
    assert sorted(scheduler.lines) == [1101, 1104]  # 1102 and 1103 are free again


def test_the_limit_takes_the_oldest_first(db_path: Path) -> None:
    scheduler = Scheduler()
    for job in reversed(enqueue(db_path, *(f"CLEANUP {n} c{n}" for n in range(1, 7)))):
        scheduler.add(job)
        scheduler.add(job)  # twice: still one job
    assert ids(scheduler.ready(time.time(), limit=2)[0]) == [1, 2]
    assert ids(scheduler.ready(time.time(), limit=10)[0]) == [3, 4, 5, 6]


def test_a_postponed_job_keeps_its_place_until_it_is_due(db_path: Path) -> None:
    scheduler = Scheduler()
    first, second = enqueue(db_path, "CLEANUP 5 c5", "PURGE 5 c5")
    scheduler.add(first)
    scheduler.add(second)
    now = time.time()
    (started,) = scheduler.ready(now, limit=10)[0]
    scheduler.start(started.id)
    scheduler.postpone(replace(started, not_before=now + 30))
    assert scheduler.ready(now, limit=10) == ([], now + 30)  # and the PURGE behind it waits too
    assert scheduler.ready(now + 29, limit=10) == ([], now + 30)
    assert ids(scheduler.ready(now + 30, limit=10)[0]) == [first.id]


# -- the worker ---------------------------------------------------------------------------------


@dataclass
class Scripted:
    """A verb whose run is the test's: `run` is called with the job run and the services."""

    spec: VerbSpec
    script: Callable[[JobRun], Awaitable[str]]

    async def run(self, job: JobRun, services: Services) -> str:
        return await self.script(job)


def scripted(script: Callable[[JobRun], Awaitable[str]]) -> VerbRegistry:
    """Every verb of the tests' commands runs `script`."""
    return VerbRegistry(
        Scripted(VerbSpec(name=name, description="scripted", student_range=name == "RESET"), script)
        for name in ("CREATE", "CLEANUP", "RESET", "PURGE")
    )


@dataclass
class Working:
    db_path: Path
    start: Callable[..., Awaitable[Worker]]

    def job(self, job_id: int) -> queue.Job:
        reader = queue.connect(self.db_path)
        try:
            job = queue.get_job(reader, job_id)
        finally:
            reader.close()
        assert job is not None
        return job

    async def wait_ended(self, *job_ids: int, timeout: float = 20.0) -> list[queue.Job]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = [self.job(job_id) for job_id in job_ids]
            if all(job.state in ("done", "failed") for job in jobs):
                return jobs
            assert time.monotonic() < deadline, [(job.id, job.state) for job in jobs]
            await asyncio.sleep(0.02)


@pytest.fixture
async def working(site: Site) -> AsyncIterator[Working]:
    """A Worker on the site's real queue and services; `start(verbs, **options)` runs one."""
    location = load_location(site.write())
    db_path = queue.open_database(location.state_dir)
    writer = queue.Writer(db_path)
    client = HttpClient(timeout=5.0)
    services, _ = build_services(location, client)
    mint = PasswordMint.for_state_dir(location.state_dir)
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(verbs: VerbRegistry, retry_for: float = 60.0, backoff_cap: float = 0.05) -> Worker:
        worker = Worker(
            db_path, writer, services, verbs, mint, concurrency=4, retry_for=retry_for, backoff_cap=backoff_cap
        )
        running.append((worker, asyncio.create_task(worker.run())))
        return worker

    try:
        yield Working(db_path, start)
    finally:
        for worker, task in running:
            await worker.stop(5)
            await asyncio.wait_for(task, 5)
        await services.homes.keeper.aclose()
        await client.aclose()
        writer.close()


async def test_the_worker_runs_one_students_jobs_in_order_and_students_in_parallel(working: Working) -> None:
    log: list[str] = []
    both_started = asyncio.Event()
    started: set[int] = set()

    async def script(job: JobRun) -> str:
        command = job.command
        log.append(f"start {job.id}")
        started.add(command.stdid)
        if {5, 6} <= started:
            both_started.set()
        if job.id in (1, 3):  # the first jobs of 5 and 6: each waits until the other runs too
            await asyncio.wait_for(both_started.wait(), 5)
        await asyncio.sleep(0.02)
        log.append(f"end {job.id}")
        return f"{command.verb} {command.stdid}"

    enqueue(working.db_path, "CLEANUP 5 c5", "PURGE 5 c5", "CLEANUP 6 c6")
    await working.start(scripted(script))
    jobs = await working.wait_ended(1, 2, 3)
    assert [(job.state, job.outcome) for job in jobs] == [
        ("done", "CLEANUP 5"),
        ("done", "PURGE 5"),
        ("done", "CLEANUP 6"),
    ]
    assert log.index("end 1") < log.index("start 2")


async def test_a_transient_failure_is_retried_and_the_done_steps_are_skipped(working: Working) -> None:
    calls: list[str] = []

    async def once(name: str) -> str:
        calls.append(name)
        if name == "flaky" and calls.count("flaky") == 1:
            raise TransientError("LDAP is busy")
        return name

    async def script(job: JobRun) -> str:
        await job.step("first", once, "first")
        await job.step("flaky", once, "flaky")
        return "converged"

    enqueue(working.db_path, "CLEANUP 5 c5")
    began = time.time()
    await working.start(scripted(script))
    (job,) = await working.wait_ended(1)
    assert (job.state, job.outcome, job.retries) == ("done", "converged", 1)
    assert calls == ["first", "flaky", "flaky"]
    assert job.not_before > began  # it was put back with a backoff


async def test_a_transient_failure_past_retryfor_fails_the_job(working: Working) -> None:
    async def script(job: JobRun) -> str:
        raise TransientError("JupyterHub is down")

    enqueue(working.db_path, "CLEANUP 5 c5")
    await working.start(scripted(script), retry_for=0.3)
    (job,) = await working.wait_ended(1)
    assert job.state == "failed" and job.retries >= 1
    assert job.error is not None and job.error.startswith("gave up after 0 s: JupyterHub is down")


async def test_a_step_failure_fails_the_job_at_once_and_the_next_job_runs(working: Working) -> None:
    async def script(job: JobRun) -> str:
        if job.command.verb == "CLEANUP":
            raise StepFailed("the workshop needs a reset hook")
        if job.command.verb == "PURGE":
            raise KeyError("bug")
        return "created"

    enqueue(working.db_path, "CLEANUP 5 c5", "PURGE 5 c5", "CREATE 5 c6")
    await working.start(scripted(script))
    jobs = await working.wait_ended(1, 2, 3)
    assert [(job.state, job.error, job.retries) for job in jobs] == [
        ("failed", "the workshop needs a reset hook", 0),
        ("failed", "internal error: KeyError: 'bug'", 0),
        ("done", None, 0),
    ]
