"""No secret leaks: a full CREATE / CLEANUP / RESET / PURGE cycle through a real daemon, with
known secrets, then a search of everything wodmail wrote or showed.

The secrets: the registration app's password (APIPWD, from env:) and the access tokens it
issued, the JupyterHub token (JPHUBTOKEN, from file:), the LDAP bind password (LDAPBINDPW,
from file:, against a real slapd), the signing key (SIGNINGKEYS, from file:) and every
student password the cycle generated (read back from the registration-app stand-in).

Where they are searched: every log line; every job, step, callback and refused-mail
record; the output of every `wodmail` command an operator would run; the error of a hook
playbook that prints the password and fails; the raw bytes of every file under STATEDIR,
while the daemon runs and after it stopped (the database has secure_delete=ON, and its
-wal file is read too); the command line of every process the daemon started, sampled
every few milliseconds while it ran. Passwords may live only in the notebooks of varpass
workshops (under STUDENTDIR) and, hashed, in LDAP.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLES, Daemon, Site, legacy_dialogue, send_legacy
from tests.slapd import Slapd
from tests.standins import JupyterHubStandin, RegistrationApp
from wodmail.passwords import PasswordMint

PRODUCT_PLAYBOOKS = REPO / "playbooks"
LEAKY_HOOK = """\
- name: A hook that prints the student's password, then fails
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Print it
      ansible.builtin.debug:
        msg: "the password of {{ STUDENT }} is {{ PASSSTU }}"
    - name: Fail
      ansible.builtin.fail:
        msg: "failing on purpose after showing {{ PASSSTU }}"
"""


class ProcessSampler:
    """Reads /proc/*/cmdline of `pid`'s descendants (and its own) every few milliseconds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.command_lines: set[bytes] = set()
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.005)

    def sample(self) -> None:
        parents: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
        family = {self.pid}
        grew = True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in family and pid not in family:
                    family.add(pid)
                    grew = True
        for pid in family:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    line = handle.read()
            except OSError:
                continue
            if line:
                self.seen.add(pid)
                self.command_lines.add(line)


@pytest.fixture
def secret_world(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    """The stand-ins, slapd and a location that reads each secret from env: or file:."""
    api_password = "api-" + secrets.token_urlsafe(18)
    hub_token = "hub-" + secrets.token_urlsafe(18)
    signing_key = "sign-" + secrets.token_urlsafe(30)
    secret_files = tmp_path / "secrets"
    secret_files.mkdir(mode=0o700)
    (secret_files / "hub-token").write_text(hub_token + "\n")
    (secret_files / "signing-key").write_text(signing_key + "\n")
    monkeypatch.setenv("WODMAIL_SECRETS_TEST_APIPWD", api_password)

    catalog = tmp_path / "catalog"
    for name in ("WKSHP-Sample", "WKSHP-SampleReset"):
        shutil.copytree(SAMPLES / name, catalog / name)
    for name in ("WKSHP-Ldap", "WKSHP-Leaky"):
        shutil.copytree(SAMPLES / "WKSHP-Sample", catalog / name, ignore=shutil.ignore_patterns("wod.yml"))
    playbooks = tmp_path / "playbooks"
    shutil.copytree(PRODUCT_PLAYBOOKS / "WKSHP-SampleReset", playbooks / "WKSHP-SampleReset")
    (playbooks / "WKSHP-Leaky").mkdir()
    (playbooks / "WKSHP-Leaky" / "create.yml").write_text(LEAKY_HOOK)

    with (
        RegistrationApp(password=api_password) as app,
        JupyterHubStandin(token=hub_token, auto_create_users=True) as hub,
        Slapd(tmp_path / "slapd") as slapd,
    ):
        slapd.add_student(1201, "before-wodmail-1201")
        (secret_files / "ldap-password").write_text(slapd.service_password + "\n")
        site.values.update(
            WORKSHOPDIR=str(catalog),
            PLAYBOOKDIR=str(playbooks),
            APIENDPOINT=app.url,
            APIUSER=app.username,
            APIPWD="env:WODMAIL_SECRETS_TEST_APIPWD",
            JPHUBAPISRV=hub.url,
            JPHUBTOKEN=f"file:{secret_files / 'hub-token'}",
            SIGNINGKEYS=[f"file:{secret_files / 'signing-key'}"],
            TRUSTEDPEERS=["192.0.2.0/24"],  # only signed commands on the standard door
            **{**slapd.location_keys(), "LDAPBINDPW": f"file:{secret_files / 'ldap-password'}"},
        )
        site.workshops = {
            "WKSHP-Sample": {"range": [1, 99], "varpass": True},
            "WKSHP-Leaky": {"range": [100, 110], "varpass": True},
            "WKSHP-SampleReset": {"range": [1101, 1200], "reset": True, "varpass": True, "id": 7},
            "WKSHP-Ldap": {"range": [1201, 1300], "ldap": True},
        }
        yield {
            "app": app,
            "hub": hub,
            "slapd": slapd,
            "fixed": {
                "APIPWD": api_password,
                "JPHUBTOKEN": hub_token,
                "SIGNINGKEYS": signing_key,
                "LDAPBINDPW": slapd.service_password,
            },
        }


def wodmail(site: Site, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), *args],
        capture_output=True,
        check=False,
        timeout=60,
        cwd=str(REPO),
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def ended(site: Site, count: int) -> bool:
    jobs = site.jobs()
    return len(jobs) >= count and all(job[3] in ("done", "failed") for job in jobs)


def state_files(state_dir: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in sorted(state_dir.rglob("*")) if path.is_file()}


def database_rows(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "queue.sqlite3") as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [repr(row) for table in tables for row in conn.execute(f"SELECT * FROM {table}")]


def test_no_secret_anywhere_after_a_full_cycle(
    site: Site, secret_world: dict[str, object], daemon_factory: Callable[[], Daemon]
) -> None:
    app = secret_world["app"]
    assert isinstance(app, RegistrationApp)
    fixed = secret_world["fixed"]
    assert isinstance(fixed, dict)
    daemon = daemon_factory()
    assert daemon.process is not None
    outputs: list[bytes] = []

    def send(*args: str) -> None:
        result = wodmail(site, "send", *args)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr

    with ProcessSampler(daemon.process.pid) as sampler:
        # CREATE through the legacy door (unsigned, a LEGACYPEERS peer) and signed through
        # the standard door; the LDAP workshop too.
        assert send_legacy(site.legacy_port, legacy_dialogue("CREATE 5 c5 five@example.com", "WKSHP-Sample")) == b"2"
        send("CREATE", "1201", "--customer", "c1201", "--workshop", "WKSHP-Ldap")
        send("CREATE", "1105", "c1105", "--workshop", "WKSHP-SampleReset")
        send("CREATE", "100", "c100", "--workshop", "WKSHP-Leaky")  # its hook prints PASSSTU, then fails
        wait_until(lambda: ended(site, 4))
        # The password lives where it must: the notebooks of the varpass workshop.
        wait_until(lambda: "password" in app.state()["student"].get("1005", {}))
        created = str(app.state()["student"]["1005"]["password"])
        notebooks = b"".join(path.read_bytes() for path in (site.home(5) / "WKSHP-Sample").glob("*.ipynb"))
        shown = created.encode() in notebooks
        assert shown, "the varpass notebooks show the student's password"
        send("CLEANUP", "5", "c5", "--workshop", "WKSHP-Sample")
        send("CLEANUP", "1201", "c1201", "--workshop", "WKSHP-Ldap")
        send("CLEANUP", "1105", "c1105", "--workshop", "WKSHP-SampleReset")
        wait_until(lambda: ended(site, 7))
        send("RESET", "1105", "c1105", "--workshop", "WKSHP-SampleReset")
        wait_until(lambda: ended(site, 8))
        send("PURGE", "5", "c5")
        send("PURGE", "1201", "c1201", "--workshop", "WKSHP-Ldap")
        wait_until(lambda: ended(site, 10))
        # A refused command: an unsigned one from a peer the location does not trust.
        refused = daemon.send("CREATE 6 c6")
        assert refused[0] == 550
        wait_until(lambda: idle(site))
        running_files = state_files(site.state_dir)
        assert any(name.endswith("-wal") for name in running_files), "the WAL is searched while the daemon runs"
        rows_running = database_rows(site.state_dir)

    jobs = site.jobs()
    states = {(job[1], job[2]): job[3] for job in jobs}
    assert states == {
        ("CREATE", 5): "done",
        ("CREATE", 1201): "done",
        ("CREATE", 1105): "done",
        ("CREATE", 100): "failed",
        ("CLEANUP", 5): "done",
        ("CLEANUP", 1201): "done",
        ("CLEANUP", 1105): "done",
        ("RESET", 1105): "done",
        ("PURGE", 5): "done",
        ("PURGE", 1201): "done",
    }, jobs
    leaky = next(job for job in jobs if job[2] == 100)
    assert "playbook" in str(leaky[4]) and "********" in str(leaky[4]), leaky  # the output, masked
    assert any(b"ansible-playbook" in line for line in sampler.command_lines), "the hooks' processes were sampled"

    # Every password the cycle generated: as the registration app received them, and as the
    # host key derives them for each job (CLEANUP rotates without reporting the new one).
    reported = {
        str(call.body["password"])
        for call in app.puts("/student/")
        if isinstance(call.body, dict) and "password" in call.body
    }
    mint = PasswordMint((site.state_dir / "password.key").read_bytes())
    derived = {mint.password(job[0], f"student{job[2]}") for job in jobs}
    passwords = reported | derived
    count_reported, count_derived, count_all = len(reported), len(derived), len(passwords)
    assert count_reported >= 8 and count_derived == 10 and count_all == 10  # each reported one is derived
    tokens = {call.token for call in app.calls if call.token}
    count_tokens = len(tokens)
    assert count_tokens >= 1
    slapd = secret_world["slapd"]
    assert isinstance(slapd, Slapd)
    assert not slapd.can_bind("uid=student1201,ou=People,dc=example,dc=com", "before-wodmail-1201")

    operator_views = [
        wodmail(site, "jobs").stdout,
        wodmail(site, "refused").stdout,
        wodmail(site, "outbox").stdout,
        *(wodmail(site, "jobs", "show", str(job[0])).stdout for job in jobs),
        *(wodmail(site, "refused", "show", str(row[0])).stdout for row in site.refused()),
    ]
    assert daemon.stop() == 0
    stopped_files = state_files(site.state_dir)
    rows_stopped = database_rows(site.state_dir)

    haystacks: dict[str, bytes] = {
        "daemon log": daemon.logs().encode(),
        **{f"STATEDIR file {name} (running)": data for name, data in running_files.items()},
        **{f"STATEDIR file {name} (stopped)": data for name, data in stopped_files.items()},
        "database rows": "\n".join(rows_running + rows_stopped).encode(),
        "operator views": b"\n".join(operator_views),
        "wodmail send output": b"\n".join(outputs),
        **{f"command line {i}": line for i, line in enumerate(sorted(sampler.command_lines))},
    }
    needles: dict[str, str] = {
        **{key: str(value) for key, value in fixed.items()},
        **{f"student password {i}": pw for i, pw in enumerate(sorted(passwords))},
        **{f"app access token {i}": token for i, token in enumerate(sorted(tokens))},
    }
    leaks = [
        f"{needle_name} in {where}"
        for needle_name, needle in needles.items()
        for form in {needle.encode(), base64.b64encode(needle.encode()).rstrip(b"=")}
        for where, data in haystacks.items()
        if form in data
    ]
    assert leaks == [], leaks  # names only: never the secrets themselves


def idle(site: Site) -> bool:
    with site.db() as conn:
        pending = conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
    return bool(pending == 0)
