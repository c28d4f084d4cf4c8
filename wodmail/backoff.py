"""How long to wait before trying again: one capped exponential backoff for every retry.

The job retries, the outbox's callbacks, the jobs process's restarts, JupyterHub's
throttling and the polls of a spawning server all wait `backoff(...)`; each call site
gives its own first pause, growth, cap and jitter.
"""

from __future__ import annotations

import math
import random


def backoff(attempt: int, *, first: float, cap: float, factor: float = 2.0, jitter: float = 0.0) -> float:
    """The pause before try number `attempt` (1: the first try again) in seconds:
    `first * factor ** (attempt - 1)`, at most `cap`, then times a random number between
    `1 - jitter` and 1 (jitter 0.5: between half and all of it, so a herd spreads out)."""
    if first <= 0 or cap <= 0 or factor < 1 or not 0 <= jitter <= 1:
        raise ValueError("backoff needs first > 0, cap > 0, factor >= 1 and 0 <= jitter <= 1")
    steps = max(0, attempt - 1)
    # Compared in logarithms: factor ** steps overflows a float long before `attempt` is absurd.
    capped = math.log(first) + steps * math.log(factor) >= math.log(cap)
    delay = cap if capped else first * factor**steps
    if jitter:
        delay *= random.uniform(1.0 - jitter, 1.0)
    return delay
