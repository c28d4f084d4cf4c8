"""The students' host accounts as the location sets them: ACCOUNTS, ACCOUNT* and HOMEACL."""

from __future__ import annotations

import re
from dataclasses import dataclass

from wodmail.location import keys
from wodmail.location.checks import Checked

_ACL_ENTRY = re.compile(r"(u|user|g|group):([A-Za-z0-9_][A-Za-z0-9_.-]{0,31}|[0-9]{1,10}):([r-]?[w-]?[x-]?)")


@dataclass(frozen=True)
class AclEntry:
    """One HOMEACL entry: `u:NAME:PERMS` or `g:NAME:PERMS` (setfacl's short form)."""

    kind: str
    """"u" (a user) or "g" (a group)."""
    name: str
    """The user or group name, or its number."""
    perms: int
    """rwx as bits (4, 2, 1)."""

    def __str__(self) -> str:
        bits = "".join(letter if self.perms & bit else "-" for letter, bit in (("r", 4), ("w", 2), ("x", 1)))
        return f"{self.kind}:{self.name}:{bits}"


@dataclass(frozen=True)
class AccountSettings:
    """The students' host accounts, as the location sets them (every key has a default)."""

    mode: str = keys.ACCOUNTS.standard
    """ACCOUNTS: none or unix."""
    hash_scheme: str = keys.ACCOUNTHASH.standard
    """ACCOUNTHASH: system, yescrypt or sha512."""
    hash_cost: int | None = None
    """ACCOUNTHASHCOST: yescrypt's cost (1..11) or sha512's rounds (1000..999999999); None: cheap
    (yescrypt N=256, sha512 1000 rounds: wodmail's passwords are random, see wodmail.shadow)."""
    create: bool = keys.ACCOUNTCREATE.standard
    """ACCOUNTCREATE: create a missing student{N} (true) or fail the job (false)."""
    uid_min: int = keys.UID_MIN_DEFAULT
    """ACCOUNTUIDMIN: the lowest uid a student account may have (default: UID_MIN of login.defs)."""
    uid_max: int = keys.UID_MAX_DEFAULT
    """ACCOUNTUIDMAX: the highest (default: UID_MAX of login.defs)."""
    uid_base: int | None = None
    """ACCOUNTUIDBASE: student{N} has uid N + ACCOUNTUIDBASE (checked, and given at creation)."""
    gid_base: int | None = None
    """ACCOUNTGIDBASE: a created student{N}'s own group gets gid N + ACCOUNTGIDBASE."""
    shell: str = keys.ACCOUNTSHELL.standard
    """ACCOUNTSHELL: a created account's login shell."""
    groups: tuple[str, ...] = ()
    """ACCOUNTGROUPS: supplementary groups of a created account."""
    ssh_key: str = keys.ACCOUNTSSHKEY.standard
    """ACCOUNTSSHKEY: none, ed25519, ecdsa or rsa."""
    home_acl: tuple[AclEntry, ...] = ()
    """HOMEACL: access (and default) ACL entries given on every fresh home, e.g. u:wodadmin:rwx."""

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def account_settings(checked: Checked, student_min: int, student_max: int) -> AccountSettings:
    """ACCOUNTS and its keys (wodmail.accounts), checked together."""
    scheme = checked[keys.ACCOUNTHASH]
    cost = checked[keys.ACCOUNTHASHCOST]
    if cost is not None and scheme == "yescrypt" and cost > 11:
        checked.fail(keys.ACCOUNTHASHCOST, "yescrypt's cost is 1..11")
    if cost is not None and scheme == "sha512" and cost < 1000:
        checked.fail(keys.ACCOUNTHASHCOST, "sha512's rounds are 1000..999999999")
    uid_min, uid_max = checked[keys.ACCOUNTUIDMIN], checked[keys.ACCOUNTUIDMAX]
    if uid_max < uid_min:
        checked.fail(keys.ACCOUNTUIDMAX, f"{uid_max} is below ACCOUNTUIDMIN {uid_min}")
    uid_base = checked[keys.ACCOUNTUIDBASE]
    if uid_base is not None and not (uid_min <= student_min + uid_base and student_max + uid_base <= uid_max):
        checked.fail(
            keys.ACCOUNTUIDBASE,
            f"students {student_min}..{student_max} would have uids {student_min + uid_base}..{student_max + uid_base},"
            f" outside ACCOUNTUIDMIN..ACCOUNTUIDMAX ({uid_min}..{uid_max})",
        )
    gid_base = checked[keys.ACCOUNTGIDBASE]
    if gid_base is not None and student_min + gid_base < 1:
        checked.fail(keys.ACCOUNTGIDBASE, "a student's group would have gid 0")
    shell = checked[keys.ACCOUNTSHELL]
    if not shell.startswith("/") or any(ch.isspace() or ch == ":" for ch in shell):
        checked.fail(keys.ACCOUNTSHELL, "expected an absolute path (no spaces or colons)")
    groups = checked[keys.ACCOUNTGROUPS]
    for group in groups:
        if not _ACL_ENTRY.fullmatch(f"g:{group}:r") or group.isdigit():
            checked.fail(keys.ACCOUNTGROUPS, f"{checked.shown(keys.ACCOUNTGROUPS, group)} is not a group name")
    acl: list[AclEntry] = []
    for item in checked[keys.HOMEACL]:
        match = _ACL_ENTRY.fullmatch(item)
        if match is None:
            shown = checked.shown(keys.HOMEACL, item)
            checked.fail(keys.HOMEACL, f"{shown} is not u:NAME:PERMS or g:NAME:PERMS (u:wodadmin:rwx)")
        perms = sum(bit for letter, bit in (("r", 4), ("w", 2), ("x", 1)) if letter in match[3])
        acl.append(AclEntry(match[1][0], match[2], perms))
    return AccountSettings(
        mode=checked[keys.ACCOUNTS],
        hash_scheme=scheme,
        hash_cost=cost,
        create=checked[keys.ACCOUNTCREATE],
        uid_min=uid_min,
        uid_max=uid_max,
        uid_base=uid_base,
        gid_base=gid_base,
        shell=shell,
        groups=groups,
        ssh_key=checked[keys.ACCOUNTSSHKEY],
        home_acl=tuple(acl),
    )
