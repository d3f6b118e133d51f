"""localstripe (the stateful Stripe emulator from PyPI) on 127.0.0.1, for the Stripe adapter's tests.

Run as ``python -m tests.localstripe_peer PORT``. Changes to the stock server:
- no pickle file (its store lives in memory only);
- a recorder of every request's method, path, headers and form body at ``GET /_config/requests``
  (cleared with the store by ``DELETE /_config/data``), so that the tests can assert the keys and
  metadata we send;
- shims: it accepts ``allowed_payment_method_types``, the current API's name for
  ``payment_method_types``, and metadata on a capture.

And a harness extension that gives it Stripe's idempotency semantics, which stock localstripe
ignores (it executes every request): the first answer for a key, a 5xx included, is stored and
replayed (``Idempotent-Replayed: true``); a request whose key's first request is still running gets
409 ``idempotency_key_in_use``; a key reused with another body gets 400 ``idempotency_error``; keys
are forgotten after a retention. ``POST /_config/idempotency`` sets ``retention_s``, ``search_lag_s``
(Stripe's search is eventually consistent: objects younger than this are not found yet) and
``delay_ms`` (how long each keyed request runs); ``POST /_config/faults`` makes the next ``count``
keyed requests answer ``status``, stored for their keys as Stripe stores a 500. It also answers
``GET /v1/payment_intents/search`` for ``metadata['ctTransactionId']:'...'`` queries (Stripe's
search; stock localstripe has none) and filters ``GET /v1/refunds`` by ``payment_intent``.

Notifications: localstripe signs and sends only ``payment_intent.succeeded`` and ``.payment_failed``
(registered with ``POST /_config/webhooks/<id>``), once. What real Stripe does later and localstripe
never does is produced by two more harness extensions, which the tests that use them say so:
disputes (``POST /_config/disputes`` makes one against a PaymentIntent, ``POST /_config/disputes/<id>``
changes its status or adds a balance transaction, ``GET /v1/disputes/<id>`` reads it as Stripe does),
and a refund that fails after it succeeded (``POST /_config/refunds/<id>/fail``). It also keeps
webhook endpoints (``/v1/webhook_endpoints``: create with a signing secret, list, update), which
``connector setup`` registers and localstripe has none of; their shapes are checked against Stripe's
specification by tests/test_stripe_contract.py.
"""

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

import httpx
from aiohttp import web

from tests.stack import free_port, terminate


def serve(port: int) -> None:
    from localstripe import resources

    # localstripe takes no metadata on a capture, which Stripe does: kept on the PaymentIntent. Its
    # routes are made from extra_apis when its server module is imported, so this comes first.
    capture = resources.PaymentIntent._api_capture

    def capture_with_metadata(id: str, metadata: dict[str, str] | None = None, **kwargs: Any) -> Any:
        intent = capture(id, **kwargs)
        intent.metadata = {**(intent.metadata or {}), **(metadata or {})}
        return intent

    resources.extra_apis[:] = [(m, u, capture_with_metadata if f == capture else f) for m, u, f in resources.extra_apis]
    from localstripe import server

    resources.store.dump_to_disk = lambda: None  # type: ignore[method-assign]  # memory only
    # localstripe predates API version 2026-09-30, which renamed PaymentIntent's payment_method_types.
    create_intent = resources.PaymentIntent.__init__

    def create_intent_with_allowed_types(self: Any, *args: Any, allowed_payment_method_types: Any = None, **kwargs: Any) -> None:
        create_intent(self, *args, payment_method_types=allowed_payment_method_types, **kwargs)

    resources.PaymentIntent.__init__ = create_intent_with_allowed_types  # type: ignore[method-assign]
    recorded: list[dict[str, Any]] = []
    keys = IdempotencyKeys()
    disputes: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, dict[str, Any]] = {}

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
            keys.clear()
            disputes.clear()
            endpoints.clear()
        return await handler(request)

    async def requests(_: web.Request) -> web.Response:
        return web.json_response(recorded)

    @web.middleware
    async def idempotency(request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key or request.path.startswith("/_config"):
            return await handler(request)
        return await keys.answer(key, request.path, await request.read(), lambda: handler(request))

    async def configure_idempotency(request: web.Request) -> web.Response:
        settings = await request.json()
        keys.retention_s = float(settings.get("retention_s", keys.retention_s))
        keys.delay_s = float(settings.get("delay_ms", keys.delay_s * 1000)) / 1000
        keys.search_lag_s = float(settings.get("search_lag_s", keys.search_lag_s))
        return web.json_response({})

    async def configure_faults(request: web.Request) -> web.Response:
        settings = await request.json()
        keys.faults = [int(settings["status"])] * int(settings.get("count", 1))
        return web.json_response({})

    @web.middleware
    async def searches(request: web.Request, handler: Any) -> web.StreamResponse:
        """Stripe's search of PaymentIntents by our metadata, and refunds listed by PaymentIntent."""
        if request.method == "GET" and request.path == "/v1/payment_intents/search":
            match = re.fullmatch(r"metadata\['ctTransactionId'\]:'([^']*)'", request.query.get("query", ""))
            if match is None:
                return _stripe_error(400, "invalid_request_error", None, "unsupported search query")
            visible = time.time() - keys.search_lag_s
            data = [
                o for o in _objects("payment_intent")
                if (o.get("metadata") or {}).get("ctTransactionId") == match[1] and o.get("created", 0) <= visible
            ]  # fmt: skip
            return web.json_response({"object": "search_result", "url": request.path, "has_more": False, "data": data})
        if request.method == "GET" and request.path == "/v1/refunds" and "payment_intent" in request.query:
            data = [o for o in _objects("refund") if o.get("payment_intent") == request.query["payment_intent"]]
            return web.json_response({"object": "list", "url": request.path, "has_more": False, "data": data})
        return await handler(request)

    async def create_dispute(request: web.Request) -> web.Response:
        asked = await request.json()
        intent = resources.PaymentIntent._api_retrieve(asked["payment_intent"])
        dispute_id = f"dp_{len(disputes) + 1:04d}{int(time.time() * 1000) % 10**8:08d}"
        disputes[dispute_id] = {
            "id": dispute_id, "object": "dispute", "amount": int(asked.get("amount", intent.amount)),
            "currency": intent.currency, "charge": intent.latest_charge.id if intent.latest_charge else None,
            "payment_intent": intent.id, "status": asked.get("status", "needs_response"),
            "reason": asked.get("reason", "fraudulent"), "balance_transactions": [], "created": int(time.time()),
            "livemode": False, "metadata": {},
        }  # fmt: skip
        return web.json_response(disputes[dispute_id])

    async def change_dispute(request: web.Request) -> web.Response:
        dispute = disputes[request.match_info["id"]]
        asked = await request.json()
        if "status" in asked:
            dispute["status"] = asked["status"]
        if "balance_transaction" in asked:  # amount < 0: funds withdrawn; > 0: reinstated
            amount = int(asked["balance_transaction"])
            number = len(dispute["balance_transactions"]) + 1
            dispute["balance_transactions"].append(
                {"id": f"txn_{dispute['id']}_{number}", "object": "balance_transaction", "amount": amount,
                 "currency": dispute["currency"], "reporting_category": "dispute" if amount < 0 else "dispute_reversal"}
            )  # fmt: skip
        return web.json_response(dispute)

    @web.middleware
    async def dispute_reads(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path.startswith("/v1/disputes/"):
            dispute = disputes.get(request.path.removeprefix("/v1/disputes/"))
            if dispute is None:
                return _stripe_error(404, "invalid_request_error", "resource_missing", "No such dispute")
            return web.json_response(dispute)
        return await handler(request)

    @web.middleware
    async def webhook_endpoints(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/v1/webhook_endpoints"):
            return await handler(request)
        form = dict(parse_qsl(await request.text(), keep_blank_values=True))
        events = [v for k, v in parse_qsl(await request.text()) if k.startswith("enabled_events[")]
        endpoint_id = request.path.removeprefix("/v1/webhook_endpoints").strip("/")
        if request.method == "GET" and not endpoint_id:
            listed = sorted(endpoints.values(), key=lambda e: e["id"])
            return web.json_response({"object": "list", "url": request.path, "has_more": False, "data": listed})
        if request.method == "POST" and not endpoint_id:
            number = len(endpoints) + 1
            endpoint = {
                "id": f"we_{number:04d}", "object": "webhook_endpoint", "url": form["url"], "enabled_events": events,
                "description": form.get("description"), "status": "enabled", "livemode": False,
                "created": int(time.time()), "metadata": {},
            }  # fmt: skip
            endpoints[endpoint["id"]] = endpoint
            return web.json_response(endpoint | {"secret": f"whsec_local{number:04d}{int(time.time())}"})
        if request.method == "POST" and endpoint_id in endpoints:
            endpoint = endpoints[endpoint_id]
            if events:
                endpoint["enabled_events"] = events
            if "disabled" in form:
                endpoint["status"] = "disabled" if form["disabled"] == "true" else "enabled"
            return web.json_response(endpoint)
        return _stripe_error(404, "invalid_request_error", "resource_missing", "No such webhook endpoint")

    async def fail_refund(request: web.Request) -> web.Response:
        refund = resources.Refund._api_retrieve(request.match_info["id"])
        refund.status = "failed"
        refund.failure_reason = (await request.json()).get("failure_reason", "expired_or_canceled_card")
        return web.json_response({"id": refund.id, "status": refund.status})

    # Outside localstripe's error middleware, so that the answer stored for a key is the one sent.
    server.app.middlewares[:] = [
        record,
        idempotency,
        server.error_middleware,
        server.auth_middleware,
        searches,
        dispute_reads,
        webhook_endpoints,
    ]
    server.app.router.add_get("/_config/requests", requests)
    server.app.router.add_post("/_config/idempotency", configure_idempotency)
    server.app.router.add_post("/_config/faults", configure_faults)
    server.app.router.add_post("/_config/disputes", create_dispute)
    server.app.router.add_post("/_config/disputes/{id}", change_dispute)
    server.app.router.add_post("/_config/refunds/{id}/fail", fail_refund)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    web.run_app(server.app, sock=sock, print=None, access_log=None)


def _objects(kind: str) -> list[dict[str, Any]]:
    """Every object of ``kind`` in localstripe's store, as its API shows them."""
    from localstripe import resources

    found = [obj for key, obj in resources.store.items() if key.startswith(kind + ":")]
    return [json.loads(json.dumps(obj._export(), default=lambda o: o._export())) for obj in found]


@dataclass
class _Key:
    body: tuple[str, bytes]
    started: float
    status: int | None = None  # None while the first request runs
    answer: bytes = b""


@dataclass
class IdempotencyKeys:
    """Stripe's idempotency, in front of localstripe (a harness extension; see the module docstring)."""

    retention_s: float = 86_400.0
    delay_s: float = 0.0
    search_lag_s: float = 0.0
    faults: list[int] = field(default_factory=list)
    _keys: dict[str, _Key] = field(default_factory=dict)

    def clear(self) -> None:
        """Forgets every key, fault and setting (with the store, between tests)."""
        self._keys.clear()
        self.faults.clear()
        self.retention_s, self.delay_s, self.search_lag_s = 86_400.0, 0.0, 0.0

    async def answer(self, key: str, path: str, body: bytes, execute: Any) -> Any:
        now = time.monotonic()
        known = self._keys.get(key)
        if known is not None and known.started + self.retention_s <= now:
            known = None  # forgotten: executes anew
        if known is not None:
            if known.status is None:
                text = "There is currently another in-progress request using this Stripe-Idempotency-Key"
                return _stripe_error(409, "invalid_request_error", "idempotency_key_in_use", text)
            if known.body != (path, body):
                text = "Keys for idempotent requests can only be used with the same parameters"
                return _stripe_error(400, "idempotency_error", None, text)
            headers = {"Idempotent-Replayed": "true"}
            return web.Response(status=known.status, body=known.answer, content_type="application/json", headers=headers)
        entry = self._keys[key] = _Key((path, body), now)
        try:
            response = await self._run(execute)
        except BaseException:
            del self._keys[key]  # nothing was answered, so nothing is stored: the key stays free
            raise
        entry.status, entry.answer = response.status, bytes(response.body or b"")
        return response

    async def _run(self, execute: Any) -> Any:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.faults:
            return _stripe_error(self.faults.pop(), "api_error", None, "An unknown error occurred")
        try:
            return await execute()
        except web.HTTPException as exc:
            return exc


def _stripe_error(status: int, kind: str, code: str | None, message: str) -> Any:
    error = {"type": kind, "message": message, **({"code": code} if code else {})}
    return web.json_response({"error": error}, status=status)


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

    async def configure(
        self, *, retention_s: float | None = None, delay_ms: int | None = None, search_lag_s: float | None = None
    ) -> None:
        asked = {"retention_s": retention_s, "delay_ms": delay_ms, "search_lag_s": search_lag_s}
        settings = {k: v for k, v in asked.items() if v is not None}
        async with httpx.AsyncClient() as http:
            (await http.post(f"{self.url}/_config/idempotency", json=settings)).raise_for_status()

    async def fail_next(self, status: int, count: int = 1) -> None:
        """The next ``count`` keyed requests answer ``status``, stored for their keys."""
        async with httpx.AsyncClient() as http:
            (await http.post(f"{self.url}/_config/faults", json={"status": status, "count": count})).raise_for_status()

    async def register_webhook(self, url: str, secret: str, name: str = "connector") -> None:
        """localstripe's own webhook: it signs each event with ``secret`` and posts it to ``url`` once,
        about a second later. One ``name`` per session: a test registering again replaces the last."""
        async with httpx.AsyncClient() as http:
            (await http.post(f"{self.url}/_config/webhooks/{name}", data={"url": url, "secret": secret})).raise_for_status()

    async def call(self, method: str, path: str, check: bool = True, **form: Any) -> dict[str, Any]:
        """A Stripe API request (form-encoded), as a client would make it, with a test key; ``check``:
        an error answer raises."""
        async with httpx.AsyncClient() as http:
            response = await http.request(
                method, f"{self.url}{path}", data=form or None, headers={"Authorization": "Bearer sk_test_harness"}
            )
            if check:
                response.raise_for_status()
            return dict(response.json())

    async def harness(self, path: str, **body: Any) -> dict[str, Any]:
        """A harness extension (``/_config/...``, see the module docstring)."""
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{self.url}/_config/{path}", json=body)
            response.raise_for_status()
            return dict(response.json())

    async def objects(self, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind in localstripe's store (``payment_intents``, ``refunds``)."""
        async with httpx.AsyncClient() as http:
            response = await http.get(
                f"{self.url}/v1/{kind}", params={"limit": 100}, headers={"Authorization": "Bearer sk_test_lister"}
            )
            return list(response.json()["data"])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
