"""JupyterHub: start and stop a student's server over the hub's REST API.

    POST   {JPHUBAPISRV}/hub/api/users/{name}/server   201 started, 202 pending spawn,
                                                       400 already running (or pending stop),
                                                       404 no such user, 429 throttled
    DELETE {JPHUBAPISRV}/hub/api/users/{name}/server   204 stopped (also: was not running),
                                                       202 pending stop, 400 not running or
                                                       pending spawn (older hubs), 404 no user
    GET    {JPHUBAPISRV}/hub/api/users/{name}          the user model: servers[""] ready/pending
    POST   {JPHUBAPISRV}/hub/api/users/{name}          create the user (201; 409 exists)
    DELETE {JPHUBAPISRV}/hub/api/users/{name}          delete the user, its cookies and tokens
                                                       (204; 400 stop pending; 404 no user)
    GET    {JPHUBAPISRV}/hub/api/users/{name}/server/progress   why a spawn failed
    Authorization: token {JPHUBTOKEN}

The token's role needs the scopes `servers` (read, start, stop) and `read:users`, and
`admin:users` when HUBCREATEUSERS is true (`admin:users` includes `read:users`). CLEANUP,
PURGE and RESET end the former holder's hub logins by deleting the user and making it again
(`sign_out`): that needs `admin:users` too; without it they say the logins stay valid.

A pending spawn or stop is followed (GET the user model) until it ends, for at most
HUBSPAWNTIMEOUT seconds: a spawn still pending then fails the step for good (the operator
retries the job once the hub has caught up); a stop still pending is retried later. A 429
(the hub's concurrent spawn limit, or its active server limit) is waited out inside the
call, honouring Retry-After, for at most HUBTHROTTLEWAIT seconds before the step fails
transiently and the worker retries the job with its own backoff. Connection errors and 5xx
answers are transient. No message ever carries the token.

Location keys (with their defaults):

    HUBSPAWNTIMEOUT  60     seconds to follow a pending spawn or stop
    HUBCREATEUSERS   false  create a missing hub user before starting its server
    HUBTHROTTLEWAIT  120    seconds one call may spend waiting out 429 answers
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.parse
from typing import Any

from wodmail.backoff import backoff
from wodmail.errors import ConfigError, StepFailed, TransientError
from wodmail.httpanswer import HttpAnswer, TransportError
from wodmail.location import HubSettings, Location
from wodmail.regapp import describe
from wodmail.transport import Requester, UnsafeRequest, check_header_value

log = logging.getLogger(__name__)

#: The longest single wait between two tries of a throttled call when the hub gives no Retry-After.
THROTTLE_BACKOFF_CAP = 30.0
#: The slowest poll of a pending server.
POLL_CAP = 1.0
#: How much of the hub's own error message goes into ours.
MESSAGE_LIMIT = 200


class Hub:
    """A client of one JupyterHub's REST API, for the default server of each student."""

    def __init__(
        self,
        url: str,
        token: str,
        client: Requester,
        *,
        spawn_timeout: float = HubSettings.spawn_timeout,
        create_users: bool = HubSettings.create_users,
        throttle_wait: float = HubSettings.throttle_wait,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._headers = {"Authorization": f"token {token}"}
        self._client = client
        self.spawn_timeout = spawn_timeout
        self.create_users = create_users
        self.throttle_wait = throttle_wait

    @classmethod
    def from_location(cls, location: Location, client: Requester) -> Hub | None:
        """The hub of `location` (None without JPHUBAPISRV); refuses a token HTTP cannot carry."""
        settings = location.hub
        if not settings.url:
            return None
        try:
            check_header_value("Authorization", f"token {settings.token or ''}")
        except UnsafeRequest:
            raise ConfigError(location.file, "JPHUBTOKEN", "holds a control character (CR, LF, ...)") from None
        return cls(
            settings.url,
            settings.token or "",
            client,
            spawn_timeout=settings.spawn_timeout,
            create_users=settings.create_users,
            throttle_wait=settings.throttle_wait,
        )

    # -- the verbs' calls ------------------------------------------------------------------

    async def start(self, name: str) -> str:
        """Start `name`'s default server and wait until it is ready; says how it went."""
        path = _server_path(name)
        notes: list[str] = []
        response = await self._send("POST", path, notes)
        if response.status_code == 404:
            if not self.create_users:
                raise StepFailed(f"JupyterHub has no user {name} (create it on the hub, or set HUBCREATEUSERS: true)")
            notes.append(await self.create_user(name))
            response = await self._send("POST", path, notes)
        # A stop (or a check) still running: let it end, then ask again, once.
        response = await self._after_pending(name, "POST", path, response, notes)
        status = response.status_code
        if status == 201:
            outcome = "started"
        elif status == 202:
            began = time.monotonic()
            state = await self._follow(name, "spawn", permanent=True)
            if state != "ready":
                raise TransientError(f"JupyterHub could not start {name}'s server: {await self._spawn_failure(name)}")
            outcome = f"ready after pending {time.monotonic() - began:.1f} s"
        elif status == 400:
            outcome = "already running"
        else:
            raise self._error("start the server of", name, response)
        return _with_notes(outcome, notes)

    async def _after_pending(
        self, name: str, method: str, path: str, response: HttpAnswer, notes: list[str]
    ) -> HttpAnswer:
        """`response` again, once a 400 "pending ..." it was has ended (followed, then asked again)."""
        if response.status_code != 400 or "pending" not in _message(response):
            return response
        pending = _pending_word(_message(response))
        await self._follow(name, pending)
        notes.append(f"waited for pending {pending}")
        return await self._send(method, path, notes)

    async def stop(self, name: str) -> str:
        """Stop `name`'s default server and wait until it is gone; a server not running is fine."""
        path = _server_path(name)
        notes: list[str] = []
        response = await self._send("DELETE", path, notes)
        # Older hubs refuse to stop a spawn in progress: let it end, then stop it.
        response = await self._after_pending(name, "DELETE", path, response, notes)
        status = response.status_code
        if status == 204:
            outcome = "stopped"
        elif status == 202:
            began = time.monotonic()
            await self._follow(name, "stop")
            outcome = f"stopped after pending {time.monotonic() - began:.1f} s"
        elif status == 400:
            outcome = "not running"
        elif status == 404:
            outcome = "not running (no such hub user)"
        else:
            raise self._error("stop the server of", name, response)
        return _with_notes(outcome, notes)

    async def sign_out(self, name: str) -> str:
        """End every login of `name` on the hub, before the seat goes to someone else.

        A hub login cookie is keyed to the user's row, not to the password: a former holder
        who kept it could start the seat's server again, and after the next CREATE reach the
        next holder's. Stopping the server and rotating the password end neither. The user is
        deleted (its cookies and tokens with it; the hub stops a running server first) and
        made again. A user with more than the API can give back (admin, groups, roles other
        than `user`) is kept as it is, and so is one the token may not delete: the outcome
        says so and a warning is logged.
        """
        quoted = urllib.parse.quote(name, safe="")
        try:
            model = await self.user(name)
        except StepFailed:
            return "no such hub user: no login to end"
        extra = _beyond_the_api(model)
        if extra:
            log.warning("JupyterHub user %s has %s: kept, so its logins stay valid", name, extra)
            return f"not signed out: the hub user has {extra}, which the API cannot give back"
        notes: list[str] = []
        response = await self._send("DELETE", f"/users/{quoted}", notes)
        if response.status_code == 403:
            log.warning(
                "JupyterHub refused to delete user %s (the token needs admin:users): its logins stay valid", name
            )
            return "not signed out: the hub's token may not delete users (it needs the scope admin:users)"
        if response.status_code == 400:  # a stop still under way: this step again, later
            raise TransientError(f"JupyterHub cannot delete {name} yet: {_message(response)}")
        if response.status_code not in (204, 404):
            raise self._error("delete the user", name, response)
        await self.create_user(name)
        return _with_notes("signed out (hub user deleted and made again)", notes)

    async def create_user(self, name: str) -> str:
        """Create the hub user `name`; one that already exists is fine."""
        response = await self._send("POST", f"/users/{urllib.parse.quote(name, safe='')}", [])
        if response.status_code == 201:
            log.info("created JupyterHub user %s", name)
            return "user created"
        if response.status_code == 409 or (response.status_code == 400 and "exists" in _message(response)):
            return "user existed"
        raise self._error("create the user", name, response)

    async def user(self, name: str) -> dict[str, Any]:
        """The hub's user model of `name` (GET /hub/api/users/{name})."""
        response = await self._send("GET", f"/users/{urllib.parse.quote(name, safe='')}", [])
        if response.status_code == 404:
            raise StepFailed(f"JupyterHub has no user {name}")
        if response.status_code != 200:
            raise self._error("read the user", name, response)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TransientError(f"JupyterHub answered GET /users/{name} with something other than a JSON object")
        return data

    async def server_state(self, name: str) -> str:
        """The state of `name`'s default server: "ready", "stopped", or what it is pending ("spawn", ...)."""
        return _server_state(await self.user(name))

    # -- following a pending server --------------------------------------------------------

    async def _follow(self, name: str, pending: str, *, permanent: bool = False) -> str:
        """Poll until `name`'s server is no longer pending `pending`; returns its state then.

        Still pending after HUBSPAWNTIMEOUT: StepFailed when `permanent`, else TransientError.
        """
        began = time.monotonic()
        deadline = began + self.spawn_timeout
        polls = 0
        while True:
            state = await self.server_state(name)
            if state != pending:
                return state
            left = deadline - time.monotonic()
            if left <= 0:
                doing = {"spawn": "starting", "stop": "stopping"}.get(pending, f"pending {pending}")
                kind = StepFailed if permanent else TransientError
                raise kind(
                    f"{name}'s server was still {doing} {time.monotonic() - began:.0f} s after JupyterHub took"
                    f" the request (HUBSPAWNTIMEOUT is {self.spawn_timeout:g} s)"
                )
            polls += 1
            await asyncio.sleep(min(backoff(polls, first=0.05, factor=1.5, cap=POLL_CAP), left))

    async def _spawn_failure(self, name: str) -> str:
        """The hub's reason for a failed spawn, from its progress stream, if it still has one."""
        path = f"{_server_path(name)}/progress"
        try:
            response = await self._client.get(f"{self.url}/hub/api{path}", headers=self._headers, timeout=5.0)
        except TransportError:
            return "the spawn failed (see the hub's log)"
        if response.status_code == 200:
            for line in response.text.splitlines():
                if not line.startswith("data:"):
                    continue
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("failed") and event.get("message"):
                    return self._scrub(str(event["message"])[:MESSAGE_LIMIT])
        return "the spawn ended without the server becoming ready (see the hub's log)"

    # -- HTTP ------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, notes: list[str]) -> HttpAnswer:
        """One API call; 429 answers are waited out (Retry-After, else backoff) up to throttle_wait."""
        waited = 0.0
        throttled = 0
        while True:
            response = await self._call(method, path)
            if response.status_code != 429:
                if throttled:
                    notes.append(f"throttled {throttled}x, waited {waited:.1f} s")
                return response
            throttled += 1
            delay = _retry_after(response)
            if delay is None:
                delay = backoff(throttled, first=0.5, cap=THROTTLE_BACKOFF_CAP)
            delay *= random.uniform(1.0, 1.25)  # Retry-After is a minimum; spread the herd
            if waited + delay > self.throttle_wait:
                raise TransientError(
                    f"JupyterHub answered {method} {path} with 429 {throttled} time(s) in {waited:.0f} s"
                    f" ({_message(response) or 'too many requests'}); HUBTHROTTLEWAIT is {self.throttle_wait:g} s"
                )
            log.debug("JupyterHub throttled %s %s; next try in %.1f s", method, path, delay)
            await asyncio.sleep(delay)
            waited += delay

    async def _call(self, method: str, path: str) -> HttpAnswer:
        try:
            return await self._client.request(method, f"{self.url}/hub/api{path}", headers=self._headers)
        except TransportError as exc:
            raise TransientError(self._scrub(f"cannot reach JupyterHub at {self.url}: {describe(exc)}")) from None

    def _error(self, what: str, name: str, response: HttpAnswer) -> Exception:
        status = response.status_code
        hub_says = _message(response)
        message = f"JupyterHub could not {what} {name}: answered {status}" + (f" ({hub_says})" if hub_says else "")
        message = self._scrub(message)
        if status >= 500 or status == 408:
            return TransientError(message)
        if status in (401, 403):
            return StepFailed(f"{message}; check JPHUBTOKEN and the scopes of its role")
        return StepFailed(message)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "********") if self._token else text


def _beyond_the_api(model: dict[str, Any]) -> str:
    """What of a hub user's model a delete would lose and the API cannot give back ("" if nothing)."""
    extra = []
    if model.get("admin"):
        extra.append("admin rights")
    groups = model.get("groups") or []
    if groups:
        extra.append(f"groups {', '.join(map(str, groups))}")
    roles = [str(role) for role in model.get("roles") or [] if role != "user"]
    if roles:
        extra.append(f"roles {', '.join(roles)}")
    return " and ".join(extra)


def _server_path(name: str) -> str:
    return f"/users/{urllib.parse.quote(name, safe='')}/server"


def _server_state(model: dict[str, Any]) -> str:
    servers = model.get("servers")
    if isinstance(servers, dict):  # the token may read servers: the precise answer
        server = servers.get("")
        if not isinstance(server, dict) or server.get("stopped"):
            return "stopped"
        if server.get("pending"):
            return str(server["pending"])
        return "ready" if server.get("ready") else "stopped"
    if model.get("pending"):  # only read:users: the user's summary fields
        return str(model["pending"])
    return "ready" if model.get("server") else "stopped"


def _message(response: HttpAnswer) -> str:
    """The hub's own explanation of an answer (its JSON "message"), short and on one line."""
    try:
        data = response.json()
    except ValueError:
        data = None
    text = data.get("message") if isinstance(data, dict) else None
    if not isinstance(text, str):
        text = response.text if response.headers.get("content-type", "").startswith("text/plain") else ""
    return " ".join(text.split())[:MESSAGE_LIMIT]


def _pending_word(message: str) -> str:
    """What a 400 says is pending: "x is pending stop" -> "stop"; "x is pending spawn, ..." -> "spawn"."""
    after = message.partition("pending")[2].strip()
    word = after.split()[0].strip(",.;:") if after else ""
    return word or "spawn"


def _retry_after(response: HttpAnswer) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _with_notes(outcome: str, notes: list[str]) -> str:
    return f"{outcome} ({'; '.join(notes)})" if notes else outcome
