"""CLEANUP (DELETE): end a student's workshop, report how far they got, lock them out."""

from __future__ import annotations

from wodmail import regapp
from wodmail.services import JobRun, Services

name = "CLEANUP"
argument_description = "<stdid> <customer-id>; body: the workshop"
description = (
    "Compute the completion percentage, run the cleanup hook, rotate the password, report the"
    " percentage, stop the JupyterHub server; a reset workshop keeps the home for RESET, any other"
    " has its home erased and its processes ended; finally mark the customer cleaned."
)


async def run(job: JobRun, services: Services) -> str:
    command = job.command
    stdid = command.stdid
    dbid = services.dbid(stdid)
    workshop = services.workshop_of(command)
    password = job.password(command.student_name)
    variables = services.template_variables(command, workshop, stdid, password)

    completion = await job.step("completion", services.completion, stdid, workshop)
    await job.step("cleanup hook", services.run_hook, job, workshop, "cleanup", variables)
    await job.step("rotate password", services.set_password, stdid, workshop, password)
    await job.callbacks(
        "report completion",
        services,
        regapp.student_password(dbid, command.student_name),
        regapp.customer(command.customer, completionPercentage=str(completion)),
    )
    if services.hub is not None:
        await job.step("stop JupyterHub server", services.hub.stop, command.student_name)
    if workshop.reset:
        await job.callbacks(
            "keep student for reset",
            services,
            regapp.student(dbid, assigned="true"),
            regapp.customer(command.customer, active="false"),
        )
    else:
        await job.callbacks("release student", services, regapp.student(dbid, assigned="false"))
        await job.step("erase home", services.homes.reset, stdid)
        await job.step("end processes", services.homes.end_processes, stdid)
    await job.callbacks("report cleaned", services, regapp.customer(command.customer, cleaned="true"))
    return f"{command.student_name} cleaned up at {completion}% of {workshop.name}"
