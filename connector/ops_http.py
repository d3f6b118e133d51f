"""The worker's operations endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` is liveness: it answers from the event loop and checks nothing remote, because an
outage of Kafka, Pub/Sub, commercetools or the PSP must not get healthy pods restarted (peers'
users complained of exactly that). A blocked event loop does not answer, which is what liveness
is for. ``/readyz`` answers 200 once every readiness check passes (source subscribed, commercetools
token obtained). aiohttp serves it: it is installed already for the commercetools transport.
"""

from collections.abc import Callable, Mapping
from types import TracebackType

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from connector.errors import ConfigurationError

log = structlog.get_logger("connector.ops_http")

ReadinessChecks = Mapping[str, Callable[[], bool]]


class OpsServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, readiness: ReadinessChecks) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._readiness = readiness
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)

    async def __aenter__(self) -> "OpsServer":
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigurationError(f"CONNECTOR_HTTP_PORT {self._port} on {self._host} cannot be used: {exc.strerror}") from None
        log.info("ops_http.listening", addresses=[f"{host}:{port}" for host, port, *_ in self._runner.addresses])
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = {name: check() for name, check in self._readiness.items()}
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
