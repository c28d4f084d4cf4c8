"""What HELP, STATUS, DRAIN and RESUME answer: texts from the verbs' registry, the location
and the queue.

The verbs (verbs/help.py, status.py, drain.py, resume.py; plan.py for wodmail.plan's text)
reach them through `Desk`, a service of the jobs process (`Services.desk`); `wodmail help`, `status`, `drain` and
`resume` on the command line call the same functions, so both say the same thing. Nothing
here shows a secret: a callback's password field is `********`, as in `wodmail jobs show`.

    STATUS                        the jobs by state, the oldest waiting, the drained workshops
    STATUS job ID                 one job: its state, outcome or error, steps and callbacks
    STATUS student N              the student's last jobs, and the workshop it is in use for
    STATUS workshop NAME          the workshop's range and flags, whether it is drained, and
                                  its students in use (their last job is a CREATE not undone)
    DRAIN [workshop NAME | all]   CREATEs for it refused (451) until RESUME; all by default
    RESUME [workshop NAME | all]
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from wodmail import queue
from wodmail.errors import BadCommand, StepFailed
from wodmail.location import Location, Workshop
from wodmail.queue import Drain, Job
from wodmail.verbspec import VerbRegistry

#: The jobs STATUS student N lists.
STUDENT_JOBS = 10
#: The students STATUS workshop NAME lists by name (the count says how many in all).
LISTED_STUDENTS = 200
#: A job's states that keep its CREATE's student in use.
IN_USE = ("queued", "running", "done")


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))


def _flags(workshop: Workshop) -> str:
    return " ".join(flag for flag in ("reset", "ldap", "varpass") if getattr(workshop, flag)) or "-"


def help_text(location: Location, verbs: VerbRegistry, drains: Sequence[Drain]) -> str:
    """HELP: the verbs with their arguments, and the workshops this host serves."""
    lines = [
        f"wodmail on location {location.name}: commands by mail (signed), or `wodmail send` as root",
        "Subject: VERB and its arguments; the body's first line: the workshop, for a verb that takes one.",
        "",
        "Verbs:",
        *(f"  {spec.usage}" for spec in verbs.specs),
        "",
        f"Workshops served ({len(location.workshops)}), students {location.student_min}..{location.student_max}:",
        *(
            f"  {w.name:28} students {w.first}..{w.last}  {_flags(w)}"
            + (f"  ({note})" if (note := drain_note(drains, w.name)) else "")
            for w in location.workshops.values()
        ),
    ]
    return "\n".join(lines)


def drain_note(drains: Sequence[Drain], name: str) -> str:
    found = next((d for d in drains if d.workshop in (name, queue.ALL_WORKSHOPS)), None)
    return f"drained since {when(found.since)}" if found is not None else ""


def describe_drains(drains: Sequence[Drain]) -> str:
    if not drains:
        return "drained: none (every served workshop takes CREATEs)"
    shown = ", ".join(
        f"{'every workshop' if d.workshop == queue.ALL_WORKSHOPS else d.workshop} since {when(d.since)} ({d.by})"
        for d in drains
    )
    return f"drained: {shown}"


def job_report(conn: sqlite3.Connection, job: Job, now: float) -> list[str]:
    """One job as a reply and STATUS job ID show it: its command, state, outcome or error,
    steps with their results, callbacks (a password shown as ********)."""
    command = job.command
    lines = [f"job {job.id}: {command.canonical()}"]
    state = job.state + (
        f" (not before {when(job.not_before)})" if job.state == "queued" and job.not_before > now else ""
    )
    lines.append(f"  state     {state}")
    lines.append(f"  received  {when(job.received)} by {job.door}, {command.auth}")
    if job.started is not None:
        lines.append(f"  started   {when(job.started)}   finished {when(job.finished)}")
    if job.outcome:
        lines.append(f"  outcome   {job.outcome}")
    if job.error:
        lines.append(f"  error     {job.error}")
    steps = queue.steps_of(conn, job.id)
    if steps:
        lines.append("  steps:")
    for step in steps:
        took = f"{(step.finished - step.started) * 1000:.1f} ms" if step.finished else "-"
        result = step.result if step.result is not None else ""
        text = result if isinstance(result, str) else str(result)
        head, _, rest = text.partition("\n")
        line = f"    {step.state:6} {step.name} ({took})" + (f": {head}" if head else "")
        if step.error:
            line += f"  !! {step.error}"
        lines.append(line)
        lines.extend(f"      {part}" for part in rest.splitlines())
    callbacks = queue.callbacks_of(conn, job.id)
    if callbacks:
        lines.append("  callbacks:")
    for cb in callbacks:
        body = cb.shown_body()
        line = f"    {cb.state:9} {cb.method} {cb.path} {body}"
        if cb.last_error:
            line += f"  !! {cb.last_error}"
        lines.append(line)
    return lines


def status_text(conn: sqlite3.Connection, location: Location, operands: Sequence[str], now: float) -> str:
    """STATUS, STATUS job ID, STATUS student N or STATUS workshop NAME."""
    if not operands:
        counts = queue.job_counts(conn)
        lines = ["jobs: " + ", ".join(f"{counts.get(state, 0)} {state}" for state in queue.JOB_STATES)]
        waiting = queue.oldest_waiting(conn)
        if waiting is not None:
            lines.append(f"oldest waiting: job {waiting.id} ({waiting.command.label}), {now - waiting.received:.0f} s")
        lines.append(describe_drains(queue.list_drains(conn)))
        return "\n".join(lines)
    kind, value = operands[0], operands[1]
    if kind == "job":
        job = queue.get_job(conn, int(value))
        if job is None:
            raise StepFailed(f"no job {value} (it may have been forgotten: done jobs are kept JOBKEEPDAYS)")
        return "\n".join(job_report(conn, job, now))
    if kind == "student":
        return student_status(conn, location, int(value))
    workshop = location.workshop(value)
    if workshop is None:
        raise StepFailed(f"workshop {value} is not served on location {location.name}")
    return workshop_status(conn, workshop)


def student_status(conn: sqlite3.Connection, location: Location, stdid: int) -> str:
    if not location.student_min <= stdid <= location.student_max:
        raise StepFailed(
            f"student {stdid} is outside this location's range {location.student_min}..{location.student_max}"
        )
    jobs = queue.jobs_of_student(conn, stdid, STUDENT_JOBS)
    latest = jobs[0] if jobs else None
    workshop = next((w.name for w in location.workshops.values() if w.holds(stdid)), "no workshop")
    if latest is not None and latest.command.verb == "CREATE" and latest.state in IN_USE:
        command = latest.command
        use = f"in use: {command.workshop} for customer {command.customer} (job {latest.id}, {latest.state})"
    else:
        use = "not in use"
    lines = [f"student{stdid} ({workshop}): {use}", f"last {len(jobs)} job(s):" if jobs else "no job kept"]
    for job in jobs:
        text = job.error if job.state in ("failed", "held", "cancelled") else job.outcome
        lines.append(
            f"  job {job.id:<6} {job.state:9} {when(job.received)}  {job.command.canonical()}"
            + (f"  {text}" if text else "")
        )
    return "\n".join(lines)


def workshop_status(conn: sqlite3.Connection, workshop: Workshop) -> str:
    latest = queue.latest_student_jobs(conn, workshop.first, workshop.last)
    in_use = sorted(
        (stdid, job) for stdid, job in latest.items() if job.command.verb == "CREATE" and job.state in IN_USE
    )
    drains = queue.list_drains(conn)
    note = drain_note(drains, workshop.name) or "taking CREATEs"
    size = workshop.last - workshop.first + 1
    lines = [
        f"{workshop.name}: students {workshop.first}..{workshop.last}, {_flags(workshop)}; {note}",
        f"students in use: {len(in_use)} of {size}",
    ]
    for stdid, job in in_use[:LISTED_STUDENTS]:
        lines.append(
            f"  student{stdid:<6} customer {job.command.customer:12} job {job.id:<6} {job.state:8} {when(job.received)}"
        )
    if len(in_use) > LISTED_STUDENTS:
        lines.append(f"  ... and {len(in_use) - LISTED_STUDENTS} more")
    return "\n".join(lines)


def drain_target(operands: Sequence[str]) -> str:
    """The workshop DRAIN or RESUME names, or ALL_WORKSHOPS (`all`, or nothing)."""
    return operands[1] if len(operands) == 2 else queue.ALL_WORKSHOPS


def drain_text(target: str, earlier: Drain | None) -> str:
    what = "every workshop" if target == queue.ALL_WORKSHOPS else target
    again = "RESUME all" if target == queue.ALL_WORKSHOPS else f"RESUME workshop {target}"
    head = (
        f"{what} drained"
        if earlier is None
        else f"{what} was already drained since {when(earlier.since)} ({earlier.by})"
    )
    return f"{head}: a CREATE for it is refused (451, try again later) until {again}; every other verb runs"


def resume_text(target: str, lifted: Sequence[str], remaining: Sequence[Drain]) -> str:
    if target == queue.ALL_WORKSHOPS:
        head = f"every drain lifted ({len(lifted)})" if lifted else "nothing was drained"
    else:
        head = f"{target} resumed" if lifted else f"{target} was not drained"
    if any(d.workshop == queue.ALL_WORKSHOPS for d in remaining):
        return head + "; but every workshop is still drained (DRAIN all): RESUME all takes CREATEs again"
    return head + ": CREATEs are taken again" if lifted else head


class Desk:
    """What the verbs HELP, PLAN, STATUS, DRAIN and RESUME use in the jobs process: the location,
    a reading connection and the queue's writer."""

    def __init__(self, location: Location, db_path: Path, writer: queue.Writer, verbs: VerbRegistry) -> None:
        self.location = location
        self._reader = queue.connect(db_path)
        self._writer = writer
        self._verbs = verbs

    def close(self) -> None:
        self._reader.close()

    async def help(self) -> str:
        return help_text(self.location, self._verbs, queue.list_drains(self._reader))

    async def status(self, operands: Sequence[str]) -> str:
        return status_text(self._reader, self.location, operands, time.time())

    async def drain(self, operands: Sequence[str], by: str) -> str:
        target = drain_target(operands)
        earlier = await self._writer.run(queue.drain(target, by))
        return drain_text(target, earlier)

    async def plan(self, words: Sequence[str], workshop: str | None) -> str:
        """PLAN VERB ARGS (the verb's words, the body's workshop): what that command would do,
        as wodmail.plan tells it, with the door's refusal for now when its workshop is
        drained. A command the door would refuse is planned too: the answer is its refusal
        (the PLAN itself did its work, and its job is done: nothing for an operator to mend)."""
        from wodmail.plan import make_plan, plan_text, planned_command

        try:
            command = planned_command(self.location, words, workshop, self._verbs)
        except BadCommand as exc:
            asked = " ".join(words)[:80] + (f" / {workshop[:80]}" if workshop else "")
            return (
                f"PLAN {asked} on location {self.location.name}: not planned, the door would refuse it\n\n"
                f"It would be REFUSED ({exc.smtp_code}): {exc.reason}\n"
            )
        refused_now = None
        if command.workshop is not None and self._verbs.spec(command.verb).refused_while_drained:
            drain = queue.drained(self._reader, command.workshop)
            refused_now = drain.refusal(command.workshop) if drain is not None else None
        plan = await make_plan(self.location, command, verbs=self._verbs, refused_now=refused_now)
        return plan_text(plan)

    async def resume(self, operands: Sequence[str]) -> str:
        target = drain_target(operands)
        lifted = await self._writer.run(queue.resume(target))
        return resume_text(target, lifted, queue.list_drains(self._reader))
