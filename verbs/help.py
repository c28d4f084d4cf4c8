"""HELP: the verbs this host takes, with their arguments, and the workshops it serves."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="HELP",
    student=False,
    workshop_required=False,
    description=(
        "Answer with the verbs and their arguments (this table) and the workshops this host serves with their"
        " students' ranges."
    ),
)


async def run(job: JobRun, services: Services) -> str:
    text: str = await job.step("help", services.desk().help)
    return text.partition("\n")[0]
