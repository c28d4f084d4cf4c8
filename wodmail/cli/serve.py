"""`wodmail serve`: the daemon; and `wodmail jobs-process`, the process `serve` starts beside it."""

from __future__ import annotations

import argparse
import asyncio
import logging

from wodmail.cli.common import Subcommands
from wodmail.location import Location


def register(commands: Subcommands) -> None:
    """Add `serve`, and `jobs-process` (kept out of the help), to `commands`."""
    serve = commands.add_parser("serve", help="run the daemon")
    serve.set_defaults(handler=cmd_serve, keeps_sigpipe=True)

    # Started by `serve` (wodmail/jobs.py), not by operators.
    jobs_process = commands.add_parser("jobs-process")
    jobs_process.add_argument("--wake-fd", type=int, required=True, help="the pipe the doors wake it on")
    jobs_process.add_argument("--report-fd", type=int, help="the pipe it reports on (READY, heartbeats)")
    jobs_process.set_defaults(handler=cmd_jobs_process, keeps_sigpipe=True)


def cmd_jobs_process(location: Location, args: argparse.Namespace) -> int:
    from wodmail.jobs import run_jobs

    asyncio.run(run_jobs(location, args.wake_fd, args.report_fd))
    return 0


def cmd_serve(location: Location, args: argparse.Namespace) -> int:
    from wodmail.daemon import serve

    for warning in location.warnings:
        logging.getLogger("wodmail.location").warning("%s", warning)
    asyncio.run(serve(location))  # logs the shared-host warnings (wodmail.trust) itself
    return 0
