"""wodmail.erase as a student runs it (wodmail.identity.acting_as, the kernel's checks): the
folder modes a student may leave behind, and what the student's erase must never touch.

A uid with no account is enough here: the kernel checks ids, not names (the hostile-student
suite, tests/test_students.py, erases through the daemon with real accounts).
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.students import require_root
from wodmail.erase import CUT_DEPTH, DIR_FLAGS, erase_contents, remove_entry
from wodmail.identity import Identity, acting_as

#: (folder, mode) as a student leaves them: `chmod -R a-w`, unreadable, write-only, search-only.
MODES = {"read-only": 0o555, "unreadable": 0o000, "write-only": 0o300, "search-only": 0o100, "r-only": 0o400}


@pytest.fixture
def student() -> Identity:
    require_root()
    for uid in range(61230, 61300):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return Identity(uid, uid)
    raise AssertionError("no free uid in 61230..61299")


@pytest.fixture
def place() -> Iterator[Path]:
    """A folder of root's that anyone may pass through (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="wodmail-erase-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def opened(place: Path) -> Iterator[tuple[Path, int]]:
    folder = place / "tree"
    folder.mkdir()
    fd = os.open(folder, DIR_FLAGS)
    try:
        yield folder, fd
    finally:
        os.close(fd)


def make_tree(root: Path, target: Path) -> int:
    """A file, a link to `target` and a sub-folder in each folder of MODES, three levels deep,
    the modes set last (as the student would, from the bottom up). How many entries it holds."""
    entries = 0
    for name, mode in MODES.items():
        folder = root / name
        inner = folder / "inner" / "deeper"
        inner.mkdir(parents=True)
        for where in (folder, folder / "inner", inner):
            (where / "notebook.ipynb").write_text("{}")
            os.symlink(target, where / "link")
        for where in (inner, folder / "inner", folder):
            os.chmod(where, mode)
        entries += 3 * 3  # three folders, each with a file and a link
    return entries


def test_the_student_erases_every_folder_mode_it_can_set(student: Identity, opened: tuple[Path, int]) -> None:
    folder, fd = opened
    os.chown(folder, student.uid, student.gid)
    canary = folder.parent / "roots"
    canary.write_text("root's")
    os.chmod(canary, 0o600)
    before = os.stat(canary)
    with acting_as(student):
        expected = make_tree(folder, canary)
        assert erase_contents(fd) == expected
    assert os.listdir(folder) == []
    after = os.stat(canary)  # where the links led: not followed, not chmodded
    assert (after.st_mode, after.st_uid, after.st_ctime_ns) == (before.st_mode, before.st_uid, before.st_ctime_ns)


def test_a_read_only_tree_left_in_a_shared_folder_goes_and_the_shared_folder_stays(
    student: Identity, place: Path
) -> None:
    """As /tmp: root's, 1777. The student's read-only tree goes; another user's file stays,
    refused (EPERM) without the shared folder's mode being touched."""
    shared = place / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "someone-elses").write_text("not the student's")
    with acting_as(student):
        make_tree(shared / "left", shared / "someone-elses")
        os.chmod(shared / "left", 0o555)
    fd = os.open(shared, DIR_FLAGS)
    try:
        with acting_as(student):
            remove_entry(fd, "left")
            with pytest.raises(PermissionError) as refused:
                remove_entry(fd, "someone-elses")
    finally:
        os.close(fd)
    assert refused.value.errno == errno.EPERM
    assert sorted(os.listdir(shared)) == ["someone-elses"]
    st = os.stat(shared)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o1777)


def test_roots_read_only_folder_in_a_students_tree_is_refused_to_the_student_and_kept_as_it_was(
    student: Identity, opened: tuple[Path, int]
) -> None:
    """What a root hook wrote in a home: the student's erase stops on it (EACCES, and the
    fallback's chmod is refused: not the student's folder), its mode unchanged; root's erase,
    which the keeper runs next in the trash, removes it."""
    folder, fd = opened
    os.chown(folder, student.uid, student.gid)
    roots = folder / "by-a-root-hook"
    roots.mkdir()
    (roots / "key").write_text("root's")
    os.chmod(roots, 0o555)
    with acting_as(student):
        (folder / "mine").write_text("the student's")
        with pytest.raises(PermissionError) as refused:
            erase_contents(fd)
    assert refused.value.errno == errno.EACCES
    assert stat.S_IMODE(os.stat(roots).st_mode) == 0o555 and (roots / "key").read_text() == "root's"
    assert erase_contents(fd) >= 2
    assert os.listdir(folder) == []


def deepest(folder: Path) -> int:
    """How many levels down the deepest entry under `folder` is (find copes with any depth)."""
    found = subprocess.run(["find", str(folder), "-printf", "%d\n"], capture_output=True, text=True, check=True)
    return max(map(int, found.stdout.split()))


def test_an_erase_stopped_deep_down_keeps_what_it_did(student: Identity, opened: tuple[Path, int]) -> None:
    """A chain 1,000 folders deep with, at its bottom, a folder the student may not empty
    (a root hook's): the student's erase fails there. What it did before must stay done, as
    when a bound on the step's time stops it (a chain of 40,000 took the keeper 20 s to go
    down before anything went, so every try timed out and began again from the top): the
    chain is cut into pieces as the erase goes down, and what is left is at most CUT_DEPTH
    deep. About 2 s (1.5 s of it making the chain)."""
    folder, fd = opened
    os.chown(folder, student.uid, student.gid)
    with acting_as(student):
        os.mkdir("chain", dir_fd=fd)
        level = os.open("chain", DIR_FLAGS, dir_fd=fd)
        for _ in range(1_000):
            os.mkdir("d", dir_fd=level)
            inner = os.open("d", DIR_FLAGS, dir_fd=level)
            os.close(level)
            level = inner
    try:
        plant_roots_folder(level)
    finally:
        os.close(level)
    assert_cut_then_erased(student, folder, fd)


def test_a_deep_read_only_chain_is_cut_too(student: Identity, opened: tuple[Path, int]) -> None:
    """The chain above made read-only by the student (`chmod -R a-w`, from the bottom up):
    cutting it renames a folder out of a read-only one, which the kernel refuses until the
    student makes both writable again, through the open inodes. What is left after the
    student's erase stops at root's folder is still at most CUT_DEPTH deep."""
    folder, fd = opened
    os.chown(folder, student.uid, student.gid)
    levels: list[int] = []
    with acting_as(student):
        os.mkdir("chain", dir_fd=fd)
        levels.append(os.open("chain", DIR_FLAGS, dir_fd=fd))
        for _ in range(600):
            os.mkdir("d", dir_fd=levels[-1])
            levels.append(os.open("d", DIR_FLAGS, dir_fd=levels[-1]))
    try:
        plant_roots_folder(levels[-1])
        with acting_as(student):
            for level in reversed(levels):
                os.fchmod(level, 0o555)
    finally:
        for level in levels:
            os.close(level)
    assert_cut_then_erased(student, folder, fd)


def plant_roots_folder(level: int) -> None:
    """As root, at the bottom of a student's chain: a folder with a file the student's erase
    cannot remove, where it stops."""
    os.mkdir("roots", dir_fd=level)
    roots = os.open("roots", DIR_FLAGS, dir_fd=level)
    os.close(os.open("key", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=roots))
    os.close(roots)


def assert_cut_then_erased(student: Identity, folder: Path, fd: int) -> None:
    """The student's erase stops at root's folder having cut the chain to at most CUT_DEPTH;
    root's pass (the keeper's, in the trash) removes the rest."""
    with acting_as(student), pytest.raises(PermissionError):
        erase_contents(fd)
    assert deepest(folder) <= CUT_DEPTH + 3
    assert erase_contents(fd) > 0
    assert os.listdir(folder) == []
