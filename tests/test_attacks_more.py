"""What a student can leave outside the home for the next holder of the seat, against
wodmail.keeper.clear_leftovers as CLEANUP, PURGE and RESET run it, with real uids (no
account needed: the kernel checks ids, not names) and the attacks made as the students.

The danger is a set-ID copy of a program: left where the clean-up does not reach, another
student runs it with the former student's uid and reads the next holder's home.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.students import require_root
from wodmail.erase import DIR_FLAGS
from wodmail.identity import Identity, acting_as
from wodmail.keeper import clear_leftovers
from wodmail.notebooks import MAX_ORIGINAL_ENTRIES, completion_at


def free_uids(count: int) -> list[int]:
    found = []
    for uid in range(61300, 61400):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            found.append(uid)
            if len(found) == count:
                return found
    raise AssertionError("no free uids in 61300..61399")


def as_user(who: Identity, work: Callable[[], None]) -> None:
    """`work` in a child that is `who` (real, effective and saved ids, no groups)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(who.gid, who.gid, who.gid)
            os.setresuid(who.uid, who.uid, who.uid)
            os.umask(0o022)
            work()
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the attack program failed"


def set_id_copy(path: str) -> None:
    """What the attacker leaves: a program of theirs with the set-user-ID bit."""
    with open(path, "w") as program:
        program.write("#!/bin/sh\n")
    os.chmod(path, 0o4755)


@pytest.fixture
def pair() -> tuple[Identity, Identity]:
    require_root()
    a, b = free_uids(2)
    return Identity(a, a), Identity(b, b)


@pytest.fixture
def places() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in made:
        if path.is_dir() and not path.is_symlink():
            for inner in [path, *path.rglob("*")]:  # the attack closed some to root only
                if inner.is_dir() and not inner.is_symlink():
                    inner.chmod(0o700)
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def test_set_id_copies_left_in_others_folders_and_the_lock_folder_lose_their_bits_or_go(
    pair: tuple[Identity, Identity], places: list[Path]
) -> None:
    """Student A (the seat being cleaned) with the help of B (another seat, still in use):
    set-ID copies in /run/lock, in a root 1777 folder inside /tmp (as /tmp/.X11-unix), in
    B's 0777 folder, in A's own folder behind B's folders, and in B's folder that B closed
    afterwards (0700). None may keep a permission bit; B's own files are left as they were.
    Before the fix, all of them survived with 4755. About 0.1 s."""
    a, b = pair
    tag = f"wodmail-attacks-{os.getpid()}"
    lock = Path("/run/lock", tag)
    sticky = Path(tempfile.mkdtemp(prefix=tag))
    sticky.chmod(0o1777)
    theirs, mine, closed = (Path("/tmp", f"{tag}-{name}") for name in ("b-world", "a-own", "b-closed"))
    places += [lock, sticky, theirs, mine, closed]

    def b_opens() -> None:
        for folder in (theirs, closed):
            folder.mkdir()
            folder.chmod(0o777)

    def a_leaves() -> None:
        set_id_copy(str(lock))
        set_id_copy(f"{sticky}/X0")
        set_id_copy(f"{theirs}/py")
        mine.mkdir()
        mine.chmod(0o777)
        set_id_copy(f"{closed}/py")
        os.mkdir(f"{closed}/sub")
        set_id_copy(f"{closed}/sub/py")

    def b_blocks() -> None:  # B's folders inside A's stop A's erase part-way; then B closes its own
        for n in range(10):
            os.mkdir(f"{mine}/{n}")
            Path(mine, str(n), "b's").write_text("b's file")
        closed.chmod(0o700)

    def a_hides() -> None:
        for n in range(5):
            set_id_copy(f"{mine}/z{n}")

    as_user(b, b_opens)
    as_user(a, a_leaves)
    as_user(b, b_blocks)
    as_user(a, a_hides)
    (mailbox := Path("/var/mail", tag)).write_text("From a to the next holder\n")
    places.append(mailbox)
    os.chown(mailbox, a.uid, a.gid)

    clear_leftovers([(a.uid, a.gid, tag)])

    left = []
    for top in (lock, sticky, theirs, mine, closed, mailbox):
        for path in [top, *(top.rglob("*") if top.is_dir() else [])]:
            if not path.exists() and not path.is_symlink():
                continue
            st = path.lstat()
            if st.st_uid == a.uid and not stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode):
                left.append(f"{path} {stat.filemode(st.st_mode)}")
    assert left == [], "A's files kept their permission bits:\n" + "\n".join(left)
    assert not lock.exists() and not mailbox.exists()
    assert not Path(sticky, "X0").exists() and not Path(theirs, "py").exists()
    assert sorted(os.listdir(mine)) == [str(n) for n in range(10)]
    for n in range(10):  # B's, untouched
        assert Path(mine, str(n), "b's").read_text() == "b's file"
        assert stat.S_IMODE(Path(mine, str(n)).stat().st_mode) == 0o755
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700 and closed.stat().st_uid == b.uid


@pytest.fixture
def ram_folder(pair: tuple[Identity, Identity]) -> Iterator[Path]:
    """A folder of the first student's on a tmpfs (/dev/shm): many names made fast."""
    a, _ = pair
    folder = Path(tempfile.mkdtemp(prefix="wodmail-attacks-", dir="/dev/shm"))
    os.chown(folder, a.uid, a.gid)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_the_original_completion_over_a_folder_of_many_notebooks_is_bounded(
    pair: tuple[Identity, Identity], ram_folder: Path
) -> None:
    """COMPLETION original lists the workshop folder's *.ipynb: a student who makes millions
    of them (1,000,000 took 6 s and 99 MiB in the jobs process; ten million would pass
    READ_BOUND, failing this CLEANUP and every one after it) gets a number, with no more
    than MAX_ORIGINAL_ENTRIES looked at and a few thousand names held. 150,000 here (their
    names alone take 15 MiB): Python's memory for the count stays under 2 MiB, as the
    listing after the cap is not looked at. About 2 s, most of it making the names."""
    a, _ = pair
    workshop = ram_folder / "WKSHP-X"

    def make_many() -> None:
        workshop.mkdir()
        folder = os.open(workshop, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for number in range(MAX_ORIGINAL_ENTRIES + 50_000):
                name = f"{number:07d}-a-rather-long-name-for-a-notebook.ipynb"
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder))
        finally:
            os.close(folder)
        (workshop / "0000000-a-rather-long-name-for-a-notebook.ipynb").write_text('{"execution_count": 1}\n')

    as_user(a, make_many)
    home = os.open(ram_folder, DIR_FLAGS)
    tracemalloc.start()
    try:
        with acting_as(a):
            assert completion_at(home, "WKSHP-X", [], method="original") in (0, 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(home)
    assert peak < 2 << 20, f"{peak >> 20} MiB held for the count"
