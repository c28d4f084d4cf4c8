"""Where a mail piped into `wodmail deliver` came from: the topmost Received header.

`deliver` runs as the user the MTA delivers to, whoever sent the mail, so the pipe says
nothing about the sender: a student can mail the local MTA (sendmail, or SMTP to
localhost). What the MTA of this host knows, it writes on top of the mail before any
header the sender wrote: its own Received header. `deliver` takes an unsigned command
only when that header names the address the MTA received the mail from, that address is
in TRUSTEDPEERS and is not on this host (wodmail.intake).

The header must have Postfix's shape (Exim is set to write the same, procmailrc.example)::

    Received: from HELO (NAME [ADDRESS])
    \tby this.host ...

or `[IPv6:ADDRESS]`, or `[ADDRESS]:PORT` (Postfix's smtpd_client_port_logging). The
client's address is the bracket at the very end of the first line, after the HELO the
client chose; a HELO holding spaces or parentheses (a client trying to write a second
`(NAME [ADDRESS])` of its own) makes the header unreadable, so the mail is refused.
Mail submitted on this host (`Received: by this.host (Postfix, from userid 1001)`, or
Exim's `from student1 by this.host with local`) names no client address: refused too.
"""

from __future__ import annotations

import re

from wodmail.errors import NotPermitted

#: Header lines read before the topmost Received (Return-Path, Delivered-To and
#: X-Original-To come above it); the sender's own headers are all below it.
MAX_LINES_ABOVE = 20

_FIRST_LINE = re.compile(
    r"[ \t]*from[ \t]+[^\s()]+[ \t]+\(([^\s()\[\]]+)[ \t]+\[(?:IPv6:)?([0-9A-Fa-f.:]{2,45})\](?::[0-9]{1,5})?\)[ \t]*",
)
_BY_LINE = re.compile(r"[ \t]+by[ \t]")

HOW_TO = "see procmailrc.example for the Received header the MTA must write"


def relay_address(data: bytes) -> str:
    """The client address the topmost Received header names; `NotPermitted` if none."""
    lines = data.split(b"\n", MAX_LINES_ABOVE + 2)
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]  # procmail's mbox separator
    for index, raw in enumerate(lines[: MAX_LINES_ABOVE + 1]):
        line = raw.rstrip(b"\r").decode("latin-1")
        if not line.strip():
            break  # the end of the header
        name, colon, value = line.partition(":")
        if not colon or name[:1] in (" ", "\t"):
            continue
        if name.strip().lower() != "received":
            continue
        following = lines[index + 1].rstrip(b"\r").decode("latin-1") if index + 1 < len(lines) else ""
        match = _FIRST_LINE.fullmatch(value)
        if match is None or not _BY_LINE.match(following):
            shown = "".join(ch if ch.isprintable() else "?" for ch in value.strip()[:100])
            raise NotPermitted(
                f"the topmost Received header ({shown!r}) names no client address: mail submitted "
                f"on this host is not trusted; sign the command or use `wodmail send` ({HOW_TO})"
            )
        return match.group(2)
    raise NotPermitted(
        "the mail has no Received header from this host's MTA: mail submitted on this host is "
        f"not trusted; sign the command or use `wodmail send` ({HOW_TO})"
    )
