"""The daemon speaks systemd's notify protocol to the NOTIFY_SOCKET a test opens, as systemd
would: READY=1 once both doors listen and the jobs process recovered the queue, WATCHDOG=1
only while both processes' event loops run, STATUS= with the queue's depth, STOPPING=1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, Site

WATCHDOG_SECONDS = 4.0


class SystemdStandin:
    """The receiving end of sd_notify: a unix datagram socket, as systemd opens it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, dict[str, str]]] = []

    def read(self, timeout: float) -> None:
        """Collect what arrives for `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append((time.monotonic(), fields))

    def wait_for(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _at, fields in self.received:
                if key in fields:
                    return fields
            self.read(0.1)
        raise AssertionError(f"no {key} in {timeout} s: {self.received}")

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for at, fields in self.received if start <= at <= end and fields.get("WATCHDOG") == "1")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[SystemdStandin]:
    standin = SystemdStandin(tmp_path / "notify.sock")
    yield standin
    standin.close()


def test_ready_watchdog_status_and_stopping(site: Site, systemd: SystemdStandin) -> None:
    daemon = Daemon(site)
    env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": str(int(WATCHDOG_SECONDS * 1e6))}
    try:
        daemon.start(env=env)
        ready = systemd.wait_for("READY")
        assert ready["READY"] == "1"
        assert "0 waiting" in ready["STATUS"], ready
        # Ready means both doors answer.
        with socket.create_connection(("127.0.0.1", site.legacy_port), timeout=5):
            pass
        code, _ = daemon.send("CREATE 1 1001 one@example.com")
        assert code == 250
        site.wait_jobs(1)

        # Pings come every quarter interval while both loops run.
        began = time.monotonic()
        systemd.read(WATCHDOG_SECONDS)
        assert systemd.pings_between(began, time.monotonic()) >= 2
        deadline = time.monotonic() + 12  # STATUS= comes every 5 s
        while not any("1 done" in fields.get("STATUS", "") for _at, fields in systemd.received):
            assert time.monotonic() < deadline, systemd.received
            systemd.read(0.5)

        # The systemd variables reach no child: a hook could otherwise speak for the daemon.
        jobs_pid = daemon.jobs_pid()
        environ = Path(f"/proc/{jobs_pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]

        # A jobs process whose loop stands still (here: stopped) stops the pings, so systemd
        # restarts the service; they come back when it runs again.
        os.kill(jobs_pid, signal.SIGSTOP)
        try:
            systemd.read(WATCHDOG_SECONDS)  # pings go on while it was heard from lately
            silent = time.monotonic()
            systemd.read(WATCHDOG_SECONDS)
            assert systemd.pings_between(silent, time.monotonic()) == 0
        finally:
            os.kill(jobs_pid, signal.SIGCONT)
        resumed = time.monotonic()
        systemd.read(WATCHDOG_SECONDS * 0.75)
        assert systemd.pings_between(resumed, time.monotonic()) >= 1
        assert "no watchdog ping" in daemon.logs()

        assert daemon.stop() == 0
        systemd.read(0.5)
        assert any(fields.get("STOPPING") == "1" for _at, fields in systemd.received)
    finally:
        daemon.stop()


def test_without_notify_socket_nothing_is_sent(site: Site, tmp_path: Path) -> None:
    """A daemon started by hand (no NOTIFY_SOCKET) runs as before; a bad value is a warning."""
    daemon = Daemon(site)
    try:
        daemon.start(env={"NOTIFY_SOCKET": "relative/path"})
        assert daemon.send("CREATE 1 1001 one@example.com")[0] == 250
        site.wait_jobs(1)
    finally:
        assert daemon.stop() == 0
    assert "is neither a path nor an abstract name" in daemon.logs()


def test_the_unit_is_valid(tmp_path: Path) -> None:
    """systemd-analyze verifies the shipped unit where systemd is installed (CI installs it)."""
    analyze = "/usr/bin/systemd-analyze"
    assert os.path.exists(analyze), "systemd-analyze is missing (scripts/test installs systemd)"
    unit = Path(__file__).resolve().parent.parent / "systemd" / "wodmail.service"
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "NotifyAccess=main" in text
    # verify needs the ExecStart binary: point it at one that exists.
    copy = tmp_path / "wodmail.service"
    copy.write_text(text.replace("/opt/wodmail/.venv/bin/wodmail", "/bin/true"))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(copy)], capture_output=True, text=True, check=False
    )
    assert "Overall exposure level" in security.stdout, security.stdout + security.stderr
