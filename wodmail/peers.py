"""Who is at the other end of a connection from this host: the kernel's answer.

On a Jupyter host every student has a shell, so an address on this host (any 127.x,
::1, or one of the host's own addresses) says nothing about who is sending: any student
can connect from it, and bind any 127.x as the source. For such a peer the doors ask the
kernel who owns the client's socket and pass the answer on (`LocalClient`); the intake
trusts the connection only when that user is one the location trusts (LOCALPEERUSERS:
root and wodmail's own user by default). A remote peer is judged by its address alone.

Two kernel questions, both over netlink and answered within the system call:

* `is_host_address(address)`: does this host route the address to itself (RTM_GETROUTE:
  the route's type is RTN_LOCAL)? Loopback is known without asking; answers for other
  addresses are kept for `HOST_ADDRESS_TTL` seconds (students cannot add addresses).
* `socket_owner(client, server)`: NETLINK_SOCK_DIAG (inet_diag) looks the client's socket
  up by its exact 4-tuple and says its uid and inode; /proc/net/tcp{,6} when sock_diag is
  not available. The client's socket must still be open: a socket its process closed has
  no inode any more, and an orphaned or TIME_WAIT socket is reported with uid 0 — both
  count as "the kernel cannot say" (`LocalClient.uid` None), never as root. While our end
  of the connection is open, no other socket can take the same 4-tuple, so the socket
  found is the peer of ours.

The doors ask once per connection, when it is accepted (`client_of`): about 14 us of CPU
for a loopback client (one sock_diag round trip), 0.4 us for a remote one (the route's
answer is kept), measured on the 2-core benchmark machine. The /proc fallback reads the
whole table: milliseconds on a busy host. A client that closed its socket before the
door asked (a student's trick, or a script that writes and closes at once) is nobody the
door can name: its unsigned command is refused, and recorded, like a student's.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import math
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

log = logging.getLogger(__name__)

HOST_ADDRESS_TTL = 10.0
"""Seconds an answer of `is_host_address` is kept for a non-loopback address."""

_NETLINK_ROUTE = 0
_NETLINK_SOCK_DIAG = 4
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_RTM_NEWROUTE = 24
_RTM_GETROUTE = 26
_RTN_LOCAL = 2
_RTA_DST = 1
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_TCP_LISTEN = 10
_NOCOOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
_MAPPED = b"\0" * 10 + b"\xff\xff"
#: Errors saying sock_diag cannot be used here at all (no netlink, a seccomp filter, no
#: inet_diag module): /proc/net/tcp then, for good.
_UNAVAILABLE = frozenset(
    {errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP}
)
_INET_DIAG_MSG = struct.Struct("=BBBB48sIIIII")

Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class LocalClient:
    """A client on this host (loopback, or one of the host's own addresses)."""

    uid: int | None
    """The uid that owns the client's socket, as the kernel says; None when it cannot say
    (the client closed its socket before it was asked, or the socket is not found)."""
    via: str = "socket owner"
    """How the uid was learnt: "socket owner" (sock_diag or /proc/net/tcp) or "SO_PEERCRED"."""

    def describe(self) -> str:
        """Who owns the socket ("user alice (uid 1001)"), or a sentence saying nobody knows."""
        if self.uid is None:
            return "a user the kernel could not name (the client's socket was already closed)"
        return describe_uid(self.uid)


@functools.lru_cache(maxsize=256)
def describe_uid(uid: int) -> str:
    """The user as messages name it: "user NAME (uid N)", or "uid N" without an account.

    Kept: a lookup walks NSS (systemd's userdb folders, /etc/passwd line by line) for
    0.1-0.3 ms, and the doors name the user of every command from a local peer."""
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OverflowError):
        return f"uid {uid}"


def parse_address(text: str) -> Address | None:
    """An address as the doors see it; an IPv4-mapped IPv6 address as its IPv4 one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class HostPeers:
    """Asks the kernel about addresses and sockets of this host; one per process.

    Not thread-safe: the doors use it from their event loop, `deliver` from its one thread.
    """

    def __init__(self) -> None:
        self._route: socket.socket | None = None
        self._diag: socket.socket | None = None
        self._diag_broken = False
        self._seq = 0
        self._host_addresses: dict[str, tuple[Address | None, bool, float]] = {}

    def close(self) -> None:
        for sock in (self._route, self._diag):
            if sock is not None:
                sock.close()
        self._route = self._diag = None

    def __del__(self) -> None:
        self.close()

    # --- is this address one of ours? ----------------------------------------------------

    def is_host_address(self, address: str) -> bool:
        """Whether `address` is on this host: loopback, or one this host routes to itself."""
        return self._lookup(address)[1]

    def _lookup(self, text: str) -> tuple[Address | None, bool]:
        """(the parsed address, whether it is on this host), kept by its text: the doors
        see the same few peers again and again, and parsing costs more than the question."""
        now = time.monotonic()
        known = self._host_addresses.get(text)
        if known is not None and known[2] > now:
            return known[0], known[1]
        parsed = parse_address(text)
        if parsed is None:
            local, until = False, math.inf
        elif parsed.is_loopback or parsed.is_unspecified:
            local, until = True, math.inf
        else:
            local, until = self._route_is_local(parsed), now + HOST_ADDRESS_TTL
        if len(self._host_addresses) >= 4096:
            self._host_addresses.clear()  # a flood of 127.x sources cannot grow it for ever
        self._host_addresses[text] = (parsed, local, until)
        return parsed, local

    def _route_is_local(self, address: Address) -> bool:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        packed = address.packed
        rtmsg = struct.pack("=BBBBBBBBI", family, len(packed) * 8, 0, 0, 0, 0, 0, 0, 0)
        attribute = struct.pack("=HH", 4 + len(packed), _RTA_DST) + packed
        try:
            if self._route is None:
                self._route = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_ROUTE)
                self._route.settimeout(1.0)
            reply = self._ask(self._route, _RTM_GETROUTE, rtmsg + attribute)
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return False  # no route at all: not ours
            log.warning("cannot ask the kernel for the route to %s (%s): trying to bind it", address, exc)
            return _can_bind(address)
        if reply is None or len(reply) < 12:
            return _can_bind(address)
        return reply[7] == _RTN_LOCAL

    # --- who owns the client's socket? ---------------------------------------------------

    def client_of(self, server: object, client: object) -> LocalClient | None:
        """The local client at the other end of an accepted TCP connection, None if remote.

        `server` and `client` are the connection's getsockname() and getpeername().
        """
        if not isinstance(client, tuple) or not isinstance(server, tuple) or len(client) < 2 or len(server) < 2:
            return None
        peer, local = self._lookup(str(client[0]))
        if peer is None or not local:
            return None
        ours = self._lookup(str(server[0]))[0]
        if ours is None:
            return None
        return LocalClient(self.socket_owner((peer, int(client[1])), (ours, int(server[1]))))

    def socket_owner(self, client: tuple[Address, int], server: tuple[Address, int]) -> int | None:
        """The uid owning the open TCP socket `client` connected to `server`; None if unknown."""
        if client[0].version != server[0].version:
            return None
        if not self._diag_broken:
            try:
                return self._diag_owner(client, server)
            except OSError as exc:
                if exc.errno not in _UNAVAILABLE:
                    log.warning("sock_diag failed (%s): the client's owner is unknown", exc)
                    return None
                self._diag_broken = True
                log.warning("sock_diag unavailable (%s): reading /proc/net/tcp instead", exc.strerror or exc)
        return _proc_owner(client, server)

    def _diag_owner(self, client: tuple[Address, int], server: tuple[Address, int]) -> int | None:
        family = socket.AF_INET if client[0].version == 4 else socket.AF_INET6
        ports = struct.pack(">HH", client[1], server[1])
        sockid = (
            ports
            + client[0].packed.ljust(16, b"\0")
            + server[0].packed.ljust(16, b"\0")
            + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)
        )
        expected = {sockid[:36]}
        if family == socket.AF_INET:  # an IPv6 client socket talking IPv4 reports mapped addresses
            expected.add(ports + _MAPPED + client[0].packed + _MAPPED + server[0].packed)
        request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
        if self._diag is None:
            self._diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG)
            self._diag.settimeout(1.0)
        try:
            reply = self._ask(self._diag, _SOCK_DIAG_BY_FAMILY, request)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None  # no such socket (any more)
            raise
        if reply is None or len(reply) < _INET_DIAG_MSG.size:
            return None
        _family, state, _timer, _retrans, found, _expires, _rq, _wq, uid, inode = _INET_DIAG_MSG.unpack_from(reply)
        # The exact socket asked for (a lookup may fall back to a listener), still open.
        if found[:36] not in expected or state == _TCP_LISTEN or inode == 0:
            return None
        return int(uid)

    def _ask(self, sock: socket.socket, kind: int, payload: bytes) -> bytes | None:
        """Send one netlink request; the payload of its answer, None if there was none.

        An NLMSG_ERROR answer raises OSError with its errno."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, _NLM_F_REQUEST, seq, 0) + payload)
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, mtype, _flags, got, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    return None
                body = data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                if got != seq:
                    continue  # the late answer to a request that timed out
                if mtype == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else errno.EIO
                    if code == 0:
                        return None
                    raise OSError(code, os.strerror(code))
                if mtype == _NLMSG_DONE:
                    return None
                if mtype in (_SOCK_DIAG_BY_FAMILY, _RTM_NEWROUTE):
                    return body
            # Nothing for this request in that datagram: read the next one.


def _can_bind(address: Address) -> bool:
    """Whether a socket may bind `address`: it is one of this host's (the fallback when the
    routing table cannot be asked; with net.ipv4.ip_nonlocal_bind set, every address is)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def _proc_owner(client: tuple[Address, int], server: tuple[Address, int]) -> int | None:
    """`socket_owner` from /proc/net/tcp or tcp6 (slower: one line per socket of the host)."""
    table = "/proc/net/tcp" if client[0].version == 4 else "/proc/net/tcp6"
    local = f"{_proc_hex(client[0])}:{client[1]:04X}"
    remote = f"{_proc_hex(server[0])}:{server[1]:04X}"
    try:
        with open(table, encoding="ascii") as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if len(fields) < 10 or fields[1] != local or fields[2] != remote:
                    continue
                state, uid, inode = int(fields[3], 16), int(fields[7]), int(fields[9])
                return None if state == _TCP_LISTEN or inode == 0 else uid
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", table, exc)
    return None


def _proc_hex(address: Address) -> str:
    """An address as /proc/net/tcp writes it: each 32-bit word in the host's byte order."""
    packed = address.packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid
