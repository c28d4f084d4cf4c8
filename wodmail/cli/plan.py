"""`wodmail plan VERB ARGS... [--workshop NAME] [--json]`: what a command would do, doing nothing
of it (a dry run, wodmail.plan): the plan on standard output; exit 0, 1 when the plan says the
command would fail, 65 (and the door's refusal on standard error) for a command the door
would refuse."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from wodmail.cli.common import EX_DATAERR, Subcommands
from wodmail.location import Location
from wodmail.verbspec import shipped_verbs

EX_WOULD_FAIL = 1
"""The plan says the command would fail (its last step names why)."""


def register(commands: Subcommands) -> None:
    """Add `plan` to `commands`."""
    plan = commands.add_parser(
        "plan",
        help="what a command would do, without doing any of it (a dry run)",
        description="The same words as a command mail's Subject (and `wodmail send`); nothing is changed,"
        " queued or called.",
    )
    plannable = [
        f"{spec.name} ({', '.join(spec.aliases)})" if spec.aliases else spec.name
        for spec in shipped_verbs().specs
        if spec.plannable
    ]
    plan.add_argument("verb", help=", ".join(plannable[:-1]) + f" or {plannable[-1]}" if plannable else "none")
    plan.add_argument("arguments", nargs="*", help="the Subject's arguments: STUDENT CUSTOMER [EMAIL]")
    plan.add_argument("--workshop", help="the workshop (the mail's body), e.g. WKSHP-Ansible101")
    plan.add_argument("--json", action="store_true", help="the plan as JSON")
    plan.set_defaults(handler=cmd_plan)


def cmd_plan(location: Location, args: argparse.Namespace) -> int:
    from wodmail.errors import BadCommand
    from wodmail.plan import make_plan, plan_text, planned_command

    try:
        command = planned_command(location, [args.verb, *args.arguments], args.workshop)
    except BadCommand as exc:
        print(f"wodmail plan: {exc.reason}", file=sys.stderr)
        return EX_DATAERR
    plan = asyncio.run(make_plan(location, command))
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
    else:
        print(plan_text(plan), end="")
    return 0 if plan.failure is None else EX_WOULD_FAIL
