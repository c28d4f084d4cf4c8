"""The keeper: a small root process beside the jobs process, for the work that must not
run inside it.

- **Ending a student's processes.** A child forked from the keeper drops to the student's
  uid and gid for good (no supplementary groups) and calls kill(-1, SIGTERM), then, after a
  grace period, kill(-1, SIGKILL) until the kernel says no process of that uid is left.
  kill(-1) reaches every process the student may signal (real or saved uid: setuid
  programs the student started too) in one pass of the kernel's task list, during which
  no fork can complete, so a process that re-spawns, forks or calls setsid cannot outrun
  it. The keeper is small, so the fork costs a fraction of a millisecond; forking the jobs
  process (90 MiB, threads) would cost more and copy its pages for the whole grace period.
- **Emptying the trash.** An erased home is renamed by the jobs process into
  STUDENTDIR/.wodmail-trash (root's, mode 0700: no student reaches it by any name) and a
  fresh home is made at once. The keeper then empties the trash in a thread of its own, as
  the owner of each home (wodmail.identity), then as root for whatever the student could
  not remove (files a root hook left), never following a link, never blocking on a FIFO,
  at any depth (wodmail.erase). A million files take seconds here, in another process:
  the jobs go on meanwhile.

It talks to the jobs process over its standard input and output, one JSON object a line:
`{"id": 1, "op": "end", "uid": 1001, "gid": 1001, "grace": 2}` is answered
`{"id": 1, "ended": 3}` (or `"error": "..."`); `{"op": "trash"}` wakes the trash emptier.
It dies with the jobs process (PR_SET_PDEATHSIG); the jobs process starts another on the
next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import resource
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from wodmail.erase import DIR_FLAGS, erase_contents
from wodmail.identity import Identity, acting_as

log = logging.getLogger(__name__)

TRASH = ".wodmail-trash"
#: How long ending a student's processes may take in all before the step fails.
END_BOUND = 10.0
_KILL_ROUNDS = 200
#: A path that does not exist (see _others_running).
_NO_PROGRAM = "/nonexistent/wodmail-probe"


# --------------------------------------------------------------------------- in the keeper


def _living_processes(uid: int) -> list[int]:
    """Processes whose real or saved uid is `uid` and that are not zombies (a zombie runs
    nothing), this one excepted."""
    found = []
    me = str(os.getpid())
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == me:
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as status:
                text = status.read(2048)
        except OSError:
            continue
        state = uid_line = b""
        for line in text.split(b"\n"):
            if line.startswith(b"State:"):
                state = line.split()[1]
            elif line.startswith(b"Uid:"):
                uid_line = line
        fields = uid_line.split()
        if state != b"Z" and len(fields) >= 4 and uid in (int(fields[1]), int(fields[3])):
            found.append(int(name))
    return found


def _others_running() -> bool:
    """In a child running as the student with RLIMIT_NPROC at 2: does any other task of its
    uid exist (zombies not yet reaped included)? The kernel answers: creating a task (it
    and us make 2) is refused with EAGAIN only if the uid has more. The new task's exec of
    a path that does not exist fails at once; nothing runs."""
    try:
        os.posix_spawn(_NO_PROGRAM, [_NO_PROGRAM], {})
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return False
    raise OSError(errno.EEXIST, f"{_NO_PROGRAM} exists")


def _end_as_student(uid: int, gid: int, grace: float) -> int:
    """In a child that is now `uid`: end every process of `uid`. Exit status: 0 none were
    running, 1 some were ended, 3 some survive."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (2, 2))
    if not _others_running():  # the common case (a fresh student): no /proc scan, no signal
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _others_running():
        time.sleep(0.02)
    for _ in range(_KILL_ROUNDS):
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        # kill(-1) says nothing of what it reached (0 as soon as any process exists);
        # zombies keep the count up until reaped (a container's init may never): the
        # living ones are looked for in /proc then.
        if not _others_running() or not _living_processes(uid):
            return 1
        time.sleep(0.01)
    return 3


def end_processes(uid: int, gid: int, grace: float) -> int:
    """Fork a child that ends every process of `uid`; returns 0 (none were running) or 1."""
    if uid == 0:
        raise ValueError("refusing to end the processes of root")
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        status = 2
        try:
            status = _end_as_student(uid, gid, grace)
        finally:
            os._exit(status)
    exited = os.pidfd_open(pid)
    try:
        watch = select.poll()
        watch.register(exited, select.POLLIN)
        if not watch.poll((grace + END_BOUND) * 1000):  # stopped by the student, say: it is theirs
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise OSError(errno.ETIMEDOUT, f"ending the processes of uid {uid} took more than {END_BOUND:.0f} s")
    finally:
        os.close(exited)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 3:
        raise OSError(errno.EBUSY, f"processes of uid {uid} survive SIGKILL")
    if code not in (0, 1):
        raise OSError(errno.EIO, f"the child ending the processes of uid {uid} failed ({code})")
    return code


class TrashEmptier(threading.Thread):
    """Empties STUDENTDIR/.wodmail-trash whenever woken (and once at start)."""

    def __init__(self, trash: Path) -> None:
        super().__init__(name="trash", daemon=True)
        self.trash = trash
        self.wanted = threading.Event()
        self.wanted.set()

    def run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            try:
                self.empty()
            except OSError as exc:
                log.warning("cannot empty %s: %s", self.trash, exc)

    def empty(self) -> None:
        trash = os.open(self.trash, DIR_FLAGS)
        try:
            for name in os.listdir(trash):
                started = time.monotonic()
                try:
                    count = self.remove(trash, name)
                except OSError as exc:
                    log.warning("cannot erase %s/%s yet: %s", self.trash, name, exc)
                    continue
                log.info("erased %s (%d entries, %.2f s)", name, count, time.monotonic() - started)
        finally:
            os.close(trash)

    @staticmethod
    def remove(trash: int, name: str) -> int:
        st = os.stat(name, dir_fd=trash, follow_symlinks=False)
        try:
            home = os.open(name, DIR_FLAGS, dir_fd=trash)
        except NotADirectoryError:
            os.unlink(name, dir_fd=trash)
            return 1
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            os.unlink(name, dir_fd=trash)
            return 1
        try:
            count = 0
            if st.st_uid != 0:
                with contextlib.suppress(OSError), acting_as(Identity(st.st_uid, st.st_gid)):
                    count += erase_contents(home)
            # What the student could not remove (a root hook's files): root, in a folder no
            # student can reach any more, through descriptors, never following a link.
            count += erase_contents(home)
        finally:
            os.close(home)
        os.rmdir(name, dir_fd=trash)
        return count + 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def main(argv: list[str]) -> int:
    """`python -m wodmail.keeper TRASHDIR`: serve requests on stdin until it closes."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keeper %(levelname)s %(message)s")
    emptier = TrashEmptier(Path(argv[0]))
    emptier.start()
    lock = threading.Lock()

    def answer(reply: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

    def end(request: dict[str, Any]) -> None:
        try:
            ended = end_processes(int(request["uid"]), int(request["gid"]), float(request["grace"]))
            answer({"id": request["id"], "ended": ended})
        except (OSError, ValueError) as exc:
            answer({"id": request["id"], "error": str(exc)})

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "end":
            threading.Thread(target=end, args=(request,), daemon=True).start()
        elif request["op"] == "trash":
            emptier.wanted.set()
    return 0


# --------------------------------------------------------------------------- in the jobs process


class Keeper:
    """The jobs process's side: starts the keeper on first use (again if it died)."""

    def __init__(self, trash: Path) -> None:
        self.trash = trash
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._starting = asyncio.Lock()

    async def _started(self) -> asyncio.subprocess.Process:
        async with self._starting:
            process = self._process
            if process is not None and process.returncode is None:
                return process
            env = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "LC_ALL", "PYTHONPATH")}
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "wodmail.keeper",
                str(self.trash),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            self._process = process
            self._reader = asyncio.create_task(self._read(process), name="keeper")
            return process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            reply = json.loads(line)
            waiting = self._waiting.pop(int(reply.get("id", 0)), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(reply)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(OSError(errno.EPIPE, "the keeper process ended"))
        self._waiting.clear()

    async def _send(self, request: dict[str, Any]) -> asyncio.subprocess.Process:
        process = await self._started()
        assert process.stdin is not None
        process.stdin.write((json.dumps(request) + "\n").encode())
        await process.stdin.drain()
        return process

    async def end_processes(self, uid: int, gid: int, grace: float) -> int:
        """End every process of `uid`; 0 if none was running, 1 if some were ended."""
        self._next += 1
        request_id = self._next
        request = {"id": request_id, "op": "end", "uid": uid, "gid": gid, "grace": grace}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self._send(request)
            reply = await asyncio.wait_for(future, grace + END_BOUND + 5)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "the keeper did not answer in time") from None
        finally:
            self._waiting.pop(request_id, None)
        if "error" in reply:
            raise OSError(errno.EIO, str(reply["error"]))
        return int(reply["ended"])

    async def empty_trash(self) -> None:
        """Ask for the trash to be emptied (now, in the keeper)."""
        await self._send({"op": "trash"})

    async def aclose(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            await self._reader


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
