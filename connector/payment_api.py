"""The Checkout Payments API: capture, refund, cancel or reverse a payment by one request (docs/payments-api.md).

``POST /{projectKey}/payment-intents/{paymentId}``, and the same at ``/operations/payment-intents/{paymentId}``
(where Checkout calls its connectors), on the public listener beside the notification receiver. Each request:
1. carries a commercetools bearer token, introspected (``TokenIntrospector``): 401 unless active, 403
   unless it holds ``manage_checkout_payment_intents:{projectKey}`` or ``manage_project:{projectKey}``
   for the path's project, 404 unless that project is ours;
2. holds one action (``parse_payment_action``), bounded in size (413) and type (415);
3. becomes one Initial transaction on the payment (``intent_decisions.admit``: the money rules of the
   whole payment), added by a version-checked update; on a 409 the payment is read again and judged
   again, so concurrent requests never together pass the rules. The worker executes the transaction
   as any other: this module never calls a PSP;
4. is answered ``{"outcome": "received"}`` once the transaction is stored, or, with ``Prefer: wait=N``
   (RFC 7240, at most ``wait_max_s``), ``approved`` or ``rejected`` once the worker stored its outcome
   and ``received`` if it has not by then.
Refused requests get one log line naming what is wrong; tokens and bodies are never logged.
"""

import asyncio
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import structlog
from aiohttp import web

from connector.adapters.contract import capabilities_of
from connector.adapters.registry import AdapterRegistry, Route
from connector.commercetools.client import CommercetoolsClient
from connector.commercetools.interaction_type import transaction_type_draft
from connector.commercetools.introspection import TokenIntrospector
from connector.errors import CommercetoolsError, ConcurrentModification, NotFound, RetryableError
from connector.metrics import Metrics
from connector.models.payment import Payment, Transaction, TransactionState
from connector.models.payment_action import RESOURCE_ID, ApiError, PaymentAction, parse_payment_action, resource_not_found
from connector.processor.intent_decisions import Outcome, Repeated, added_transaction, admit, found_by_request_id, outcome_of

log = structlog.get_logger("connector.payment_api")

PATHS = ("/operations/payment-intents/{payment_id}", "/{project_key}/payment-intents/{payment_id}")
OPENAPI_PATH = "/payment-intents/openapi.json"
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d{1,4})(?:$|[;,\s])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PaymentApiOptions:
    project_key: str
    transaction_type_key: str
    max_body_bytes: int = 64 * 1024  # one action is a few hundred bytes
    request_timeout_s: float = 10.0  # for the token and the body; no attempt to store starts after it (waiting comes on top)
    wait_max_s: float = 10.0  # the longest ``Prefer: wait`` honoured
    poll_s: float = 0.25  # between reads of the payment while a caller waits
    max_in_flight: int = 64  # requests handled at once; beyond, 503 at once
    update_attempts: int = 10  # version conflicts met before the caller is told to try again (409)


# The action label of a request refused before its body named one.
UNKNOWN_ACTION = "unknown"


@dataclass(slots=True)
class _Call:
    """What is known of one request so far, for its answer, log line and metrics."""

    payment_id: str
    client_id: str = ""
    action: str = UNKNOWN_ACTION
    wait_s: float = 0.0


class PaymentApi:
    def __init__(
        self,
        ct: CommercetoolsClient,
        registry: AdapterRegistry,
        introspector: TokenIntrospector,
        options: PaymentApiOptions,
        metrics: Metrics,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._ct = ct
        self._registry = registry
        self._introspector = introspector
        self._options = options
        self._metrics = metrics
        self._now = now
        self._in_flight = 0
        self._type_id: str | None = None  # the transaction Type's id, once start() found or made it
        self._openapi = json.dumps(openapi_document()).encode()

    async def start(self) -> None:
        """Checks the credentials and makes sure the transaction Type exists; until then requests get 503."""
        await self._ct.check_credentials()
        found = await self._ct.ensure_type(transaction_type_draft(self._options.transaction_type_key))
        self._type_id = str(found["id"])

    def add_routes(self, app: web.Application) -> None:
        for path in PATHS:  # the fixed one first: a project key "operations" means ours either way
            app.router.add_post(path, self._handle)
        app.router.add_get(OPENAPI_PATH, self._describe)

    async def _describe(self, _: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def _handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        if self._in_flight >= self._options.max_in_flight:
            log.warning("payment_api.busy", in_flight=self._in_flight)
            self._metrics.labelled(self._metrics.payment_api_requests, UNKNOWN_ACTION, "busy").inc()
            return _error_response(ApiError(503, "General", "Too many requests at once; try again shortly."))
        self._in_flight += 1
        call = _Call(request.match_info["payment_id"])
        try:
            response = await self._answer(request, call)
        except Exception as exc:  # every failure gets commercetools' error representation and one log line
            response = self._refused(_as_api_error(exc), call)
        finally:
            self._in_flight -= 1
        self._metrics.labelled(self._metrics.payment_api_seconds, str(call.wait_s > 0).lower()).observe(
            time.perf_counter() - started
        )
        return response

    async def _answer(self, request: web.Request, call: _Call) -> web.Response:
        if self._type_id is None:
            raise ApiError(503, "General", "The Payments API is starting; try again shortly.")
        # One bound for the token and the body; storing the transaction bounds itself (_store).
        async with asyncio.timeout(self._options.request_timeout_s):
            call.client_id = await self._authorize(request)
            payment_action = await self._read(request)
        call.action, call.wait_s = payment_action.name.value, self._wait_s(request)
        transaction, repeated = await self._store(call.payment_id, payment_action, call.client_id, self._type_id)
        if call.wait_s > 0 and transaction.state.rank < TransactionState.SUCCESS.rank:
            transaction = await self._await_outcome(call.payment_id, transaction, call.wait_s)
        outcome = outcome_of(transaction.state)
        log.info(
            "payment_api.answered", action=call.action, outcome=outcome, payment_id=call.payment_id,
            transaction_id=transaction.id, repeated=repeated, client_id=call.client_id,
        )  # fmt: skip
        self._metrics.labelled(self._metrics.payment_api_requests, call.action, outcome).inc()
        headers = {"Preference-Applied": f"wait={call.wait_s:g}"} if call.wait_s > 0 else None
        return web.json_response(_result(outcome, call.payment_id, transaction), headers=headers)

    async def _authorize(self, request: web.Request) -> str:
        """The caller's API client id, once its token may manage this project's payments."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.casefold() != "bearer" or not token.strip():
            raise ApiError(
                401, "invalid_token", "This endpoint requires an access token (Authorization: Bearer ...).", cause="no_token"
            )
        introspection = await self._introspector.introspect(token.strip())
        if not introspection.active:
            raise ApiError(401, "invalid_token", "The access token is not active: expired, revoked or unknown.")
        project = request.match_info.get("project_key", self._options.project_key)
        if not introspection.may_manage_payments_of(project):
            raise ApiError(
                403, "insufficient_scope",
                "The access token lacks the scope manage_checkout_payment_intents (or manage_project) for this project.",
            )  # fmt: skip
        if project != self._options.project_key:  # a payment of another project is none of ours
            raise resource_not_found(request.match_info["payment_id"])
        return introspection.client_id

    async def _read(self, request: web.Request) -> PaymentAction:
        if request.content_type != "application/json":
            raise ApiError(415, "InvalidInput", "The body must be JSON, sent as Content-Type: application/json.")
        limit = self._options.max_body_bytes
        if (request.content_length or 0) > limit:
            raise ApiError(413, "InvalidInput", f"The body is {request.content_length} bytes, above {limit}.")
        body = bytearray()
        async for chunk in request.content.iter_any():  # a body without Content-Length is bounded too
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "InvalidInput", f"The body is above {limit} bytes.")
        return parse_payment_action(bytes(body))

    def _wait_s(self, request: web.Request) -> float:
        """``Prefer: wait=N``, bounded; 0 without it."""
        match = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
        return min(float(match.group(1)), self._options.wait_max_s) if match else 0.0

    async def _store(
        self, payment_id: str, payment_action: PaymentAction, client_id: str, type_id: str
    ) -> tuple[Transaction, bool]:
        """The transaction the request added (or another request added before), and whether another did."""
        if not RESOURCE_ID.fullmatch(payment_id):
            raise resource_not_found(payment_id)
        request_id = str(uuid.uuid4())
        deadline = time.monotonic() + self._options.request_timeout_s
        sent = False  # once an update went out, commercetools may have applied it whatever came back
        try:
            for _ in range(self._options.update_attempts):
                if time.monotonic() > deadline:
                    break
                payment = await self._payment(payment_id)
                decision = admit(
                    payment, payment_action, request_id=request_id, type_key=self._options.transaction_type_key,
                    type_id=type_id, capabilities=capabilities_of(self._route(payment).adapter), requested_by=client_id,
                    now=self._now(),
                )  # fmt: skip
                if isinstance(decision, Repeated):  # an earlier attempt of ours landed too (its answer lost)
                    return decision.transaction, decision.earlier_request
                sent = True
                try:
                    updated = await self._ct.update_payment_returning(payment.id, payment.version, decision.actions)
                except ConcurrentModification:  # another request or the worker wrote, or our retried update landed
                    await asyncio.sleep(random.uniform(0.01, 0.05))
                    continue
                return added_transaction(payment, updated), False
        except RetryableError as exc:
            if not sent:
                raise
            if (found := await self._found_by_request_id(payment_id, request_id, type_id)) is not None:
                return found, False
            raise ApiError(
                503, "General", "commercetools did not answer, and the payment shows nothing of this request: repeat it"
                " (with a merchantReference, a repeat is applied once).", cause=str(exc),
            ) from None  # fmt: skip
        if sent and (found := await self._found_by_request_id(payment_id, request_id, type_id)) is not None:
            return found, False
        raise ApiError(409, "ConcurrentModification", "The payment kept changing while the request was judged; repeat it.")

    async def _found_by_request_id(self, payment_id: str, request_id: str, type_id: str) -> Transaction | None:
        """The transaction this request added, after an update whose answer did not say; 503 when unreadable."""
        try:
            return found_by_request_id(await self._ct.get_payment(payment_id), request_id, type_id)
        except CommercetoolsError as exc:
            raise ApiError(503, "General", _UNKNOWN_IF_STORED, cause=str(exc)) from None

    async def _payment(self, payment_id: str) -> Payment:
        try:
            return await self._ct.get_payment(payment_id)
        except NotFound:
            raise resource_not_found(payment_id) from None

    def _route(self, payment: Payment) -> Route:
        route = self._registry.find(payment.payment_method_info)
        if not isinstance(route, Route):
            interface = payment.payment_method_info.payment_interface or "(none)"
            message = f"The payment's interface {interface!r} (or its account) is not served by this connector."
            raise ApiError(400, "InvalidOperation", message, reason="not_served")
        return route

    async def _await_outcome(self, payment_id: str, transaction: Transaction, wait_s: float) -> Transaction:
        """The transaction once the worker stored its outcome, or as it stands after ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(self._options.poll_s, left))
            try:
                async with asyncio.timeout(max(left, 0.5)):
                    payment = await self._ct.get_payment(payment_id)
            except (TimeoutError, CommercetoolsError):
                break  # stored already: answer what is known
            transaction = payment.transaction(transaction.id) or transaction
            if transaction.state.rank >= TransactionState.SUCCESS.rank:
                break
        return transaction

    def _refused(self, error: ApiError, call: _Call) -> web.Response:
        log.warning(
            "payment_api.refused", status=error.status, code=error.code, message=error.message, cause=error.cause,
            action=call.action, payment_id=call.payment_id if RESOURCE_ID.fullmatch(call.payment_id) else "(not an id)",
            client_id=call.client_id or None,
        )  # fmt: skip
        result = "unavailable" if error.status >= 500 else "refused"
        self._metrics.labelled(self._metrics.payment_api_requests, call.action, result).inc()
        return _error_response(error)


_UNKNOWN_IF_STORED = (
    "commercetools did not answer; the request may or may not be stored. Repeat it with the same merchantReference"
    " (applied once), or read the payment."
)


def _as_api_error(exc: Exception) -> ApiError:
    """The answer to a failure. commercetools' own words go to the log line only (``cause``), never to the caller."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, TimeoutError):
        return ApiError(503, "General", "The request was not handled in time; repeat it.", cause="timeout")
    if isinstance(exc, RetryableError):  # commercetools or its auth server, before an update was sent (_store)
        return ApiError(503, "General", "A dependency did not answer; repeat the request.", cause=str(exc))
    if isinstance(exc, CommercetoolsError):  # refused (a missing Type, say): for an operator
        return ApiError(500, "General", "commercetools refused the request; see the connector's log.", cause=str(exc))
    # No traceback: its frames' locals may hold the caller's token. The class and message say where to look.
    return ApiError(
        500, "General", "The request failed; see the connector's log.", cause=f"{exc.__class__.__name__}: {exc}"[:300]
    )


def _error_response(error: ApiError) -> web.Response:
    headers = None
    if error.status == 401:  # RFC 6750: no error code when the request carried no token at all
        headers = {"WWW-Authenticate": "Bearer" if error.cause == "no_token" else 'Bearer error="invalid_token"'}
    return web.json_response(error.body(), status=error.status, headers=headers)


def _result(outcome: Outcome, payment_id: str, transaction: Transaction) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "paymentId": payment_id,
        "transactionId": transaction.id,
        "transactionType": transaction.type.value,
    }


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, as served (the same file as docs/payments-api.openapi.json)."""
    loaded: dict[str, Any] = json.loads(resources.files("connector").joinpath("payment_api.openapi.json").read_bytes())
    return loaded
