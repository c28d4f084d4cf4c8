"""The host's processes by owner, for the keeper: one look at /proc, then the kernel's
process events (the proc connector, `cn_proc`) keep it current.

Finding a student's processes by reading every /proc/PID/status costs 1-2 ms with the 80
processes of a quiet host, and grows with every kernel a student starts: once per command
that was most of a CREATE's CPU. `ProcessWatch` reads /proc once, then follows forks,
execs, changes of ids and exits as the kernel reports them, so a lookup costs what the
events since the last one cost (usually none). Where the kernel does not deliver events
(a container's namespace, a kernel without CONFIG_PROC_EVENTS) every lookup reads /proc
as before; when events were lost (the socket's buffer overflowed) the next lookup reads
/proc again.

A process counts while any of its threads runs: a leader that left with `exit` (not
`exit_group`) is a zombie whose threads go on, and is not missed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading

log = logging.getLogger(__name__)

#: A process's four user ids (real, effective, saved, filesystem) and its four group ids,
#: as /proc/PID/status writes them.
Ids = tuple[list[bytes], list[bytes]]

_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = _CN_VAL_PROC = 1
_MCAST_LISTEN, _MCAST_IGNORE = 1, 2
_NLMSG_DONE = 3
_HEADERS = struct.Struct("=IHHIIIIIIHHIIQ")  # nlmsghdr, cn_msg, proc_event's what, cpu, time
_FORK, _EXEC, _UID, _GID, _EXIT = 0x1, 0x2, 0x4, 0x40, 0x80000000
_PIDS = struct.Struct("=iiii")
#: Room for the events of a busy minute between two lookups (root may go past rmem_max).
_RECEIVE_BUFFER = 8 << 20


def read_ids(pid: int) -> Ids | None:
    """The ids of process `pid`, or None if it is gone, runs nothing any more (a zombie
    with no thread left), or `pid` now names a thread of another process (/proc answers
    for thread ids too, and a process's pid goes back to the pool when it is reaped)."""
    try:  # os.open/os.read: a third of the cost of a file object
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 2048)
        finally:
            os.close(fd)
    except OSError:
        return None
    if _line(text, b"\nTgid:").strip() != str(pid).encode():
        return None
    state = _line(text, b"\nState:")
    if (b"(zombie)" in state or b"(dead)" in state) and _line(text, b"\nThreads:").strip() in (b"0", b"1"):
        return None
    return _line(text, b"\nUid:").split(), _line(text, b"\nGid:").split()


def process_table() -> dict[int, Ids]:
    """Every process that runs something, but the caller, read from /proc in one pass."""
    table = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and (ids := read_ids(int(name))) is not None:
            table[int(name)] = ids
    return table


def processes_of(uid: int, gid: int | None, table: dict[int, Ids] | None = None) -> list[int]:
    """The processes any of whose user ids is `uid`, or, with `gid`, any of whose group ids
    is `gid`: from `table`, else from a fresh look at /proc.

    All four, not just the real one: a program the student made set-user-ID (or
    set-group-ID) and a second account ran has the student's effective ids and another's
    real ones; kill(-1) from the student does not reach it and a count of the student's
    tasks does not see it.
    """
    wanted_uid = str(uid).encode()
    wanted_gid = str(gid).encode() if gid is not None else None
    return [
        pid
        for pid, (uids, gids) in (process_table() if table is None else table).items()
        if wanted_uid in uids or (wanted_gid is not None and wanted_gid in gids)
    ]


def _line(text: bytes, label: bytes) -> bytes:
    start = text.find(label)
    if start < 0:
        return b""
    end = text.find(b"\n", start + 1)
    return text[start + len(label) : end if end > 0 else None]


class ProcessWatch:
    """The processes of the host, current as of each call of `table()`.

    A thread applies the kernel's events as they come (so its socket does not overflow);
    `table()` applies whatever is still queued first, so every process forked before the
    call is in the answer. Without events, `table()` reads /proc.
    """

    def __init__(self, receive_buffer: int = _RECEIVE_BUFFER) -> None:
        self._lock = threading.Lock()
        self._table: dict[int, Ids] = {}
        self._orphaned: set[int] = set()  # leaders gone while threads of theirs still run
        self._stale = True
        self._me = os.getpid()
        self._socket: socket.socket | None = None
        try:
            self._socket = self._subscribe(receive_buffer)
        except OSError as exc:
            log.warning("no process events from the kernel (%s): each lookup reads /proc", exc.strerror or exc)
            return
        threading.Thread(target=self._follow, name="process-events", daemon=True).start()

    @property
    def following(self) -> bool:
        """Whether the kernel's events keep the table (else each lookup reads /proc)."""
        return self._socket is not None

    def table(self) -> dict[int, Ids]:
        """The processes that run now, by pid (a copy)."""
        if self._socket is None:
            return process_table()
        with self._lock:
            self._drain()
            if self._stale:
                self._stale = False
                self._table = process_table()
                self._orphaned = set()
            return dict(self._table)

    def close(self) -> None:
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.send(_control(_MCAST_IGNORE))
            sock.close()

    # -------------------------------------------------------------- the kernel's events

    @staticmethod
    def _subscribe(receive_buffer: int) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_CONNECTOR)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, 33, receive_buffer)  # SO_RCVBUFFORCE (root)
            sock.bind((0, _CN_IDX_PROC))
            sock.send(_control(_MCAST_LISTEN))
            # The kernel answers a listen it accepts (PROC_EVENT_NONE); one it ignores (another
            # PID or user namespace) gets no answer.
            ready, _, _ = select.select([sock], [], [], 2.0)
            if not ready:
                raise OSError(errno.ENOTSUP, "the kernel did not answer the listen request")
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _follow(self) -> None:
        while (sock := self._socket) is not None:
            try:
                select.select([sock], [], [], 1.0)
            except (OSError, ValueError):  # closed meanwhile
                return
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        """Apply every queued event (the lock held)."""
        sock = self._socket
        while sock is not None:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:  # events were lost (ENOBUFS): read /proc at the next lookup
                self._stale = True
                if exc.errno == errno.ENOBUFS:
                    continue
                return
            offset = 0
            while offset + _HEADERS.size <= len(data):
                length, kind, *_, what, _cpu, _time = _HEADERS.unpack_from(data, offset)
                if kind == _NLMSG_DONE and not self._stale:
                    self._apply(what, _PIDS.unpack_from(data, offset + _HEADERS.size))
                offset += max((length + 3) & ~3, _HEADERS.size)

    def _apply(self, what: int, pids: tuple[int, int, int, int]) -> None:
        table = self._table
        if what == _FORK:
            _parent_pid, parent, child, child_group = pids
            if child == child_group and child != self._me:  # a process, not a thread
                ids = table.get(parent)
                if ids is None:
                    ids = read_ids(child)
                if ids is not None:
                    table[child] = ids
        elif what in (_EXEC, _UID, _GID):
            pid, group = pids[0], pids[1]
            if pid == group and group != self._me and (ids := read_ids(group)) is not None:
                table[group] = ids
                self._orphaned.discard(group)
        elif what == _EXIT:
            pid, group = pids[0], pids[1]
            if group in table and (pid == group or group in self._orphaned):
                if read_ids(group) is None:
                    del table[group]
                    self._orphaned.discard(group)
                else:
                    self._orphaned.add(group)


def _control(operation: int) -> bytes:
    payload = struct.pack("=I", operation)
    message = struct.pack("=IIIIHH", _CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return struct.pack("=IHHII", 16 + len(message), _NLMSG_DONE, 0, 0, 0) + message
