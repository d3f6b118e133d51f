"""The public listener (``connector receive``): PSP notifications and the Payments API, on one port.

It faces the internet, so it listens apart from the operations endpoint (``/metrics``, ``/healthz``
must not). Each part adds its own routes and bounds its own requests; the listener's body limit is
the largest of theirs.
"""

from collections.abc import Callable, Iterable
from types import TracebackType

import structlog
from aiohttp import web

from connector.errors import ConfigurationError

log = structlog.get_logger("connector.public_http")

AddRoutes = Callable[[web.Application], None]


class PublicServer:
    def __init__(self, parts: Iterable[AddRoutes], host: str, port: int, max_body_bytes: int) -> None:
        app = web.Application(client_max_size=max_body_bytes)
        for add_routes in parts:
            add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        self._host, self._port = host, port
        self.port = port

    async def __aenter__(self) -> "PublicServer":
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigurationError(f"NOTIFY_HTTP_PORT {self._port} on {self._host} cannot be used: {exc.strerror}") from None
        addresses = [f"{host}:{port}" for host, port, *_ in self._runner.addresses]
        self.port = self._runner.addresses[0][1]
        log.info("public_http.listening", addresses=addresses)
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self._runner.cleanup()
