"""`wodmail prune`: forget old done jobs and refused mails now (the jobs process does it hourly)."""

from __future__ import annotations

import argparse

from wodmail import queue
from wodmail.cli.common import Subcommands, queue_file
from wodmail.location import Location


def register(commands: Subcommands) -> None:
    """Add `prune` to `commands`."""
    prune = commands.add_parser("prune", help="forget done jobs and refused mails older than the location keeps them")
    prune.add_argument("--job-days", type=float, help="done jobs older than this many days (default: JOBKEEPDAYS)")
    prune.add_argument(
        "--refused-days", type=float, help="refused mails older than this many days (default: REFUSEDKEEPDAYS)"
    )
    prune.set_defaults(handler=cmd_prune)


def cmd_prune(location: Location, args: argparse.Namespace) -> int:
    path = queue_file(location)
    job_days = location.job_keep_days if args.job_days is None else args.job_days
    refused_days = location.refused_keep_days if args.refused_days is None else args.refused_days
    writer = queue.Writer(path)
    try:
        jobs, refused = queue.prune_old(writer, job_days, refused_days)
    finally:
        writer.close()
    print(
        f"forgot {jobs} done jobs older than {job_days:g} days"
        f" and {refused} refused mails older than {refused_days:g} days"
    )
    return 0
