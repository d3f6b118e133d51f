"""The notification receiver: PSP webhooks in, durably queued notices out (docs/design.md, 'PSP notifications').

It faces the internet, so it listens apart from the operations endpoint (``/metrics`` must not), and
it holds no commercetools credentials: it verifies, and queues. One path per adapter route:
``POST /notifications/{interface}`` for the interface's default account, and
``POST /notifications/{interface}/{account}``. Each request:
1. is bounded in size (413 beyond ``max_body_bytes``) and in time (``request_timeout_s``), and so is
   the number handled at once (503 beyond ``max_in_flight``; slow headers are the ingress's to bound);
2. is verified and parsed by the route's adapter, on the raw body (400 when it is not genuine);
3. is published to the queue the workers read, keyed by its payment, and answered 200 only once the
   queue holds it. When the queue fails, 503: the PSP delivers it again later (Stripe, for 3 days).
The workers apply queued notices like deliveries (``Processor.apply_notice``), so a duplicate here, or
two receivers answering the same endpoint, changes a payment once. Refused requests get one log line
naming what is wrong, never the body.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import structlog
from aiohttp import web

from connector.adapters.contract import BadNotification, notifier_of
from connector.adapters.registry import AdapterRegistry, Route
from connector.metrics import UNKNOWN_INTERFACE, Metrics
from connector.models.notice import NoticeTrigger, notice_message

log = structlog.get_logger("connector.receiver")


class NoticeQueue(Protocol):
    async def publish(self, key: str, body: bytes) -> None:
        """Returns once the queue holds the message durably; raises otherwise."""
        ...


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    max_body_bytes: int = 256 * 1024  # Stripe's events are a few kilobytes
    request_timeout_s: float = 10.0  # well within how long a PSP waits for an answer before it counts a failure
    max_in_flight: int = 256  # requests handled at once; beyond, 503 at once: memory stays bounded under a flood


def notification_path(interface: str, account: str | None) -> str:
    """Where the receiver takes a route's notifications (matched ignoring case, as routes are)."""
    return f"/notifications/{interface.casefold()}" + (f"/{account.casefold()}" if account else "")


class Receiver:
    def __init__(self, registry: AdapterRegistry, queue: NoticeQueue, limits: ReceiverLimits, metrics: Metrics) -> None:
        self._registry = registry
        self._queue = queue
        self._limits = limits
        self._metrics = metrics
        self._in_flight = 0

    def paths(self) -> list[str]:
        """The path of each route that takes notifications."""
        return [
            notification_path(interface, account)
            for interface, account in self._registry.routes()
            if (route := self._registry.route(interface, account)) is not None and notifier_of(route.adapter) is not None
        ]

    def add_routes(self, app: web.Application) -> None:
        """Onto the public listener (connector.public_http), whose ``client_max_size`` is at least ``max_body_bytes``."""
        app.router.add_post("/notifications/{interface}", self._receive)
        app.router.add_post("/notifications/{interface}/{account}", self._receive)

    async def _receive(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        interface, account = request.match_info["interface"], request.match_info.get("account")
        route = self._registry.route(interface, account)
        notifier = notifier_of(route.adapter) if route is not None else None
        label = route.interface.casefold() if route is not None else UNKNOWN_INTERFACE
        if self._in_flight >= self._limits.max_in_flight:
            log.warning("notification.busy", interface=label, in_flight=self._in_flight)
            self._metrics.labelled(self._metrics.notifications, label, "busy").inc()
            return web.json_response({"received": False, "error": "busy"}, status=503)
        self._in_flight += 1
        try:
            if route is None or notifier is None:
                log.warning("notification.refused", route=_clipped(f"{interface}/{account or '(default)'}"), status=404,
                            reason="no route of this path takes notifications")  # fmt: skip
                self._metrics.labelled(self._metrics.notifications, label, "refused").inc()
                return web.json_response({"received": False, "error": "no route of this path takes notifications"}, status=404)
            if (request.content_length or 0) > self._limits.max_body_bytes:
                return self._refused(
                    label, 413, f"the body is {request.content_length} bytes, above {self._limits.max_body_bytes}"
                )
            try:
                async with asyncio.timeout(self._limits.request_timeout_s):
                    body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._refused(label, 413, f"the body is above {self._limits.max_body_bytes} bytes")
            except TimeoutError:
                return self._refused(label, 408, f"the body did not arrive within {self._limits.request_timeout_s:g}s")
            if len(body) > self._limits.max_body_bytes:  # the listener's own bound may be larger (the Payments API's)
                return self._refused(label, 413, f"the body is above {self._limits.max_body_bytes} bytes")
            try:
                notice = notifier.parse_notification(body, request.headers)  # case-insensitive
            except BadNotification as exc:
                return self._refused(label, 400, str(exc), route=route)
            if notice is None:
                self._metrics.labelled(self._metrics.notifications, label, "ignored").inc()
                return web.json_response({"received": True, "ignored": True})
            trigger = NoticeTrigger(route.interface, route.account, notice)
            try:
                async with asyncio.timeout(self._limits.request_timeout_s):
                    await self._queue.publish(trigger.key, notice_message(trigger))
            except Exception as exc:  # any failure of the queue: not accepted, so the PSP sends it again
                log.error("notification.not_queued", interface=label, event_id=notice.event_id, error=exc.__class__.__name__)
                self._metrics.labelled(self._metrics.notifications, label, "unavailable").inc()
                return web.json_response({"received": False}, status=503)
            log.info("notification.queued", interface=label, event_id=notice.event_id, event_type=notice.event_type)
            self._metrics.labelled(self._metrics.notifications, label, "accepted").inc()
            return web.json_response({"received": True})
        finally:
            self._in_flight -= 1
            self._metrics.notification_seconds.observe(time.perf_counter() - started)

    def _refused(self, label: str, status: int, reason: str, route: Route | None = None) -> web.Response:
        where = f"{route.interface}/{route.account or '(default)'}" if route is not None else label
        log.warning("notification.refused", route=where, status=status, reason=reason)
        self._metrics.labelled(self._metrics.notifications, label, "refused").inc()
        return web.json_response({"received": False, "error": reason}, status=status)


def _clipped(text: str, keep: int = 80) -> str:
    """A path from the internet, for a log line: printable and short."""
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if len(printable) <= keep else printable[: keep - 1] + "…"
