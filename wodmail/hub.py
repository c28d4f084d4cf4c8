"""JupyterHub: start and stop a student's server over the hub's REST API.

    POST   {JPHUBAPISRV}/hub/api/users/{name}/server   201 started, 202 pending, 400 already running
    DELETE {JPHUBAPISRV}/hub/api/users/{name}/server   204 stopped, 202 pending, 400/404 not running
    Authorization: token {JPHUBTOKEN}

A pending spawn is followed (GET /hub/api/users/{name}) until the server is ready or the
spawn timeout passes; 429 (the hub's concurrent-spawn limit) and 5xx are transient.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from wodmail.errors import StepFailed, TransientError
from wodmail.regapp import describe

log = logging.getLogger(__name__)


class Hub:
    def __init__(
        self,
        url: str,
        token: str,
        client: httpx.AsyncClient,
        *,
        spawn_timeout: float = 60.0,
        create_users: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"token {token}"}
        self._client = client
        self.spawn_timeout = spawn_timeout
        self.create_users = create_users

    async def _call(self, method: str, path: str) -> httpx.Response:
        try:
            return await self._client.request(method, f"{self.url}/hub/api{path}", headers=self._headers)
        except httpx.HTTPError as exc:
            raise TransientError(f"JupyterHub {method} {path}: {describe(exc)}") from None

    async def start(self, name: str) -> str:
        """Start `name`'s server; 'started', 'already running' or 'ready after pending'."""
        path = f"/users/{name}/server"
        response = await self._call("POST", path)
        if response.status_code == 404 and self.create_users:
            await self.create_user(name)
            response = await self._call("POST", path)
        status = response.status_code
        if status == 201:
            return "started"
        if status == 400:
            return "already running"
        if status == 202:
            await self._wait_ready(name)
            return "ready after pending"
        raise self._error("start the server of", name, response)

    async def stop(self, name: str) -> str:
        """Stop `name`'s server; stopping a server that is not running is fine."""
        response = await self._call("DELETE", f"/users/{name}/server")
        status = response.status_code
        if status in (202, 204):
            return "stopped"
        if status in (400, 404):
            return "not running"
        raise self._error("stop the server of", name, response)

    async def create_user(self, name: str) -> None:
        response = await self._call("POST", f"/users/{name}")
        if response.status_code not in (201, 409, 400):
            raise self._error("create", name, response)

    async def user(self, name: str) -> dict[str, Any]:
        response = await self._call("GET", f"/users/{name}")
        if response.status_code != 200:
            raise self._error("read", name, response)
        data = response.json()
        if not isinstance(data, dict):
            raise StepFailed(f"JupyterHub answered a non-object for user {name}")
        return data

    async def _wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + self.spawn_timeout
        delay = 0.2
        while time.monotonic() < deadline:
            model = await self.user(name)
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                return
            if model.get("server") and not model.get("pending"):
                return
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
        raise TransientError(f"{name}'s server still pending after {self.spawn_timeout:.0f} s")

    def _error(self, what: str, name: str, response: httpx.Response) -> Exception:
        status = response.status_code
        message = f"JupyterHub could not {what} {name}: answered {status}"
        if status == 404:
            return StepFailed(f"JupyterHub has no user {name} (set HUBCREATEUSERS to create missing users)")
        if status in (429,) or status >= 500:
            return TransientError(message)
        if status in (401, 403):
            return StepFailed(f"{message} (check JPHUBTOKEN)")
        return StepFailed(message)
