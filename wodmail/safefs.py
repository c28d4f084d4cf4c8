"""The safe file-system layer: reading and writing where others may write.

A student owns their home and can swap any name in it at any moment. Code that works
there (as the student: wodmail.identity) takes an open folder and names in it, never a
path: every open is O_NOFOLLOW and O_NONBLOCK (a link is refused, a FIFO does not stall),
every file is made new (O_EXCL). Erasing lives beside this, in wodmail.erase.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from wodmail.erase import DIR_FLAGS

#: A new file: made here (never an existing one, never through a link), without blocking.
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: A file to read: never through a link, without blocking.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def write_new_file(folder_fd: int, name: str, data: bytes, mode: int) -> None:
    """Make `name` in the open folder `folder_fd` with `data` and `mode`."""
    fd = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=folder_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


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
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


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
