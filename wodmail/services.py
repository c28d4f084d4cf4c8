"""What a verb may use: the services of the host.

Verbs never import httpx, ldap3 or subprocess, nor this module at run time. They get a
`JobRun` (wodmail.journal: their command, their passwords, their steps) and the `Services`
of the host (homes, workshop renderer, playbooks, JupyterHub, accounts, LDAP, the
registration app's workshops list), each doing its own I/O. The callbacks they ask for are
plain data (wodmail.callbacks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from wodmail.accounts import Accounts
from wodmail.command import Command
from wodmail.errors import StepFailed
from wodmail.homes import HomeMissing, Homes
from wodmail.hub import Hub
from wodmail.location import Location, Workshop
from wodmail.playbooks import Playbooks
from wodmail.regapp import RegistrationApp
from wodmail.workshop import Renderer

if TYPE_CHECKING:
    from wodmail.journal import JobRun

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
