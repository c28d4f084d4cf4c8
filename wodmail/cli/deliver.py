"""`wodmail deliver`: one command mail on standard input, from procmail or an MTA's pipe."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys

from wodmail import queue
from wodmail.cli.common import EX_NOINPUT, EX_TEMPFAIL, Subcommands
from wodmail.errors import TryLater, exit_code_for
from wodmail.inbound import InboundMail
from wodmail.location import Location


def register(commands: Subcommands) -> None:
    """Add `deliver` to `commands`."""
    deliver = commands.add_parser("deliver", help="take one command mail on stdin")
    deliver.add_argument("-f", "--sender", help="the envelope sender (default: $SENDER)")
    deliver.set_defaults(handler=cmd_deliver)


def cmd_deliver(location: Location, args: argparse.Namespace) -> int:
    from wodmail.intake import CommandIntake

    data = sys.stdin.buffer.read(location.max_message_size + 1)
    if not data:
        print("wodmail deliver: no mail on standard input", file=sys.stderr)
        return EX_NOINPUT
    sender = args.sender or os.environ.get("SENDER", "")
    mail = InboundMail(door="deliver", peer=None, mail_from=sender, data=data)
    try:
        db_path = queue.open_database(location.state_dir)
        writer = queue.Writer(db_path, floor=location.free_space_floor)
    except (OSError, sqlite3.Error, TryLater) as exc:
        print(f"wodmail deliver: cannot open the queue: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        reply = asyncio.run(CommandIntake(location, writer).submit(mail))
    finally:
        writer.close()
    print(reply.line, file=sys.stdout if reply.accepted else sys.stderr)
    return exit_code_for(reply.code)
