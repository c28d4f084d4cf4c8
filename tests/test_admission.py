"""Who gets in: one command per legacy connection, admission before reading, the shared
connection budget, summarised logs, and a flood that does not lock the app out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, Site, wodmail
from tests.test_abuse import legacy_replies, read_until_closed, wait_for_students
from tests.test_hostile import RawSMTP
from wodmail import queue
from wodmail.admission import ConnectionBudget, Summary
from wodmail.inbound import InboundMail, Reply
from wodmail.legacy import ONE_COMMAND, LegacyLimits, LegacyPolicy, drain, start_legacy_server
from wodmail.location import load_location

APP = "127.0.0.2"  # the registration app: LEGACYPEERS and TRUSTEDPEERS
START = b"HELO wodapidb\nMAIL FROM: registration@example.com\nRCPT TO: jupyter3@example.com\nDATA\n"


# -- one command per legacy connection ----------------------------------------------------------


def test_an_injected_purge_after_a_dot_line_is_refused_not_run(
    site: Site, daemon_factory: Callable[[], Daemon]
) -> None:
    site.values["LEGACYPEERS"] = ["127.0.0.1"]
    daemon_factory()
    wait_for_legacy_door(site)
    # The app's bug: a "." line in the body. What follows reads as a second transaction.
    body = (
        b"Subject: CREATE 21 c21\nWKSHP-Sample\nnotes:\n.\n"
        b"MAIL FROM: registration@example.com\nRCPT TO: jupyter3@example.com\nDATA\n"
        b"Subject: PURGE 22 c22\nWKSHP-Sample\n.\n"
    )
    replies = legacy_replies(site.legacy_port, START + body)

    assert replies[-2].startswith("250 queued as job") and replies[-1] == ONE_COMMAND
    wait_for_students(site, {21})
    time.sleep(0.5)  # a PURGE queued by mistake would be there by now
    assert [(row[1], row[2]) for row in site.jobs()] == [("CREATE", 21)]
    [(refused_id, door, peer, code, reason, mail)] = site.refused()
    assert (door, peer, code) == ("legacy", "127.0.0.1", 554)
    assert "after the first end of data were not run" in reason and b"PURGE 22 c22" in mail

    listed = wodmail(site, "refused")
    assert listed.returncode == 0 and "one command per connection" in listed.stdout.decode()
    shown = wodmail(site, "refused", "show", str(refused_id))
    assert b"Subject: PURGE 22 c22" in shown.stdout


def wait_for_legacy_door(site: Site, timeout: float = 10.0) -> None:
    """The daemon opens the legacy door just after the standard one (which conftest waits for)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", site.legacy_port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the legacy door is not listening"
            time.sleep(0.05)


class Recorder:
    """An intake that commits nothing: records what it is given."""

    def __init__(self) -> None:
        self.mails: list[InboundMail] = []
        self.refused: list[tuple[InboundMail, int, str]] = []

    async def submit(self, mail: InboundMail) -> Reply:
        self.mails.append(mail)
        return Reply(250, "queued")

    async def record_refused(self, mail: InboundMail, code: int, reason: str) -> None:
        self.refused.append((mail, code, reason))


def talk(port: int, payload: bytes, source: str = "127.0.0.1") -> list[str]:
    return legacy_replies(port, payload, source)


async def test_what_follows_the_first_command_is_recorded_whatever_it_is(site: Site) -> None:
    intake = Recorder()
    server = await start_legacy_server(intake, "127.0.0.1", 0, LegacyLimits(greeting_delay=0.2))
    port = server.sockets[0].getsockname()[1]
    try:
        first = START + b"Subject: CREATE 1 c1\nWKSHP-Sample\n.\n"
        cases = {
            b"QUIT\n": None,  # a standard ending: nothing to record
            b"NOOP\nRSET\nQUIT\n": None,
            b"HELO again\nQUIT\n": b"HELO again\nQUIT\n",
            b"garbage \x00\xff\n": b"garbage \x00\xff\n",
            b"Subject: PURGE 3 4\n\n.\n": b"Subject: PURGE 3 4\n\n.\n",
        }
        for after, recorded in cases.items():
            intake.refused.clear()
            replies = await asyncio.to_thread(talk, port, first + after)
            assert replies[5] == "250 queued"
            assert (ONE_COMMAND in replies) == (recorded is not None), (after, replies)
            assert [mail.data for mail, _, _ in intake.refused] == ([recorded] if recorded else [])
        assert [mail.data for mail in intake.mails] == [b"Subject: CREATE 1 c1\nWKSHP-Sample\n"] * len(cases)
    finally:
        await drain(server)


# -- admission before reading on the legacy door ----------------------------------------------


async def test_a_peer_outside_legacypeers_is_closed_when_accepted(site: Site) -> None:
    site.values["LEGACYPEERS"] = [APP]
    intake = Recorder()
    policy = LegacyPolicy(load_location(site.write()))
    server = await start_legacy_server(intake, "127.0.0.1", 0, LegacyLimits(greeting_delay=0.2), policy=policy)
    port = server.sockets[0].getsockname()[1]
    try:

        def stranger() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0)) as sock:
                return read_until_closed(sock, 5)  # says nothing: the answer comes all the same

        said, took = await asyncio.to_thread(stranger)
        assert said == b"554 5.7.1 127.0.0.3 may not use the legacy port (not in LEGACYPEERS)\r\n"
        assert took < 0.15  # at once, not after the greeting delay
        replies = await asyncio.to_thread(talk, port, START + b"Subject: CREATE 1 c1\nWKSHP-Sample\n.\n", APP)
        assert replies[-1] == "250 queued"
        assert len(intake.mails) == 1
    finally:
        await drain(server)


async def test_each_legacy_address_is_capped(site: Site) -> None:
    site.values["LEGACYPEERS"] = ["127.0.0.0/8"]
    intake = Recorder()
    policy = LegacyPolicy(load_location(site.write()))
    limits = LegacyLimits(greeting_delay=0.2, peer_connections=5)
    server = await start_legacy_server(intake, "127.0.0.1", 0, limits, policy=policy)
    port = server.sockets[0].getsockname()[1]
    held: list[socket.socket] = []
    try:
        for _ in range(5):
            held.append(socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.4", 0)))
        await asyncio.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.4", 0)) as sixth:
            said, _ = await asyncio.to_thread(read_until_closed, sixth, 5)
        assert said.startswith(b"421 4.7.0 too many connections from your address (at most 5)")
        replies = await asyncio.to_thread(talk, port, START + b"Subject: CREATE 1 c1\nWKSHP-Sample\n.\n", "127.0.0.5")
        assert replies[-1] == "250 queued"
    finally:
        for sock in held:
            sock.close()
        await drain(server)


# -- the budget ------------------------------------------------------------------------------


def test_strangers_cannot_take_the_reserved_slots_and_the_idlest_makes_way() -> None:
    budget = ConnectionBudget(total=10, reserved=3)
    evicted: list[int] = []
    strangers = [budget.admit(False, functools.partial(evicted.append, n)) for n in range(10)]
    assert sum(slot is not None for slot in strangers) == 7 and budget.refused == 3
    trusted = [budget.admit(True, lambda: None) for _ in range(3)]
    assert all(slot is not None for slot in trusted) and budget.open == 10
    assert evicted == []
    strangers[0].touch()  # type: ignore[union-attr]  # stranger 0 talked: 1 is now the idlest
    assert budget.admit(True, lambda: None) is not None
    assert evicted == [1] and budget.open == 10 and budget.evicted == 1
    strangers[2].trust()  # type: ignore[union-attr]  # passed SMTP AUTH: kept from now on
    for _ in range(5):
        assert budget.admit(True, lambda: None) is not None
    assert evicted == [1, 3, 4, 5, 6, 0]  # the idlest first; 2 is trusted now
    assert budget.admit(True, lambda: None) is None and budget.admit(False, lambda: None) is None
    for slot in strangers:
        if slot is not None:
            slot.release()
            slot.release()  # twice is once
    assert budget.open == 9  # only 2's slot was still held


def test_the_budget_stays_under_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        assert ConnectionBudget(total=5000, reserved=100).total == 768
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_repeated_lines_are_summarised(caplog: pytest.LogCaptureFixture) -> None:
    summary = Summary(logging.getLogger("wodmail.test"), interval=0.2)
    with caplog.at_level(logging.INFO, logger="wodmail.test"):
        for _ in range(10_000):
            summary.note(logging.WARNING, "cap", "smtp %s: over the cap", "127.0.0.9")
        time.sleep(0.25)
        summary.note(logging.WARNING, "cap", "smtp %s: over the cap", "127.0.0.9")
    assert [record.getMessage() for record in caplog.records] == [
        "smtp 127.0.0.9: over the cap",
        "smtp 127.0.0.9: over the cap (and 9999 more like it in the last 0 s)",
    ]


# -- the flood -------------------------------------------------------------------------------

HOSTILE = [f"127.0.0.{n}" for n in range(10, 70)]  # 60 addresses
CLIENT_HELLO_HEAD = bytes.fromhex("160301020001000200fc0303") + os.urandom(20)  # a TLS hello, cut short


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no limit")


class Flood:
    """Hostile connections of several kinds, from many loopback addresses, held open."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.writers: list[asyncio.StreamWriter] = []
        self.attempts: dict[str, int] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.refused_mails = 0
        self.stop = asyncio.Event()

    async def connect(self, kind: str, port: int, source: str) -> asyncio.StreamWriter | None:
        self.attempts[kind] = self.attempts.get(kind, 0) + 1
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            return None
        self.writers.append(writer)
        return writer

    async def drip(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            for byte in b"EHLO drip.example.net\r\nMAIL FROM:<x@example.net>\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 2.0)
                if self.stop.is_set():
                    return

    async def open_all(self) -> None:
        site = self.site
        for index, source in enumerate(HOSTILE):
            for _ in range(10):  # connect and idle, standard door
                await self.connect("idle", site.smtp_port, source)
            for _ in range(10):  # one byte every 2 s
                writer = await self.connect("drip", site.smtp_port, source)
                if writer is not None:
                    self.tasks.append(asyncio.create_task(self.drip(writer)))
            for _ in range(3):  # garbage
                writer = await self.connect("garbage", site.smtp_port, source)
                if writer is not None:
                    writer.write(os.urandom(3000))
            for _ in range(3):  # half-open TLS
                writer = await self.connect("half-open TLS", site.smtp_port, source)
                if writer is not None:
                    writer.write(CLIENT_HELLO_HEAD)
            for _ in range(3):  # the legacy door, idle and garbage
                writer = await self.connect("legacy", site.legacy_port, source)
                if writer is not None and index % 2:
                    writer.write(os.urandom(500))

    def refused_mails_loop(self, source: str) -> None:
        """Unsigned commands from a stranger, as fast as the door answers (each refused)."""
        while not self.stop.is_set():
            client = None
            try:
                client = RawSMTP(self.site.smtp_port, source=source)
                for n in range(20):
                    if self.stop.is_set():
                        break
                    code, _ = client.transaction(b"Subject: PURGE %d c%d\r\n\r\nWKSHP-Sample\r\n" % (n + 1, n))
                    if code == 550:
                        self.refused_mails += 1
            except (OSError, ConnectionError, AssertionError):
                time.sleep(0.05)
            finally:
                if client is not None:
                    client.close()
                    client.sock.close()

    def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


def app_commands(site: Site, first: int, count: int, waits: list[float]) -> list[str]:
    """The app's legacy client: one connection per command, as fast as it goes."""
    replies = []
    for stdid in range(first, first + count):
        began = time.monotonic()
        said = legacy_replies(
            site.legacy_port, START + b"Subject: CREATE %d c%d\nWKSHP-Sample\n.\n" % (stdid, stdid), APP
        )
        waits.append(time.monotonic() - began)
        replies.append(said[-1] if said else "")
    return replies


def trusted_commands(site: Site, first: int, count: int, waits: list[float]) -> list[str]:
    """A trusted SMTP client: sessions of 50 commands (SMTPMAXCOMMANDS is 100), one after another."""
    replies = []
    for start in range(first, first + count, 50):
        client = RawSMTP(site.smtp_port, source=APP)
        try:
            for stdid in range(start, min(start + 50, first + count)):
                began = time.monotonic()
                _code, text = client.transaction(b"Subject: CREATE %d c%d\r\n\r\nWKSHP-Sample\r\n" % (stdid, stdid))
                waits.append(time.monotonic() - began)
                replies.append(text)
        finally:
            client.close()
            client.sock.close()
    return replies


@pytest.mark.timeout(240)
async def test_a_flood_of_strangers_does_not_lock_the_app_out(
    site: Site, daemon_factory: Callable[[], Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    site.values.update(LEGACYPEERS=[APP], TRUSTEDPEERS=[APP], WORKERS=4)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the daemon's, inherited
    try:
        daemon = await asyncio.to_thread(daemon_factory)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    assert daemon.process is not None
    await asyncio.to_thread(wait_for_legacy_door, site)
    pid = daemon.process.pid
    assert open_files_limit(pid) == 1024
    log_before = daemon.log.stat().st_size

    flood = Flood(site)
    loop = asyncio.get_running_loop()
    refusers = [
        threading.Thread(target=flood.refused_mails_loop, args=(source,), daemon=True) for source in HOSTILE[:4]
    ]
    for thread in refusers:
        thread.start()
    began = time.monotonic()
    await flood.open_all()
    opened = time.monotonic() - began
    waits: list[float] = []
    try:
        legacy, standard = await asyncio.gather(
            loop.run_in_executor(None, app_commands, site, 1, 150, waits),
            loop.run_in_executor(None, trusted_commands, site, 201, 150, waits),
        )
        # A second wave while every stranger's slot is still held.
        for source in HOSTILE:
            for _ in range(5):
                await flood.connect("idle (second wave)", site.smtp_port, source)
    finally:
        flood.stop.set()
        for thread in refusers:
            await asyncio.to_thread(thread.join, 10)
        await asyncio.gather(*flood.tasks, return_exceptions=True)
        flood.close()

    accepted = [reply for reply in legacy + standard if "queued as job" in reply]
    assert len(accepted) == 300, [reply for reply in legacy + standard if "queued as job" not in reply][:5]
    waits.sort()
    p99 = waits[int(len(waits) * 0.99) - 1]
    log_growth = daemon.log.stat().st_size - log_before
    rss = rss_peak_kib(pid)
    database = sum(path.stat().st_size for path in site.state_dir.glob("queue.sqlite3*"))
    with capsys.disabled():
        print(
            f"\nflood: {sum(flood.attempts.values())} hostile connections from {len(HOSTILE)} addresses"
            f" ({', '.join(f'{kind} {count}' for kind, count in flood.attempts.items())}) opened in {opened:.1f} s,"
            f" {flood.refused_mails} refused mails; the app's 300 commands: p99 {p99 * 1000:.0f} ms to 250,"
            f" max {waits[-1] * 1000:.0f} ms; log +{log_growth} bytes; doors' peak RSS {rss // 1024} MiB;"
            f" database {database // 1024} KiB"
        )
    assert sum(flood.attempts.values()) >= 2000
    assert p99 < 5.0
    assert log_growth < 256 * 1024
    assert rss < 150 * 1024
    assert daemon.process.poll() is None
    # What the refusals keep is bounded however long the flood: an excerpt of each, the
    # newest REFUSED_PER_PEER of an address, REFUSED_TOTAL in all.
    per_peer = site.db().execute("SELECT count(*), max(length(mail)) FROM refused GROUP BY peer").fetchall()
    assert all(count <= queue.REFUSED_PER_PEER and longest <= queue.REFUSED_MAIL_LIMIT for count, longest in per_peer)
    assert sum(count for count, _ in per_peer) <= queue.REFUSED_TOTAL
    assert database < (queue.REFUSED_TOTAL * queue.REFUSED_MAIL_LIMIT) * 2


# -- out of file descriptors ------------------------------------------------------------------

EMFILE_DOOR = r"""
import asyncio, logging, os, resource, sys, time
from wodmail.admission import ConnectionBudget
from wodmail.inbound import Reply
from wodmail.legacy import LegacyLimits, drain, start_legacy_server

class Intake:
    async def submit(self, mail):
        return Reply(250, "queued")

async def main():
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(message)s")
    budget = ConnectionBudget()
    budget.total = 10_000  # no budget: this door runs into the descriptor limit itself
    server = await start_legacy_server(Intake(), "127.0.0.1", 0, LegacyLimits(greeting_delay=0.1), budget=budget)
    print(server.sockets[0].getsockname()[1], flush=True)
    hog = []
    try:
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    began = time.process_time()
    await asyncio.sleep(3)  # clients knock all along: every accept() fails
    print(f"cpu {time.process_time() - began:.3f}", flush=True)
    for fd in hog:
        os.close(fd)
    await asyncio.sleep(3)  # accepting resumes within a second
    await drain(server)

resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
asyncio.run(main())
"""


def test_out_of_descriptors_pauses_accepting_with_one_line(tmp_path: Path) -> None:
    door = subprocess.Popen(
        [sys.executable, "-c", EMFILE_DOOR],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).parent.parent),
    )
    try:
        assert door.stdout is not None
        port = int(door.stdout.readline())
        knocking = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # knock: the kernel queues them, accept() fails
            with contextlib.suppress(OSError):
                knocking.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            time.sleep(0.01)
        cpu = float(door.stdout.readline().split()[1])
        replies = legacy_replies(port, START + b"Subject: CREATE 1 c1\nWKSHP-Sample\n.\n", APP)
        for sock in knocking:
            sock.close()
        _out, err = door.communicate(timeout=20)
    finally:
        if door.poll() is None:
            door.kill()
            door.wait()
    assert cpu < 0.5  # paused, not spinning on a listener that stays readable
    failures = [line for line in err.splitlines() if "cannot accept connections" in line]
    assert len(failures) == 1 and "Too many open files" in failures[0], err[-2000:]
    assert "Traceback" not in err
    assert replies[-1] == "250 queued"  # accepting resumed
