"""Crash points for the fault tests, and nothing else.

`WODMAIL_CRASH_AT` (read once, at import) names places where the daemon kills itself with
SIGKILL, the way a power cut or the OOM killer would, so tests can show that a job
interrupted there converges after a restart:

    WODMAIL_CRASH_AT="CREATE:deploy workshop:done; CLEANUP 7:erase home:recorded"

Each entry is `VERB[ STDID]:STEP:WHEN`, WHEN being `start` (before the step's action),
`done` (the action finished, not yet recorded) or `recorded` (its record committed).
Unset (production), `crash_point` returns at once.

`WODMAIL_SKIP_HOME_FLUSH=1` (read once, at import) turns off the flush of the homes before
their steps are recorded: the power-cut test's control, showing its check can fail.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Protocol

from wodmail.command import Command

POINTS: frozenset[tuple[str, int | None, str, str]] = frozenset()
#: Set in the jobs process: a crash takes the doors' process down too, as a power cut would.
KILL_PARENT = False


class Quiescent(Protocol):
    """Something whose work a crash between two steps must not cut in half (the outbox)."""

    @property
    def idle(self) -> bool: ...

    async def wait_idle(self) -> None: ...


#: Waited for before a crash point fires, so a crash "between two steps" is only that.
quiesce: list[Quiescent] = []


def parse(spec: str) -> frozenset[tuple[str, int | None, str, str]]:
    points = set()
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        who, step, when = (piece.strip() for piece in entry.rsplit(":", 2)) if entry.count(":") >= 2 else ("", "", "")
        if when not in ("start", "done", "recorded") or not who or not step:
            raise ValueError(f"WODMAIL_CRASH_AT entry {entry!r} is not VERB[ STDID]:STEP:start|done|recorded")
        verb, _, stdid = who.partition(" ")
        points.add((verb.upper(), int(stdid) if stdid else None, step, when))
    return frozenset(points)


POINTS = parse(os.environ.get("WODMAIL_CRASH_AT", ""))
SKIP_HOME_FLUSH = os.environ.get("WODMAIL_SKIP_HOME_FLUSH") == "1"


async def crash_point(command: Command, step: str, when: str) -> None:
    if not POINTS:
        return
    if (command.verb, None, step, when) in POINTS or (command.verb, command.stdid, step, when) in POINTS:
        # Idle all at once, checked right before the kill: a delivery that started while we
        # waited for another component would otherwise be cut between its request and its record.
        while not all(component.idle for component in quiesce):
            for component in quiesce:
                await asyncio.wait_for(component.wait_idle(), timeout=5)
        if KILL_PARENT:
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
