"""`wodmail refused`: the mails refused at the doors, and why; `refused show ID`: one of them."""

from __future__ import annotations

import argparse
import sys

from wodmail import queue
from wodmail.cli.common import EX_DATAERR, Subcommands, origin, reader, when
from wodmail.location import Location


def register(commands: Subcommands) -> None:
    """Add `refused` (with `refused show`) to `commands`."""
    refused = commands.add_parser("refused", help="mails refused at the doors")
    refused.add_argument("--limit", type=int, default=30, help="how many recent refusals to list (default 30)")
    refused_sub = refused.add_subparsers(dest="refused_command")
    refused_show = refused_sub.add_parser("show", help="one refused mail: why, and its first 4 KiB")
    refused_show.add_argument("refused_id", type=int, help="the refusal's id, from `wodmail refused`")
    refused.set_defaults(handler=cmd_refused)


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
