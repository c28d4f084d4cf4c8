"""STATUS: a job by the id its acknowledgement gave, a student's last jobs, a workshop's
students in use, or (alone) the queue's counts and the drained workshops."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="STATUS",
    student=False,
    workshop_required=False,
    operands=("job ID", "student N", "workshop NAME"),
    description=(
        "Answer with a job's state, outcome, steps and callbacks (`job` and the id in its 250 answer), a"
        " student's last jobs and what it is in use for, a workshop's students in use, or alone the jobs by"
        " state and the drained workshops."
    ),
)


async def run(job: JobRun, services: Services) -> str:
    text: str = await job.step("status", services.desk().status, job.command.operands or ())
    return text.partition("\n")[0]
