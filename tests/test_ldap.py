"""Student passwords in a real OpenLDAP directory (tests/slapd.py runs slapd for each test).

The story: a location names the LDAP server and the account wodmail binds as; a CREATE for
an `ldap` workshop replaces the student's userPassword with a salted hash of the password
the registration app receives; the student then binds with it, and no longer with the old
one. What goes wrong says what: a refused bind, a missing entry (naming the DN), a server
that is down (the jobs wait and retry, then go through when it is back).
"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA, REPO, SAMPLES, Daemon, Site, same_secret, with_app
from tests.slapd import PEOPLE_DN, SERVICE_DN, Slapd, new_password, old_password, student_dn, write_certificates
from tests.standins import RegistrationApp
from wodmail.directory import LdapDirectory
from wodmail.errors import ConfigError, StepFailed, TransientError

LDAP_DATA = DATA / "ldap"
WORKSHOP = "WKSHP-Ldap"
FIRST, LAST = 1201, 1400
BASESTDID = 1000  # Site's: the app knows student 1201 as 2201


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    server = Slapd(tmp_path / "slapd")
    server.add_students({stdid: old_password(stdid) for stdid in range(1, 6)})
    with server:
        yield server


# --- the password change ----------------------------------------------------------------


async def test_the_new_password_binds_and_the_old_one_no_longer_does(
    slapd: Slapd, open_directory: Callable[..., LdapDirectory]
) -> None:
    directory = open_directory(slapd)
    dn = student_dn(3)
    assert slapd.can_bind(dn, old_password(3))

    outcome = await directory.set_student_password(3, new_password(3))

    assert outcome == f"userPassword of {dn} replaced ({{SSHA}})"
    assert slapd.can_bind(dn, new_password(3))
    assert not slapd.can_bind(dn, old_password(3)), "the old password must stop working"
    values = slapd.user_passwords(dn)
    assert len(values) == 1 and values[0].startswith(b"{SSHA}"), "one salted hash, replacing the old value"

    # Run again (a job re-run after a crash): the same end state, one value.
    await directory.set_student_password(3, new_password(3))
    assert len(slapd.user_passwords(dn)) == 1
    assert slapd.can_bind(dn, new_password(3))
    assert slapd.user_passwords(student_dn(4))[0] != values[0], "other students are untouched"
    assert slapd.can_bind(student_dn(4), old_password(4))
    assert directory.connections_opened == 1


@pytest.mark.parametrize(
    ("scheme", "prefix"), [("{SSHA}", b"{SSHA}"), ("{SMD5}", b"{SMD5}"), ("{CRYPT}", b"{CRYPT}$6$")]
)
async def test_each_hash_scheme_is_one_slapd_checks(
    slapd: Slapd, open_directory: Callable[..., LdapDirectory], scheme: str, prefix: bytes
) -> None:
    directory = open_directory(slapd, LDAPHASH=scheme)
    await directory.set_student_password(2, new_password(2))
    assert slapd.user_passwords(student_dn(2))[0].startswith(prefix)
    assert slapd.can_bind(student_dn(2), new_password(2))
    assert not slapd.can_bind(student_dn(2), old_password(2))


async def test_a_dn_with_special_characters_is_escaped_into_one_rdn(
    tmp_path: Path, open_directory: Callable[..., LdapDirectory]
) -> None:
    odd = 'Étudiants, Paris+Lyon #1 <WoD>; "a=b" \\ '
    server = Slapd(tmp_path / "slapd")
    people = server.add_ou(odd)
    server.add_student(7, old_password(7), people)
    server.add_student(7, old_password(7))  # the same uid under ou=People: must stay untouched
    with server:
        directory = open_directory(server, LDAPPEOPLE=odd, LDAPUSERDN="uid={student},ou={LDAPPEOPLE},{LDAPDMN}")
        dn = directory.user_dn(7)
        assert dn == student_dn(7, people)

        await directory.set_student_password(7, new_password(7))

        assert server.can_bind(dn, new_password(7))
        assert not server.can_bind(dn, old_password(7))
        assert server.can_bind(student_dn(7), old_password(7))

        # A value that tries to add RDNs stays one value: it names no entry, and says which.
        sneaky = open_directory(server, LDAPPEOPLE="People,dc=example,dc=com")
        with pytest.raises(StepFailed) as failure:
            await sneaky.set_student_password(7, new_password(7))
        assert sneaky.user_dn(7) == "uid=student7,ou=People\\,dc\\=example\\,dc\\=com,dc=example,dc=com"
        assert f"no LDAP entry {sneaky.user_dn(7)}" in str(failure.value)
        assert server.can_bind(student_dn(7), old_password(7))


# --- what goes wrong ------------------------------------------------------------------------


async def test_a_refused_bind_fails_at_once_saying_so_without_the_secret(
    slapd: Slapd, open_directory: Callable[..., LdapDirectory]
) -> None:
    wrong = "not-the-service-password"
    directory = open_directory(slapd, LDAPBINDPW=wrong)
    started = time.monotonic()
    with pytest.raises(StepFailed) as failure:
        await directory.set_student_password(1, new_password(1))
    message = str(failure.value)
    assert time.monotonic() - started < 5
    assert f"LDAP bind as {SERVICE_DN} refused by {slapd.url}: invalid credentials" in message
    assert wrong not in message and new_password(1) not in message
    assert slapd.can_bind(student_dn(1), old_password(1))


async def test_a_missing_entry_fails_naming_its_dn(slapd: Slapd, open_directory: Callable[..., LdapDirectory]) -> None:
    directory = open_directory(slapd)
    with pytest.raises(StepFailed) as failure:
        await directory.set_student_password(42, new_password(42))
    assert f"no LDAP entry uid=student42,{PEOPLE_DN} on {slapd.url}" in str(failure.value)
    assert new_password(42) not in str(failure.value)


async def test_a_missing_entry_is_created_from_the_template_when_the_location_says_so(
    slapd: Slapd, site: Site, open_directory: Callable[..., LdapDirectory]
) -> None:
    shutil.copy(LDAP_DATA / "student-entry.ldif", site.root / "student-entry.ldif")
    directory = open_directory(slapd, LDAPCREATEMISSING=True, LDAPENTRYTEMPLATE="student-entry.ldif")
    dn = student_dn(78)

    assert (
        await directory.set_student_password(78, new_password(78)) == f"{dn} created with its userPassword ({{SSHA}})"
    )

    entry = slapd.entry(dn)
    assert entry is not None
    assert entry["uid"] == [b"student78"] and entry["uidNumber"] == [b"20078"]
    assert entry["homeDirectory"] == [b"/home/student78"]
    assert entry["description"] == [b"student 1078 of the registration app, on jupyter.example.com"]
    assert slapd.can_bind(dn, new_password(78))
    # Again (a re-run): the entry exists now, so its password is replaced.
    assert (await directory.set_student_password(78, "another-one")).startswith(f"userPassword of {dn} replaced")
    assert slapd.can_bind(dn, "another-one") and not slapd.can_bind(dn, new_password(78))
    # An existing entry is only given its new password.
    await directory.set_student_password(5, new_password(5))
    assert "uidNumber" not in (slapd.entry(student_dn(5)) or {"uidNumber": []})


async def test_a_stopped_server_is_transient_and_a_restarted_one_is_reconnected(
    slapd: Slapd, open_directory: Callable[..., LdapDirectory]
) -> None:
    directory = open_directory(slapd, LDAPTIMEOUT=2)
    await directory.set_student_password(1, new_password(1))
    assert directory.connections_opened == 1

    slapd.stop()
    started = time.monotonic()
    with pytest.raises(TransientError) as failure:
        await directory.set_student_password(2, new_password(2))
    assert time.monotonic() - started < 5
    assert f"LDAP {slapd.url} unreachable" in str(failure.value)

    slapd.start()
    # The kept connection died with the server: a new one is opened, at once.
    await directory.set_student_password(2, new_password(2))
    assert slapd.can_bind(student_dn(2), new_password(2))
    assert directory.connections_opened == 2


async def test_a_server_that_does_not_answer_is_transient_after_ldaptimeout(
    open_directory: Callable[..., LdapDirectory],
) -> None:
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        directory = open_directory(
            LDAPURI=f"ldap://127.0.0.1:{port}", LDAPBINDDN=SERVICE_DN, LDAPBINDPW="whatever", LDAPTIMEOUT=1
        )
        started = time.monotonic()
        with pytest.raises(TransientError) as failure:
            await directory.set_student_password(1, new_password(1))
        assert time.monotonic() - started < 5
        assert f"LDAP ldap://127.0.0.1:{port} unreachable, could not bind as {SERVICE_DN}" in str(failure.value)


async def test_connections_are_kept_and_shared_by_a_burst(
    tmp_path: Path, open_directory: Callable[..., LdapDirectory]
) -> None:
    server = Slapd(tmp_path / "slapd")
    server.add_students({stdid: old_password(stdid) for stdid in range(1, 61)})
    with server:
        directory = open_directory(server, LDAPCONNECTIONS=3)
        before = server.connections_total()
        await asyncio.gather(*(directory.set_student_password(s, new_password(s)) for s in range(1, 61)))
        opened = server.connections_total() - before
        assert directory.connections_opened == opened <= 3
        assert all(server.can_bind(student_dn(s), new_password(s)) for s in (1, 30, 60))


# --- TLS and the local socket -------------------------------------------------------------


@pytest.fixture
def tls_slapd(tmp_path: Path) -> Iterator[Slapd]:
    server = Slapd(tmp_path / "slapd", tls=True, ldapi=True)
    server.add_students({stdid: old_password(stdid) for stdid in range(1, 4)})
    with server:
        yield server


async def test_starttls_ldaps_and_ldapi_work(tls_slapd: Slapd, open_directory: Callable[..., LdapDirectory]) -> None:
    starttls = open_directory(tls_slapd, LDAPSTARTTLS=True, LDAPCAFILE=str(tls_slapd.ca_file))
    await starttls.set_student_password(1, new_password(1))
    ldaps = open_directory(LDAPURI=tls_slapd.ldaps_url, LDAPSTARTTLS=False)
    await ldaps.set_student_password(2, new_password(2))
    ldapi = open_directory(LDAPURI=tls_slapd.ldapi_url, LDAPCAFILE=None)
    await ldapi.set_student_password(3, new_password(3))
    assert all(tls_slapd.can_bind(student_dn(s), new_password(s)) for s in (1, 2, 3))


async def test_an_untrusted_certificate_fails_at_once(
    tls_slapd: Slapd, tmp_path: Path, open_directory: Callable[..., LdapDirectory]
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    write_certificates(other_ca, tmp_path / "other.pem", tmp_path / "other.key", "127.0.0.1")
    directory = open_directory(tls_slapd, LDAPSTARTTLS=True, LDAPCAFILE=str(other_ca))
    with pytest.raises(StepFailed) as failure:
        await directory.set_student_password(1, new_password(1))
    assert "the server's certificate is not trusted (check LDAPCAFILE)" in str(failure.value)
    # The right CA, but a name the certificate does not carry (it is made for 127.0.0.1).
    wrong_name = open_directory(
        LDAPURI=f"ldaps://localhost:{tls_slapd.tls_port}", LDAPSTARTTLS=False, LDAPCAFILE=str(tls_slapd.ca_file)
    )
    with pytest.raises(StepFailed) as failure:
        await wrong_name.set_student_password(1, new_password(1))
    assert "not trusted" in str(failure.value)
    assert tls_slapd.can_bind(student_dn(1), old_password(1))


# --- configuration ------------------------------------------------------------------------


BAD_KEYS: list[tuple[dict[str, Any], str, str]] = [
    ({"LDAPHASH": "{SHA}"}, "LDAPHASH", "{SHA} is refused: an unsalted hash (use {SSHA}, {SMD5}, {CRYPT})"),
    ({"LDAPHASH": "SSHA512"}, "LDAPHASH", "{SSHA512} is refused: needs slapd's pw-sha2 module"),
    ({"LDAPHASH": "{BCRYPT}"}, "LDAPHASH", "{BCRYPT} is refused: unknown to a stock slapd"),
    ({"LDAPBINDDN": None}, "LDAPBINDDN", "missing: the DN wodmail binds as"),
    ({"LDAPBINDDN": "wodmail"}, "LDAPBINDDN", "not a DN"),
    ({"LDAPBINDPW": None}, "LDAPBINDPW", "missing: the password of LDAPBINDDN"),
    ({"LDAPUSERDN": "uid=wodmail,{LDAPDMN}"}, "LDAPUSERDN", "names no student"),
    ({"LDAPUSERDN": "uid={student},ou={CAMPUS},{LDAPDMN}"}, "LDAPUSERDN", "{CAMPUS}: the location has no CAMPUS"),
    ({"LDAPUSERDN": "uid={student},ou={LDAPBINDPW}"}, "LDAPUSERDN", "{LDAPBINDPW} is a secret"),
    ({"LDAPUSERDN": "uid={student+1},{LDAPDMN}"}, "LDAPUSERDN", "only stdid and dbid take an offset"),
    ({"LDAPUSERDN": "uid={stdid}+,{LDAPDMN}"}, "LDAPUSERDN", "not a DN"),
    ({"LDAPCONNECTIONS": 0}, "LDAPCONNECTIONS", "expected an integer from 1 to 64"),
    ({"LDAPTIMEOUT": 0.5}, "LDAPTIMEOUT", "expected an integer from 1 to 600"),
    ({"LDAPSTARTTLS": "yes please"}, "LDAPSTARTTLS", "expected true or false"),
    ({"LDAPURI": "ldaps://ldap.example.com", "LDAPSTARTTLS": True}, "LDAPSTARTTLS", "StartTLS is for ldap:// URLs"),
    ({"LDAPURI": "ldap://ldap.example.com/dc=example"}, "LDAPURI", "give only scheme://host[:port]"),
    ({"LDAPURI": "ldap://ldap.example.com:99999"}, "LDAPURI", "the port is not a number"),
    ({"LDAPCAFILE": "ca.pem"}, "LDAPCAFILE", "the connection uses no TLS"),
    ({"LDAPSTARTTLS": True, "LDAPCAFILE": "no-such-ca.pem"}, "LDAPCAFILE", "no-such-ca.pem does not exist"),
    ({"LDAPCREATEMISSING": True}, "LDAPENTRYTEMPLATE", "missing: LDAPCREATEMISSING needs"),
    ({"LDAPCREATEMISSING": 1}, "LDAPCREATEMISSING", "expected true or false"),
]


@pytest.mark.parametrize(("keys", "key", "reason"), BAD_KEYS, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(BAD_KEYS)])
def test_a_wrong_ldap_key_stops_the_start_naming_it(
    site: Site, open_directory: Callable[..., LdapDirectory], keys: dict[str, Any], key: str, reason: str
) -> None:
    base = {"LDAPURI": "ldap://ldap.example.com", "LDAPBINDDN": SERVICE_DN, "LDAPBINDPW": "the-bind-secret"}
    with pytest.raises(ConfigError) as failure:
        open_directory(**{**base, **keys})
    assert failure.value.file == str(site.file) and failure.value.key == key
    assert reason in failure.value.reason
    assert "the-bind-secret" not in str(failure.value)


@pytest.mark.parametrize(
    ("template", "where", "reason"),
    [
        ("template-with-password.ldif", "line 4", "no userPassword here: wodmail sets it"),
        ("template-without-objectclass.ldif", None, "the template names no objectClass"),
        ("template-with-unknown-key.ldif", "line 3", "{CAMPUS}: the location has no CAMPUS"),
    ],
)
def test_a_wrong_entry_template_stops_the_start_naming_the_line(
    open_directory: Callable[..., LdapDirectory], template: str, where: str | None, reason: str
) -> None:
    with pytest.raises(ConfigError) as failure:
        open_directory(
            LDAPURI="ldap://ldap.example.com",
            LDAPBINDDN=SERVICE_DN,
            LDAPBINDPW="x",
            LDAPCREATEMISSING=True,
            LDAPENTRYTEMPLATE=str(LDAP_DATA / template),
        )
    assert failure.value.file == str(LDAP_DATA / template)
    assert failure.value.key == where and failure.value.reason == reason


def test_the_daemon_does_not_start_with_a_wrong_ldap_key(site: Site) -> None:
    site.values.update(LDAPURI="ldap://127.0.0.1:9", LDAPBINDDN=SERVICE_DN, LDAPBINDPW="x", LDAPHASH="{CLEARTEXT}")
    location = site.write()
    result = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(location), "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert f"{location}: LDAPHASH: {{CLEARTEXT}} is refused: the password in clear" in result.stderr


# --- through the daemon -------------------------------------------------------------------


@pytest.fixture
def ldap_site(site: Site, tmp_path: Path) -> Site:
    """The Site with one `ldap` workshop, WKSHP-Ldap (the sample content) for 1201..1400."""
    catalog = tmp_path / "catalog"
    shutil.copytree(SAMPLES / "WKSHP-Sample", catalog / WORKSHOP, ignore=shutil.ignore_patterns("wod.yml"))
    site.values["WORKSHOPDIR"] = str(catalog)
    site.workshops = {WORKSHOP: {"range": [FIRST, LAST], "ldap": True}}
    return site


@pytest.fixture
def students_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """slapd with students 1201..1300 in ou=People."""
    server = Slapd(tmp_path / "slapd")
    server.add_students({stdid: old_password(stdid) for stdid in range(FIRST, FIRST + 100)})
    with server:
        yield server


def send_creates(daemon: Daemon, stdids: range | list[int]) -> None:
    """One CREATE mail per student, over one SMTP session."""
    with smtplib.SMTP("127.0.0.1", daemon.site.smtp_port, timeout=30) as client:
        for stdid in stdids:
            message = (
                f"From: wod@example.com\r\nTo: jupyter@example.com\r\nSubject: CREATE {stdid} c{stdid}"
                f" p{stdid}@example.com\r\n\r\n{WORKSHOP}\r\n"
            )
            client.sendmail("wod@example.com", ["jupyter@example.com"], message.encode())


def reported_password(app: RegistrationApp, stdid: int) -> str:
    return str(app.state()["student"][str(stdid + BASESTDID)]["password"])


def test_create_sets_the_ldap_password_the_registration_app_receives(
    ldap_site: Site, students_slapd: Slapd, app: RegistrationApp, daemon_factory: Callable[[], Daemon]
) -> None:
    ldap_site.values.update(students_slapd.location_keys())
    with_app(ldap_site, app)
    daemon = daemon_factory()
    dn = student_dn(FIRST)

    daemon.send(f"CREATE {FIRST} c1 someone@example.com", body=WORKSHOP)
    (job,) = ldap_site.wait_jobs(1)
    assert job[3] == "done", job
    assert app.wait_for(lambda a: "password" in a.state()["student"].get(str(FIRST + BASESTDID), {}))
    created = reported_password(app, FIRST)
    assert students_slapd.can_bind(dn, created), "the student binds with the password the app was sent"
    assert not students_slapd.can_bind(dn, old_password(FIRST))

    # CLEANUP rotates it: the former student is locked out.
    daemon.send(f"CLEANUP {FIRST} c1", body=WORKSHOP)
    ldap_site.wait_jobs(2)
    assert app.wait_for(lambda a: a.state()["customer"].get("c1", {}).get("cleaned") == "true")
    rotated = reported_password(app, FIRST)
    assert not same_secret(rotated, created)
    assert students_slapd.can_bind(dn, rotated) and not students_slapd.can_bind(dn, created)
    with ldap_site.db() as db:
        results = db.execute("SELECT result FROM steps WHERE name IN ('set password', 'rotate password')").fetchall()
    assert [r[0] for r in results] == [f'"userPassword of {dn} replaced ({{SSHA}})"'] * 2


def test_a_refused_bind_fails_the_job_at_once_and_no_secret_is_written(
    ldap_site: Site, students_slapd: Slapd, daemon_factory: Callable[[], Daemon]
) -> None:
    wrong = "wrong-bind-secret-4f2a"
    ldap_site.values.update(students_slapd.location_keys(LDAPBINDPW=wrong))
    daemon = daemon_factory()
    daemon.send(f"CREATE {FIRST} c1", body=WORKSHOP)
    (job,) = ldap_site.wait_jobs(1, timeout=15)
    assert job[3] == "failed"
    assert job[4] == f"LDAP bind as {SERVICE_DN} refused by {students_slapd.url}: invalid credentials" + (
        " (check LDAPBINDDN and LDAPBINDPW)"
    )
    with ldap_site.db() as db:
        assert db.execute("SELECT retries FROM jobs").fetchone() == (0,), "a refused bind is not retried"
    daemon.stop()
    written = [daemon.logs().encode()] + [p.read_bytes() for p in ldap_site.state_dir.iterdir() if p.is_file()]
    assert not any(wrong.encode() in blob for blob in written), "the bind password leaked into a log or the queue"


def test_jobs_wait_while_the_server_is_down_and_go_through_when_it_is_back(
    ldap_site: Site, students_slapd: Slapd, app: RegistrationApp, daemon_factory: Callable[[], Daemon]
) -> None:
    ldap_site.values.update(students_slapd.location_keys(LDAPTIMEOUT=2), RETRYFOR=120)
    with_app(ldap_site, app)
    daemon = daemon_factory()
    first, rest = range(FIRST, FIRST + 10), range(FIRST + 10, FIRST + 40)

    send_creates(daemon, first)
    ldap_site.wait_jobs(10)
    students_slapd.stop()  # the server goes away in the middle of the burst
    send_creates(daemon, rest)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with ldap_site.db() as db:
            if db.execute("SELECT COUNT(*) FROM jobs WHERE retries > 0").fetchone()[0] >= 5:
                break
        time.sleep(0.1)
    students_slapd.start()

    jobs = ldap_site.wait_jobs(40, timeout=60)
    assert [job[3] for job in jobs] == ["done"] * 40, [job for job in jobs if job[3] != "done"]
    with ldap_site.db() as db:
        retried = db.execute("SELECT COUNT(*) FROM jobs WHERE retries > 0").fetchone()[0]
    assert retried >= 5
    assert "unreachable" in daemon.logs() and "retrying in" in daemon.logs()
    assert app.wait_for(lambda a: len(a.state()["student"]) == 40, timeout=20)
    for stdid in [*first, *rest]:
        assert students_slapd.can_bind(student_dn(stdid), reported_password(app, stdid)), stdid


def test_a_job_fails_when_the_server_stays_down_past_retryfor(
    ldap_site: Site, students_slapd: Slapd, daemon_factory: Callable[[], Daemon]
) -> None:
    ldap_site.values.update(students_slapd.location_keys(), RETRYFOR=2)
    students_slapd.stop()
    daemon = daemon_factory()
    daemon.send(f"CREATE {FIRST} c1", body=WORKSHOP)
    (job,) = ldap_site.wait_jobs(1, timeout=30)
    assert job[3] == "failed"
    assert job[4].startswith(f"gave up after 2 s: LDAP {students_slapd.url} unreachable")


def test_a_burst_of_100_creates_shares_a_few_connections(
    ldap_site: Site, students_slapd: Slapd, app: RegistrationApp, daemon_factory: Callable[[], Daemon]
) -> None:
    """Also the measurement: time per password change and connections opened (run with -s)."""
    ldap_site.values.update(students_slapd.location_keys())
    with_app(ldap_site, app)
    daemon = daemon_factory()
    before = students_slapd.connections_total()
    started = time.monotonic()
    send_creates(daemon, range(FIRST, FIRST + 100))
    jobs = ldap_site.wait_jobs(100, timeout=120)
    elapsed = time.monotonic() - started
    opened = students_slapd.connections_total() - before
    assert [job[3] for job in jobs] == ["done"] * 100
    assert 1 <= opened <= 4, f"{opened} LDAP connections for 100 CREATEs (LDAPCONNECTIONS is 4)"

    with ldap_site.db() as db:
        times = sorted(
            finished - begun
            for begun, finished in db.execute("SELECT started, finished FROM steps WHERE name = 'set password'")
        )
    assert len(times) == 100
    median, p95 = statistics.median(times), times[94]
    assert app.wait_for(lambda a: len(a.state()["student"]) == 100, timeout=30)
    assert all(students_slapd.can_bind(student_dn(s), reported_password(app, s)) for s in range(FIRST, FIRST + 100))
    daemon.stop()
    assert f"LDAP {students_slapd.url}: {opened} connection(s) opened in all" in daemon.logs()
    print(
        f"\nLDAP burst: 100 CREATEs done in {elapsed:.2f} s; 'set password' step median {median * 1000:.1f} ms,"
        f" p95 {p95 * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms; {opened} LDAP connection(s) opened"
    )
