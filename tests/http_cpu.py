"""CPU per HTTP request of wodmail's client and the candidates it was chosen from.

Not a test (figures are measured, never asserted): run it alone, on a quiet machine::

    .venv/bin/python -m tests.http_cpu [N] [CONCURRENCY]

Each candidate sends N PUTs with a small JSON body and an x-access-token header,
CONCURRENCY at once over keep-alive connections, to a minimal HTTP/1.1 server in another
process (so only the client's CPU is counted), after a warm-up. CPU is user + system time of
this process (resource.getrusage), divided by N.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

from wodmail.transport import HttpClient

SERVER = r"""
import asyncio
BODY = b'{"ok":true}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(ANSWER)
async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

Send = Callable[[str], Awaitable[int]]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def wodmail_client() -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = HttpClient()

    async def send(url: str) -> int:
        answer = await client.request("PUT", url, json={"active": "true"}, headers={"x-access-token": "t" * 30})
        return answer.status_code

    return send, client.aclose


async def httpx_client() -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=32), timeout=30.0)

    async def send(url: str) -> int:
        answer = await client.put(url, json={"active": "true"}, headers={"x-access-token": "t" * 30})
        return answer.status_code

    return send, client.aclose


async def aiohttp_session() -> tuple[Send, Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=32))

    async def send(url: str) -> int:
        async with session.put(url, json={"active": "true"}, headers={"x-access-token": "t" * 30}) as answer:
            await answer.read()
            return answer.status

    return send, session.close


CANDIDATES: dict[str, Callable[[], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]]] = {
    "wodmail HttpClient (aiohttp)": wodmail_client,
    "aiohttp ClientSession alone": aiohttp_session,
    "httpx.AsyncClient (httpcore)": httpx_client,
}


async def measure(make: Any, base: str, count: int, concurrency: int) -> tuple[float, float]:
    send, close = await make()
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            assert await send(f"{base}/api/customer/{index}") == 200

    try:
        await asyncio.gather(*(one(i) for i in range(200)))  # warm-up: connections open, code hot
        began_cpu, began = cpu(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        return (cpu() - began_cpu) / count * 1e6, count / (time.perf_counter() - began)
    finally:
        await close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        for name, make in CANDIDATES.items():
            per_request, rate = asyncio.run(measure(make, base, count, concurrency))
            print(f"{name:30} {per_request:7.0f} us CPU per request {rate:7.0f} requests/s")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
