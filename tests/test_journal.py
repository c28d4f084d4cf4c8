"""The step journal (wodmail.journal.JobRun), driven directly on a real queue in tmp_path.

Each step is done once per job, whatever the runs; a step that wrote to the homes is
recorded only after the homes are flushed; callbacks are queued with their step, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wodmail import callbacks, queue
from wodmail.command import parse_command
from wodmail.errors import TransientError, TryLater
from wodmail.inbound import InboundMail
from wodmail.journal import JobRun
from wodmail.passwords import PasswordMint


class Queue:
    """A real queue with one job in it (CLEANUP of student 12 for customer c12)."""

    def __init__(self, root: Path) -> None:
        self.db_path = queue.open_database(root / "state")
        self.writer = queue.Writer(self.db_path)
        self.mint = PasswordMint.for_state_dir(root / "state")
        raw = b"Subject: CLEANUP 12 c12\n\nWKSHP-Sample\n"
        enqueued = self.writer.run_sync(
            queue.enqueue(parse_command(raw), InboundMail("smtp", "192.0.2.1", "app@example.com", raw))
        )
        job = self.read(lambda conn: queue.get_job(conn, enqueued.job_id))
        assert job is not None
        self.job: queue.Job = job

    def read(self, query: Any) -> Any:
        reader = queue.connect(self.db_path)
        try:
            return query(reader)
        finally:
            reader.close()

    def steps(self) -> dict[str, tuple[str, Any, str | None]]:
        steps = self.read(lambda conn: queue.steps_of(conn, self.job.id))
        return {step.name: (step.state, step.result, step.error) for step in steps}

    def outbox(self) -> list[queue.OutboxEntry]:
        entries: list[queue.OutboxEntry] = self.read(lambda conn: queue.callbacks_of(conn, self.job.id))
        return entries

    async def run(self, **options: Any) -> JobRun:
        """A new run of the job, as the worker starts one: claimed, with what earlier runs did."""
        done = await self.writer.run(queue.claim(self.job.id))
        assert done is not None, "the job is no longer queued"
        return JobRun(self.job, done, self.writer, self.mint, **options)


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Queue]:
    opened = Queue(tmp_path)
    yield opened
    opened.writer.close()


async def test_a_step_done_in_an_earlier_run_is_not_done_again(jobs: Queue) -> None:
    calls: list[int] = []

    async def count(value: int) -> int:
        calls.append(value)
        return value * 2

    first = await jobs.run()
    assert await first.step("count", count, 21) == 42
    await first.flush()
    assert jobs.steps() == {"count": ("done", 42, None)}
    second = await jobs.run()  # after a crash, or a transient failure later in the job
    assert await second.step("count", count, 99) == 42
    assert calls == [21]


async def test_a_failed_step_is_recorded_and_raised_then_done_on_the_next_run(jobs: Queue) -> None:
    async def flaky(fail: BaseException | None) -> str:
        if fail is not None:
            raise fail
        return "fine"

    run = await jobs.run()
    with pytest.raises(TransientError):
        await run.step("flaky", flaky, TransientError("the directory is busy"))
    assert jobs.steps() == {"flaky": ("failed", None, "the directory is busy")}
    with pytest.raises(ZeroDivisionError):
        await run.step("broken", flaky, ZeroDivisionError("no"))
    assert jobs.steps()["broken"] == ("failed", None, "internal error: ZeroDivisionError: no")
    again = await jobs.run()
    assert await again.step("flaky", flaky, None) == "fine"
    await again.flush()
    assert jobs.steps()["flaky"] == ("done", "fine", None)


async def test_a_step_on_disk_is_recorded_only_after_the_homes_are_flushed(jobs: Queue) -> None:
    flushes: list[dict[str, tuple[str, Any, str | None]]] = []

    async def flush_disk() -> None:
        flushes.append(jobs.steps())  # what was recorded when the flush began

    async def write() -> str:
        return "written"

    run = await jobs.run(flush_disk=flush_disk)
    await run.step("deploy", write, on_disk=True)
    await run.step("after", write)  # held too: recorded in order, after the one on disk
    await run.flush()
    assert flushes == [{}]
    assert jobs.steps() == {"deploy": ("done", "written", None), "after": ("done", "written", None)}
    await run.step("read only", write)
    await run.flush()
    assert len(flushes) == 1  # nothing on disk since: no flush


async def test_a_held_step_is_recorded_with_its_own_duration_not_the_flush(jobs: Queue) -> None:
    """`wodmail jobs show` and the benchmark read a step's time from its record: a step held
    for the homes' flush took what it took, not until the flush."""

    async def flush_disk() -> None:
        await asyncio.sleep(0.5)

    async def write() -> str:
        await asyncio.sleep(0.05)
        return "written"

    run = await jobs.run(flush_disk=flush_disk)
    await run.step("deploy", write, on_disk=True)
    await run.flush()
    (step,) = jobs.read(lambda conn: queue.steps_of(conn, jobs.job.id))
    assert step.finished is not None and 0.05 <= step.finished - step.started < 0.4, step


async def test_callbacks_are_queued_once_after_the_held_steps(jobs: Queue) -> None:
    woken: list[float] = []
    flushed: list[float] = []

    async def flush_disk() -> None:
        flushed.append(time.monotonic())

    async def write() -> None:
        return None

    run = await jobs.run(flush_disk=flush_disk, on_callbacks=lambda: woken.append(time.monotonic()))
    await run.step("erase home", write, on_disk=True)
    report = (callbacks.student_password(1012, "student12"), callbacks.customer("c12", cleaned="true"))
    await run.callbacks("report", *report)
    assert flushed and woken and flushed[0] <= woken[0]  # the app hears nothing a power cut takes back
    assert jobs.steps() == {"erase home": ("done", None, None), "report": ("done", "2 queued", None)}
    entries = jobs.outbox()
    assert [(e.path, e.body, e.secret_field, e.secret_name) for e in entries] == [
        ("/student/1012", {}, "password", "student12"),
        ("/customer/c12", {"cleaned": "true"}, None, None),
    ]
    again = await jobs.run()
    await again.callbacks("report", *report)
    assert len(jobs.outbox()) == 2 and len(woken) == 1


async def test_without_a_registration_app_callbacks_are_recorded_as_not_sent(jobs: Queue) -> None:
    run = await jobs.run(callbacks_enabled=False)
    await run.callbacks("report", callbacks.customer("c12", cleaned="true"))
    assert jobs.steps() == {"report": ("done", "APIENDPOINT not set: not sent", None)}
    assert jobs.outbox() == []


async def test_a_runs_passwords_are_the_same_in_every_run(jobs: Queue) -> None:
    first, second = await jobs.run(), await jobs.run()
    assert first.password("student12") == second.password("student12")
    assert first.password("student12") != first.password("student13")


async def test_a_step_that_cannot_be_recorded_makes_the_flush_say_try_later(jobs: Queue) -> None:
    async def fine() -> str:
        return "fine"

    run = await jobs.run()
    await run.step("ok", fine)
    jobs.writer.run_sync(lambda conn: conn.execute("DROP TABLE steps"))
    await run.step("lost", fine)
    with pytest.raises(TryLater, match="no such table: steps"):
        await run.flush()  # the worker keeps the job's place and tries again, never calls it done
