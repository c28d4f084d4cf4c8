"""Ports for the servers the tests start on loopback, chosen where no client's port can land.

A port found free by binding port 0 comes from the kernel's ephemeral range, the range every
outgoing connection takes its own port from: between the choice and the server's bind, any
connection on the machine may take it (the floods of tests/test_admission.py open 2,000 at
once, beside the daemons of the other stream). Below that range only a server binding on
purpose can hold a port. Each choice is random among thousands, checked free, and reserved
for the rest of the run (a marker file made with O_EXCL in RESERVED, which every test process
shares): two processes choosing at once never get the same port, as they could between one's
check and its server's bind (a daemon's start then saw the other's server answer).
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from pathlib import Path

#: The lowest port handed out; the range ends where the ephemeral range begins.
FIRST = 10_000
#: Where the ports handed out are marked, one empty file each; a mark older than STALE
#: seconds is from a run long over, and the port is free to hand out again.
RESERVED = Path(tempfile.gettempdir()) / "wodmail-test-ports"
STALE = 3600.0


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing listens on, below the ephemeral range."""
    last = _ephemeral_start() - 1
    RESERVED.mkdir(mode=0o755, exist_ok=True)
    for _ in range(200):
        port = random.randint(FIRST, last)
        if not _reserve(port):
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port found in {FIRST}..{last} on {host}")


def _reserve(port: int) -> bool:
    """Mark `port` as handed out; False if another process of this run (or of one that ended
    less than STALE seconds ago) has it."""
    mark = RESERVED / str(port)
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        pass
    try:
        if time.time() - mark.stat().st_mtime > STALE:
            mark.unlink()  # the next choice may take it again
    except FileNotFoundError:
        pass
    return False
