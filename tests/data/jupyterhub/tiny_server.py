"""A student's "notebook server" for the test hub: just enough HTTP for JupyterHub.

JupyterHub (2.0 and later) passes nothing on the command line: this reads where to listen
from $JUPYTERHUB_SERVICE_URL (http://127.0.0.1:PORT/user/NAME/) and answers every GET under
$JUPYTERHUB_SERVICE_PREFIX with 200 and a little JSON, which is what the hub's readiness
check (GET .../user/NAME/api, any answer below 500) needs. A file
TINY_SERVER_DIR/spawn-delay/NAME (or .../default) holding a number of seconds makes it wait
that long before it listens: a slow spawn on demand; a file TINY_SERVER_DIR/spawn-fail/NAME
makes it exit at once with status 3: a failed spawn on demand; TINY_SERVER_DIR/stop-delay/NAME
makes it take that long to stop after SIGINT: a slow stop on demand. It writes its pid to
TINY_SERVER_DIR/pids/NAME so that the tests can make sure no server outlives them.

Plain sockets, standard library only, run under `python -I -S`: it starts in a few
milliseconds, so a burst of spawns measures the hub and wodmail rather than this server.
"""

import json
import os
import signal
import socket
import sys
import time
import urllib.parse

url = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or url.path or "/"
user = os.environ["JUPYTERHUB_USER"]
root = os.environ["TINY_SERVER_DIR"]
version = os.environ.get("TINY_HUB_VERSION", "")

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
pid_file = os.path.join(root, "pids", user)
os.makedirs(os.path.dirname(pid_file), exist_ok=True)
with open(pid_file, "w") as out:
    out.write(f"{os.getpid()}\n")


def delay(kind):
    """Seconds from TINY_SERVER_DIR/<kind>/<user> (or .../default), else 0."""
    for name in (user, "default"):
        try:
            with open(os.path.join(root, kind, name)) as seconds:
                return float(seconds.read().strip() or 0)
        except (OSError, ValueError):
            continue
    return 0.0


def answer(connection):
    connection.settimeout(5)
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 65536:
        chunk = connection.recv(4096)
        if not chunk:
            return
        request += chunk
    parts = request.split(b"\r\n", 1)[0].decode("latin-1").split()
    path = parts[1] if len(parts) > 1 else ""
    if parts and parts[0] == "GET" and path.startswith(prefix):
        status, body = "200 OK", json.dumps({"server": "tiny", "user": user, "pid": os.getpid()}).encode()
    else:
        status, body = "404 Not Found", b'{"message": "not found"}'
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    if version:
        head += f"X-JupyterHub-Version: {version}\r\n"
    connection.sendall((head + "Connection: close\r\n\r\n").encode() + body)


if os.path.exists(os.path.join(root, "spawn-fail", user)):
    sys.exit(3)  # a server that dies at start, on demand

try:
    time.sleep(delay("spawn-delay"))
    listener = socket.create_server((url.hostname or "127.0.0.1", url.port or 80), backlog=64)
    while True:
        connection, _ = listener.accept()
        with connection:
            try:
                answer(connection)
            except OSError:
                pass
except KeyboardInterrupt:  # JupyterHub stops a server with SIGINT first
    time.sleep(delay("stop-delay"))  # a slow stop on demand (SIGTERM still ends it at once)
finally:
    try:
        os.unlink(pid_file)
    except OSError:
        pass
