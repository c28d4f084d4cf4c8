"""Is this a host with students, and does the location trust what students can reach?

`shared_host_warnings` is what `wodmail check` prints and `wodmail serve` logs at start
on a host that has student accounts (student{N} for N in STUDENTMIN..STUDENTMAX):

- when TRUSTEDPEERS or LEGACYPEERS reach loopback, or TRUSTEDPEERS lists `local`. wodmail
  does not trust a student there whatever the lists say (wodmail.peers, wodmail.received);
  the warning says the lists promise more than they give, and that the registration app's
  addresses are all they should hold;
- when a folder where students leave files (STUDENTDIR, the shared temporary folders) is
  on a filesystem mounted without `nosuid`. A student can leave there a set-user-ID copy of
  a program: whoever runs it has the student's uid, which the next holder of the seat
  gets. The keeper removes such copies at CLEANUP (wodmail.keeper), within bounds (depth,
  number of folders); only `nosuid` makes the kernel ignore the bit everywhere.

Finding the accounts costs one pass over the password database (getpwall) and, when that
finds none, two lookups by name (the lowest and highest student), for name services that
do not list their users (LDAP, sssd): milliseconds, once at start.
"""

from __future__ import annotations

import os
import pwd
import re
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from wodmail.homes import mount_of
from wodmail.keeper import SHARED_TEMP, SWEEP_DEPTH, SWEEP_FOLDERS
from wodmail.location import Location, Network

_LOOPBACK4 = IPv4Network("127.0.0.0/8")
_LOOPBACK6 = IPv6Network("::1/128")
_STUDENT = re.compile(r"student([0-9]{1,9})")
#: Account names a warning quotes.
SHOWN = 3


def student_accounts(low: int, high: int) -> list[str]:
    """The host accounts student{N}, N in low..high (in the order the database has them)."""
    found: list[str] = []
    for entry in pwd.getpwall():
        if not entry.pw_name.startswith("student"):
            continue
        match = _STUDENT.fullmatch(entry.pw_name)
        if match is not None and low <= int(match.group(1)) <= high:
            found.append(entry.pw_name)
    if found:
        return found
    for stdid in sorted({low, high}):
        try:
            found.append(pwd.getpwnam(f"student{stdid}").pw_name)
        except KeyError:
            continue
    return found


def reaches_loopback(networks: tuple[Network, ...]) -> list[Network]:
    """The networks of a peer list that hold a loopback address."""
    return [
        net
        for net in networks
        if (net.overlaps(_LOOPBACK4) if isinstance(net, IPv4Network) else net.overlaps(_LOOPBACK6))
    ]


def shared_host_warnings(location: Location, mountinfo: str | None = None) -> list[str]:
    """Loud warnings for peer lists that reach students, and for set-ID programs honoured
    where students leave files, on a host that has students (`mountinfo`: the text of
    /proc/self/mountinfo, read when None)."""
    accounts = student_accounts(location.student_min, location.student_max)
    if not accounts:
        return []
    shown = ", ".join(accounts[:SHOWN]) + (f" and {len(accounts) - SHOWN} more" if len(accounts) > SHOWN else "")
    return _peer_warnings(location, shown) + _set_id_warnings(location, shown, mountinfo)


def _peer_warnings(location: Location, shown: str) -> list[str]:
    host = f"this host has student accounts ({shown}) and every student can reach loopback"
    warnings = []
    for key, networks in (("TRUSTEDPEERS", location.trusted_peers), ("LEGACYPEERS", location.legacy_peers)):
        local = reaches_loopback(networks)
        if local:
            listed = ", ".join(str(net) for net in local)
            warnings.append(
                f"SHARED HOST: {location.file}: {key} lists loopback ({listed}), but {host}. wodmail trusts "
                "a connection from this host only when root or LOCALPEERUSERS opened it, so a student's "
                f"unsigned command is refused; still, {key} should list only the registration app's addresses"
            )
    if location.trust_local:
        warnings.append(
            f"SHARED HOST: {location.file}: TRUSTEDPEERS lists `local`, but this host has student accounts "
            f"({shown}) and students can mail the local MTA. `wodmail deliver` takes an unsigned command only "
            "when the MTA's topmost Received header names a TRUSTEDPEERS address off this host: make sure the "
            "MTA writes it as procmailrc.example says, or remove `local`"
        )
    return warnings


def _set_id_warnings(location: Location, shown: str, mountinfo: str | None) -> list[str]:
    # /dev/mqueue holds message queues, never a program
    places = [(f"STUDENTDIR {location.student_dir}", location.student_dir)] + [
        (folder, Path(folder)) for folder in SHARED_TEMP if folder != "/dev/mqueue" and os.path.isdir(folder)
    ]
    if mountinfo is None:  # read once for every place
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    honoured: dict[str, list[str]] = {}  # mount point: the places on it
    for name, folder in places:
        mount_point, _kind, options = mount_of(folder, mountinfo)
        if mount_point and "nosuid" not in options:
            honoured.setdefault(mount_point, []).append(name)
    if not honoured:
        return []
    where = "; ".join(f"{', '.join(names)} (mounted on {point})" for point, names in honoured.items())
    return [
        f"SHARED HOST: set-user-ID programs run as their owner in {where}: mounted without nosuid, on a host "
        f"with student accounts ({shown}). A set-ID copy of a program a student leaves there, where the "
        f"keeper's clean-up does not reach (past {SWEEP_DEPTH} levels or {SWEEP_FOLDERS:,} folders), gives "
        "anyone that student's uid, which the seat's next holder gets: mount them nosuid"
    ]
