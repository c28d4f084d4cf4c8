"""Connection abuse and SMTP smuggling, against a real daemon on both doors.

Limits: message size, line length, commands per connection, recipients, idle time, a
whole session's time (a client dribbling one byte a second), connections per peer (200
from one address do not stop another's command). Smuggling: a second command hidden
after a non-standard end-of-data marker is never run on the standard door; on the legacy
door (bare LF framing, by design, for LEGACYPEERS only) one DATA still carries one command.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

from tests.conftest import Daemon, Site
from tests.test_hostile import RawSMTP

OTHER_PEER = "127.0.0.2"  # loopback too, but another address: "another peer"


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server writes until it closes; and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received, time.monotonic() - started


def legacy_replies(port: int, dialogue: bytes, source: str = "127.0.0.1") -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
        with contextlib.suppress(OSError):  # a peer turned away when accepted is closed at once
            sock.sendall(dialogue)
            sock.shutdown(socket.SHUT_WR)
        received, _ = read_until_closed(sock, 30)
    return [line for line in received.decode().split("\r\n") if line]


def wait_for_students(site: Site, students: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if students <= {row[2] for row in site.jobs() if row[3] == "done"}:
            return
        time.sleep(0.05)
    raise AssertionError(f"students {students} not done: {site.jobs()}")


# --- limits on the standard door ---------------------------------------------------------------


def test_standard_door_caps_each_connection(site: Site, daemon_factory: Callable[[], Daemon]) -> None:
    site.values.update(MAXMESSAGESIZE=4096, SMTPMAXCOMMANDS=12)
    daemon_factory()

    client = RawSMTP(site.smtp_port)
    # Over MAXMESSAGESIZE: refused by the intake, with a record.
    code, text = client.transaction(b"Subject: CREATE 1 c1\r\n\r\nWKSHP-Sample\r\n" + (b"x" * 70 + b"\r\n") * 80)
    assert (code, text) == (554, "554 the mail is 5798 bytes, more than the 4096 a command may have")
    # Over aiosmtpd's own cap (4 x MAXMESSAGESIZE, at least 1 MiB): refused before it is buffered.
    code, text = client.transaction(b"Subject: x\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1100)
    assert (code, text) == (552, "552 Error: Too much mail data")
    # A data line over 1000 bytes.
    code, text = client.transaction(b"Subject: CREATE 1 c1\r\n\r\n" + b"z" * 2000 + b"\r\n")
    assert (code, text) == (500, "500 Line too long (see RFC5321 4.5.3.1.6)")
    # A command line over 512 bytes.
    assert client.command(b"NOOP " + b"n" * 600) == (500, "500 Command line too long")
    # Each command at most SMTPMAXCOMMANDS times: the next one closes the connection.
    for _ in range(12):
        assert client.command(b"NOOP")[0] == 250
    assert client.command(b"NOOP") == (421, "421 4.7.0 NOOP sent too many times")
    assert read_until_closed(client.sock, 5)[0] == b""
    client.file.close()
    client.sock.close()

    client = RawSMTP(site.smtp_port)
    assert client.command(b"MAIL FROM:<wod@example.com>")[0] == 250
    for index in range(10):
        assert client.command(b"RCPT TO:<r%d@example.com>" % index)[0] == 250
    assert client.command(b"RCPT TO:<one-too-many@example.com>") == (452, "452 too many recipients (at most 10)")
    client.close()
    assert [row[3] for row in site.refused()] == [554]


def test_legacy_door_caps_each_connection(site: Site, daemon_factory: Callable[[], Daemon]) -> None:
    site.values["MAXMESSAGESIZE"] = 4096
    daemon_factory()
    start = b"HELO app\nMAIL FROM: wod@example.com\nRCPT TO: j@example.com\nDATA\n"
    big = legacy_replies(site.legacy_port, start + b"Subject: CREATE 1 c1\nWKSHP-Sample\n" + b"x" * 5000 + b"\n.\n")
    assert big[-1] == "552 5.3.4 Message exceeds fixed maximum message size"
    long_line = legacy_replies(site.legacy_port, b"HELO " + b"h" * 5000 + b"\n" + start + b"Subject: x\n\n.\n")
    assert long_line[1] == "500 5.5.2 Line too long"
    many = b"HELO app\n" + b"".join(
        b"MAIL FROM: wod@example.com\nRCPT TO: j@example.com\nDATA\nSubject: PURGE %d c%d\n\n.\n" % (n, n)
        for n in range(1, 13)
    )
    replies = legacy_replies(site.legacy_port, many)
    assert "554 5.7.0 One command per connection: nothing after the first end of data is run" in replies
    assert sum(line.startswith("250 queued as job") for line in replies) == 1
    rcpts = b"HELO app\nMAIL FROM: wod@example.com\n" + b"".join(b"RCPT TO: r%d@example.com\n" % n for n in range(101))
    assert "452 4.5.3 Too many recipients" in legacy_replies(site.legacy_port, rcpts + b"QUIT\n")


# --- slow and idle clients, both doors -----------------------------------------------------------


def test_slow_and_idle_clients_are_dropped_within_a_bound(site: Site, daemon_factory: Callable[[], Daemon]) -> None:
    site.values.update(SMTPIDLETIMEOUT=2, SMTPSESSIONTIMEOUT=4, LEGACYIDLETIMEOUT=2, LEGACYSESSIONTIMEOUT=4)
    daemon_factory()

    def standard_idle() -> tuple[bytes, float]:
        with closing(RawSMTP(site.smtp_port)) as client:
            return read_until_closed(client.sock, 30)

    def standard_byte_a_second() -> tuple[bytes, float]:
        with closing(RawSMTP(site.smtp_port)) as client:
            started = time.monotonic()
            with contextlib.suppress(OSError):
                for byte in b"NOOP\r\n" * 10:
                    client.sock.sendall(bytes([byte]))
                    time.sleep(1)
            rest, _ = read_until_closed(client.sock, 30)
            return rest, time.monotonic() - started

    def standard_command_a_second() -> tuple[bytes, float]:
        with closing(RawSMTP(site.smtp_port)) as client:
            started = time.monotonic()
            with contextlib.suppress(OSError):
                for verb in [b"NOOP", b"RSET", b"HELP"] * 4:
                    client.sock.sendall(verb + b"\r\n")
                    time.sleep(1)
            received, _ = read_until_closed(client.sock, 30)
            return received, time.monotonic() - started

    def legacy_idle() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", site.legacy_port)) as sock:
            sock.sendall(b"HELO app\n")
            return read_until_closed(sock, 30)

    def legacy_byte_a_second() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", site.legacy_port)) as sock:
            started = time.monotonic()
            with contextlib.suppress(OSError):
                for byte in b"HELO app\nMAIL FROM: wod@example.com\n":
                    sock.sendall(bytes([byte]))
                    time.sleep(1)
            received, _ = read_until_closed(sock, 30)
            return received, time.monotonic() - started

    cases = [standard_idle, standard_byte_a_second, standard_command_a_second, legacy_idle, legacy_byte_a_second]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip([case.__name__ for case in cases], pool.map(lambda case: case(), cases), strict=True))

    received, took = results["standard_idle"]
    assert received == b"" and 1.5 < took < 4, results  # SMTPIDLETIMEOUT 2
    received, took = results["standard_byte_a_second"]
    assert took < 4.5, results  # no whole command within SMTPIDLETIMEOUT
    received, took = results["standard_command_a_second"]
    assert b"421 4.4.2 session time limit reached, closing" in received and 3.5 < took < 6.5, results
    received, took = results["legacy_idle"]
    assert received.endswith(b"250 " + socket.gethostname().encode() + b"\r\n421 4.4.2 Timeout, closing\r\n")
    assert 1.5 < took < 4, results  # LEGACYIDLETIMEOUT 2
    received, took = results["legacy_byte_a_second"]
    assert received.endswith(b"421 4.4.2 Timeout, closing\r\n") and 3.5 < took < 6.5, results  # LEGACYSESSIONTIMEOUT 4


# --- 200 connections from one peer ------------------------------------------------------------------


def test_two_hundred_connections_from_one_peer_do_not_stop_another(
    site: Site, daemon_factory: Callable[[], Daemon]
) -> None:
    # 127.0.0.1 is a stranger here (capped at SMTPPEERCONNECTIONS, 20); 127.0.0.2 is the
    # trusted registration app. The legacy door is open to both (LEGACYPEERS: loopback).
    site.values["TRUSTEDPEERS"] = [OTHER_PEER]
    daemon = daemon_factory()
    held: list[socket.socket] = []
    greetings: list[bytes] = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", site.smtp_port), timeout=10)
            held.append(sock)
            greetings.append(sock.recv(200))
            # The legacy door: a dialogue stuck inside DATA, never finished.
            legacy = socket.create_connection(("127.0.0.1", site.legacy_port), timeout=10)
            legacy.sendall(b"HELO app\nMAIL FROM: a@example.com\nRCPT TO: b@example.com\nDATA\nSubject: CREA")
            held.append(legacy)
        refused = [g for g in greetings if g.startswith(b"421 4.7.0 too many connections from your address")]
        assert len(refused) == 180 and all(g.startswith(b"220 ") for g in greetings if g not in refused)

        started = time.monotonic()
        client = RawSMTP(site.smtp_port, source=OTHER_PEER)
        code, text = client.transaction(b"Subject: CREATE 31 c31\r\n\r\nWKSHP-Sample\r\n")
        client.close()
        assert code == 250, text
        answers = legacy_replies(
            site.legacy_port,
            b"HELO app\nMAIL FROM: wod@example.com\nRCPT TO: j@example.com\nDATA\n"
            b"Subject: CREATE 32 c32\nWKSHP-Sample\n.\n",
            source=OTHER_PEER,
        )
        assert answers[-1].startswith("250 queued as job")
        wait_for_students(site, {31, 32})
        assert time.monotonic() - started < 8  # well before the held connections time out
        with socket.create_connection(("127.0.0.1", site.smtp_port), timeout=10) as again:
            assert again.recv(200).startswith(b"421 4.7.0"), "127.0.0.1 still holds its 20"
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        for sock in held:
            sock.close()


def test_a_peer_gets_its_connections_back_once_closed(site: Site, daemon_factory: Callable[[], Daemon]) -> None:
    site.values.update(SMTPPEERCONNECTIONS=3, TRUSTEDPEERS=[OTHER_PEER])
    daemon_factory()
    for _round in range(3):
        clients = [RawSMTP(site.smtp_port) for _ in range(3)]
        extra = socket.create_connection(("127.0.0.1", site.smtp_port), timeout=10)
        assert extra.recv(200).startswith(b"421 4.7.0 too many connections from your address (at most 3)")
        extra.close()
        for client in clients:
            client.close()
        time.sleep(0.2)
    # A trusted peer is not capped: the registration app opens as many sessions as it needs.
    trusted = [RawSMTP(site.smtp_port, source=OTHER_PEER) for _ in range(10)]
    assert all(client.greeting[0] == 220 for client in trusted)
    for client in trusted:
        client.close()


# --- SMTP smuggling ----------------------------------------------------------------------------------

MARKERS = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n..\n", b"\r\n\x00.\r\n"]


def smuggled(first: int, marker: bytes) -> bytes:
    return (
        b"Subject: CREATE %d c%d\r\n\r\nWKSHP-Sample\r\n" % (first, first)
        + marker
        + b"MAIL FROM:<x@example.net>\r\nRCPT TO:<wod@example.com>\r\nDATA\r\n"
        + b"Subject: PURGE %d c%d\r\n\r\n" % (first + 100, first + 100)
    )


def test_no_smuggled_command_on_the_standard_door(site: Site, daemon_factory: Callable[[], Daemon]) -> None:
    daemon_factory()
    client = RawSMTP(site.smtp_port)
    for index, marker in enumerate(MARKERS):
        first = 40 + index
        assert client.command(b"MAIL FROM:<wod@example.com>")[0] == 250
        assert client.command(b"RCPT TO:<wod@example.com>")[0] == 250
        assert client.command(b"DATA")[0] == 354
        client.sock.sendall(smuggled(first, marker) + b"\r\n.\r\n")  # sent as the attacker would, unstuffed
        code, text = client.reply()
        assert code == 250, (marker, text)
        assert client.command(b"NOOP") == (250, "250 OK"), marker  # no reply left over: in step
    client.close()
    wait_for_students(site, {40 + index for index in range(len(MARKERS))})
    jobs = site.jobs()
    assert {(row[1], row[2]) for row in jobs} == {("CREATE", 40 + index) for index in range(len(MARKERS))}


def test_one_data_one_command_on_the_legacy_door(site: Site, daemon_factory: Callable[[], Daemon]) -> None:
    site.values["LEGACYPEERS"] = ["127.0.0.1"]
    daemon_factory()
    start = b"HELO app\nMAIL FROM: wod@example.com\nRCPT TO: j@example.com\nDATA\n"
    for index, marker in enumerate([b"\r.\r", b"\r\n.\r", b"\r.\r\r", b" .\n", b".\r\r\n"]):
        first = 60 + index
        body = b"Subject: CREATE %d c%d\nWKSHP-Sample\n" % (first, first) + marker
        body += b"Subject: PURGE %d c%d\nWKSHP-Sample\n" % (first + 100, first + 100)
        replies = legacy_replies(site.legacy_port, start + body + b".\n")
        assert replies[-1].startswith("250 queued as job"), (marker, replies)
    wait_for_students(site, set(range(60, 65)))
    assert {(row[1], row[2]) for row in site.jobs()} == {("CREATE", n) for n in range(60, 65)}

    # A peer the location does not list gets nothing through, framing tricks or not.
    two = start + b"Subject: CREATE 70 c70\nWKSHP-Sample\n.\n" + start[9:] + b"Subject: PURGE 71 c71\n\n.\n"
    replies = legacy_replies(site.legacy_port, two, source=OTHER_PEER)
    # Closed when accepted, before a byte is read: one 554 and nothing else.
    assert replies == [f"554 5.7.1 {OTHER_PEER} may not use the legacy port (not in LEGACYPEERS)"]
    assert {row[2] for row in site.jobs()} == set(range(60, 65))
    assert threading.active_count() >= 1
