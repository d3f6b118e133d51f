"""Network faults between the worker and commercetools.

- ``Toxiproxy`` (Shopify's, built from the Go module proxy into the cache folder): latency, reset
  connections and stalled connections at the TCP level.
- ``FaultyHttp``: an HTTP proxy that answers bursts of 429 (with Retry-After) or 503 itself, or
  refuses connections for a while. A fake, because neither the emulator nor toxiproxy can produce
  HTTP status codes (and a peer that is stopped loses what it stored).
"""

import asyncio
import subprocess
import time
from types import TracebackType
from typing import Any

import httpx
from aiohttp import ClientSession, web

from tests.go_tools import go_install
from tests.stack import free_port, terminate

TOXIPROXY = "github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0"


class Toxiproxy:
    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._api = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Toxiproxy":
        self._process = subprocess.Popen(
            [str(go_install(TOXIPROXY)), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self._api}/version", timeout=1).raise_for_status()
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    terminate(self._process)
                    raise RuntimeError("toxiproxy did not start") from None
                time.sleep(0.1)

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        terminate(self._process)

    def proxy(self, name: str, upstream: str) -> str:
        """Opens a proxy to ``upstream`` (host:port); returns the address to use instead."""
        listen = f"127.0.0.1:{free_port()}"
        httpx.post(f"{self._api}/proxies", json={"name": name, "listen": listen, "upstream": upstream}).raise_for_status()
        return listen

    async def toxic(self, proxy: str, kind: str, attributes: dict[str, Any], seconds: float) -> None:
        """Applies a toxic (downstream) for ``seconds``, then removes it."""
        async with httpx.AsyncClient(base_url=self._api) as api:
            body = {"name": kind, "type": kind, "stream": "downstream", "attributes": attributes}
            (await api.post(f"/proxies/{proxy}/toxics", json=body)).raise_for_status()
            await asyncio.sleep(seconds)
            (await api.delete(f"/proxies/{proxy}/toxics/{kind}")).raise_for_status()


class FaultyHttp:
    """Forwards HTTP to ``upstream``, except during a burst, when it answers the burst's status itself,
    and for the API requests (not token requests) that find a fault in ``faults``: a status to answer,
    or ``DROP`` to close the connection without an answer."""

    DROP = 0

    def __init__(self, upstream: str) -> None:
        self.port = free_port()
        self._upstream = upstream
        self._burst: int | None = None
        self._burst_headers: dict[str, str] = {}
        self.answered: dict[int, int] = {}
        self.faults: list[int] = []
        self.api_requests = 0
        self.token_requests = 0
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def __aenter__(self) -> "FaultyHttp":
        await self._listen()
        self._session = ClientSession()
        return self

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def burst(self, status: int, seconds: float, headers: dict[str, str] | None = None) -> "asyncio.Task[None]":
        """Answers ``status`` (with ``headers``) to every request from now on, for ``seconds``; the task
        ends with the burst."""
        self._burst, self._burst_headers = status, headers or {}

        async def end() -> None:
            await asyncio.sleep(seconds)  # the fault's length, not a wait for something to happen
            self._burst = None

        return asyncio.create_task(end())

    def refuse(self, seconds: float) -> "asyncio.Task[None]":
        """Closes every connection and refuses new ones for ``seconds`` (the port stays closed), then
        listens again; the task ends when it does."""

        async def outage() -> None:
            assert self._runner is not None
            await self._runner.cleanup()  # open keep-alive connections are closed too
            await asyncio.sleep(seconds)  # the fault's length
            await self._listen()

        return asyncio.create_task(outage())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        is_token = request.path == "/oauth/token"
        self.token_requests += is_token
        self.api_requests += not is_token
        fault = self._burst if self._burst is not None else (self.faults.pop(0) if self.faults and not is_token else None)
        if fault == self.DROP:
            assert request.transport is not None
            request.transport.abort()  # the client sees the connection reset
            return web.Response()
        if fault is not None:
            self.answered[fault] = self.answered.get(fault, 0) + 1
            headers = self._burst_headers if self._burst is not None else None
            return web.json_response({"statusCode": fault, "message": "injected"}, status=fault, headers=headers)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(
            request.method, f"{self._upstream}{request.rel_url}", headers=headers, data=await request.read()
        ) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)
