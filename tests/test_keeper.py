"""The keeper and the homes against what a red-team review found, with real accounts.

Each test makes its own unprivileged accounts (student1951, student1952), runs the attack as
them (setpriv, /usr/bin/python3: the project's venv need not be readable by students) and
drives wodmail.homes.Homes as the jobs process does. As root, as CI runs them: without
root they fail, they do not skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DATA, Daemon, Site, readable_by_students
from wodmail.errors import ConfigError
from wodmail.homes import Homes
from wodmail.keeper import TRASH
from wodmail.keeperclient import Keeper
from wodmail.notebooks import MAX_NOTEBOOK_BYTES, completion_percentage
from wodmail.proctable import ProcessWatch, processes_of

ATTACKS = readable_by_students(DATA / "keeper")
A, B = 1951, 1952


def as_student(account: pwd.struct_passwd, *argv: str, **options: object) -> subprocess.Popen[bytes]:
    command = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--", *argv]
    return subprocess.Popen(command, start_new_session=True, **options)  # type: ignore[call-overload, no-any-return]


def alive(process: subprocess.Popen[bytes]) -> bool:
    """Running, not merely a zombie waiting for us."""
    return process.poll() is None


def wait_for(path: Path, timeout: float = 10) -> bool:
    """Whether `path` appeared (an attack program says it is ready) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def end(process: subprocess.Popen[bytes], scratch: Path) -> None:
    """Whatever the test found: the attack program gone, its scratch folder removed."""
    if alive(process):
        process.kill()
    process.wait()
    shutil.rmtree(scratch)


def drop_box(name: str) -> Path:
    """Where an attack program leaves a file for the test: a 0777 folder inside a root-owned
    0755 one in /var/tmp, out of the keeper's sweep of the shared folders (which takes what
    the student left in a world-writable folder away, as a leftover)."""
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))
    base.chmod(0o755)
    (base / "box").mkdir()
    (base / "box").chmod(0o777)
    return base / "box" / name


@pytest.fixture
def accounts() -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd]]:
    assert os.geteuid() == 0, "these tests make accounts and act as them: run the suite as root (scripts/test)"
    names = [f"student{n}" for n in (A, B)]
    for name in names:
        subprocess.run(["userdel", name], capture_output=True, check=False)  # left by a crashed run
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(names[0]), pwd.getpwnam(names[1])
    finally:
        for name in names:
            uid = pwd.getpwnam(name).pw_uid
            subprocess.run(["pkill", "-KILL", "-U", str(uid)], check=False)  # this test's accounts only
            time.sleep(0.1)
            subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture
def student_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="wodmail-keeper-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield base / "homes"
    finally:
        shutil.rmtree(base)


@pytest.fixture
async def homes(student_dir: Path) -> AsyncIterator[Homes]:
    homes = Homes(student_dir)
    homes.check()
    yield homes
    await homes.keeper.aclose()


@pytest.mark.parametrize("bit", ["4755", "2755"], ids=["set-user-ID", "set-group-ID"])
async def test_a_set_id_copy_run_by_another_account_does_not_survive(
    homes: Homes, accounts: tuple[pwd.struct_passwd, pwd.struct_passwd], bit: str
) -> None:
    """Student A makes a set-ID copy of python in the home; student B runs it: the process has
    A's effective ids and B's real ones, out of reach of kill(-1) as A. After the erase and
    the next customer's deployment, it must be gone and must not have read their file."""
    a, b = accounts
    await homes.reset(A)
    home = homes.student_dir / f"student{A}"
    python = os.path.realpath("/usr/bin/python3")
    setup = as_student(a, "/bin/sh", "-c", f"cp {python} {home}/py && chmod {bit} {home}/py && chmod 0711 {home}")
    assert setup.wait() == 0
    loot = drop_box("loot")
    hidden = as_student(
        b, f"{home}/py", str(ATTACKS / "hidden.py"), str(a.pw_uid), str(b.pw_uid), f"{home}/secret", str(loot)
    )
    try:
        assert wait_for(Path(f"{loot}.ready")), "the hidden process did not start"

        assert await homes.end_processes(A) == "processes ended"
        await homes.reset(A)

        def deploy(folder: int) -> None:  # the next customer's password, as A would own it
            fd = os.open("secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=folder)
            os.write(fd, b"PASSSTU=the-next-customers\n")
            os.close(fd)

        await homes.work_in_home(A, deploy)
        time.sleep(0.5)
        assert not alive(hidden), "a process with the student's effective ids survived"
        assert not loot.exists(), "the next customer's file was read"
    finally:
        end(hidden, loot.parent.parent)


async def test_a_student_stopping_every_process_of_theirs_is_still_ended(
    homes: Homes, accounts: tuple[pwd.struct_passwd, pwd.struct_passwd], tmp_path: Path
) -> None:
    """The student ignores SIGTERM and SIGSTOPs every new process of its uid (so a child
    wodmail forks as the student): root's signals still end it, within the bound."""
    a, _ = accounts
    await homes.reset(A)
    ready = drop_box("ready")
    stopper = as_student(a, "/usr/bin/python3", str(ATTACKS / "stopper.py"), env={"READY": str(ready)})
    try:
        assert wait_for(ready), "the stopping program did not start"
        started = time.monotonic()
        assert await homes.end_processes(A, grace=0.5) == "processes ended"
        took = time.monotonic() - started
        stopper.wait(timeout=5)
        assert took < 5, f"ending a stopping student took {took:.1f} s"
    finally:
        end(stopper, ready.parent.parent)


async def test_what_a_student_leaves_outside_the_home_is_removed(
    homes: Homes, accounts: tuple[pwd.struct_passwd, pwd.struct_passwd]
) -> None:
    """Shared memory, message queues, semaphores and files in /tmp, /var/tmp and /dev/shm of
    the former student are gone before the next person gets the same uid."""
    a, b = accounts
    tag, other = f"wodmail-left-{os.getpid()}", f"wodmail-kept-{os.getpid()}"
    assert as_student(a, "/usr/bin/python3", str(ATTACKS / "leftovers.py"), tag).wait() == 0
    assert as_student(b, "/usr/bin/python3", str(ATTACKS / "leftovers.py"), other).wait() == 0

    def ipc_of(uid: int) -> list[str]:
        rows = []
        for kind in ("shm", "msg", "sem"):
            header, *lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
            at = header.split().index("uid")
            rows += [f"{kind}:{line.split()[1]}" for line in lines if line.split()[at] == str(uid)]
        return rows

    assert len(ipc_of(a.pw_uid)) == 3
    outcome = await homes.end_processes(A)
    assert outcome.endswith("6 things left outside the home removed"), outcome
    assert ipc_of(a.pw_uid) == []
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not Path(folder, tag).exists()
        assert Path(folder, other, "deeper", "note").exists(), "another student's files were touched"
    # the other account's things are theirs to keep
    assert len(ipc_of(b.pw_uid)) == 3
    await homes.end_processes(B)
    assert ipc_of(b.pw_uid) == []


def test_hostile_notebooks_give_a_completion_not_a_crash(tmp_path: Path) -> None:
    """Nested past the parser's limit, or 16 MiB of empty objects: counted as not executed."""
    deployed = tmp_path / "WKSHP-X"
    deployed.mkdir()
    good = '{"cells": [{"cell_type": "code", "execution_count": 1}, {"cell_type": "code", "execution_count": null}]}'
    (deployed / "good.ipynb").write_text(good)
    (deployed / "deep.ipynb").write_text("[" * 100_000)
    bomb = "[" + "{}," * ((MAX_NOTEBOOK_BYTES - 10) // 3) + "{}]"
    (deployed / "bomb.ipynb").write_text(bomb)
    notebooks = [Path("good.ipynb"), Path("deep.ipynb"), Path("bomb.ipynb")]
    assert completion_percentage(deployed, notebooks) == 50


def test_a_studentdir_reached_through_a_students_link_is_refused(
    student_dir: Path, accounts: tuple[pwd.struct_passwd, pwd.struct_passwd]
) -> None:
    """A link the student owns in a sticky folder (/var/tmp) could be pointed elsewhere later."""
    a, _ = accounts
    student_dir.mkdir()
    link = Path("/var/tmp") / f"wodmail-link-{os.getpid()}"
    link.symlink_to(student_dir.parent)
    try:
        Homes(link / "homes").check()  # root's link: fine
        os.lchown(link, a.pw_uid, a.pw_gid)
        with pytest.raises(ConfigError, match="can be renamed or replaced by others"):
            Homes(link / "homes").check()
    finally:
        link.unlink()


def test_the_keeper_imports_nothing_from_the_folder_it_was_started_in(tmp_path: Path) -> None:
    """A wodmail/ package planted in the operator's working folder is not run as root."""
    planted = tmp_path / "wodmail"
    planted.mkdir()
    marker = tmp_path / "ran-as-root"
    (planted / "__init__.py").write_text("")
    (planted / "keeper.py").write_text(f"open({str(marker)!r}, 'w').write('planted')\n")
    script = (
        "import asyncio\n"
        "from pathlib import Path\n"
        "from wodmail.keeperclient import Keeper\n"
        "async def main():\n"
        f"    keeper = Keeper(Path({str(tmp_path / 'trash')!r}))\n"
        "    print(await keeper.end_processes(4242, 4242, 0.1, False))\n"
        "    await keeper.aclose()\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONSAFEPATH": "1"},  # the test's own import of wodmail is the installed one
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(0, 0)"
    assert not marker.exists(), "the keeper imported a module from its working folder"


async def test_the_keeper_loads_neither_asyncio_nor_openssl(tmp_path: Path) -> None:
    """The keeper runs as root beside every jobs process: it stays small (14 MiB resident,
    where asyncio and OpenSSL made it 22). What it mapped tells what it loaded."""
    keeper = Keeper(tmp_path / "trash")
    try:
        assert await keeper.end_processes(4242, 4242, 0.1, False) == (0, 0)
        assert keeper._process is not None
        maps = Path(f"/proc/{keeper._process.pid}/maps").read_text()
    finally:
        await keeper.aclose()
    loaded = {
        Path(line.split()[-1]).name for line in maps.splitlines() if line.rstrip().endswith(".so") or ".so." in line
    }
    assert any(name.startswith("libc.so") for name in loaded), loaded  # the maps were read
    forbidden = ["libssl", "_ssl", "_asyncio"]
    if not any("/coverage/" in line for line in maps.splitlines()):  # scripts/test's coverage loads hashlib itself
        forbidden += ["libcrypto", "_hashlib"]
    heavy = sorted(name for name in loaded if name.startswith(tuple(forbidden)))
    assert heavy == [], f"the keeper loaded {heavy}"


async def test_a_process_whose_leader_left_is_still_ended(
    homes: Homes, accounts: tuple[pwd.struct_passwd, pwd.struct_passwd]
) -> None:
    """The main thread exits alone: the process shows as a zombie in /proc while a thread of
    it runs on. It is the student's process all the same, and it is ended."""
    a, _ = accounts
    ready = drop_box("ready")
    headless = as_student(a, "/usr/bin/python3", str(ATTACKS / "headless.py"), env={"READY": str(ready)})
    try:
        assert wait_for(ready), "the headless program did not start"
        assert b"zombie" in Path(f"/proc/{headless.pid}/status").read_bytes(), "the leader did not leave"
        assert await homes.end_processes(A) == "processes ended"
        headless.wait(timeout=5)
    finally:
        end(headless, ready.parent.parent)


def settled(pids: list[int]) -> bool:
    """The storm is over: only its three sleepers are left."""
    names = []
    for pid in pids:
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            return False
    return names == ["sleep"] * 3


def test_the_kernels_process_events_keep_the_keepers_table_true(
    accounts: tuple[pwd.struct_passwd, pwd.struct_passwd],
) -> None:
    """Thousands of short processes, daemons that double-fork and a set-user-ID switch, as
    the student, against a watch whose buffer is too small to keep up: once the storm is
    over, the watch names exactly the processes a fresh look at /proc finds."""
    a, b = accounts
    for buffer in (8 << 20, 4096):
        watch = ProcessWatch(receive_buffer=buffer)
        try:
            assert watch.following, "this kernel delivers no process events to root"
            watch.table()
            storm = as_student(
                a,
                "/bin/sh",
                "-c",
                "for i in $(seq 1 1500); do /bin/true & done; (sleep 30 &); (setsid sleep 30 &); wait; exec sleep 30",
            )
            moved = subprocess.Popen(  # root, then B's uids through setresuid: an id change, not a fork
                [
                    "/usr/bin/python3",
                    "-c",
                    f"import os, time; os.setresuid({b.pw_uid}, {b.pw_uid}, {b.pw_uid}); time.sleep(30)",
                ]
            )
            try:
                deadline = time.monotonic() + 30
                while not settled(processes_of(a.pw_uid, None)) and time.monotonic() < deadline:
                    time.sleep(0.1)
                for uid in (a.pw_uid, b.pw_uid):
                    seen, found = sorted(processes_of(uid, None, watch.table())), sorted(processes_of(uid, None))
                    differ = sorted(set(seen) ^ set(found))[:10]
                    assert seen == found and found, (
                        f"buffer {buffer}: uid {uid}: {len(seen)} seen, {len(found)} found: {differ}"
                    )
            finally:
                subprocess.run(["pkill", "-KILL", "-U", str(a.pw_uid)], check=False)
                moved.kill()
                moved.wait()
                storm.wait()
            time.sleep(0.2)
            assert processes_of(a.pw_uid, None, watch.table()) == [], "the watch kept processes that ended"
        finally:
            watch.close()


def test_homes_a_crash_left_in_the_trash_are_erased_when_the_daemon_starts(
    site: Site, daemon_factory: Callable[..., Daemon]
) -> None:
    """A crash between setting a home aside and erasing it leaves it in the trash: the keeper,
    started with the jobs process, erases it at once, before any command."""
    trash = site.student_dir / TRASH
    left = trash / "student7-1a2b"
    (left / "notes" / "deep").mkdir(parents=True)
    site.student_dir.chmod(0o755)
    trash.chmod(0o700)
    for number in range(50):
        (left / "notes" / "deep" / f"{number}.txt").write_text("work\n")
    daemon_factory()
    deadline = time.monotonic() + 30
    while any(trash.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(trash.iterdir()), sorted(trash.iterdir())
    assert site.jobs() == []
