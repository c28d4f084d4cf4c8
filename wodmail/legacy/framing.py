"""Reading the legacy client's dialogue: its bytes as lines (split on LF, one trailing CR
stripped, a last line without its LF still a line at the end of input, a line with no LF
yet bounded in memory), and the addresses of its MAIL FROM: and RCPT TO: lines (with or
without <>, with or without a space after the colon)."""

from __future__ import annotations

import re
from collections.abc import Callable

MAIL_RE = re.compile(r"MAIL\s+FROM\s*:(?P<rest>.*)\Z", re.IGNORECASE | re.DOTALL)
RCPT_RE = re.compile(r"RCPT\s+TO\s*:(?P<rest>.*)\Z", re.IGNORECASE | re.DOTALL)


def parse_path(rest: str) -> str | None:
    """The address of a MAIL FROM:/RCPT TO: argument, brackets stripped; None if malformed."""
    rest = rest.strip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None
        return rest[1:end].strip()
    return rest.split(None, 1)[0] if rest else ""


class LineReader:
    """The bytes one connection sent, and the lines they hold.

    A line longer than `max_line` with no LF yet is offered to `too_long` (its size so far),
    which says whether to drop it: its head is then discarded and its tail skipped when its
    LF comes. `room` is called whenever what is buffered fits `max_message` again (to resume
    reading)."""

    def __init__(
        self, max_line: int, max_message: int, too_long: Callable[[int], bool], room: Callable[[], None]
    ) -> None:
        self._max_line = max_line
        self._max_message = max_message
        self._too_long = too_long
        self._room = room
        self._buf = bytearray()
        self._pos = 0
        self._skip_partial = False  # the next line's head was dropped (too long)
        self.ended = False
        """EOF or reset: no more bytes will come."""

    def feed(self, data: bytes) -> None:
        """Keep what the kernel handed over."""
        self._buf += data

    def end(self) -> None:
        """No more bytes will come: a last line without its LF counts as a line."""
        self.ended = True

    @property
    def unread(self) -> int:
        """Bytes buffered and not yet returned as a line."""
        return len(self._buf) - self._pos

    def next_line(self) -> bytes | None:
        """The next complete line (without LF and one trailing CR), or None for now."""
        while True:
            buf = self._buf
            nl = buf.find(b"\n", self._pos)
            if nl >= 0:
                line = bytes(buf[self._pos : nl])
                self._pos = nl + 1
            elif self.ended and self._pos < len(buf):
                line = bytes(buf[self._pos :])  # a last line whose LF never came
                self._pos = len(buf)
            else:
                self._check_partial()
                self._compact()
                return None
            self._compact()
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._skip_partial:
                # The tail of a line whose head was dropped: a command already answered 500,
                # or data of a message already over its size.
                self._skip_partial = False
                continue
            return line

    def _check_partial(self) -> None:
        """Bound what an unterminated line may hold in memory."""
        partial = len(self._buf) - self._pos
        if partial <= self._max_line:
            return  # short enough to wait for its LF (it may be the "." line)
        if self._too_long(partial):
            self._pos = len(self._buf)
            self._skip_partial = True

    def _compact(self) -> None:
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        if len(self._buf) - self._pos <= self._max_message:
            self._room()
