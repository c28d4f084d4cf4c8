"""The `wodmail` command.

    wodmail [--location FILE] serve                  run the daemon (doors, worker, outbox)
    wodmail [--location FILE] deliver [-f SENDER]    take one mail on stdin (procmail / MTA pipe)
    wodmail [--location FILE] jobs [--state S]       counts, oldest waiting job, recent jobs
    wodmail [--location FILE] jobs show ID           one job: its command, steps and callbacks
    wodmail [--location FILE] retry ID               run a failed or set-aside job again, or send
                                                     its set-aside callbacks again
    wodmail [--location FILE] refused [show ID]      mails refused at the doors, and why
    wodmail [--location FILE] outbox                 callbacks waiting for the registration app
    wodmail [--location FILE] relay [retry ID|all]   mails for people passed to RELAYHOST, or
                                                     waiting; send set-aside ones again
    wodmail [--location FILE] check                  load the location and its workshops, report
    wodmail [--location FILE] render WKSHP-Name --student N [--out DIR] [--password X]
                                                     render a workshop for one student, nothing else
    wodmail [--location FILE] workshops sync [--write FILE]
                                                     the registration app's workshops against ours
    wodmail [--location FILE] send VERB ARGS... --workshop NAME [--customer C] [--email A] [--print]
                                                     compose a command mail and submit it: through
                                                     the admin socket (root), else signed over SMTP
    wodmail [--location FILE] send VERB [CUSTOMER] --range MIN,MAX --workshop NAME
                                                     the same for students MIN..MAX, one by one
                                                     (RESET: the range), as wod-test-action.sh

The location is FILE, else $WODMAIL_LOCATION, else the embedded locations/local.yaml.
Exit codes follow sysexits: 65 bad data, 75 try again later, 77 not permitted, 78 bad
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import smtplib
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wodmail import __version__, queue
from wodmail.errors import ConfigError, TryLater, exit_code_for
from wodmail.inbound import InboundMail
from wodmail.location import Location, load_location
from wodmail.verbspec import shipped_verbs

EX_DATAERR = 65
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_NOINPUT = 66
EX_USAGE = 64


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("serve", "jobs-process"):
        # `wodmail jobs | head` ends quietly; the daemon keeps Python's SIGPIPE handling
        # (a peer closing a socket must never kill it).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every SMTP line and httpx every request at INFO; their warnings are enough.
    for chatty in ("mail.log", "httpx", "httpcore"):
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
    parser = argparse.ArgumentParser(prog="wodmail", description="Mail-driven Workshops-on-Demand backend.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--location", help="the location file (default: $WODMAIL_LOCATION or the embedded local.yaml)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info"
    )
    # The metavar lists what operators run: `jobs-process` (started by `serve`) stays out of the help.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon")
    serve.set_defaults(handler=cmd_serve)

    # Started by `serve` (wodmail/jobs.py), not by operators.
    jobs_process = sub.add_parser("jobs-process")
    jobs_process.add_argument("--wake-fd", type=int, required=True, help="the pipe the doors wake it on")
    jobs_process.add_argument("--report-fd", type=int, help="the pipe it reports on (READY, heartbeats)")
    jobs_process.set_defaults(handler=cmd_jobs_process)

    deliver = sub.add_parser("deliver", help="take one command mail on stdin")
    deliver.add_argument("-f", "--sender", help="the envelope sender (default: $SENDER)")
    deliver.set_defaults(handler=cmd_deliver)

    jobs = sub.add_parser("jobs", help="list jobs, or show one")
    jobs.add_argument(
        "--state", action="append", default=[], choices=queue.JOB_STATES, help="only jobs in this state (repeatable)"
    )
    jobs.add_argument("--limit", type=int, default=30, help="how many recent jobs to list (default 30)")
    jobs_sub = jobs.add_subparsers(dest="jobs_command")
    show = jobs_sub.add_parser("show", help="one job with its steps and callbacks")
    show.add_argument("job_id", type=int, help="the job's id (in the 250 answer, and in `wodmail jobs`)")
    jobs.set_defaults(handler=cmd_jobs)

    retry = sub.add_parser("retry", help="queue a failed or set-aside job, or its set-aside callbacks, again")
    retry.add_argument("job_id", type=int, help="the job's id")
    retry.set_defaults(handler=cmd_retry)

    refused = sub.add_parser("refused", help="mails refused at the doors")
    refused.add_argument("--limit", type=int, default=30, help="how many recent refusals to list (default 30)")
    refused_sub = refused.add_subparsers(dest="refused_command")
    refused_show = refused_sub.add_parser("show", help="one refused mail: why, and its first 4 KiB")
    refused_show.add_argument("refused_id", type=int, help="the refusal's id, from `wodmail refused`")
    refused.set_defaults(handler=cmd_refused)

    prune = sub.add_parser("prune", help="forget done jobs and refused mails older than the location keeps them")
    prune.add_argument("--job-days", type=float, help="done jobs older than this many days (default: JOBKEEPDAYS)")
    prune.add_argument(
        "--refused-days", type=float, help="refused mails older than this many days (default: REFUSEDKEEPDAYS)"
    )
    prune.set_defaults(handler=cmd_prune)

    outbox = sub.add_parser("outbox", help="callbacks not yet delivered")
    outbox.set_defaults(handler=cmd_outbox)

    relay = sub.add_parser("relay", help="the app's mails for people: waiting for RELAYHOST, or passed on")
    relay.add_argument("--limit", type=int, default=30, help="how many recent mails to list (default 30)")
    relay_sub = relay.add_subparsers(dest="relay_command")
    relay_retry = relay_sub.add_parser("retry", help="send a mail the MTA kept refusing again (or all of them)")
    relay_retry.add_argument("relay_id", help="its id, or `all`")
    relay.set_defaults(handler=cmd_relay)

    check = sub.add_parser("check", help="load the location and its workshops")
    check.set_defaults(handler=cmd_check)

    render = sub.add_parser(
        "render", help="render a workshop for one student into a folder (no queue, directory or app)"
    )
    render.add_argument("workshop", help="WKSHP-Name or CHLG-Name (a catalog folder, served or not)")
    render.add_argument("--student", type=int, required=True, metavar="N", help="the student number")
    render.add_argument("--out", help="the folder standing for the student's home (default: a new temporary one)")
    render.add_argument("--password", help="PASSSTU for varpass/ldap workshops (default: a random one, not shown)")
    render.set_defaults(handler=cmd_render)

    workshops = sub.add_parser("workshops", help="the workshops file and the registration app")
    workshops_sub = workshops.add_subparsers(dest="workshops_command", required=True)
    sync = workshops_sub.add_parser("sync", help="show how the app's GET /workshops differs from the workshops file")
    sync.add_argument("--write", metavar="FILE", help="also write the workshops file the app describes to FILE")
    sync.add_argument(
        "--backend",
        action="append",
        help="compare the app's workshops located here (repeatable; default: JPHOSTEXT and JPHOST)",
    )
    sync.add_argument("--all", action="store_true", help="compare every workshop the app lists")
    sync.set_defaults(handler=cmd_workshops_sync)

    verbs = shipped_verbs()  # the verbs' own declarations (verbs/)
    send = sub.add_parser(
        "send",
        help="compose a command mail and submit it: admin socket, else signed over SMTP (wodmail/send.py)",
        epilog="verbs:\n" + "\n".join(f"  {spec.usage}" for spec in verbs.specs),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("verb", help=verbs.choices)
    send.add_argument("arguments", nargs="*", help="the Subject's arguments: STUDENT [CUSTOMER [EMAIL]] (see below)")
    send.add_argument("--workshop", help="the workshop (the mail's body), e.g. WKSHP-Ansible101")
    send.add_argument("--customer", help="the customer id, added after the positional arguments")
    emailed = " or ".join(spec.name for spec in verbs.specs if spec.customer_email)
    send.add_argument("--email", help=f"the customer's address ({emailed}), added last")
    send.add_argument("--key", help="the id of the key to sign with (default: the first of SIGNINGKEYS)")
    send.add_argument("--from", dest="sender", help="the envelope and From: sender (default: user@host)")
    send.add_argument("--to", dest="recipient", default="wodmail@localhost", help="the recipient")
    send.add_argument("--print", dest="print_only", action="store_true", help="print the mail instead of sending")
    send.add_argument("--smtp", action="store_true", help="submit over SMTP, signed, even where the admin socket is")
    send.add_argument(
        "--range",
        metavar="MIN,MAX",
        help="students MIN..MAX, as wod-test-action.sh: one command each (RESET: one for the range); the"
        " arguments are then CUSTOMER [EMAIL], before the options (default customer 0)",
    )
    send.set_defaults(handler=cmd_send)
    return parser


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


def cmd_send(location: Location, args: argparse.Namespace) -> int:
    if args.range is not None:
        return send_range(location, args)
    return send_one(location, args, list(args.arguments))


def send_range(location: Location, args: argparse.Namespace) -> int:
    """`send VERB --range MIN,MAX`: each command submitted and answered in turn (wodmail.send)."""
    from wodmail.errors import BadCommand
    from wodmail.send import RANGE_CUSTOMER, range_students

    try:
        students = range_students(location, args.verb, args.range)
    except BadCommand as exc:
        print(f"wodmail send: {exc}", file=sys.stderr)
        return EX_DATAERR
    if args.print_only:
        print("wodmail send: --range submits each command itself: it takes no --print", file=sys.stderr)
        return EX_USAGE
    rest = list(args.arguments) if args.arguments or args.customer else [RANGE_CUSTOMER]
    accepted, result = 0, 0
    for student in students:
        code = send_one(location, args, [student, *rest], label=f"student{student}: ")
        accepted += code == 0
        result = result or code
        if code == EX_TEMPFAIL:
            break  # no daemon or no door: the next ones would fail the same way
    print(f"{accepted} of {len(students)} command(s) accepted")
    return result


def send_one(location: Location, args: argparse.Namespace, arguments: list[str], label: str = "") -> int:
    """Compose one command and submit it: the admin socket, else signed over SMTP (or print it)."""
    from wodmail import admin
    from wodmail.errors import BadCommand
    from wodmail.send import ComposedMail, compose, submit

    def composed(unsigned_ok: bool) -> ComposedMail:
        return compose(
            location,
            args.verb,
            arguments,
            workshop=args.workshop,
            customer=args.customer,
            address=args.email,
            sender=args.sender,
            recipient=args.recipient,
            key_id=args.key,
            unsigned_ok=unsigned_ok,
        )

    unavailable = "--print" if args.print_only else "--smtp"
    try:
        if not args.print_only and not args.smtp:
            mail = composed(unsigned_ok=True)
            try:
                reply = admin.submit(location.state_dir, mail.as_bytes(crlf=False), args.sender or "")
            except admin.AdminUnavailable as exc:
                unavailable = str(exc)  # not root, or no daemon here: SMTP, signed
            except OSError as exc:
                print(f"wodmail send: the admin socket failed: {exc}", file=sys.stderr)
                return EX_TEMPFAIL
            else:
                print(label + reply.line, file=sys.stdout if reply.accepted else sys.stderr)
                return exit_code_for(reply.code)
        try:
            mail = composed(unsigned_ok=False)
        except ConfigError as exc:
            raise ConfigError(
                exc.file, exc.key, f"{exc.reason}; the admin socket, which needs none, is not usable ({unavailable})"
            ) from None
    except BadCommand as exc:
        print(f"wodmail send: {label}not a valid command: {exc}", file=sys.stderr)
        return EX_DATAERR
    if args.print_only:
        sys.stdout.buffer.write(mail.as_bytes(crlf=False))
        sys.stdout.flush()
        return 0
    try:
        reply = submit(location, mail, sender=args.sender, recipient=args.recipient)
    except OSError as exc:
        where = f"{location.smtp_host}:{location.smtp_port}"
        print(f"wodmail send: cannot submit to {where}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return EX_TEMPFAIL
    except smtplib.SMTPException as exc:
        print(f"wodmail send: SMTP dialogue failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    print(label + reply.line, file=sys.stdout if reply.accepted else sys.stderr)
    return exit_code_for(reply.code)


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


def reader(location: Location) -> sqlite3.Connection:
    path = location.state_dir / "queue.sqlite3"
    if not path.exists():
        raise ConfigError(location.state_dir, "STATEDIR", "holds no queue yet: has `wodmail serve` run here?")
    return queue.connect(path)


def origin(door: str, peer: str | None) -> str:
    """Where a mail came from, as `jobs show` and `refused show` say it."""
    return peer or ("the admin socket" if door == "admin" else "local pipe")


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def cmd_jobs(location: Location, args: argparse.Namespace) -> int:
    conn = reader(location)
    if args.jobs_command == "show":
        return show_job(conn, args.job_id)
    counts = queue.job_counts(conn)
    states = queue.JOB_STATES
    print("jobs: " + ", ".join(f"{counts.get(state, 0)} {state}" for state in states))
    waiting = queue.oldest_waiting(conn)
    if waiting:
        print(f"oldest waiting: job {waiting.id}, queued {time.time() - waiting.received:.0f} s ago")
    print(f"{'ID':>6}  {'STATE':8} {'VERB':8} {'STUDENT':14} {'WORKSHOP':22} {'RECEIVED':19}  OUTCOME / ERROR")
    for job in queue.list_jobs(conn, args.state, args.limit):
        command = job.command
        student = f"student{command.stdid}" + (f"..{command.last_stdid}" if command.is_range else "")
        erred = job.state in ("failed", "held", "cancelled") or (job.state == "queued" and job.error)
        text = job.error if erred else job.outcome
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
        f"  received  {when(job.received)} by {job.door} from {origin(job.door, job.peer)}, sender {job.sender or '<>'}"
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
        done = writer.run_sync(queue.retry(args.job_id))
    except (LookupError, ValueError) as exc:
        print(f"wodmail: {exc}", file=sys.stderr)
        return EX_DATAERR
    finally:
        writer.close()
    print(done)
    return 0


def cmd_prune(location: Location, args: argparse.Namespace) -> int:
    path = location.state_dir / "queue.sqlite3"
    if not path.exists():
        raise ConfigError(location.state_dir, "STATEDIR", "holds no queue yet")
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


def cmd_refused(location: Location, args: argparse.Namespace) -> int:
    conn = reader(location)
    if args.refused_command == "show":
        row = queue.get_refused(conn, args.refused_id)
        if row is None:
            print(f"wodmail: no refused mail {args.refused_id}", file=sys.stderr)
            return EX_DATAERR
        rid, received, door, peer, sender, code, reason, size, mail = row
        print(f"refused mail {rid}: {code} {reason}")
        kept = f" (the first {len(mail)} kept)" if len(mail) < size else ""
        print(
            f"  received {when(received)} by {door} from {origin(door, peer)}, sender {sender or '<>'},"
            f" {size} bytes{kept}"
        )
        print("-" * 60)
        sys.stdout.write(bytes(mail).decode("utf-8", "replace"))
        print()
        return 0
    counts = queue.refused_counts(conn)
    doors = ", ".join(f"{count} at {door}" for door, count in sorted(counts.items()))
    print(f"refused: {sum(counts.values())} mails kept" + (f" ({doors})" if doors else ""))
    print(f"{'ID':>6}  {'RECEIVED':19} {'DOOR':8} {'PEER':16} CODE REASON")
    for rid, received, door, peer, _sender, code, reason, _size in queue.list_refused(conn, args.limit):
        print(f"{rid:>6}  {when(received):19} {door:8} {peer or 'local':16} {code} {reason}")
    return 0


def cmd_outbox(location: Location, args: argparse.Namespace) -> int:
    conn = reader(location)
    counts = queue.outbox_counts(conn)
    print("callbacks: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "delivered", "failed", "expired")))
    for entry in queue.undelivered_callbacks(conn, 200):
        body = dict(entry.body)
        if entry.secret_field:
            body[entry.secret_field] = "********"
        print(
            f"  {entry.id:>6} job {entry.job_id:<6} {entry.state:8} {entry.method} {entry.path} {body}"
            f" tries {entry.attempts} next {when(entry.next_attempt)} {entry.last_error or ''}"
        )
    return 0


def cmd_relay(location: Location, args: argparse.Namespace) -> int:
    """The relayed mails: never their content (a credentials mail holds a password)."""
    if args.relay_command == "retry":
        path = location.state_dir / "queue.sqlite3"
        if not path.exists():
            raise ConfigError(location.state_dir, "STATEDIR", "holds no queue yet")
        relay_id = None if args.relay_id == "all" else int(args.relay_id) if args.relay_id.isdigit() else -1
        writer = queue.Writer(path)
        try:
            count = writer.run_sync(queue.relay_retry(relay_id))
        except (LookupError, ValueError) as exc:
            print(f"wodmail: {exc}", file=sys.stderr)
            return EX_DATAERR
        finally:
            writer.close()
        print(f"{count} mail(s) queued for RELAYHOST again; the daemon sends them within seconds")
        return 0
    conn = reader(location)
    counts = queue.relay_counts(conn)
    where = location.relay.where if location.relay.host else "not set: mails for people are refused"
    print(f"RELAYHOST {where}")
    print("mails: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "sent", "failed")))
    for entry in queue.list_relay(conn, args.limit):
        line = (
            f"  {entry.id:>6} {entry.state:7} {when(entry.received)} from {entry.peer or 'this host'} ({entry.door})"
            f" {entry.size} bytes, {len(entry.recipients)} recipient(s), tries {entry.attempts}"
        )
        if entry.state == "sent":
            line += f", passed on {when(entry.sent)}"
        elif entry.state == "pending" and entry.attempts:
            line += f", next {when(entry.next_attempt)}"
        if entry.last_error:
            line += f"  !! {entry.last_error}"
        print(line)
    return 0


def readable_secrets(location: Location) -> list[str]:
    """A warning for each file that holds a secret in clear and that others may read."""
    held: dict[Path, list[str]] = {}
    for key in location.in_clear:
        mapped = location.original.source_of(key) if location.original is not None else None
        held.setdefault(Path(mapped.origin) if mapped is not None else location.file, []).append(key)
    warnings = []
    for file, keys in held.items():
        try:
            mode = file.stat().st_mode & 0o777
        except OSError:
            continue
        if mode & 0o077:
            warnings.append(
                f"{file} holds {', '.join(keys)} in clear and is readable by others (mode {mode:04o}): make it"
                f" `chmod 600 {file}` (owned by the user wodmail runs as), or give each as env:NAME (from"
                " the unit's environment) or file:/path to a file only that user reads"
            )
    return warnings


def cmd_check(location: Location, args: argparse.Namespace) -> int:
    from wodmail.admin import socket_path
    from wodmail.daemon import prepare
    from wodmail.peers import describe_uid
    from wodmail.trust import shared_host_warnings

    # The location was loaded as `serve` loads it; now what `serve` builds from it before it
    # starts: a file that cannot be used is the same one-line error here.
    asyncio.run(prepare(location))
    print(f"location {location.name}: {location.file}")
    print(f"  settings: all checked; {len(location.signing.keys)} signing key(s)")
    print(
        f"  doors: SMTP {location.smtp_host}:{location.smtp_port}, legacy {location.legacy_port or 'closed'}, "
        f"admin socket {socket_path(location.state_dir)}"
    )
    print(
        "  unsigned commands from: "
        + ", ".join(str(net) for net in location.trusted_peers)
        + (
            ", `local` (deliver: when the MTA's Received header names one of those, off this host)"
            if location.trust_local
            else ""
        )
        + "; from this host only by "
        + ", ".join(describe_uid(uid) for uid in sorted(location.local_peer_uids))
    )
    # On stderr, loud, and apart from the report: they are about this host, not the files.
    for warning in shared_host_warnings(location):
        print(f"WARNING: {warning}", file=sys.stderr)
    for warning in readable_secrets(location):
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"  state {location.state_dir}, homes {location.student_dir}, workshops {location.workshop_dir}")
    print(f"  students {location.student_min}..{location.student_max}, BASESTDID {location.base_stdid}")
    print(
        f"  callbacks: {location.api_endpoint or 'off (APIENDPOINT not set)'}; JupyterHub: {location.hub_url or 'off'}"
    )
    relay = location.relay
    print(
        f"  mails for people: {f'relayed to {relay.where}' if relay.host else 'refused (RELAYHOST not set)'};"
        f" a CREATE must be done within {location.jobs.app_deadline:g} s (APPDEADLINE)"
    )
    if location.original is not None:  # the keys taken from the original backend's files and names
        for line in location.original.report():
            print(f"  {line}")
    for workshop in location.workshops.values():
        flags = [flag for flag in ("reset", "ldap", "varpass") if getattr(workshop, flag)]
        hooks = ",".join(sorted(workshop.hooks)) or "no hooks"
        print(
            f"  {workshop.name:24} {workshop.first}..{workshop.last}  {' '.join(flags) or '-':18} {hooks}"
            f"  <- {workshop.content}"
        )
    return check_catalog(location)


def check_catalog(location: Location) -> int:
    """`check`, continued: what is known but not served, the warnings, and every served
    workshop's templates compiled (a template error would fail its CREATEs)."""
    from wodmail.errors import StepFailed
    from wodmail.workshop import Renderer

    for name, reason in sorted(location.not_served.items()):
        print(f"  {name:24} not served: {reason}")
    for warning in location.warnings:
        print(f"warning: {warning}")
    renderer = Renderer.for_location(location)
    failed = 0
    warned = list(location.warnings)
    for workshop in location.workshops.values():
        try:
            compiled = renderer.workshop(workshop.content)
        except StepFailed as exc:
            print(f"error: {workshop.name}: {exc}")
            failed += 1
            continue
        for warning in compiled.warnings:  # e.g. a notebook deployed as it was in the catalog
            print(f"warning: {warning}")
            warned.append(warning)
    served = len(location.workshops)
    print(
        f"{served} workshop(s) served, {len(location.not_served)} known but not served, "
        f"{len(warned)} warning(s), {failed} with template errors"
    )
    return EX_DATAERR if failed else 0


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


def cmd_workshops_sync(location: Location, args: argparse.Namespace) -> int:
    """Exit 0: no difference; 1: differences shown; 75: the app could not be read."""
    import yaml

    from wodmail import sync
    from wodmail.errors import AppRefused, StepFailed, TransientError
    from wodmail.regapp import RegistrationApp
    from wodmail.transport import HttpClient

    if not location.api_endpoint:
        raise ConfigError(location.file, "APIENDPOINT", "not set: there is no registration app to compare with")
    endpoint, user, password = location.api_endpoint, location.api_user or "", location.api_password or ""

    async def fetch() -> list[dict[str, object]]:
        client = HttpClient(timeout=30.0)
        try:
            return await RegistrationApp(endpoint, user, password, client).workshops()
        finally:
            await client.aclose()

    try:
        listing = sync.parse_listing(asyncio.run(fetch()))
    except (TransientError, StepFailed, AppRefused) as exc:
        print(f"wodmail workshops sync: cannot read {endpoint}/workshops: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    names = None if args.all else args.backend or list(location.backend_names)
    listed, kept = sync.for_backend(listing, names)
    local_file = sync.workshops_file(location)
    print(f"workshops file {local_file}: {len(location.workshops)} workshops; registration app: {kept}")
    differences = sync.compare(location.workshops, listed)
    for difference in differences:
        print(f"  {difference}")
    print(f"{len(differences)} difference(s); {local_file} is unchanged")
    if args.write:
        target = os.path.abspath(os.path.expanduser(args.write))
        if os.path.exists(target) and os.path.samefile(target, local_file):
            print("wodmail workshops sync: --write must name another file than the workshops file", file=sys.stderr)
            return EX_DATAERR
        raw = yaml.safe_load(local_file.read_text(encoding="utf-8")) or {}
        text = yaml.safe_dump(sync.propose(raw, listed), sort_keys=False, allow_unicode=True, default_flow_style=None)
        with open(target + ".tmp", "w", encoding="utf-8") as out:
            out.write(f"# proposed by `wodmail workshops sync` from {endpoint}/workshops: review before use\n{text}")
        os.replace(target + ".tmp", target)
        print(f"proposed workshops file written to {target}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
