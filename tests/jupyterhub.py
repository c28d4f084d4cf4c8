"""A real JupyterHub for the tests: the hub, configurable-http-proxy, and tiny student servers.

    with RealJupyterHub(tmp_path, users=["student1", ...]) as hub:
        site.values.update(JPHUBAPISRV=hub.url, JPHUBTOKEN=hub.token)
        ...
        assert hub.ready("student1")

`jupyterhub` comes from PyPI (the `test` extra), `configurable-http-proxy` from npm
(scripts/test installs it into .npm/ of the repository). Both are required: a missing one
fails the test that needs it, with the command that installs it.

The hub runs from tests/data/jupyterhub/jupyterhub_config.py with the settings of one run
(ports chosen now, folders under `root`, limits) in root/settings.json and the service's
token in its environment only. Hub, proxy and students' servers listen on 127.0.0.1.
`stop()` ends the students' servers (by the pids they write), then the hub (which ends its
proxy), then, by pid, any process of this hub still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from tests.conftest import DATA, REPO
from tests.ports import free_port

CONFIG = DATA / "jupyterhub" / "jupyterhub_config.py"
TINY_SERVER = DATA / "jupyterhub" / "tiny_server.py"
PROXY = REPO / ".npm" / "node_modules" / ".bin" / "configurable-http-proxy"

#: What wodmail's service token may do: start, stop and read servers, read and create users.
WODMAIL_SCOPES = ("servers", "admin:users")


def proxy_command() -> str:
    """configurable-http-proxy from .npm/ (or $PATH); fails the test when it is missing."""
    if PROXY.exists():
        return str(PROXY)
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    raise AssertionError(
        "configurable-http-proxy is not installed: run scripts/test, or"
        " `npm install --prefix .npm configurable-http-proxy`"
    )


class RealJupyterHub:
    """One JupyterHub process (with its proxy) under `root`, on ports chosen at start."""

    def __init__(
        self,
        root: Path,
        *,
        users: Iterable[str] = (),
        concurrent_spawn_limit: int = 100,
        spawn_throttle_retry_range: tuple[int, int] = (1, 2),
        slow_spawn_timeout: float = 10,
        slow_stop_timeout: float = 10,
        http_timeout: int = 30,
        start_timeout: int = 60,
        scopes: Iterable[str] = WODMAIL_SCOPES,
        authenticator: str = "null",
    ) -> None:
        self.root = root
        self.token = secrets.token_hex(24)
        self.proxy_port = free_port()
        self.settings: dict[str, Any] = {
            "root": str(root),
            "proxy_port": self.proxy_port,
            "proxy_api_port": free_port(),
            "hub_port": free_port(),
            "proxy_command": proxy_command(),
            "python": sys.executable,
            "tiny_server": str(TINY_SERVER),
            "allowed_users": sorted(users),
            "scopes": list(scopes),
            "authenticator": authenticator,
            "concurrent_spawn_limit": concurrent_spawn_limit,
            "spawn_throttle_retry_range": list(spawn_throttle_retry_range),
            "slow_spawn_timeout": slow_spawn_timeout,
            "slow_stop_timeout": slow_stop_timeout,
            "http_timeout": http_timeout,
            "start_timeout": start_timeout,
        }
        self.log_file = root / "jupyterhub.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(timeout=30.0)
        self._launched = 0.0
        self.started_in: float | None = None
        """Seconds from the hub's launch until its API answered through the proxy."""

    @property
    def url(self) -> str:
        """The public URL (the proxy), as JPHUBAPISRV gives it."""
        return f"http://127.0.0.1:{self.proxy_port}"

    # -- life ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Self:
        """Launch the hub and wait until its API answers through the proxy."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> Self:
        """Launch the hub without waiting for it (see `wait_ready`): hubs may start side by side."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "spawn-delay").mkdir(exist_ok=True)
        settings = self.root / "settings.json"
        settings.write_text(json.dumps(self.settings, indent=2))
        env = {
            **os.environ,
            "WODMAIL_TEST_HUB_SETTINGS": str(settings),
            "WODMAIL_TEST_HUB_TOKEN": self.token,
            "PYTHONUNBUFFERED": "1",
        }
        self._launched = time.monotonic()
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(self.root),
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Self:
        assert self.process is not None, "launch() first"
        deadline = self._launched + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyterhub exited {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if self._client.get(f"{self.url}/hub/api/", timeout=2.0).status_code == 200:
                    self.started_in = time.monotonic() - self._launched
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"jupyterhub did not answer at {self.url}/hub/api/ in {timeout} s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        """End the students' servers, then the hub (which ends its proxy), then any straggler."""
        for pid_file in self.root.glob("pids/*"):
            self._end(pid_file, signal.SIGTERM)
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid_file in [*self.root.glob("pids/*"), self.root / "proxy.pid"]:
            self._end(pid_file, signal.SIGKILL)
        self._client.close()

    def _end(self, pid_file: Path, signum: int) -> None:
        """Signal the process named in `pid_file` if it is still one of this hub's."""
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(TINY_SERVER).encode() in cmdline or b"configurable-http-proxy" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- looking at it ------------------------------------------------------------------

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to the hub's REST API with wodmail's token; `path` after /hub/api."""
        headers = {"Authorization": f"token {self.token}"}
        return self._client.request(method, f"{self.url}/hub/api{path}", headers=headers, **kwargs)

    def user(self, name: str) -> dict[str, Any] | None:
        """The user model (GET /hub/api/users/{name}), None when the hub has no such user."""
        response = self.api("GET", f"/users/{urllib.parse.quote(name)}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        model: dict[str, Any] = response.json()
        return model

    def server(self, name: str) -> dict[str, Any] | None:
        """The model of `name`'s default server while it is active (ready or pending), else None."""
        model = self.user(name)
        if model is None:
            return None
        server: dict[str, Any] | None = (model.get("servers") or {}).get("")
        return server

    def ready(self, name: str) -> bool:
        server = self.server(name)
        return bool(server and server.get("ready"))

    def answers(self, name: str) -> dict[str, Any] | None:
        """What `name`'s own server answers through the proxy (its route), or None."""
        try:
            response = self._client.get(f"{self.url}/user/{urllib.parse.quote(name)}/api", timeout=5.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200 or not response.headers.get("content-type", "").startswith("application/json"):
            return None
        data: dict[str, Any] = response.json()
        return data

    def pid_of(self, name: str) -> int | None:
        """The pid of `name`'s tiny server while it runs."""
        try:
            pid = int((self.root / "pids" / name).read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def set_spawn_delay(self, seconds: float, name: str = "default") -> None:
        """Servers of `name` (or every user: "default") wait `seconds` before they listen."""
        self._set_delay("spawn-delay", name, seconds)

    def set_stop_delay(self, seconds: float, name: str = "default") -> None:
        """Servers of `name` take `seconds` to stop after SIGINT (under Spawner.interrupt_timeout, 2 s)."""
        self._set_delay("stop-delay", name, seconds)

    def _set_delay(self, kind: str, name: str, seconds: float) -> None:
        path = self.root / kind / name
        if seconds > 0:
            path.parent.mkdir(exist_ok=True)
            path.write_text(f"{seconds}\n")
        else:
            path.unlink(missing_ok=True)

    def set_spawn_failure(self, name: str, fail: bool = True) -> None:
        """Servers of `name` exit with status 3 as soon as they start (or start normally again)."""
        path = self.root / "spawn-fail" / name
        if fail:
            path.parent.mkdir(exist_ok=True)
            path.write_text("3\n")
        else:
            path.unlink(missing_ok=True)

    def stop_server(self, name: str, timeout: float = 30.0) -> None:
        """Stop `name`'s server through the API and wait until the hub shows it stopped."""
        self.api("DELETE", f"/users/{urllib.parse.quote(name)}/server")
        assert self.wait_for(lambda: self.server(name) is None, timeout), f"{name}'s server did not stop"

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()
