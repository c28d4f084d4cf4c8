"""Handing a legacy mail on: `Intake.submit` in a task that outlives the connection (a
client that resets at once still gets its command committed) and its answer as a `Reply`;
and the records of what is never run: a DATA cut off before its end, and whatever followed
the first command."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable

from wodmail.errors import Refusal, TryLater
from wodmail.inbound import InboundMail, Reply
from wodmail.legacy.door import LegacyDoor, summary

log = logging.getLogger("wodmail.legacy")


class HandOff:
    """One connection's way to the intake; `busy` while a submit or a record runs (the
    idle timer waits for it)."""

    def __init__(self, door: LegacyDoor) -> None:
        self.door = door
        self.busy = False

    async def submit(self, mail: InboundMail) -> Reply:
        """`intake.submit(mail)` in a task that outlives the connection."""
        self.busy = True
        try:
            task = self.door.track_commit(self.door.intake.submit(mail))
            try:
                reply = await asyncio.shield(task)
            except (Refusal, TryLater) as exc:
                return Reply(exc.smtp_code, str(exc))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("legacy %s: the intake failed on a %d-byte mail", mail.peer, len(mail.data))
                return Reply(451, "4.3.0 The command could not be committed, try again later")
            if not isinstance(reply, Reply):
                log.error(
                    "legacy %s: the intake answered %r, not a Reply",
                    mail.peer,
                    type(reply).__name__,
                )
                return Reply(451, "4.3.0 The command could not be committed, try again later")
            return reply
        finally:
            self.busy = False

    async def record_incomplete(self, mail: InboundMail, reason: str) -> None:
        """A DATA cut off before its end: never submitted (it may be truncated), recorded by
        `intake.record_incomplete` if the intake has it, else a warning without its content."""
        size = len(mail.data)
        record = getattr(self.door.intake, "record_incomplete", None)
        if record is None:
            log.warning("legacy %s: %s after %d bytes; not submitted", mail.peer, reason, size)
            return
        await self._record(mail, f"a {size}-byte incomplete mail", record, mail, reason)

    async def record_after_the_command(self, mail: InboundMail, size: int) -> None:
        """Record what followed the first end of DATA (`size` bytes, `mail` holding what was
        kept of them) as a refused mail: never run."""
        reason = f"one command per connection: {size} bytes after the first end of data were not run"
        summary.note(logging.WARNING, "after the command", "legacy %s: %s", mail.peer, reason)
        record = getattr(self.door.intake, "record_refused", None)
        if record is None:
            return
        await self._record(mail, f"{size} bytes after the command", record, mail, 554, reason)

    async def _record(self, mail: InboundMail, what: str, record: Callable[..., object], *args: object) -> None:
        """`record(*args)`, its commit tracked by the door (a drain waits for it); a failure
        is logged, never raised into the connection."""
        self.busy = True
        try:
            result = record(*args)
            if inspect.isawaitable(result):
                await asyncio.shield(self.door.track_commit(result))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("legacy %s: recording %s failed", mail.peer, what)
        finally:
            self.busy = False
