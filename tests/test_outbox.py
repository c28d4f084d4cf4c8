"""The outbox (wodmail.outbox), driven directly: a real queue in tmp_path, the real client
(wodmail.regapp) and the registration-app stand-in of tests/standins.py.

Callbacks reach the app in the order their jobs made them, per student; the password is
filled in at delivery and stored nowhere; a failure is retried with backoff; a callback
the app keeps refusing is set aside, visible, never dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import same_secret
from tests.standins import RegistrationApp as AppStandin
from wodmail import callbacks, queue
from wodmail.backoff import backoff
from wodmail.command import parse_command
from wodmail.inbound import InboundMail
from wodmail.outbox import MAX_CLIENT_ERRORS, Outbox
from wodmail.passwords import PasswordMint
from wodmail.queue import Callback
from wodmail.regapp import RegistrationApp
from wodmail.transport import HttpClient


@dataclass
class Outgoing:
    """A queue whose jobs' steps leave callbacks, and an outbox delivering them to `app`."""

    db_path: Path
    writer: queue.Writer
    mint: PasswordMint
    app: AppStandin
    client: RegistrationApp

    def queue_callbacks(self, stdid: int, *sent: Callback) -> int:
        """A job for student `stdid` whose one step queued `sent`; its id."""
        raw = f"Subject: CLEANUP {stdid} c{stdid}\n\nWKSHP-Sample\n".encode()
        mail = InboundMail("smtp", "192.0.2.1", "app@example.com", raw)
        job = self.writer.run_sync(queue.enqueue(parse_command(raw), mail))
        self.writer.run_sync(queue.step_done(job.job_id, stdid, f"report {len(sent)}", time.time(), callbacks=sent))
        return job.job_id

    def entries(self) -> list[queue.OutboxEntry]:
        reader = queue.connect(self.db_path)
        try:
            return [
                queue.outbox_from_row(row)
                for row in reader.execute(f"SELECT {queue.OUTBOX_COLUMNS} FROM outbox ORDER BY id")
            ]
        finally:
            reader.close()

    async def deliver_until(self, outbox: Outbox, settled: int, timeout: float = 15.0) -> list[queue.OutboxEntry]:
        """Run `outbox` until `settled` entries are no longer pending; every entry then."""
        task = asyncio.create_task(outbox.run())
        outbox.wake()
        try:
            deadline = time.monotonic() + timeout
            while True:
                entries = self.entries()
                if sum(entry.state != "pending" for entry in entries) >= settled:
                    break
                assert not task.done(), "the outbox stopped"
                assert time.monotonic() < deadline, [(e.id, e.state, e.attempts, e.last_error) for e in entries]
                await asyncio.sleep(0.02)
            await outbox.wait_idle()
            assert outbox.idle and not task.done()
            return entries
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def app() -> Iterator[AppStandin]:
    with AppStandin() as standin:
        yield standin


@pytest.fixture
async def outgoing(tmp_path: Path, app: AppStandin) -> AsyncIterator[Outgoing]:
    db_path = queue.open_database(tmp_path / "state")
    writer = queue.Writer(db_path)
    http = HttpClient(timeout=5.0)
    try:
        yield Outgoing(
            db_path,
            writer,
            PasswordMint.for_state_dir(tmp_path / "state"),
            app,
            RegistrationApp(app.url, app.username, app.password, http),
        )
    finally:
        await http.aclose()
        writer.close()


def outbox_of(outgoing: Outgoing, backoff_cap: float = 0.05) -> Outbox:
    return Outbox(outgoing.db_path, outgoing.writer, outgoing.client, outgoing.mint, backoff_cap=backoff_cap)


async def test_each_students_callbacks_arrive_in_order_with_the_password_filled_in(
    outgoing: Outgoing, app: AppStandin
) -> None:
    first = outgoing.queue_callbacks(
        12, callbacks.student_password(1012, "student12"), callbacks.customer("c12", active="true")
    )
    outgoing.queue_callbacks(13, callbacks.customer("c13", active="true"))
    outgoing.queue_callbacks(12, callbacks.customer("c12", cleaned="true"))
    app.fail_next(2, status=503, path_prefix="/student/1012")  # the head of 12's line fails twice
    outbox = outbox_of(outgoing)
    try:
        entries = await outgoing.deliver_until(outbox, settled=4)
    finally:
        outbox.close()
    assert [(entry.state, entry.attempts) for entry in entries] == [  # attempts: every try, the last too
        ("delivered", 3),
        ("delivered", 1),
        ("delivered", 1),
        ("delivered", 1),
    ]
    assert outbox.delivered == 4
    twelve = [call.path for call in app.puts() if call.path in ("/student/1012", "/customer/c12")]
    assert twelve == ["/student/1012", "/customer/c12", "/customer/c12"]  # none overtook the head
    assert app.state()["customer"]["c12"] == {"active": "true", "cleaned": "true"}
    sent_password = app.state()["student"]["1012"]["password"]
    assert same_secret(sent_password, outgoing.mint.password(first, "student12"))
    assert all("password" not in entry.body for entry in entries)  # stored nowhere


async def test_a_callback_waits_while_the_app_is_down_and_is_sent_when_it_is_back(
    outgoing: Outgoing, app: AppStandin
) -> None:
    outgoing.queue_callbacks(12, callbacks.customer("c12", cleaned="true"))
    app.set_down(True)
    outbox = outbox_of(outgoing, backoff_cap=0.2)
    task = asyncio.create_task(outbox.run())
    try:
        deadline = time.monotonic() + 10
        while (entry := outgoing.entries()[0]).attempts < 3:
            assert time.monotonic() < deadline, entry
            await asyncio.sleep(0.02)
        assert entry.state == "pending" and entry.last_error is not None and "503" in entry.last_error
        assert entry.next_attempt > time.time() - 1  # put off, not dropped
        app.set_down(False)
        while outgoing.entries()[0].state != "delivered":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        outbox.close()
    assert app.state()["customer"]["c12"] == {"cleaned": "true"}


async def test_a_callback_the_app_keeps_refusing_is_set_aside_and_the_next_one_goes(
    outgoing: Outgoing, app: AppStandin
) -> None:
    outgoing.queue_callbacks(12, callbacks.customer("c12", active="false"))
    outgoing.queue_callbacks(12, callbacks.customer("c12", cleaned="true"))
    app.fail_next(MAX_CLIENT_ERRORS, status=400, path_prefix="/customer/c12")
    outbox = outbox_of(outgoing)
    try:
        refused, after = await outgoing.deliver_until(outbox, settled=2)
    finally:
        outbox.close()
    assert (refused.state, refused.attempts) == ("failed", MAX_CLIENT_ERRORS)
    assert refused.last_error is not None and "400" in refused.last_error and "/customer/c12" in refused.last_error
    assert after.state == "delivered"
    assert app.state()["customer"]["c12"] == {"cleaned": "true"}


async def test_pending_callbacks_queued_by_another_process_are_found(outgoing: Outgoing, app: AppStandin) -> None:
    outbox = outbox_of(outgoing)
    task = asyncio.create_task(outbox.run())
    try:
        await asyncio.sleep(0.1)  # running, nothing to do
        assert outbox.idle
        outgoing.queue_callbacks(14, callbacks.workshop(7, capacity="3"))
        outbox.wake()  # what the worker's on_callbacks does
        deadline = time.monotonic() + 10
        while outgoing.entries()[0].state != "delivered":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        outbox.close()
    assert [(call.path, call.body) for call in app.puts()] == [("/workshop/7", {"capacity": "3"})]


def test_the_backoff_grows_to_its_cap_and_spreads() -> None:
    assert [backoff(n, first=1.0, cap=300.0) for n in (0, 1, 2, 3, 9, 10)] == [1.0, 1.0, 2.0, 4.0, 256.0, 300.0]
    assert backoff(10**9, first=0.5, cap=30.0) == 30.0  # no overflow for a job retried forever
    assert [round(backoff(n, first=0.05, factor=1.5, cap=1.0), 4) for n in (1, 2, 3, 9)] == [0.05, 0.075, 0.1125, 1.0]
    spread = {backoff(4, first=1.0, cap=300.0, jitter=0.5) for _ in range(200)}
    assert len(spread) > 100 and min(spread) >= 4.0 and max(spread) <= 8.0
    with pytest.raises(ValueError):
        backoff(1, first=0.0, cap=1.0)
