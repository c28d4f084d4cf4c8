"""The registration app (wod-api-db): its REST client.

    POST {APIENDPOINT}/login  {"username", "password"} -> {"accessToken"}
    x-access-token: <accessToken> on every other call (log in again on 401)
    PUT  /student/{dbid}, /customer/{id}, /workshop/{id};  GET /workshops

Verbs never call the app directly: they queue `Callback`s (wodmail.callbacks) and the
outbox (wodmail.outbox) sends them through `RegistrationApp.request`. What an answer means
is said here: 2xx taken; 401 (after one new login), 408, 429, 5xx and unreachable:
`TransientError`; any other 4xx: `AppRefused`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from wodmail.errors import AppRefused, StepFailed, TransientError
from wodmail.httpanswer import HttpAnswer, TransportError
from wodmail.transport import Requester, UnsafeRequest, check_header_value


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
            except TransportError as exc:
                raise TransientError(f"cannot reach the registration app at {self.endpoint}: {describe(exc)}") from None
            if response.status_code != 200:
                raise TransientError(f"login to the registration app answered {response.status_code}")
            try:
                token = response.json()["accessToken"]
            except (ValueError, KeyError, TypeError):
                raise TransientError("login to the registration app answered without an accessToken") from None
            if not isinstance(token, str) or not token:
                raise TransientError("login to the registration app answered an empty accessToken")
            try:
                check_header_value("x-access-token", token)
            except UnsafeRequest:
                raise TransientError(
                    "login to the registration app answered an accessToken with a control character"
                    " (it cannot go in a header)"
                ) from None
            self._token = token
            self.logins += 1
            return token

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> HttpAnswer:
        """One call with the session token; logs in again once on 401."""
        what = f"{method} {path}"
        token = self._token or await self._login(None)
        for _ in range(2):
            try:
                response = await self._client.request(
                    method, f"{self.endpoint}{path}", json=body, headers={"x-access-token": token}
                )
            except TransportError as exc:
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


def describe(exc: TransportError) -> str:
    """A transport error without anything secret in it (no request bodies or headers)."""
    kind = type(exc).__name__
    return f"{kind}" + (f" ({exc})" if str(exc) and "token" not in str(exc).lower() else "")
