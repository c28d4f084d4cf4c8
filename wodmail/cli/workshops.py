"""`wodmail workshops sync`: the registration app's GET /workshops against the workshops file."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from wodmail.cli.common import EX_DATAERR, EX_TEMPFAIL, Subcommands
from wodmail.errors import ConfigError
from wodmail.location import Location


def register(commands: Subcommands) -> None:
    """Add `workshops` (with `workshops sync`) to `commands`."""
    workshops = commands.add_parser("workshops", help="the workshops file and the registration app")
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
