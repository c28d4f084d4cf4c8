"""The registration app (wod-api-db): its REST client, and the outbox that feeds it.

    POST {APIENDPOINT}/login  {"username", "password"} -> {"accessToken"}
    x-access-token: <accessToken> on every other call (log in again on 401)
    PUT  /student/{dbid}, /customer/{id}, /workshop/{id};  GET /workshops

Verbs never call the app directly: they add `Callback`s to the outbox in the same
transaction that records their step, and the `Outbox` delivers them, in order per
student, retrying with capped exponential backoff and jitter until the app takes them.
A callback the app keeps refusing (a 4xx other than 401/408/429) is set aside as
failed after a few tries, visible with `wodmail outbox`; none is ever dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from typing import Any

import httpx

from wodmail import queue
from wodmail.errors import StepFailed, TransientError
from wodmail.passwords import PasswordMint
from wodmail.queue import Callback, OutboxEntry
from wodmail.transport import Requester

log = logging.getLogger(__name__)

#: Client errors (4xx other than 401/408/429) a callback may meet before it is set aside.
MAX_CLIENT_ERRORS = 5
BACKOFF_CAP = 300.0


def student(dbid: int, **fields: str) -> Callback:
    return Callback("PUT", f"/student/{dbid}", dict(fields))


def student_password(dbid: int, password_name: str, **fields: str) -> Callback:
    """PUT /student/{dbid} {"password": <the job's password `password_name`>, ...}."""
    return Callback("PUT", f"/student/{dbid}", dict(fields), secret_field="password", secret_name=password_name)


def customer(customer_id: str, **fields: str) -> Callback:
    return Callback("PUT", f"/customer/{customer_id}", dict(fields))


def workshop(workshop_id: int, **fields: str) -> Callback:
    return Callback("PUT", f"/workshop/{workshop_id}", dict(fields))


class AppRefused(Exception):
    """The app answered a client error that retrying the same call will not change."""

    def __init__(self, status: int, what: str) -> None:
        self.status = status
        super().__init__(f"{what}: the registration app answered {status}")


class RegistrationApp:
    """A client of the registration app; logs in once and reuses its token."""

    def __init__(self, endpoint: str, username: str, password: str, client: Requester) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._username = username
        self._password = password
        self._client = client
        self._token: str | None = None
        self._login_lock = asyncio.Lock()
        self.logins = 0

    async def _login(self, stale: str | None) -> str:
        async with self._login_lock:
            if self._token is not None and self._token != stale:
                return self._token  # another call logged in meanwhile
            try:
                response = await self._client.post(
                    f"{self.endpoint}/login", json={"username": self._username, "password": self._password}
                )
            except httpx.HTTPError as exc:
                raise TransientError(f"cannot reach the registration app at {self.endpoint}: {describe(exc)}") from None
            if response.status_code != 200:
                raise TransientError(f"login to the registration app answered {response.status_code}")
            try:
                token = response.json()["accessToken"]
            except (ValueError, KeyError, TypeError):
                raise TransientError("login to the registration app answered without an accessToken") from None
            if not isinstance(token, str) or not token:
                raise TransientError("login to the registration app answered an empty accessToken")
            self._token = token
            self.logins += 1
            return token

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One call with the session token; logs in again once on 401."""
        what = f"{method} {path}"
        token = self._token or await self._login(None)
        for _ in range(2):
            try:
                response = await self._client.request(
                    method, f"{self.endpoint}{path}", json=body, headers={"x-access-token": token}
                )
            except httpx.HTTPError as exc:
                raise TransientError(f"{what}: {describe(exc)}") from None
            if response.status_code != 401:
                break
            token = await self._login(token)
        status = response.status_code
        if 200 <= status < 300:
            return response
        if status in (401, 408, 429) or status >= 500:
            raise TransientError(f"{what}: the registration app answered {status}")
        raise AppRefused(status, what)

    async def workshops(self) -> list[dict[str, Any]]:
        response = await self.request("GET", "/workshops")
        try:
            data = response.json()
        except ValueError:
            raise StepFailed("GET /workshops did not answer JSON") from None
        if not isinstance(data, list):
            raise StepFailed("GET /workshops did not answer a list")
        return [item for item in data if isinstance(item, dict)]


def describe(exc: httpx.HTTPError) -> str:
    """An httpx error without anything secret in it (no request bodies or headers)."""
    kind = type(exc).__name__
    return f"{kind}" + (f" ({exc})" if str(exc) and "token" not in str(exc).lower() else "")


def backoff(attempts: int, cap: float = BACKOFF_CAP) -> float:
    """Capped exponential backoff with jitter: about 1, 2, 4 ... seconds, at most `cap`."""
    delay: float = min(cap, 2.0 ** min(max(0, attempts - 1), 30))
    return delay * random.uniform(0.5, 1.0)


class Outbox:
    """Delivers pending callbacks, in order per student, until each is taken."""

    def __init__(
        self,
        db_path: Any,
        writer: queue.Writer,
        app: RegistrationApp,
        mint: PasswordMint,
        concurrency: int = 16,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self._reader = queue.connect(db_path)
        self._writer = writer
        self._app = app
        self._mint = mint
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self._backoff_cap = backoff_cap
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.delivered = 0

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._reader.close()

    @property
    def idle(self) -> bool:
        """No callback in flight (none sent and not yet recorded)."""
        return self._in_flight == 0

    async def wait_idle(self) -> None:
        """Return once no callback is in flight."""
        await self._idle.wait()

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            self._wake.clear()
            entries = self._pending()  # a read of the WAL: cheaper than a thread hop
            now = time.time()
            heads: dict[int, OutboxEntry] = {}
            for entry in entries:
                heads.setdefault(entry.student, entry)
            due = [entry for entry in heads.values() if entry.next_attempt <= now]
            if due:
                outcomes = await asyncio.gather(*(self._deliver(entry) for entry in due), return_exceptions=True)
                if any(isinstance(outcome, BaseException) for outcome in outcomes):
                    # The queue could not record an outcome (disk full, read-only STATEDIR):
                    # nothing is lost (the entries are still pending); pause, then go on.
                    failure = next(o for o in outcomes if isinstance(o, BaseException))
                    log.error("outbox: cannot record deliveries: %s", failure)
                    await asyncio.sleep(1.0)
                continue
            waits = [entry.next_attempt - now for entry in heads.values()]
            timeout = min([1.0, *waits]) if waits else 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, timeout))

    def _pending(self) -> list[OutboxEntry]:
        try:
            return queue.pending_callbacks(self._reader)
        except sqlite3.Error as exc:
            log.warning("cannot read the outbox: %s", exc)
            return []

    async def _deliver(self, entry: OutboxEntry) -> None:
        body: dict[str, Any] = dict(entry.body)
        if entry.secret_field and entry.secret_name:
            body[entry.secret_field] = self._mint.password(entry.job_id, entry.secret_name)
        what = f"{entry.method} {entry.path}"
        async with self._limit:
            self._in_flight += 1
            self._idle.clear()
            try:
                await self._send(entry, body, what)
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()

    async def _send(self, entry: OutboxEntry, body: dict[str, Any], what: str) -> None:
        """One delivery try; its outcome (delivered, retry at, set aside) is committed."""
        try:
            await self._app.request(entry.method, entry.path, body)
        except TransientError as exc:
            delay = backoff(entry.attempts + 1, self._backoff_cap)
            log.info("job %d: callback %s not delivered (%s), next try in %.1f s", entry.job_id, what, exc, delay)
            await self._writer.run(queue.outbox_failed(entry.id, time.time() + delay, str(exc)))
            return
        except AppRefused as exc:
            if entry.attempts + 1 >= MAX_CLIENT_ERRORS:
                log.warning("job %d: callback %s set aside: %s", entry.job_id, what, exc)
                await self._writer.run(queue.outbox_failed(entry.id, None, str(exc)))
            else:
                delay = backoff(entry.attempts + 1, self._backoff_cap)
                await self._writer.run(queue.outbox_failed(entry.id, time.time() + delay, str(exc)))
            return
        await self._writer.run(queue.outbox_delivered(entry.id))
        self.delivered += 1
