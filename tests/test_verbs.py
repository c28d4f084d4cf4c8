"""Verbs declare themselves: the parser, the doors' checks, `send`, the help and the README
follow the registry, and a verb defined in this file runs end to end without touching
another file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import REPO, Site, with_app, wodmail
from tests.standins import RegistrationApp as AppStandin
from wodmail import callbacks, queue
from wodmail.command import Command, parse_command
from wodmail.errors import BadCommand
from wodmail.inbound import InboundMail
from wodmail.intake import CommandIntake
from wodmail.location import Location, Workshop, load_location
from wodmail.outbox import Outbox
from wodmail.passwords import PasswordMint
from wodmail.peers import LocalClient
from wodmail.send import compose
from wodmail.transport import HttpClient
from wodmail.verbspec import VerbRegistry, VerbSpec, shipped_verbs
from wodmail.wiring import build_services
from wodmail.worker import Worker

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services


def not_for_challenges(command: Command, workshop: Workshop) -> str | None:
    return f"STAMP is not for challenges like {workshop.name}" if command.mode == "CHLG" else None


class Stamp:
    """A verb of this test's own: a fresh home with the workshop in it, and a word to the app."""

    spec = VerbSpec(
        name="STAMP",
        aliases=("MARK",),
        description="Reset the home, deploy the workshop, tell the app the customer is stamped.",
        checks=(not_for_challenges,),
    )

    async def run(self, job: JobRun, services: Services) -> str:
        command = job.command
        workshop = services.workshop_of(command)
        variables = services.template_variables(command, workshop, command.stdid, job.password(command.student_name))
        await job.step("reset home", services.reset_home, command.stdid, on_disk=True)
        files = await job.step("deploy workshop", services.deploy, command.stdid, workshop, variables, on_disk=True)
        await job.callbacks("report stamp", callbacks.customer(command.customer, stamped="true"))
        return f"{command.student_name} stamped: {files}"


WITH_STAMP = shipped_verbs().with_verbs(Stamp())


def legacy_mail(subject: str, body: str = "WKSHP-Sample") -> InboundMail:
    """A mail from the registration app on the legacy door, as root on this host opened it."""
    data = f"Subject: {subject}\n{body}\n".encode()
    return InboundMail("legacy", "127.0.0.1", "wod@example.com", data, local_client=LocalClient(0))


# -- the registry ---------------------------------------------------------------------------


def test_the_shipped_registry_declares_the_four_verbs() -> None:
    verbs = shipped_verbs()
    assert list(verbs) == ["CREATE", "CLEANUP", "RESET", "PURGE", "HELP", "PLAN", "STATUS", "DRAIN", "RESUME"]
    assert verbs.words == "CREATE, CLEANUP, DELETE, RESET, PURGE, HELP, PLAN, STATUS, DRAIN, RESUME"
    assert verbs.choices == "CREATE, CLEANUP (DELETE), RESET, PURGE, HELP, PLAN, STATUS, DRAIN or RESUME"
    assert verbs.hook_names == ("create", "cleanup", "reset")
    assert verbs.lookup("delete") is verbs.spec("CLEANUP")
    assert verbs.lookup("RE\u017fET") is None  # a long s upper-cases to S: "RESET", not taken
    assert verbs.spec("RESET").argument_description == (
        "<stdid>|<min>,<max> <customer-id>; body: the workshop (a reset workshop)"
    )
    assert verbs.spec("CREATE").argument_description == "<stdid> <customer-id> [<customer-email>]; body: the workshop"
    assert verbs.spec("PURGE").argument_description == "<stdid> <customer-id>; body: the workshop (optional)"


def test_a_name_or_alias_used_twice_is_refused() -> None:
    @dataclass
    class Named:
        spec: VerbSpec

        async def run(self, job: JobRun, services: Services) -> str:
            return ""

    with pytest.raises(ValueError, match="two verbs are named CREATE"):
        shipped_verbs().with_verbs(Named(VerbSpec(name="CREATE", description="again")))
    with pytest.raises(ValueError, match="two verbs are named DELETE"):
        shipped_verbs().with_verbs(Named(VerbSpec(name="ERASE", aliases=("DELETE",), description="again")))
    with pytest.raises(ValueError, match="not a word in capitals"):
        VerbSpec(name="stamp", description="lower case")
    with pytest.raises(ValueError, match="needs a workshop"):
        VerbSpec(name="WIPE", description="", reset_only=True, workshop_required=False)
    assert len(VerbRegistry([])) == 0


def test_the_readme_table_is_the_registrys() -> None:
    readme = (REPO / "README.md").read_text()
    assert shipped_verbs().markdown_table() in readme


def test_the_cli_help_lists_every_verb_as_it_declares_itself(site: Site) -> None:
    site.write()
    shown = wodmail(site, "send", "--help")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert shipped_verbs().choices in text
    for spec in shipped_verbs().specs:
        assert spec.usage in text, spec.name


# -- the parser and send follow the registry ----------------------------------------------------


def test_the_parser_takes_a_registered_verb_by_its_declaration() -> None:
    raw = b"Subject: mark 5 c5\nWKSHP-Sample\n"
    assert parse_command(raw, WITH_STAMP) == Command(
        verb="STAMP", stdid=5, last_stdid=5, customer="c5", workshop="WKSHP-Sample"
    )
    with pytest.raises(BadCommand, match=r"unknown verb 'mark': expected one of CREATE, [A-Z, ]+ RESUME$"):
        parse_command(raw)  # the shipped verbs: nothing changed for anyone else
    with pytest.raises(BadCommand, match="STAMP takes at most 2 arguments, got 3"):
        parse_command(b"Subject: STAMP 5 c5 a@example.com\nWKSHP-Sample\n", WITH_STAMP)
    with pytest.raises(BadCommand, match="only RESET takes a student range, STAMP got '5,6'"):
        parse_command(b"Subject: STAMP 5,6 c5\nWKSHP-Sample\n", WITH_STAMP)
    with pytest.raises(BadCommand, match="the body is empty"):
        parse_command(b"Subject: STAMP 5 c5\n\n", WITH_STAMP)
    with pytest.raises(
        BadCommand,
        match=r"expected one of CREATE, CLEANUP, DELETE, RESET, PURGE, HELP, PLAN, STATUS, DRAIN, RESUME, STAMP, MARK$",
    ):
        parse_command(b"Subject: LAUNCH 5 c5\nWKSHP-Sample\n", WITH_STAMP)


def test_send_checks_the_arguments_the_verb_declares(site: Site) -> None:
    location = load_location(site.write())
    mail = compose(location, "mark", ["5", "c5"], workshop="WKSHP-Sample", unsigned_ok=True, verbs=WITH_STAMP)
    assert mail.command.verb == "STAMP" and mail.key_id is None
    with pytest.raises(BadCommand, match="unknown verb 'STAMP'"):
        compose(location, "STAMP", ["5", "c5"], workshop="WKSHP-Sample", unsigned_ok=True)
    with pytest.raises(BadCommand, match=r"STAMP takes no customer e-mail \(--email\)"):
        compose(
            location, "STAMP", ["5"], workshop="WKSHP-Sample", customer="c5", address="a@b.example", verbs=WITH_STAMP
        )
    with pytest.raises(BadCommand, match="STAMP needs --workshop NAME"):
        compose(location, "STAMP", ["5", "c5"], workshop=None, unsigned_ok=True, verbs=WITH_STAMP)
    with pytest.raises(BadCommand, match="PURGE takes at most 2 arguments, got 3"):
        compose(location, "PURGE", ["5", "c5", "x"], workshop=None, unsigned_ok=True)
    # A verb that takes what is given composes (the shipped CREATE takes an address).
    created = compose(location, "CREATE", ["5", "c5"], workshop="WKSHP-Sample", address="a@b.example", unsigned_ok=True)
    assert created.command.email == "a@b.example"


# -- end to end ---------------------------------------------------------------------------------


@dataclass
class Jobs:
    """The jobs process's pieces, in this process, with the real services of `location`."""

    location: Location
    db_path: Path
    writer: queue.Writer
    intake: CommandIntake
    worker: Worker
    outbox: Outbox

    def job(self, job_id: int) -> queue.Job:
        reader = queue.connect(self.db_path)
        try:
            job = queue.get_job(reader, job_id)
        finally:
            reader.close()
        assert job is not None
        return job

    async def wait_ended(self, job_id: int, timeout: float = 30.0) -> queue.Job:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id)).state not in ("done", "failed", "held"):
            assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
            await asyncio.sleep(0.02)
        return job


@pytest.fixture
async def jobs(site: Site, app: AppStandin) -> AsyncIterator[Jobs]:
    with_app(site, app)
    location = load_location(site.write())
    db_path = queue.open_database(location.state_dir)
    writer = queue.Writer(db_path)
    client = HttpClient(timeout=10.0)
    services, regapp = build_services(location, client)
    assert regapp is not None
    mint = PasswordMint.for_state_dir(location.state_dir)
    outbox = Outbox(db_path, writer, regapp, mint)
    worker = Worker(db_path, writer, services, WITH_STAMP, mint, concurrency=4, retry_for=60, on_callbacks=outbox.wake)
    intake = CommandIntake(location, writer, on_enqueued=worker.wake, verbs=WITH_STAMP)
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(outbox.run())]
    try:
        yield Jobs(location, db_path, writer, intake, worker, outbox)
    finally:
        await worker.stop(5)
        await outbox.wait_idle()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        outbox.close()
        await services.homes.keeper.aclose()
        await client.aclose()
        writer.close()


async def test_a_verb_defined_in_a_test_runs_end_to_end(jobs: Jobs, site: Site, app: AppStandin) -> None:
    reply = await jobs.intake.submit(legacy_mail("MARK 5 c5"))
    assert reply.line == "250 queued as job 1"
    job = await jobs.wait_ended(1)
    assert (job.state, job.command.verb, job.error) == ("done", "STAMP", None)
    assert job.outcome is not None and job.outcome.startswith("student5 stamped: ") and " files" in job.outcome
    assert (site.home(5) / "WKSHP-Sample").is_dir()
    assert await asyncio.to_thread(app.wait_for, lambda standin: bool(standin.puts("/customer/c5")))
    assert app.state()["customer"]["c5"] == {"stamped": "true"}
    # The registry's own checks apply at the door: the verb's, and the location's.
    refused = await jobs.intake.submit(legacy_mail("STAMP 1001 c6", body="CHLG-Sample"))
    assert refused.line == "554 STAMP is not for challenges like CHLG-Sample"
    outside = await jobs.intake.submit(legacy_mail("STAMP 1500 c7"))
    assert outside.line == "554 student 1500 is outside WKSHP-Sample's booked range 1..999"
    # The shipped verbs still run beside it, through the same worker.
    purged = await jobs.intake.submit(legacy_mail("PURGE 5 c5"))
    assert purged.line == "250 queued as job 2"
    assert (await jobs.wait_ended(2)).state == "done"
    assert not (site.home(5) / "WKSHP-Sample").exists()


async def test_the_shipped_intake_refuses_a_verb_it_was_not_given(site: Site) -> None:
    location = load_location(site.write())
    writer = queue.Writer(queue.open_database(location.state_dir))
    try:
        reply = await CommandIntake(location, writer).submit(legacy_mail("STAMP 5 c5"))
    finally:
        writer.close()
    assert reply.code == 554 and "unknown verb 'STAMP'" in reply.text
