"""The kernel's answers about local peers when its first way of asking is not available.

wodmail.peers asks netlink (sock_diag for a socket's owner, the routing table for an
address); where a host forbids those sockets it reads /proc/net/tcp and tries to bind the
address instead. These tests make those fallbacks answer for real sockets: the one
injected fault is the netlink socket refused, the way a seccomp filter or a missing module
refuses it. The client runs as a uid of its own (no account needed), so an answer of root
could not pass for the right one.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address

import pytest

from wodmail import peers as peers_module
from wodmail.peers import HostPeers, LocalClient, describe_uid

CLIENT_UID = 54329  # no account: the kernel still names it
SYSTEM_PYTHON = "/usr/bin/python3"
CONNECT = """
import socket, sys
client = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(client.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


@pytest.fixture
def peers() -> Iterator[HostPeers]:
    asker = HostPeers()
    yield asker
    asker.close()


def refuse_netlink(monkeypatch: pytest.MonkeyPatch, protocol: int, code: int = errno.EPROTONOSUPPORT) -> None:
    """Netlink sockets of `protocol` cannot be made, as where a filter forbids them."""
    real_socket = socket.socket

    def made(family: int = -1, kind: int = -1, proto: int = -1, fileno: int | None = None) -> socket.socket:
        if family == socket.AF_NETLINK and proto == protocol:
            raise OSError(code, "refused for the test")
        return real_socket(family, kind, proto, fileno)

    monkeypatch.setattr(socket, "socket", made)


def connect_as_other_uid(port: int) -> tuple[subprocess.Popen[str], int]:
    client = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", CONNECT, str(port)],
        user=CLIENT_UID,
        group=CLIENT_UID,
        extra_groups=[],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert client.stdout is not None
    return client, int(client.stdout.readline())


def test_proc_net_tcp_names_the_same_owner_as_sock_diag(
    listener: socket.socket, peers: HostPeers, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, client_port = connect_as_other_uid(listener.getsockname()[1])
    try:
        accepted, _ = listener.accept()
        with accepted:
            server, peer = accepted.getsockname(), accepted.getpeername()
            assert peer[1] == client_port
            assert peers.client_of(server, peer) == LocalClient(CLIENT_UID)  # sock_diag
            # The same question where sock_diag cannot be used: /proc/net/tcp, from then on.
            fallback = HostPeers()
            refuse_netlink(monkeypatch, peers_module._NETLINK_SOCK_DIAG)
            try:
                assert fallback.client_of(server, peer) == LocalClient(CLIENT_UID)
                assert fallback._diag_broken
                assert fallback.client_of(server, peer) == LocalClient(CLIENT_UID)
                # A listener's own address is not a client's socket.
                own = (IPv4Address("127.0.0.1"), listener.getsockname()[1])
                assert fallback.socket_owner(own, (IPv4Address("127.0.0.1"), 9)) is None
            finally:
                fallback.close()
            client.communicate("", timeout=10)
            time.sleep(0.05)
            # The client is gone: neither way names an owner any more.
            assert peers_module._proc_owner((ip_address(peer[0]), peer[1]), (ip_address(server[0]), server[1])) is None
            assert peers.client_of(server, peer) == LocalClient(None)
    finally:
        client.kill()
        client.wait()


def test_an_unexpected_sock_diag_error_names_nobody_and_keeps_sock_diag(
    listener: socket.socket, peers: HostPeers, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            refuse_netlink(monkeypatch, peers_module._NETLINK_SOCK_DIAG, errno.ENOBUFS)
            assert peers.client_of(accepted.getsockname(), accepted.getpeername()) == LocalClient(None)
            assert not peers._diag_broken
            monkeypatch.undo()
            assert peers.client_of(accepted.getsockname(), client.getsockname()) == LocalClient(0)


def test_addresses_are_judged_by_binding_them_where_the_routes_cannot_be_asked(
    peers: HostPeers, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = this_hosts_address()
    refuse_netlink(monkeypatch, peers_module._NETLINK_ROUTE, errno.EACCES)
    assert peers.is_host_address(own)
    assert not peers.is_host_address("198.51.100.25")  # TEST-NET-2: never this host's
    assert peers.is_host_address("127.0.0.1")  # loopback: known without asking


def test_the_routing_table_says_which_addresses_are_this_hosts(peers: HostPeers) -> None:
    assert peers.is_host_address(this_hosts_address())
    assert not peers.is_host_address("198.51.100.25")
    assert not peers.is_host_address("2001:db8::25")  # documentation prefix: no route, or not local


def test_questions_that_cannot_be_about_a_local_socket_answer_none(peers: HostPeers) -> None:
    assert peers.client_of("not a tuple", ("127.0.0.1", 25)) is None
    assert peers.client_of(("127.0.0.1",), ("127.0.0.1", 25)) is None
    assert peers.client_of(("not an address", 25), ("127.0.0.1", 4000)) is None
    v4, v6 = (IPv4Address("127.0.0.1"), 4000), (ip_address("::1"), 25)
    assert peers.socket_owner(v4, v6) is None  # families differ: no such connection
    assert peers.socket_owner(v4, (IPv4Address("127.0.0.1"), 9)) is None  # no such socket


def test_owners_are_named_by_their_account_or_their_uid() -> None:
    assert describe_uid(0) == "user root (uid 0)"
    assert describe_uid(CLIENT_UID) == f"uid {CLIENT_UID}"
    assert "could not name" in LocalClient(None).describe()


def this_hosts_address() -> str:
    """A non-loopback address of this host (the source of a route out; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))
        address = str(probe.getsockname()[0])
    assert not ip_address(address).is_loopback, "this host has no address but loopback"
    return address
