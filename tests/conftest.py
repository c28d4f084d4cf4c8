"""Shared test fixtures: a location of our own, the daemon as a real process, the stand-ins.

Tests read like the operator's story: write a location, start `wodmail serve`, send it
mail with a real client, look at the homes, the queue and what the stand-ins received.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.ports import free_port
from tests.standins import JupyterHubStandin, RegistrationApp

if TYPE_CHECKING:
    from tests.postfix import Postfix
    from tests.slapd import Slapd
    from wodmail.directory import LdapDirectory

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "templates" / "workshops"
DATA = Path(__file__).resolve().parent / "data"


def same_secret(a: str | None, b: str | None) -> bool:
    """Compare two secrets without ever showing them in an assertion message."""
    return (
        a is not None and b is not None and hashlib.sha256(a.encode()).digest() == hashlib.sha256(b.encode()).digest()
    )


def legacy_dialogue(subject: str, body: str, sender: str = "wod@example.com") -> bytes:
    """The registration app's bytes, exactly as its Node.js client writes them."""
    return (
        f"HELO api.example.com\nMAIL FROM: {sender}\nRCPT TO: jupyter@example.com\nDATA\n"
        f"Subject: {subject}\n{body}\n.\n"
    ).encode()


def send_legacy(port: int, data: bytes, read_first_byte: bool = True, timeout: float = 10.0) -> bytes:
    """Write the whole dialogue at once, then close as soon as anything arrives."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if read_first_byte:
            return sock.recv(1)
    return b""


def readable_by_students(folder: Path) -> Path:
    """A copy of `folder` that any account can read: programs run as a student cannot read
    them in the checkout when it lies in a private folder (a clone in `mktemp -d`, 0700).
    Made once per folder and test run in a root-owned 0755 folder of /var/tmp, removed at exit."""
    if folder not in _READABLE:
        scratch = Path(tempfile.mkdtemp(prefix="wodmail-programs-", dir="/var/tmp"))
        scratch.chmod(0o755)
        copy = scratch / folder.name
        shutil.copytree(folder, copy)
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        _READABLE[folder] = copy
    return _READABLE[folder]


_READABLE: dict[Path, Path] = {}


def wodmail(site: Site, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`wodmail --location SITE ARGS...` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )


class Site:
    """A location of our own under tmp_path, with its workshops file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "site.yaml"
        self.workshops_file = root / "workshops.yaml"
        self.state_dir = root / "state"
        self.student_dir = root / "students"
        self.smtp_port = free_port()
        self.legacy_port = free_port()
        self.values: dict[str, Any] = {
            "PBKDIR": "test",
            "JPHOST": "jupyter.example.com",
            "JPHOSTEXT": "nb.example.com",
            "BRANDING": "Test WoD",
            "BASESTDID": 1000,
            "LDAPDMN": "dc=example,dc=com",
            "SMTPHOST": "127.0.0.1",
            "SMTPPORT": self.smtp_port,
            "LEGACYPORT": self.legacy_port,
            "STATEDIR": str(self.state_dir),
            "STUDENTDIR": str(self.student_dir),
            "WORKSHOPDIR": str(SAMPLES),
            "STUDENTMIN": 1,
            "STUDENTMAX": 2000,
            "WORKERS": 8,
        }
        self.workshops: dict[str, Any] = {
            "WKSHP-Sample": {"range": [1, 999], "varpass": True},
            "CHLG-Sample": {"range": [1001, 1100], "varpass": True},  # its notebook shows PASSSTU
            "WKSHP-SampleReset": {"range": [1101, 1200], "reset": True, "varpass": True, "id": 7},
        }

    def write(self) -> Path:
        self.values["WORKSHOPS"] = str(self.workshops_file)
        self.file.write_text(yaml.safe_dump(self.values, sort_keys=False))
        self.workshops_file.write_text(yaml.safe_dump(self.workshops, sort_keys=False))
        return self.file

    def home(self, stdid: int) -> Path:
        return self.student_dir / f"student{stdid}"

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.state_dir / "queue.sqlite3", timeout=30)

    def jobs(self) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.db()) as conn:
            return conn.execute("SELECT id, verb, stdid, state, error FROM jobs ORDER BY id").fetchall()

    def refused(self) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.db()) as conn:
            return conn.execute("SELECT id, door, peer, code, reason, mail FROM refused ORDER BY id").fetchall()

    def wait_jobs(
        self, count: int, timeout: float = 30.0, states: tuple[str, ...] = ("done", "failed")
    ) -> list[tuple[Any, ...]]:
        """Wait until `count` jobs exist and all of them ended; return them."""
        deadline = time.monotonic() + timeout
        jobs: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            try:
                jobs = self.jobs()
            except sqlite3.Error:
                jobs = []
            if len(jobs) >= count and all(job[3] in states for job in jobs):
                return jobs
            time.sleep(0.05)
        raise AssertionError(f"jobs did not end in {timeout} s: {[(j[0], j[1], j[2], j[3]) for j in jobs][:20]}")

    def wait_callbacks(self, timeout: float = 20.0) -> None:
        """Wait until every callback queued so far was delivered. A job ends once its callbacks
        are queued; the outbox, in the doors' process, delivers them a moment later, so the
        registration app may not have them yet when `wait_jobs` returns."""
        deadline = time.monotonic() + timeout
        waiting = -1
        while time.monotonic() < deadline:
            with contextlib.closing(self.db()) as conn:
                waiting = conn.execute("SELECT COUNT(*) FROM outbox WHERE state != 'delivered'").fetchone()[0]
            if waiting == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"{waiting} callback(s) not delivered in {timeout} s")


class Daemon:
    """`wodmail serve` as a real process."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.log = site.root / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0, env: dict[str, str] | None = None) -> Daemon:
        location = self.site.write()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wodmail", "--location", str(location), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(REPO),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"wodmail serve exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.site.smtp_port), timeout=0.5) as sock:
                    sock.recv(100)
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"wodmail serve did not listen in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def jobs_pid(self) -> int:
        """The pid of its jobs process (a child of the daemon, `wodmail jobs-process`)."""
        assert self.process is not None
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            if b"jobs-process" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
        raise AssertionError(f"no jobs process among {children}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to end by itself (a crash point, a signal); its exit status."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.site.smtp_port, timeout=30)

    def send(
        self, subject: str, body: str = "WKSHP-Sample", sender: str = "wod@example.com", extra: str = ""
    ) -> tuple[int, bytes]:
        """One command over the standard door; returns the DATA reply (code, text)."""
        message = f"From: {sender}\r\nTo: jupyter@example.com\r\nSubject: {subject}\r\n{extra}\r\n{body}\r\n"
        with self.smtp() as client:
            client.ehlo()
            client.mail(sender)
            client.rcpt("jupyter@example.com")
            return client.data(message.encode())

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


@pytest.fixture
def app() -> Iterator[RegistrationApp]:
    with RegistrationApp() as standin:
        yield standin


@pytest.fixture
def hub() -> Iterator[JupyterHubStandin]:
    with JupyterHubStandin(auto_create_users=True) as standin:
        yield standin


@pytest.fixture
def daemon_factory(site: Site) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def start(**env: str) -> Daemon:
        daemon = Daemon(site).start(env=env)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()


@pytest.fixture
async def open_directory(site: Site) -> AsyncIterator[Callable[..., LdapDirectory]]:
    """Make an LdapDirectory from a location with the given LDAP keys (closed at the end, on
    the test's event loop)."""
    opened: list[LdapDirectory] = []

    from wodmail.directory import LdapDirectory  # imports ldap3: only for the tests that use it
    from wodmail.location import load_location

    def make(slapd: Slapd | None = None, **keys: Any) -> LdapDirectory:
        if slapd is not None:
            site.values.update(slapd.location_keys())
        site.values.update(keys)
        directory = LdapDirectory.from_location(load_location(site.write()))
        opened.append(directory)
        return directory

    yield make
    for directory in opened:
        await directory.aclose()


def with_app(site: Site, app: RegistrationApp) -> None:
    site.values.update(APIENDPOINT=app.url, APIUSER=app.username, APIPWD=app.password)


def with_hub(site: Site, hub: JupyterHubStandin) -> None:
    site.values.update(JPHUBAPISRV=hub.url, JPHUBTOKEN=hub.token)


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    """A real Postfix for the module (tests/postfix.py): the relay's MTA, where replies land."""
    from tests.postfix import Postfix as RealPostfix

    server = RealPostfix().start()
    try:
        yield server
    finally:
        server.remove()
