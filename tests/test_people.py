"""The mail is the API for people too: replies, HELP, STATUS, DRAIN and RESUME (issue 19).

The operator's story: an admin sends commands signed over SMTP from their own address, or
as root through the admin socket with `wodmail send`; each command gets one reply, through
RELAYHOST (a real Postfix, tests/postfix.py), with its outcome and steps or its refusal.
The registration app's unsigned commands get none, and nothing answers an auto-reply, a
list, a bounce or a reply of ours. A drained workshop's CREATEs are refused until RESUME,
across a restart, while every other verb runs.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import os
import pwd
import smtplib
import subprocess
import time
from dataclasses import dataclass, replace
from email.message import EmailMessage
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Daemon, Site, legacy_dialogue, send_legacy, with_app, wodmail
from tests.postfix import Postfix
from tests.standins import RegistrationApp
from tests.students import snapshot
from tests.test_signing import with_keys
from wodmail import queue
from wodmail.command import Command, parse_command, read_fields
from wodmail.errors import BadCommand, ConfigError
from wodmail.inbound import InboundMail
from wodmail.intake import is_command_mail
from wodmail.location import Location, load_location
from wodmail.peers import LocalClient
from wodmail.replies import Origin, host_name, reply_address
from wodmail.reports import Desk
from wodmail.send import compose
from wodmail.verbspec import VerbSpec, shipped_verbs

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

KEY = "test-people-signing-key-0123456789abcdef012345"
ADMIN = "admin@example.org"


def people_site(site: Site, postfix: Postfix) -> Location:
    """Replies through the Postfix; only signed commands on the standard door (loopback is
    not a trusted peer there); the app's unsigned commands on the legacy door."""
    with_keys(site, KEY)
    site.values.update(
        RELAYHOST=f"127.0.0.1:{postfix.port}",
        RELAYBACKOFFMAX=0.5,
        REPLYFROM="wod-backend@example.org",
        TRUSTEDPEERS=["192.0.2.0/24"],
        LEGACYPEERS=["127.0.0.1"],
    )
    return load_location(site.write())


def signed(
    site: Site,
    location: Location,
    verb: str,
    *arguments: str,
    workshop: str | None = None,
    headers: dict[str, str] | None = None,
    envelope: str = ADMIN,
) -> tuple[int, str, str]:
    """A signed command over SMTP from the admin's own address: (code, text, Message-ID)."""
    mail = compose(location, verb, list(arguments), workshop=workshop, sender=ADMIN)
    for name, value in (headers or {}).items():
        mail.message[name] = value
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail(envelope)
        client.rcpt("wodmail@example.com")
        try:
            code, text = client.data(mail.as_bytes(crlf=True))
        except smtplib.SMTPDataError as exc:
            assert isinstance(exc.smtp_error, bytes)
            code, text = exc.smtp_code, exc.smtp_error
    return code, text.decode(), str(mail.message["Message-ID"])


def queued_job(code: int, text: str) -> int:
    assert code == 250 and text.startswith("queued as job "), (code, text)
    return int(text.rpartition(" ")[2])


def reply_to(postfix: Postfix, message_id: str, timeout: float = 20.0) -> EmailMessage:
    """The one reply to the mail `message_id`, once Postfix delivered it."""
    deadline = time.monotonic() + timeout
    while True:
        replies = [m for m in postfix.messages() if m["In-Reply-To"] == message_id]
        if replies:
            assert len(replies) == 1, f"{len(replies)} replies to {message_id}"
            parsed = email.message_from_bytes(replies[0].as_bytes(), policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            return parsed
        assert time.monotonic() < deadline, f"no reply to {message_id} in {timeout} s:\n{postfix.logs()}"
        time.sleep(0.1)


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def reply_fields(site: Site, job_id: int) -> tuple[str | None, int | None]:
    with site.db() as conn:
        row = conn.execute("SELECT reply_to, reply_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row[0], row[1]


def test_signed_commands_get_one_reply_each_with_their_steps_and_no_password(
    site: Site, postfix: Postfix, app: RegistrationApp
) -> None:
    with_app(site, app)
    location = people_site(site, postfix)
    daemon = Daemon(site).start()
    try:
        code, text, help_id = signed(site, location, "HELP")
        queued_job(code, text)
        reply = reply_to(postfix, help_id)
        assert (reply["To"], reply["Auto-Submitted"], reply["Return-Path"]) == (ADMIN, "auto-replied", "<>")
        assert email.utils.parseaddr(reply["From"]) == (f"wodmail ({location.name})", "wod-backend@example.org")
        body = text_of(reply)
        for spec in shipped_verbs().specs:  # the registry's own words
            assert spec.usage in body, spec.name
        assert "WKSHP-Sample                 students 1..999  varpass" in body
        assert "WKSHP-SampleReset            students 1101..1200  reset varpass" in body

        code, text, create_id = signed(site, location, "CREATE", "5", "c5", workshop="WKSHP-Sample")
        create_job = queued_job(code, text)
        body = text_of(reply := reply_to(postfix, create_id))
        assert reply["Subject"] == f"Re: CREATE student5 WKSHP-Sample [job {create_job} done]"
        for step in ("set password", "reset home", "deploy workshop", "report to registration app"):
            assert f"done   {step} (" in body, step
        assert "PUT /student/1005 {'password': '********'}" in body
        # A reply goes once the job is done, that is once its callbacks are queued: the
        # outbox (in the doors' process) may deliver them a moment later.
        assert app.wait_for(lambda a: "password" in a.state()["student"].get("1005", {}))
        password = app.state()["student"]["1005"]["password"]
        leaked = password in body
        assert not leaked, "the reply holds the student's password"

        code, text, status_id = signed(site, location, "STATUS", "job", str(create_job))
        queued_job(code, text)
        body = text_of(reply_to(postfix, status_id))
        assert f"job {create_job}: CREATE 5 c5 / WKSHP-Sample" in body and "state     done" in body

        code, text, student_id = signed(site, location, "STATUS", "student", "5")
        queued_job(code, text)
        assert "student5 (WKSHP-Sample): in use: WKSHP-Sample for customer c5" in text_of(reply_to(postfix, student_id))

        code, text, workshop_id = signed(site, location, "STATUS", "workshop", "WKSHP-Sample")
        queued_job(code, text)
        body = text_of(reply_to(postfix, workshop_id))
        assert "students in use: 1 of 999" in body and "student5 " in body

        # A job that fails says why.
        code, text, failed_id = signed(site, location, "STATUS", "job", "999")
        failed_job = queued_job(code, text)
        reply = reply_to(postfix, failed_id)
        assert reply["Subject"] == f"Re: STATUS job 999 [job {failed_job} failed]"
        assert "error     no job 999 (it may have been forgotten" in text_of(reply)

        # Refused once the signature matched: the refusal is the reply.
        code, text, refused_id = signed(site, location, "CREATE", "1500", "c9", workshop="WKSHP-Sample")
        assert code == 554 and "outside WKSHP-Sample's booked range" in text
        reply = reply_to(postfix, refused_id)
        assert "[refused]" in reply["Subject"] and f"554 {text}" in text_of(reply)

        # One reply per command, and the jobs say where each went.
        mine = [
            m
            for m in postfix.messages()
            if m["In-Reply-To"] in (help_id, create_id, status_id, student_id, workshop_id, failed_id, refused_id)
        ]
        assert len(mine) == 7
        assert reply_fields(site, create_job)[0] == ADMIN
    finally:
        daemon.stop()


def admin_reply(site: Site, postfix: Postfix, sent: subprocess.CompletedProcess[bytes]) -> EmailMessage:
    """The reply to a command `wodmail send` handed to the admin socket: to the admin's own user."""
    assert sent.returncode == 0 and sent.stdout.startswith(b"250 queued as job "), sent
    job_id = int(sent.stdout.decode().split()[-1])
    user = f"{pwd.getpwuid(os.geteuid()).pw_name}@{host_name()}"
    with site.db() as conn:
        (message_id, auth) = conn.execute("SELECT message_id, command FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert "admin socket" in auth
    reply = reply_to(postfix, message_id)
    assert reply["To"] == user and reply_fields(site, job_id)[0] == user
    return reply


def test_a_drained_workshop_refuses_creates_until_resume_even_across_a_restart(site: Site, postfix: Postfix) -> None:
    location = people_site(site, postfix)
    daemon = Daemon(site).start()
    try:
        # As root on the host, through the admin socket: the reply goes to root's own mailbox.
        reply = admin_reply(site, postfix, wodmail(site, "send", "DRAIN", "workshop", "WKSHP-Sample"))
        assert "WKSHP-Sample drained: a CREATE for it is refused (451" in text_of(reply)
        code, text, _ = signed(site, location, "CREATE", "6", "c6", workshop="WKSHP-Sample")
        assert code == 451 and text.startswith("WKSHP-Sample is drained"), text
        # The app's unsigned CREATE: refused the same way, recorded; its CLEANUP still runs.
        send_legacy(site.legacy_port, legacy_dialogue("CREATE 7 c7", "WKSHP-Sample"))
        send_legacy(site.legacy_port, legacy_dialogue("CLEANUP 7 c7", "WKSHP-Sample"))
        jobs = site.wait_jobs(2)
        assert [(verb, state) for _id, verb, _s, state, _e in jobs] == [("DRAIN", "done"), ("CLEANUP", "done")]
        refused = wodmail(site, "refused").stdout.decode()
        assert refused.count("451 WKSHP-Sample is drained") == 2, refused
        # Another workshop takes CREATEs.
        code, text, _ = signed(site, location, "CREATE", "1001", "c8", workshop="CHLG-Sample")
        queued_job(code, text)

        daemon.stop()
        daemon = Daemon(site).start()
        code, text, _ = signed(site, location, "CREATE", "6", "c6", workshop="WKSHP-Sample")
        assert code == 451, text
        # STATUS by mail and on the command line say the same.
        reply = admin_reply(site, postfix, wodmail(site, "send", "STATUS", "workshop", "WKSHP-Sample"))
        shown = wodmail(site, "status", "workshop", "WKSHP-Sample")
        lines = shown.stdout.decode().splitlines()
        assert shown.returncode == 0 and lines[0].startswith("WKSHP-Sample: students 1..999, varpass; drained since")
        assert lines[1] == "students in use: 0 of 999" and all(line in text_of(reply) for line in lines)

        # RESUME by mail (the command line's `wodmail resume`: tests/test_desk.py).
        reply = admin_reply(site, postfix, wodmail(site, "send", "RESUME", "workshop", "WKSHP-Sample"))
        assert "WKSHP-Sample resumed: CREATEs are taken again" in text_of(reply), text_of(reply)
        code, text, _ = signed(site, location, "CREATE", "6", "c6", workshop="WKSHP-Sample")
        queued_job(code, text)
    finally:
        daemon.stop()


def test_a_plan_by_mail_answers_with_the_whole_plan_and_changes_nothing(
    site: Site, postfix: Postfix, app: RegistrationApp
) -> None:
    with_app(site, app)
    location = people_site(site, postfix)
    daemon = Daemon(site).start()
    try:
        lived_in = site.home(13)  # a home with work in it: the plan would erase it, and leaves it
        (lived_in / "notes").mkdir(parents=True)
        (lived_in / "notes" / "mine.txt").write_text("my work\n")
        homes, calls = snapshot(site.student_dir), app.calls

        code, text, plan_id = signed(site, location, "PLAN", "CREATE", "12", "c12", workshop="WKSHP-Sample")
        plan_job = queued_job(code, text)
        reply = reply_to(postfix, plan_id)
        assert reply["Subject"] == f"Re: PLAN CREATE 12 c12 [job {plan_job} done]"
        body = text_of(reply)
        assert (
            f"  outcome   PLAN CREATE 12 c12 / WKSHP-Sample on location {location.name}: a dry run, nothing was"
            " changed; it would succeed, as far as a plan can tell." in body
        )
        # The step's result is the whole plan: the reply shows every line of it.
        assert "done   plan (" in body and "Steps, in order:" in body, body
        for line in (
            "Student:   student12, database id 1012",
            f"home {site.home(12)} (absent)",
            "deploy workshop: deploy WKSHP-Sample into",
            "WKSHP-Sample/0-ReadMeFirst.ipynb",
            f'PUT {app.url}/student/1012 {{"password": <a new password>}}',
            f'PUT {app.url}/customer/c12 {{"active": "true"}}',
            "It would succeed, as far as a plan can tell.",
        ):
            assert line in body, line
        assert "Files it would write (" in body and "Callbacks to the registration app:" in body
        for secret in (app.password, KEY, "PlanOnly"):  # the app's, the signing key, the plan's stand-in
            assert secret not in body

        # As root through the admin socket: the same, for a student with a home.
        reply = admin_reply(
            site, postfix, wodmail(site, "send", "PLAN", "CREATE", "13", "c13", "--workshop", "WKSHP-Sample")
        )
        body = text_of(reply)
        assert f"reset home: erase {lived_in} back to its skeleton" in body and "It would succeed" in body, body

        assert snapshot(site.student_dir) == homes and not site.home(12).exists()
        assert app.calls == calls
        with site.db() as conn:
            queued = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            steps = conn.execute("SELECT DISTINCT name FROM steps").fetchall()
        assert (queued, steps) == (0, [("plan",)])
    finally:
        daemon.stop()


def test_no_reply_to_auto_replies_lists_bounces_our_own_mails_or_the_apps_commands(
    site: Site, postfix: Postfix
) -> None:
    location = people_site(site, postfix)
    daemon = Daemon(site).start()
    try:
        quiet: list[int] = []
        for headers, envelope in (
            ({"Auto-Submitted": "auto-replied"}, ADMIN),
            ({"Precedence": "bulk"}, ADMIN),
            ({"List-Id": "<admins.example.org>"}, ADMIN),
            ({"X-Wodmail-Reply": "job 1"}, ADMIN),
            ({}, ""),  # an empty return path: a bounce
        ):
            code, text, _ = signed(site, location, "HELP", headers=headers, envelope=envelope)
            quiet.append(queued_job(code, text))
        send_legacy(site.legacy_port, legacy_dialogue("CREATE 9 c9", "WKSHP-Sample"))
        jobs = site.wait_jobs(len(quiet) + 1)
        assert all(state == "done" for *_, state, _e in jobs)
        assert [reply_fields(site, job_id) for job_id, *_ in jobs] == [(None, None)] * len(jobs)

        # A command that is answered, and an auto-reply to that answer: nothing comes back.
        before = len(postfix.messages())
        code, text, help_id = signed(site, location, "HELP")
        help_job = queued_job(code, text)
        ours = reply_to(postfix, help_id)
        auto = EmailMessage()
        auto["From"], auto["To"] = ADMIN, str(ours["From"])
        auto["Subject"] = f"Automatic reply: {ours['Subject']}"
        auto["Auto-Submitted"], auto["In-Reply-To"] = "auto-replied", str(ours["Message-ID"])
        auto.set_content("I am away until Monday.")
        with (
            smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=30) as client,
            pytest.raises(smtplib.SMTPDataError) as caught,
        ):
            client.sendmail(ADMIN, ["wodmail@example.com"], auto.as_bytes(policy=email.policy.SMTP))
        assert caught.value.smtp_code == 550  # not a command, and not from the app: not relayed either
        # Every mail wodmail sends leaves through the relay table, committed with what caused it
        # (the refusal above was committed before its 550): the one reply is all there is.
        with site.db() as conn:
            assert conn.execute("SELECT door, auth FROM relay").fetchall() == [("reply", f"reply to job {help_job}")]
        assert len(postfix.messages()) == before + 1
    finally:
        daemon.stop()


# -- the verbs without a student, as the registry declares them ---------------------------------


def test_a_verb_without_a_student_takes_its_own_forms_and_nothing_else() -> None:
    status = parse_command(b"Subject: status JOB 12\n\nthe body is not read\n")
    assert (status.verb, status.operands, status.workshop, status.students) == (
        "STATUS",
        ("job", "12"),
        None,
        range(-1, 0),
    )
    assert status.canonical() == "STATUS job 12 / -" and status.label == "STATUS job 12"
    drain = parse_command(b"Subject: DRAIN workshop WKSHP-Sample\n")
    assert (drain.operands, drain.workshop) == (("workshop", "WKSHP-Sample"), "WKSHP-Sample")
    assert Command.from_json(drain.to_json()) == drain
    assert parse_command(b"Subject: HELP\n").operands == ()
    for subject, reason in (
        ("STATUS job twelve", "STATUS takes [job ID | student N | workshop NAME], got 'job twelve'"),
        ("HELP me", "HELP takes no argument, got 'me'"),
        ("DRAIN workshop ../etc", "DRAIN takes [workshop NAME | all], got 'workshop ../etc'"),
    ):
        with pytest.raises(BadCommand) as refused:
            parse_command(f"Subject: {subject}\n".encode())
        assert refused.value.reason == reason
    # PLAN's shape: the rest of the Subject (a command of its own) and the body's workshop.
    echo = VerbSpec(name="ECHO", description="", student=False, workshop_required=False, operands=("WORDS...",))
    echo = replace(echo, operands_required=True, reads_body=True)
    verbs = shipped_verbs().with_verbs(Declared(echo))
    planned = parse_command(b"Subject: ECHO create 5 c5\n\nWKSHP-Sample\n", verbs)
    assert (planned.operands, planned.workshop) == (("create", "5", "c5"), "WKSHP-Sample")
    assert planned.canonical() == "ECHO create 5 c5 / WKSHP-Sample"
    assert echo.argument_description == "WORDS...; body: the workshop (optional)"
    with pytest.raises(BadCommand, match=r"ECHO needs WORDS\.\.\."):
        parse_command(b"Subject: ECHO\n", verbs)
    with pytest.raises(ValueError, match="takes no student"):
        VerbSpec(name="LIST", description="", student=False)  # a workshop body by default
    with pytest.raises(ValueError, match="takes a student"):
        VerbSpec(name="LIST", description="", operands=("job ID",))


@dataclass
class Declared:
    """A verb of this file's own, declared only (never run)."""

    spec: VerbSpec

    async def run(self, job: JobRun, services: Services) -> str:
        raise AssertionError("not run here")


def test_a_mail_for_a_person_that_starts_with_such_a_verb_is_still_a_mail_for_a_person() -> None:
    verbs = shipped_verbs()
    for subject, command in (
        ("Status of your workshop", False),
        ("Help is on the way", False),
        ("STATUS", True),
        ("Plan for your workshop", False),  # PLAN's words are a command: a verb first
        ("plan create 5 c5", True),
    ):
        fields = read_fields(f"Subject: {subject}\n\nHello\n".encode())
        assert is_command_mail(fields, verbs) is command, subject


async def test_the_desk_plans_a_command_as_the_door_would_take_it_now(site: Site) -> None:
    """Where PLAN's reply text comes from (wodmail.plan), drained or not."""
    location = load_location(site.write())
    path = queue.open_database(location.state_dir)
    writer = queue.Writer(path)
    desk = Desk(location, path, writer, shipped_verbs())
    try:
        taken = await desk.plan(["CREATE", "5", "c5"], "WKSHP-Sample")
        assert await desk.drain(("workshop", "WKSHP-Sample"), "a test") == (
            "WKSHP-Sample drained: a CREATE for it is refused (451, try again later) until RESUME workshop"
            " WKSHP-Sample; every other verb runs"
        )
        refused = await desk.plan(["CREATE", "5", "c5"], "WKSHP-Sample")
        # A command the door refuses for good is answered with that refusal, as a plan's verdict.
        outside = await desk.plan(["CREATE", "1500", "c5"], "WKSHP-Sample")
    finally:
        desk.close()
        writer.close()
    assert "451" not in taken and "the door would refuse it for now (451): WKSHP-Sample is drained" in refused
    first, *_, verdict = outside.strip().splitlines()
    asked = f"PLAN CREATE 1500 c5 / WKSHP-Sample on location {location.name}"
    assert first == f"{asked}: not planned, the door would refuse it"
    assert verdict.startswith("It would be REFUSED (554): ") and "outside WKSHP-Sample's booked range" in verdict
    assert "student5" in taken and "WKSHP-Sample" in taken


def test_where_a_reply_goes_and_when_none_does(site: Site) -> None:
    site.values["RELAYHOST"] = "127.0.0.1:25"
    location = load_location(site.write())

    def route(headers: str, door: str = "smtp", sender: str = ADMIN) -> tuple[str | None, str]:
        data = f"{headers}Subject: HELP\n\n".encode()
        client = LocalClient(0) if door == "admin" else None
        mail = InboundMail(door=door, peer=None, mail_from=sender, data=data, local_client=client)
        return reply_address(mail, Origin.of(data), location)

    assert route("From: Ada <ada@example.org>\nReply-To: ops@example.org, x@example.org\n") == ("ops@example.org", "")
    assert route("From: Ada <ada@example.org>\nAuto-Submitted: no\n") == ("ada@example.org", "")
    assert route("From: not an address\n") == (None, "no usable Reply-To or From address")
    assert route("From: MAILER-DAEMON@example.org\n") == (None, "its sender is a mail system")
    assert route("From: ada@example.org\nPrecedence: junk\n") == (None, "Precedence: junk")
    assert route("From: ada@example.org\n", sender="<>") == (None, "an empty return path (a bounce)")
    # The admin socket: root's own mailbox on this host, whatever the mail says (wodmail send gives <>).
    assert route("From: ada@example.org\n", door="admin", sender="") == (f"root@{host_name()}", "")
    site.values.pop("RELAYHOST")
    location = load_location(site.write())
    assert route("From: ada@example.org\n") == (None, "no RELAYHOST to send replies through")
    # REPLYFROM, the replies' From, is one plain address.
    for wrong in ("Ops <ops@example.org>", "ops", "ops@localhost", "a@b.org, c@d.org"):
        site.values["REPLYFROM"] = wrong
        with pytest.raises(ConfigError, match="REPLYFROM: expected one mail address"):
            load_location(site.write())
