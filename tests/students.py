"""Hostile students for the tests: real unix accounts, the attack programs they run, and
snapshots of everything they must not be able to change.

The accounts are real (`useradd`), named student{N} so that HOMEOWNER `student` gives each
home to its student; the attack programs (tests/data/attacks/, stdlib Python run by
/usr/bin/python3) run with the student's uid and gid and no supplementary group, beside the
daemon's jobs. What a student may not touch is snapshotted before and compared after:
root-owned canaries outside STUDENTDIR (a 0600 secret among them), the skeleton, the
workshop catalog, another student's home (bytes, owner and mode of every entry).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import select
import shutil
import signal
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA, SAMPLES, Daemon, Site, readable_by_students

ATTACKS = readable_by_students(DATA / "attacks")
PYTHON = "/usr/bin/python3"  # what a student can run (the project's venv may not be readable)
REAPER = ATTACKS / "reaper.py"

#: The GECOS field of every account the tests make: only such accounts are ever removed.
ACCOUNT_MARK = "wodmail hostile-student test"
#: Folders the tests make under /var/tmp (root-owned, 0755 down to STUDENTDIR).
FOLDER_PREFIX = "wodmail-students-"

ATTACK_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}

#: The skeleton every home starts from (SKELDIR): a few files and a folder, 0755 on top.
SKELETON = {
    ".profile": b"# the skeleton's profile\nexport EDITOR=nano\n",
    "README.txt": b"Welcome to the Jupyter host.\n",
    "examples/hello.py": b"print('hello')\n",
    "examples/deeper/notes.txt": b"notes\n",
}
#: Notebooks the test catalog's WKSHP-Sample has on top of the shipped sample's.
EXTRA_NOTEBOOKS = ("3-More.ipynb", "4-Even-More.ipynb", "5-Last.ipynb")

#: A tiny real playbook: RESET needs the workshop's reset hook.
RESET_HOOK = """\
- name: Reset hook of the hostile-student tests
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Nothing to reset outside the homes
      ansible.builtin.debug:
        msg: "students {{ STDIDMIN }}..{{ STDIDMAX }}"
"""


def require_root() -> None:
    """These tests make accounts and run programs as them: without root they fail, loudly."""
    if os.geteuid() != 0:
        pytest.fail("the hostile-student tests need root (real accounts, setuid, canaries owned by root)")


# --- accounts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Student:
    stdid: int
    uid: int
    gid: int

    @property
    def name(self) -> str:
        return f"student{self.stdid}"


def make_accounts(
    stdids: Iterable[int],
    *,
    shell: str = "/usr/sbin/nologin",
    homes: Path | None = None,
    mark: str = ACCOUNT_MARK,
) -> dict[int, Student]:
    """Real unprivileged accounts student{N}, each with a group of its own and no home made
    (its home homes/student{N}, or none); `mark` in the GECOS field says they are the tests'."""
    made: dict[int, Student] = {}
    for stdid in stdids:
        name = f"student{stdid}"
        home = str(homes / name) if homes is not None else "/nonexistent"
        subprocess.run(
            [
                *("useradd", "--no-create-home", "--user-group", "--home-dir", home),
                *("--shell", shell, "--comment", mark, name),
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
        made[stdid] = Student(stdid, entry.pw_uid, entry.pw_gid)
    return made


def remove_accounts(stdids: Iterable[int], mark: str = ACCOUNT_MARK) -> None:
    """Remove the test accounts (GECOS `mark`) among student{N}, their processes first, and
    their groups; refuse any other account."""
    for stdid in stdids:
        name = f"student{stdid}"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_gecos != mark:
            pytest.fail(f"{name} exists and is not a test account: refusing to touch it")
        end_processes([Student(stdid, entry.pw_uid, entry.pw_gid)])
        subprocess.run(["userdel", "--force", name], check=True, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)  # if userdel left it


def remove_stale_folders() -> None:
    """Folders a crashed earlier run left under /var/tmp (`rm -rf` copes with any depth), and
    the RAM disks mounted there (hosts first, then what holds their images)."""
    for folder in sorted(Path("/var/tmp").glob(FOLDER_PREFIX + "*"), key=lambda path: DISK_PREFIX in path.name):
        if os.path.ismount(folder):
            subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=False)


# --- processes ------------------------------------------------------------------------------------


def processes_of(*uids: int) -> dict[int, list[int]]:
    """Pids of the live processes of each of `uids` (real, effective or saved uid), from one
    look at /proc; zombies are not live."""
    found: dict[int, list[int]] = {uid: [] for uid in uids}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue
        for uid in {int(value) for value in fields.get("Uid", "").split()[:3]} & found.keys():
            found[uid].append(int(entry.name))
    return found


def end_processes(students: Iterable[Student], timeout: float = 15.0) -> None:
    """The tests' own clean-up: kill(-1, SIGKILL) as each student until none has a process
    (from a process of the student's own, it reaches every one, even those forking)."""
    students = list(students)
    deadline = time.monotonic() + timeout
    while True:
        running = processes_of(*(s.uid for s in students))
        left = [s for s in students if running[s.uid]]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes left after {timeout} s: {[(s.name, running[s.uid]) for s in left]}")
        for student in left:
            subprocess.run(
                [
                    "setpriv",
                    f"--reuid={student.uid}",
                    f"--regid={student.gid}",
                    "--clear-groups",
                    "kill",
                    "-KILL",
                    "-1",
                ],
                check=False,
                capture_output=True,
            )
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_of(pids: Iterable[int]) -> int:
    """Resident bytes of `pids` together (those still there)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def stop_daemon(daemon: Daemon, grace: float = 5.0) -> None:
    """Stop the daemon; one that does not stop in `grace` (a jobs process stuck in a FIFO's
    open, say) is killed with everything it started."""
    process = daemon.process
    if process is None or process.poll() is not None:
        return
    tree = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        for pid in [process.pid, *tree]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


class Attacks:
    """Attack programs from tests/data/attacks/, each running as its student, until stopped.

    One reaper.py (root) starts them all and reaps what they orphan, as init does on a real
    host; each attack prints `ready` on a pipe of its own once it is in place. Used as a
    context manager: every attack is ready inside the block, and ended after it.
    """

    def __init__(self, program: str, arguments: dict[Student, list[object]], ready_timeout: float = 120.0) -> None:
        self.program = program
        self.ready_timeout = ready_timeout
        self.said: dict[Student, str] = {}
        self.students = list(arguments)
        self.pipes: dict[Student, int] = {}
        specs, ends = [], []
        for student, args in arguments.items():
            self.pipes[student], end = os.pipe()
            ends.append(end)
            argv = [str(ATTACKS / program), *map(str, args)]
            specs.append({"uid": student.uid, "gid": student.gid, "stdout": end, "argv": argv})
        self.process = subprocess.Popen(
            [PYTHON, "-B", "-S", "-E", str(REAPER), json.dumps(specs)],
            pass_fds=ends,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ATTACK_ENV,
            cwd="/",
        )
        for end in ends:
            os.close(end)
        self.stderr = ""

    def __enter__(self) -> Attacks:
        self.said = self.wait_ready(self.ready_timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 120.0) -> dict[Student, str]:
        """Each attack's `ready` line (what follows the word, if anything)."""
        deadline = time.monotonic() + timeout
        said = {}
        for student, pipe in self.pipes.items():
            line = read_line(pipe, deadline)
            if not line.startswith("ready"):
                self.stop()
                raise AssertionError(f"{self.program} as {student.name} did not start: {self.stderr[-2000:]}")
            said[student] = line.removeprefix("ready").strip()
        return said

    def stop(self) -> None:
        """End every process of the students (the attacks' and all they left), and reap them."""
        end_processes(self.students)
        try:
            _, errors = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        self.stderr = errors.decode(errors="replace")
        for pipe in self.pipes.values():
            with contextlib.suppress(OSError):
                os.close(pipe)
        self.pipes = {}


def read_line(fd: int, deadline: float) -> str:
    """One line from the pipe `fd` ("" at its end, or when `deadline` passes first)."""
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def attack_once(student: Student, program: str, *args: object, timeout: float = 120.0) -> str:
    """Run a one-shot attack program (it prints `ready` when done) to its end; what it said."""
    with Attacks(program, {student: list(args)}, ready_timeout=timeout) as running:
        return running.said[student]


def run_as(student: Student, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """A short command as the student (no supplementary groups)."""
    return subprocess.run(
        ["setpriv", f"--reuid={student.uid}", f"--regid={student.gid}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ATTACK_ENV,
        cwd="/",
        check=False,
    )


# --- what must not change ------------------------------------------------------------------------


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under `top` (and `top` itself): kind, mode, owner and content (bytes'
    digest, link target). Iterative and never following a link."""
    found: dict[str, tuple[Any, ...]] = {}
    todo = [""]
    while todo:
        relative = todo.pop()
        path = top / relative if relative else top
        try:
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            content: object = None
            if stat.S_ISREG(kind):
                with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as file:
                    content = hashlib.sha256(file.read()).hexdigest()
            elif stat.S_ISLNK(kind):
                content = os.readlink(path)
            elif stat.S_ISDIR(kind):
                todo.extend(f"{relative}/{name}".lstrip("/") for name in sorted(os.listdir(path)))
        except OSError as exc:  # gone meanwhile, or a path too long to name (a deep tree)
            found[relative or "."] = ("?", exc.strerror)
            continue
        found[relative or "."] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, content)
    return found


def changes(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    """What differs between two snapshots, one line per entry (no content shown)."""
    lines = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            lines.append(f"{name}: appeared {after[name][:3]}")
        elif new is None:
            lines.append(f"{name}: vanished (was {old[:3]})")
        else:
            what = [label for label, a, b in zip(("mode", "uid", "gid", "content"), old, new, strict=False) if a != b]
            lines.append(f"{name}: {', '.join(what)} changed {old[:3]} -> {new[:3]}")
    return lines


def owned_outside(uids: Iterable[int], allowed: Path, since: Path) -> list[str]:
    """Paths on the root filesystem owned by one of `uids` whose owner or content changed
    after `since` was made, outside `allowed` (about 2 s with a warm cache)."""
    tests: list[str] = []
    for uid in uids:
        tests += ["-o", "-uid", str(uid)] if tests else ["-uid", str(uid)]
    result = subprocess.run(
        [
            "find",
            "/",
            "-xdev",
            "-path",
            str(allowed),
            "-prune",
            "-o",
            "(",
            *tests,
            ")",
            "-cnewer",
            str(since),
            "-print",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.split()


def entries_under(folder: Path) -> int:
    """How many entries `folder` holds, at any depth, hidden ones and root's own included."""
    found = subprocess.run(["find", str(folder), "-xdev", "-printf", "."], capture_output=True, check=False)
    return len(found.stdout)


# --- the host: STUDENTDIR, skeleton, catalog, canaries --------------------------------------------

DISK_PREFIX = "disk-"


class RamDisk:
    """ext4 on a loop device over an image in a tmpfs of its own, mounted on `mount`: the file
    system of the host's root, without this machine's virtual disk under it. There a mkdir
    takes 0.6 ms and a new file 1.1 ms (60 and 46 us here), so that the million names, the
    deep trees and the attacks' pads spent most of the hostile-student tests' time in the disk.
    The image's memory is given back when the disk is removed."""

    def __init__(self, mount: Path, size_gib: int = 6) -> None:
        self.mount = mount
        self.backing = Path(tempfile.mkdtemp(dir="/var/tmp", prefix=FOLDER_PREFIX + DISK_PREFIX))
        image = self.backing / "ext4.img"
        try:
            run_root("mount", "-t", "tmpfs", "-o", f"size={size_gib + 1}g,mode=0700", "wodmail-test", self.backing)
            with open(image, "wb") as sparse:
                sparse.truncate(size_gib << 30)
            # A new image reads as zeros: nothing to initialise, nothing to discard.
            run_root("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", image)
            run_root("mount", "-o", "loop,noinit_itable", image, mount)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Unmount both (lazily if something still holds them); the loop device goes with them."""
        for folder in (self.mount, self.backing):
            if not os.path.ismount(folder):
                continue
            if subprocess.run(["umount", folder], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", folder], capture_output=True, check=False)
        shutil.rmtree(self.backing, ignore_errors=True)


def run_root(*argv: str | Path) -> None:
    """A root-only command the tests need; its failure fails the test with what it said."""
    done = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")


class Host:
    """A Jupyter host's folders for one test, under a root-owned 0755 folder in /var/tmp
    (tmp_path's /tmp/pytest-of-root is 0700: no student could reach a home there); with
    `ram_disk`, that folder is a RamDisk of its own."""

    def __init__(self, site: Site, ram_disk: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(dir="/var/tmp", prefix=FOLDER_PREFIX))
        self.disk = RamDisk(self.root) if ram_disk else None
        self.root.chmod(0o755)
        self.started = self.root / "started"  # its ctime: when the test began
        self.started.touch()
        self.student_dir = self.made(self.root / "homes")
        self.skeleton = self.made(self.root / "skel")
        for name, data in SKELETON.items():
            self.made((self.skeleton / name).parent)
            (self.skeleton / name).write_bytes(data)
            (self.skeleton / name).chmod(0o644)
        self.catalog = self.made(self.root / "workshops")
        shutil.copytree(SAMPLES / "WKSHP-Sample", self.catalog / "WKSHP-Sample")
        shutil.copytree(SAMPLES / "WKSHP-SampleReset", self.catalog / "WKSHP-SampleReset")
        for name in EXTRA_NOTEBOOKS:
            shutil.copy(SAMPLES / "WKSHP-Sample" / "1-Python101.ipynb", self.catalog / "WKSHP-Sample" / name)
        self.hooks = self.made(self.root / "hooks")
        (self.hooks / "reset.yml").write_text(RESET_HOOK)
        self.canary = self.made(self.root / "canary")
        self.secret = self.canary / "secret"
        self.secret.write_bytes(b"a root-only secret\n")
        self.secret.chmod(0o600)
        self.public = self.canary / "public.txt"
        self.public.write_bytes(b"root's file, readable by all\n")
        self.notebook = self.canary / "notebook.ipynb"
        self.notebook.write_bytes((SAMPLES / "WKSHP-Sample" / "0-ReadMeFirst.ipynb").read_bytes())
        self.folder = self.made(self.canary / "folder")
        (self.folder / "inner.txt").write_bytes(b"inner\n")
        self.made(self.folder / "sub")
        (self.folder / "sub" / "inner.txt").write_bytes(b"inner, deeper\n")
        for path in (self.public, self.notebook, self.folder / "inner.txt", self.folder / "sub" / "inner.txt"):
            path.chmod(0o644)
        site.student_dir = self.student_dir
        site.values.update(
            STUDENTDIR=str(self.student_dir),
            SKELDIR=str(self.skeleton),
            WORKSHOPDIR=str(self.catalog),
            HOMEOWNER="student",
            HOMEMODE="0750",
            WORKERS=64,
        )
        site.workshops["WKSHP-SampleReset"]["hooks"] = {"reset": str(self.hooks / "reset.yml")}

    @staticmethod
    def made(folder: Path) -> Path:
        folder.mkdir(mode=0o755, exist_ok=True)
        folder.chmod(0o755)
        return folder

    def home(self, stdid: int) -> Path:
        return self.student_dir / f"student{stdid}"

    def workshop_files(self, workshop: str = "WKSHP-Sample") -> tuple[list[str], list[str]]:
        """(folders, files) of a deployed workshop, as paths relative to a home."""
        top = self.catalog / workshop
        deployed = [p for p in top.rglob("*") if p.name != "wod.yml"]
        folders = [workshop] + [f"{workshop}/{p.relative_to(top)}" for p in deployed if p.is_dir()]
        files = [f"{workshop}/{p.relative_to(top)}" for p in deployed if p.is_file()]
        return sorted(folders), sorted(files)

    def notebooks(self, workshop: str = "WKSHP-Sample") -> list[str]:
        return sorted(p.name for p in (self.catalog / workshop).glob("*.ipynb"))

    def skeleton_entries(self) -> tuple[list[str], list[str]]:
        """(folders, files) of the skeleton, relative."""
        folders = sorted(str(p.relative_to(self.skeleton)) for p in self.skeleton.rglob("*") if p.is_dir())
        return folders, sorted(SKELETON)

    def protected(self) -> dict[str, Path]:
        """What no student may change, by name."""
        return {
            "canaries": self.canary,
            "skeleton": self.skeleton,
            "catalog": self.catalog,
            "hooks": self.hooks,
        }

    def remove(self) -> None:
        if self.disk is not None:
            self.disk.remove()  # and everything on it with it
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)


# --- jobs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ended:
    """How a job ended."""

    id: int
    verb: str
    stdid: int
    state: str
    error: str
    seconds: float  # from the mail's 250 to the job's end

    def named_failure(self) -> bool:
        """A failure that says what was wrong (not an unexpected exception's name)."""
        return self.state == "failed" and bool(self.error) and not self.error.startswith("internal error")

    def __str__(self) -> str:
        shown = f": {self.error[:300]}" if self.error else ""
        return f"job {self.id} {self.verb} {self.stdid} {self.state} after {self.seconds:.1f} s{shown}"


def send(daemon: Daemon, subject: str, body: str = "WKSHP-Sample") -> tuple[int, float]:
    """Send one command over the standard door as the registration app; (job id, when sent)."""
    code, text = daemon.send(subject, body)
    assert code == 250 and text.startswith(b"queued as job "), (subject, code, text)  # not a duplicate
    return int(text.split()[-1]), time.monotonic()


def wait_jobs(site: Site, sent: dict[int, float], bound: float) -> dict[int, Ended]:
    """Wait for the jobs `sent` (id: when sent) to end, each within `bound` seconds of its
    sending; a job still going past its bound fails the test."""
    ended: dict[int, Ended] = {}
    while len(ended) < len(sent):
        try:
            with contextlib.closing(site.db()) as conn:
                rows = conn.execute(
                    f"SELECT id, verb, stdid, state, error FROM jobs WHERE id IN ({','.join('?' * len(sent))})",
                    list(sent),
                ).fetchall()
        except sqlite3.Error:
            rows = []
        now = time.monotonic()
        for job_id, verb, stdid, state, error in rows:
            if job_id not in ended and state in ("done", "failed"):
                ended[job_id] = Ended(job_id, verb, stdid, state, error or "", now - sent[job_id])
        late = [job_id for job_id, at in sent.items() if job_id not in ended and now - at > bound]
        if late:
            states = {row[0]: row[3] for row in rows}
            raise AssertionError(
                f"{len(late)} job(s) did not end within {bound} s (a hang): "
                + ", ".join(f"job {job_id} {states.get(job_id, '?')}" for job_id in late[:10])
            )
        time.sleep(0.02)
    return ended


def run_commands(site: Site, daemon: Daemon, commands: list[tuple[str, str]], bound: float) -> list[Ended]:
    """Send every (subject, body) at once, then wait for all of them."""
    sent = dict(send(daemon, subject, body) for subject, body in commands)
    ended = wait_jobs(site, sent, bound)
    return [ended[job_id] for job_id in sent]


def home_problems(host: Host, student: Student, workshop: str = "WKSHP-Sample") -> list[str]:
    """What is wrong with a home just made by CREATE: the student's, HOMEMODE (0750), the
    skeleton and the workshop in it, owned by the student."""
    home = host.home(student.stdid)
    try:
        st = os.lstat(home)
    except FileNotFoundError:
        return [f"{home} is missing after CREATE"]
    problems = []
    if not stat.S_ISDIR(st.st_mode):
        problems.append(f"{home} is not a folder ({stat.filemode(st.st_mode)})")
    if (st.st_uid, st.st_gid) != (student.uid, student.gid):
        problems.append(f"{home} is owned by {st.st_uid}:{st.st_gid}, not {student.name}")
    if stat.S_IMODE(st.st_mode) != 0o750:
        problems.append(f"{home} has mode {stat.S_IMODE(st.st_mode):04o}, not HOMEMODE 0750")
    for name, data in SKELETON.items():
        path = home / name
        if not path.is_file() or path.is_symlink() or path.read_bytes() != data:
            problems.append(f"{path}: not the skeleton's file")
    folders, files = host.workshop_files(workshop)
    for name in folders + files:
        entry = home / name
        if entry.is_symlink() or not entry.exists():
            problems.append(f"{entry}: not deployed")
        elif (entry.lstat().st_uid, entry.lstat().st_gid) != (student.uid, student.gid):
            problems.append(f"{entry}: not owned by {student.name}")
    return problems


def leftovers(host: Host, stdid: int) -> list[str]:
    """What is in a home after its erase beyond the skeleton (the old content must be gone);
    a missing home has none."""
    home = host.home(stdid)
    if not home.exists():
        return []
    skeleton_folders = host.skeleton_entries()[0]
    found = []
    for name, entry in snapshot(home).items():
        if name == ".":
            continue
        mode, content = entry[0], entry[-1]
        digest = hashlib.sha256(SKELETON[name]).hexdigest() if name in SKELETON else None
        if not ((mode.startswith("d") and name in skeleton_folders) or (mode.startswith("-") and content == digest)):
            found.append(name)
    return found
