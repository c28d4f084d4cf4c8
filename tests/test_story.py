"""The operator's story, end to end against a real `wodmail serve` process.

Start the daemon on a location of our own, mail it commands through both doors, and look
at what lands in the student homes, in the queue, and on the registration-app and
JupyterHub stand-ins.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import (
    DATA,
    Daemon,
    Site,
    legacy_dialogue,
    same_secret,
    send_legacy,
    with_app,
    with_hub,
)
from tests.standins import JupyterHubStandin, RegistrationApp


def notebooks(home: Path, workshop: str = "WKSHP-Sample") -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((home / workshop).glob("*.ipynb"))}


def password_in(nb_text: str) -> str | None:
    """The sample workshop shows the student's password as 'password: `...`'."""
    found = re.search(r"password[^`]*`([A-Za-z0-9]{16})`", nb_text)
    return found.group(1) if found else None


def test_legacy_create_then_cleanup(
    site: Site, app: RegistrationApp, hub: JupyterHubStandin, daemon_factory: Callable[..., Daemon]
) -> None:
    with_app(site, app)
    with_hub(site, hub)
    daemon: Daemon = daemon_factory()

    # The registration app's crude client: everything at once, close on the first byte read.
    first = send_legacy(site.legacy_port, legacy_dialogue("CREATE 5 c5 five@example.com", "WKSHP-Sample"))
    assert first == b"2"
    (job,) = site.wait_jobs(1)
    assert job[1:4] == ("CREATE", 5, "done"), job

    home = site.home(5)
    deployed = notebooks(home)
    assert len(deployed) >= 3
    text = "\n".join((home / "WKSHP-Sample" / name).read_text() for name in deployed)
    assert "student5" in text or "5" in text
    assert "{{" not in text.replace("{{ '{{' }}", "")
    assert (home / "WKSHP-Sample" / "pictures" / "logo.png").read_bytes() == (
        Path(__file__).parent.parent / "templates/workshops/WKSHP-Sample/pictures/logo.png"
    ).read_bytes()

    assert app.wait_for(lambda a: len(a.puts()) >= 2)
    state = app.state()
    assert state["customer"]["c5"]["active"] == "true"
    reported = state["student"]["1005"]["password"]
    assert same_secret(password_in(text), reported), "the notebook and the registration app disagree on the password"
    assert hub.running("student5")

    # The student runs the first code cell of each notebook.
    executed = total = 0
    for name, nb in deployed.items():
        code_cells = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
        total += len(code_cells)
        if code_cells:
            code_cells[0]["execution_count"] = 1
            executed += 1
            (home / "WKSHP-Sample" / name).write_text(json.dumps(nb))
    expected = executed * 100 // total

    code, _ = daemon.send("CLEANUP 5 c5")
    assert code == 250
    jobs = site.wait_jobs(2)
    assert jobs[1][1:4] == ("CLEANUP", 5, "done"), jobs[1]
    assert app.wait_for(lambda a: a.state()["customer"]["c5"].get("cleaned") == "true")
    state = app.state()
    assert state["customer"]["c5"]["completionPercentage"] == str(expected)
    assert state["student"]["1005"]["assigned"] == "false"
    assert not same_secret(state["student"]["1005"]["password"], reported), "CLEANUP must rotate the password"
    assert not (home / "WKSHP-Sample").exists()
    assert not hub.running("student5")
    # Callbacks arrive in order: completion before cleaned, one login for all of them.
    paths = [(c.path, tuple(sorted(c.body))) for c in app.puts("/customer/c5")]
    assert paths == [
        ("/customer/c5", ("active",)),
        ("/customer/c5", ("completionPercentage",)),
        ("/customer/c5", ("cleaned",)),
    ]
    assert app.logins == 1


def test_legacy_door_loses_nothing(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    daemon_factory()
    for stdid in range(1, 301):
        send_legacy(site.legacy_port, legacy_dialogue(f"CREATE {stdid} c{stdid}", "WKSHP-Sample"))
    jobs = site.wait_jobs(300, timeout=60)
    assert sorted(job[2] for job in jobs) == list(range(1, 301))
    assert {job[3] for job in jobs} == {"done"}
    assert all((site.home(stdid) / "WKSHP-Sample").is_dir() for stdid in range(1, 301))


def test_legacy_client_that_closes_without_reading(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    daemon_factory()
    clients = []
    for stdid in range(1, 21):
        client = socket.create_connection(("127.0.0.1", site.legacy_port), timeout=10)
        client.sendall(legacy_dialogue(f"CREATE {stdid} c{stdid}", "WKSHP-Sample"))
        clients.append(client)
    # The clients close without reading a byte. (They stay open until the door has taken
    # them: a client on this host that is gone before the kernel is asked who it was is
    # nobody wodmail can trust, and its mail is refused and recorded: tests/test_trust.py.)
    time.sleep(0.3)
    for client in clients:
        client.close()
    jobs = site.wait_jobs(20)
    assert sorted(job[2] for job in jobs) == list(range(1, 21))


def test_legacy_door_refuses_a_peer_not_listed(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    site.values["LEGACYPEERS"] = ["192.0.2.1"]
    daemon_factory()
    data = legacy_dialogue("CREATE 3 c3", "WKSHP-Sample")
    # Closed when accepted, with the reason, before a byte is read: nothing to run or store.
    with socket.create_connection(("127.0.0.1", site.legacy_port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        said = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1000):
                said += chunk
    assert said == b"554 5.7.1 127.0.0.1 may not use the legacy port (not in LEGACYPEERS)\r\n"
    time.sleep(0.3)
    assert site.refused() == []
    assert site.jobs() == []
    assert not site.home(3).exists()


def test_duplicate_mail_runs_once(site: Site, app: RegistrationApp, daemon_factory: Callable[..., Daemon]) -> None:
    with_app(site, app)
    daemon = daemon_factory()
    raw = (DATA / "mails" / "create.eml").read_bytes()
    replies = []
    for _ in range(3):
        with daemon.smtp() as client:
            replies.append(client.sendmail("wod@example.com", ["jupyter@example.com"], raw) or "ok")
    jobs = site.wait_jobs(1)
    time.sleep(0.3)
    assert len(site.jobs()) == 1, site.jobs()
    assert jobs[0][3] == "done"
    assert app.wait_for(lambda a: len(a.puts()) >= 2)
    time.sleep(0.3)
    assert len(app.puts("/customer/1001")) == 1


def test_reset_range_runs_the_hook_and_restores_capacity(
    site: Site, app: RegistrationApp, daemon_factory: Callable[..., Daemon]
) -> None:
    with_app(site, app)
    daemon = daemon_factory()
    for stdid in (1101, 1102, 1103):
        assert daemon.send(f"CREATE {stdid} c{stdid}", "WKSHP-SampleReset")[0] == 250
    site.wait_jobs(3)
    for stdid in (1101, 1102, 1103):
        assert daemon.send(f"CLEANUP {stdid} c{stdid}", "WKSHP-SampleReset")[0] == 250
    site.wait_jobs(6)
    # A reset workshop keeps the home for RESET and keeps the student assigned.
    assert (site.home(1101) / "WKSHP-SampleReset").is_dir()
    assert app.wait_for(lambda a: a.state()["student"].get("2101", {}).get("assigned") == "true")

    assert daemon.send("RESET 1101,1103 admin", "WKSHP-SampleReset")[0] == 250
    jobs = site.wait_jobs(7, timeout=90)
    assert jobs[-1][1:4] == ("RESET", 1101, "done"), jobs[-1]
    assert (
        site.state_dir / "sample-reset-1101-1103.txt"
    ).read_text() == "WKSHP-SampleReset students 1101..1103 reset\n"
    assert app.wait_for(lambda a: a.state()["workshop"].get("7", {}).get("capacity") == "3")
    state = app.state()
    for stdid in (1101, 1102, 1103):
        assert state["student"][str(stdid + 1000)]["assigned"] == "false"
        assert not (site.home(stdid) / "WKSHP-SampleReset").exists()


def test_purge(site: Site, app: RegistrationApp, hub: JupyterHubStandin, daemon_factory: Callable[..., Daemon]) -> None:
    with_app(site, app)
    with_hub(site, hub)
    daemon = daemon_factory()
    assert daemon.send("CREATE 9 c9")[0] == 250
    site.wait_jobs(1)
    assert hub.running("student9")
    assert app.wait_for(lambda a: "password" in a.state()["student"].get("1009", {}))
    before = app.state()["student"]["1009"]["password"]
    assert daemon.send("PURGE 9 c9", "")[0] == 250
    jobs = site.wait_jobs(2)
    assert jobs[1][1:4] == ("PURGE", 9, "done"), jobs[1]
    assert not hub.running("student9")
    assert app.wait_for(lambda a: a.state()["student"]["1009"].get("assigned") == "false")
    assert not same_secret(app.state()["student"]["1009"]["password"], before)
    assert list(site.home(9).iterdir()) == []


def test_callbacks_survive_an_app_that_fails(
    site: Site, app: RegistrationApp, daemon_factory: Callable[..., Daemon]
) -> None:
    with_app(site, app)
    daemon = daemon_factory()
    app.fail_next(3, 500)
    assert daemon.send("CREATE 11 c11")[0] == 250
    site.wait_jobs(1)
    assert app.wait_for(lambda a: a.state()["customer"].get("c11", {}).get("active") == "true", timeout=30)
    # The token expires: the next callback logs in again and goes through.
    app.expire_tokens()
    assert daemon.send("CLEANUP 11 c11")[0] == 250
    site.wait_jobs(2)
    assert app.wait_for(lambda a: a.state()["customer"]["c11"].get("cleaned") == "true", timeout=30)
    assert app.logins == 2
    statuses = [c.status for c in app.calls]
    assert statuses.count(500) == 3 and 401 in statuses


def test_template_with_undefined_variable_fails_the_job_naming_it(
    site: Site, daemon_factory: Callable[..., Daemon]
) -> None:
    workshops = site.root / "catalog"
    broken = workshops / "WKSHP-Broken"
    broken.mkdir(parents=True)
    (broken / "1-Intro.ipynb").write_text(
        json.dumps(
            {
                "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["Hello\n", "{{ NOSUCHKEY }}\n"]}],
                "metadata": {},
                "nbformat": 4,
                "nbformat_minor": 5,
            },
            indent=1,
        )
    )
    site.values["WORKSHOPDIR"] = str(workshops)
    site.workshops = {"WKSHP-Broken": {"range": [1, 10]}}
    daemon = daemon_factory()
    assert daemon.send("CREATE 2 c2", "WKSHP-Broken")[0] == 250
    (job,) = site.wait_jobs(1)
    assert job[3] == "failed"
    assert "WKSHP-Broken/1-Intro.ipynb" in job[4] and "NOSUCHKEY" in job[4], job[4]
    show = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), "jobs", "show", str(job[0])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "failed" in show.stdout and "NOSUCHKEY" in show.stdout


def test_values_with_quotes_and_newlines_keep_notebooks_valid(
    site: Site, daemon_factory: Callable[..., Daemon]
) -> None:
    site.values["BRANDING"] = 'Quote " back \\ slash\nnew line </script> { x } é'
    daemon = daemon_factory()
    assert daemon.send("CREATE 4 c4")[0] == 250
    site.wait_jobs(1)
    deployed = notebooks(site.home(4))
    readme = json.dumps(deployed["0-ReadMeFirst.ipynb"])
    assert json.dumps('Quote " back \\ slash\nnew line </script> { x } é')[1:-1] in readme


def test_jobs_command_shows_states_and_steps(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    assert daemon.send("CREATE 6 c6")[0] == 250
    (job,) = site.wait_jobs(1)

    def run(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "wodmail", "--location", str(site.file), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    listing = run("jobs")
    assert "1 done" in listing and "CREATE" in listing and "student6" in listing
    show = run("jobs", "show", str(job[0]))
    for step in ("set password", "reset home", "deploy workshop", "report to registration app"):
        assert step in show
    assert "APIENDPOINT not set" in show


def test_the_jobs_process_runs_below_the_doors(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    """JOBSNICE lower, and the batch policy: a burst's mail is answered before jobs run."""
    site.values["JOBSNICE"] = 7
    daemon = daemon_factory()
    assert daemon.process is not None
    doors = daemon.process.pid
    deadline = time.monotonic() + 10
    while "jobs process ready" not in daemon.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    (jobs,) = (int(child) for child in Path(f"/proc/{doors}/task/{doors}/children").read_text().split())
    assert os.getpriority(os.PRIO_PROCESS, jobs) - os.getpriority(os.PRIO_PROCESS, doors) == 7
    assert os.sched_getscheduler(jobs) == os.SCHED_BATCH
    assert os.sched_getscheduler(doors) == os.SCHED_OTHER
