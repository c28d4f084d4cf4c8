"""PURGE: take a student away from whoever had it, whatever state it is in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wodmail import callbacks
from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="PURGE",
    plannable=True,
    workshop_required=False,
    description=(
        "Stop the JupyterHub server and end its logins, rotate the password, end every process of the"
        " student, unassign"
        " the student and report the new password, erase the home."
    ),
)


async def run(job: JobRun, services: Services) -> str:
    command = job.command
    stdid = command.stdid
    workshop = services.workshop_of(command) if command.workshop else None
    password = job.password(command.student_name)

    if services.hub is not None:
        await job.step("stop JupyterHub server", services.hub.stop, command.student_name)
        await job.step("end JupyterHub logins", services.hub.sign_out, command.student_name)
    await job.step("rotate password", services.set_password, stdid, workshop, password)
    await job.step("end processes", services.homes.end_processes, stdid)
    await job.callbacks(
        "release student",
        callbacks.student_password(services.dbid(stdid), command.student_name, assigned="false"),
    )
    await job.step("erase home", services.reset_home, stdid, on_disk=True)
    return f"{command.student_name} purged"
