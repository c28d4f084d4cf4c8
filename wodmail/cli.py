"""The `wodmail` command.

    wodmail [--location FILE] serve                  run the daemon (doors, worker, outbox)
    wodmail [--location FILE] deliver [-f SENDER]    take one mail on stdin (procmail / MTA pipe)
    wodmail [--location FILE] jobs [--state S]       counts, oldest waiting job, recent jobs
    wodmail [--location FILE] jobs show ID           one job: its command, steps and callbacks
    wodmail [--location FILE] retry ID               run a failed or set-aside job again
    wodmail [--location FILE] refused [show ID]      mails refused at the doors, and why
    wodmail [--location FILE] outbox                 callbacks waiting for the registration app
    wodmail [--location FILE] check                  load the location and its workshops, report

The location is FILE, else $WODMAIL_LOCATION, else the embedded locations/local.yaml.
Exit codes follow sysexits: 65 bad data, 75 try again later, 77 not permitted, 78 bad
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Sequence

from wodmail import queue
from wodmail.errors import ConfigError, TryLater
from wodmail.inbound import InboundMail
from wodmail.location import Location, load_location

EX_DATAERR = 65
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
EX_NOINPUT = 66


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every SMTP line at INFO; its warnings are enough.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))
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
    parser = argparse.ArgumentParser(prog="wodmail", description="Mail-driven Workshops-on-Demand backend.")
    parser.add_argument("--location", help="the location file (default: $WODMAIL_LOCATION or the embedded local.yaml)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.set_defaults(handler=cmd_serve)

    deliver = sub.add_parser("deliver", help="take one command mail on stdin")
    deliver.add_argument("-f", "--sender", help="the envelope sender (default: $SENDER)")
    deliver.set_defaults(handler=cmd_deliver)

    jobs = sub.add_parser("jobs", help="list jobs, or show one")
    jobs.add_argument("--state", action="append", default=[], help="only jobs in this state (repeatable)")
    jobs.add_argument("--limit", type=int, default=30)
    jobs_sub = jobs.add_subparsers(dest="jobs_command")
    show = jobs_sub.add_parser("show", help="one job with its steps and callbacks")
    show.add_argument("job_id", type=int)
    jobs.set_defaults(handler=cmd_jobs)

    retry = sub.add_parser("retry", help="queue a failed or set-aside job again")
    retry.add_argument("job_id", type=int)
    retry.set_defaults(handler=cmd_retry)

    refused = sub.add_parser("refused", help="mails refused at the doors")
    refused.add_argument("--limit", type=int, default=30)
    refused_sub = refused.add_subparsers(dest="refused_command")
    refused_show = refused_sub.add_parser("show", help="one refused mail, whole")
    refused_show.add_argument("refused_id", type=int)
    refused.set_defaults(handler=cmd_refused)

    outbox = sub.add_parser("outbox", help="callbacks not yet delivered")
    outbox.set_defaults(handler=cmd_outbox)

    check = sub.add_parser("check", help="load the location and its workshops")
    check.set_defaults(handler=cmd_check)
    return parser


def cmd_serve(location: Location, args: argparse.Namespace) -> int:
    from wodmail.daemon import serve

    asyncio.run(serve(location))
    return 0


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
        writer = queue.Writer(db_path)
    except (OSError, sqlite3.Error, TryLater) as exc:
        print(f"wodmail deliver: cannot open the queue: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        reply = asyncio.run(CommandIntake(location, writer).submit(mail))
    finally:
        writer.close()
    print(reply.line, file=sys.stdout if reply.accepted else sys.stderr)
    if reply.accepted:
        return 0
    return {550: EX_NOPERM, 554: EX_DATAERR, 552: EX_DATAERR}.get(reply.code, EX_TEMPFAIL)


def reader(location: Location) -> sqlite3.Connection:
    path = location.state_dir / "queue.sqlite3"
    if not path.exists():
        raise ConfigError(location.state_dir, "STATEDIR", "holds no queue yet: has `wodmail serve` run here?")
    return queue.connect(path)


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def cmd_jobs(location: Location, args: argparse.Namespace) -> int:
    conn = reader(location)
    if args.jobs_command == "show":
        return show_job(conn, args.job_id)
    counts = queue.job_counts(conn)
    states = ("queued", "running", "done", "failed", "held")
    print("jobs: " + ", ".join(f"{counts.get(state, 0)} {state}" for state in states))
    waiting = conn.execute("SELECT id, received FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
    if waiting:
        print(f"oldest waiting: job {waiting[0]}, queued {time.time() - waiting[1]:.0f} s ago")
    print(f"{'ID':>6}  {'STATE':8} {'VERB':8} {'STUDENT':14} {'WORKSHOP':22} {'RECEIVED':19}  OUTCOME / ERROR")
    for job in queue.list_jobs(conn, args.state, args.limit):
        command = job.command
        student = f"student{command.stdid}" + (f"..{command.last_stdid}" if command.is_range else "")
        text = job.error if job.state in ("failed", "held") or (job.state == "queued" and job.error) else job.outcome
        print(
            f"{job.id:>6}  {job.state:8} {command.verb:8} {student:14} {command.workshop or '-':22}"
            f" {when(job.received):19}  {text or ''}"
        )
    return 0


def show_job(conn: sqlite3.Connection, job_id: int) -> int:
    job = queue.get_job(conn, job_id)
    if job is None:
        print(f"wodmail: no job {job_id}", file=sys.stderr)
        return EX_DATAERR
    command = job.command
    print(f"job {job.id}: {command.canonical()}")
    print(
        f"  state     {job.state}" + (f" (not before {when(job.not_before)})" if job.not_before > time.time() else "")
    )
    print(
        f"  received  {when(job.received)} by {job.door} from {job.peer or 'local pipe'}, sender {job.sender or '<>'}"
    )
    print(f"  trusted   {command.auth}")
    if command.message_id:
        print(f"  message   {command.message_id}")
    print(f"  attempts  {job.attempts} (interrupted {job.crashes}, transient retries {job.retries})")
    print(f"  started   {when(job.started)}   finished {when(job.finished)}")
    if job.outcome:
        print(f"  outcome   {job.outcome}")
    if job.error:
        print(f"  error     {job.error}")
    steps = queue.steps_of(conn, job_id)
    print("  steps:")
    for step in steps:
        took = f"{(step.finished - step.started) * 1000:.1f} ms" if step.finished else "-"
        line = f"    {step.state:6} {step.name:32} {when(step.started)}  {took:>10}  tries {step.attempts}"
        if step.result is not None:
            line += f"  -> {step.result}"
        if step.error:
            line += f"  !! {step.error}"
        print(line)
    callbacks = queue.callbacks_of(conn, job_id)
    if callbacks:
        print("  callbacks:")
        for cb in callbacks:
            body = dict(cb.body)
            if cb.secret_field:
                body[cb.secret_field] = "********"
            line = f"    {cb.state:9} {cb.method} {cb.path} {body}  tries {cb.attempts}"
            if cb.delivered:
                line += f"  delivered {when(cb.delivered)} ({cb.delivered - job.received:.3f} s after receipt)"
            if cb.last_error:
                line += f"  !! {cb.last_error}"
            print(line)
    return 0


def cmd_retry(location: Location, args: argparse.Namespace) -> int:
    path = location.state_dir / "queue.sqlite3"
    if not path.exists():
        raise ConfigError(location.state_dir, "STATEDIR", "holds no queue yet")
    writer = queue.Writer(path)
    try:
        previous = writer.run_sync(queue.retry(args.job_id))
    except (LookupError, ValueError) as exc:
        print(f"wodmail: {exc}", file=sys.stderr)
        return EX_DATAERR
    finally:
        writer.close()
    print(f"job {args.job_id} was {previous}: queued again; the daemon takes it within seconds")
    return 0


def cmd_refused(location: Location, args: argparse.Namespace) -> int:
    conn = reader(location)
    if args.refused_command == "show":
        row = queue.get_refused(conn, args.refused_id)
        if row is None:
            print(f"wodmail: no refused mail {args.refused_id}", file=sys.stderr)
            return EX_DATAERR
        rid, received, door, peer, sender, code, reason, size, mail = row
        print(f"refused mail {rid}: {code} {reason}")
        print(
            f"  received {when(received)} by {door} from {peer or 'local pipe'}, sender {sender or '<>'}, {size} bytes"
        )
        print("-" * 60)
        sys.stdout.write(bytes(mail).decode("utf-8", "replace"))
        print()
        return 0
    print(f"{'ID':>6}  {'RECEIVED':19} {'DOOR':8} {'PEER':16} CODE REASON")
    for rid, received, door, peer, _sender, code, reason, _size in queue.list_refused(conn, args.limit):
        print(f"{rid:>6}  {when(received):19} {door:8} {peer or 'local':16} {code} {reason}")
    return 0


def cmd_outbox(location: Location, args: argparse.Namespace) -> int:
    conn = reader(location)
    counts = queue.outbox_counts(conn)
    print("callbacks: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "delivered", "failed")))
    rows = conn.execute(
        f"SELECT {queue.OUTBOX_COLUMNS} FROM outbox WHERE state != 'delivered' ORDER BY id LIMIT 200"
    ).fetchall()
    for entry in map(queue.outbox_from_row, rows):
        body = dict(entry.body)
        if entry.secret_field:
            body[entry.secret_field] = "********"
        print(
            f"  {entry.id:>6} job {entry.job_id:<6} {entry.state:8} {entry.method} {entry.path} {body}"
            f" tries {entry.attempts} next {when(entry.next_attempt)} {entry.last_error or ''}"
        )
    return 0


def cmd_check(location: Location, args: argparse.Namespace) -> int:
    print(f"location {location.name}: {location.file}")
    print(f"  doors: SMTP {location.smtp_host}:{location.smtp_port}, legacy {location.legacy_port or 'closed'}")
    print(f"  state {location.state_dir}, homes {location.student_dir}, workshops {location.workshop_dir}")
    print(f"  students {location.student_min}..{location.student_max}, BASESTDID {location.base_stdid}")
    print(
        f"  callbacks: {location.api_endpoint or 'off (APIENDPOINT not set)'}; JupyterHub: {location.hub_url or 'off'}"
    )
    for workshop in location.workshops.values():
        flags = [flag for flag in ("reset", "ldap", "varpass") if getattr(workshop, flag)]
        hooks = ",".join(sorted(workshop.hooks)) or "no hooks"
        print(
            f"  {workshop.name:24} {workshop.first}..{workshop.last}  {' '.join(flags) or '-':18} {hooks}"
            f"  <- {workshop.content}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
