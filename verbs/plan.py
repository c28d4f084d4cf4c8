"""PLAN: what a command would do on this host, doing none of it (a dry run of any verb).

The Subject after PLAN is the planned command's (`PLAN CREATE 5 c5`), the body's first line
its workshop. The plan (wodmail.plan, through the desk: the door's refusal for now when the
workshop is drained) is the step's whole result, so the reply shows all of it; the outcome
is its first and last lines. A command the door would refuse is answered with the door's
refusal (the PLAN job is done: an answer, not a failure for an operator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wodmail.verbspec import VerbSpec

if TYPE_CHECKING:
    from wodmail.journal import JobRun
    from wodmail.services import Services

spec = VerbSpec(
    name="PLAN",
    student=False,
    workshop_required=False,
    operands=("WORDS...",),
    operands_required=True,
    reads_body=True,
    description=(
        "Answer with what the command after PLAN (and the body's workshop) would do on this host, doing none of"
        " it: the workshop and its flags, each student with its database id and home, every step in order, the"
        " files it would write, the scripts and hooks, the JupyterHub calls and the callbacks (a password as"
        " `<a new password>`); for a command the door would refuse, the door's refusal."
    ),
)


async def run(job: JobRun, services: Services) -> str:
    text: str = await job.step("plan", services.desk().plan, job.command.operands or (), job.command.workshop)
    lines = text.strip().splitlines()
    verdict = lines[-1]
    return f"{lines[0]}; {verdict[:1].lower()}{verdict[1:]}"
