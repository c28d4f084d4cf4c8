"""The keeper: a small root process beside the jobs process, for the work that must not
run inside it.

- **Ending a student's processes**, as root, so that the student can neither signal the
  keeper nor block its signals: every process any of whose user ids (or, for a group of
  the student's own, group ids) is the student's, found in /proc (set-user-ID copies run by
  a second account included), gets SIGTERM, a grace period, then kill(-1, SIGKILL) from a
  child forked as the student (one pass of the kernel's task list, during which no fork
  completes: a fork bomb cannot outrun it), then SIGSTOP and SIGKILL from root to whatever
  is still found, until nothing is. Who runs what comes from a table the kernel's process
  events keep current (wodmail.proctable): with nothing running (the common case) a
  request costs a look-up, no scan of /proc, no fork, no thread.
- **Emptying the trash.** An erased home is renamed by the jobs process into
  STUDENTDIR/.wodmail-trash (root's, mode 0700: no student reaches it by any name) and a
  fresh home is made at once. The keeper then empties the trash in a thread of its own, as
  the owner of each home (wodmail.identity), then as root for whatever the student could
  not remove (files a root hook left), never following a link, never blocking on a FIFO,
  at any depth (wodmail.erase). A million files take seconds here, in another process:
  the jobs go on meanwhile.

It talks to the jobs process over its standard input and output, one JSON object a line:
`{"id": 1, "op": "end", "uid": 1001, "gid": 1001, "grace": 2, "group": true}` is answered
`{"id": 1, "ended": 1}` (or `"error": "..."`); `{"op": "trash"}` wakes the trash emptier.
It dies with the jobs process (PR_SET_PDEATHSIG); the jobs process starts another on the
next request (wodmail.keeperclient, its side). It loads neither asyncio nor OpenSSL: 14 MiB
resident instead of 22, in a process that runs beside every jobs process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wodmail.erase import DIR_FLAGS, erase_contents, remove_what_it_can
from wodmail.identity import Identity, acting_as
from wodmail.proctable import ProcessWatch, processes_of

log = logging.getLogger(__name__)

TRASH = ".wodmail-trash"
#: How long ending a student's processes may take in all before the step fails.
END_BOUND = 10.0


# --------------------------------------------------------------------------- in the keeper


def _signal_all(pids: list[int], signum: int) -> None:
    """Send `signum` to each of `pids` through a pidfd (a pid reused meanwhile is not hit)."""
    for pid in pids:
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            signal.pidfd_send_signal(handle, signum)
        except OSError:
            pass
        finally:
            os.close(handle)


def _kill_all_as(uid: int, gid: int) -> None:
    """kill(-1, SIGKILL) from a child that is `uid`: every task whose real or saved uid is
    `uid` dies in one pass of the kernel's task list, during which no fork completes (a
    fork bomb cannot outrun it). The child may be stopped by the student: it gets a second."""
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    exited = os.pidfd_open(pid)
    try:
        watch = select.poll()
        watch.register(exited, select.POLLIN)
        if not watch.poll(1000):
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(exited)
    os.waitpid(pid, 0)


def end_processes(uid: int, gid: int, grace: float, group_too: bool = False, found: list[int] | None = None) -> int:
    """End every process of `uid` (and of the group `gid` when `group_too`: the student's own
    group); 0 if none was running, 1 if some were ended.

    Run as root: SIGTERM to each, `grace` seconds to go, then kill(-1) from a child running
    as the student, then, as root, SIGSTOP and SIGKILL to whatever is still found (the
    student can signal neither the keeper nor root's signals away), until none is left or
    END_BOUND has passed. `found`: what a look at /proc just found, if one was taken.
    """
    if uid == 0 or (group_too and gid == 0):
        raise ValueError("refusing to end the processes of root")
    group = gid if group_too else None
    if found is None:
        found = processes_of(uid, group)
    if not found:
        return 0
    _signal_all(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and processes_of(uid, group):
        time.sleep(0.05)
    _kill_all_as(uid, gid)
    deadline = time.monotonic() + END_BOUND
    while found := processes_of(uid, group):
        if time.monotonic() > deadline:
            raise OSError(errno.EBUSY, f"{len(found)} processes of uid {uid} survive SIGKILL after {END_BOUND:.0f} s")
        _signal_all(found, signal.SIGSTOP)  # a stopped process forks no more
        _signal_all(found, signal.SIGKILL)
        time.sleep(0.01)
    return 1


#: Shared folders where a student may leave files the next person with the same uid would
#: find (each entry owned by the student is removed, as the student): the temporary folders,
#: the lock folder (1777 on Debian, often on the root filesystem, set-ID programs allowed) and
#: POSIX message queues (where systemd mounts them).
SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
#: How deep, and into how many folders, a shared folder's sweep goes through world-writable
#: folders and other users' folders (where a student may also leave files, a set-ID copy of
#: a program for another account to run among them). Bounded: another student's thousands
#: of folders must not make every clean-up slow.
SWEEP_DEPTH = 16
SWEEP_FOLDERS = 10_000
#: Files by user name that bring a student back after their processes ended, and the
#: mailbox (what was mailed to the account is not for the next person to hold it).
_COMEBACKS = ("/var/spool/cron/crontabs/{name}", "/var/lib/systemd/linger/{name}", "/var/mail/{name}")
_AT_JOBS = "/var/spool/cron/atjobs"
_IPC_RMID = 0


#: An account whose leftovers are cleared: uid, gid, name.
Account = tuple[int, int, str]


def clear_leftovers(accounts: list[Account]) -> list[int]:
    """Remove what each account left outside its home for the next person with that uid:
    files in the shared folders and in other users' folders there (each removed as its
    student, see `_Sweep`; what cannot go keeps no permission bit), System V IPC
    objects, a crontab, `at` jobs, systemd lingering. Run once their processes have ended.
    One pass over each folder and table serves every account of a batch. Returns how many
    things were removed, account by account."""
    index = {uid: number for number, (uid, _, _) in enumerate(accounts)}
    removed = [0] * len(accounts)
    for shared in SHARED_TEMP:
        try:
            folder = os.open(shared, DIR_FLAGS)
        except OSError:
            continue
        sweep = _Sweep(shared, accounts, index, removed)
        try:
            sweep.folder(folder, 0)
        finally:
            os.close(folder)
        if sweep.folders > SWEEP_FOLDERS:
            log.warning("%s holds more than %d folders of others: not all were looked in", shared, SWEEP_FOLDERS)
    for number, (_, _, name) in enumerate(accounts):
        for pattern in _COMEBACKS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pattern.format(name=name))
                removed[number] += 1
    with contextlib.suppress(OSError), os.scandir(_AT_JOBS) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                owner = index.get(entry.stat(follow_symlinks=False).st_uid)
                if owner is not None:
                    os.unlink(entry.path)
                    removed[owner] += 1
    for uid, count in _remove_ipc(set(index)).items():
        removed[index[uid]] += count
    return removed


class _Sweep:
    """One shared folder's sweep for a batch of accounts (see `clear_leftovers`)."""

    def __init__(self, shared: str, accounts: list[Account], index: dict[int, int], removed: list[int]) -> None:
        self.shared = shared
        self.accounts = accounts
        self.index = index
        self.removed = removed
        self.folders = 0

    def folder(self, folder: int, depth: int) -> None:
        """Remove the accounts' entries in the open `folder`, as their owners, and go down
        into the folders others could have let them write in: world-writable ones, and any
        of another user's (who may have closed it since). Root only lists and looks here,
        never following a link: every change is made as the owner of what is changed."""
        with contextlib.suppress(OSError), os.scandir(folder) as listing:
            for entry in listing:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                number = self.index.get(st.st_uid)
                if number is not None:
                    self.remove(folder, entry.name, number, depth)
                elif stat.S_ISDIR(st.st_mode) and (st.st_mode & 0o002 or st.st_uid not in (0, os.geteuid())):
                    self.go_down(folder, entry.name, depth)

    def go_down(self, folder: int, name: str, depth: int) -> None:
        if depth >= SWEEP_DEPTH:
            return
        self.folders += 1
        if self.folders > SWEEP_FOLDERS:
            return
        try:
            inner = os.open(name, DIR_FLAGS, dir_fd=folder)
        except OSError:
            return
        try:
            self.folder(inner, depth + 1)
        finally:
            os.close(inner)

    def remove(self, folder: int, name: str, number: int, depth: int) -> None:
        """Remove the account's `name` as the account; what it may not remove (another
        user's folder it wrote into, closed to it since) is, as the account, given no
        permission bits (a file) or gone through (a folder) from a descriptor root opened."""
        uid, gid, account = self.accounts[number]
        owner = Identity(uid, gid)
        with acting_as(owner):
            gone = remove_what_it_can(folder, name)
        if gone:
            self.removed[number] += 1
            return
        try:
            handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except OSError:
            return
        try:
            st = os.fstat(handle)
            if st.st_uid == uid and stat.S_ISDIR(st.st_mode):
                self.go_down(folder, name, depth)
            elif st.st_uid == uid and not stat.S_ISLNK(st.st_mode):
                with contextlib.suppress(OSError), acting_as(owner):  # the kernel checks it is theirs
                    os.chmod(f"/proc/self/fd/{handle}", 0)
        finally:
            os.close(handle)
        log.warning("cannot remove all of %r in %s of %s: others' files are in the way", name, self.shared, account)


def _remove_ipc(uids: set[int]) -> dict[int, int]:
    """Remove the System V shared memory, message queues and semaphores owned or made by
    any of `uids`; how many, by uid."""
    libc = ctypes.CDLL(None, use_errno=True)
    removers: dict[str, Callable[[int], int]] = {
        "shm": lambda ident: int(libc.shmctl(ident, _IPC_RMID, None)),
        "msg": lambda ident: int(libc.msgctl(ident, _IPC_RMID, None)),
        "sem": lambda ident: int(libc.semctl(ident, 0, _IPC_RMID)),
    }
    wanted = {str(uid): uid for uid in uids}
    removed: dict[int, int] = {}
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                header, *rows = table.read().splitlines()
        except OSError:
            continue
        columns = header.split()
        for row in rows:
            fields = dict(zip(columns, row.split(), strict=False))
            owner = wanted.get(fields.get("uid", ""), wanted.get(fields.get("cuid", "")))
            if owner is not None and remove(int(row.split()[1])) == 0:  # the second column: shmid, msqid, semid
                removed[owner] = removed.get(owner, 0) + 1
    return removed


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
        try:
            trash = os.open(self.trash, DIR_FLAGS)
        except FileNotFoundError:  # no home erased yet: the jobs process makes it with the first
            return
        try:
            for name in os.listdir(trash):
                started = time.monotonic()
                try:
                    count = self.remove(trash, name)
                except OSError as exc:
                    log.warning("cannot erase %s/%s yet: %s", self.trash, name, exc)
                    continue
                took = time.monotonic() - started
                if took > 1.0:  # a big one (a million files, a deep tree) is worth a line
                    log.info("erased %s (%d entries, %.2f s)", name, count, took)
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
    watch = ProcessWatch()
    watch.table()  # /proc read now, not at the first request
    lock = threading.Lock()

    def answer(reply: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

    def end(request: dict[str, Any], found: list[int]) -> None:
        try:
            uid, gid, name = int(request["uid"]), int(request["gid"]), str(request.get("name") or "")
            ended = end_processes(uid, gid, float(request["grace"]), bool(request.get("group")), found)
            left = clear_leftovers([(uid, gid, name)])[0] if name else 0
            answer({"id": request["id"], "ended": ended, "left": left})
        except (OSError, ValueError) as exc:
            answer({"id": request["id"], "error": str(exc)})

    def clear(requests: list[dict[str, Any]]) -> None:
        try:
            counts = clear_leftovers([(int(r["uid"]), int(r["gid"]), str(r["name"])) for r in requests])
        except OSError as exc:
            for request in requests:
                answer({"id": request["id"], "error": str(exc)})
            return
        for request, left in zip(requests, counts, strict=True):
            answer({"id": request["id"], "ended": 0, "left": left})

    def serve(batch: list[dict[str, Any]]) -> None:
        """The requests that arrived together: one look at the process table for all. Those
        with nothing running and nothing to clear (CREATE's) are answered at once, those
        with only leftovers to clear share a thread, each with processes gets its own."""
        if any(request["op"] == "trash" for request in batch):
            emptier.wanted.set()
        ends = [request for request in batch if request["op"] == "end"]
        if not ends:
            return
        table = watch.table()
        quiet = []
        for request in ends:
            group = int(request["gid"]) if request.get("group") else None
            found = processes_of(int(request["uid"]), group, table)
            if found:
                threading.Thread(target=end, args=(request, found), daemon=True).start()
            elif request.get("name"):
                quiet.append(request)
            else:
                answer({"id": request["id"], "ended": 0, "left": 0})
        if quiet:
            threading.Thread(target=clear, args=(quiet,), daemon=True).start()

    pending = b""
    while chunk := os.read(sys.stdin.fileno(), 1 << 16):  # all that arrived together is one batch
        *lines, pending = (pending + chunk).split(b"\n")
        serve([json.loads(line) for line in lines if line.strip()])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
