"""What a verb may use: the services of the host.

Verbs never import httpx, ldap3 or subprocess, nor this module at run time. They get a
`JobRun` (wodmail.journal: their command, their passwords, their steps) and the `Services`
of the host (homes, workshop renderer, playbooks, the site's workshop scripts, JupyterHub,
accounts, LDAP, the registration app's workshops list), each doing its own I/O. The
callbacks they ask for are plain data (wodmail.callbacks).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from wodmail.accounts import Accounts
from wodmail.command import Command
from wodmail.compiled import CompiledWorkshop
from wodmail.errors import StepFailed
from wodmail.homes import HomeMissing, Homes
from wodmail.hub import Hub
from wodmail.location import Location, Workshop
from wodmail.playbooks import Playbooks
from wodmail.regapp import RegistrationApp
from wodmail.scripts import WorkshopScript, WorkshopScripts
from wodmail.workshop import Renderer

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.reports import Desk

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
    queue_desk: Desk | None = None
    """What HELP, PLAN, STATUS, DRAIN and RESUME read and write (wodmail.reports); the jobs process's."""
    _compiling: dict[Path, asyncio.Future[CompiledWorkshop]] = field(default_factory=dict, init=False, repr=False)
    """The workshops being compiled in a thread, each awaited by every job that needs it."""

    def desk(self) -> Desk:
        """The queue's desk for HELP, PLAN, STATUS, DRAIN and RESUME; `StepFailed` where there is none."""
        if self.queue_desk is None:
            raise StepFailed("HELP, PLAN, STATUS, DRAIN and RESUME run in the jobs process only")
        return self.queue_desk

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

    def template_variables(
        self, command: Command, workshop: Workshop, stdid: int, password: str, *, student_file: bool = False
    ) -> dict[str, Any]:
        """What a workshop's templates and hooks see for one student (wodmail.catalog: the
        location, the workshop's variables and variable files, the student's values);
        `student_file`: with what its create scripts wrote for the student (wodmail.scripts)."""
        from wodmail.catalog import template_variables

        written = self.scripts.read_student_variables(workshop, stdid) if student_file else None
        return template_variables(
            self.location, workshop, stdid, password, customer=command.customer, student_variables=written
        )

    @functools.cached_property
    def scripts(self) -> WorkshopScripts:
        """The site's workshop scripts (SCRIPTDIR, SCRIPTPRIVDIR) and appliances."""
        return WorkshopScripts(self.location, withheld=self.location.withheld)

    def workshop_scripts(self, workshop: Workshop, stage: str) -> list[WorkshopScript]:
        """`workshop`'s executable `stage` scripts (create, post-copy, cleanup, reset), public first."""
        return self.scripts.find(workshop, stage)

    @functools.cached_property
    def hook_slots(self) -> asyncio.Semaphore:
        """The workshop scripts, playbooks and shc compilations that may run at once
        (HOOKSLOTS): each is a process of its own (an ansible-playbook takes seconds of CPU and
        100 MB), so a burst of WORKERS jobs runs them a core's worth at a time while its other
        steps go on."""
        return asyncio.Semaphore(self.location.jobs.hook_slots)

    async def run_script(self, script: WorkshopScript, env: Mapping[str, str], clear: Path | None, job: str) -> str:
        """One workshop script, once a hook slot is free: a step's action (PLAN describes it)."""
        async with self.hook_slots:
            return await self.scripts.run(script, env, clear, job)

    async def run_scripts(self, job: JobRun, workshop: Workshop, stage: str, stdid: int, password: str) -> int:
        """Run `workshop`'s `stage` scripts for student{stdid}, each one step of `job` (a script
        whose step is recorded is not run again); how many it has. The first create script's
        step removes the student's variables file an earlier CREATE left."""
        found = self.scripts.find(workshop, stage)
        if not found:
            return 0
        wid = workshop.app_id
        if wid is None and self.app is not None:
            wid = await job.step("workshop id for scripts", self._script_workshop_id, workshop)
        env = self.scripts.environment(workshop, stdid, password, wid)
        clear = self.scripts.student_variables_file(workshop, stdid) if stage == "create" else None
        suffix = f" student{stdid}" if stage == "reset" else ""
        for number, script in enumerate(found):
            first_clear = clear if number == 0 else None
            await job.step(
                script.step + suffix, self.run_script, script, env, first_clear, f"job {job.id}", on_disk=True
            )
        return len(found)

    async def _script_workshop_id(self, workshop: Workshop) -> int | None:
        """`wid` for the scripts: the app's id of `workshop`, None (no `wid`) when it lists none."""
        try:
            return await self.find_workshop_id(workshop)
        except StepFailed as exc:
            log.warning("%s: the scripts get no wid: %s", workshop.name, exc)
            return None

    async def remove_student_variables(self, workshop: Workshop, stdid: int) -> str:
        """Remove what the create scripts wrote for student{stdid}, once CREATE has reported."""
        return self.scripts.remove_student_variables(workshop, stdid)

    async def compiled(self, workshop: Workshop) -> CompiledWorkshop:
        """`workshop`'s compiled templates (wodmail.workshop.Renderer): from the cache when it is
        current, else compiled in a thread, once for every job waiting for it. A first compile
        takes 0.1-0.3 s of Jinja: on the event loop it held every other job that long."""
        compiled = self.renderer.current(workshop.content)
        if compiled is not None:
            return compiled
        pending = self._compiling.get(workshop.content)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self.renderer.workshop, workshop.content))
            self._compiling[workshop.content] = pending
            pending.add_done_callback(partial(self._compiled, workshop.content))
        return await asyncio.shield(pending)

    def _compiled(self, content: Path, pending: asyncio.Future[CompiledWorkshop]) -> None:
        if self._compiling.get(content) is pending:
            del self._compiling[content]
        if not pending.cancelled():
            pending.exception()  # retrieved: each job that awaited it has it already

    async def compile_catalog(self) -> None:
        """Compile every workshop of the location, one after the other, in a thread (the jobs
        process does at its start): a burst's first CREATEs find theirs compiled, and a
        workshop that cannot be deployed is said now, not at its first CREATE."""
        for workshop in self.location.workshops.values():
            try:
                await self.compiled(workshop)
            except StepFailed as exc:
                log.warning("workshop %s cannot be deployed: %s", workshop.name, exc)

    async def deploy(self, stdid: int, workshop: Workshop, variables: dict[str, Any]) -> str:
        """Render `workshop` into student{stdid}'s home, as the student, between the location's
        pre- and post-templating tasks (wodmail.templatingtasks): "N files", then the
        catalog's warnings about the workshop (a notebook deployed as it was)."""
        from wodmail.templatingtasks import run_templating_tasks

        compiled = await self.compiled(workshop)
        where = f"{self.homes.student_dir}/student{stdid}/{workshop.content_name}"
        deployment = self.location.deployment
        secrets = [str(variables["PASSSTU"])] if "PASSSTU" in variables else []
        if deployment.pre_templating is not None:
            tag = f"student{stdid}-pre-templating"
            await run_templating_tasks(self.playbooks, deployment.pre_templating, variables, tag=tag, secrets=secrets)
        files = await self.homes.work_in_home(
            stdid, partial(compiled.render_at, where=where), workshop.content_name, variables
        )
        if deployment.post_templating is not None:
            tag = f"student{stdid}-post-templating"
            await run_templating_tasks(self.playbooks, deployment.post_templating, variables, tag=tag, secrets=secrets)
        return "; ".join([f"{files} files", *compiled.warnings])

    def scripts_to_compile(self, workshop: Workshop) -> tuple[str, ...]:
        """The scripts `workshop`'s `compile` names (wodmail.scriptcompiling), none for most."""
        from wodmail.scriptcompiling import scripts_to_compile

        return scripts_to_compile(workshop.metadata.get("compile"))

    async def compile_scripts(self, command: Command, workshop: Workshop, stdid: int, password: str) -> str:
        """`workshop`'s `compile` scripts (from SCRIPTDIR, else SCRIPTPRIVDIR) rendered and
        compiled with shc for student{stdid}, the binaries written into the home as the
        student (wodmail.scriptcompiling)."""
        from wodmail.scriptcompiling import compile_scripts, install_compiled

        names = self.scripts_to_compile(workshop)
        folders = [folder for folder in (self.location.scripts.public_dir, self.location.scripts.private_dir) if folder]
        variables = self.template_variables(command, workshop, stdid, password)
        env = self.renderer.text_environment
        async with self.hook_slots:  # shc runs the C compiler: a process as heavy as a playbook
            compiled = await compile_scripts(names, folders, variables, env, self.location.state_dir / "run")
        count = await self.homes.work_in_home(stdid, install_compiled, compiled)
        return f"{count} compiled: {', '.join(script.name for script in compiled)}"

    async def completion(self, stdid: int, workshop: Workshop) -> int:
        """How far student{stdid} went in `workshop`'s notebooks, in percent (read as the student)."""
        from wodmail.notebooks import completion_at

        compiled = await self.compiled(workshop)
        try:
            count = partial(completion_at, who=f"student{stdid}", method=self.location.deployment.completion)
            return await self.homes.read_home(stdid, count, workshop.content_name, compiled.notebooks)
        except HomeMissing:
            return 0

    async def set_password(self, stdid: int, workshop: Workshop | None, password: str) -> str:
        """Replace student{stdid}'s password where this location keeps it: the host account
        (ACCOUNTS: unix: the hub logs students in through PAM with it) and, for an LDAP
        workshop, LDAP too, as the platform this replaces did (`password_places`)."""
        host, ldap = self.password_places(stdid, workshop)
        done = []
        if host and self.accounts is not None:
            done.append(await self.accounts.set_password(stdid, password))
        if ldap and self.directory is not None:
            done.append(await self.directory.set_student_password(stdid, password))
        return "; ".join(done) or "no directory for this workshop"

    def password_places(self, stdid: int, workshop: Workshop | None) -> tuple[bool, bool]:
        """Where `set_password` sets student{stdid}'s password: (the host account, LDAP);
        StepFailed for an LDAP workshop on a location without an LDAP directory. PLAN asks
        it too (wodmail.plansteps), without setting anything."""
        if workshop is None:
            # A PURGE may name no workshop: the one whose booked range holds the student
            # (ranges never overlap) says whether the password lives in LDAP.
            workshop = next((w for w in self.location.workshops.values() if w.holds(stdid)), None)
        ldap = workshop is not None and workshop.ldap
        if workshop is not None and ldap and self.directory is None:
            raise StepFailed(f"{workshop.name} needs LDAP but this location has no LDAP directory")
        return self.accounts is not None and self.accounts.sets_passwords, ldap

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
        async with self.hook_slots:
            return await self.playbooks.run(path, variables, tag=f"job{job.id}-{hook}", secrets=secrets)
