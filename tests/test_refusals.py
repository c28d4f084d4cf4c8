"""Bad input gets a clear, specific refusal, a record for the operator, and nothing else.

Each sample mail in tests/data/mails/refused/ is named after what is wrong with it.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DATA, Daemon, Site

REFUSED = DATA / "mails" / "refused"

EXPECTED = {
    "unknown-verb.eml": (554, "unknown verb 'LAUNCH'"),
    "missing-student-id.eml": (554, "CREATE needs a student id and a customer id"),
    "garbled-student-id.eml": (554, "student id '1x2' is not a number"),
    "student-outside-location.eml": (554, "student 5000 is outside this location's range 1..2000"),
    "student-outside-workshop.eml": (554, "student 1500 is outside WKSHP-Sample's booked range 1..999"),
    "unknown-workshop.eml": (554, "unknown workshop 'WKSHP-Nonesuch'"),
    "workshop-with-slash.eml": (554, "workshop name 'WKSHP-Sample/../../etc' is not valid"),
    "workshop-with-dotdot.eml": (554, "workshop name 'WKSHP-..' is not valid"),
    "workshop-with-nul.eml": (554, "is not valid"),
    "workshop-with-shell-characters.eml": (554, "workshop name 'WKSHP-Sample;rm -rf $HOME' is not valid"),
    "missing-body.eml": (554, "the body is empty"),
    "non-utf8-body.eml": (554, "the body is not valid utf-8 text"),
    "reset-of-a-workshop-without-reset.eml": (554, "RESET refused: WKSHP-Sample is not a reset workshop"),
    "customer-with-shell-characters.eml": (554, "customer id '10;01' is not a plain identifier"),
    "range-on-cleanup.eml": (554, "only RESET takes a student range"),
    "customer-email-with-control-character.eml": (554, "holds whitespace or control characters"),
}


def test_every_sample_has_an_expectation() -> None:
    assert sorted(p.name for p in REFUSED.iterdir()) == sorted(EXPECTED)


def test_refusals_over_smtp(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    for name, (code, reason) in EXPECTED.items():
        raw = (REFUSED / name).read_bytes()
        with daemon.smtp() as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("wod@example.com", ["jupyter@example.com"], raw)
        assert refused.value.smtp_code == code, name
        assert isinstance(refused.value.smtp_error, bytes)
        assert reason in refused.value.smtp_error.decode(), (name, refused.value.smtp_error)
    records = site.refused()
    assert len(records) == len(EXPECTED)
    for record, (name, (want_code, want_reason)) in zip(records, EXPECTED.items(), strict=True):
        _id, door, peer, code, reason, mail = record
        assert (door, peer, code) == ("smtp", "127.0.0.1", want_code)
        assert want_reason in reason
        assert mail == (REFUSED / name).read_bytes(), name
    assert site.jobs() == []
    assert not site.student_dir.exists() or list(site.student_dir.iterdir()) == []
    listing = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), "refused"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "unknown verb 'LAUNCH'" in listing


def test_oversized_mail_is_refused(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    site.values["MAXMESSAGESIZE"] = 4096
    daemon = daemon_factory()
    body = "WKSHP-Sample\r\n" + ("x" * 70 + "\r\n") * 100
    code, text = daemon.send("CREATE 1 c1", body)
    assert code == 554 and b"more than the 4096" in text
    (record,) = site.refused()
    assert record[3] == 554


def test_unsigned_command_from_untrusted_peer_is_refused(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    site.values["TRUSTEDPEERS"] = ["192.0.2.0/24"]
    daemon = daemon_factory()
    code, text = daemon.send("CREATE 1 c1")
    assert code == 550 and b"TRUSTEDPEERS" in text
    assert site.jobs() == []


def deliver(site: Site, mail: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.write()), "deliver", *args],
        input=mail,
        capture_output=True,
        check=False,
    )


#: What the site's MTA writes on top of a mail the registration app sent it (procmailrc.example).
RELAYED = (
    b"Received: from app.example.com (app.example.com [198.51.100.25])\n"
    b"\tby jupyter.example.com (Postfix) with ESMTP id 4XyZ; Mon, 1 Jan 2024 00:00:00 +0000\n"
)


def test_deliver_exit_codes(site: Site) -> None:
    site.values["TRUSTEDPEERS"] = ["127.0.0.0/8", "198.51.100.25", "local"]
    create = RELAYED + (DATA / "mails" / "create.eml").read_bytes()
    accepted = deliver(site, create, "-f", "wod@example.com")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.startswith(b"250 queued as job 1")
    again = deliver(site, create)
    assert again.returncode == 0 and b"already have this command as job 1" in again.stdout

    bad = deliver(site, RELAYED + (REFUSED / "unknown-verb.eml").read_bytes())
    assert bad.returncode == 65 and b"unknown verb" in bad.stderr

    site.values["TRUSTEDPEERS"] = ["127.0.0.1", "198.51.100.25"]  # no "local": the pipe is not trusted
    denied = deliver(site, create)
    assert denied.returncode == 77 and b"local" in denied.stderr
    assert [job[1:4] for job in site.jobs()] == [("CREATE", 1, "queued")]
    assert [r[3] for r in site.refused()] == [554, 550]


def test_deliver_answers_75_when_it_cannot_commit(site: Site, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    site.values["STATEDIR"] = str(blocker / "state")
    result = deliver(site, (DATA / "mails" / "create.eml").read_bytes())
    assert result.returncode == 75, result.stderr


def test_configuration_error_stops_start_up_with_one_line(site: Site) -> None:
    site.workshops["CHLG-SampleReset"] = {"range": [1150, 1250]}
    result = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.write()), "serve"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "workshops.yaml" in lines[0] and "overlap" in lines[0]
