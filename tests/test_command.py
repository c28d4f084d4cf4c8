"""The fast path and the email package read plain command mails the same way.

`simple_fields` reads plain mails (the registration app's) without the email package; for
every mail it accepts, the command (or the refusal) must be exactly what the email package's
reading gives.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wodmail.command import Command, command_from_fields, message_fields, read_mail, simple_fields
from wodmail.errors import BadCommand

MAILS = Path(__file__).parent / "data" / "mails"


def both_readings(raw: bytes) -> tuple[object, object] | None:
    fast = simple_fields(raw)
    if fast is None:
        return None

    def outcome(reading: object) -> object:
        try:
            return command_from_fields(reading)  # type: ignore[arg-type]
        except BadCommand as exc:
            return f"refused: {exc.reason}"

    return outcome(fast), outcome(message_fields(read_mail(raw)))


def test_the_sample_mails_read_the_same_both_ways() -> None:
    taken = 0
    for path in sorted(MAILS.rglob("*.eml")):
        readings = both_readings(path.read_bytes())
        if readings is not None:
            taken += 1
            assert readings[0] == readings[1], path.name
    assert taken >= 15


def test_the_legacy_clients_mail_takes_the_fast_path() -> None:
    raw = b"Subject: CREATE 12 345 a@example.com\nWKSHP-Ansible101\n"
    fields = simple_fields(raw)
    assert fields is not None
    assert command_from_fields(fields) == Command(
        verb="CREATE", stdid=12, last_stdid=12, customer="345", workshop="WKSHP-Ansible101", email="a@example.com"
    )


def test_anything_but_plain_goes_to_the_email_package() -> None:
    for raw in (
        b"Subject: =?utf-8?q?CREATE_1_2?=\n\nWKSHP-A\n",
        b"Subject: CREATE 1\n 2\n\nWKSHP-A\n",
        b"Content-Type: multipart/mixed; boundary=x\nSubject: CREATE 1 2\n\n--x\n",
        b"Content-Transfer-Encoding: base64\nSubject: CREATE 1 2\n\nV0tTSFAtQQ==\n",
        "Subject: CREATE 1 2\n\nWKSHP-\u00e9\n".encode(),
        b"Subject: CREATE 1 2\r\rWKSHP-A\n",
    ):
        assert simple_fields(raw) is None, raw


header_names = st.sampled_from(["Subject", "subject", "SUBJECT", "Message-ID", "From", "To", "X-Other", "Content-Type"])
values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
commands = st.tuples(
    st.sampled_from(["CREATE", "create", "CLEANUP", "DELETE", "RESET", "PURGE", "LAUNCH"]),
    st.sampled_from(["1", "12", "1,5", "x", "", "99999999999"]),
    st.sampled_from(["c1", "345", "a;b", ""]),
    st.sampled_from(["", "a@example.com", "bad"]),
).map(lambda t: " ".join(part for part in t if part))
bodies = st.lists(
    st.sampled_from(["", "  ", "WKSHP-Sample", " WKSHP-Sample ", "CHLG-X", "WKSHP-..", "hello", "\t"]), max_size=4
)


@settings(
    max_examples=1500, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    subject=commands,
    extra=st.lists(st.tuples(header_names, values), max_size=4),
    body=bodies,
    newline=st.sampled_from(["\n", "\r\n"]),
    blank=st.booleans(),
    spaces=st.sampled_from(["", " ", "  ", "\t"]),
)
def test_generated_plain_mails_read_the_same_both_ways(
    subject: str, extra: list[tuple[str, str]], body: list[str], newline: str, blank: bool, spaces: str
) -> None:
    lines = [f"Subject:{spaces}{subject}{spaces}"] + [f"{name}: {value}" for name, value in extra]
    if blank:
        lines.append("")
    raw = newline.join(lines + body + [""]).encode("ascii")
    readings = both_readings(raw)
    if readings is not None:
        assert readings[0] == readings[1]
