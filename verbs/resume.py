"""RESUME: take CREATEs for a drained workshop (or every one) again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="RESUME",
    student=False,
    workshop_required=False,
    operands=("workshop NAME", "all"),
    description="Lift DRAIN for the workshop (alone: every drain): its CREATEs are taken again.",
)


async def run(job: JobRun, services: Services) -> str:
    text: str = await job.step("resume", services.desk().resume, job.command.operands or ())
    return text
