"""The safe file-system layer: reading and writing where others may write.

A student owns their home and can swap any name in it at any moment. Code that works
there (as the student: wodmail.identity) takes an open folder and names in it, never a
path: every open is O_NOFOLLOW and O_NONBLOCK (a link is refused, a FIFO does not stall),
every file is made new (O_EXCL), and a folder is replaced whole (`replace_folder`: built
beside, then swapped in by renames). Erasing lives beside this, in wodmail.erase.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from wodmail.erase import DIR_FLAGS, remove_entry

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: A new file: made here (never an existing one, never through a link), without blocking.
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: A file to read: never through a link, without blocking.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

#: Marks the hidden working folders `replace_folder` makes beside the folder it replaces.
_WORK_MARK = ".wodmail-"


def write_new_file(folder_fd: int, name: str, data: bytes, mode: int) -> None:
    """Make `name` in the open folder `folder_fd` with `data` and `mode`."""
    fd = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=folder_fd)
    try:
        _write_all(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (os.write may write only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy_bytes(src: int, dst: int) -> None:
    """Copy all of `src` into `dst`: in the kernel when it can, else by reading and writing."""
    try:
        while os.sendfile(dst, src, None, 1 << 30):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    while chunk := os.read(src, 1 << 20):
        _write_all(dst, chunk)


def copy_new_file(src: int, folder_fd: int, name: str, mode: int) -> None:
    """Make `name` in the open folder `folder_fd` a copy of the open file `src`, with `mode`."""
    dst = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=folder_fd)
    try:
        copy_bytes(src, dst)
        os.fchmod(dst, mode & 0o777)
    finally:
        os.close(dst)


def read_regular_beneath(base: int, relative: Path, limit: int) -> bytes | None:
    """The bytes of the regular file `relative` under the open folder `base`, reached
    without following any symlink or blocking, or None if there is none or it is larger
    than `limit`."""
    parts = relative.parts
    if not parts or relative.is_absolute() or any(p in ("", ".", "..") for p in parts):
        return None
    try:
        folder = os.dup(base)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            inner = os.open(part, DIR_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
        flags = READ_FLAGS
        try:  # no access time: a read would dirty the inode, and wait on the journal's commit
            fd = os.open(parts[-1], flags | os.O_NOATIME, dir_fd=folder)
        except PermissionError:  # O_NOATIME needs the file's owner (the student's files are theirs)
            fd = os.open(parts[-1], flags, dir_fd=folder)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            chunks: list[bytes] = []
            size = 0
            while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(folder)


def is_symlink_at(folder_fd: int, name: str) -> bool:
    """Whether `name` in the open folder `folder_fd` is a symbolic link (False if absent)."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def replace_folder(parent_fd: int, leaf: str, fill: Callable[[int], _T]) -> _T:
    """Make `leaf` in the open folder `parent_fd` a new folder, filled by `fill`; return what
    `fill` returns.

    `fill` gets the new folder open (made 0700 as a hidden sibling of `leaf`, named
    `.{leaf}.wodmail-new-*`). Once it returns, renames put the new folder in place of
    `leaf`: `leaf` is at every moment either the old entry, absent for an instant, or the
    complete new folder, never a half-filled one; the old entry is then removed (a link
    as a link, never what it points to). Leftovers of an interrupted run are removed
    first, and the new folder on a failure, so running it again converges. Raises OSError.
    """
    _remove_leftovers(parent_fd, leaf)
    work = f".{leaf}{_WORK_MARK}new-{secrets.token_hex(4)}"
    try:
        os.mkdir(work, 0o700, dir_fd=parent_fd)
        work_fd = os.open(work, DIR_FLAGS, dir_fd=parent_fd)
        try:
            filled = fill(work_fd)
        finally:
            os.close(work_fd)
        _swap_in(parent_fd, work, leaf)
    except BaseException:
        _remove_quietly(parent_fd, work)
        raise
    return filled


def _remove_leftovers(parent_fd: int, leaf: str) -> None:
    """Remove the working folders an interrupted `replace_folder` left beside `leaf`."""
    prefix = f".{leaf}{_WORK_MARK}"
    for entry in os.listdir(parent_fd):
        if entry.startswith(prefix):
            remove_entry(parent_fd, entry)


def _swap_in(parent_fd: int, work: str, leaf: str) -> None:
    """Put the finished folder `work` in place of `leaf`, removing the old one."""
    old = f".{leaf}{_WORK_MARK}old-{secrets.token_hex(4)}"
    try:
        os.rename(leaf, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except FileNotFoundError:
        old = ""
    os.rename(work, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    if old:
        _remove_quietly(parent_fd, old)


def _remove_quietly(parent_fd: int, name: str) -> None:
    """`remove_entry`, logging instead of raising (the next run removes what is left)."""
    try:
        remove_entry(parent_fd, name)
    except OSError as exc:
        log.warning("cannot remove the working folder %s: %s", name, exc.strerror)
