"""Nothing lost, nothing done twice: crashes between steps, poison jobs, outages, full disks.

Every test runs the real daemon. Crashes are real: the daemon kills itself with SIGKILL at
a named point (WODMAIL_CRASH_AT, see wodmail/faults.py) and is started again without it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DATA, Daemon, Site, legacy_dialogue, same_secret, send_legacy, with_app, with_hub
from tests.standins import JupyterHubStandin, RegistrationApp

CREATE_STEPS = [
    "set password",
    "reset home",
    "deploy workshop",
    "create hook",
    "report to registration app",
    "start JupyterHub server",
]
CLEANUP_STEPS = [
    "completion",
    "cleanup hook",
    "rotate password",
    "report completion",
    "stop JupyterHub server",
    "release student",
    "erase home",
    "end processes",
    "report cleaned",
]
CALLBACK_STEPS = {"report to registration app", "report completion", "release student", "report cleaned"}


def crash_points() -> list[tuple[str, str, str]]:
    points = []
    for verb, steps in (("CREATE", CREATE_STEPS), ("CLEANUP", CLEANUP_STEPS)):
        for step in steps:
            if step in CALLBACK_STEPS:
                points += [(verb, step, "start"), (verb, step, "recorded")]
            else:
                points.append((verb, step, "done"))
    return points


def outbox_once(site: Site, text: str, timeout: float = 30.0) -> str:
    """`wodmail outbox` once it shows `text` (an AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while text not in (listing := wodmail(site, "outbox")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert text in listing, listing
    return listing


def wodmail(site: Site, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def notebook_password(site: Site, stdid: int) -> str | None:
    text = json.dumps(json.loads((site.home(stdid) / "WKSHP-Sample" / "1-Python101.ipynb").read_text()))
    found = re.search(r"password[^`]*`([A-Za-z0-9]{16})`", text)
    return found.group(1) if found else None


@pytest.mark.parametrize(("verb", "step", "when"), crash_points(), ids=lambda p: str(p).replace(" ", "-"))
def test_a_crash_between_steps_converges(
    site: Site,
    app: RegistrationApp,
    hub: JupyterHubStandin,
    daemon_factory: Callable[..., Daemon],
    verb: str,
    step: str,
    when: str,
) -> None:
    with_app(site, app)
    with_hub(site, hub)
    daemon = daemon_factory(WODMAIL_CRASH_AT=f"{verb}:{step}:{when}")

    assert daemon.send("CREATE 5 c5")[0] == 250
    if verb == "CREATE":
        assert daemon.wait_exit() == -signal.SIGKILL
        daemon = daemon_factory()
    site.wait_jobs(1)
    assert app.wait_for(lambda a: a.state()["customer"].get("c5", {}).get("active") == "true")
    created = app.state()["student"]["1005"]["password"]
    assert same_secret(notebook_password(site, 5), created), "notebook and registration app disagree"
    assert hub.running("student5")

    assert daemon.send("CLEANUP 5 c5")[0] == 250
    if verb == "CLEANUP":
        assert daemon.wait_exit() == -signal.SIGKILL
        daemon = daemon_factory()
    jobs = site.wait_jobs(2)
    assert [job[3] for job in jobs] == ["done", "done"], jobs
    assert app.wait_for(lambda a: a.state()["customer"]["c5"].get("cleaned") == "true")

    state = app.state()
    assert state["customer"]["c5"] == {"active": "true", "completionPercentage": "0", "cleaned": "true"}
    assert state["student"]["1005"]["assigned"] == "false"
    assert not same_secret(state["student"]["1005"]["password"], created)
    assert list(site.home(5).iterdir()) == []
    assert not hub.running("student5")
    applied = Counter((call.path, tuple(sorted(call.body))) for call in app.puts())
    assert applied == {
        ("/student/1005", ("password",)): 2,
        ("/customer/c5", ("active",)): 1,
        ("/customer/c5", ("completionPercentage",)): 1,
        ("/student/1005", ("assigned",)): 1,
        ("/customer/c5", ("cleaned",)): 1,
    }, "each callback is applied once"


def test_a_job_that_kills_the_daemon_every_time_is_set_aside(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    poison = {"WODMAIL_CRASH_AT": "CREATE 7:deploy workshop:done"}
    daemon = daemon_factory(**poison)
    assert daemon.send("CREATE 7 c7")[0] == 250
    assert daemon.wait_exit() == -signal.SIGKILL
    for _ in range(2):  # restarted, the job runs again and kills the daemon again
        restarted = subprocess.run(
            [sys.executable, "-m", "wodmail", "--location", str(site.file), "serve"],
            env={**os.environ, **poison},
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert restarted.returncode == -signal.SIGKILL
    daemon = daemon_factory(**poison)  # the third interruption: set aside at start-up
    assert daemon.send("CREATE 8 c8")[0] == 250
    jobs = site.wait_jobs(2, states=("done", "failed", "held"))
    assert [(job[2], job[3]) for job in jobs] == [(7, "held"), (8, "done")]
    assert "interrupted 3 times" in jobs[0][4]
    assert daemon.process is not None and daemon.process.poll() is None
    listing = wodmail(site, "jobs")
    assert "1 held" in listing and "interrupted 3 times" in listing


def test_callbacks_wait_for_an_app_that_is_down_and_arrive_in_order(
    site: Site, app: RegistrationApp, daemon_factory: Callable[..., Daemon]
) -> None:
    with_app(site, app)
    site.values["CALLBACKBACKOFFMAX"] = 1
    daemon = daemon_factory()
    app.set_down(True)
    for stdid in range(20, 25):
        assert daemon.send(f"CREATE {stdid} c{stdid}")[0] == 250
    # Each CLEANUP after its CREATE ran (one arriving while the CREATE still waits would
    # supersede it: tests/test_deadline.py).
    site.wait_jobs(5)
    for stdid in range(20, 25):
        assert daemon.send(f"CLEANUP {stdid} c{stdid}")[0] == 250
    site.wait_jobs(10)
    pending = wodmail(site, "outbox")
    # Each CREATE's `active` was still waiting when its student's CLEANUP came: it expired
    # (never sent late: tests/test_deadline.py); the 25 others wait for the app.
    assert "25 pending" in pending and "5 expired" in pending and "503" in pending
    assert "********" in pending  # the password waits as a reference, never in clear
    time.sleep(2)
    app.set_down(False)
    assert app.wait_for(lambda a: len(a.puts()) == 25, timeout=30)
    for stdid in range(20, 25):
        mine = (f"/customer/c{stdid}", f"/student/{stdid + 1000}")
        order = [tuple(sorted(c.body)) for c in app.puts() if c.path in mine]
        assert order == [
            ("password",),
            ("password",),
            ("completionPercentage",),
            ("assigned",),
            ("cleaned",),
        ], order


def test_a_callback_set_aside_goes_again_when_an_operator_retries_its_job(
    site: Site, app: RegistrationApp, hub: JupyterHubStandin, daemon_factory: Callable[..., Daemon]
) -> None:
    """The app refuses a callback until it is set aside, and the job fails later (the hub is
    down): `wodmail retry` from another process puts both back, and the running daemon's
    outbox, which had forgotten the callback, finds it again and delivers it."""
    with_app(site, app)
    with_hub(site, hub)
    site.values.update(RETRYFOR=2, RETRYBACKOFFMAX=0.5, CALLBACKBACKOFFMAX=0.2)
    daemon = daemon_factory()
    app.fail_next(5, 422, path_prefix="/customer/c40")
    hub.fail_next(10_000, 503, path_prefix="/hub/api/users/student40/")
    assert daemon.send("CREATE 40 c40")[0] == 250
    (job,) = site.wait_jobs(1, timeout=30)
    assert job[3] == "failed", job
    assert "422" in outbox_once(site, "1 failed")
    assert "c40" not in app.state()["customer"]

    hub.clear_failures()
    assert "queued again" in wodmail(site, "retry", str(job[0]))
    assert app.wait_for(lambda a: a.state()["customer"].get("c40", {}).get("active") == "true", timeout=30)
    (job,) = site.wait_jobs(1, timeout=30)
    assert job[3] == "done", job
    assert hub.running("student40")
    puts = [c for c in app.calls if c.method == "PUT" and c.path == "/customer/c40"]
    assert [c.status for c in puts] == [422] * 5 + [200], [c.status for c in puts]


def test_an_operator_sends_the_set_aside_callbacks_of_a_done_job_again(
    site: Site, app: RegistrationApp, daemon_factory: Callable[..., Daemon]
) -> None:
    with_app(site, app)
    site.values.update(CALLBACKBACKOFFMAX=0.2)
    daemon = daemon_factory()
    app.fail_next(5, 422, path_prefix="/customer/c41")
    assert daemon.send("CREATE 41 c41")[0] == 250
    (job,) = site.wait_jobs(1, timeout=30)
    assert job[3] == "done", job
    outbox_once(site, "1 failed")
    assert "1 set-aside callback(s) go out again" in wodmail(site, "retry", str(job[0]))
    assert app.wait_for(lambda a: a.state()["customer"].get("c41", {}).get("active") == "true", timeout=30)
    assert "0 failed" in wodmail(site, "outbox")
    refused = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), "retry", str(job[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 65 and "done with no set-aside callback" in refused.stderr, refused


def test_a_hub_outage_retries_then_fails_and_an_operator_retries(
    site: Site, hub: JupyterHubStandin, daemon_factory: Callable[..., Daemon]
) -> None:
    with_hub(site, hub)
    site.values.update(RETRYFOR=6, RETRYBACKOFFMAX=0.5)
    daemon = daemon_factory()
    hub.fail_next(10_000, 503, path_prefix="/hub/api/users/student30/")
    assert daemon.send("CREATE 30 c30")[0] == 250
    assert daemon.send("CREATE 31 c31")[0] == 250
    jobs = site.wait_jobs(2, timeout=30)
    assert [(job[2], job[3]) for job in jobs] == [(30, "failed"), (31, "done")]
    assert "gave up after 6 s" in jobs[0][4] and "503" in jobs[0][4]
    with site.db() as conn:
        retries = conn.execute("SELECT retries FROM jobs WHERE stdid = 30").fetchone()[0]
    assert retries >= 2
    assert hub.running("student31") and not hub.running("student30")

    hub.clear_failures()
    assert "queued again" in wodmail(site, "retry", str(jobs[0][0]))
    jobs = site.wait_jobs(2, timeout=30)
    assert jobs[0][3] == "done"
    assert hub.running("student30")
    show = wodmail(site, "jobs", "show", str(jobs[0][0]))
    assert "deploy workshop" in show  # done once, before the outage: not done again
    with site.db() as conn:
        deploys = conn.execute(
            "SELECT attempts FROM steps WHERE job_id = ? AND name = 'deploy workshop'", (jobs[0][0],)
        ).fetchone()[0]
    assert deploys == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_answers_451_never_250(site: Site, small_disk: Path, daemon_factory: Callable[..., Daemon]) -> None:
    site.state_dir = small_disk / "state"
    site.values["STATEDIR"] = str(site.state_dir)
    site.values["FREESPACEFLOOR"] = 0  # a 2 MiB disk: no floor, the writes themselves fail (ENOSPC)
    daemon = daemon_factory()
    # Unbuffered: a buffered file would raise ENOSPC again when it closes.
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    code, text = daemon.send("CREATE 40 c40")
    assert code == 451, text
    assert b"try again later" in text
    deliver = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), "deliver"],
        input=(DATA / "mails" / "create.eml").read_bytes(),
        capture_output=True,
        check=False,
    )
    assert deliver.returncode == 75, deliver.stderr
    filler.unlink()
    code, text = daemon.send("CREATE 40 c40")
    assert code == 250, text
    jobs = site.wait_jobs(1)
    assert [(job[2], job[3]) for job in jobs] == [(40, "done")]


def test_deliver_answers_75_on_a_read_only_statedir(site: Site, tmp_path: Path) -> None:
    source = tmp_path / "rw-state"
    source.mkdir()
    site.state_dir = tmp_path / "ro-state"
    site.state_dir.mkdir()
    site.values["STATEDIR"] = str(site.state_dir)
    subprocess.run(["mount", "--bind", str(source), str(site.state_dir)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(site.state_dir)], check=True)
        result = subprocess.run(
            [sys.executable, "-m", "wodmail", "--location", str(site.write()), "deliver"],
            input=(DATA / "mails" / "create.eml").read_bytes(),
            capture_output=True,
            check=False,
        )
        assert result.returncode == 75, result.stderr
        assert b"queue" in result.stderr
    finally:
        subprocess.run(["umount", str(site.state_dir)], check=True)


def test_sigterm_stops_in_bounded_time_and_a_restart_loses_nothing(
    site: Site, app: RegistrationApp, daemon_factory: Callable[..., Daemon]
) -> None:
    with_app(site, app)
    app.set_delay(0.05)
    daemon = daemon_factory()
    with daemon.smtp() as client:
        client.ehlo()
        for stdid in range(100, 140):
            client.mail("wod@example.com")
            client.rcpt("jupyter@example.com")
            assert client.data(f"Subject: CREATE {stdid} c{stdid}\r\n\r\nWKSHP-Sample\r\n".encode())[0] == 250
    started = time.monotonic()
    assert daemon.stop(timeout=40) == 0
    assert time.monotonic() - started < 30
    with site.db() as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'running'").fetchone()[0] == 0
    daemon_factory()
    jobs = site.wait_jobs(40, timeout=60)
    assert {job[3] for job in jobs} == {"done"} and len(jobs) == 40
    assert app.wait_for(lambda a: len(a.puts("/customer/")) >= 40, timeout=60)
    with site.db() as conn:
        assert conn.execute("SELECT max(crashes) FROM jobs").fetchone()[0] == 0
        counts = conn.execute("SELECT count(*) FROM outbox GROUP BY job_id").fetchall()
    assert [c for (c,) in counts] == [2] * 40


def test_the_same_mails_delivered_three_times_run_once(
    site: Site, app: RegistrationApp, daemon_factory: Callable[..., Daemon]
) -> None:
    """An MTA retry or a re-sending app: 100 commands, each sent 3 times, interleaved."""
    with_app(site, app)
    daemon = daemon_factory()
    mails = [
        f"Message-ID: <create-{stdid}@app.example.com>\r\nSubject: CREATE {stdid} c{stdid}\r\n\r\nWKSHP-Sample\r\n"
        for stdid in range(200, 250)
    ]
    for _ in range(3):
        with daemon.smtp() as client:
            for mail in mails:
                client.sendmail("wod@example.com", ["jupyter@example.com"], mail.encode())
    # The legacy client sends no Message-ID: the same command as the student's last one is a copy.
    for _ in range(3):
        for stdid in range(250, 300):
            send_legacy(site.legacy_port, legacy_dialogue(f"CREATE {stdid} c{stdid}", "WKSHP-Sample"))
    jobs = site.wait_jobs(100, timeout=60)
    assert len(jobs) == 100 and sorted(job[2] for job in jobs) == list(range(200, 300))
    assert app.wait_for(lambda a: len(a.puts("/customer/")) >= 100, timeout=30)
    time.sleep(0.5)
    assert Counter(c.path for c in app.puts("/customer/")) == {f"/customer/c{s}": 1 for s in range(200, 300)}


def test_200_parallel_smtp_sessions(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def session(stdid: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=60) as client:
                client.ehlo()
                client.mail("wod@example.com")
                client.rcpt("jupyter@example.com")
                results[stdid] = client.data(f"Subject: CREATE {stdid} c{stdid}\r\n\r\nWKSHP-Sample\r\n".encode())[0]
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(stdid,)) for stdid in range(300, 500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(results.values()) == {250} and len(results) == 200
    jobs = site.wait_jobs(200, timeout=90)
    assert {job[3] for job in jobs} == {"done"}
    assert daemon.process is not None and daemon.process.poll() is None
    assert os.path.exists(site.state_dir / "queue.sqlite3")
