"""DRAIN: stop taking CREATEs for a workshop (or every one) until RESUME; the rest runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="DRAIN",
    student=False,
    workshop_required=False,
    operands=("workshop NAME", "all"),
    description=(
        "Refuse every CREATE for the workshop (alone: for every workshop) at the door, 451 with the reason and"
        " recorded, until RESUME; every other verb runs, and jobs already queued run. Kept across restarts."
    ),
)


async def run(job: JobRun, services: Services) -> str:
    by = f"job {job.id}, {job.command.auth}"
    text: str = await job.step("drain", services.desk().drain, job.command.operands or (), by)
    return text
