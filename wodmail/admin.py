"""The admin door: a unix socket only root (and wodmail's own user) can open.

    STATEDIR/admin.sock      mode 0600, in STATEDIR (0700): nobody else can even reach it

An admin on the Jupyter host needs no signing key: `wodmail send` hands its command to the
daemon through this socket when it can open it (wodmail.send), and over SMTP, signed,
otherwise. The daemon checks the other end's credentials with SO_PEERCRED as well as the
file's permissions: a command from any uid but root's or the daemon's own is refused and
recorded like a refusal at any other door; one it takes is recorded as "admin socket, user
root (uid 0) (SO_PEERCRED)" in the job (`wodmail jobs show`).

The protocol is one request and one reply per connection:

    client:  SEND <size> <sender or "<>">\\n  then <size> bytes: the mail
    server:  <code> <text>\\n               the intake's reply (250 queued as job N, 5xx, 451)

A header that is not that gets 500, a mail over 4 x MAXMESSAGESIZE gets 552 (both without a
record: nobody but root gets this far). The submit runs to its end even if the client goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from wodmail.inbound import InboundMail, Intake, Reply
from wodmail.peers import LocalClient, peer_credentials

log = logging.getLogger(__name__)

SOCKET_NAME = "admin.sock"
"""The admin socket's name in STATEDIR."""
TIMEOUT = 30.0
"""Seconds the server waits for a request, and the client for the reply."""

_HEADER = re.compile(rb"SEND ([0-9]{1,10}) (\S{1,320})\n")
#: A unix socket's path holds at most 107 bytes; a longer one is reached through the
#: directory's descriptor (/proc/self/fd/N/admin.sock).
_MAX_PATH = 100


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """`path` as bind() and connect() can take it, however long STATEDIR's name is."""
    if len(os.fsencode(path)) <= _MAX_PATH:
        yield os.fspath(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class AdminDoor:
    """The listener: every connection's credentials, then its one command, to the intake."""

    def __init__(self, intake: Intake, state_dir: Path, max_message: int) -> None:
        self.intake = intake
        self.path = socket_path(state_dir)
        self.max_size = 4 * max_message
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> asyncio.Server:
        # STATEDIR is locked by this daemon: a socket file left there is a dead daemon's.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with _short_path(self.path) as where:
                sock.bind(where)
            os.chmod(self.path, 0o600)
            self._inode = os.stat(self.path).st_ino
            sock.listen(16)
            self._server = await asyncio.start_unix_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            raise
        log.info("admin socket %s (root and uid %d only)", self.path, os.geteuid())
        return self._server

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve_one(reader, writer)
        except Exception:
            log.exception("admin socket: a request failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _pid, uid, _gid = peer_credentials(writer.get_extra_info("socket"))
        except OSError:
            client = LocalClient(None, via="SO_PEERCRED")
        else:
            client = LocalClient(uid, via="SO_PEERCRED")
        try:
            header = await asyncio.wait_for(reader.readuntil(b"\n"), TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            return
        match = _HEADER.fullmatch(header)
        if match is None:
            await _answer(writer, Reply(500, "expected SEND <size> <sender>"))
            return
        size = int(match.group(1))
        if size > self.max_size:
            await _answer(writer, Reply(552, f"the mail is {size} bytes, more than the {self.max_size} taken here"))
            return
        try:
            data = await asyncio.wait_for(reader.readexactly(size), TIMEOUT)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            log.info("admin socket: %s went away before its mail ended", client.describe())
            return
        sender = match.group(2).decode("utf-8", "replace")
        mail = InboundMail(
            door="admin",
            peer=None,
            mail_from="" if sender == "<>" else sender,
            data=data,
            local_client=client,
        )
        # Shielded: the command is committed (or refused and recorded) whatever the client does.
        reply = await asyncio.shield(self.intake.submit(mail))
        await _answer(writer, reply)

    async def drain(self) -> None:
        """Stop listening, let the requests under way finish, remove the socket file."""
        if self._server is not None:
            self._server.close()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)


async def _answer(writer: asyncio.StreamWriter, reply: Reply) -> None:
    text = reply.line.replace("\r", " ").replace("\n", " ")
    writer.write(text.encode("utf-8", "replace") + b"\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()


class AdminUnavailable(Exception):
    """The admin socket cannot be opened (no daemon, or not root): use another way."""


def submit(state_dir: Path, data: bytes, sender: str, timeout: float = TIMEOUT) -> Reply:
    """Hand one mail to the daemon through the admin socket; its reply.

    Raises `AdminUnavailable` when the socket cannot be opened (the caller falls back to
    SMTP), `OSError` when it broke after that (the command may or may not be taken).
    """
    path = socket_path(state_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    with sock:
        try:
            with _short_path(path) as where:
                sock.connect(where)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError) as exc:
            # No daemon on this state, or a user who may not open it: not an error yet.
            raise AdminUnavailable(f"{path}: {exc.strerror or type(exc).__name__}") from None
        sock.sendall(b"SEND %d %s\n" % (len(data), (sender or "<>").encode()) + data)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    code, _, text = answer.decode("utf-8", "replace").strip().partition(" ")
    if not code.isdigit():
        raise OSError(f"the admin socket answered {answer[:80]!r}")
    return Reply(int(code), text)
