"""The few figures the processes count as things happen, for the metrics (wodmail.metrics).

Everything the queue database holds (jobs by state, callbacks waiting, the students active)
is read from it when the metrics are scraped, which costs a scrape and nothing per command.
What it does not hold is counted here, in plain dictionaries (an increment per event, no
lock, no SQL):

- the doors' process: the commands received, by verb, door and outcome (a copy of an earlier
  command is not stored again), and the mails refused, by door and reason (the refused
  table is capped and pruned: it cannot give a count that only goes up);
- the jobs process: the jobs ended, by verb and state, and how long each step took, in
  histogram buckets. It writes them to STATEDIR/jobs-figures.json at most once a second when
  they changed (`publish`, no fsync: these are figures, not records), where the doors'
  process reads them at a scrape. A jobs process started again after a crash goes on from
  the last file, so the counts only go up while the daemon runs.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

#: Upper bounds of the step-duration buckets (seconds); one more bucket holds the rest.
STEP_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: The jobs process's figures, in STATEDIR.
JOB_FIGURES_FILE = "jobs-figures.json"
#: How often the jobs process writes them (seconds), when they changed.
PUBLISH_INTERVAL = 1.0

log = logging.getLogger(__name__)

REFUSAL_REASONS = {550: "not_permitted", 554: "bad_command", 451: "try_later"}
"""The reason label of a refusal, by its SMTP code (wodmail.errors: NotPermitted, BadCommand;
451: the sender is to try again, e.g. a legacy mail cut off before its end)."""


class DoorFigures:
    """Counted in the doors' process (wodmail.intake)."""

    __slots__ = ("received", "refused")

    def __init__(self) -> None:
        self.received: dict[tuple[str, str, str], int] = {}
        """(verb, door, outcome) -> commands; outcome `queued` or `duplicate`."""
        self.refused: dict[tuple[str, str], int] = {}
        """(door, reason) -> mails refused."""

    def command_received(self, verb: str, door: str, duplicate: bool) -> None:
        key = (verb, door, "duplicate" if duplicate else "queued")
        self.received[key] = self.received.get(key, 0) + 1

    def mail_refused(self, door: str, code: int) -> None:
        key = (door, REFUSAL_REASONS.get(code, str(code)))
        self.refused[key] = self.refused.get(key, 0) + 1


def step_label(name: str) -> str:
    """A step's name without the student a RESET range names it after ("erase home
    student12" -> "erase home"): one series per kind of step, not per student."""
    head, sep, tail = name.rpartition(" student")
    return head if sep and tail.isdigit() else name


class JobFigures:
    """Counted in the jobs process (wodmail.worker, wodmail.journal)."""

    __slots__ = ("changed", "ended", "steps")

    def __init__(self) -> None:
        self.ended: dict[tuple[str, str], int] = {}
        """(verb, state) -> jobs ended (done, failed)."""
        self.steps: dict[tuple[str, str], list[float]] = {}
        """(verb, step) -> a count per bucket of STEP_BUCKETS and one for the rest, then the sum."""
        self.changed = False

    def job_ended(self, verb: str, state: str) -> None:
        key = (verb, state)
        self.ended[key] = self.ended.get(key, 0) + 1
        self.changed = True

    def step_took(self, verb: str, step: str, seconds: float) -> None:
        key = (verb, step_label(step))
        counts = self.steps.get(key)
        if counts is None:
            counts = self.steps[key] = [0.0] * (len(STEP_BUCKETS) + 2)
        counts[bisect.bisect_left(STEP_BUCKETS, seconds)] += 1
        counts[-1] += seconds
        self.changed = True

    def to_json(self) -> str:
        return json.dumps(
            {
                "ended": [[verb, state, count] for (verb, state), count in self.ended.items()],
                "steps": [[verb, step, counts] for (verb, step), counts in self.steps.items()],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> JobFigures:
        """The figures of `to_json`; empty when the text is not such (a torn or foreign file)."""
        figures = cls()
        try:
            data: Any = json.loads(text)
            for verb, state, count in data["ended"]:
                figures.ended[(str(verb), str(state))] = int(count)
            for verb, step, counts in data["steps"]:
                if len(counts) != len(STEP_BUCKETS) + 2:
                    raise ValueError("buckets changed")
                figures.steps[(str(verb), str(step))] = [float(value) for value in counts]
        except (ValueError, TypeError, KeyError):
            return cls()
        return figures

    @classmethod
    def load(cls, state_dir: Path) -> JobFigures:
        """The figures last published in `state_dir` (empty if none)."""
        try:
            return cls.from_json((state_dir / JOB_FIGURES_FILE).read_text())
        except OSError:
            return cls()

    @classmethod
    def resume(cls, state_dir: Path) -> JobFigures:
        """A new jobs process's figures: the last ones published, to go on from, once what
        an earlier one left half-written (it died writing) is removed."""
        for temporary in state_dir.glob(f".{JOB_FIGURES_FILE}.*"):
            with contextlib.suppress(OSError):
                temporary.unlink()
        return cls.load(state_dir)

    def publish(self, state_dir: Path) -> None:
        """Write the figures for the doors' process if they changed (a new file renamed over
        the old one: a reader never sees half of it)."""
        if not self.changed:
            return
        self.changed = False
        path = state_dir / JOB_FIGURES_FILE
        temporary = path.with_name(f".{JOB_FIGURES_FILE}.{os.getpid()}")
        temporary.write_text(self.to_json())
        os.replace(temporary, path)

    async def publish_every(self, state_dir: Path, interval: float = PUBLISH_INTERVAL) -> None:
        """`publish` every `interval` seconds, until cancelled (then once more)."""
        failing = False
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    self.publish(state_dir)
                    failing = False
                except OSError as exc:
                    self.changed = True
                    if not failing:  # once, not every second while STATEDIR is read-only
                        log.warning("cannot write the jobs' figures for the metrics: %s", exc)
                    failing = True
        finally:
            with contextlib.suppress(OSError):
                self.publish(state_dir)
