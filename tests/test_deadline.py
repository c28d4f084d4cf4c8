"""The registration app's deadline: a CREATE it has given up on never activates a customer.

The app waits 10 minutes for a customer to become active, then sends CLEANUP and tells the
person the deployment failed. Here APPDEADLINE is a second or two, the directory of an LDAP
workshop (CHLG-Sample here) hangs or is down, and the registration-app stand-in
(tests/standins.py) records every callback that arrives.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Site, legacy_dialogue, send_legacy, with_app, wodmail
from tests.ports import free_port
from tests.standins import RegistrationApp
from wodmail import queue
from wodmail.command import parse_command
from wodmail.inbound import InboundMail


@pytest.fixture
def silent_ldap() -> Iterator[int]:
    """An LDAP server that hangs: the kernel takes its connections (the listen backlog) and
    it never answers a bind. Its port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


def with_directory(site: Site, port: int) -> None:
    """CHLG-Sample (students 1001..1100) keeps its passwords in LDAP, at 127.0.0.1:`port`."""
    site.workshops["CHLG-Sample"] = {"range": [1001, 1100], "ldap": True}
    site.values.update(
        LDAPURI=f"ldap://127.0.0.1:{port}",
        LDAPBINDDN="cn=wodmail,ou=Services,dc=example,dc=com",
        LDAPBINDPW="ldap-secret",
        LDAPTIMEOUT=60,
    )


def started(site: Site) -> Daemon:
    """The daemon, once its jobs process runs: a deadline counts from a command's arrival,
    and the jobs process may take seconds to start on a busy machine."""
    daemon = Daemon(site).start()
    deadline = time.monotonic() + 30
    while "jobs process ready" not in daemon.logs():
        assert time.monotonic() < deadline, daemon.logs()[-2000:]
        time.sleep(0.05)
    return daemon


def activations(app: RegistrationApp) -> list[str]:
    """The customers the app was told are active."""
    return [call.path for call in app.puts("/customer/") if isinstance(call.body, dict) and "active" in call.body]


def job(site: Site, job_id: int) -> tuple[str, str | None, int, float, float | None]:
    with site.db() as conn:
        row = conn.execute("SELECT state, error, retries, not_before, started FROM jobs WHERE id = ?", (job_id,))
        state, error, retries, not_before, started = row.fetchone()
    return state, error, retries, not_before, started


def wait_until(site: Site, job_id: int, states: tuple[str, ...], timeout: float = 15.0, retries: int = 0) -> str | None:
    """Wait until job `job_id` is in one of `states` (with at least `retries` retries); its error."""
    deadline = time.monotonic() + timeout
    while True:
        state, error, tries, *_ = job(site, job_id)
        if state in states and tries >= retries:
            return error
        assert time.monotonic() < deadline, (job_id, state, error, tries)
        time.sleep(0.05)


def test_a_create_is_stopped_at_the_deadline_and_a_cleanup_supersedes_the_create_waiting_behind(
    site: Site, app: RegistrationApp, silent_ldap: int
) -> None:
    """One worker. CREATE 1001 hangs on the directory until its deadline stops it; CREATE 5,
    waiting behind it for the worker, is superseded by the app's CLEANUP 5, which runs instead."""
    with_app(site, app)
    with_directory(site, silent_ldap)
    site.values.update(WORKERS=1, APPDEADLINE=2)
    daemon = started(site)
    try:
        send_legacy(site.legacy_port, legacy_dialogue("CREATE 1001 c1001 ada@example.org", "CHLG-Sample"))
        wait_until(site, 1, ("running",))
        send_legacy(site.legacy_port, legacy_dialogue("CREATE 5 c5 alan@example.org", "WKSHP-Sample"))
        send_legacy(site.legacy_port, legacy_dialogue("CLEANUP 5 c5", "WKSHP-Sample"))
        assert wait_until(site, 2, ("cancelled",), timeout=5) == (
            "cancelled: superseded by job 3 (CLEANUP), which arrived before it finished"
        )
        error = wait_until(site, 1, ("failed",), timeout=10)
        assert error is not None and error.startswith("not finished within APPDEADLINE (2 s from its arrival")
        wait_until(site, 3, ("done",))
        assert job(site, 2)[4] is None  # the superseded CREATE never started
        time.sleep(0.5)  # anything late would have arrived by now
        assert activations(app) == []
        assert {"cleaned": "true"} in [call.body for call in app.puts("/customer/c5")]
        shown = wodmail(site, "jobs", "show", "2").stdout.decode()
        assert "state     cancelled" in shown and "superseded by job 3 (CLEANUP)" in shown
    finally:
        daemon.stop()


def test_a_cleanup_supersedes_a_create_that_is_retrying_and_runs_at_once(site: Site, app: RegistrationApp) -> None:
    """The directory is down: CREATE 1001 retries with a growing pause. The app's CLEANUP
    cancels it and is tried at once, not after the CREATE's next try."""
    with_app(site, app)
    with_directory(site, free_port())  # nothing listens there
    site.values.update(APPDEADLINE=600)
    daemon = started(site)
    try:
        send_legacy(site.legacy_port, legacy_dialogue("CREATE 1001 c1001 ada@example.org", "CHLG-Sample"))
        wait_until(site, 1, ("queued",), retries=3)  # the next try is 2 to 4 s away
        _state, _error, _retries, next_try, _started = job(site, 1)
        send_legacy(site.legacy_port, legacy_dialogue("CLEANUP 1001 c1001", "CHLG-Sample"))
        assert wait_until(site, 1, ("cancelled",), timeout=5) == (
            "cancelled: superseded by job 2 (CLEANUP), which arrived before it finished"
        )
        deadline = time.monotonic() + 5
        while job(site, 2)[4] is None:  # the CLEANUP starts (and meets the same directory)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job(site, 2)[4] < next_try  # type: ignore[operator]
        assert activations(app) == []
    finally:
        daemon.stop()


def test_an_active_callback_not_delivered_by_the_deadline_is_never_sent(site: Site, app: RegistrationApp) -> None:
    """The CREATE finishes in time, but the app is down: the password goes out once it is
    back, the activation never (it expired with the deadline), visibly."""
    with_app(site, app)
    site.values.update(APPDEADLINE=1.5, CALLBACKBACKOFFMAX=0.5)
    app.set_down(True)
    daemon = started(site)
    try:
        send_legacy(site.legacy_port, legacy_dialogue("CREATE 7 c7 ada@example.org", "WKSHP-Sample"))
        assert wait_until(site, 1, ("done", "failed")) is None  # done in time: the app is what is down
        time.sleep(2.0)  # past the deadline, the callbacks still undelivered
        app.set_down(False)
        assert app.wait_for(lambda standin: bool(standin.puts("/student/1007")), timeout=10)
        time.sleep(0.5)
        assert activations(app) == []
        with site.db() as conn:
            rows = conn.execute("SELECT path, state, last_error FROM outbox ORDER BY id").fetchall()
        assert [(path, state) for path, state, _error in rows] == [
            ("/student/1007", "delivered"),
            ("/customer/c7", "expired"),
        ]
        assert "APPDEADLINE" in rows[1][2]
        listing = wodmail(site, "outbox").stdout.decode()
        assert "1 expired" in listing and "expired  PUT /customer/c7" in listing
    finally:
        daemon.stop()


# --- in the queue: one transaction each ---------------------------------------------------------


def queued(writer: queue.Writer, subject: str, **options: Any) -> queue.Enqueued:
    raw = f"Subject: {subject}\n\nWKSHP-Sample\n".encode()
    mail = InboundMail("legacy", "127.0.0.1", "wod@example.com", raw)
    return writer.run_sync(queue.enqueue(parse_command(raw), mail, **options))


def test_a_cleanup_cancels_only_the_students_queued_create_in_its_own_transaction(tmp_path: Path) -> None:
    db_path = queue.open_database(tmp_path)
    writer = queue.Writer(db_path)
    try:
        waiting = queued(writer, "CREATE 5 c5", deadline_after=600.0).job_id
        running = queued(writer, "CREATE 6 c6", deadline_after=600.0).job_id
        other = queued(writer, "CREATE 7 c7", deadline_after=600.0).job_id
        assert writer.run_sync(queue.claim(running)) == {}
        cleanup5 = queued(writer, "CLEANUP 5 c5", supersedes=frozenset({"CREATE"}))
        cleanup6 = queued(writer, "CLEANUP 6 c6", supersedes=frozenset({"CREATE"}))
        assert (cleanup5.cancelled, cleanup6.cancelled) == ((waiting,), ())
        assert writer.run_sync(queue.claim(waiting)) is None  # a worker that read it earlier takes nothing
        conn = queue.connect(db_path)
        states = {job.id: (job.state, job.deadline is not None) for job in queue.list_jobs(conn)}
        conn.close()
        assert states == {
            waiting: ("cancelled", True),
            running: ("running", True),
            other: ("queued", True),
            cleanup5.job_id: ("queued", False),  # the app waits for no CLEANUP
            cleanup6.job_id: ("queued", False),
        }
    finally:
        writer.close()


def test_an_operators_retry_gives_a_create_its_deadline_again(tmp_path: Path) -> None:
    db_path = queue.open_database(tmp_path)
    writer = queue.Writer(db_path)
    try:
        job_id = queued(writer, "CREATE 5 c5", deadline_after=600.0).job_id
        writer.run_sync(queue.fail_past_deadline(job_id, "not finished within APPDEADLINE"))
        time.sleep(0.05)
        writer.run_sync(queue.retry(job_id))
        conn = queue.connect(db_path)
        job = queue.get_job(conn, job_id)
        conn.close()
        assert job is not None and job.state == "queued" and job.deadline is not None
        assert job.deadline - job.received == pytest.approx(600.0)
    finally:
        writer.close()
