"""wodmail.homeaccess on its own: HOMEACL's entries on a home and what is in it (read back with
getfacl), the bound on a home's size, the names a location gives, and the key pairs, where
the accounts tests (tests/test_accounts.py) go through the daemon."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_private_key

from wodmail.erase import DIR_FLAGS
from wodmail.errors import ConfigError, StepFailed
from wodmail.homeaccess import acl_id, apply_acl, install_key_pair, new_key_pair
from wodmail.location import AclEntry


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    folder = tmp_path / "student5"
    (folder / "WKSHP-X" / "deeper").mkdir(parents=True)
    for name in ("a.ipynb", "WKSHP-X/b.ipynb", "WKSHP-X/deeper/c.txt"):
        (folder / name).write_text("{}")
    os.symlink("/etc/passwd", folder / "WKSHP-X" / "link")
    fd = os.open(folder, DIR_FLAGS)
    try:
        yield folder, fd
    finally:
        os.close(fd)


def acl(path: Path, kind: str = "access") -> set[tuple[int, int, int]]:
    """The (tag, perms, id) entries of `path`'s ACL as the kernel keeps it (acl(5)'s xattr:
    version 2, then 8 bytes an entry); empty when it has none."""
    try:
        value = os.getxattr(path, f"system.posix_acl_{kind}", follow_symlinks=False)
    except OSError:
        return set()
    assert struct.unpack("<I", value[:4])[0] == 2
    return {struct.unpack("<HHI", value[i : i + 8]) for i in range(4, len(value), 8)}


USER, GROUP = 0x02, 0x08  # the named entries' tags


def test_the_entries_reach_every_folder_and_file_and_no_link(home: tuple[Path, int]) -> None:
    folder, fd = home
    passwd = os.stat("/etc/passwd")
    assert apply_acl(fd, [("u", 4242, 7), ("g", 4243, 5)]) == 6  # three folders, three files
    for path in (folder, folder / "WKSHP-X", folder / "WKSHP-X" / "deeper"):
        for kind in ("access", "default"):
            assert {(USER, 7, 4242), (GROUP, 5, 4243)} <= acl(path, kind), (path, kind)
    file = folder / "WKSHP-X" / "deeper" / "c.txt"
    assert {(USER, 7, 4242), (GROUP, 5, 4243)} <= acl(file) and acl(file, "default") == set()
    after = os.stat("/etc/passwd")  # where the link leads: untouched
    assert (after.st_mode, after.st_ctime_ns) == (passwd.st_mode, passwd.st_ctime_ns)


def test_a_home_past_the_bound_is_a_clear_failure(home: tuple[Path, int]) -> None:
    _, fd = home
    with pytest.raises(StepFailed, match=r"more than 3 entries in a fresh home: HOMEACL not applied to all"):
        apply_acl(fd, [("u", 4242, 7)], limit=3)


def test_the_names_of_a_location_become_ids_or_a_clear_error() -> None:
    assert acl_id("site.yaml", AclEntry("u", "root", 7)) == 0
    assert acl_id("site.yaml", AclEntry("g", "root", 5)) == 0
    assert acl_id("site.yaml", AclEntry("u", "4242", 7)) == 4242
    for kind, what in (("u", "user"), ("g", "group")):
        with pytest.raises(ConfigError, match=f"HOMEACL: no {what} wodmail-nobody-here on this host"):
            acl_id("site.yaml", AclEntry(kind, "wodmail-nobody-here", 7))


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_each_key_type_is_a_pair_openssh_reads(kind: str, tmp_path: Path) -> None:
    pair = new_key_pair(kind, "student5@host")
    assert pair.name == f"id_{kind}" and pair.public.endswith(b" student5@host\n")
    private = load_ssh_private_key(pair.private, password=None)
    derived = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    assert pair.public == derived + b" student5@host\n"
    home = os.open(tmp_path, DIR_FLAGS)
    try:
        install_key_pair(home, pair)
    finally:
        os.close(home)
    assert (tmp_path / ".ssh" / pair.name).read_bytes() == pair.private
    assert oct((tmp_path / ".ssh" / pair.name).stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / ".ssh").stat().st_mode & 0o777) == "0o700"


def test_an_unknown_key_type_and_an_ssh_that_is_not_a_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no key type dsa"):
        new_key_pair("dsa", "x")
    (tmp_path / ".ssh").write_text("not a folder")
    home = os.open(tmp_path, DIR_FLAGS)
    try:
        with pytest.raises(StepFailed, match=r"~/.ssh is not a folder the student owns"):
            install_key_pair(home, new_key_pair("ed25519", "x"))
    finally:
        os.close(home)
    assert (tmp_path / ".ssh").read_text() == "not a folder"
