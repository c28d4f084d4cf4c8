"""What a fresh home gets for access, when the location asks, on every erase
(wodmail.services.reset_home), as the home's owner (wodmail.homes.work_in_home): HOMEACL
entries (`u:wodadmin:rwx`) become the access and default ACL of the home and what the skeleton
put in it, as the platform this replaces gave its admin user; and ACCOUNTSSHKEY makes a fresh
key pair in ~/.ssh (id_ed25519, id_ecdsa or id_rsa, as ssh-keygen names them), generated in
this process by `cryptography`.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import secrets
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from wodmail.erase import DIR_FLAGS
from wodmail.errors import ConfigError, StepFailed
from wodmail.location import AclEntry
from wodmail.safefs import write_new_file

# --------------------------------------------------------------------------- ACLs

_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF


def acl_xattr(mode: int, named: Iterable[tuple[str, int, int]]) -> bytes:
    """The system.posix_acl_* value for `mode` plus named entries (("u"|"g", id, perms)); the
    mask is the union of the group class, as setfacl computes it."""
    users = sorted((ident, perms) for kind, ident, perms in named if kind == "u")
    groups = sorted((ident, perms) for kind, ident, perms in named if kind == "g")
    group_obj = (mode >> 3) & 7
    mask = group_obj
    for _, perms in users + groups:
        mask |= perms
    entries = [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED)]
    entries += [(_USER, perms, ident) for ident, perms in users]
    entries += [(_GROUP_OBJ, group_obj, _UNDEFINED)]
    entries += [(_GROUP, perms, ident) for ident, perms in groups]
    entries += [(_MASK, mask, _UNDEFINED), (_OTHER, mode & 7, _UNDEFINED)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def _set_acl(path: str, mode: int, named: list[tuple[str, int, int]], folder: bool) -> None:
    try:
        os.setxattr(path, "system.posix_acl_access", acl_xattr(mode, named))
        if folder:
            os.setxattr(path, "system.posix_acl_default", acl_xattr(mode, named))
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise StepFailed("the homes' filesystem does not support ACLs (HOMEACL)") from None
        raise


def apply_acl(home: int, named: list[tuple[str, int, int]], limit: int = 100_000) -> int:
    """Give `named` entries on the open home folder and everything in it (no link followed:
    every name is opened O_PATH|O_NOFOLLOW and changed through /proc/self/fd). Runs as the
    home's owner. Returns how many entries were changed."""
    count = 0
    pending = [os.dup(home)]
    try:
        while pending:
            folder = pending.pop()
            try:
                _set_acl(f"/proc/self/fd/{folder}", stat.S_IMODE(os.fstat(folder).st_mode), named, True)
                count += 1
                for name in os.listdir(folder):
                    if count >= limit:
                        raise StepFailed(f"more than {limit} entries in a fresh home: HOMEACL not applied to all")
                    try:
                        handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
                    except FileNotFoundError:
                        continue
                    try:
                        st = os.fstat(handle)
                        if stat.S_ISDIR(st.st_mode):
                            with contextlib.suppress(PermissionError):  # a folder the owner closed to itself
                                pending.append(os.open(name, DIR_FLAGS, dir_fd=folder))
                        elif stat.S_ISREG(st.st_mode):
                            _set_acl(f"/proc/self/fd/{handle}", stat.S_IMODE(st.st_mode), named, False)
                            count += 1
                    finally:
                        os.close(handle)
            finally:
                os.close(folder)
    finally:
        for folder in pending:
            os.close(folder)
    return count


def acl_id(file: object, entry: AclEntry) -> int:
    if entry.name.isdigit():
        return int(entry.name)
    try:
        if entry.kind == "u":
            return pwd.getpwnam(entry.name).pw_uid
        return grp.getgrnam(entry.name).gr_gid
    except KeyError:
        what = "user" if entry.kind == "u" else "group"
        raise ConfigError(file, "HOMEACL", f"no {what} {entry.name} on this host") from None


# --------------------------------------------------------------------------- ssh keys


@dataclass(frozen=True, repr=False)
class KeyPair:
    """A key pair for a home: the file name (id_ed25519...), private and public parts."""

    name: str
    private: bytes
    public: bytes


def new_key_pair(kind: str, comment: str) -> KeyPair:
    """A fresh key pair in OpenSSH's formats (unencrypted, as `ssh-keygen -N ''` makes it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"no key type {kind}")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(f"id_{kind}", private, public + b" " + comment.encode() + b"\n")


def install_key_pair(home: int, pair: KeyPair) -> None:
    """Put `pair` in the open home's .ssh (made 0700 if missing), replacing files of the same
    name; runs as the home's owner, never through a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(".ssh", 0o700, dir_fd=home)
    try:
        folder = os.open(".ssh", DIR_FLAGS, dir_fd=home)
    except OSError as exc:
        raise StepFailed(f"~/.ssh is not a folder the student owns: {exc.strerror}") from None
    try:
        for name, data, mode in ((pair.name, pair.private, 0o600), (pair.name + ".pub", pair.public, 0o644)):
            temporary = f".{name}.{secrets.token_hex(4)}"
            write_new_file(folder, temporary, data, mode)
            os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        os.close(folder)
