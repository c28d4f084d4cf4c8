"""Signed commands: accepted from anyone holding a key, refused with their reason otherwise.

The intake is driven in-process with a real queue.Writer on a temporary database; the
last tests run `wodmail send` against a real daemon and through `wodmail deliver`.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Site, wodmail
from wodmail import queue
from wodmail.command import parse_command
from wodmail.errors import ConfigError, NotPermitted
from wodmail.inbound import InboundMail
from wodmail.intake import CommandIntake
from wodmail.location import Location, load_location
from wodmail.peers import LocalClient
from wodmail.send import compose
from wodmail.signing import HEADER, Signature, Signatures, SigningKey, key_id, sign

KEY_ONE = "test-signing-key-one-0123456789abcdef0123456789"
KEY_TWO = "test-signing-key-two-fedcba9876543210fedcba9876"
OUTSIDER = "198.51.100.7"
ROOT = LocalClient(0)


def with_keys(site: Site, *keys: str) -> None:
    """SIGNINGKEYS as file: secrets beside the location."""
    files = []
    for index, key in enumerate(keys):
        path = site.root / f"signing-key-{index}"
        path.write_text(key + "\n")
        path.chmod(0o600)
        files.append(f"file:{path}")
    site.values["SIGNINGKEYS"] = files


def strict_site(site: Site, *keys: str) -> Location:
    """A location that trusts no unsigned sender over SMTP."""
    with_keys(site, *keys)
    site.values["TRUSTEDPEERS"] = ["192.0.2.0/24"]
    site.values["TRUSTEDSENDERS"] = ["registration@example.com"]
    return load_location(site.write())


def unsigned(subject: str, body: str = "WKSHP-Sample", extra: str = "") -> bytes:
    return f"From: admin@example.net\r\nSubject: {subject}\r\n{extra}\r\n{body}\r\n".encode()


def signed(
    subject: str,
    key: str = KEY_ONE,
    *,
    body: str = "WKSHP-Sample",
    location: str = "site",
    timestamp: int | None = None,
    nonce: str | None = None,
    tamper: tuple[str, str] | None = None,
) -> bytes:
    """A signed command mail; `tamper` replaces text after signing."""
    command = parse_command(unsigned(subject, body))
    signature = sign(command, location, SigningKey.from_text(key), timestamp=timestamp, nonce=nonce)
    raw = unsigned(subject, body, f"{HEADER}: {signature.header_value}\r\n")
    if tamper is not None:
        raw = raw.replace(tamper[0].encode(), tamper[1].encode())
    return raw


def smtp_mail(data: bytes, peer: str = OUTSIDER, sender: str = "someone@example.net") -> InboundMail:
    return InboundMail(door="smtp", peer=peer, mail_from=sender, data=data, rcpt_tos=("wod@example.com",))


@pytest.fixture
async def intake(site: Site) -> AsyncIterator[CommandIntake]:
    location = strict_site(site, KEY_ONE, KEY_TWO)
    writer = queue.Writer(queue.open_database(location.state_dir))
    try:
        yield CommandIntake(location, writer)
    finally:
        writer.close()


def jobs(site: Site) -> list[tuple[object, ...]]:
    with site.db() as conn:
        return conn.execute("SELECT id, verb, stdid, peer, command FROM jobs ORDER BY id").fetchall()


# --- the signature itself -----------------------------------------------------------------


def test_signature_header_round_trip() -> None:
    key = SigningKey.from_text(KEY_ONE)
    assert key.id == key_id(KEY_ONE.encode()) and len(key.id) == 16
    assert KEY_ONE not in repr(key)
    command = parse_command(unsigned("CREATE 5 c5 five@example.com"))
    signature = sign(command, "site", key, timestamp=1_700_000_000, nonce="n" * 22)
    assert signature.header_value.startswith(f"v1; key={key.id}; ts=1700000000; nonce={'n' * 22}; sig=")
    assert Signature.parse(signature.header_value) == signature
    # The same command, time and nonce always give the same signature; anything else changes it.
    again = sign(command, "site", key, timestamp=1_700_000_000, nonce="n" * 22)
    other = sign(command, "staging", key, timestamp=1_700_000_000, nonce="n" * 22)
    assert again.sig == signature.sig != other.sig


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("v2; key=0123456789abcdef; ts=1; nonce=aaaaaaaaaaaaaaaa; sig=" + "0" * 64, "version 'v2' is not supported"),
        ("v1; key=0123456789abcdef; ts=1; nonce=aaaaaaaaaaaaaaaa", "missing sig="),
        ("v1; key=xyz; ts=1; nonce=aaaaaaaaaaaaaaaa; sig=" + "0" * 64, "key= is not a 16-hex-digit key id"),
        ("v1; key=0123456789abcdef; ts=-5; nonce=aaaaaaaaaaaaaaaa; sig=" + "0" * 64, "ts= is not a Unix time"),
        ("v1; key=0123456789abcdef; ts=1; nonce=short; sig=" + "0" * 64, "nonce= is not 16 to 128"),
        ("v1; key=0123456789abcdef; ts=1; nonce=aaaaaaaaaaaaaaaa; sig=XYZ", "sig= is not 64 lower-case hex"),
        ("v1; key=0123456789abcdef; key=0123456789abcdef; ts=1", "key= given twice"),
        ("v1; key=0123456789abcdef; extra=1", "unexpected 'extra=1'"),
    ],
)
def test_malformed_signature_headers(value: str, reason: str) -> None:
    with pytest.raises(NotPermitted) as refused:
        Signature.parse(value)
    assert reason in refused.value.reason


# --- through the intake (in-process, real queue.Writer) -------------------------------------


async def test_signed_command_is_accepted_from_any_peer_and_sender(site: Site, intake: CommandIntake) -> None:
    reply = await intake.submit(smtp_mail(signed("CREATE 5 c5 five@example.com")))
    assert (reply.code, reply.text) == (250, "queued as job 1")
    ((job_id, verb, stdid, peer, command),) = jobs(site)
    assert (job_id, verb, stdid, peer) == (1, "CREATE", 5, OUTSIDER)
    assert f'"auth": "signed with key {key_id(KEY_ONE.encode())}"' in str(command)
    with site.db() as conn:
        assert conn.execute("SELECT key_id, job_id FROM signature_nonces").fetchall() == [(key_id(KEY_ONE.encode()), 1)]
    # The same through `deliver` (a local pipe the location does not trust).
    pipe = InboundMail(door="deliver", peer=None, mail_from="", data=signed("PURGE 6 c6", body=""))
    assert (await intake.submit(pipe)).code == 250


async def test_both_keys_of_a_rotation_are_accepted(site: Site, intake: CommandIntake) -> None:
    assert (await intake.submit(smtp_mail(signed("CREATE 5 c5", KEY_ONE)))).code == 250
    assert (await intake.submit(smtp_mail(signed("CREATE 6 c6", KEY_TWO)))).code == 250
    auths = [str(row[4]) for row in jobs(site)]
    assert key_id(KEY_ONE.encode()) in auths[0] and key_id(KEY_TWO.encode()) in auths[1]


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "stale": (
        {"age": 400},
        "signature is stale: signed 400 s ago, more than SIGNATUREWINDOW 300 s",
    ),
    "from-the-future": (
        {"age": -400},
        "signature is from the future: dated 400 s ahead, more than SIGNATUREWINDOW 300 s",
    ),
    "altered-customer": (
        {"tamper": ("c5", "c6")},
        "signature does not match the command (altered, signed with another key, "
        "or signed for another location than site)",
    ),
    "altered-workshop": ({"tamper": ("\r\nWKSHP-Sample", "\r\nCHLG-Sample")}, "signature does not match"),
    "altered-student": ({"tamper": ("CREATE 5", "CREATE 50")}, "signature does not match"),
    "other-location": ({"location": "production"}, "or signed for another location than site"),
    "unknown-key": (
        {"key": "an-unknown-key-of-forty-characters-000000"},
        f"signature key {key_id(b'an-unknown-key-of-forty-characters-000000')} is not one of this location's"
        " SIGNINGKEYS",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_bad_signatures_are_refused_with_their_reason(site: Site, intake: CommandIntake, case: str) -> None:
    options, reason = dict(REFUSED[case][0]), REFUSED[case][1]
    if "age" in options:
        options["timestamp"] = int(time.time()) - options.pop("age")
    # The clock may tick between signing and checking: 400 s may read 399 or 401.
    pattern = re.compile(".*" + re.escape(reason).replace("400", "(399|400|401)") + ".*")
    data = signed("CREATE 5 c5", **options)
    reply = await intake.submit(smtp_mail(data))
    assert reply.code == 550 and pattern.fullmatch(reply.text), reply
    assert jobs(site) == []
    ((code, text, mail),) = site.db().execute("SELECT code, reason, mail FROM refused").fetchall()
    assert (code, mail) == (550, data) and pattern.fullmatch(text)
    # A trusted peer gains nothing by signing badly: a wrong signature is refused from anyone.
    trusted = await intake.submit(smtp_mail(data, peer="192.0.2.10", sender="registration@example.com"))
    assert trusted.code == 550 and pattern.fullmatch(trusted.text)


async def test_a_replayed_signature_is_refused(site: Site, intake: CommandIntake) -> None:
    data = signed("CREATE 5 c5", nonce="replay-nonce-0000000001")
    assert (await intake.submit(smtp_mail(data))).code == 250
    replay = await intake.submit(smtp_mail(data, peer="203.0.113.9"))
    assert (replay.code, replay.text) == (550, "signature replayed: its nonce was already used (by job 1)")
    # Another command under the same nonce is refused too, and nothing is queued for it.
    other = await intake.submit(smtp_mail(signed("CREATE 6 c6", nonce="replay-nonce-0000000001")))
    assert other.code == 550 and "replayed" in other.text
    assert [row[2] for row in jobs(site)] == [5]


async def test_nonces_are_forgotten_after_the_window(site: Site, intake: CommandIntake) -> None:
    assert (await intake.submit(smtp_mail(signed("CREATE 5 c5")))).code == 250
    with site.db() as conn:
        conn.execute("UPDATE signature_nonces SET signed = signed - 1000")
    assert (await intake.submit(smtp_mail(signed("CREATE 6 c6")))).code == 250
    with site.db() as conn:
        assert [row[0] for row in conn.execute("SELECT job_id FROM signature_nonces")] == [2]


async def test_two_signature_headers_are_refused(site: Site, intake: CommandIntake) -> None:
    data = signed("CREATE 5 c5")
    header = data.split(b"\r\n")[2]
    data = data.replace(header, header + b"\r\n" + header)
    reply = await intake.submit(smtp_mail(data))
    assert (reply.code, reply.text) == (550, f"the mail has 2 {HEADER} headers: a signed command has one")


async def test_unsigned_commands_follow_the_location_policy(site: Site, intake: CommandIntake) -> None:
    outsider = await intake.submit(smtp_mail(unsigned("CREATE 5 c5")))
    assert (outsider.code, outsider.text) == (
        550,
        f"{OUTSIDER} may not send unsigned commands (not in TRUSTEDPEERS)",
    )
    stranger = await intake.submit(smtp_mail(unsigned("CREATE 5 c5"), peer="192.0.2.10"))
    assert (stranger.code, stranger.text) == (
        550,
        "sender someone@example.net may not send unsigned commands (not in TRUSTEDSENDERS)",
    )
    trusted = await intake.submit(smtp_mail(unsigned("CREATE 5 c5"), "192.0.2.10", "registration@example.com"))
    assert trusted.code == 250
    assert '"auth": "trusted peer 192.0.2.10"' in str(jobs(site)[0][4])


async def test_the_legacy_door_stays_closed_to_unlisted_peers_even_signed(site: Site, intake: CommandIntake) -> None:
    mail = InboundMail(door="legacy", peer=OUTSIDER, mail_from="x@example.net", data=signed("CREATE 5 c5"))
    reply = await intake.submit(mail)
    assert (reply.code, reply.text) == (
        550,
        f"{OUTSIDER} may not send commands on the legacy port (not in LEGACYPEERS)",
    )
    # From loopback, only as root (the kernel says who opened the connection: wodmail.peers).
    listed = InboundMail(
        door="legacy", peer="127.0.0.1", mail_from="x@example.net", data=signed("CREATE 6 c6"), local_client=ROOT
    )
    assert (await intake.submit(listed)).code == 250
    assert "(legacy peer 127.0.0.1, user root (uid 0))" in str(jobs(site)[0][4])


async def test_a_location_without_keys_refuses_signed_commands(site: Site) -> None:
    location = load_location(site.write())
    writer = queue.Writer(queue.open_database(location.state_dir))
    try:
        reply = await CommandIntake(location, writer).submit(smtp_mail(signed("CREATE 5 c5"), peer="127.0.0.1"))
    finally:
        writer.close()
    assert (reply.code, reply.text) == (550, "signed commands are not accepted: location site has no SIGNINGKEYS")


# --- the keys in the location file ----------------------------------------------------------


def config_error(site: Site) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        Signatures.from_location(load_location(site.write()))
    return error.value


def test_a_key_in_clear_is_refused_at_start_up(site: Site) -> None:
    site.values["SIGNINGKEYS"] = [KEY_ONE]
    error = config_error(site)
    assert (error.key, error.reason) == ("SIGNINGKEYS", "key 1 is written in clear: give it as env:NAME or file:/path")
    assert KEY_ONE not in str(error)


def test_key_rules(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WODMAIL_TEST_KEY", KEY_ONE)
    monkeypatch.setenv("WODMAIL_TEST_SHORT", "too-short")
    site.values["SIGNINGKEYS"] = ["env:WODMAIL_TEST_SHORT"]
    assert "key 1 has 9 characters: a signing key needs at least 32" in config_error(site).reason
    site.values["SIGNINGKEYS"] = ["env:WODMAIL_TEST_KEY", "env:WODMAIL_TEST_KEY"]
    assert config_error(site).reason == "key 2 is the same key as an earlier one"
    with_keys(site, KEY_ONE, KEY_TWO, KEY_ONE + "x")
    assert "3 keys given: at most 2" in config_error(site).reason
    with_keys(site, KEY_ONE)
    site.values["SIGNATUREWINDOW"] = 5
    error = config_error(site)
    assert (error.key, error.reason) == ("SIGNATUREWINDOW", "expected an integer 30..86400 (seconds), found 5")
    # A key given through a reference to an env: key is not in clear.
    site.values.pop("SIGNATUREWINDOW")
    site.values["ADMINKEY"] = "env:WODMAIL_TEST_KEY"
    site.values["SIGNINGKEYS"] = ["{{ ADMINKEY }}"]
    assert [key.id for key in Signatures.from_location(load_location(site.write())).keys] == [key_id(KEY_ONE.encode())]


def test_an_unsafe_tagged_key_is_in_clear(site: Site) -> None:
    site.write()
    text = site.file.read_text() + f"SIGNINGKEYS: [!unsafe 'env:{KEY_ONE}']\n"
    site.file.write_text(text)
    with pytest.raises(ConfigError) as error:
        Signatures.from_location(load_location(site.file))
    assert "written in clear" in error.value.reason


# --- wodmail send, against the real daemon and through deliver ------------------------------


def test_send_composes_a_signed_command_that_runs(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    strict_site(site, KEY_ONE)
    daemon_factory()
    sent = wodmail(site, "send", "CREATE", "5", "--customer", "c5", "--workshop", "WKSHP-Sample")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.decode().strip() == "250 queued as job 1"
    (job,) = site.wait_jobs(1)
    assert job[1:4] == ("CREATE", 5, "done"), job
    assert (site.home(5) / "WKSHP-Sample").is_dir()
    shown = wodmail(site, "jobs", "show", "1").stdout.decode()
    assert f"trusted   signed with key {key_id(KEY_ONE.encode())}" in shown
    # A range, positional customer, through the same door.
    reset = wodmail(site, "send", "RESET", "1101,1103", "c7", "--workshop", "WKSHP-SampleReset")
    assert reset.returncode == 0, reset.stderr
    # Mistakes are caught before anything is signed or sent.
    bad = wodmail(site, "send", "CREATE", "5", "c;5", "--workshop", "WKSHP-Sample")
    assert bad.returncode == 65
    assert b"not a valid command: customer id 'c;5' is not a plain identifier" in bad.stderr
    refused = wodmail(site, "send", "CREATE", "1500", "c15", "--workshop", "WKSHP-Sample")
    assert refused.returncode == 65
    assert b"554 student 1500 is outside WKSHP-Sample's booked range 1..999" in refused.stderr
    for result in (sent, reset, bad, refused):
        assert KEY_ONE.encode() not in result.stdout + result.stderr


def test_send_print_pipes_into_deliver(site: Site) -> None:
    strict_site(site, KEY_ONE)
    site.values["TRUSTEDPEERS"] = ["192.0.2.0/24"]  # no "local": the pipe is not trusted
    printed = wodmail(site, "send", "PURGE", "7", "c7", "--print")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.count(f"{HEADER}: v1; key={key_id(KEY_ONE.encode())}; ts=".encode()) == 1
    assert KEY_ONE.encode() not in printed.stdout
    delivered = wodmail(site, "deliver", stdin=printed.stdout)
    assert delivered.returncode == 0, delivered.stderr
    assert delivered.stdout.startswith(b"250 queued as job 1")
    again = wodmail(site, "deliver", stdin=printed.stdout)
    assert again.returncode == 77
    assert b"550 signature replayed: its nonce was already used (by job 1)" in again.stderr
    unsigned_mail = printed.stdout.replace(b"X-Wodmail-Signature", b"X-Not-A-Signature")
    assert wodmail(site, "deliver", stdin=unsigned_mail).returncode == 77


def test_daemon_refuses_to_start_with_a_key_in_clear(site: Site) -> None:
    site.values["SIGNINGKEYS"] = [KEY_ONE]
    result = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.write()), "serve"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        f"wodmail: configuration error: {site.file}: SIGNINGKEYS: key 1 is written in clear: give it as "
        "env:NAME or file:/path"
    ]
    assert KEY_ONE not in result.stderr


def test_send_without_a_reachable_door_says_try_later(site: Site) -> None:
    with_keys(site, KEY_ONE)
    site.write()
    result = wodmail(site, "send", "PURGE", "7", "c7")
    assert result.returncode == 75
    assert f"cannot submit to 127.0.0.1:{site.smtp_port}".encode() in result.stderr


def test_the_nonce_table_is_part_of_the_versioned_schema(site: Site) -> None:
    """Made with the rest of the schema (it used to be made inside each signed command's
    transaction), at the schema's last version."""
    with_keys(site, KEY_ONE)
    location = load_location(site.write())
    path = queue.open_database(location.state_dir)
    with sqlite3.connect(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    assert "signature_nonces" in names
    assert version == len(queue.MIGRATIONS)
    assert os.stat(location.state_dir).st_mode & 0o777 == 0o700
    assert compose(location, "PURGE", ["7", "c7"], workshop=None).key_id == key_id(KEY_ONE.encode())


# --- SMTP AUTH over STARTTLS -------------------------------------------------------------------------

AUTH_PASSWORD = "smtp-auth-password-" + "x" * 12


def with_tls_and_auth(site: Site, tmp_path: Path) -> Path:
    from passlib.hash import pbkdf2_sha256  # type: ignore[import-untyped,unused-ignore]

    from tests.slapd import write_certificates

    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    write_certificates(ca, cert, key, "127.0.0.1")
    users = tmp_path / "smtp-users"
    users.write_text(f"# user:hash\nadmin:{pbkdf2_sha256.hash(AUTH_PASSWORD)}\n")
    site.values.update(SMTPTLSCERT=str(cert), SMTPTLSKEY=str(key), SMTPAUTHFILE=str(users))
    return ca


def test_smtp_auth_only_over_starttls(site: Site, tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    import base64
    import smtplib
    import ssl

    ca = with_tls_and_auth(site, tmp_path)
    strict_site(site, KEY_ONE)
    daemon = daemon_factory()
    message = b"From: admin@example.net\r\nSubject: CREATE 8 c8\r\n\r\nWKSHP-Sample\r\n"
    plain = base64.b64encode(b"\x00admin\x00" + AUTH_PASSWORD.encode()).decode()
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=30) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth"), "no AUTH offered in clear"
        assert client.docmd("AUTH", f"PLAIN {plain}") == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("admin@example.net", ["wod@example.com"], message)
        assert refused.value.smtp_code == 550 and b"not in TRUSTEDPEERS" in refused.value.smtp_error
    context = ssl.create_default_context(cafile=str(ca))
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=30) as client:
        client.starttls(context=context)
        client.ehlo()
        assert client.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            client.login("admin", "not-the-password")
        assert wrong.value.smtp_code == 535
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=30) as client:
        client.starttls(context=context)
        client.login("admin", AUTH_PASSWORD)
        client.sendmail("admin@example.net", ["wod@example.com"], message)
    (job,) = site.wait_jobs(1)
    assert job[1:4] == ("CREATE", 8, "done"), job
    assert "trusted   SMTP AUTH user admin" in wodmail(site, "jobs", "show", "1").stdout.decode()
    # `wodmail send` takes STARTTLS when the door offers it; its signature is what counts.
    sent = wodmail(site, "send", "PURGE", "8", "c8")
    assert sent.returncode == 0, sent.stderr
    site.wait_jobs(2)
    daemon.stop()
    assert AUTH_PASSWORD not in daemon.logs() and plain not in daemon.logs()


def test_smtp_auth_settings_are_checked_at_start_up(site: Site, tmp_path: Path) -> None:
    from wodmail.smtp import SmtpSecurity

    with_tls_and_auth(site, tmp_path)
    site.values.pop("SMTPTLSCERT")
    site.values.pop("SMTPTLSKEY")
    with pytest.raises(ConfigError) as error:
        SmtpSecurity.from_location(load_location(site.write()))
    assert (error.value.key, error.value.reason) == (
        "SMTPAUTHFILE",
        "SMTP AUTH needs STARTTLS: set SMTPTLSCERT (AUTH in clear is refused)",
    )
    with_tls_and_auth(site, tmp_path)
    (tmp_path / "smtp-users").write_text(f"admin:{AUTH_PASSWORD}\n")
    with pytest.raises(ConfigError) as error:
        SmtpSecurity.from_location(load_location(site.write()))
    assert error.value.reason.endswith(
        "line 1: not a pbkdf2_sha256, sha512_crypt or sha256_crypt hash (a password in clear is refused)"
    )
    assert AUTH_PASSWORD not in str(error.value)
