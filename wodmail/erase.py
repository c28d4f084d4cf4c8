"""Erasing a folder tree that a hostile student may own, and change while it is erased.

`erase_contents(fd)` empties the open folder `fd`: iteratively (a tree 100,000 deep needs no
recursion and a handful of descriptors), through folder descriptors only (no path is ever
resolved twice), never following a symbolic link, and never blocking: every open is
O_NOFOLLOW | O_NONBLOCK | O_DIRECTORY, and files, links, FIFOs and sockets are unlinked
without being opened. Going back up a level opens ".." and checks it is the very folder we
came down from; if a student moved a folder meanwhile, the erase stops with an error
instead of going on somewhere else (a later run starts again from the top). Past CUT_DEPTH
levels the tree is cut (the folder below is moved up into the top folder), so that what a
stopped erase did stays done, however deep the tree.

Run it with the student's filesystem identity (wodmail.identity.acting_as): then the kernel
keeps it to what the student could remove anyway. A folder the student owns but made
unreadable is given back its owner's rwx (through /proc/self/fd, on the folder opened
without following links), and one made read-only too (fchmod of the open folder), as the
student could do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

__all__ = ["TreeChanged", "erase_contents", "remove_entry", "remove_what_it_can"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

#: How many times one folder is listed again before giving up (a folder that keeps
#: filling while we empty it has a live writer: fail rather than loop).
MAX_RELISTS = 1000
#: How deep the erase goes down before it cuts the tree: the folder below is moved up into
#: the top folder, and erased from there later. So what an erase did stays done when it is
#: stopped (a bound on a step's time, a killed keeper) or fails deep down: without it, a
#: chain of 40,000 folders is gone down to its bottom, for 20 s, before anything goes, and
#: every new try starts again from the top.
CUT_DEPTH = 256


class TreeChanged(OSError):
    """The tree being erased was moved about under us; nothing outside it was touched."""


def _open_folder(parent: int, name: str) -> int:
    """Open the folder `name` in `parent`, making it readable first if its owner may."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        pass
    handle = os.open(name, _PATH_FLAGS, dir_fd=parent)
    try:
        if not stat.S_ISDIR(os.fstat(handle).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder any more", name)
        os.chmod(f"/proc/self/fd/{handle}", 0o700)  # the inode opened above, not a name
    finally:
        os.close(handle)
    return os.open(name, DIR_FLAGS, dir_fd=parent)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _remove_plain(parent: int, name: str) -> bool:
    """Remove `name` if it is not a folder (or an empty one); False if it is a full folder.

    A folder whose mode refuses the removal (EACCES: read-only, as `chmod -R a-w` leaves a
    tree) is given its owner's rwx first, as its owner could: run as the student, the kernel
    allows that only in the student's own folders. Nothing else is retried: EPERM (a sticky
    folder's other users' files, an immutable file) stands, and root never meets EACCES."""
    try:
        return _remove_once(parent, name)
    except PermissionError as exc:
        if exc.errno != errno.EACCES or not _give_owner_rwx(parent):
            raise
    return _remove_once(parent, name)


def _give_owner_rwx(folder: int) -> bool:
    """chmod 0700 the open folder `folder`; False if we may not (it is not ours)."""
    try:
        os.fchmod(folder, 0o700)
    except OSError:
        return False
    return True


def _remove_once(parent: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=parent)
        return True
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        pass
    except PermissionError:
        # unlink() of a folder is EISDIR on Linux, but EPERM on some filesystems
        if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise
    try:
        os.rmdir(name, dir_fd=parent)
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        if exc.errno == errno.ENOTDIR:  # swapped for a file since: take it on the next listing
            return True
        raise


def _cut(folder: int, name: str, top: int) -> bool:
    """Move the folder `name` of `folder` up into `top`, under a new name (see CUT_DEPTH);
    False if it may not be moved (then the erase goes down into it, as without the cut).
    Moving a folder rewrites its "..": it and `folder` are made writable by their owner
    first if they are not, as the owner could (through the open inode, never a name)."""
    piece = f".wodmail-cut-{os.urandom(8).hex()}"  # not secrets: it would load OpenSSL into the keeper
    try:
        os.rename(name, piece, src_dir_fd=folder, dst_dir_fd=top)
        return True
    except PermissionError:
        pass
    except OSError:
        return False
    try:
        handle = os.open(name, _PATH_FLAGS, dir_fd=folder)
    except OSError:
        return False
    try:
        if not stat.S_ISDIR(os.fstat(handle).st_mode):
            return False
        os.chmod(f"/proc/self/fd/{handle}", 0o700)
        os.fchmod(folder, 0o700)
        os.rename(name, piece, src_dir_fd=folder, dst_dir_fd=top)
    except OSError:
        return False
    finally:
        os.close(handle)
    return True


def erase_contents(top: int) -> int:
    """Remove everything inside the open folder `top` (which stays); return how many entries.

    Raises OSError (TreeChanged when the tree was moved about) when something cannot be
    removed; what was removed stays removed, and running it again goes on from there.
    """
    removed = 0
    folder = top
    names: list[str] = []  # the name of each folder we went down into, from top
    identities: list[os.stat_result] = [os.fstat(top)]
    relists = 0
    try:
        while True:
            descend = None
            os.lseek(folder, 0, os.SEEK_SET)
            with os.scandir(folder) as listing:
                for entry in listing:
                    if _remove_plain(folder, entry.name):
                        removed += 1
                        continue
                    descend = entry.name
                    break
            if descend is not None:
                if len(names) >= CUT_DEPTH and _cut(folder, descend, top):
                    continue
                child = _open_folder(folder, descend)
                identities.append(os.fstat(child))
                names.append(descend)
                if folder != top:  # one descriptor at a time: ".." leads back up
                    os.close(folder)
                folder, relists = child, 0
                continue
            if not names:
                return removed
            # `folder` is empty: go back up, check we are where we came from, remove it
            parent = top if len(names) == 1 else os.open("..", DIR_FLAGS, dir_fd=folder)
            identities.pop()
            if not _same(os.fstat(parent), identities[-1]):
                os.close(parent)
                raise TreeChanged(errno.ESTALE, "a folder was moved while it was being erased")
            os.close(folder)
            folder = parent
            name = names.pop()
            try:
                gone = _remove_plain(folder, name)
            except OSError:
                gone = False
            if gone:
                removed += 1
            else:
                relists += 1
                if relists > MAX_RELISTS:
                    raise OSError(errno.EBUSY, "a folder keeps filling while it is erased", name)
    finally:
        if folder != top:
            os.close(folder)


def remove_entry(parent: int, name: str) -> None:
    """Remove `name` from the open folder `parent`, whatever it is (a tree: its contents first)."""
    if _remove_plain(parent, name):
        return
    child = _open_folder(parent, name)
    try:
        erase_contents(child)
    finally:
        os.close(child)
    if not _remove_plain(parent, name):
        raise OSError(errno.ENOTEMPTY, "a folder was filled again while it was removed", name)


def remove_what_it_can(parent: int, name: str, depth: int = 16) -> bool:
    """`remove_entry`, or where that fails, as much of `name` as may go; True if it is gone.

    For what a student leaves in a shared folder (/tmp), where other users can make the
    removal fail part-way: a folder of theirs inside the student's, a folder of theirs the
    student wrote into and then closed. The rest of the tree is still gone through, `depth`
    folder levels down, and whatever is left that the caller owns is given no permission
    bits at all: a set-ID copy of a program left for another account to run is run by no
    one, and nothing in it is read. Run it as the student (wodmail.identity): the kernel
    decides what may go and what may be changed; nothing is opened through a link."""
    try:
        remove_entry(parent, name)
        return True
    except OSError:
        pass
    try:
        handle = os.open(name, _PATH_FLAGS, dir_fd=parent)
    except OSError:
        return False
    try:
        if not stat.S_ISDIR(os.fstat(handle).st_mode):
            with contextlib.suppress(OSError):  # not the caller's, or a link: left as it is
                os.chmod(f"/proc/self/fd/{handle}", 0)  # the inode opened above, not a name
            return False
    finally:
        os.close(handle)
    if depth <= 0:
        return False
    try:
        folder = _open_folder(parent, name)
    except OSError:
        return False
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                remove_what_it_can(folder, entry.name, depth - 1)
    except OSError:
        pass
    finally:
        os.close(folder)
    try:
        return _remove_plain(parent, name)
    except OSError:
        return False
