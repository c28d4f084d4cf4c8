"""What the host playbooks need to know of a location, as JSON on standard output.

Run with wodmail's own Python (the playbooks' `ansible.builtin.script` task does it): the
location is loaded by wodmail itself, exactly as `wodmail check` and `wodmail serve` load
it, so the playbooks never read the YAML a second way. Nothing secret is printed: paths,
numbers, names and URLs only.

    python location_facts.py LOCATION_FILE

Exit 0 with the JSON; 78 (EX_CONFIG) with wodmail's one-line configuration error on
standard error.

It adds what the checks need to know of this host at the same time: its clock (`now`),
STATEDIR's and STUDENTDIR's owner and mode, whether the queue exists, whether systemd runs.

`homes` lists, for every student of STUDENTMIN..STUDENTMAX, the home and who must own it,
as wodmail makes a fresh home (wodmail/homes.py): HOMEOWNER `student` gives it to the host
account student{N} (its uid and primary gid) when that account exists and to the daemon
(root) otherwise; `none` to the daemon; `UID:GID` to those. `mode` is HOMEMODE; with
HOMEACL the group digit shows the ACL mask, so `mode_pattern` accepts any group digit then.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import sys
import time
from pathlib import Path

from wodmail.errors import ConfigError
from wodmail.location import Location, load_location

EX_CONFIG = 78


def home_owner(location: Location, stdid: int) -> tuple[int, int]:
    """The uid and gid a fresh home of student{stdid} gets from wodmail."""
    owner = location.homes.owner
    if owner == "student":
        try:
            entry = pwd.getpwnam(f"student{stdid}")
        except KeyError:
            return os.geteuid(), os.getegid()
        return entry.pw_uid, entry.pw_gid
    if owner == "none":
        return os.geteuid(), os.getegid()
    uid, gid = owner.split(":")
    return int(uid), int(gid)


def folder(path: Path) -> dict[str, object]:
    """A folder's owner and mode as the checks read them (not following a link)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return {"exists": False}
    return {
        "exists": True,
        "isdir": stat.S_ISDIR(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "group_writable": bool(st.st_mode & stat.S_IWGRP),
        "others_access": bool(st.st_mode & stat.S_IRWXO),
        "others_writable": bool(st.st_mode & stat.S_IWOTH),
    }


def facts(location: Location) -> dict[str, object]:
    """The location's facts, as the playbooks use them."""
    accounts = location.accounts
    mode = f"{location.homes.mode:04o}"
    pattern = f"^{mode[:2]}[0-7]{mode[3]}$" if accounts.home_acl else f"^{mode}$"
    homes = []
    for stdid in range(location.student_min, location.student_max + 1):
        uid, gid = home_owner(location, stdid)
        homes.append({"stdid": stdid, "path": str(location.student_home(stdid)), "uid": uid, "gid": gid, "mode": mode})
    return {
        "file": str(location.file),
        "state_dir": str(location.state_dir),
        "student_dir": str(location.student_dir),
        "student_min": location.student_min,
        "student_max": location.student_max,
        "home_owner": location.homes.owner,
        "home_mode": mode,
        "mode_pattern": pattern,
        "home_acl": [str(entry) for entry in accounts.home_acl],
        "accounts": {
            "mode": accounts.mode,
            "create": accounts.create,
            "uid_min": accounts.uid_min,
            "uid_max": accounts.uid_max,
            "uid_base": accounts.uid_base,
            "gid_base": accounts.gid_base,
            "shell": accounts.shell,
            "groups": list(accounts.groups),
        },
        "api_endpoint": location.api_endpoint,
        "hub_url": location.hub_url,
        "workshops": [
            {"name": workshop.name, "first": workshop.first, "last": workshop.last}
            for workshop in location.workshops.values()
        ],
        "warnings": list(location.warnings),
        "homes": homes,
        "now": time.strftime("%Y-%m-%d %H:%M:%S"),
        "state_dir_stat": folder(location.state_dir),
        "student_dir_stat": folder(location.student_dir),
        "queue_exists": (location.state_dir / "queue.sqlite3").exists(),
        "systemd_running": os.path.isdir("/run/systemd/system"),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: location_facts.py LOCATION_FILE", file=sys.stderr)
        return 64
    try:
        location = load_location(argv[1])
    except ConfigError as exc:
        print(f"wodmail: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    json.dump(facts(location), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
