"""systemd's notify protocol (sd_notify(3)): readiness, the watchdog and a status line.

Under a `Type=notify` unit, systemd gives the daemon NOTIFY_SOCKET (a unix datagram socket:
a path, or an abstract name written `@name`) and, with WatchdogSec=, WATCHDOG_USEC and
WATCHDOG_PID. The daemon sends newline-separated `KEY=VALUE` datagrams:

- `READY=1` once both doors listen and the jobs process has put the queue's interrupted jobs
  back (wodmail.daemon); `STOPPING=1` when it begins to stop;
- `WATCHDOG=1` every half interval, and only while the doors' event loop runs *and* the
  jobs process's loop has been heard from within the interval (wodmail.jobs sends a
  heartbeat from its loop): a hung loop in either process stops the pings, and systemd
  restarts the service;
- `STATUS=` a line with the queue's depth, for `systemctl status`.

The protocol is a few lines of datagram writing, documented and stable; no library needed.
The variables are removed from the environment once read: no child (the jobs process, a
hook, chpasswd) inherits them (a hook could otherwise tell systemd the service is ready).
Without NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """The daemon's side of sd_notify: one datagram socket to systemd, or nothing."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 1_000_000 if watchdog_usec else None
        """Seconds after which systemd restarts a service that did not ping (None: no watchdog)."""
        self._socket: socket.socket | None = None
        if address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for, taking its variables out of `environ`."""
        values = {name: environ.pop(name, None) for name in _VARIABLES}
        address = values["NOTIFY_SOCKET"]
        if address and not (address.startswith("/") or address.startswith("@")):
            log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name: not notifying systemd", address)
            address = None
        usec = None
        watchdog_pid = values["WATCHDOG_PID"]
        if values["WATCHDOG_USEC"] and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            try:
                usec = int(values["WATCHDOG_USEC"] or "")
            except ValueError:
                log.warning("WATCHDOG_USEC %r is not a number: no watchdog pings", values["WATCHDOG_USEC"])
            else:
                usec = usec if usec > 0 else None
        return cls(address, usec)

    @property
    def active(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str) -> None:
        """One datagram of KEY=VALUE lines; a failure is logged, never raised (systemd
        going away must not stop the mail)."""
        if self._socket is None or self.address is None:
            return
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._socket.sendto(text.encode(), target)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=_one_line(status))

    def status(self, status: str) -> None:
        self.send(STATUS=_one_line(status))

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping: closing the doors")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    return " ".join(text.split())
