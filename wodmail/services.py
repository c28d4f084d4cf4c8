"""What a verb may use: the services object, and the run of one job.

Verbs never import httpx, ldap3 or subprocess. They get a `JobRun` (their command, their
password, their steps) and the `Services` of the host (homes, workshop renderer,
playbooks, JupyterHub, the registration app's callbacks), each doing its own I/O.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from wodmail import faults, queue
from wodmail.accounts import Accounts
from wodmail.command import Command
from wodmail.errors import StepFailed, WodmailError
from wodmail.faults import crash_point
from wodmail.homes import HomeMissing, Homes
from wodmail.hub import Hub
from wodmail.location import Location, Workshop
from wodmail.passwords import PasswordMint
from wodmail.playbooks import Playbooks
from wodmail.queue import Callback, Job
from wodmail.regapp import RegistrationApp
from wodmail.workshop import Renderer

log = logging.getLogger(__name__)


class Directory(Protocol):
    """The student directory (LDAP): set a student's password, replacing the old one."""

    async def set_student_password(self, stdid: int, password: str) -> str: ...


@dataclass
class Services:
    location: Location
    homes: Homes
    renderer: Renderer
    playbooks: Playbooks
    hub: Hub | None = None
    app: RegistrationApp | None = None
    directory: Directory | None = None
    accounts: Accounts | None = None
    """The students' host accounts (ACCOUNTS, ACCOUNTSSHKEY, HOMEACL); None: left alone."""

    @property
    def callbacks_enabled(self) -> bool:
        return self.location.api_endpoint is not None

    def workshop_of(self, command: Command) -> Workshop:
        if command.workshop is None:
            raise StepFailed(f"{command.verb} needs a workshop")
        workshop = self.location.workshop(command.workshop)
        if workshop is None:
            raise StepFailed(f"workshop {command.workshop} is no longer configured on {self.location.name}")
        return workshop

    def dbid(self, stdid: int) -> int:
        """The registration app's student id: stdid + BASESTDID."""
        return stdid + self.location.base_stdid

    def template_variables(self, command: Command, workshop: Workshop, stdid: int, password: str) -> dict[str, Any]:
        """What a workshop's templates and hooks see for one student (wodmail.catalog: the
        location, the workshop's variables and variable files, the student's values)."""
        from wodmail.catalog import template_variables

        return template_variables(self.location, workshop, stdid, password, customer=command.customer)

    async def deploy(self, stdid: int, workshop: Workshop, variables: dict[str, Any]) -> int:
        """Render `workshop` into student{stdid}'s home, as the student; the number of files written."""
        compiled = self.renderer.workshop(workshop.content)
        where = f"{self.homes.student_dir}/student{stdid}/{workshop.content_name}"
        return await self.homes.work_in_home(
            stdid, partial(compiled.render_at, where=where), workshop.content_name, variables
        )

    async def completion(self, stdid: int, workshop: Workshop) -> int:
        """How far student{stdid} went in `workshop`'s notebooks, in percent (read as the student)."""
        from wodmail.notebooks import completion_at

        compiled = self.renderer.workshop(workshop.content)
        try:
            count = partial(completion_at, who=f"student{stdid}")
            return await self.homes.read_home(stdid, count, workshop.content_name, compiled.notebooks)
        except HomeMissing:
            return 0

    async def set_password(self, stdid: int, workshop: Workshop | None, password: str) -> str:
        """Replace student{stdid}'s password where this location keeps it: the host account
        (ACCOUNTS: unix: the hub logs students in through PAM with it) and, for an LDAP
        workshop, LDAP too, as the platform this replaces did."""
        if workshop is None:
            # A PURGE may name no workshop: the one whose booked range holds the student
            # (ranges never overlap) says whether the password lives in LDAP.
            workshop = next((w for w in self.location.workshops.values() if w.holds(stdid)), None)
        if workshop is not None and workshop.ldap and self.directory is None:
            raise StepFailed(f"{workshop.name} needs LDAP but this location has no LDAP directory")
        done = []
        if self.accounts is not None and self.accounts.sets_passwords:
            done.append(await self.accounts.set_password(stdid, password))
        if workshop is not None and workshop.ldap and self.directory is not None:
            done.append(await self.directory.set_student_password(stdid, password))
        return "; ".join(done) or "no directory for this workshop"

    async def reset_home(self, stdid: int) -> str | None:
        """Erase student{stdid}'s home back to its skeleton (wodmail.homes), then, when the
        location asks, give it HOMEACL and a fresh ssh key pair, as the student."""
        await self.homes.reset(stdid)
        if self.accounts is None or not self.accounts.furnishes_homes:
            return None
        pair = await self.accounts.key_pair(stdid)
        if pair is not None and self.homes.identity(stdid) is None:
            pair = None  # no host account to own it: no key
        return await self.homes.work_in_home(stdid, self.accounts.furnish_home, pair) or None

    async def find_workshop_id(self, workshop: Workshop) -> int:
        """The registration app's id of `workshop` (its notebook name), from GET /workshops."""
        if self.app is None:
            raise StepFailed(f"{workshop.name} has no `id` in the workshops file and APIENDPOINT is not set")
        for item in await self.app.workshops():
            if item.get("notebook") == workshop.name and isinstance(item.get("id"), int):
                return int(item["id"])
        raise StepFailed(f"the registration app lists no workshop with notebook {workshop.name}")

    async def run_hook(self, job: JobRun, workshop: Workshop, hook: str, variables: dict[str, Any]) -> str:
        path = workshop.hooks.get(hook)
        if path is None:
            return f"no {hook} hook"
        secrets = [str(variables["PASSSTU"])] if "PASSSTU" in variables else []
        return await self.playbooks.run(path, variables, tag=f"job{job.id}-{hook}", secrets=secrets)


class JobRun:
    """One run of one job: its command, its passwords, and its steps, each done once.

    A step that finished in an earlier run of the same job (before a crash, or before a
    transient failure) is not done again: `step` returns the result it recorded then.

    A step is recorded only once its effects are durable. A step `on_disk` (it wrote to the
    homes) is held back, and so is every step after it, until the next barrier: before the
    job's callbacks are queued (the app is never told of a workshop a power cut can take
    back) and at the job's end. A barrier waits for the homes' filesystem to be flushed
    (`flush_disk`, one syncfs shared by every job waiting then), then records the held steps
    in order. A crash before it only means doing those steps again: each converges.
    """

    def __init__(
        self,
        job: Job,
        done: dict[str, Any],
        writer: queue.Writer,
        mint: PasswordMint,
        on_callbacks: Callable[[], None] | None = None,
        flush_disk: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.job = job
        self.command = job.command
        self._done = done
        self._writer = writer
        self._mint = mint
        self._on_callbacks = on_callbacks
        self._flush_disk = flush_disk
        self._unflushed: list[asyncio.Future[None]] = []
        self._held: list[Callable[[sqlite3.Connection], None]] = []
        self._disk_written = False

    @property
    def id(self) -> int:
        return self.job.id

    def password(self, name: str) -> str:
        """The job's password called `name`; the same in every run of this job."""
        return self._mint.password(self.job.id, name)

    async def step(self, name: str, action: Callable[..., Awaitable[Any]], *args: Any, on_disk: bool = False) -> Any:
        """Run `await action(*args)` once for this job; `on_disk`: it writes to the homes."""
        if name in self._done:
            return self._done[name]
        started = time.time()
        await crash_point(self.command, name, "start")
        try:
            result = await action(*args)
        except WodmailError as exc:
            await self._writer.run(queue.step_failed(self.job.id, name, started, str(exc)))
            raise
        except Exception as exc:
            await self._writer.run(
                queue.step_failed(self.job.id, name, started, f"internal error: {type(exc).__name__}: {exc}")
            )
            raise
        await crash_point(self.command, name, "done")
        self._done[name] = result
        write = queue.step_done(self.job.id, self.command.stdid, name, started, result)
        if on_disk or self._held:
            self._disk_written = self._disk_written or on_disk
            self._held.append(write)
        else:
            self._submit(write)
        if faults.POINTS:
            await self.flush()
            await crash_point(self.command, name, "recorded")
        return result

    def _submit(self, write: Callable[[sqlite3.Connection], None]) -> None:
        # Not awaited: every step converges when run again, so losing this record in a crash
        # only means doing the step once more. The writer commits in order, so the record is
        # durable no later than the next awaited write (callbacks, the job's end).
        record = self._writer.submit(write)
        record.add_done_callback(_seen)  # a job that fails later never flushes: no "never retrieved"
        self._unflushed.append(record)

    async def barrier(self) -> None:
        """Flush the homes if a held step wrote to them, then record the held steps."""
        if not self._held:
            return
        if self._disk_written and self._flush_disk is not None:
            await self._flush_disk()
        held, self._held, self._disk_written = self._held, [], False
        for write in held:
            self._submit(write)

    async def flush(self) -> None:
        """Wait until every step record made so far is committed (and raise if one failed)."""
        await self.barrier()
        pending, self._unflushed = self._unflushed, []
        for future in pending:
            await future

    async def callbacks(self, name: str, services: Services, *callbacks: Callback) -> None:
        """Queue callbacks to the registration app, exactly once, as one step."""
        if name in self._done:
            return
        if not services.callbacks_enabled:
            await self._record(name, "APIENDPOINT not set: not sent", ())
            return
        await self._record(name, f"{len(callbacks)} queued", callbacks)
        if self._on_callbacks is not None:
            self._on_callbacks()

    async def _record(self, name: str, result: str, callbacks: tuple[Callback, ...]) -> None:
        await self.barrier()
        started = time.time()
        await crash_point(self.command, name, "start")
        await self._writer.run(queue.step_done(self.job.id, self.command.stdid, name, started, result, callbacks))
        self._done[name] = result
        await crash_point(self.command, name, "recorded")


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class Verb(Protocol):
    """The contract of every module in verbs/."""

    name: str
    argument_description: str
    description: str

    def run(self, job: JobRun, services: Services) -> Awaitable[str]: ...
