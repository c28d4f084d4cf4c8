"""The legacy door: the registration app's crude client never loses a command.

Every test starts the real listener on 127.0.0.1 and talks to it over real sockets, with
blocking clients run in threads (as the app's client would be: another process).
"""

from __future__ import annotations

import asyncio
import logging
import select
import smtplib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from wodmail.admission import Listener
from wodmail.inbound import InboundMail, Reply
from wodmail.legacy import LegacyLimits, drain, start_legacy_server

DATA = Path(__file__).parent / "data" / "legacy"

QUEUED = Reply(250, "queued")

#: Small enough to keep the suite fast, long enough for the chunked client's pauses.
FAST = LegacyLimits(greeting_delay=0.25, idle_timeout=2.0, total_timeout=5.0)


class RecordingIntake:
    """Stands in for the real intake: records every mail and answers `reply`."""

    def __init__(self, reply: Reply = QUEUED, delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.started: list[InboundMail] = []
        self.mails: list[InboundMail] = []

    async def submit(self, mail: InboundMail) -> Reply:
        self.started.append(mail)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.mails.append(mail)
        return self.reply


class RecordingIntakeWithIncomplete(RecordingIntake):
    def __init__(self) -> None:
        super().__init__()
        self.incomplete: list[tuple[InboundMail, str]] = []

    def record_incomplete(self, mail: InboundMail, reason: str) -> None:
        self.incomplete.append((mail, reason))


@dataclass
class Door:
    server: Listener
    port: int
    intake: RecordingIntake


Starter = Callable[..., Awaitable[Door]]


@pytest.fixture
async def start_door() -> AsyncIterator[Starter]:
    servers: list[Listener] = []

    async def start(intake: RecordingIntake | None = None, limits: LegacyLimits = FAST) -> Door:
        intake = intake if intake is not None else RecordingIntake()
        server = await start_legacy_server(intake, "127.0.0.1", 0, limits)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return Door(server, port, intake)

    yield start
    for server in servers:
        await drain(server)


# ---- clients ---------------------------------------------------------------------------


def legacy_dialogue(subject: str, body: str = "WKSHP-Ansible101") -> bytes:
    """What the app's Node.js client writes, byte for byte."""
    return (
        "HELO wodapidb\nMAIL FROM: registration@example.com\nRCPT TO: jupyter3@example.com\n"
        f"DATA\nSubject: {subject}\n{body}\n.\n"
    ).encode()


def node_client(port: int, payload: bytes, *, read: bool = True, reset: bool = False) -> bytes:
    """Write everything at once; then, like the app, close as soon as one byte arrives
    (leaving the rest unread, so the close resets), or close at once without reading."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(payload)
        return sock.recv(1) if read else b""
    finally:
        sock.close()


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the door writes until it closes."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def talk(port: int, payload: bytes, *, shut_write: bool = False) -> bytes:
    """Write `payload` at once (before the greeting), then read every reply until close."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(payload)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def codes(replies: bytes) -> list[int]:
    return [int(line[:3]) for line in replies.decode().splitlines()]


# ---- the legacy client -----------------------------------------------------------------


async def test_the_exact_node_dialogue_is_committed_and_answered(start_door: Starter) -> None:
    door = await start_door()
    payload = (DATA / "node-client-create.txt").read_bytes()

    replies = await asyncio.to_thread(talk, door.port, payload)

    assert codes(replies) == [220, 250, 250, 250, 354, 250]
    assert replies.decode().splitlines()[-1] == "250 queued"
    [mail] = door.intake.mails
    assert mail.door == "legacy"
    assert mail.peer == "127.0.0.1"
    assert mail.mail_from == "registration@example.com"
    assert mail.rcpt_tos == ("jupyter3@example.com",)
    assert mail.data == b"Subject: CREATE 12 4242 student@example.org\nWKSHP-Ansible101\n"


async def test_300_node_clients_that_close_on_the_first_byte_lose_nothing(
    start_door: Starter,
) -> None:
    door = await start_door()

    for stdid in range(300):
        first = await asyncio.to_thread(node_client, door.port, legacy_dialogue(f"CREATE {stdid} 4242"))
        assert first == b"2"  # the greeting's first byte: written only after the commit

    assert [m.data for m in door.intake.mails] == [
        f"Subject: CREATE {stdid} 4242\nWKSHP-Ansible101\n".encode() for stdid in range(300)
    ]


async def test_the_apps_own_nodejs_client_loses_nothing(start_door: Starter) -> None:
    door = await start_door()
    node = await asyncio.create_subprocess_exec(
        "node",
        str(DATA / "node-client.js"),
        str(door.port),
        "300",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await node.communicate()

    assert out.strip() == b'{"data":300}'
    assert [m.data for m in door.intake.mails] == [
        f"Subject: CREATE {stdid} 4242\nWKSHP-Ansible101\n".encode() for stdid in range(300)
    ]


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_node_clients_that_close_without_reading_lose_nothing(start_door: Starter, reset: bool) -> None:
    door = await start_door()

    for stdid in range(300):
        await asyncio.to_thread(node_client, door.port, legacy_dialogue(f"PURGE {stdid} 77"), read=False, reset=reset)
    await wait_for(lambda: len(door.intake.mails) == 300)

    assert sorted(m.data for m in door.intake.mails) == sorted(
        f"Subject: PURGE {stdid} 77\nWKSHP-Ansible101\n".encode() for stdid in range(300)
    )


async def test_a_submit_runs_to_its_end_after_a_reset_and_drain_waits_for_it(
    start_door: Starter,
) -> None:
    door = await start_door(RecordingIntake(delay=0.3))

    await asyncio.to_thread(node_client, door.port, legacy_dialogue("CREATE 1 2"), read=False, reset=True)
    await wait_for(lambda: len(door.intake.started) == 1)
    assert door.intake.mails == []

    await drain(door.server)

    assert len(door.intake.mails) == 1


async def test_a_client_that_reads_the_greeting_then_writes_and_resets_loses_nothing(
    start_door: Starter,
) -> None:
    door = await start_door(limits=LegacyLimits(greeting_delay=0.01))

    def greeted_client(stdid: int) -> None:
        sock = socket.create_connection(("127.0.0.1", door.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert sock.recv(3) == b"220"
        sock.sendall(legacy_dialogue(f"CLEANUP {stdid} 9").replace(b"\n", b"\r\n"))
        sock.close()

    for stdid in range(100):
        await asyncio.to_thread(greeted_client, stdid)
    await wait_for(lambda: len(door.intake.mails) == 100)

    assert sorted(m.data for m in door.intake.mails) == sorted(
        f"Subject: CLEANUP {stdid} 9\nWKSHP-Ansible101\n".encode() for stdid in range(100)
    )


async def test_a_client_writing_in_chunks_before_the_greeting_hears_nothing_until_the_commit(
    start_door: Starter,
) -> None:
    door = await start_door()
    payload = legacy_dialogue("CREATE 5 4242")
    chunks = [payload[:7], payload[7:40], payload[40:90], payload[90:-2], payload[-2:]]

    def chunked_client() -> tuple[list[bytes], bytes]:
        heard = []
        with socket.create_connection(("127.0.0.1", door.port)) as sock:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(0.05)
                readable, _, _ = select.select([sock], [], [], 0)
                heard.append(sock.recv(100) if readable else b"")
            return heard, read_all(sock)

    heard, rest = await asyncio.to_thread(chunked_client)

    assert heard[:-1] == [b""] * (len(chunks) - 1)  # nothing before the "." line
    replies = b"".join(heard) + rest
    assert codes(replies) == [220, 250, 250, 250, 354, 250]
    assert [m.data for m in door.intake.mails] == [b"Subject: CREATE 5 4242\nWKSHP-Ansible101\n"]


# ---- a standard client -----------------------------------------------------------------


async def test_smtplib_converses_on_the_legacy_door(start_door: Starter) -> None:
    door = await start_door(RecordingIntake(Reply(250, "queued as job 17")))
    message = "Subject: RESET 12 4242\n\nWKSHP-Reset101\n"

    def standard_client() -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", door.port, timeout=5) as smtp:
            answers = [(*smtp.ehlo("client.example.com")[:1], b"")]
            answers.append(smtp.mail("<registration@example.com>"))
            answers.append(smtp.rcpt("jupyter3@example.com"))
            answers.append(smtp.data(message))
            answers.append(smtp.noop())
            answers.append(smtp.rset())
            # One command per connection: a second transaction is refused, and the door closes.
            with pytest.raises(smtplib.SMTPSenderRefused) as caught:
                smtp.sendmail("registration@example.com", ["jupyter3@example.com"], message)
            answers.append((caught.value.smtp_code, caught.value.smtp_error[:30]))
            return answers

    answers = await asyncio.to_thread(standard_client)

    assert answers == [
        (250, b""),
        (250, b"OK"),
        (250, b"OK"),
        (250, b"queued as job 17"),
        (250, b"OK"),
        (250, b"OK"),
        (554, b"5.7.0 One command per connecti"),
    ]
    assert [m.data for m in door.intake.mails] == [b"Subject: RESET 12 4242\n\nWKSHP-Reset101\n"]
    assert door.intake.mails[0].mail_from == "registration@example.com"


# ---- framing ---------------------------------------------------------------------------


async def test_dot_stuffed_lines_are_unstuffed(start_door: Starter) -> None:
    door = await start_door()

    await asyncio.to_thread(talk, door.port, (DATA / "dot-stuffed-body.txt").read_bytes())

    [mail] = door.intake.mails
    assert mail.data == b"Subject: CREATE 13 4243\n.hidden-dot-line\n.\nWKSHP-Ansible101\n"


async def test_bare_lf_and_crlf_mixed_are_one_framing(start_door: Starter) -> None:
    door = await start_door()

    replies = await asyncio.to_thread(talk, door.port, (DATA / "mixed-line-endings.txt").read_bytes())

    assert codes(replies) == [220, 250, 250, 250, 354, 250]
    [mail] = door.intake.mails
    assert mail.mail_from == "registration@example.com"
    assert mail.rcpt_tos == ("jupyter3@example.com",)
    assert mail.data == b"Subject: RESET 10,19 4244\nWKSHP-Reset101\n"


@pytest.mark.parametrize(
    "mail_from, rcpt_to",
    [
        ("MAIL FROM: a@example.com", "RCPT TO: b@example.com"),
        ("MAIL FROM:a@example.com", "RCPT TO:b@example.com"),
        ("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>"),
        ("mail from: <a@example.com> SIZE=120", "rcpt to: <b@example.com>"),
        ("Mail From : a@example.com", "Rcpt To : b@example.com"),
    ],
)
async def test_mail_from_with_and_without_brackets(start_door: Starter, mail_from: str, rcpt_to: str) -> None:
    door = await start_door()
    payload = f"helo x\n{mail_from}\n{rcpt_to}\ndata\nSubject: PURGE 3 4\nWKSHP-A\n.\n"

    replies = await asyncio.to_thread(talk, door.port, payload.encode())

    assert codes(replies) == [220, 250, 250, 250, 354, 250]
    [mail] = door.intake.mails
    assert (mail.mail_from, mail.rcpt_tos) == ("a@example.com", ("b@example.com",))


async def test_of_two_transactions_written_at_once_only_the_first_is_committed(start_door: Starter) -> None:
    door = await start_door()

    replies = await asyncio.to_thread(talk, door.port, (DATA / "two-transactions-at-once.txt").read_bytes())

    assert codes(replies) == [220, 250, 250, 250, 354, 250, 554]  # one command per connection
    assert [m.data for m in door.intake.mails] == [b"Subject: CREATE 14 4245\nWKSHP-Ansible101\n"]


async def test_a_final_dot_without_its_lf_still_ends_the_data(start_door: Starter) -> None:
    door = await start_door()

    replies = await asyncio.to_thread(talk, door.port, legacy_dialogue("CREATE 8 9")[:-1], shut_write=True)

    assert codes(replies)[-1] == 250
    assert len(door.intake.mails) == 1


# ---- limits ----------------------------------------------------------------------------


async def test_an_oversized_message_is_refused_and_nothing_after_it_committed(
    start_door: Starter,
) -> None:
    door = await start_door(limits=LegacyLimits(max_message=1000, greeting_delay=0.25))
    huge = "\n".join(["QUIT"] + ["x" * 99] * 30)  # lines that must not be read as commands
    payload = legacy_dialogue("CREATE 1 2", body=huge) + legacy_dialogue("CREATE 2 2")[14:]

    replies = await asyncio.to_thread(talk, door.port, payload)

    assert codes(replies) == [220, 250, 250, 250, 354, 552, 554]
    assert door.intake.mails == []


async def test_an_oversized_single_line_is_refused(start_door: Starter) -> None:
    door = await start_door(limits=LegacyLimits(max_message=1000, max_line=100))
    payload = legacy_dialogue("CREATE 1 2", body="y" * 300_000)

    replies = await asyncio.to_thread(talk, door.port, payload)

    assert codes(replies)[-1] == 552
    assert door.intake.mails == []


async def test_a_too_long_command_line_gets_500_and_the_dialogue_goes_on(
    start_door: Starter,
) -> None:
    door = await start_door(limits=LegacyLimits(max_line=100, greeting_delay=0.05))

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", door.port)) as sock:
            greeting = sock.recv(1000)  # a standard client waits for it
            sock.sendall(b"NOOP " + b"z" * 200 + b"\r\n")
            sock.sendall(b"HELO " + b"z" * 10_000 + b"\r\nNOOP\r\nQUIT\r\n")
            return greeting + read_all(sock)

    replies = await asyncio.to_thread(client)

    assert codes(replies) == [220, 500, 500, 250, 221]


async def test_a_connection_carries_one_transaction(start_door: Starter) -> None:
    door = await start_door()
    one = legacy_dialogue("PURGE 1 2")[14:]  # MAIL .. "."

    replies = await asyncio.to_thread(talk, door.port, b"HELO x\n" + one * 3)

    assert codes(replies) == [220, 250, 250, 250, 354, 250, 554]
    assert len(door.intake.mails) == 1


async def test_a_slow_client_is_cut_by_the_total_timeout(start_door: Starter) -> None:
    limits = LegacyLimits(greeting_delay=0.05, idle_timeout=0.5, total_timeout=1.0)
    door = await start_door(limits=limits)
    payload = legacy_dialogue("CREATE 1 2")

    def one_byte_at_a_time() -> tuple[float, bytes]:
        started = time.monotonic()
        heard = b""
        with socket.create_connection(("127.0.0.1", door.port)) as sock:
            for byte in payload:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable:
                    try:
                        chunk = sock.recv(1000)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    heard += chunk
            return time.monotonic() - started, heard

    elapsed, heard = await asyncio.to_thread(one_byte_at_a_time)

    assert 0.9 < elapsed < 2.0
    assert codes(heard)[0] == 220 and codes(heard)[-1] == 421
    assert door.intake.mails == []


async def test_an_idle_client_is_closed_after_its_complete_transaction_is_committed(
    start_door: Starter,
) -> None:
    door = await start_door(limits=LegacyLimits(greeting_delay=0.05, idle_timeout=0.3))

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", door.port)) as sock:
            greeting = sock.recv(1000)
            sock.sendall(legacy_dialogue("CREATE 4 2").replace(b"\n", b"\r\n"))
            return greeting + read_all(sock)

    replies = await asyncio.to_thread(client)

    assert codes(replies) == [220, 250, 250, 250, 354, 250, 421]
    assert len(door.intake.mails) == 1


# ---- incomplete data -------------------------------------------------------------------


async def test_data_cut_off_before_the_dot_is_recorded_not_submitted(
    start_door: Starter,
) -> None:
    intake = RecordingIntakeWithIncomplete()
    door = await start_door(intake)
    payload = (DATA / "cut-off-before-the-dot.txt").read_bytes()

    replies = await asyncio.to_thread(talk, door.port, payload, shut_write=True)

    assert codes(replies) == [220, 250, 250, 250, 354, 451]
    assert intake.mails == []
    [(mail, reason)] = intake.incomplete
    assert mail.data == b"Subject: CLEANUP 12 4242\nWKSHP-Ansible101\n"
    assert reason == "connection ended before the end of data"


async def test_without_record_incomplete_a_cut_off_mail_is_logged_without_its_content(
    start_door: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    door = await start_door()
    payload = (DATA / "cut-off-before-the-dot.txt").read_bytes()

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.DEBUG, logger="wodmail.legacy"):
        await asyncio.to_thread(node_client, door.port, payload, read=False, reset=True)
        await wait_for(lambda: bool(warnings()))
        await drain(door.server)

    assert door.intake.mails == []
    assert warnings() == ["legacy 127.0.0.1: connection ended before the end of data after 42 bytes; not submitted"]
    assert "CLEANUP" not in caplog.text and "WKSHP" not in caplog.text


# ---- the intake's answer ---------------------------------------------------------------


async def test_the_intakes_refusal_is_what_the_client_reads(start_door: Starter) -> None:
    door = await start_door(RecordingIntake(Reply(550, "5.7.1 peer 127.0.0.1 may not send")))

    replies = await asyncio.to_thread(talk, door.port, legacy_dialogue("CREATE 1 2"))

    assert replies.decode().splitlines()[-1] == "550 5.7.1 peer 127.0.0.1 may not send"


async def test_drain_ends_an_idle_conversation_with_421(start_door: Starter) -> None:
    door = await start_door(limits=LegacyLimits(greeting_delay=0.05))

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", door.port)) as sock:
            return read_all(sock)

    reading = asyncio.create_task(asyncio.to_thread(client))
    await asyncio.sleep(0.2)
    await drain(door.server, grace=0)

    assert codes(await reading) == [220, 421]
