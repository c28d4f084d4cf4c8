"""`wodmail jobs` (counts, the oldest waiting job, recent jobs and the commands dropped as
copies of one), `jobs show ID` (one job's command, steps, callbacks and copies; `cN`: one
copy), and `wodmail retry ID`."""

from __future__ import annotations

import argparse
import collections
import sqlite3
import sys
import time

from wodmail import queue
from wodmail.cli.common import EX_DATAERR, Subcommands, origin, queue_file, reader, when
from wodmail.command import Command
from wodmail.location import Location

COPY = "copy"
"""`jobs --state copy`: the commands dropped as copies of a job already taken (wodmail.queue.copies)."""


def job_or_copy(text: str) -> str:
    """`jobs show`'s argument: a job's id (N), or a copy's (cN)."""
    if not (text.isdigit() or (text[:1] == "c" and text[1:].isdigit())):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a job's id (N) or a copy's (cN)")
    return text


def register(commands: Subcommands) -> None:
    """Add `jobs` (with `jobs show`) and `retry` to `commands`."""
    jobs = commands.add_parser("jobs", help="list jobs, or show one")
    jobs.add_argument(
        "--state",
        action="append",
        default=[],
        choices=(*queue.JOB_STATES, COPY),
        help="only jobs in this state, or `copy`: the commands dropped as copies of a job (repeatable)",
    )
    jobs.add_argument("--limit", type=int, default=30, help="how many recent jobs to list (default 30)")
    jobs_sub = jobs.add_subparsers(dest="jobs_command")
    show = jobs_sub.add_parser("show", help="one job with its steps, callbacks and copies; or one copy (cN)")
    show.add_argument(
        "job_id", type=job_or_copy, help="the job's id (in the 250 answer, and in `wodmail jobs`), or cN for a copy"
    )
    jobs.set_defaults(handler=cmd_jobs)

    retry = commands.add_parser("retry", help="queue a failed or set-aside job, or its set-aside callbacks, again")
    retry.add_argument("job_id", type=int, help="the job's id")
    retry.set_defaults(handler=cmd_retry)


def cmd_jobs(location: Location, args: argparse.Namespace) -> int:
    conn = reader(location)
    if args.jobs_command == "show":
        ref = args.job_id
        return show_copy(conn, int(ref[1:])) if ref.startswith("c") else show_job(conn, int(ref))
    counts = queue.job_counts(conn)
    states = queue.JOB_STATES
    print("jobs: " + ", ".join(f"{counts.get(state, 0)} {state}" for state in states))
    copies = queue.copy_count(conn)
    if copies:
        print(f"copies: {copies} command(s) dropped as copies of a job already taken, not run (`jobs show cN`)")
    waiting = queue.oldest_waiting(conn)
    if waiting:
        print(f"oldest waiting: job {waiting.id}, queued {time.time() - waiting.received:.0f} s ago")
    print(f"{'ID':>6}  {'STATE':8} {'VERB':8} {'STUDENT':14} {'WORKSHOP':22} {'RECEIVED':19}  OUTCOME / ERROR")
    job_states = [state for state in args.state if state != COPY]
    listed = queue.list_jobs(conn, job_states, args.limit) if job_states or not args.state else []
    wanted = COPY in args.state or not args.state
    # Each copy goes above the first job it came after; the jobs keep their order.
    copies_left = collections.deque(queue.list_copies(conn, args.limit) if wanted else [])
    lines: list[str] = []
    for job in listed:
        while copies_left and copies_left[0].received > job.received:
            lines.append(copy_line(copies_left.popleft()))
        erred = job.state in ("failed", "held", "cancelled") or (job.state == "queued" and job.error)
        text = job.error if erred else job.outcome
        lines.append(f"{job.id:>6}  {job.state:8} {listed_command(job.command)} {when(job.received):19}  {text or ''}")
    lines.extend(copy_line(copy) for copy in copies_left)
    for line in lines[: args.limit]:
        print(line)
    return 0


def listed_command(command: Command) -> str:
    """The VERB, STUDENT and WORKSHOP columns of `jobs`."""
    student = f"student{command.stdid}" + (f"..{command.last_stdid}" if command.is_range else "")
    if command.operands is not None:  # HELP, STATUS, DRAIN: about no student
        student = "-"
    return f"{command.verb:8} {student:14} {command.workshop or '-':22}"


def copy_line(copy: queue.Copy) -> str:
    """A command dropped as a copy, as `jobs` lists it: cN, and the job it repeats."""
    return (
        f"{'c' + str(copy.id):>6}  {COPY:8} {listed_command(copy.command)} {when(copy.received):19}"
        f"  copy of job {copy.job_id} ({copy.reason}): not run"
    )


def show_job(conn: sqlite3.Connection, job_id: int) -> int:
    """`jobs show ID`: the job, its steps and its callbacks (their secrets masked)."""
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
    if job.reply_to is not None:
        sent = f"relayed mail {job.reply_id} (wodmail relay)" if job.reply_id is not None else "once the job ends"
        print(f"  reply     to {job.reply_to}: {sent}")
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
            body = cb.shown_body()
            line = f"    {cb.state:9} {cb.method} {cb.path} {body}  tries {cb.attempts}"
            if cb.delivered:
                line += f"  delivered {when(cb.delivered)} ({cb.delivered - job.received:.3f} s after receipt)"
            if cb.last_error:
                line += f"  !! {cb.last_error}"
            print(line)
    copies = queue.copies_of(conn, job_id)
    if copies:
        print(f'  copies (not run; each was answered "already have this command as job {job.id}"):')
        for copy in copies:
            print(
                f"    c{copy.id:<6} {when(copy.received)} by {copy.door} from {origin(copy.door, copy.peer)},"
                f" sender {copy.sender or '<>'}: {copy.reason}"
            )
    return 0


def show_copy(conn: sqlite3.Connection, copy_id: int) -> int:
    """`jobs show cN`: a command dropped as a copy, and the job it repeats."""
    copy = queue.get_copy(conn, copy_id)
    if copy is None:
        print(f"wodmail: no copy c{copy_id}", file=sys.stderr)
        return EX_DATAERR
    command = copy.command
    print(f"copy c{copy.id}: {command.canonical()}")
    print(f"  state     not run: a copy of job {copy.job_id} ({copy.reason}); `wodmail jobs show {copy.job_id}`")
    print(
        f"  received  {when(copy.received)} by {copy.door} from {origin(copy.door, copy.peer)},"
        f" sender {copy.sender or '<>'}"
    )
    print(f"  trusted   {command.auth}")
    if command.message_id:
        print(f"  message   {command.message_id}")
    return 0


def cmd_retry(location: Location, args: argparse.Namespace) -> int:
    writer = queue.Writer(queue_file(location))
    try:
        done = writer.run_sync(queue.retry(args.job_id))
    except (LookupError, ValueError) as exc:
        print(f"wodmail: {exc}", file=sys.stderr)
        return EX_DATAERR
    finally:
        writer.close()
    print(done)
    return 0
