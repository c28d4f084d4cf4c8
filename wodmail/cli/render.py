"""`wodmail render`: a workshop rendered for one student into a folder (no queue, directory or app)."""

from __future__ import annotations

import argparse
import sys

from wodmail.cli.common import EX_DATAERR, Subcommands
from wodmail.location import Location


def register(commands: Subcommands) -> None:
    """Add `render` to `commands`."""
    render = commands.add_parser(
        "render", help="render a workshop for one student into a folder (no queue, directory or app)"
    )
    render.add_argument("workshop", help="WKSHP-Name or CHLG-Name (a catalog folder, served or not)")
    render.add_argument("--student", type=int, required=True, metavar="N", help="the student number")
    render.add_argument("--out", help="the folder standing for the student's home (default: a new temporary one)")
    render.add_argument("--password", help="PASSSTU for varpass/ldap workshops (default: a random one, not shown)")
    render.set_defaults(handler=cmd_render)


def cmd_render(location: Location, args: argparse.Namespace) -> int:
    from pathlib import Path

    from wodmail.catalog import render_for_student
    from wodmail.errors import StepFailed

    try:
        report = render_for_student(
            location,
            args.workshop,
            args.student,
            out=Path(args.out) if args.out else None,
            password=args.password,
        )
    except StepFailed as exc:
        print(f"wodmail render: {exc}", file=sys.stderr)
        return EX_DATAERR
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"{report.workshop.name} rendered for student{report.stdid}: {report.templated} templated and "
        f"{report.copied} copied files in {report.dest}"
    )
    return 0
