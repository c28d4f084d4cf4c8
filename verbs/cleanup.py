"""CLEANUP (DELETE): end a student's workshop, report how far they got, lock them out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wodmail import callbacks
from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="CLEANUP",
    plannable=True,
    aliases=("DELETE",),
    hook="cleanup",
    description=(
        "Rotate the password (the student is locked out), stop the JupyterHub server, end the student's"
        " JupyterHub logins and every process of the student; run the workshop's cleanup scripts and its"
        " cleanup hook (they may bring"
        " the student's work back from lab containers); then compute the completion percentage and"
        " report it; a reset workshop keeps the home for RESET, any other has its home erased; finally"
        " mark the customer cleaned."
    ),
)


async def run(job: JobRun, services: Services) -> str:
    command = job.command
    stdid = command.stdid
    dbid = services.dbid(stdid)
    workshop = services.workshop_of(command)
    password = job.password(command.student_name)

    # Locked out first, then stopped: nothing of the student runs while the home is read.
    await job.step("rotate password", services.set_password, stdid, workshop, password)
    if services.hub is not None:
        await job.step("stop JupyterHub server", services.hub.stop, command.student_name)
        await job.step("end JupyterHub logins", services.hub.sign_out, command.student_name)
    await job.step("end processes", services.homes.end_processes, stdid)
    # The cleanup scripts and hook first (a container workshop copies the notebooks back out of
    # its lab there), the completion after, as the original computed it.
    if await services.run_scripts(job, workshop, "cleanup", stdid, password):
        await job.step("end processes after scripts", services.homes.end_processes, stdid)
    variables = services.template_variables(command, workshop, stdid, password)
    await job.step("cleanup hook", services.run_hook, job, workshop, "cleanup", variables, on_disk=True)
    completion = await job.step("completion", services.completion, stdid, workshop)
    await job.callbacks(
        "report completion",
        callbacks.student_password(dbid, command.student_name),
        callbacks.customer(command.customer, completionPercentage=str(completion)),
    )
    if workshop.reset:
        await job.callbacks(
            "keep student for reset",
            callbacks.student(dbid, assigned="true"),
            callbacks.customer(command.customer, active="false"),
        )
    else:
        await job.callbacks("release student", callbacks.student(dbid, assigned="false"))
        await job.step("erase home", services.reset_home, stdid, on_disk=True)
    await job.callbacks("report cleaned", callbacks.customer(command.customer, cleaned="true"))
    return f"{command.student_name} cleaned up at {completion}% of {workshop.name}"
