"""`wodmail help`, `status`, `drain` and `resume`: what the verbs HELP, STATUS, DRAIN and
RESUME answer by mail, said on the command line, from the same functions (wodmail.reports).

    wodmail help                                          the verbs and the workshops served
    wodmail status [job ID | student N | workshop NAME]   a job, a student, a workshop, or the queue
    wodmail drain [workshop NAME | all]                   refuse its CREATEs (451) until resume
    wodmail resume [workshop NAME | all]

Their words are the verbs' own (VerbSpec.operands, read by the same parser as a Subject).
`drain` and `resume` write to the queue database directly, as `retry` does: the doors read
the drains in the transaction that would queue a CREATE, so the daemon needs no word.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from wodmail import queue
from wodmail.cli.common import EX_DATAERR, Subcommands, queue_file, reader
from wodmail.command import parse_operands
from wodmail.errors import BadCommand, StepFailed
from wodmail.location import Location
from wodmail.peers import describe_uid
from wodmail.reports import drain_target, drain_text, help_text, resume_text, status_text
from wodmail.verbspec import shipped_verbs


def register(commands: Subcommands) -> None:
    """Add `help`, `status`, `drain` and `resume` to `commands`."""
    verbs = shipped_verbs()
    shown = commands.add_parser("help", help="the verbs with their arguments and the workshops served (as HELP)")
    shown.set_defaults(handler=cmd_help)
    for name, handler, what in (
        ("status", cmd_status, "a job, a student's last jobs, a workshop's students in use, or the queue (as STATUS)"),
        ("drain", cmd_drain, "refuse a workshop's CREATEs (451) until `resume` (as DRAIN)"),
        ("resume", cmd_resume, "take a drained workshop's CREATEs again (as RESUME)"),
    ):
        spec = verbs.spec(name.upper())
        parser = commands.add_parser(name, help=what)
        parser.add_argument("words", nargs="*", metavar="WORDS", help=spec.argument_description.partition(";")[0])
        parser.set_defaults(handler=handler)


def operands(verb: str, words: list[str], location: Location) -> tuple[str, ...]:
    """The words as the verb's Subject would take them; `BadCommand` when they do not fit, or
    name a workshop this location does not serve."""
    found, workshop = parse_operands(shipped_verbs().spec(verb), words)
    if workshop is not None and location.workshop(workshop) is None:
        raise BadCommand(f"unknown workshop {workshop!r} on location {location.name}")
    return found


def cmd_help(location: Location, args: argparse.Namespace) -> int:
    path = location.state_dir / "queue.sqlite3"
    drains: list[queue.Drain] = []
    if path.exists():
        conn = queue.connect(path)
        try:
            drains = queue.list_drains(conn)
        finally:
            conn.close()
    print(help_text(location, shipped_verbs(), drains))
    return 0


def cmd_status(location: Location, args: argparse.Namespace) -> int:
    try:
        words = operands("STATUS", args.words, location)
        conn = reader(location)
        try:
            print(status_text(conn, location, words, time.time()))
        finally:
            conn.close()
    except (BadCommand, StepFailed) as exc:
        print(f"wodmail status: {exc}", file=sys.stderr)
        return EX_DATAERR
    return 0


def cmd_drain(location: Location, args: argparse.Namespace) -> int:
    try:
        target = drain_target(operands("DRAIN", args.words, location))
    except BadCommand as exc:
        print(f"wodmail drain: {exc}", file=sys.stderr)
        return EX_DATAERR
    writer = queue.Writer(queue_file(location))
    try:
        earlier = writer.run_sync(queue.drain(target, f"wodmail drain, {describe_uid(os.geteuid())}"))
    finally:
        writer.close()
    print(drain_text(target, earlier))
    return 0


def cmd_resume(location: Location, args: argparse.Namespace) -> int:
    try:
        target = drain_target(operands("RESUME", args.words, location))
    except BadCommand as exc:
        print(f"wodmail resume: {exc}", file=sys.stderr)
        return EX_DATAERR
    path = queue_file(location)
    writer = queue.Writer(path)
    try:
        lifted = writer.run_sync(queue.resume(target))
    finally:
        writer.close()
    conn = queue.connect(path)
    try:
        remaining = queue.list_drains(conn)
    finally:
        conn.close()
    print(resume_text(target, lifted, remaining))
    return 0
