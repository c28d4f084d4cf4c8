"""What each step a verb asks for would do, told without doing it (for PLAN, wodmail.plan).

A verb hands its step journal an action and its arguments (`job.step(name, action, *args)`).
`StepPlanner.describe` looks the action up (the services' methods: `Services.set_password`,
`Services.deploy`, `Hub.start`, `Services.run_script`, ...) and says what it would do with
those arguments, from the location, the catalog and the host's accounts, read only. It
gives the verb what the step would return where the verb decides on it (a script count, the
completion, an id the app gives: `Later`). A step it can tell would fail (a template that
does not render, an LDAP workshop without LDAP, no app to ask an id of) raises the
`StepFailed` the step would raise.

`planning_services` builds the `Services` a plan runs the verb with: the location's homes,
catalog, scripts and accounts, and guards (`Unreachable`) where the clients of JupyterHub,
the registration app and LDAP would be.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from wodmail.accounts import Accounts
from wodmail.command import Command
from wodmail.compiled import CompiledWorkshop, Folder
from wodmail.copysteps import CHECKPOINTS, PDF_SCRIPT_NAME, WORKSPACE_FILE
from wodmail.errors import ConfigError, StepFailed
from wodmail.homes import Homes
from wodmail.httpanswer import HttpAnswer
from wodmail.hub import Hub
from wodmail.keeper import TRASH
from wodmail.location import Location, Workshop
from wodmail.playbooks import Playbooks
from wodmail.regapp import RegistrationApp
from wodmail.scripts import WorkshopScript
from wodmail.services import Services
from wodmail.workshop import Renderer

__all__ = ["NEW_PASSWORD", "Later", "PlannedFile", "PlannedStep", "StepPlanner", "Unreachable", "planning_services"]

NEW_PASSWORD = "<a new password>"
"""What a plan says wherever the command would put a password (none is ever made)."""


@dataclass(frozen=True)
class PlannedStep:
    """One step of the verb, as the job's journal would name it, and what it would do."""

    name: str
    kind: str
    """password, processes, home, scripts, lookup, deploy, hook, completion, hub, callbacks, ..."""
    summary: str
    details: tuple[str, ...] = ()
    writes_home: bool = False
    failure: str | None = None


@dataclass(frozen=True)
class PlannedFile:
    """A file the deployment would write, relative to the student's home."""

    path: str
    how: str
    """rendered (a template), copied (byte for byte), link, or copy step (COPYSTEPS)."""
    mode: str | None
    size: int | None
    """Bytes: a rendered file's for this student, a copied file's in the catalog."""


class Later:
    """A value a step finds only when it runs (the completion, an id the app gives)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __str__(self) -> str:
        return f"<{self.what}>"


class Described(NamedTuple):
    kind: str
    summary: str
    details: tuple[str, ...] = ()
    result: Any = None
    nothing: bool = False
    """The step would do nothing (no hook to run): it writes nothing either."""


class Unreachable:
    """Where a plan's services would have a client (JupyterHub, the registration app, LDAP):
    any use is a bug in the plan, and fails instead of reaching the server."""

    def __init__(self, what: str) -> None:
        self._what = what

    def _refuse(self) -> RuntimeError:
        return RuntimeError(f"PLAN changes nothing and calls nothing, yet {self._what} was called")

    async def request(self, method: str, url: str, **_: Any) -> HttpAnswer:
        raise self._refuse()

    async def get(self, url: str, **_: Any) -> HttpAnswer:
        raise self._refuse()

    async def post(self, url: str, **_: Any) -> HttpAnswer:
        raise self._refuse()

    async def set_student_password(self, stdid: int, password: str) -> str:
        raise self._refuse()


def planning_services(location: Location, renderer: Renderer | None = None) -> Services:
    """The services a plan runs a verb with: read-only use of the homes, catalog, scripts and
    accounts; guards instead of clients. `renderer`: the compiled workshops to read (default:
    a new renderer, without the compiled-template cache of STATEDIR)."""
    client = Unreachable("an HTTP client")
    app = None
    if location.api_endpoint:
        app = RegistrationApp(location.api_endpoint, location.api_user or "", location.api_password or "", client)
    return Services(
        location=location,
        homes=Homes.from_location(location),
        renderer=renderer if renderer is not None else Renderer.for_location(location),
        playbooks=Playbooks(location.state_dir),
        hub=Hub.from_location(location, client),
        app=app,
        directory=Unreachable("the LDAP directory") if location.ldap_uri else None,
        accounts=Accounts.from_location(location),
    )


Describer = Callable[..., Awaitable[Described]]


class StepPlanner:
    """Tells what each step of one command would do; collects the files it would write and
    the hub calls it would make (see the module doc)."""

    def __init__(self, services: Services, command: Command) -> None:
        self.services = services
        self.location = services.location
        self.command = command
        self.files: list[PlannedFile] = []
        self.hub_calls: list[str] = []
        self.notes: list[str] = []
        self._wid_later = False

    async def describe(
        self, name: str, action: Callable[..., Awaitable[Any]], args: tuple[Any, ...], *, on_disk: bool
    ) -> tuple[PlannedStep, Any]:
        """The step `name` (`action(*args)`) as planned, and what it would return to the verb."""
        describer = _DESCRIBERS.get(getattr(action, "__func__", action))
        if describer is None:
            what = getattr(action, "__qualname__", type(action).__name__)
            step = PlannedStep(name, "step", f"{what} (PLAN cannot tell more of it)", writes_home=on_disk)
            return step, Later(f"what {name} gives")
        described = await describer(self, *args)
        writes = on_disk and not described.nothing
        step = PlannedStep(name, described.kind, described.summary, described.details, writes_home=writes)
        return step, described.result

    # -- facts about a student ---------------------------------------------------------------

    def home_now(self, stdid: int) -> str:
        """What is at student{stdid}'s home now: "absent", or what it is, its owner and mode."""
        try:
            st = os.lstat(self.location.student_home(stdid))
        except FileNotFoundError:
            return "absent"
        except OSError as exc:
            return f"cannot be read: {exc.strerror}"
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a folder"
        return f"{kind}, owner {_user(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"

    def ldap_dn(self, stdid: int) -> str:
        """The DN of student{stdid}'s LDAP entry (LDAPUSERDN)."""
        try:
            settings = self.location.ldap
        except ConfigError as exc:
            raise StepFailed(str(exc)) from None
        if settings is None:
            return "(no LDAP on this location)"
        return settings.user_dn.fill(stdid, settings.base_stdid)

    # -- the describers, one per action ------------------------------------------------------

    async def _set_password(self, stdid: int, workshop: Workshop | None, password: str) -> Described:
        host, ldap = self.services.password_places(stdid, workshop)
        places = []
        accounts = self.services.accounts
        if host and accounts is not None:
            entry = accounts.account_to_set(stdid)  # the refusal the step would give
            made = f" (uid {entry.uid})" if entry is not None else ", created first (ACCOUNTCREATE)"
            places.append(f"the host account student{stdid}{made}: /etc/shadow, a hash through chpasswd -e")
        if ldap:
            places.append(f"LDAP entry {self.ldap_dn(stdid)} (userPassword replaced)")
        where = "; ".join(places) if places else "nowhere on this host (no ACCOUNTS: unix, not an LDAP workshop)"
        return Described("password", f"a new password for student{stdid}: {where}")

    async def _end_processes(self, stdid: int, grace: float = 0.0, *, leftovers: bool = True) -> Described:
        return Described("processes", self._ending(stdid, leftovers=leftovers))

    async def _end_new_students_processes(self, stdid: int) -> Described:
        return Described("processes", self._ending(stdid, leftovers=False))

    async def _end_processes_of(self, stdids: list[int], grace: float = 0.0) -> Described:
        details = tuple(self._ending(stdid, leftovers=True) for stdid in stdids)
        return Described("processes", f"end the processes of {len(stdids)} students, all at once", details)

    def _ending(self, stdid: int, *, leftovers: bool) -> str:
        name = f"student{stdid}"
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            return f"no host account {name}: no process to end"
        if os.geteuid() != 0:
            return f"not root: the processes of {name} are left running"
        text = f"end every process of {name} (uid {account.pw_uid}): the keeper, as {name}, until none is left"
        if leftovers:
            text += "; remove what it left outside the home (shared temporary folders, IPC, crontab, at, linger)"
        return text

    async def _reset_home(self, stdid: int) -> Described:
        location = self.location
        home = location.student_home(stdid)
        owner = location.homes.owner
        who = f"student{stdid}" if owner == "student" else ("wodmail's user" if owner == "none" else owner)
        details = [
            f"the old home is renamed into {location.student_dir / TRASH} and erased there by the keeper, as its owner",
            f"a fresh {home}, mode {location.homes.mode:04o}, owner {who}",
        ]
        skel = location.skel_dir
        if skel is not None and skel.is_dir():
            details.append(f"the skeleton {skel} copied in ({_entries(skel)} entries), as the owner")
        else:
            details.append("no skeleton (SKELDIR)")
        accounts = location.accounts
        if accounts.home_acl:
            details.append("HOMEACL " + ",".join(str(entry) for entry in accounts.home_acl))
        if accounts.ssh_key != "none":
            details.append(f"a new {accounts.ssh_key} key pair in ~/.ssh (id_{accounts.ssh_key})")
        return Described("home", f"erase {home} back to its skeleton", tuple(details))

    async def _compile_scripts(self, command: Command, workshop: Workshop, stdid: int, password: str) -> Described:
        names = self.services.scripts_to_compile(workshop)
        return Described(
            "scripts",
            f"render {', '.join(names)} for student{stdid} and compile them with shc into the home, as the student",
        )

    async def _run_script(
        self, script: WorkshopScript, env: Mapping[str, str], clear: Path | None = None, job: str = ""
    ) -> Described:
        settings = self.location.scripts
        details = [
            f"as root, in {self.location.workshop_dir}, no arguments, stdin /dev/null, at most {settings.timeout:g} s"
        ]
        shown = [f"{key}={env[key]}" for key in ("stdid", "w", "ws", "wid", "stddir", "WODRTARGET") if key in env]
        if "wid" not in env and self._wid_later:
            shown.append("wid=<looked up then>")
        details.append("environment: " + " ".join(shown) + f", randompw={NEW_PASSWORD}")
        if clear is not None:
            details.append(f"first removes {clear}, if an earlier CREATE left it (WODVARFILE)")
        where = "private" if script.private else "public"
        return Described("scripts", f"run the {where} {script.stage} script {script.path}", tuple(details))

    async def _script_workshop_id(self, workshop: Workshop) -> Described:
        self._wid_later = True
        return Described(
            "lookup",
            f"look {workshop.name}'s id up in the registration app's GET /workshops (the scripts' wid)",
            result=None,
        )

    async def _find_workshop_id(self, workshop: Workshop) -> Described:
        if self.services.app is None:
            raise StepFailed(f"{workshop.name} has no `id` in the workshops file and APIENDPOINT is not set")
        return Described(
            "lookup",
            f"look {workshop.name}'s id up in the registration app's GET /workshops",
            result=Later(f"the id of {workshop.name} in GET /workshops"),
        )

    async def _deploy(self, stdid: int, workshop: Workshop, variables: dict[str, Any]) -> Described:
        compiled = self.services.renderer.workshop(workshop.content)
        rendered = await asyncio.to_thread(compiled.render, variables)  # a template that fails fails here
        files = _deployed_files(compiled, rendered)
        self.files.extend(files)
        self.notes.extend(compiled.warnings)
        where = self.location.student_home(stdid) / workshop.content_name
        counts = {
            how: sum(1 for file in files if file.how == how) for how in ("rendered", "copied", "link", "copy step")
        }
        shown = ", ".join(f"{count} {how}" for how, count in counts.items() if count)
        details = [f"from {workshop.content}, as student{stdid}, swapped in whole"]
        deployment = self.location.deployment
        if deployment.pre_templating is not None:
            details.append(f"before: the Ansible tasks {deployment.pre_templating} (PRETEMPLATING)")
        if deployment.post_templating is not None:
            details.append(f"after: the Ansible tasks {deployment.post_templating} (POSTTEMPLATING)")
        if "PASSSTU" in variables:
            details.append(f"the templates get PASSSTU: {NEW_PASSWORD}")
        return Described("deploy", f"deploy {workshop.name} into {where}: {shown}", tuple(details))

    async def _run_hook(self, job: Any, workshop: Workshop, hook: str, variables: dict[str, Any]) -> Described:
        path = workshop.hooks.get(hook)
        if path is None:
            return Described("hook", f"no {hook} hook: nothing to run", nothing=True)
        extra = f" (PASSSTU: {NEW_PASSWORD})" if "PASSSTU" in variables else ""
        return Described("hook", f"ansible-playbook {path} on this host, with the template variables{extra}")

    async def _completion(self, stdid: int, workshop: Workshop) -> Described:
        compiled = self.services.renderer.workshop(workshop.content)
        where = self.location.student_home(stdid) / workshop.content_name
        method = self.location.deployment.completion
        return Described(
            "completion",
            f"count the completion of {len(compiled.notebooks)} notebook(s) in {where} ({method}), as student{stdid}",
            result=Later("the completion percentage, counted then"),
        )

    async def _remove_student_variables(self, workshop: Workshop, stdid: int) -> Described:
        path = self.services.scripts.student_variables_file(workshop, stdid)
        if path is None:
            return Described("scripts", "no VARPRIVDIR: no student variables file to remove")
        return Described(
            "scripts", f"remove {path} (what the create scripts wrote for student{stdid}), if there is one"
        )

    async def _hub_start(self, name: str) -> Described:
        return Described("hub", self._hub_call("POST", name, f"start {name}'s JupyterHub server, wait until ready"))

    async def _hub_stop(self, name: str) -> Described:
        return Described("hub", self._hub_call("DELETE", name, f"stop {name}'s JupyterHub server, wait until gone"))

    async def _hub_sign_out(self, name: str) -> Described:
        hub = self.services.hub
        assert hub is not None  # the verb asks only when there is one
        user = f"{hub.url}/hub/api/users/{urllib.parse.quote(name, safe='')}"
        self.hub_calls += [f"DELETE {user}", f"POST {user}"]
        return Described(
            "hub",
            f"end {name}'s JupyterHub logins, if the hub has the user: delete it and make it again"
            f" (DELETE, then POST {user})",
        )

    def _hub_call(self, method: str, name: str, what: str) -> str:
        hub = self.services.hub
        assert hub is not None  # the verb asks only when there is one
        call = f"{method} {hub.url}/hub/api/users/{urllib.parse.quote(name, safe='')}/server"
        self.hub_calls.append(call)
        return f"{what} ({call})"


_DESCRIBERS: dict[object, Describer] = {
    Services.set_password: StepPlanner._set_password,
    Homes.end_processes: StepPlanner._end_processes,
    Homes.end_new_students_processes: StepPlanner._end_new_students_processes,
    Homes.end_processes_of: StepPlanner._end_processes_of,
    Services.reset_home: StepPlanner._reset_home,
    Services.compile_scripts: StepPlanner._compile_scripts,
    Services.run_script: StepPlanner._run_script,
    Services._script_workshop_id: StepPlanner._script_workshop_id,  # the step run_scripts asks for
    Services.find_workshop_id: StepPlanner._find_workshop_id,
    Services.deploy: StepPlanner._deploy,
    Services.run_hook: StepPlanner._run_hook,
    Services.completion: StepPlanner._completion,
    Services.remove_student_variables: StepPlanner._remove_student_variables,
    Hub.start: StepPlanner._hub_start,
    Hub.stop: StepPlanner._hub_stop,
    Hub.sign_out: StepPlanner._hub_sign_out,
}


def _deployed_files(compiled: CompiledWorkshop, rendered: Mapping[Path, bytes]) -> list[PlannedFile]:
    """Every file the deployment writes, relative to the home, in the catalog's order."""
    top = compiled.root.name
    files: list[PlannedFile] = []
    todo: list[Folder] = [compiled.tree]
    while todo:
        folder = todo.pop(0)
        for file in folder.templated:
            rendered_size = len(rendered[file.relative])
            files.append(PlannedFile(f"{top}/{file.relative}", "rendered", f"{file.mode:04o}", rendered_size))
        for copied in folder.copied:
            size: int | None = None
            mode = copied.mode
            try:
                st = os.stat(copied.source, follow_symlinks=False)
                size, mode = st.st_size, mode if mode is not None else stat.S_IMODE(st.st_mode)
            except OSError:
                pass
            files.append(
                PlannedFile(f"{top}/{copied.relative}", "copied", f"{mode:04o}" if mode is not None else None, size)
            )
        files.extend(PlannedFile(f"{top}/{link.relative}", "link", None, None) for link in folder.links)
        todo.extend(folder.folders)
    steps = compiled.copy_steps
    readme = Path(CHECKPOINTS.source)
    if steps.checkpoint and (readme in rendered or any(f.path == f"{top}/{readme}" for f in files)):
        checkpoint = f"{top}/{CHECKPOINTS.folder}/{CHECKPOINTS.name}"
        files.append(
            PlannedFile(checkpoint, "copy step", "0644", len(rendered[readme]) if readme in rendered else None)
        )
    if steps.pdf_script is not None:
        files.append(PlannedFile(f"{top}/{PDF_SCRIPT_NAME}", "copy step", "0755", _size(steps.pdf_script)))
    if steps.workspace:
        files.append(PlannedFile("/".join(WORKSPACE_FILE), "copy step", "0644", None))
    return files


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _entries(folder: Path) -> int:
    """Names under `folder`, SKELDIR: a folder of the operator's, not a student's home."""
    return sum(len(names) + len(dirs) for _, dirs, names in os.walk(folder))


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
