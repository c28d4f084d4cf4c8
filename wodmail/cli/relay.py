"""`wodmail relay`: the app's mails for people, waiting for RELAYHOST or passed on (never their
content: a credentials mail holds a password); `relay retry ID|all` sends set-aside ones again."""

from __future__ import annotations

import argparse
import sys

from wodmail import queue
from wodmail.cli.common import EX_DATAERR, Subcommands, queue_file, reader, when
from wodmail.location import Location


def register(commands: Subcommands) -> None:
    """Add `relay` (with `relay retry`) to `commands`."""
    relay = commands.add_parser("relay", help="the app's mails for people: waiting for RELAYHOST, or passed on")
    relay.add_argument("--limit", type=int, default=30, help="how many recent mails to list (default 30)")
    relay_sub = relay.add_subparsers(dest="relay_command")
    relay_retry = relay_sub.add_parser("retry", help="send a mail the MTA kept refusing again (or all of them)")
    relay_retry.add_argument("relay_id", help="its id, or `all`")
    relay.set_defaults(handler=cmd_relay)


def cmd_relay(location: Location, args: argparse.Namespace) -> int:
    """The relayed mails: never their content (a credentials mail holds a password)."""
    if args.relay_command == "retry":
        path = queue_file(location)
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
