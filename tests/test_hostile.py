"""No input can hurt the host: generated and mutated hostile mails, everywhere they enter.

Three layers get the same kinds of mail (random bytes, broken MIME, nested multiparts,
encoded-word subjects, NULs, CR/LF inside fields, megabyte headers, ten thousand headers):

* the parser, `parse_command`: a `Command` that holds only valid fields, or `BadCommand`;
* the intake, `CommandIntake.submit`, in-process with a real `queue.Writer` on a temporary
  database, through the three doors and from trusted and untrusted peers: 250 with a job,
  or 550 / 554 with a specific one-line reason and a record of the refused mail;
* a real daemon, over the standard door and the legacy door: every mail gets an SMTP
  reply, the daemon stays up, logs no traceback, and serves a real command afterwards.

Each case is bounded in time (PER_MAIL_SECONDS, and Hypothesis's deadline). Hypothesis
runs derandomized (a fixed seed) without its example database, so CI is repeatable. The
number of mails each test tries is asserted; HOSTILE_MAILS is their sum.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import quopri
import random
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DATA, Daemon, Site, legacy_dialogue, send_legacy
from wodmail import queue
from wodmail.command import CUSTOMER_RE, WORKSHOP_RE, Command, parse_command
from wodmail.errors import BadCommand
from wodmail.inbound import InboundMail, Reply
from wodmail.intake import CommandIntake
from wodmail.location import load_location
from wodmail.peers import LocalClient
from wodmail.verbspec import shipped_verbs

PER_MAIL_SECONDS = 5.0

PARSER_GENERATED = 2500
PARSER_MUTATED = 150 * 20
PARSER_RANDOM = 100 * 10
INTAKE_MAILS = 200 * 15
DAEMON_SMTP = 100 * 12
DAEMON_LEGACY = 600
EXTREMES = 14  # each through the parser, the intake and the daemon's standard door
HOSTILE_MAILS = (
    PARSER_GENERATED + PARSER_MUTATED + PARSER_RANDOM + INTAKE_MAILS + DAEMON_SMTP + DAEMON_LEGACY + 3 * EXTREMES
)

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=10),
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)

SEEDS = sorted(
    [*(DATA / "hostile" / "seeds").iterdir(), *(DATA / "mails").glob("*.eml"), *(DATA / "mails" / "refused").iterdir()]
)
SEED_BYTES = [path.read_bytes() for path in SEEDS]

# --- what hostile mails are made of ----------------------------------------------------------
#
# The generator is plain Python driven by a `random.Random` that Hypothesis seeds: drawing
# every byte through Hypothesis strategies costs ~20 ms a mail, this ~0.05 ms. Half the
# mails are command-shaped with one or two faults (so the checks past the parser's first
# refusal are reached), half are damaged throughout.

EOLS = [b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"]
NOISE_TOKENS = [
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\n",
    b"\xff\xfe",
    b"\xc3\x28",
    b"=?",
    b"?=",
    b"=?utf-8?b?",
    b"\t",
    b";",
    b"$(touch /tmp/wodmail-pwned)",
    b"`id`",
    b"|sh",
    b"../../",
    b"\\",
    b'"',
    b"{{ ''.__class__ }}",
    b"--",
    b"\xe2\x80\xa8",
    b"\xef\xbb\xbf",
]
GOOD_VERBS = ["CREATE", "CLEANUP", "DELETE", "RESET", "PURGE", "create", "Purge"]
BAD_VERBS = ["LAUNCH", "CREATE\x00", "\uff23\uff32\uff25\uff21\uff34\uff25", "ß", "", "CREATE;", "-", "RESET\u2028"]
BAD_STDIDS = ["5,1", "-1", "1e3", "0x1f", "١٢", "9999999999", "../1", "1;id", "$(id)", "", "1,", ",1", "1 ,2"]
GOOD_CUSTOMERS = ["c1", "4245", "cust.omer-1_x", "A"]
BAD_CUSTOMERS = ["c;1", "c|1", "c`id`", "c$(id)", "c\x00", "-c", "..", "c/../x", "c'1", 'c"1', "x" * 70, ""]
GOOD_ADDRESSES = ["x@example.com", "first.last+tag@example.org", "ü@bücher.de"]
BAD_ADDRESSES = [
    "not-an-address",
    "a|touch${IFS}/tmp/wodmail-pwned@example.com",
    '"a b"@example.com',
    "x@[127.0.0.1]",
    "x@xn--invalid-.com",
    "x@exa\x00mple.com",
    "x@" + "a" * 300 + ".com",
    "@example.com",
]
GOOD_WORKSHOPS = ["WKSHP-Sample", "CHLG-Sample", "WKSHP-SampleReset"]
BAD_WORKSHOPS = [
    "WKSHP-..",
    "WKSHP-Sample/../../etc",
    "/etc/passwd",
    "WKSHP-Sample\x00",
    "WKSHP-Sämple",
    "WKSHP-Nonesuch",
    "../WKSHP-Sample",
    "WKSHP-Sample;id",
    "WKSHP-Sample$(id)",
    "",
    "WKSHP-" + "a" * 120,
]
CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "utf-16", "utf-7", "x-bogus", "utf\x008", "rot13", "zlib", "idna", ""]
TRANSFERS = ["", "7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "bogus"]
HEADER_NAMES = [
    "From",
    "To",
    "Message-ID",
    "Date",
    "Received",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "X-Wodmail-Signature",
    "Subject",
    "Reply-To",
    "X-\x00",
    "Bad Name",
    "",
]
CHAR_POOL = "aZ09 -_.,;:@<>()[]\"'\\/=?\t\x00\x01\x7f\x80éß€😀\u2028\ufeff"


def random_text(rnd: random.Random, most: int) -> str:
    return "".join(rnd.choice(CHAR_POOL) for _ in range(rnd.randint(0, most)))


def noise(rnd: random.Random) -> bytes:
    return rnd.choice(NOISE_TOKENS) if rnd.random() < 0.7 else rnd.randbytes(rnd.randint(0, 24))


def spoil(rnd: random.Random, data: bytes) -> bytes:
    at = rnd.randint(0, len(data))
    return data[:at] + noise(rnd) + data[at:]


def pick(rnd: random.Random, good: list[str], bad: list[str], faulty: bool) -> str:
    if faulty and rnd.random() < 0.3:
        return rnd.choice(bad) if rnd.random() < 0.8 else random_text(rnd, 12)
    return rnd.choice(good)


def subject_bytes(text: str, how: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    if how == "q":
        return b"=?utf-8?q?" + quopri.encodestring(raw, header=True).replace(b"=\n", b"") + b"?="
    if how == "b":
        return b"=?utf-8?b?" + base64.b64encode(raw) + b"?="
    if how == "split":
        return b" ".join(b"=?utf-8?b?" + base64.b64encode(word) + b"?=" for word in raw.split(b" "))
    if how == "bad-charset":
        return b"=?x-bogus?q?" + raw.replace(b" ", b"_") + b"?="
    if how == "broken":
        return b"=?utf-8?b?" + raw + b"?="
    if how == "folded":
        return raw.replace(b" ", b"\r\n ")
    return raw


def make_subject(rnd: random.Random, faulty: bool) -> bytes:
    verb = pick(rnd, GOOD_VERBS, BAD_VERBS, faulty)
    if verb.upper() == "RESET" and rnd.random() < 0.6:
        first = rnd.choice([1101, 1150, 1])
        student = f"{first},{first + rnd.randint(0, 20)}"
    else:
        student = str(rnd.choice([rnd.randint(1, 999), rnd.randint(1001, 1200), rnd.randint(0, 3000)]))
    if faulty and rnd.random() < 0.3:
        student = rnd.choice(BAD_STDIDS) if rnd.random() < 0.8 else random_text(rnd, 8)
    words = [verb, student, pick(rnd, GOOD_CUSTOMERS, BAD_CUSTOMERS, faulty)]
    if rnd.random() < 0.3:
        words.append(pick(rnd, GOOD_ADDRESSES, BAD_ADDRESSES, faulty))
    if faulty and rnd.random() < 0.1:
        words.append(random_text(rnd, 10))
    how = rnd.choice(["plain"] * 6 + ["q", "b", "split", "folded"] + (["bad-charset", "broken"] if faulty else []))
    value = subject_bytes(" ".join(words), how)
    if faulty and rnd.random() < 0.2:
        value = spoil(rnd, value)
    name = b"Subject"
    if faulty and rnd.random() < 0.1:
        name = rnd.choice([b"subject", b"SUBJECT", b"Subject ", b"Subj\x00ect", b"Subjec"])
    return name + b":" + rnd.choice([b" ", b" ", b"", b"\t"]) + value


def text_part(rnd: random.Random, faulty: bool) -> tuple[list[bytes], bytes]:
    """(Content-* header lines, body) of one text part."""
    lines = [pick(rnd, GOOD_WORKSHOPS, BAD_WORKSHOPS, faulty)]
    for _ in range(rnd.randint(0, 3)):
        lines.insert(rnd.randint(0, len(lines)), rnd.choice(["", "  ", "hello", "WKSHP-Sample", "\t"]))
    charset = rnd.choice(CHARSETS[:4]) if not faulty or rnd.random() < 0.7 else rnd.choice(CHARSETS)
    try:
        raw = "\n".join(lines).encode(charset or "utf-8", "replace")
    except (LookupError, ValueError, TypeError):
        raw = "\n".join(lines).encode("utf-8", "surrogatepass")
    transfer = rnd.choice(TRANSFERS[:5]) if not faulty or rnd.random() < 0.7 else rnd.choice(TRANSFERS)
    if transfer == "base64":
        raw = base64.encodebytes(raw)
    elif transfer == "quoted-printable":
        raw = quopri.encodestring(raw)
    if faulty and rnd.random() < 0.2:
        raw = spoil(rnd, raw)
    headers = []
    if rnd.random() < 0.6 or charset not in ("utf-8", "us-ascii"):
        subtype = "plain" if not faulty or rnd.random() < 0.7 else rnd.choice(["html", "x-bogus", ""])
        params = f"; charset={charset}" if charset else ""
        headers.append(f"Content-Type: text/{subtype}{params}".encode("utf-8", "surrogatepass"))
    if transfer:
        headers.append(b"Content-Transfer-Encoding: " + transfer.encode())
    return headers, raw


def mime_body(rnd: random.Random, eol: bytes, faulty: bool, depth: int = 0) -> tuple[list[bytes], bytes]:
    if depth > 3 or rnd.random() < 0.6:
        return text_part(rnd, faulty)
    boundary = b"b%d" % depth
    if faulty and rnd.random() < 0.2:
        boundary = rnd.choice([b"", b"--", b"a" * 80, b"b\x00", b"b1"])
    subtype = rnd.choice([b"mixed", b"alternative", b"related"] + ([b"x-bogus"] if faulty else []))
    body = b"preamble" + eol
    for _ in range(rnd.randint(0 if faulty else 1, 4)):
        headers, content = mime_body(rnd, eol, faulty, depth + 1)
        body += b"--" + boundary + eol + eol.join(headers) + eol + eol + content + eol
    if not faulty or rnd.random() < 0.7:
        body += b"--" + boundary + b"--" + eol
    return [b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"'], body


def make_mail(rnd: random.Random) -> bytes:
    """A mail shaped like a command: with one or two faults, or damage anywhere in it."""
    faulty = rnd.random() < 0.75
    eol = b"\r\n" if not faulty or rnd.random() < 0.6 else rnd.choice(EOLS)
    headers = [b"From: wod@example.com"] if rnd.random() < 0.7 else []
    for _ in range(rnd.randint(0, 4) if faulty else 0):
        name = rnd.choice(HEADER_NAMES).encode("utf-8", "surrogatepass")
        value = random_text(rnd, 40).encode("utf-8", "surrogatepass") if rnd.random() < 0.6 else noise(rnd)
        headers.append(name + b": " + value)
    for _ in range(1 if not faulty or rnd.random() < 0.8 else rnd.randint(0, 3)):
        headers.insert(rnd.randint(0, len(headers)), make_subject(rnd, faulty))
    if rnd.random() < 0.3:
        headers.append(b"Message-ID: <%d.hostile@example.com>" % rnd.getrandbits(48))
    content_headers, body = mime_body(rnd, eol, faulty)
    if content_headers and rnd.random() < 0.5:
        headers.insert(0, b"MIME-Version: 1.0")
    headers.extend(content_headers)
    separator = eol if not faulty or rnd.random() < 0.7 else rnd.choice([b"", eol + eol, b"\r\n", b"\n"])
    mail = eol.join(headers) + eol + separator + body
    if faulty and rnd.random() < 0.3:
        mail = spoil(rnd, mail)
    return mail


SEEDS_OF_RANDOM = st.integers(0, 2**64 - 1).map(random.Random)


# --- mutations of real mails ---------------------------------------------------------------------


def mutate(data: bytes, rnd: random.Random) -> bytes:
    """1 to 6 random edits: flips, insertions of noise, deletions, duplications, swaps."""
    out = bytearray(data)
    for _ in range(rnd.randint(1, 6)):
        op = rnd.randrange(9)
        at = rnd.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rnd.randrange(8)
        elif op == 1:
            out[at:at] = rnd.choice(NOISE_TOKENS)
        elif op == 2:
            del out[at : at + rnd.randint(1, 16)]
        elif op == 3:
            end = min(len(out), at + rnd.randint(1, 64))
            out[end:end] = out[at:end] * rnd.randint(1, 4)
        elif op == 4:
            lines = bytes(out).split(b"\n")
            i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            out = bytearray(b"\n".join(lines))
        elif op == 5:
            out = bytearray(bytes(out).replace(b"\r\n", rnd.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"])))
        elif op == 6:
            header = rnd.choice(
                [
                    b"Subject: PURGE 3 c3",
                    b"Content-Type: multipart/mixed; boundary=x",
                    b"Content-Transfer-Encoding: base64",
                    b"Content-Type: text/plain; charset=utf-16",
                    b"X-Wodmail-Signature: v1; key=0123456789abcdef",
                    b"Subject: =?utf-8?b?Q1JFQVRFIDEgYzE=?=",
                    b"Message-ID: <" + b"(" * 50 + b">",
                ]
            )
            out[0:0] = header + b"\r\n"
        elif op == 7:
            out = out[: rnd.randint(0, len(out))]
        else:
            chunk = out[at : at + 8]
            out[at : at + 8] = chunk.upper() if rnd.random() < 0.5 else chunk.lower()
    return bytes(out)


# --- the extremes, built once --------------------------------------------------------------------


def extreme_mails() -> dict[str, bytes]:
    subject = b"Subject: CREATE 1 c1\r\n"
    nested = subject + b"MIME-Version: 1.0\r\n"
    for depth in range(2000):
        nested += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (depth, depth)
    return {
        "one-megabyte-subject": b"Subject: CREATE 1 c1 " + b"x " * (1 << 19) + b"\r\n\r\nWKSHP-Sample\r\n",
        "one-megabyte-other-header": subject + b"X-Junk: " + b"y" * (1 << 20) + b"\r\n\r\nWKSHP-Sample\r\n",
        "one-megabyte-folded-subject": b"Subject: CREATE 1 c1" + b"\r\n x" * (1 << 18) + b"\r\n\r\nWKSHP-Sample\r\n",
        "one-megabyte-content-type": subject + b"Content-Type: text/plain" + b"; a=b" * (1 << 18) + b"\r\n\r\n",
        "one-megabyte-encoded-words": b"Subject: " + b"=?utf-8?q?CREATE?= " * (1 << 16) + b"\r\n\r\nWKSHP-Sample\r\n",
        "ten-thousand-headers": b"".join(b"X-H%d: v\r\n" % i for i in range(10000)) + subject + b"\r\nWKSHP-Sample\r\n",
        "ten-thousand-subjects": subject * 10000 + b"\r\nWKSHP-Sample\r\n",
        "ten-thousand-signatures": subject + b"X-Wodmail-Signature: v1\r\n" * 10000 + b"\r\nWKSHP-Sample\r\n",
        "multipart-nested-2000-deep": nested + b"Content-Type: text/plain\r\n\r\nWKSHP-Sample\r\n",
        "one-megabyte-of-blank-lines": subject + b"\r\n" * (1 << 19) + b"WKSHP-Sample\r\n",
        "nul-everywhere": b"\x00".join(bytes([c]) for c in subject + b"\r\nWKSHP-Sample\r\n"),
        "cr-lf-inside-the-subject": b"Subject: CREATE 1 c1\rPURGE 2 c2\n\rCLEANUP 3 c3\r\n\r\nWKSHP-Sample\r\n",
        "one-megabyte-random-bytes": random.Random(4).randbytes(1 << 20),
        "nul-in-charset": subject + b'Content-Type: text/plain; charset="utf\x008"\r\n\r\nWKSHP-Sample\r\n',
    }


EXTREME = extreme_mails()
assert len(EXTREME) == EXTREMES


# --- what every outcome must look like ------------------------------------------------------------


def one_line(text: str) -> bool:
    return bool(text) and not any(ch in text for ch in "\r\n\x00") and len(text) < 1000


def check_command(command: Command) -> None:
    """A parsed command holds nothing but valid fields."""
    assert command.verb in shipped_verbs()
    assert 0 <= command.stdid <= command.last_stdid <= 999_999_999
    assert command.last_stdid == command.stdid or command.verb == "RESET"
    assert CUSTOMER_RE.fullmatch(command.customer)
    assert command.workshop is None or (WORKSHOP_RE.fullmatch(command.workshop) and ".." not in command.workshop)
    assert command.workshop is not None or command.verb == "PURGE"
    assert command.email is None or not re.search(r"[\s\x00-\x1f\x7f-\x9f]", command.email)  # kept as given
    assert one_line(command.canonical())


def check_parse(raw: bytes, outcomes: Counter[str]) -> None:
    started = time.monotonic()
    try:
        command = parse_command(raw)
    except BadCommand as refusal:
        assert one_line(refusal.reason), refusal.reason
        outcomes["refused"] += 1
    else:
        check_command(command)
        outcomes["command"] += 1
    took = time.monotonic() - started
    assert took < PER_MAIL_SECONDS, f"parsing a {len(raw)}-byte mail took {took:.1f} s"


# --- the parser ------------------------------------------------------------------------------------


def test_the_parser_on_generated_mails() -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=PARSER_GENERATED // 25)
    @given(SEEDS_OF_RANDOM)
    def run(rnd: random.Random) -> None:
        for _ in range(25):
            check_parse(make_mail(rnd), outcomes)

    run()
    assert sum(outcomes.values()) >= PARSER_GENERATED
    assert outcomes["command"] > 50 and outcomes["refused"] > 1000, outcomes  # both sides are reached


def test_the_parser_on_mutated_mails() -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=PARSER_MUTATED // 20)
    @given(st.integers(0, len(SEED_BYTES) - 1), SEEDS_OF_RANDOM)
    def run(seed: int, rnd: random.Random) -> None:
        for _ in range(20):
            check_parse(mutate(SEED_BYTES[seed], rnd), outcomes)

    run()
    assert sum(outcomes.values()) >= PARSER_MUTATED
    assert outcomes["command"] > 100, outcomes


def test_the_parser_on_random_bytes() -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=PARSER_RANDOM // 10)
    @given(st.lists(st.binary(max_size=4096), min_size=10, max_size=10))
    def run(blobs: list[bytes]) -> None:
        for raw in blobs:
            check_parse(raw, outcomes)

    run()
    assert sum(outcomes.values()) >= PARSER_RANDOM


EXPECTED_EXTREMES = {
    "one-megabyte-subject": "the Subject header is 1048597 bytes long, more than 2048",
    "one-megabyte-folded-subject": "the Subject header is 524308 bytes long, more than 2048",
    "one-megabyte-content-type": "the Content-Type header is 1310744 bytes long, more than 2048",
    "ten-thousand-subjects": "the mail has 10000 Subject headers: a command mail has one",
    "one-megabyte-encoded-words": "the Subject header is 1245193 bytes long, more than 2048",
    "ten-thousand-signatures": None,  # checked by the intake: several signature headers
    "multipart-nested-2000-deep": "the mail has more than 50 MIME parts",
    "nul-everywhere": "no Subject: a command mail's Subject is 'VERB <stdid> <customer-id>'",
    "cr-lf-inside-the-subject": (
        "workshop name 'PURGE 2 c2' is not valid: expected WKSHP- or CHLG- followed by letters, digits, '-', '_' or '.'"
    ),
    "nul-in-charset": "the body is not valid utf?8 text",
}


@pytest.mark.parametrize("name", sorted(EXTREME))
def test_the_parser_on_extreme_mails(name: str) -> None:
    outcomes: Counter[str] = Counter()
    check_parse(EXTREME[name], outcomes)
    expected = EXPECTED_EXTREMES.get(name)
    if expected is not None:
        with pytest.raises(BadCommand) as refused:
            parse_command(EXTREME[name])
        assert refused.value.reason == expected


# --- the intake, in-process ---------------------------------------------------------------------------

PEERS = [
    ("smtp", "127.0.0.1", "wod@example.com"),
    ("smtp", "198.51.100.7", "attacker@example.net"),
    ("smtp", "127.0.0.1", "evil\r\nRCPT TO:<x>@example.net"),
    ("legacy", "127.0.0.1", "wod@example.com"),
    ("legacy", "203.0.113.5", "wod@example.com"),
    ("deliver", None, ""),
]
REFUSAL_CODES = {550, 554}


def local(peer: str | None) -> LocalClient | None:
    """Who the doors say opened a loopback connection: root, as in these tests."""
    return LocalClient(0) if peer == "127.0.0.1" else None


async def submit_all(intake: CommandIntake, mails: list[InboundMail]) -> list[Reply]:
    async def one(mail: InboundMail) -> Reply:
        started = time.monotonic()
        reply = await intake.submit(mail)
        assert time.monotonic() - started < PER_MAIL_SECONDS * 4  # a batch commits together
        return reply

    return list(await asyncio.gather(*(one(mail) for mail in mails)))


def check_replies(site: Site, mails: list[InboundMail], replies: list[Reply], outcomes: Counter[str]) -> None:
    for mail, reply in zip(mails, replies, strict=True):
        assert one_line(reply.text), reply
        if reply.accepted:
            assert reply.text.startswith(("queued as job ", "already have this command as job "))
            outcomes["accepted"] += 1
        else:
            assert reply.code in REFUSAL_CODES, (reply, mail.data[:200])
            assert "internal error" not in reply.text and "Traceback" not in reply.text
            outcomes[f"refused {reply.code}"] += 1


def test_the_intake_in_process(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every refusal is to be found recorded below: lift the caps that bound their number
    # (tests/test_queue.py shows those).
    monkeypatch.setattr("wodmail.queue.arrivals.REFUSED_PER_PEER", 1 << 30)
    monkeypatch.setattr("wodmail.queue.arrivals.REFUSED_TOTAL", 1 << 30)
    site.values["MAXMESSAGESIZE"] = 1 << 16
    location = load_location(site.write())
    writer = queue.Writer(queue.open_database(location.state_dir))
    intake = CommandIntake(location, writer)
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=INTAKE_MAILS // 15)
    @given(
        st.integers(0, len(SEED_BYTES) - 1), SEEDS_OF_RANDOM, st.lists(st.binary(max_size=512), min_size=2, max_size=2)
    )
    def run(seed: int, rnd: random.Random, blobs: list[bytes]) -> None:
        datas = [make_mail(rnd) for _ in range(7)] + [mutate(SEED_BYTES[seed], rnd) for _ in range(6)] + blobs
        mails = []
        for data in datas:
            door, peer, sender = rnd.choice(PEERS)
            mails.append(InboundMail(door=door, peer=peer, mail_from=sender, data=data, local_client=local(peer)))
        replies = asyncio.run(submit_all(intake, mails))
        check_replies(site, mails, replies, outcomes)

    try:
        run()
    finally:
        writer.close()
    assert sum(outcomes.values()) >= INTAKE_MAILS
    assert outcomes["accepted"] > 40 and outcomes["refused 550"] > 100 and outcomes["refused 554"] > 500, outcomes
    with site.db() as conn:
        refused = conn.execute("SELECT count(*) FROM refused").fetchone()[0]
        jobs = conn.execute("SELECT command FROM jobs").fetchall()
    assert refused == outcomes["refused 550"] + outcomes["refused 554"]
    for (text,) in jobs:
        check_command(Command.from_json(text))


def test_the_intake_on_extreme_mails(site: Site) -> None:
    """With MAXMESSAGESIZE raised to 2 MiB, the parser itself meets the extremes."""
    site.values["MAXMESSAGESIZE"] = 2 << 20
    location = load_location(site.write())
    writer = queue.Writer(queue.open_database(location.state_dir))
    intake = CommandIntake(location, writer)
    mails = [
        InboundMail(
            door="smtp", peer="127.0.0.1", mail_from="wod@example.com", data=raw, local_client=local("127.0.0.1")
        )
        for raw in EXTREME.values()
    ]
    try:
        replies = asyncio.run(submit_all(intake, mails))
    finally:
        writer.close()
    check_replies(site, mails, replies, Counter())
    by_name = dict(zip(EXTREME, replies, strict=True))
    assert by_name["ten-thousand-signatures"] == Reply(
        550, "the mail has 10000 X-Wodmail-Signature headers: a signed command has one"
    )
    assert by_name["ten-thousand-headers"].accepted and by_name["one-megabyte-other-header"].accepted
    for name, reason in EXPECTED_EXTREMES.items():
        if reason is not None:
            assert by_name[name] == Reply(554, reason), name


# --- a real daemon, both doors ---------------------------------------------------------------------------


def dot_stuff(data: bytes) -> bytes:
    return re.sub(rb"(?:^|(?<=\r\n))\.", b"..", data)


class RawSMTP:
    """A minimal SMTP client that sends the bytes it is given (smtplib rewrites line ends)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()
        if self.greeting[0] == 220:
            self.command(b"EHLO fuzz.example.net")

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline(4096)
            if not line:
                raise ConnectionError("closed")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                break
        return int(lines[-1][:3]), "\n".join(lines)

    def command(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def transaction(self, data: bytes, sender: bytes = b"<fuzz@example.net>") -> tuple[int, str]:
        code, text = self.command(b"MAIL FROM:" + sender)
        assert code == 250, text
        code, text = self.command(b"RCPT TO:<wod@example.com>")
        assert code == 250, text
        code, text = self.command(b"DATA")
        assert code == 354, text
        ending = b"" if data.endswith(b"\r\n") else b"\r\n"
        self.sock.sendall(dot_stuff(data) + ending + b".\r\n")
        return self.reply()

    def close(self) -> None:
        """QUIT if the server still listens, then close."""
        with contextlib.suppress(OSError, ConnectionError, ValueError):
            self.command(b"QUIT")
        self.file.close()
        self.sock.close()


STANDARD_CODES = {250, 550, 554, 552, 500}  # 500: a line over 1001 bytes; 552: over the size cap
LEGACY_CODES = {250, 550, 554, 552, 451}  # 451: input ended inside DATA, nothing committed


def legacy_exchange(port: int, data: bytes) -> list[int]:
    """The legacy client's way: everything at once, then read every reply until the close."""
    dialogue = b"HELO fuzz\nMAIL FROM: wod@example.com\nRCPT TO: jupyter@example.com\nDATA\n" + data
    dialogue += (b"" if data.endswith(b"\n") else b"\n") + b".\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(dialogue)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return [int(line[:3]) for line in received.split(b"\r\n") if line[:3].isdigit()]


def corpus(count: int, salt: int) -> Iterator[bytes]:
    """`count` hostile mails, generated and mutated, the same on every run."""
    rnd = random.Random(salt)
    for index in range(count):
        yield make_mail(rnd) if index % 2 else mutate(SEED_BYTES[index % len(SEED_BYTES)], rnd)


def test_the_daemon_survives_hostile_mails_on_both_doors(site: Site, daemon_factory: Callable[[], Daemon]) -> None:
    site.values["MAXMESSAGESIZE"] = 1 << 16
    daemon = daemon_factory()
    smtp_mails = list(corpus(DAEMON_SMTP, 1)) + list(EXTREME.values())
    legacy_mails = list(corpus(DAEMON_LEGACY, 2))
    assert len(smtp_mails) == DAEMON_SMTP + EXTREMES and len(legacy_mails) == DAEMON_LEGACY

    def over_smtp(chunk: list[bytes]) -> list[int]:
        codes = []
        client = RawSMTP(site.smtp_port)
        for data in chunk:
            started = time.monotonic()
            code, text = client.transaction(data)
            assert time.monotonic() - started < PER_MAIL_SECONDS * 4
            assert code in STANDARD_CODES and "Error: (" not in text, (code, text, data[:200])
            codes.append(code)
        client.close()
        return codes

    def over_legacy(data: bytes) -> list[int]:
        codes = legacy_exchange(site.legacy_port, data)
        assert codes[:5] == [220, 250, 250, 250, 354], (codes, data[:200])
        assert codes[5] in LEGACY_CODES, (codes, data[:200])
        return codes

    chunks = [smtp_mails[i : i + 12] for i in range(0, len(smtp_mails), 12)]
    with ThreadPoolExecutor(8) as pool:
        smtp_codes = [code for codes in pool.map(over_smtp, chunks) for code in codes]
        legacy_codes = list(pool.map(over_legacy, legacy_mails))
    assert len(smtp_codes) == len(smtp_mails) and len(legacy_codes) == len(legacy_mails)
    print("standard door:", sorted(Counter(smtp_codes).items()))
    print("legacy door:", sorted(Counter(codes[5] for codes in legacy_codes).items()))
    assert Counter(smtp_codes)[250] > 10 and Counter(codes[5] for codes in legacy_codes)[250] > 10

    # Still up, and serving a real command through each door.
    assert daemon.process is not None and daemon.process.poll() is None
    code, _ = daemon.send("CREATE 990 c990")
    assert code == 250
    assert send_legacy(site.legacy_port, legacy_dialogue("CREATE 991 c991", "WKSHP-Sample")) == b"2"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = {row[2] for row in site.jobs() if row[3] == "done"}
        if {990, 991} <= done:
            break
        time.sleep(0.1)
    assert {990, 991} <= {row[2] for row in site.jobs() if row[3] == "done"}
    log = daemon.logs()
    assert "Traceback" not in log and "unexpected error" not in log and "exception" not in log.lower(), log[-3000:]


def test_the_count_of_hostile_mails() -> None:
    assert HOSTILE_MAILS >= 10_000
    assert Path(__file__).name == "test_hostile.py"
