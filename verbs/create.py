"""CREATE: give a registered person a fresh student account with the workshop deployed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wodmail import callbacks
from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="CREATE",
    plannable=True,
    customer_email=True,
    hook="create",
    refused_while_drained=True,
    description=(
        "Set a new password, end any process the student left, reset the home, run the workshop's create"
        " scripts, deploy the workshop with the student's values (and what the scripts wrote for them), run"
        " its post-copy scripts and its create hook, report the password and activate the customer, start"
        " the student's JupyterHub server."
    ),
)


async def run(job: JobRun, services: Services) -> str:
    command = job.command
    stdid = command.stdid
    workshop = services.workshop_of(command)
    password = job.password(command.student_name)

    await job.step("set password", services.set_password, stdid, workshop, password)
    await job.step("end processes", services.homes.end_new_students_processes, stdid)
    await job.step("reset home", services.reset_home, stdid, on_disk=True)
    if services.scripts_to_compile(workshop):  # a `compile:` workshop's, compiled first as the original did
        await job.step("compile scripts", services.compile_scripts, command, workshop, stdid, password, on_disk=True)
    # The site's create scripts run before the rendering, as the original ran them: the values
    # they write for the student (ports, tokens) reach the templates.
    created = await services.run_scripts(job, workshop, "create", stdid, password)
    variables = services.template_variables(command, workshop, stdid, password, student_file=created > 0)
    files = await job.step("deploy workshop", services.deploy, stdid, workshop, variables, on_disk=True)
    await services.run_scripts(job, workshop, "post-copy", stdid, password)
    await job.step("create hook", services.run_hook, job, workshop, "create", variables, on_disk=True)
    await job.callbacks(
        "report to registration app",
        callbacks.student_password(services.dbid(stdid), command.student_name),
        callbacks.customer(command.customer, active="true"),
    )
    if created:
        # Only now: every step that read the file is recorded (the callbacks were a barrier).
        await job.step("remove student variables", services.remove_student_variables, workshop, stdid)
    if services.hub is not None:
        await job.step("start JupyterHub server", services.hub.start, command.student_name)
    return f"{workshop.name} deployed for {command.student_name} ({files})"
