"""Real HTTP servers that stand in for the systems wodmail calls back.

`RegistrationApp` speaks the wod-api-db contract (login, token header, PUT
callbacks, the workshops list); `JupyterHubStandin` speaks the part of the
JupyterHub REST API that wodmail uses (start/stop a user's default server,
read and create a user). Both listen on 127.0.0.1 on a port picked at start,
serve each connection in its own thread (HTTP/1.1 keep-alive, so httpx can
reuse connections), record every request, and can be told to misbehave:
fail the next requests, be down (503), be slow.

They use only the standard library and run in daemon threads, so sync tests,
async tests and a daemon running in another process can all talk to them.

Failure injection is checked in this order for every request: slow
(`set_delay`, the sleep happens before anything else), down (503), injected
failures (`fail_next`), then the real behaviour (authentication, routing).
An injected failure or a refused request never changes the state.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

__all__ = ["Call", "JupyterHubStandin", "RegistrationApp"]

_POLL_INTERVAL = 0.01


@dataclass(frozen=True)
class Call:
    """One request as a stand-in received and answered it."""

    method: str
    path: str  # relative to the stand-in's base URL, without the query, e.g. "/student/12"
    body: Any  # parsed JSON (or form fields, or the raw text when neither parses), None if empty
    token: str | None  # the credential the request carried
    status: int  # what the stand-in answered
    at: float  # time.monotonic() when the request arrived
    query: str = ""  # the raw query string, if any


@dataclass
class _Answer:
    status: int
    body: Any = None  # serialised as JSON unless None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Request:
    method: str
    path: str  # relative to the base
    query: str
    headers: Message
    body: Any
    body_error: str | None  # why the body could not be parsed


@dataclass
class _InjectedFailure:
    remaining: int
    status: int
    path_prefix: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 resets connections when a pooled client opens dozens at once.
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its connection, or stop() closing it, is not news.
        pass


class _Standin:
    """Server life cycle, recording and failure injection shared by the stand-ins."""

    _base_path: ClassVar[str] = ""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._calls: list[tuple[int, Call]] = []
        self._failures: list[_InjectedFailure] = []
        self._down = False
        self._delay = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._open_connections: set[socket.socket] = set()
        self._connections_accepted = 0
        self.errors: list[BaseException] = []
        """Exceptions raised inside the stand-in itself (answered 500); tests expect none."""

    # -- life cycle -------------------------------------------------------

    def start(self) -> Self:
        """Listen on 127.0.0.1 (on the same port as before after a stop())."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        server = _Server(("127.0.0.1", self._port), self._handler_class())
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"{type(self).__name__}:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection (a real outage)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL; stays valid across stop() and start()."""
        return f"http://127.0.0.1:{self.port}{self._base_path}"

    # -- what happened ----------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every request received, in arrival order (a snapshot)."""
        with self._lock:
            return [call for _, call in sorted(self._calls, key=lambda item: item[0])]

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far (shows whether clients keep connections alive)."""
        with self._lock:
            return self._connections_accepted

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float = 10.0) -> bool:
        """Poll `predicate(self)` until it is true (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)

    # -- misbehaviour -----------------------------------------------------

    def fail_next(self, count: int, status: int = 500, path_prefix: str = "") -> None:
        """Answer `status` to the next `count` requests whose path starts with `path_prefix`.

        The path is relative to the base URL (e.g. "/student" for the app,
        "/hub/api/users/student1/server" for the hub). No state changes.
        """
        with self._lock:
            self._failures.append(_InjectedFailure(count, status, path_prefix))

    def clear_failures(self) -> None:
        """Forget failures injected with `fail_next` that have not happened yet."""
        with self._lock:
            self._failures.clear()

    def set_down(self, down: bool) -> None:
        """While down, every request is answered 503."""
        with self._lock:
            self._down = down

    def set_delay(self, seconds: float) -> None:
        """Sleep `seconds` before handling each request (a slow server).

        The request is handled after the sleep even if the client gave up
        meanwhile, as a real slow server would.
        """
        with self._lock:
            self._delay = seconds

    # -- to be provided by each stand-in ----------------------------------

    def _token_of(self, headers: Message) -> str | None:
        raise NotImplementedError

    def _route(self, request: _Request, token: str | None) -> _Answer:
        """Answer one request; called with the lock held."""
        raise NotImplementedError

    def _error(self, status: int, message: str) -> _Answer:
        return _Answer(status, {"message": message})

    # -- plumbing ---------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(_Handler):
            pass

        Handler.standin = standin
        return Handler

    def _track(self, connection: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._open_connections.add(connection)
                self._connections_accepted += 1
            else:
                self._open_connections.discard(connection)

    def _dispatch(self, method: str, target: str, headers: Message, raw_body: bytes) -> _Answer:
        arrived = time.monotonic()
        with self._lock:
            seq = next(self._seq)
            delay = self._delay
        if delay > 0:
            time.sleep(delay)

        split = urllib.parse.urlsplit(target)
        path = split.path
        in_base = path == self._base_path or path.startswith(self._base_path + "/")
        relative = path[len(self._base_path) :] if in_base else path
        body, body_error = _parse_body(raw_body, headers.get("Content-Type", ""))
        token = self._token_of(headers)
        request = _Request(method, relative, split.query, headers, body, body_error)

        with self._lock:
            try:
                answer = self._answer(request, token, in_base)
            except Exception as error:  # noqa: BLE001 - a stand-in bug: answer 500, keep it for the test
                self.errors.append(error)
                answer = self._error(500, f"stand-in error: {error!r}")
            call = Call(method, relative, body, token, answer.status, arrived, split.query)
            self._calls.append((seq, call))
        return answer

    def _answer(self, request: _Request, token: str | None, in_base: bool) -> _Answer:
        if self._down:
            return self._error(503, "service unavailable (stand-in is down)")
        for failure in self._failures:
            if failure.remaining > 0 and request.path.startswith(failure.path_prefix):
                failure.remaining -= 1
                answer = self._error(failure.status, "injected failure")
                if failure.status in (429, 503):
                    answer.headers["Retry-After"] = "1"
                return answer
        self._failures = [failure for failure in self._failures if failure.remaining > 0]
        if not in_base:
            return self._error(404, f"Cannot {request.method} {request.path}")
        return self._route(request, token)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wodmail-standin/1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    standin: ClassVar[_Standin]

    def setup(self) -> None:
        super().setup()
        self.standin._track(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.standin._track(self.connection, opened=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        answer = self.standin._dispatch(self.command, self.path, self.headers, self._read_body())
        payload = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.status == 204:  # no body, and no Content-Length (RFC 9110, 8.6)
            self.end_headers()
            return
        content_type = "application/json; charset=utf-8" if payload else "text/plain"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


def _parse_body(raw: bytes, content_type: str) -> tuple[Any, str | None]:
    if not raw:
        return None, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "body is not UTF-8"
    if "application/x-www-form-urlencoded" in content_type:
        return dict(urllib.parse.parse_qsl(text, keep_blank_values=True)), None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return text, f"body is not JSON: {error}"


def _utcnow_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------
# The registration app (wod-api-db)
# ---------------------------------------------------------------------------

_RESOURCES = {"student", "customer", "workshop"}


class RegistrationApp(_Standin):
    """The registration app's REST API, as wod-api-db serves it under /api.

    `state()` is what the app's database would hold after the callbacks:
    accepted PUT bodies merged in the order the app processed them, keyed by
    resource ("student", "customer", "workshop") and then by the id as it
    appeared in the URL (a string, e.g. state()["student"]["12"]).
    """

    _base_path = "/api"

    def __init__(
        self,
        username: str = "wod",
        password: str = "secret-api-pw",
        workshops: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.username = username
        self.password = password
        self.workshops: list[dict[str, Any]] = list(workshops or [])
        """What GET /workshops lists (accepted PUT /workshop/{id} merged in by id)."""
        self._tokens: set[str] = set()
        self._logins = 0
        self._state: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in _RESOURCES}

    @property
    def logins(self) -> int:
        """Number of successful logins."""
        with self._lock:
            return self._logins

    def puts(self, path_prefix: str = "") -> list[Call]:
        """Accepted (2xx) PUT calls in arrival order, optionally only those under `path_prefix`."""
        return [
            call
            for call in self.calls
            if call.method == "PUT" and 200 <= call.status < 300 and call.path.startswith(path_prefix)
        ]

    def state(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{"student": {dbid: fields}, "customer": {...}, "workshop": {...}} (a deep copy)."""
        with self._lock:
            return {
                kind: {key: dict(fields) for key, fields in records.items()} for kind, records in self._state.items()
            }

    def expire_tokens(self) -> None:
        """Every token issued so far stops working: the next calls get 401 until a new login."""
        with self._lock:
            self._tokens.clear()

    def _token_of(self, headers: Message) -> str | None:
        return headers.get("x-access-token")

    def _route(self, request: _Request, token: str | None) -> _Answer:
        if request.path == "/login":
            if request.method != "POST":
                return self._error(404, f"Cannot {request.method} {request.path}")
            return self._login(request)
        if token is None:
            return self._error(401, "No token provided!")
        if token not in self._tokens:
            return self._error(401, "Unauthorized!")
        if request.method == "GET" and request.path == "/workshops":
            return self._list_workshops(request.query)
        parts = request.path.split("/")
        if request.method == "PUT" and len(parts) == 3 and parts[1] in _RESOURCES and parts[2]:
            return self._update(parts[1], parts[2], request)
        return self._error(404, f"Cannot {request.method} {request.path}")

    def _login(self, request: _Request) -> _Answer:
        body = request.body
        if isinstance(body, dict) and body.get("username") == self.username and body.get("password") == self.password:
            token = secrets.token_urlsafe(24)
            self._tokens.add(token)
            self._logins += 1
            return _Answer(200, {"accessToken": token})
        return _Answer(401, {"accessToken": None, "message": "Invalid username or password!"})

    def _update(self, kind: str, key: str, request: _Request) -> _Answer:
        if request.body_error is not None:
            return self._error(400, request.body_error)
        if not isinstance(request.body, dict) or not request.body:
            return self._error(400, f"{kind} update must be a non-empty JSON object")
        record = self._state[kind].setdefault(key, {})
        record.update(request.body)
        return _Answer(200, {"id": int(key) if key.isdigit() else key, **record})

    def _list_workshops(self, query: str) -> _Answer:
        updates = self._state["workshop"]
        listed = [{**workshop, **updates.get(str(workshop.get("id")), {})} for workshop in self.workshops]
        active = urllib.parse.parse_qs(query).get("active")
        if active:
            wanted = active[0].lower() == "true"
            listed = [workshop for workshop in listed if _truthy(workshop.get("active")) == wanted]
        return _Answer(200, listed)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


# ---------------------------------------------------------------------------
# JupyterHub
# ---------------------------------------------------------------------------

_Phase = Literal["stopped", "spawning", "running", "stopping"]


@dataclass
class _HubUser:
    name: str
    created: str = field(default_factory=_utcnow_iso)
    phase: _Phase = "stopped"
    until: float = 0.0  # time.monotonic() when a pending spawn/stop completes
    started: str | None = None
    last_activity: str | None = None

    def settle(self) -> None:
        """Complete a pending spawn or stop whose time has come."""
        if self.phase in ("spawning", "stopping") and time.monotonic() >= self.until:
            if self.phase == "spawning":
                self.phase = "running"
            else:
                self.phase = "stopped"
                self.started = None

    @property
    def pending(self) -> str | None:
        return {"spawning": "spawn", "stopping": "stop"}.get(self.phase)

    def model(self) -> dict[str, Any]:
        """The user model as GET /hub/api/users/{name} returns it (admin token)."""
        url = f"/user/{urllib.parse.quote(self.name)}/"
        ready = self.phase == "running"
        servers: dict[str, Any] = {}
        if self.phase != "stopped":  # the hub lists active (ready or pending) servers
            servers[""] = {
                "name": "",
                "ready": ready,
                "stopped": False,
                "pending": self.pending,
                "url": url,
                "progress_url": f"/hub/api/users/{urllib.parse.quote(self.name)}/server/progress",
                "started": self.started,
                "last_activity": self.last_activity,
                "user_options": {},
            }
        return {
            "kind": "user",
            "name": self.name,
            "admin": False,
            "roles": ["user"],
            "groups": [],
            "server": url if ready else None,
            "pending": self.pending,
            "created": self.created,
            "last_activity": self.last_activity,
            "servers": servers,
        }


class JupyterHubStandin(_Standin):
    """The JupyterHub REST API calls wodmail makes, with the real hub's answers.

    Server start: 201 started, 202 pending (`spawn_delay` > 0, or already
    pending spawn), 400 already running / pending stop, 404 no such user,
    429 with Retry-After when throttled. Server stop: 204 stopped, 202
    pending (`stop_delay` > 0, or already pending stop), 400 pending spawn,
    `stop_not_running_status` when not running, 404 no such user. User delete:
    204 (a running server stopped first), 400 while it stops, 404 no such user.
    Errors are JSON {"status": N, "message": "..."} as the hub writes them.
    """

    def __init__(
        self,
        token: str = "hub-token",
        users: Iterable[str] = (),
        auto_create_users: bool = False,
    ) -> None:
        super().__init__()
        self.token = token
        self.auto_create_users = auto_create_users
        """Create a missing user on POST .../server instead of answering 404."""
        self.spawn_delay = 0.0
        """> 0: a start answers 202 and the server becomes ready this many seconds later."""
        self.stop_delay = 0.0
        """> 0: a stop answers 202 and the server is stopped this many seconds later."""
        self.stop_not_running_status = 400
        """What DELETE .../server answers when the server is not running: 400 "... is not
        running" (as the brief and older hubs), or 204 (as JupyterHub 1.x and later do)."""
        self._throttled = 0
        self._users: dict[str, _HubUser] = {}
        self.deleted: list[str] = []
        """The users deleted (DELETE /hub/api/users/{name}), in order."""
        self.admins: set[str] = set()
        """The users whose model says admin: true."""
        self.add_users(*users)

    def add_users(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._users.setdefault(name, _HubUser(name))

    @property
    def users(self) -> list[str]:
        with self._lock:
            return sorted(self._users)

    def running(self, name: str) -> bool:
        """True when the user's default server is ready (not pending)."""
        return self.phase(name) == "running"

    def phase(self, name: str) -> _Phase | None:
        """The server's phase: stopped, spawning, running or stopping; None: no such user."""
        with self._lock:
            user = self._users.get(name)
            if user is None:
                return None
            user.settle()
            return user.phase

    def throttle_next(self, count: int) -> None:
        """The next `count` server starts that would spawn answer 429 (Retry-After: 1)."""
        with self._lock:
            self._throttled += count

    def _error(self, status: int, message: str) -> _Answer:
        return _Answer(status, {"status": status, "message": message})

    def _token_of(self, headers: Message) -> str | None:
        scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip()
        return None

    def _route(self, request: _Request, token: str | None) -> _Answer:
        if token is None or not secrets.compare_digest(token, self.token):
            return self._error(403, "Missing or invalid credentials")
        prefix = "/hub/api/users/"
        if not request.path.startswith(prefix):
            return self._error(404, "Not Found")
        parts = request.path[len(prefix) :].split("/")
        name = urllib.parse.unquote(parts[0])
        if not name or len(parts) > 2 or (len(parts) == 2 and parts[1] != "server"):
            return self._error(404, "Not Found")
        if len(parts) == 1:
            if request.method == "GET":
                return self._get_user(name)
            if request.method == "POST":
                return self._create_user(name)
            if request.method == "DELETE":
                return self._delete_user(name)
        elif request.method == "POST":
            return self._start_server(name)
        elif request.method == "DELETE":
            return self._stop_server(name)
        return self._error(405, "Method Not Allowed")

    def _get_user(self, name: str) -> _Answer:
        user = self._users.get(name)
        if user is None:
            return self._error(404, "Not Found")
        user.settle()
        return _Answer(200, {**user.model(), "admin": name in self.admins})

    def _create_user(self, name: str) -> _Answer:
        if name in self._users:
            return self._error(409, f"User {name} already exists")
        user = self._users[name] = _HubUser(name)
        return _Answer(201, user.model())

    def _delete_user(self, name: str) -> _Answer:
        """As the hub's UserAPIHandler.delete: a running server is stopped first; one still
        stopping answers 400. `deleted` counts the deletions (its logins went with it)."""
        user = self._users.get(name)
        if user is None:
            return self._error(404, "Not Found")
        user.settle()
        if user.phase in ("stopping", "spawning"):
            doing = "stopping" if user.phase == "stopping" else "spawning"
            return self._error(400, f"{name}'s server is in the process of {doing}, please wait.")
        del self._users[name]
        self.deleted.append(name)
        return _Answer(204)

    def _start_server(self, name: str) -> _Answer:
        user = self._users.get(name)
        if user is None:
            if not self.auto_create_users:
                return self._error(404, "Not Found")
            user = self._users[name] = _HubUser(name)
        user.settle()
        if user.phase == "spawning":
            return _Answer(202)
        if user.phase == "stopping":
            return self._error(400, f"{name} is pending stop")
        if user.phase == "running":
            return self._error(400, f"{name} is already running")
        if self._throttled > 0:
            self._throttled -= 1
            answer = self._error(429, "Too many users trying to log in right now. Try again in 1 seconds.")
            answer.headers["Retry-After"] = "1"
            return answer
        user.started = user.last_activity = _utcnow_iso()
        if self.spawn_delay > 0:
            user.phase, user.until = "spawning", time.monotonic() + self.spawn_delay
            return _Answer(202)
        user.phase = "running"
        return _Answer(201)

    def _stop_server(self, name: str) -> _Answer:
        user = self._users.get(name)
        if user is None:
            return self._error(404, "Not Found")
        user.settle()
        if user.phase == "stopping":
            return _Answer(202)
        if user.phase == "spawning":
            return self._error(400, f"{name} is pending spawn, please wait")
        if user.phase == "stopped":
            if self.stop_not_running_status == 204:
                return _Answer(204)
            return self._error(self.stop_not_running_status, f"{name} is not running")
        if self.stop_delay > 0:
            user.phase, user.until = "stopping", time.monotonic() + self.stop_delay
            return _Answer(202)
        user.phase, user.started = "stopped", None
        return _Answer(204)
