"""A student with a shell is never a trusted peer: the doors, the admin socket, `deliver`.

The story on a Jupyter host: students have shells, so they can connect to 127.0.0.1 (or
bind any 127.x as the source) and mail the local MTA. The location below trusts loopback
and `local`, as the embedded default does, and still a student's unsigned PURGE is refused
at every door and recorded, nothing runs, while root's same command is taken.

These tests run as root against the real daemon, with a real unprivileged account
(`useradd`, removed at the end) whose client is the system's /usr/bin/python3 with the
standard library only (the project's venv may be unreadable to it).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DATA, Daemon, Site, wodmail
from wodmail import admin
from wodmail.errors import NotPermitted
from wodmail.inbound import InboundMail, Reply
from wodmail.location import load_location
from wodmail.peers import HostPeers, LocalClient
from wodmail.received import relay_address
from wodmail.trust import shared_host_warnings, student_accounts

STUDENT = "wodtrust1"
SYSTEM_PYTHON = "/usr/bin/python3"
OTHER_LOOPBACK = "127.8.9.10"
APP = "198.51.100.25"
"""The registration app, as the MTA writes its address (a documentation address, off this host)."""

#: A client as a student would write it in a Jupyter terminal: smtplib, or the legacy dialogue.
CLIENT = r"""
import smtplib, socket, sys
door, source, port, subject = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if door == "smtp":
    message = ("From: wod@example.com\r\nTo: jupyter@example.com\r\nSubject: %s\r\n\r\nWKSHP-Sample\r\n" % subject)
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as client:
        client.ehlo()
        client.mail("wod@example.com")
        client.rcpt("jupyter@example.com")
        try:
            code, text = client.data(message.encode())
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
    print(code, text.decode())
else:
    dialogue = ("HELO api.example.com\nMAIL FROM: wod@example.com\nRCPT TO: jupyter@example.com\nDATA\n"
                "Subject: %s\nWKSHP-Sample\n.\n" % subject).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
        sock.sendall(dialogue)
        if sys.argv[5:] == ["close"]:
            sys.exit(0)
        replies = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            replies += chunk
    lines = replies.decode().splitlines()
    print(lines[lines.index(next(l for l in lines if l.startswith("354"))) + 1])
"""

#: The admin socket's protocol, by hand (wodmail.admin), as a student would try it.
ADMIN_CLIENT = r"""
import socket, sys
mail = b"From: x@example.com\nSubject: PURGE 7 c7\n\nWKSHP-Sample\n"
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
    sys.exit(0)
sock.sendall(b"SEND %d <>\n" % len(mail) + mail)
print(sock.makefile("rb").readline().decode().strip())
"""


@pytest.fixture(autouse=True)
def as_root() -> None:
    """Fail, never skip: the claims here hold only if they are checked with real accounts."""
    assert os.geteuid() == 0, "tests/test_trust.py needs root (real accounts, SO_PEERCRED, chown)"


@pytest.fixture(scope="module")
def student() -> Iterator[pwd.struct_passwd]:
    """A real unprivileged account, as every student on a Jupyter host has."""
    assert os.geteuid() == 0, "tests/test_trust.py needs root (useradd)"
    subprocess.run(["userdel", STUDENT], capture_output=True, check=False)  # left by a killed run
    subprocess.run(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", STUDENT],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(STUDENT)
    finally:
        subprocess.run(["userdel", STUDENT], capture_output=True, check=False)


@pytest.fixture
def site() -> Iterator[Site]:
    """The conftest site, in a folder any user may pass through (/tmp/wodtrust-*, 0711): the
    admin socket test lets the student reach STATEDIR's door to show the daemon's own check."""
    root = Path(tempfile.mkdtemp(prefix="wodtrust-", dir="/tmp"))
    os.chmod(root, 0o711)
    try:
        yield Site(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_as(user: pwd.struct_passwd | None, *args: str) -> str:
    """Run the system Python as `user` (None: root); its output, one line."""
    result = subprocess.run(
        [SYSTEM_PYTHON, "-I", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        user=None if user is None else user.pw_uid,
        group=None if user is None else user.pw_gid,
        extra_groups=None if user is None else [],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def send(user: pwd.struct_passwd | None, door: str, source: str, port: int, subject: str, *extra: str) -> str:
    return run_as(user, "-c", CLIENT, door, source, str(port), subject, *extra)


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def auth_of(site: Site, job_id: int) -> str:
    with site.db() as conn:
        (text,) = conn.execute("SELECT command FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return str(text)


# --- the doors: a student from loopback, root from loopback -----------------------------------------


def test_a_students_unsigned_purge_is_refused_on_both_doors(
    site: Site, daemon_factory: Callable[..., Daemon], student: pwd.struct_passwd
) -> None:
    victim = site.home(7)
    victim.mkdir(parents=True)
    (victim / "work.txt").write_text("the other student's work")
    daemon = daemon_factory()
    who = f"user {STUDENT} (uid {student.pw_uid})"

    for door, port in (("smtp", site.smtp_port), ("legacy", site.legacy_port)):
        for source in ("127.0.0.1", OTHER_LOOPBACK):
            reply = send(student, door, source, port, "PURGE 7 c7")
            assert reply.startswith("550 "), (door, source, reply)
            assert f"{source} is on this host and the connection was opened by {who}" in reply, reply
            assert "local users are not trusted peers" in reply
    # Closing at once does not help: who it was, or that nobody can say, refuses it the same.
    for _ in range(20):
        send(student, "legacy", OTHER_LOOPBACK, site.legacy_port, "PURGE 7 c7", "close")
    wait_for(lambda: len(site.refused()) == 24)

    refused = site.refused()
    assert [(door, peer, code) for _id, door, peer, code, _reason, _mail in refused[:4]] == [
        ("smtp", "127.0.0.1", 550),
        ("smtp", OTHER_LOOPBACK, 550),
        ("legacy", "127.0.0.1", 550),
        ("legacy", OTHER_LOOPBACK, 550),
    ]
    for _id, door, _peer, code, reason, mail in refused[4:]:
        assert (door, code) == ("legacy", 550)
        assert who in reason or "could not name" in reason, reason
        assert b"PURGE 7 c7" in mail
    listing = wodmail(site, "refused").stdout.decode()
    assert listing.count("local users are not trusted peers") == 24
    time.sleep(0.5)  # nothing is queued behind the refusals
    assert site.jobs() == []
    assert (victim / "work.txt").read_text() == "the other student's work"

    # The same commands from root are taken (the kernel says root opened the connection).
    assert send(None, "smtp", OTHER_LOOPBACK, site.smtp_port, "PURGE 7 c7").startswith("250 queued as job 1")
    assert send(None, "legacy", "127.0.0.1", site.legacy_port, "PURGE 8 c8").startswith("250 queued as job 2")
    assert f'"auth": "trusted peer {OTHER_LOOPBACK}, user root (uid 0)"' in auth_of(site, 1)
    assert '"auth": "legacy peer 127.0.0.1, user root (uid 0)"' in auth_of(site, 2)
    assert [job[1:3] for job in site.wait_jobs(2)] == [("PURGE", 7), ("PURGE", 8)]
    assert daemon.process is not None and daemon.process.poll() is None


def test_local_peer_users_can_name_who_else_is_trusted(
    site: Site, daemon_factory: Callable[..., Daemon], student: pwd.struct_passwd
) -> None:
    site.values["LOCALPEERUSERS"] = [STUDENT]  # an odd site: this user, and not root
    daemon_factory()
    assert send(student, "smtp", "127.0.0.1", site.smtp_port, "PURGE 7 c7").startswith("250 queued as job 1")
    root = send(None, "smtp", "127.0.0.1", site.smtp_port, "PURGE 8 c8")
    assert root.startswith("550 ") and "user root (uid 0)" in root


#: Open connections to the standard door and keep them; print each greeting's code.
HOARD = r"""
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
print(" ".join(sock.recv(3).decode() for sock in held))
"""


def test_a_student_cannot_hoard_the_standard_door_from_loopback(
    site: Site, daemon_factory: Callable[..., Daemon], student: pwd.struct_passwd
) -> None:
    """TRUSTEDPEERS are not capped (SMTPPEERCONNECTIONS), but a student on loopback is."""
    site.values["SMTPPEERCONNECTIONS"] = 3
    daemon_factory()
    assert run_as(student, "-c", HOARD, str(site.smtp_port), "5") == "220 220 220 421 421"
    assert run_as(None, "-c", HOARD, str(site.smtp_port), "5") == "220 220 220 220 220"


# --- the admin socket ------------------------------------------------------------------------------


def test_the_admin_socket_takes_root_and_refuses_anyone_else(
    site: Site, daemon_factory: Callable[..., Daemon], student: pwd.struct_passwd
) -> None:
    site.values["TRUSTEDPEERS"] = [APP]  # loopback trusts nobody: only the admin socket is left
    daemon_factory()
    path = admin.socket_path(site.state_dir)
    assert stat.S_IMODE(os.stat(site.state_dir).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600

    # Root: `wodmail send` needs no key (the location has none) and goes through the socket.
    sent = wodmail(site, "send", "PURGE", "7", "c7")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.decode().strip() == "250 queued as job 1"
    shown = wodmail(site, "jobs", "show", "1").stdout.decode()
    assert "trusted   admin socket, user root (uid 0) (SO_PEERCRED)" in shown
    assert "by admin from the admin socket" in shown
    # Over SMTP it would need a key: loopback is not trusted here.
    smtp = wodmail(site, "send", "PURGE", "8", "c8", "--smtp")
    assert smtp.returncode == 78 and b"no signing key" in smtp.stderr and b"admin socket" in smtp.stderr

    # A student cannot even reach it (STATEDIR is 0700)...
    assert run_as(student, "-c", ADMIN_CLIENT, str(path)) == "EACCES"
    # ... and were the modes loosened by mistake, the daemon's own check refuses and records it.
    os.chmod(site.state_dir, 0o711)
    os.chmod(path, 0o666)
    try:
        reply = run_as(student, "-c", ADMIN_CLIENT, str(path))
    finally:
        os.chmod(site.state_dir, 0o700)
        os.chmod(path, 0o600)
    assert reply == (
        f"550 the admin socket is for root and wodmail's own user, not user {STUDENT} (uid {student.pw_uid})"
    )
    (refused,) = site.refused()
    assert refused[1:4] == ("admin", None, 550)
    assert [job[1:3] for job in site.jobs()] == [("PURGE", 7)]


async def test_the_admin_socket_works_however_long_statedir_is(tmp_path: Path) -> None:
    """A unix socket path holds 107 bytes; STATEDIR may be longer (reached through its fd)."""
    state_dir = tmp_path / ("deep-" * 30) / "state"
    state_dir.mkdir(parents=True)
    assert len(str(admin.socket_path(state_dir))) > 108
    taken: list[InboundMail] = []

    class Intake:
        async def submit(self, mail: InboundMail) -> Reply:
            taken.append(mail)
            return Reply(250, "queued as job 1")

    door = admin.AdminDoor(Intake(), state_dir, 65536)
    await door.start()
    try:
        reply = await asyncio.to_thread(admin.submit, state_dir, b"Subject: PURGE 7 c7\n\n", "root@localhost")
    finally:
        await door.drain()
    assert reply == Reply(250, "queued as job 1")
    (mail,) = taken
    assert (mail.door, mail.peer, mail.mail_from, mail.local_client) == (
        "admin",
        None,
        "root@localhost",
        LocalClient(os.geteuid(), via="SO_PEERCRED"),
    )
    assert not admin.socket_path(state_dir).exists()
    with pytest.raises(admin.AdminUnavailable):
        admin.submit(state_dir, b"x", "")


# --- deliver: what this host's MTA wrote on top ----------------------------------------------------

CREATE = (DATA / "mails" / "create.eml").read_bytes()


def received(address: str, helo: str = "app.example.com", name: str = "app.example.com") -> bytes:
    return (
        f"Received: from {helo} ({name} [{address}])\n"
        "\tby jupyter.example.com (Postfix) with ESMTP id 4XyZ\n"
        "\tfor <jupyter@example.com>; Mon, 1 Jan 2024 00:00:00 +0000\n"
    ).encode()


def this_hosts_address() -> str | None:
    """A non-loopback address of this host, if it has one (the source it would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_deliver_takes_only_what_the_mta_received_from_a_trusted_address(site: Site) -> None:
    own = this_hosts_address()
    site.values["TRUSTEDPEERS"] = ["127.0.0.0/8", APP, *([own] if own else []), "local"]
    site.write()
    mails = {
        "none": CREATE,
        "loopback": received("127.0.0.1", name="localhost") + CREATE,
        "ipv6 loopback": received("IPv6:::1", name="localhost") + CREATE,
        "submitted here": b"Received: by jupyter.example.com (Postfix, from userid 1001)\n\tid 4XyZ; Mon, 1 Jan 2024\n"
        + received(APP)
        + CREATE,
        "forged helo": received("127.0.0.1", helo=f"x (app [{APP}])", name="localhost") + CREATE,
        "untrusted": received("203.0.113.9") + CREATE,
    }
    if own is not None:
        mails["this host's own address"] = received(own, name="jupyter.example.com") + CREATE
    for case, mail in mails.items():
        result = wodmail(site, "deliver", "-f", "wod@example.com", stdin=mail)
        assert result.returncode == 77, (case, result.stderr)
        assert b"550 " in result.stderr
    assert site.jobs() == []
    reasons = [row[4] for row in site.refused()]
    assert len(reasons) == len(mails) and {row[1] for row in site.refused()} == {"deliver"}
    assert "no Received header from this host's MTA" in reasons[0]
    assert "names [127.0.0.1], an address on this host" in reasons[1]
    assert "names [::1], an address on this host" in reasons[2]
    assert "(Postfix, from userid 1001)" in reasons[3] and "names no client address" in reasons[3]
    assert "names no client address" in reasons[4]
    assert "names [203.0.113.9], which may not send unsigned commands (not in TRUSTEDPEERS)" in reasons[5]
    if own is not None:
        assert f"names [{own}], an address on this host" in reasons[6]

    accepted = wodmail(site, "deliver", "-f", "wod@example.com", stdin=received(APP) + CREATE)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.startswith(b"250 queued as job 1")
    assert f'"auth": "local pipe, relayed by the MTA from {APP}"' in auth_of(site, 1)
    # A signed command needs no Received header (wodmail send --print | wodmail deliver).
    bad = wodmail(site, "deliver", stdin=received(APP) + (DATA / "mails" / "refused" / "unknown-verb.eml").read_bytes())
    assert bad.returncode == 65


@pytest.mark.parametrize(
    ("header", "address"),
    [
        (b"Received: from app (app.example.com [198.51.100.25])\n\tby host (Postfix) with ESMTP id 1\n", APP),
        (b"Received: from [198.51.100.25] (unknown [198.51.100.25]:40312)\r\n\tby host (Postfix)\r\n", APP),
        (b"Received: from app (app.example.com [IPv6:2001:db8::25])\n by host with esmtp id 1\n", "2001:db8::25"),
        (
            b"From wod@example.com Mon Jan  1 00:00:00 2024\nReturn-Path: <wod@example.com>\n"
            b"Delivered-To: jupyter@example.com\nReceived: from a (b [198.51.100.25])\n\tby host\n",
            APP,
        ),
    ],
)
def test_relay_address_reads_the_mtas_own_line(header: bytes, address: str) -> None:
    assert relay_address(header + b"Subject: PURGE 7 c7\n\nWKSHP-Sample\n") == address


@pytest.mark.parametrize(
    "header",
    [
        b"Subject: PURGE 7 c7\n",
        b"Received: by host (Postfix, from userid 1001)\n\tid 1\nReceived: from a (b [198.51.100.25])\n\tby h\n",
        b"Received: from x (y [198.51.100.25]) (localhost [127.0.0.1])\n\tby host\n",
        b"Received: from x (y [198.51.100.25])\nX-Fake: \tby host\n",
        b"Received: from student1 by host with local (Exim 4.96)\n\t(envelope-from <student1@host>)\n",
        b"Received: from a by b (c [198.51.100.25])\n\tby host\n",
    ],
)
def test_relay_address_refuses_what_the_mta_did_not_write(header: bytes) -> None:
    with pytest.raises(NotPermitted):
        relay_address(header + b"Subject: PURGE 7 c7\n\nWKSHP-Sample\n")


# --- the kernel's answers ---------------------------------------------------------------------------


def test_the_kernel_names_the_owner_of_a_local_client(student: pwd.struct_passwd) -> None:
    peers = HostPeers()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        assert peers.is_host_address("127.0.0.1") and peers.is_host_address("::ffff:127.1.2.3")
        assert not peers.is_host_address("198.51.100.25") and not peers.is_host_address("not an address")
        own = this_hosts_address()
        if own is not None:
            assert peers.is_host_address(own)
        with socket.create_connection(listener.getsockname(), source_address=(OTHER_LOOPBACK, 0)) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert peers.client_of(accepted.getsockname(), accepted.getpeername()) == LocalClient(0)
                assert peers.client_of(("127.0.0.1", 25), ("198.51.100.25", 4000)) is None  # remote
                client.close()
                time.sleep(0.05)
                # Closed: the kernel keeps the connection (TIME_WAIT, uid 0) but not its owner.
                assert peers.client_of(accepted.getsockname(), accepted.getpeername()) == LocalClient(None)
    finally:
        listener.close()
        peers.close()


def test_check_and_the_start_log_warn_on_a_host_with_students(
    site: Site, daemon_factory: Callable[..., Daemon]
) -> None:
    stdid = 987651
    account = f"student{stdid}"
    site.values.update(STUDENTMIN=stdid - 1, STUDENTMAX=stdid + 1, CATALOGWORKSHOPS="listed")
    site.workshops = {"WKSHP-Sample": {"range": [stdid - 1, stdid + 1]}}
    site.write()
    quiet = wodmail(site, "check")
    assert quiet.returncode == 0, quiet.stderr
    assert b"SHARED HOST" not in quiet.stdout + quiet.stderr
    subprocess.run(["userdel", account], capture_output=True, check=False)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", account], check=True)
    try:
        assert student_accounts(stdid - 1, stdid + 1) == [account]
        checked = wodmail(site, "check")
        assert checked.returncode == 0, checked.stderr
        warnings = [line for line in checked.stderr.decode().splitlines() if line.startswith("WARNING: SHARED HOST")]
        # and one for set-ID programs where students write, unless all of it is mounted nosuid
        set_id = [warning for warning in warnings if "set-user-ID programs" in warning]
        honoured = [folder for folder in (site.student_dir, "/tmp", "/var/tmp", "/dev/shm") if set_id_honoured(folder)]
        assert len(set_id) == (1 if honoured else 0), (honoured, checked.stderr)
        assert all(str(folder) in set_id[0] for folder in honoured)
        warnings = [warning for warning in warnings if warning not in set_id]
        assert len(warnings) == 3, checked.stderr
        assert "TRUSTEDPEERS lists loopback (127.0.0.0/8, ::1/128)" in warnings[0]
        assert "LEGACYPEERS lists loopback" in warnings[1] and "TRUSTEDPEERS lists `local`" in warnings[2]
        assert all(account in warning for warning in warnings + set_id)
        daemon = daemon_factory()
        daemon.stop()
        assert daemon.logs().count("WARNING wodmail.daemon: SHARED HOST") == 3 + len(set_id)
        # The site examples' way: only the registration app. Nothing to warn about but set-ID programs.
        site.values.update(TRUSTEDPEERS=[APP], LEGACYPEERS=[APP])
        site.write()
        shared = [line for line in wodmail(site, "check").stderr.decode().splitlines() if "SHARED HOST" in line]
        assert shared == set_id
    finally:
        subprocess.run(["userdel", account], capture_output=True, check=False)


def set_id_honoured(folder: Path | str) -> bool:
    """Whether the filesystem `folder` is on honours set-ID bits, as findmnt(8) tells."""
    options = subprocess.run(
        ["findmnt", "--noheadings", "--output", "OPTIONS", "--target", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(",")
    return "nosuid" not in [option.strip() for option in options]


def test_set_id_programs_where_students_write_are_warned_of_per_mount(site: Site) -> None:
    """Mounts read from mountinfo(5): STUDENTDIR and the shared folders, each mount once;
    nothing when all are nosuid, or when the host has no student account."""
    stdid = 987655
    site.values.update(STUDENTMIN=stdid - 1, STUDENTMAX=stdid + 1, CATALOGWORKSHOPS="listed")
    site.workshops = {"WKSHP-Sample": {"range": [stdid - 1, stdid + 1]}}
    location = load_location(site.write())
    homes = str(site.student_dir)
    everything = "\n".join(
        [
            "21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
            "22 21 0:5 / /dev/shm rw,nosuid,nodev shared:2 - tmpfs tmpfs rw",
            f"23 21 8:2 / {homes} rw,relatime shared:3 - ext4 /dev/sda2 rw",
        ]
    )
    nosuid = everything.replace("rw,relatime", "rw,nosuid,relatime")
    subprocess.run(["userdel", f"student{stdid}"], capture_output=True, check=False)
    assert shared_host_warnings(location, everything) == []  # no student account: not a shared host
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", f"student{stdid}"], check=True)
    try:
        found = [warning for warning in shared_host_warnings(location, everything) if "set-ID" in warning]
        assert len(found) == 1, found
        assert f"STUDENTDIR {homes} (mounted on {homes})" in found[0]
        assert "/tmp, /var/tmp, /run/lock (mounted on /)" in found[0] and "/dev/shm" not in found[0]
        assert f"student{stdid}" in found[0] and "mount them nosuid" in found[0]
        assert not [warning for warning in shared_host_warnings(location, nosuid) if "set-ID" in warning]
    finally:
        subprocess.run(["userdel", f"student{stdid}"], capture_output=True, check=False)
