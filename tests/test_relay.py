"""Relaying: the registration app's mails for people reach the site's MTA, and only those.

The operator's story: the app has no SendGrid key, so it sends every mail meant for a person
through the backend's port with its crude client (tests/data/legacy/node-people-mails.js,
run by Node.js). wodmail takes each one that is not a command from an allowed peer, commits
it, and passes it to RELAYHOST: here a real Postfix (tests/postfix.py) that delivers to a
mailbox file. A stranger's mail and a command mail are never relayed.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA, Daemon, Site, legacy_dialogue, send_legacy, wodmail
from tests.postfix import REFUSED, Postfix
from wodmail.errors import ConfigError
from wodmail.location import load_location

NODE_MAILER = DATA / "legacy" / "node-people-mails.js"
SENDER = "wod@example.com"
PASSWORD = "Pw-7zq!secret"


def page(heading: str, text: str) -> str:
    """A body shaped like the app's e-mail template: a styled HTML page around the text."""
    return (
        '\n<html>\n\n<head>\n  <meta http-equiv="Content-Type" content="text/html; charset=utf-8">\n'
        '<body style="color: #333333; font-family: Verdana;">\n  <div style="max-width: 980px;">\n'
        f'    <h1 style="font-size: 36px;">\n      {heading}\n    </h1>\n'
        f'    <p style="font-size: 20px;">\n      {text}\n    </p><br>\n'
        "  <p>The Test WoD Community team</p><br/>\n  </div>\n</body>\n\n</html>\n"
    )


#: The six mails the app sends a person, as its CheckCustomers job words their subjects.
PEOPLE_MAILS: list[dict[str, str]] = [
    {
        "kind": "welcome",
        "subject": "HPE Workshops-on-Demand",
        "html": page("Welcome to HPE Workshops-on-Demand!", "Hello, Ada! <br> <br>\n  In a moment, a second email."),
    },
    {
        "kind": "credentials",
        "subject": "HPE Workshops-on-Demand credentials",
        "html": page(
            "Your HPE Workshops-on-Demand credentials",
            f"Ada, <br/> <br/>The clock has started!<br/>\n  <b>User Name: student12</b><br/>\n"
            f"  <b>Password: {PASSWORD}</b><br/>\n  <b>URL: https://nb.example.com/hub/login</b><br/>",
        ),
    },
    {
        "kind": "expiring",
        "subject": "Your HPE Workshops-on-Demand session will end in one hour",
        "html": page("Your session will end in one hour", f"Ada, save your work.<br/>\n  Password: {PASSWORD}"),
    },
    {
        "kind": "expired",
        "subject": "Thanks for participating in the HPE Workshops-on-Demand!",
        "html": page("Thanks for participating!", "Time\u2019s up! Congratulations on finishing the workshop."),
    },
    {
        "kind": "deployment issue",
        "subject": "HPE Workshop-on-Demand WKSHP-Sample Deployment Issue.",
        "html": page("Your HPE Workshop-on-Demand Status", "Hello, Ada! <br> <br>The deployment failed."),
    },
    {
        "kind": "badge",
        "subject": "Way to go! You just earned the HPE Apprentice badge!",
        "html": page("Thanks for participating!", "Way to go! You finished <b>3 workshops</b>."),
    },
]


def plain_text(html: str) -> str:
    """What the app sends of an HTML body: every tag taken out (its own regular expression)."""
    return re.sub(r"<(?:.|\n)*?>", "", html)


def send_with_the_apps_client(port: int, mails: list[dict[str, str]], tmp_path: Path) -> list[str]:
    """Run the app's crude client on `mails`; how each connection ended."""
    listing = tmp_path / f"mails-{time.monotonic_ns()}.json"
    listing.write_text(json.dumps([{"from": SENDER, **mail} for mail in mails]))
    done = subprocess.run(
        ["node", str(NODE_MAILER), str(port), str(listing)], capture_output=True, timeout=60, check=True
    )
    ended: list[str] = json.loads(done.stdout)
    return ended


def relay_rows(site: Site) -> list[tuple[Any, ...]]:
    with site.db() as conn:
        return conn.execute(
            "SELECT id, state, sender, recipients, size, length(mail), last_error FROM relay"
        ).fetchall()


def body_of(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8")


@pytest.fixture
def relaying(site: Site, postfix: Postfix) -> Iterator[Daemon]:
    """The daemon with RELAYHOST at the Postfix; the app is 127.0.0.1 on both doors."""
    site.values.update(
        RELAYHOST=f"127.0.0.1:{postfix.port}",
        RELAYBACKOFFMAX=0.5,
        LEGACYPEERS=["127.0.0.1"],
        TRUSTEDPEERS=["127.0.0.1"],
    )
    daemon = Daemon(site).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_each_mail_the_app_sends_a_person_arrives_through_postfix(
    relaying: Daemon, site: Site, postfix: Postfix, tmp_path: Path
) -> None:
    before = postfix.delivered()
    mails = [{**mail, "to": f"ada+{n}@example.org"} for n, mail in enumerate(PEOPLE_MAILS)]
    ended = send_with_the_apps_client(site.legacy_port, mails, tmp_path)
    assert ended == ["data"] * len(mails)  # every connection answered: the app reads one byte and goes

    delivered = postfix.wait_for(before + len(mails))[before:]
    by_recipient = {message["X-Original-To"]: message for message in delivered}
    for mail in mails:
        message = by_recipient[mail["to"]]
        assert message["Subject"] == mail["subject"], mail["kind"]
        assert message["Return-Path"] == f"<{SENDER}>"  # the envelope as the app gave it
        assert any("(wodmail, legacy door)" in str(value) for value in message.get_all("Received", []))
        text = body_of(message)
        for line in plain_text(mail["html"]).splitlines():
            assert line.strip() in text, (mail["kind"], line)
    assert "Time\u2019s up!" in body_of(by_recipient[mails[3]["to"]])  # 8-bit text intact

    # Postfix may deliver a mail before the daemon has recorded its 250 as sent: wait for that.
    deadline = time.monotonic() + 15
    rows = relay_rows(site)
    while any(row[1] != "sent" for row in rows) and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = relay_rows(site)
    assert [(state, json.loads(recipients)) for _id, state, _s, recipients, *_ in rows] == [
        ("sent", [mail["to"]]) for mail in mails
    ]
    assert all(kept == 0 for *_, kept, _error in rows)  # the content is erased once Postfix took it
    logs = relaying.logs()
    assert PASSWORD not in logs and "Workshops-on-Demand" not in logs and "ada+" not in logs
    listing = wodmail(site, "relay").stdout.decode()
    assert f"{len(mails)} sent" in listing and PASSWORD not in listing


def test_with_postfix_down_the_mails_wait_and_arrive_once_it_is_back(
    relaying: Daemon, site: Site, postfix: Postfix, tmp_path: Path
) -> None:
    before = postfix.delivered()
    postfix.stop()
    try:
        mails = [{**PEOPLE_MAILS[1], "to": "grace@example.org"}, {**PEOPLE_MAILS[0], "to": "alan@example.org"}]
        assert send_with_the_apps_client(site.legacy_port, mails, tmp_path) == ["data", "data"]
        deadline = time.monotonic() + 10
        while not all(row[1] == "pending" and row[6] for row in relay_rows(site)) or len(relay_rows(site)) < 2:
            assert time.monotonic() < deadline, relay_rows(site)
            time.sleep(0.1)
        listing = wodmail(site, "relay").stdout.decode()
        assert "2 pending" in listing and "cannot reach the MTA" in listing
        assert postfix.delivered() == before
    finally:
        postfix.start()
    delivered = postfix.wait_for(before + 2)[before:]
    assert sorted(message["X-Original-To"] for message in delivered) == ["alan@example.org", "grace@example.org"]
    deadline = time.monotonic() + 10
    while [row[1] for row in relay_rows(site)] != ["sent", "sent"]:
        assert time.monotonic() < deadline, relay_rows(site)
        time.sleep(0.05)


def test_a_mail_the_mta_keeps_refusing_is_set_aside_for_an_operator(
    relaying: Daemon, site: Site, tmp_path: Path
) -> None:
    mails = [{**PEOPLE_MAILS[0], "to": REFUSED}]
    assert send_with_the_apps_client(site.legacy_port, mails, tmp_path) == ["data"]
    deadline = time.monotonic() + 15
    while [row[1] for row in relay_rows(site)] != ["failed"]:
        assert time.monotonic() < deadline, relay_rows(site)
        time.sleep(0.05)
    ((relay_id, _state, _sender, _recipients, _size, kept, error),) = relay_rows(site)
    assert kept > 0 and error is not None and "554" in error  # kept for the operator, with the MTA's answer
    listing = wodmail(site, "relay").stdout.decode()
    assert "1 failed" in listing and "Recipient address rejected" in listing
    again = wodmail(site, "relay", "retry", str(relay_id))
    assert again.returncode == 0 and b"1 mail(s) queued" in again.stdout


def test_a_strangers_mail_and_a_command_mail_are_never_relayed(relaying: Daemon, site: Site, postfix: Postfix) -> None:
    before = postfix.delivered()
    person = f"From: {SENDER}\r\nTo: eve@example.org\r\nSubject: HPE Workshops-on-Demand\r\n\r\nHello\r\n"
    # The app (127.0.0.1, in TRUSTEDPEERS) on the standard door: relayed.
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as client:
        assert client.sendmail(SENDER, ["eve@example.org"], person.encode()) == {}
    (delivered,) = postfix.wait_for(before + 1)[before:]
    assert (delivered["X-Original-To"], delivered["Subject"]) == ("eve@example.org", "HPE Workshops-on-Demand")
    before += 1
    # A stranger (127.0.0.2 is not in TRUSTEDPEERS) on the standard door: refused, recorded.
    with smtplib.SMTP("127.0.0.1", site.smtp_port, source_address=("127.0.0.2", 0), timeout=10) as client:
        code, text = client.ehlo()
        client.mail(SENDER)
        client.rcpt("eve@example.org")
        code, text = client.data(person.encode())
    assert code == 550 and b"relaying denied" in text
    # ... and on the legacy door: closed before it reads a byte.
    with socket.create_connection(("127.0.0.1", site.legacy_port), source_address=("127.0.0.2", 0)) as sock:
        sock.sendall(legacy_dialogue("HPE Workshops-on-Demand", "Hello"))
        assert sock.recv(100).startswith(b"554")
    # The app's command mails are commands, never mail to pass on: a good one is queued ...
    assert send_legacy(site.legacy_port, legacy_dialogue("CREATE 12 4242 ada@example.org", "WKSHP-Sample"))
    # ... a broken one is refused (the app's `[object Promise]` bug), with or without a verb.
    send_legacy(site.legacy_port, legacy_dialogue("RESET [object Promise] 4242", "WKSHP-SampleReset"))
    send_legacy(site.legacy_port, legacy_dialogue("[object Promise]", "WKSHP-Sample"))
    jobs = site.wait_jobs(1)
    assert [(verb, stdid, state) for _id, verb, stdid, state, _e in jobs] == [("CREATE", 12, "done")]
    deadline = time.monotonic() + 10
    while len(site.refused()) < 3:
        assert time.monotonic() < deadline, site.refused()
        time.sleep(0.05)
    reasons = [(door, peer, code, reason) for _id, door, peer, code, reason, _m in site.refused()]
    assert reasons[0][:3] == ("smtp", "127.0.0.2", 550) and "relaying denied" in reasons[0][3]
    assert [code for _d, _p, code, _r in reasons[1:]] == [554, 554]
    assert [row[1] for row in relay_rows(site)] == ["sent"]  # the app's mail only
    time.sleep(0.5)
    assert postfix.delivered() == before


def test_without_relayhost_a_mail_for_a_person_is_refused_as_before(site: Site) -> None:
    daemon = Daemon(site).start()
    try:
        send_legacy(site.legacy_port, legacy_dialogue("HPE Workshops-on-Demand credentials", "Hello, Ada!"))
        deadline = time.monotonic() + 10
        while not site.refused():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (_id, door, _peer, code, reason, _mail), *_ = site.refused()
        assert (door, code) == ("legacy", 554) and reason.startswith("unknown verb 'HPE'")
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[mta.example.com]:587", ("mta.example.com", 587)),
        ("[::1]:25", ("::1", 25)),
        ("mta.example.com", ("mta.example.com", 25)),
    ],
)
def test_relayhost_takes_postfix_relayhost_forms(site: Site, value: str, expected: tuple[str, int]) -> None:
    site.values["RELAYHOST"] = value
    relay = load_location(site.write()).relay
    assert (relay.host, relay.port) == expected


@pytest.mark.parametrize("value", ["mta:port", "::1:25", "mta:70000", "", 25])
def test_a_wrong_relayhost_is_one_line_naming_the_key(site: Site, value: object) -> None:
    site.values["RELAYHOST"] = value
    with pytest.raises(ConfigError, match=r"site\.yaml: RELAYHOST: "):
        load_location(site.write())
