"""RESET: bring the students of a reset workshop back to a clean state, one or a range."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from wodmail import callbacks
from wodmail.errors import StepFailed
from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="RESET",
    plannable=True,
    student_range=True,
    reset_only=True,
    hook="reset",
    description=(
        "Rotate every student's password (all at once), stop each JupyterHub server and end its logins;"
        " end every process of"
        " every student (all at once); then run the workshop's reset scripts (for each student) and its reset"
        " hook (a script or a hook is required); then for each student: unassign, erase the home; a range"
        " also sets the workshop's capacity back to the range's size."
    ),
)


async def run(job: JobRun, services: Services) -> str:
    command = job.command
    workshop = services.workshop_of(command)
    refusal = spec.refusal(command, workshop)
    if refusal is not None:
        # Intake refuses this; the workshops file may have changed since the mail was taken.
        raise StepFailed(refusal)
    if "reset" not in workshop.hooks and not services.workshop_scripts(workshop, "reset"):
        raise StepFailed(
            f"RESET of {workshop.name} needs a reset script (reset-{workshop.content_name}.sh in SCRIPTDIR or"
            " SCRIPTPRIVDIR) or a reset hook, and the workshop has neither"
        )

    async def rotate(stdid: int) -> None:
        password = job.password(f"student{stdid}")
        await job.step(f"rotate password student{stdid}", services.set_password, stdid, workshop, password)

    # All at once: a range's host passwords go to /etc/shadow in one chpasswd run (wodmail.accounts).
    rotations = await asyncio.gather(*(rotate(stdid) for stdid in command.students), return_exceptions=True)
    for failure in rotations:
        if isinstance(failure, BaseException):
            raise failure
    for stdid in command.students:
        if services.hub is not None:
            await job.step(f"stop JupyterHub server student{stdid}", services.hub.stop, f"student{stdid}")
            await job.step(f"end JupyterHub logins student{stdid}", services.hub.sign_out, f"student{stdid}")
    await job.step("end processes", services.homes.end_processes_of, list(command.students))

    # The site's reset scripts, once per student (each with its own stdid, randompw, WODRTARGET).
    ran = 0
    for stdid in command.students:
        ran += await services.run_scripts(job, workshop, "reset", stdid, job.password(f"student{stdid}"))
    if ran:
        await job.step("end processes after scripts", services.homes.end_processes_of, list(command.students))
    variables = services.template_variables(command, workshop, command.stdid, job.password(command.student_name))
    variables.update(STDIDMIN=command.stdid, STDIDMAX=command.last_stdid)
    await job.step("reset hook", services.run_hook, job, workshop, "reset", variables, on_disk=True)

    for stdid in command.students:
        await job.callbacks(f"release student{stdid}", callbacks.student(services.dbid(stdid), assigned="false"))
        await job.step(f"erase home student{stdid}", services.reset_home, stdid, on_disk=True)

    if command.is_range:
        capacity = command.last_stdid - command.stdid + 1
        workshop_id = workshop.app_id
        if workshop_id is None:
            workshop_id = await job.step("find workshop id", services.find_workshop_id, workshop)
        await job.callbacks("reset capacity", callbacks.workshop(workshop_id, capacity=str(capacity)))
    count = len(command.students)
    return f"{count} student(s) of {workshop.name} reset"
