"""The `wodmail` command's parser and entry point (`main`, the console script).

Every subcommand module has a `register(commands)` that adds its parser(s) and sets its
handler; SUBCOMMANDS lists them in the order `wodmail --help` shows them. Registering a new
subcommand is one line here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from wodmail import __version__
from wodmail.cli import (
    check,
    deliver,
    desk,
    jobs,
    outbox,
    plan,
    prune,
    refused,
    relay,
    render,
    send,
    serve,
    workshops,
)
from wodmail.cli.common import EX_CONFIG, Subcommands
from wodmail.errors import ConfigError
from wodmail.location import load_location

SUBCOMMANDS: tuple[Callable[[Subcommands], None], ...] = (
    serve.register,  # serve, jobs-process
    deliver.register,
    jobs.register,  # jobs [show ID], retry
    refused.register,
    prune.register,
    outbox.register,
    relay.register,
    desk.register,  # help, status, drain, resume
    check.register,
    render.register,
    workshops.register,
    send.register,
    plan.register,
)
"""Each subcommand module's `register`, in help order."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `wodmail` command with `argv` (default: the process's); its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.keeps_sigpipe:
        # `wodmail jobs | head` ends quietly; the daemon keeps Python's SIGPIPE handling
        # (a peer closing a socket must never kill it).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every SMTP line at INFO; its warnings are enough.
    for chatty in ("mail.log",):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        location = load_location(args.location or os.environ.get("WODMAIL_LOCATION") or None)
        result: int = args.handler(location, args)
        return result
    except ConfigError as exc:
        print(f"wodmail: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global options, then every subcommand of SUBCOMMANDS."""
    parser = argparse.ArgumentParser(prog="wodmail", description="Mail-driven Workshops-on-Demand backend.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--location", help="the location file (default: $WODMAIL_LOCATION or the embedded local.yaml)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info"
    )
    # A daemon sets keeps_sigpipe=True (wodmail.cli.serve); every other subcommand dies quietly on a closed pipe.
    parser.set_defaults(keeps_sigpipe=False)
    # The metavar lists what operators run: `jobs-process` (started by `serve`) stays out of the help.
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(commands)
    return parser
