"""`wodmail check`: load the location as `serve` does, report what it holds, warn about what
others can read, and compile every served workshop's templates."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from wodmail.cli.common import EX_DATAERR, Subcommands
from wodmail.location import Location

if TYPE_CHECKING:
    from wodmail.compiled import CompiledWorkshop
    from wodmail.location import Workshop


def register(commands: Subcommands) -> None:
    """Add `check` to `commands`."""
    check = commands.add_parser("check", help="load the location and its workshops")
    check.set_defaults(handler=cmd_check)


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
    workshop's templates compiled and rendered for the first student of its range (a
    template error, or a variable nothing defines, would fail its CREATEs)."""
    from wodmail.errors import StepFailed
    from wodmail.scripts import WorkshopScripts
    from wodmail.workshop import Renderer

    for name, reason in sorted(location.not_served.items()):
        print(f"  {name:24} not served: {reason}")
    for warning in location.warnings:
        print(f"warning: {warning}")
    renderer = Renderer.for_location(location)
    failed = 0
    warned = list(location.warnings)
    scripts: WorkshopScripts | None = None
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
        problem = render_problem(location, workshop, compiled)
        if problem is None:
            continue
        if scripts is None:
            scripts = WorkshopScripts(location, withheld=location.withheld)
        if "undefined variable '" not in problem:  # a value for one student (OVIP[STDID]), ...
            warning = f"{workshop.name}: the CREATE of student{workshop.first} would fail: {problem}"
        elif scripts.find(workshop, "create"):  # they may write the variable for each student
            warning = f"{workshop.name}: {problem} (unless its create scripts write it for each student)"
        else:  # a name nothing defines: the same for every student
            print(f"error: {workshop.name}: {problem}: every CREATE of it would fail")
            failed += 1
            continue
        print(f"warning: {warning}")
        warned.append(warning)
    served = len(location.workshops)
    print(
        f"{served} workshop(s) served, {len(location.not_served)} known but not served, "
        f"{len(warned)} warning(s), {failed} with template errors"
    )
    return EX_DATAERR if failed else 0


def render_problem(location: Location, workshop: Workshop, compiled: CompiledWorkshop) -> str | None:
    """Why `workshop` cannot be rendered for the first student of its range, with the
    values a CREATE gives its templates (a stand-in password where they get one), in memory;
    None when it can. A free key the location lacks ("undefined variable 'KEY'", rendering's
    own words), a student's value missing, a value that breaks a notebook: what the CREATE's
    deploy step would fail on."""
    from wodmail.catalog import template_variables
    from wodmail.errors import ConfigError, StepFailed

    try:
        compiled.render(template_variables(location, workshop, workshop.first, "Check0nlyPassw0rd", customer="0"))
    except (StepFailed, ConfigError) as exc:
        return str(exc)
    return None
