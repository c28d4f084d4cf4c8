"""A real HTTP server that answers by a script of raw bytes: the answers a broken or
hostile server sends (1xx first, close-delimited bodies, odd chunks, conflicting lengths,
huge headers, a drip of bytes, a giant status code).

It listens on 127.0.0.1 on a port picked at start, serves each connection in a daemon
thread, reads each request (head and Content-Length body) before it plays the script, and
records the raw requests it read. A script is a list of bytes to send and floats to sleep;
after it the connection is kept for the next request (`then="keep"`) or closed. `routes`
answers requests whose request line starts with a given prefix (a login, say) by their own
script, and keeps the connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Literal, Self

Script = Sequence[bytes | float]

__all__ = ["MisbehavingServer", "drip", "ok_json"]


def ok_json(body: bytes = b'{"ok": true}', status: bytes = b"200 OK") -> bytes:
    """A correct answer with a Content-Length."""
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            len(body),
            body,
        )
    )


def drip(data: bytes, every: float) -> list[bytes | float]:
    """`data` one byte at a time, `every` seconds apart."""
    script: list[bytes | float] = []
    for byte in data:
        script += [bytes([byte]), every]
    return script


class MisbehavingServer:
    def __init__(
        self,
        script: Script,
        *,
        then: Literal["keep", "close"] = "close",
        routes: Mapping[bytes, Script] | None = None,
    ) -> None:
        self.script = list(script)
        self.then = then
        self.routes = dict(routes or {})
        self.requests: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._port = 0
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """Its base URL (still valid after stop, for messages)."""
        assert self._port, "not started"
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept, name="misbehaving-http", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.add(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, connection: socket.socket) -> None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        try:
            while not self._stop.is_set():
                request, buffer = _read_request(connection, buffer)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                routed = [script for prefix, script in self.routes.items() if request.startswith(prefix)]
                for item in routed[0] if routed else self.script:
                    if isinstance(item, float):
                        if self._stop.wait(item):
                            return
                    else:
                        connection.sendall(item)
                if self.then == "close" and not routed:
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(connection)
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_WR)
            connection.close()


def _read_request(connection: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
    """One request (head and Content-Length body) from `connection`; None at EOF."""
    while b"\r\n\r\n" not in buffer:
        data = connection.recv(65536)
        if not data:
            return None, b""
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        data = connection.recv(65536)
        if not data:
            return None, b""
        rest += data
    return head + b"\r\n\r\n" + rest[:length], rest[length:]
