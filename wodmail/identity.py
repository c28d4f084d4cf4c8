"""Acting as a student on files: the calling thread's filesystem identity, switched.

wodmail runs as root over homes its students own and can change at any moment. Every
read, write, delete, chmod inside a home is therefore done with the student's filesystem
identity: `acting_as(Identity(uid, gid))` sets the calling thread's fsuid and fsgid to the
student's and drops its supplementary groups, so the kernel checks every open, mkdir,
unlink, rename and chmod as it would for the student (root's CAP_DAC_OVERRIDE, CAP_FOWNER
and CAP_CHOWN leave the thread with its fsuid, see capabilities(7)). Whatever name a student
swaps under us, the thread can do nothing the student could not do already.

Why the filesystem identity and not the real and effective uid: only the calling thread
changes (the other jobs' threads go on as they were), the switch costs four system calls,
and a process whose real uid stays root cannot be signalled, stopped or traced by the
student it acts for (kill(2) and ptrace(2) compare the real and saved uids). Postfix's
local(8) delivers into users' homes the same way, with only its effective ids changed.

Only the calling thread changes: glibc's setgroups() would change every thread of the
process, so the supplementary groups are set with the raw system call.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

__all__ = ["Identity", "acting_as", "as_daemon", "can_switch"]

#: setgroups(2)'s number, per architecture (the raw call changes the calling thread only).
_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "ppc64le": 81, "s390x": 206}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_current = threading.local()


class Identity(NamedTuple):
    """Who a home and everything in it belongs to."""

    uid: int
    gid: int


def can_switch() -> bool:
    """True when this process may act as another user (it runs as root)."""
    return os.geteuid() == 0


def _set_fs_ids(uid: int, gid: int) -> None:
    # setfsgid first: once the fsuid is not 0 the thread may no longer change its fsgid.
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    # Each call returns the previous value; an invalid one (-1) changes nothing and tells.
    if _libc.setfsuid(-1) != uid or _libc.setfsgid(-1) != gid:
        raise PermissionError(f"could not switch this thread's filesystem ids to {uid}:{gid}")


def _set_groups(groups: list[int]) -> None:
    number = _SETGROUPS.get(platform.machine())
    if number is None:
        raise OSError(f"setgroups(2)'s number on {platform.machine()} is not known to wodmail")
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    if _libc.syscall(number, len(groups), array) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setgroups for this thread failed: {os.strerror(errno)}")


@contextmanager
def acting_as(identity: Identity | None) -> Iterator[None]:
    """Within the block, this thread touches files as `identity` (None: as itself).

    Not re-entrant across identities: one student at a time per thread. The thread's own
    identity is put back on the way out, exception or not; if that fails the process
    cannot go on safely and aborts.
    """
    if identity is None or not can_switch():
        yield
        return
    if getattr(_current, "identity", None) is not None:
        raise RuntimeError("this thread is already acting as a student")
    own_uid, own_gid, own_groups = os.geteuid(), os.getegid(), os.getgroups()
    _set_groups([])
    try:
        _set_fs_ids(identity.uid, identity.gid)
    except BaseException:
        _restore(own_uid, own_gid, own_groups)
        raise
    _current.identity = identity
    try:
        yield
    finally:
        _current.identity = None
        _restore(own_uid, own_gid, own_groups)


@contextmanager
def as_daemon() -> Iterator[None]:
    """Within `acting_as`, a short stretch as the daemon itself (e.g. reading the catalog,
    which students need not be able to read); outside it, nothing changes."""
    identity: Identity | None = getattr(_current, "identity", None)
    if identity is None:
        yield
        return
    _set_fs_ids(os.geteuid(), os.getegid())
    try:
        yield
    finally:
        _set_fs_ids(identity.uid, identity.gid)


def _restore(uid: int, gid: int, groups: list[int]) -> None:
    try:
        _set_fs_ids(uid, gid)
        _set_groups(groups)
    except BaseException:  # noqa: BLE001 - a root thread left acting as a student must not go on
        os.abort()
