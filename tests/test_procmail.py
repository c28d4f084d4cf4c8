"""procmailrc.example with the real procmail: a command the queue cannot take now is retried by
the MTA, never filed unread in a mailbox or bounced.

procmail runs the shipped file unchanged (WODMAIL and WODMAILLOCATION given on its command
line, as a site may), the way an MTA's mailbox_command does: the mail on stdin, DEFAULT the
recipient's mailbox, and its exit code is what the MTA acts on (0 delivered, 75 try again).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, Site

from .test_trust import APP, received

ROOT = Path(__file__).resolve().parent.parent
RCFILE = ROOT / "procmailrc.example"
EX_TEMPFAIL = 75

CREATE = (DATA / "mails" / "create.eml").read_bytes()


def procmail(site: Site, mail: bytes, location: Path | None = None) -> tuple[int, str]:
    """Run procmail on `mail` with the shipped rcfile; (exit code, its log)."""
    program = shutil.which("procmail")
    assert program is not None, "procmail is not installed (scripts/test installs it)"
    wodmail = Path(sys.executable).parent / "wodmail"
    assert wodmail.exists(), f"{wodmail}: the venv's wodmail command is missing"
    mailbox = site.root / "mailbox"
    result = subprocess.run(
        [
            program,
            "-p",  # an environment of its own, as under an MTA
            f"DEFAULT={mailbox}",
            f"WODMAIL={wodmail}",
            f"WODMAILLOCATION={location or site.file}",
            str(RCFILE),
        ],
        input=b"Return-Path: <wod@example.com>\n" + mail,
        capture_output=True,
        check=False,
        timeout=60,
        cwd=site.root,
    )
    return result.returncode, result.stderr.decode(errors="replace")


def mailbox(site: Site) -> bytes:
    path = site.root / "mailbox"
    return path.read_bytes() if path.exists() else b""


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` mounted read-only (root cannot write it either), as a full or failed disk is."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def trusting(site: Site) -> Site:
    """A location where the registration app's mails through this host's MTA may be unsigned."""
    site.values["TRUSTEDPEERS"] = [APP, "local"]
    site.write()
    return site


def test_a_command_through_procmail_is_queued_and_not_filed(trusting: Site) -> None:
    code, log = procmail(trusting, received(APP) + CREATE)
    assert code == 0, log
    assert [(job[1], job[2]) for job in trusting.jobs()] == [("CREATE", 1)]
    assert mailbox(trusting) == b""


def test_a_refused_command_is_recorded_and_not_retried(trusting: Site) -> None:
    """65 and 77 are for good: `deliver` recorded the refusal, the MTA must not retry it."""
    code, log = procmail(trusting, received("203.0.113.9") + CREATE)
    assert code == 0, log
    assert trusting.jobs() == [] and mailbox(trusting) == b""
    assert [row[1] for row in trusting.refused()] == ["deliver"]
    assert "not in TRUSTEDPEERS" in trusting.refused()[0][4]


def test_a_read_only_state_dir_makes_the_mta_retry_and_nothing_is_lost(trusting: Site) -> None:
    # The queue exists (a daemon ran before), then the disk under STATEDIR goes read-only.
    earlier = CREATE.replace(b"CREATE 1 ", b"CREATE 2 ").replace(b"<create-1@", b"<create-2@")
    code, log = procmail(trusting, received(APP) + earlier)
    assert code == 0, log
    with read_only(trusting.state_dir):
        code, log = procmail(trusting, received(APP) + CREATE)
        assert code == EX_TEMPFAIL, log
        assert "Program failure (75)" in log
    assert mailbox(trusting) == b""  # not filed where nobody would run it
    # The MTA's retry, once the disk is writable again, queues it.
    code, log = procmail(trusting, received(APP) + CREATE)
    assert code == 0, log
    assert [(job[1], job[2]) for job in trusting.jobs()] == [("CREATE", 2), ("CREATE", 1)]


def test_a_configuration_error_makes_the_mta_retry(trusting: Site) -> None:
    broken = trusting.root / "broken.yaml"
    values = dict(trusting.values, STUDENTMIN="one")
    broken.write_text(yaml.safe_dump(values, sort_keys=False))
    code, log = procmail(trusting, received(APP) + CREATE, location=broken)
    assert code == EX_TEMPFAIL, log
    assert "Program failure (78)" in log
    assert mailbox(trusting) == b""
    assert not (trusting.state_dir / "queue.sqlite3").exists()


def test_a_mail_that_is_not_a_command_goes_to_the_mailbox(trusting: Site) -> None:
    code, log = procmail(trusting, b"From: someone@example.com\nSubject: Hello\n\nHi\n")
    assert code == 0, log
    assert b"Subject: Hello" in mailbox(trusting)
    assert not (trusting.state_dir / "queue.sqlite3").exists()
