"""localstripe (the stateful Stripe emulator from PyPI) on 127.0.0.1, for the Stripe adapter's tests.

Run as ``python -m tests.localstripe_peer PORT``. Two changes to the stock server: no pickle file
(its store lives in memory only), and a recorder of every request's method, path, headers and form
body at ``GET /_config/requests`` (cleared with the store by ``DELETE /_config/data``), because
localstripe ignores idempotency keys and the tests must assert the keys and metadata we send. And one
shim: it accepts ``allowed_payment_method_types``, the current API's name for ``payment_method_types``.
"""

import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

import httpx

from tests.stack import free_port, terminate


def serve(port: int) -> None:
    from aiohttp import web
    from localstripe import resources, server

    resources.store.dump_to_disk = lambda: None  # type: ignore[method-assign]  # memory only
    # localstripe predates API version 2026-09-30, which renamed PaymentIntent's payment_method_types.
    create_intent = resources.PaymentIntent.__init__

    def create_intent_with_allowed_types(self: Any, *args: Any, allowed_payment_method_types: Any = None, **kwargs: Any) -> None:
        create_intent(self, *args, payment_method_types=allowed_payment_method_types, **kwargs)

    resources.PaymentIntent.__init__ = create_intent_with_allowed_types  # type: ignore[method-assign]
    recorded: list[dict[str, Any]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_config"):
            body = await request.text()
            recorded.append({
                "method": request.method, "path": request.path, "headers": dict(request.headers),
                "form": dict(parse_qsl(body, keep_blank_values=True)),
            })  # fmt: skip
        elif request.path == "/_config/data" and request.method == "DELETE":
            recorded.clear()
        return await handler(request)

    async def requests(_: web.Request) -> web.Response:
        return web.json_response(recorded)

    server.app.middlewares[:] = [record, server.error_middleware, server.auth_middleware]
    server.app.router.add_get("/_config/requests", requests)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    web.run_app(server.app, sock=sock, print=None, access_log=None)


class LocalStripe:
    def __init__(self, start_timeout_s: float = 30.0) -> None:
        self.port = free_port()
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LocalStripe":
        self._process = subprocess.Popen([sys.executable, "-m", "tests.localstripe_peer", str(self.port)])
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"localstripe exited with {self._process.returncode}")
            try:
                httpx.get(f"{self.url}/_config/requests", timeout=1).raise_for_status()
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        terminate(self._process)
        raise TimeoutError(f"localstripe not ready after {self._start_timeout_s}s")

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        terminate(self._process)

    async def clear(self) -> None:
        async with httpx.AsyncClient() as http:
            (await http.delete(f"{self.url}/_config/data")).raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            return list((await http.get(f"{self.url}/_config/requests")).json())

    async def objects(self, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind in localstripe's store (``payment_intents``, ``refunds``)."""
        async with httpx.AsyncClient() as http:
            response = await http.get(
                f"{self.url}/v1/{kind}", params={"limit": 100}, headers={"Authorization": "Bearer sk_test_lister"}
            )
            return list(response.json()["data"])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
