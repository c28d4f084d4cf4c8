"""PLAN: what a command would do, found without doing any of it (a dry run of any verb).

    plan = await make_plan(location, planned_command(location, ["CREATE", "12", "c12"], "WKSHP-Ansible101"))
    print(plan_text(plan))

`make_plan` runs the command's own verb (verbs/*.py) against a `PlanRun`: a step journal
that records each step the verb asks for, and each callback, instead of doing it. So the
plan is the verb's own decisions (which steps, in which order, for which students, on which
flags), never a copy of them that could drift. It holds because of the contract crash
recovery already relies on: every effect of a verb goes through `job.step` or
`job.callbacks` (a step recorded done is not done again). A verb declares it keeps that
contract with `VerbSpec.plannable`; any other is refused here. What each step would do is
told by wodmail.plansteps, from the location and the catalog, read only: no password is
made, no file written, no process ended, no request sent, nothing queued. The services the
verb gets have guards where clients would be (`Unreachable`): a call to the hub, the app
or LDAP from a plan is a bug, and fails loudly instead of happening.

The command is checked as the door checks it (wodmail.command, wodmail.intake): an unknown
verb, workshop or student out of range gets the refusal the real command would get
(`BadCommand`). A step the plan can already tell would fail (a template with an undefined
variable, a missing host account, a RESET with neither script nor hook) ends the plan
there, with the failure the job would get (`Plan.failure`). What only the queue knows (a
drained workshop) the caller passes in (`make_plan`'s `refused_now`); what only the servers
know (an LDAP entry missing, the hub down) no plan can tell.

The plan is plain data (`Plan.as_dict()` for JSON); `plan_text` is what a person reads, on
the terminal and in a reply mail. It never holds a secret: passwords are NEW_PASSWORD,
the template variables and the scripts' environment are not shown, the hub's token and the
app's credentials never reach it.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from wodmail.appdeadline import SUPERSEDES, deadline_for
from wodmail.command import Command, MailFields, command_from_fields
from wodmail.errors import BadCommand, StepFailed
from wodmail.journal import JobRun
from wodmail.location import Location, Workshop
from wodmail.passwords import LENGTH
from wodmail.plansteps import NEW_PASSWORD, PlannedFile, PlannedStep, StepPlanner, planning_services
from wodmail.queue import Callback
from wodmail.services import Services
from wodmail.verbspec import VerbRegistry, shipped_verbs
from wodmail.workshop import Renderer

__all__ = [
    "NEW_PASSWORD",
    "Plan",
    "PlannedCallback",
    "PlannedFile",
    "PlannedStep",
    "PlannedStudent",
    "PlannedWorkshop",
    "make_plan",
    "plan_text",
    "planned_command",
]

_STAND_IN_PASSWORD = ("PlanOnly" * 4)[:LENGTH]
"""What the verb gets as its passwords in a plan: letters only, no secret, never shown; as
long as a real one, so the rendered files' sizes are the real ones."""


@dataclass(frozen=True)
class PlannedCallback:
    """One call to the registration app the command would queue."""

    step: str
    """The journal step that queues it (`wodmail jobs show` lists it by that name)."""
    method: str
    url: str
    """APIENDPOINT and the path (the path alone when APIENDPOINT is not set)."""
    fields: dict[str, str]
    """The body; a password is NEW_PASSWORD, a value known only then is `<what it is>`."""
    sent: bool
    """False when the location has no registration app (APIENDPOINT): recorded, not sent."""


@dataclass(frozen=True)
class PlannedWorkshop:
    """The command's workshop as this location serves it."""

    name: str
    content: str
    """The catalog folder it deploys (a challenge's is its WKSHP- folder)."""
    first: int
    last: int
    flags: tuple[str, ...]
    """The flags set: reset, ldap, varpass, monoappliance, multiappliance."""
    app_id: int | None
    hooks: dict[str, str]
    """Playbook per verb (create, cleanup, reset)."""


@dataclass(frozen=True)
class PlannedStudent:
    """One student the command is for."""

    stdid: int
    dbid: int
    """The registration app's id: stdid + BASESTDID."""
    name: str
    home: str
    home_now: str
    """What is at the home now: "absent", or its owner and mode."""
    ldap_dn: str | None = None
    """The LDAP entry whose password it sets (LDAP workshops)."""
    appliance: str | None = None
    """WODRTARGET for an appliance workshop's scripts."""


@dataclass(frozen=True)
class Plan:
    """What a command would do on a location, in order (see the module doc)."""

    command: str
    """The command in one line (`Command.canonical`)."""
    verb: str
    location: str
    workshop: PlannedWorkshop | None
    students: tuple[PlannedStudent, ...]
    steps: tuple[PlannedStep, ...]
    files: tuple[PlannedFile, ...]
    """What the deployment would write in the home (CREATE)."""
    hub_calls: tuple[str, ...]
    callbacks: tuple[PlannedCallback, ...]
    notes: tuple[str, ...]
    failure: str | None = None
    """The failure the job would end with, as far as a plan can tell; None: none seen."""

    def as_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data."""
        return dataclasses.asdict(self)


def planned_command(
    location: Location, words: Sequence[str], workshop: str | None, verbs: VerbRegistry | None = None
) -> Command:
    """The command `PLAN VERB ARGS` names: `words` is the Subject after PLAN (the verb and its
    arguments), `workshop` the body's first line. Parsed and checked as a command mail is at
    the door, against `location`: `BadCommand` with the refusal the real command would get."""
    from wodmail.intake import validate_command

    registry = verbs if verbs is not None else shipped_verbs()
    subject = " ".join(words)
    fields = MailFields(subjects=1, subject=subject, message_id=None, signatures=(), first_line=workshop)
    command = command_from_fields(fields, registry)
    if not registry.spec(command.verb).plannable:
        raise _not_plannable(registry, command.verb)
    validate_command(location, registry, command)
    return command


def _not_plannable(verbs: VerbRegistry, verb: str) -> BadCommand:
    plannable = [spec.name for spec in verbs.specs if spec.plannable]
    choices = ", ".join(plannable[:-1]) + f" or {plannable[-1]}" if len(plannable) > 1 else "".join(plannable)
    return BadCommand(f"{verb} cannot be planned: PLAN takes {choices or 'no verb'}")


class PlanRun(JobRun):
    """The step journal of a plan: each step and callback the verb asks for is recorded,
    with what it would do (wodmail.plansteps), and none is done."""

    def __init__(self, command: Command, planner: StepPlanner, *, callbacks_enabled: bool) -> None:
        # Not JobRun's: a plan has no queue, no writer and no passwords.
        self.command = command
        self._planner = planner
        self._callbacks_enabled = callbacks_enabled
        self._done: dict[str, Any] = {}
        self.steps: list[PlannedStep] = []
        self.callbacks_planned: list[PlannedCallback] = []

    @property
    def id(self) -> int:
        return 0

    def password(self, name: str) -> str:
        """A stand-in: a plan makes no password (NEW_PASSWORD is what it shows)."""
        return _STAND_IN_PASSWORD

    async def step(self, name: str, action: Callable[..., Awaitable[Any]], *args: Any, on_disk: bool = False) -> Any:
        if name in self._done:
            return self._done[name]
        try:
            planned, result = await self._planner.describe(name, action, args, on_disk=on_disk)
        except StepFailed as exc:
            self.steps.append(PlannedStep(name, "failure", f"would fail: {exc}", failure=str(exc)))
            raise
        self.steps.append(planned)
        self._done[name] = result
        return result

    async def callbacks(self, name: str, *callbacks: Callback) -> None:
        if name in self._done:
            return
        self._done[name] = None
        planned = [self._planned_callback(name, callback) for callback in callbacks]
        self.callbacks_planned.extend(planned)
        where = "queued for the registration app" if self._callbacks_enabled else "recorded, not sent (no APIENDPOINT)"
        shown = ", ".join(f"{c.method} {urllib.parse.unquote(c.path)}" for c in callbacks)
        self.steps.append(PlannedStep(name, "callbacks", f"{len(callbacks)} callback(s) {where}: {shown}"))

    def _planned_callback(self, step: str, callback: Callback) -> PlannedCallback:
        fields = dict(callback.body)
        if callback.secret_field is not None:
            fields[callback.secret_field] = NEW_PASSWORD
        endpoint = self._planner.location.api_endpoint
        path = urllib.parse.unquote(callback.path)
        url = f"{endpoint.rstrip('/')}{path}" if endpoint else path
        return PlannedCallback(step, callback.method, url, fields, sent=self._callbacks_enabled)

    async def barrier(self) -> None:
        return None

    async def flush(self) -> None:
        return None


async def make_plan(
    location: Location,
    command: Command,
    *,
    renderer: Renderer | None = None,
    verbs: VerbRegistry | None = None,
    refused_now: str | None = None,
) -> Plan:
    """What `command` would do on `location`, done by nothing (see the module doc).

    `command`: from `planned_command` (or any checked command). `renderer`: the compiled
    workshops to use (the daemon's own, compiled already); by default a new one, which keeps
    nothing on disk. The verb gets the plan's own services (`planning_services`), whose
    clients are guards. `refused_now`: the door's temporary refusal of the command, which
    only the queue knows (a CREATE for a drained workshop, wodmail.queue.drains): then the
    verb does not run, and the plan says so."""
    registry = verbs if verbs is not None else shipped_verbs()
    verb = registry[command.verb]
    if not verb.spec.plannable:
        raise _not_plannable(registry, command.verb)
    services = planning_services(location, renderer)
    planner = StepPlanner(services, command)
    run = PlanRun(command, planner, callbacks_enabled=location.api_endpoint is not None)
    failure = None
    if refused_now is not None:
        failure = f"the door would refuse it for now (451): {refused_now}"
    else:
        try:
            await verb.run(run, services)
        except StepFailed as exc:
            failure = str(exc)
    workshop = location.workshop(command.workshop) if command.workshop else None
    return Plan(
        command=command.canonical(),
        verb=command.verb,
        location=location.name,
        workshop=_planned_workshop(workshop) if workshop is not None else None,
        students=tuple(_planned_student(planner, stdid, workshop) for stdid in command.students),
        steps=tuple(run.steps),
        files=tuple(planner.files),
        hub_calls=tuple(planner.hub_calls),
        callbacks=tuple(run.callbacks_planned),
        notes=tuple(_notes(location, command, services) + planner.notes),
        failure=failure,
    )


def _planned_student(planner: StepPlanner, stdid: int, workshop: Workshop | None) -> PlannedStudent:
    services = planner.services
    return PlannedStudent(
        stdid=stdid,
        dbid=services.dbid(stdid),
        name=f"student{stdid}",
        home=str(services.location.student_home(stdid)),
        home_now=planner.home_now(stdid),
        ldap_dn=planner.ldap_dn(stdid) if workshop is not None and workshop.ldap else None,
        appliance=services.scripts.appliance_target(workshop, stdid) if workshop is not None else None,
    )


def _planned_workshop(workshop: Workshop) -> PlannedWorkshop:
    flags = ("reset", "ldap", "varpass", "monoappliance", "multiappliance")
    return PlannedWorkshop(
        name=workshop.name,
        content=workshop.content_name,
        first=workshop.first,
        last=workshop.last,
        flags=tuple(flag for flag in flags if getattr(workshop, flag)),
        app_id=workshop.app_id,
        hooks={verb: str(path) for verb, path in sorted(workshop.hooks.items())},
    )


def _notes(location: Location, command: Command, services: Services) -> list[str]:
    """What the worker does around the verb, and what this location leaves out."""
    notes = []
    deadline = deadline_for(command.verb, location.jobs.app_deadline)
    if deadline is not None:
        notes.append(
            f"it must be done {deadline:g} s after it arrives (APPDEADLINE), else it fails and the customer"
            " is never activated"
        )
    superseded = SUPERSEDES.get(command.verb)
    if superseded:
        names = " or ".join(sorted(superseded))
        notes.append(f"a {names} of {command.student_name} still waiting when it arrives is cancelled")
    if location.api_endpoint is None:
        notes.append("APIENDPOINT is not set: its callbacks are recorded, not sent")
    if services.hub is None:
        notes.append("JPHUBAPISRV is not set: no JupyterHub call")
    return notes


def plan_text(plan: Plan) -> str:
    """The plan as a person reads it (terminal, reply mail)."""
    lines = [f"PLAN {plan.command} on location {plan.location}: a dry run, nothing was changed", ""]
    if plan.workshop is not None:
        w = plan.workshop
        flags = ", ".join(w.flags) or "none"
        content = f" (content {w.content})" if w.content != w.name else ""
        app_id = f"; registration app id {w.app_id}" if w.app_id is not None else ""
        lines.append(f"Workshop:  {w.name}{content}, students {w.first}..{w.last}; flags: {flags}{app_id}")
        for verb, path in w.hooks.items():
            lines.append(f"           {verb} hook: {path}")
    else:
        lines.append("Workshop:  none named")
    for student in plan.students:
        extra = "".join(
            f"; {label} {value}"
            for label, value in (("LDAP", student.ldap_dn), ("appliance", student.appliance))
            if value is not None
        )
        lines.append(f"Student:   {student.name}, database id {student.dbid}{extra}")
        lines.append(f"           home {student.home} ({student.home_now})")
    lines += ["", "Steps, in order:"]
    if not plan.steps:
        lines.append("  none" + (": it would fail before its first step" if plan.failure is not None else ""))
    for number, step in enumerate(plan.steps, 1):
        mark = " [writes in the home]" if step.writes_home else ""
        lines.append(f"  {number:2}. {step.name}: {step.summary}{mark}")
        lines += [f"        {detail}" for detail in step.details]
    if plan.files:
        lines += ["", f"Files it would write ({len(plan.files)}):"]
        for file in plan.files:
            mode = file.mode or "    "
            size = f"{file.size:>9,} B" if file.size is not None else " " * 11
            lines.append(f"  {file.how:<9} {mode} {size}  {file.path}")
    lines += ["", "JupyterHub calls:"]
    lines += [f"  {call}" for call in plan.hub_calls] or ["  none"]
    lines += ["", "Callbacks to the registration app:"]
    for callback in plan.callbacks:
        body = ", ".join(f"{json.dumps(key)}: {_shown(value)}" for key, value in callback.fields.items())
        lines.append(f"  {callback.method} {callback.url} {{{body}}}" + ("" if callback.sent else " (not sent)"))
    if not plan.callbacks:
        lines.append("  none")
    if plan.notes:
        lines += ["", "Notes:"] + [f"  - {note}" for note in plan.notes]
    lines.append("")
    if plan.failure is not None:
        lines.append(f"It would FAIL: {plan.failure}")
    else:
        lines.append("It would succeed, as far as a plan can tell.")
    return "\n".join(lines) + "\n"


def _shown(value: str) -> str:
    """A callback's value: as JSON, or a placeholder as it is (`<a new password>`)."""
    return value if value.startswith("<") and value.endswith(">") else json.dumps(value)
