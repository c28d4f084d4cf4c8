"""Waiting for a wake-up or a timeout, whichever comes first, in the loops that run forever.

`asyncio.wait_for(event.wait(), timeout)` is the obvious way, but on Python 3.11 it can
swallow a cancellation that lands in the same turn as the event: the loop then never ends
(the outbox hung a jobs process's shutdown about one time in eight that way). Here the
timeout only sets the event, so a cancellation always goes through.
"""

from __future__ import annotations

import asyncio


async def wait_for_wake(event: asyncio.Event, timeout: float) -> None:
    """Return once `event` is set, or after `timeout` seconds (then the event is set too)."""
    timer = asyncio.get_running_loop().call_later(max(0.0, timeout), event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()
