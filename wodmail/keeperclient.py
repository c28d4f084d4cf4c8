"""The jobs process's side of the keeper (wodmail.keeper): start it, ask it, stop it.

The keeper is a root process that must stay small (it runs beside every jobs process, on
every host): it loads neither asyncio nor OpenSSL. This side, with the event loop, lives
here, in the jobs process. The requests and answers are the keeper's (its docstring): one
JSON object a line on the keeper's standard input and output.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from wodmail.keeper import END_BOUND


class Keeper:
    """The jobs process's side: starts the keeper (at `start`, or at the first request; again
    if it died)."""

    def __init__(self, trash: Path) -> None:
        self.trash = trash
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._starting: asyncio.Future[asyncio.subprocess.Process] | None = None
        self._heard = time.monotonic()

    async def start(self) -> None:
        """Start the keeper now (the jobs process does at its start), not at the first request:
        a burst's first requests then find it ready."""
        await self._started()

    async def _started(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is not None and process.returncode is None:
            return process
        # One start, which every request waiting for it awaits: they all go on in the same
        # turn of the event loop once it is there. (Behind a lock, a burst's 64 requests went
        # on one per turn, each sent alone: the last waited 440 ms, measured.)
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn())
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "LC_ALL", "PYTHONPATH")}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # nothing imported from the folder it runs in
            "-m",
            "wodmail.keeper",
            str(self.trash),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd="/",
        )
        self._process = process
        self._reader = asyncio.create_task(self._read(process), name="keeper")
        return process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            self._heard = time.monotonic()
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

    async def end_processes(self, uid: int, gid: int, grace: float, group_too: bool, name: str = "") -> tuple[int, int]:
        """End every process of `uid` (and of group `gid` when `group_too`), then remove what
        the account `name` left outside its home (`clear_leftovers`); returns (1 if some
        process was running else 0, how many leftovers were removed)."""
        self._next += 1
        request_id = self._next
        request = {
            "id": request_id,
            "op": "end",
            "uid": uid,
            "gid": gid,
            "grace": grace,
            "group": group_too,
            "name": name,
        }
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self._send(request)
            reply = await asyncio.wait_for(future, grace + END_BOUND + 5)
        except TimeoutError:
            process, silent = self._process, time.monotonic() - self._heard
            if process is not None and process.returncode is None and silent > grace + END_BOUND:
                process.kill()  # it answered nobody for that long: stuck (the next request starts another)
            raise OSError(errno.ETIMEDOUT, "the keeper did not answer in time") from None
        finally:
            self._waiting.pop(request_id, None)
        if "error" in reply:
            raise OSError(errno.EIO, str(reply["error"]))
        return int(reply["ended"]), int(reply.get("left", 0))

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
