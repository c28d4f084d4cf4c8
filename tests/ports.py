"""Ports for the servers the tests start on loopback, chosen where no client's port can land.

A port found free by binding port 0 comes from the kernel's ephemeral range, the range every
outgoing connection takes its own port from: between the choice and the server's bind, any
connection on the machine may take it (the floods of tests/test_admission.py open 2,000 at
once, beside the daemons of the other stream). Below that range only a server binding on
purpose can hold a port, and each choice is random among thousands and checked free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: The lowest port handed out; the range ends where the ephemeral range begins.
FIRST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing listens on, below the ephemeral range."""
    last = _ephemeral_start() - 1
    for _ in range(200):
        port = random.randint(FIRST, last)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port found in {FIRST}..{last} on {host}")
