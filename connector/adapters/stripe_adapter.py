"""The Stripe adapter, on the official SDK's async client (PaymentIntents).

Mapping (docs/design.md, 'Processing protocol'; the Stripe table in docs/adapters.md):
- Authorization: a PaymentIntent with manual capture, confirmed with ``paymentMethodInfo.token``.
- Charge: capture of the payment's successful Authorization (once; partial amounts allowed), or an
  automatic-capture PaymentIntent when the payment has no Authorization. A Charge on a payment whose
  Authorization Stripe does not know is refused, never made a new charge on top of the hold.
- Refund: a refund against the charged PaymentIntent.
- CancelAuthorization: cancel of the authorized PaymentIntent.
The connector's money rules (refunds within what was charged, one capture, no cancel after a
capture) are checked before any call, in ``connector.processor.money``.

Amounts: commercetools counts the currency's ISO 4217 minor unit, Stripe mostly the same (JPY in
yen, EUR in cents), except where Stripe's currency rules differ (``stripe_amount``).
``find`` looks an execution up without its idempotency key, which Stripe forgets after 24 hours.

Every call carries the transaction's idempotency key; the PaymentIntent's metadata names the
commercetools project, payment and transaction. The API key never leaves the SDK's Authorization
header; interactions show the payment method by its last characters.
"""

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import stripe
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connector.adapters import stripe_notifications, stripe_webhook_endpoints
from connector.adapters.contract import (
    OPERATION_FOR,
    Capabilities,
    Finding,
    NotificationEndpoint,
    Operation,
    OperationRequest,
    Outcome,
    PspState,
    masked,
)
from connector.adapters.stripe_amounts import stripe_amount
from connector.errors import PermanentError, PspCredentialsRejected, PspRequestInProgress, PspStoredError, PspUnavailable
from connector.models.notice import Notice
from connector.models.payment import Payment, TransactionState, TransactionType

PI_STATES = {
    "requires_capture": TransactionState.SUCCESS,  # authorized
    "succeeded": TransactionState.SUCCESS,
    "processing": TransactionState.PENDING,
    "requires_action": TransactionState.PENDING,  # the customer must authenticate (3-D Secure)
    "requires_payment_method": TransactionState.FAILURE,
    "requires_confirmation": TransactionState.FAILURE,
}
REFUND_STATES = {
    "succeeded": TransactionState.SUCCESS,
    "pending": TransactionState.PENDING,
    "requires_action": TransactionState.PENDING,
    "failed": TransactionState.FAILURE,
    "canceled": TransactionState.FAILURE,
}


class StripeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Empty only in the notification receiver's settings, which verify and queue and never call Stripe.
    secret_key: SecretStr | None = Field(default=None, description="secret (sk_) or restricted (rk_) key of this account")
    api_base: str | None = Field(default=None, description="another API address, for an emulator")
    timeout_s: float = Field(default=30.0, gt=0)
    # Since API version 2026-09-30 Stripe refuses `payment_method_types` on PaymentIntents; the allowed list replaces it.
    allowed_payment_method_types: list[str] = ["card"]
    # Notifications: the endpoint's signing secrets (whsec_), the new one first during a rotation.
    webhook_secrets: list[SecretStr] = Field(
        default=[], max_length=4, description="signing secrets of this account's webhook endpoint"
    )
    webhook_tolerance_s: int = Field(default=stripe_notifications.DEFAULT_TOLERANCE_S, ge=1, le=3600)

    @field_validator("webhook_secrets")
    @classmethod
    def _are_webhook_secrets(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        if any(not secret.get_secret_value().startswith("whsec_") for secret in secrets):
            raise ValueError("must be Stripe webhook signing secrets (whsec_...)")
        return secrets

    @field_validator("secret_key")
    @classmethod
    def _is_secret_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().startswith(("sk_", "rk_")):
            raise ValueError("must be a Stripe secret key (sk_...) or restricted key (rk_...)")
        return key


LIVE_INTENT = frozenset({"succeeded", "requires_capture", "processing", "requires_action"})


class StripeAdapter:
    def __init__(
        self,
        client: stripe.StripeClient,
        http: stripe.AIOHTTPClient,
        payment_method_types: list[str],
        timeout_s: float,
        webhook_secrets: list[SecretStr] | None = None,
        webhook_tolerance_s: int = stripe_notifications.DEFAULT_TOLERANCE_S,
        can_execute: bool = True,
    ) -> None:
        self._client = client
        self._stripe = client.v1
        self._http = http
        self._payment_method_types = payment_method_types
        self._webhook_secrets = list(webhook_secrets or ())
        self._webhook_tolerance_s = webhook_tolerance_s
        self.can_execute = can_execute  # False: built without a secret key, for the receiver only
        # A PaymentIntent is captured once: Stripe releases what a partial capture leaves.
        self.capabilities = Capabilities(multiple_captures=False, request_timeout_s=timeout_s)

    async def authorize(self, request: OperationRequest) -> Outcome:
        return await self._create_intent(request, Operation.AUTHORIZE, capture_method="manual")

    async def charge(self, request: OperationRequest) -> Outcome:
        if not _has_an_authorization(request):
            return await self._create_intent(request, Operation.CHARGE, capture_method="automatic")
        intent_id = _intent_of(request, TransactionType.AUTHORIZATION)
        if intent_id is None:
            text = "The payment's authorization has no Stripe PaymentIntent to capture; a new charge would charge twice"
            return _refused(request, Operation.CHARGE, "authorization_not_at_stripe", text)
        amount = stripe_amount(request.transaction.amount)
        if isinstance(amount, str):
            return _refused(request, Operation.CHARGE, "currency_rules", amount)
        # The capture names its transaction, so that find can tell our capture from anyone else's.
        params: stripe.params.PaymentIntentCaptureParams = {
            "amount_to_capture": amount,
            "metadata": {"ctCaptureTransactionId": request.transaction.id},
        }
        capture = self._stripe.payment_intents.capture_async
        return await self._call(
            request, Operation.CHARGE, lambda: capture(intent_id, params, _options(request)), PI_STATES, intent_id
        )

    async def refund(self, request: OperationRequest) -> Outcome:
        intent_id = _intent_of(request, TransactionType.CHARGE)
        if intent_id is None:
            return _refused(request, Operation.REFUND, "no_charge", "No successful Stripe charge to refund")
        amount = stripe_amount(request.transaction.amount)
        if isinstance(amount, str):
            return _refused(request, Operation.REFUND, "currency_rules", amount)
        params: stripe.params.RefundCreateParams = {"payment_intent": intent_id, "amount": amount, "metadata": _metadata(request)}
        create = self._stripe.refunds.create_async
        return await self._call(request, Operation.REFUND, lambda: create(params, _options(request)), REFUND_STATES, intent_id)

    async def cancel_authorization(self, request: OperationRequest) -> Outcome:
        intent_id = _intent_of(request, TransactionType.AUTHORIZATION)
        if intent_id is None:
            return _refused(request, Operation.CANCEL_AUTHORIZATION, "no_authorization", "No Stripe authorization to cancel")
        cancel = self._stripe.payment_intents.cancel_async
        states = {**PI_STATES, "canceled": TransactionState.SUCCESS}
        return await self._call(
            request, Operation.CANCEL_AUTHORIZATION, lambda: cancel(intent_id, None, _options(request)), states, intent_id
        )

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    # Notifications (connector.adapters.stripe_notifications)

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notice | None:
        return stripe_notifications.parse(body, headers, self._webhook_secrets, self._webhook_tolerance_s)

    async def look_up(self, notice: Notice) -> PspState | None:
        return await stripe_notifications.look_up(self._client, notice)

    def findings(self, state: PspState, payment: Payment) -> tuple[Finding, ...]:
        return stripe_notifications.findings(state, payment)

    def notification_endpoint_draft(self, url: str) -> dict[str, Any]:
        return stripe_webhook_endpoints.endpoint_draft(url)

    async def register_notifications(self, url: str) -> NotificationEndpoint:
        return await stripe_webhook_endpoints.register_endpoint(self._client, url)

    async def _create_intent(
        self, request: OperationRequest, operation: Operation, *, capture_method: Literal["automatic", "manual"]
    ) -> Outcome:
        token = request.payment.payment_method_info.token
        if token is None or not token.value:
            return _refused(request, operation, "no_payment_method", "The payment has no payment method token")
        amount = stripe_amount(request.transaction.amount)
        if isinstance(amount, str):
            return _refused(request, operation, "currency_rules", amount)
        params: stripe.params.PaymentIntentCreateParams = {
            "amount": amount,
            "currency": request.transaction.amount.currency_code.lower(),
            "capture_method": capture_method,
            "confirm": True,
            "payment_method": token.value,
            "allowed_payment_method_types": self._payment_method_types,
            "metadata": _metadata(request),
        }
        create = self._stripe.payment_intents.create_async
        return await self._call(request, operation, lambda: create(params, _options(request)), PI_STATES)

    async def _call(
        self,
        request: OperationRequest,
        operation: Operation,
        call: Callable[[], Awaitable[stripe.PaymentIntent | stripe.Refund]],
        states: Mapping[str, TransactionState],
        payment_intent: str | None = None,
    ) -> Outcome:
        """Runs one Stripe call and maps its answer; transient faults raise PspUnavailable."""
        summary = _summary(request, operation, payment_intent)
        try:
            result = await call()
        except stripe.CardError as exc:
            code = (exc.error.decline_code if exc.error else None) or exc.code or "card_error"
            text = exc.user_message or "The card was declined"
            body: Any = exc.json_body or {}
            intent_id = ((body.get("error") or {}).get("payment_intent") or {}).get("id")  # the declined intent
            response = {"error": code, "message": text}
            return Outcome(TransactionState.FAILURE, intent_id, code, text, summary, response)
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise PspUnavailable(f"Stripe unreachable: {exc.__class__.__name__}", _retry_after_s(exc)) from None
        except stripe.IdempotencyError:
            # The key was used with other parameters (the payment's token changed between attempts, say):
            # its first request may have moved money, so no Failure is stored; an operator must look.
            raise PermanentError("Stripe refused the idempotency key: it was first used with other parameters") from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise PspCredentialsRejected(
                f"Stripe refused this account's API key (HTTP {exc.http_status}): rotate or widen the key in CONNECTOR_ADAPTERS"
            ) from None
        except stripe.StripeError as exc:
            if exc.http_status == 409:  # idempotency_key_in_use, lock_timeout: the first request still runs
                raise PspRequestInProgress(f"Stripe is still running a request for this key ({exc.code or 'conflict'})") from None
            if exc.http_status is not None and exc.http_status >= 500 and _replayed(exc):
                raise PspStoredError(f"Stripe replays the error stored for this key (HTTP {exc.http_status})") from None
            if exc.http_status is None or exc.http_status >= 500:
                raise PspUnavailable(f"Stripe answered HTTP {exc.http_status}") from None
            code = exc.code or f"http_{exc.http_status}"
            text = exc.user_message or "Stripe refused the request"
            return Outcome(TransactionState.FAILURE, None, code, text, summary, {"error": code, "message": text})
        return _outcome_of(result.to_dict(), states, summary)

    async def find(self, request: OperationRequest) -> Outcome | None:
        """What Stripe did for ``request.transaction``: the PaymentIntent or refund carrying its
        ``ctTransactionId`` (searched by metadata), or the authorized PaymentIntent's capture (named in its
        ``ctCaptureTransactionId``) or cancellation. None when Stripe did nothing for it."""
        operation = OPERATION_FOR[request.transaction.type]
        summary = _summary(request, operation)
        try:
            if operation is Operation.REFUND:
                return await self._find_refund(request, summary)
            if operation is Operation.AUTHORIZE or (operation is Operation.CHARGE and not _has_an_authorization(request)):
                return await self._find_intent(request, summary)
            intent_id = _intent_of(request, TransactionType.AUTHORIZATION)
            if intent_id is None:
                return None
            intent = (await self._stripe.payment_intents.retrieve_async(intent_id)).to_dict()
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None  # nothing of that id at Stripe: nothing was done with it
            raise PermanentError(f"Stripe refused to look the transaction up (HTTP {exc.http_status}, {exc.code})") from None
        except stripe.StripeError as exc:
            raise _lookup_error(exc) from None
        if operation is Operation.CANCEL_AUTHORIZATION:
            cancelled = intent["status"] == "canceled"
            return _outcome_of(intent, {"canceled": TransactionState.SUCCESS}, summary) if cancelled else None
        if intent["status"] != "succeeded":
            return None  # not captured (yet)
        captured_by = (intent.get("metadata") or {}).get("ctCaptureTransactionId")
        if captured_by != request.transaction.id and captured_by in {t.id for t in request.payment.transactions}:
            return None  # captured by another Charge of this payment: the money rules refuse this one
        if captured_by != request.transaction.id:
            raise PermanentError(
                f"Stripe shows PaymentIntent {intent['id']} captured, but not by this transaction: reconcile it by hand"
            )
        return _outcome_of(intent, PI_STATES, summary)

    async def _find_intent(self, request: OperationRequest, summary: Mapping[str, Any]) -> Outcome | None:
        # Search is eventually consistent (about a minute): an intent made just before may be missing,
        # and then the call with the idempotency key replays it, within Stripe's 24 hours.
        query = f"metadata['ctTransactionId']:'{request.transaction.id}'"
        found = [i.to_dict() for i in (await self._stripe.payment_intents.search_async({"query": query, "limit": 10})).data]
        live = [i for i in found if i["status"] in LIVE_INTENT]
        if len(live) > 1:
            ids = ", ".join(i["id"] for i in live)
            raise PermanentError(f"Stripe holds {len(live)} live PaymentIntents for one transaction ({ids}): refund the extra")
        if live:
            return _outcome_of(live[0], PI_STATES, summary)
        if any(i["status"] == "requires_confirmation" for i in found):
            raise PspRequestInProgress("Stripe holds a PaymentIntent for this transaction that is not confirmed yet")
        latest = max(found, key=lambda i: i.get("created") or 0, default=None)
        return None if latest is None else _outcome_of(latest, PI_STATES, summary)  # a decline, or a cancelled one

    async def _find_refund(self, request: OperationRequest, summary: Mapping[str, Any]) -> Outcome | None:
        intent_id = _intent_of(request, TransactionType.CHARGE)
        if intent_id is None:
            return None
        listed = await self._stripe.refunds.list_async({"payment_intent": intent_id, "limit": 100})
        refunds = [r.to_dict() for r in listed.data]
        ours = [r for r in refunds if (r.get("metadata") or {}).get("ctTransactionId") == request.transaction.id]
        return _outcome_of(ours[0], REFUND_STATES, summary) if ours else None


def _lookup_error(exc: stripe.StripeError) -> Exception:
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return PspCredentialsRejected(f"Stripe refused this account's API key (HTTP {exc.http_status})")
    if exc.http_status == 409:
        return PspRequestInProgress("Stripe is busy with this object")
    return PspUnavailable(f"Stripe unreachable while looking up an execution: {exc.__class__.__name__}")


def _outcome_of(answer: Mapping[str, Any], states: Mapping[str, TransactionState], summary: Mapping[str, Any]) -> Outcome:
    """The outcome a Stripe PaymentIntent or Refund says."""
    state = states.get(answer["status"], TransactionState.FAILURE)
    error = (answer.get("last_payment_error") or {}) if state is TransactionState.FAILURE else {}
    code = error.get("code") or answer["status"]
    text = error.get("message") or f"Stripe {answer['object'].replace('_', ' ')} {answer['status']}"
    response = {key: answer.get(key) for key in ("id", "object", "status", "amount")}
    return Outcome(state, answer["id"], code, text, summary, response)


def _has_an_authorization(request: OperationRequest) -> bool:
    """Whether the payment has an Authorization, in any state: then a Charge is its capture, never a new charge."""
    return any(t.type is TransactionType.AUTHORIZATION for t in request.payment.transactions)


def _intent_of(request: OperationRequest, kind: TransactionType) -> str | None:
    """The PaymentIntent of the payment's successful transaction of ``kind``, if Stripe made one."""
    return next(
        (
            t.interaction_id
            for t in request.payment.transactions
            if t.type is kind and t.state is TransactionState.SUCCESS and (t.interaction_id or "").startswith("pi_")
        ),
        None,
    )


def _refused(request: OperationRequest, operation: Operation, code: str, text: str) -> Outcome:
    return Outcome(TransactionState.FAILURE, None, code, text, _summary(request, operation), {"refusedBy": "stripe adapter"})


def _summary(request: OperationRequest, operation: Operation, payment_intent: str | None = None) -> dict[str, Any]:
    """What was asked of Stripe, for the interaction log: never the key, the token only masked."""
    amount = request.transaction.amount
    summary = {
        "psp": "stripe",
        "operation": operation.value,
        "amount": amount.cent_amount,
        "currency": amount.currency_code,
        "idempotencyKey": request.idempotency_key,
    }
    token = request.payment.payment_method_info.token
    if operation in (Operation.AUTHORIZE, Operation.CHARGE) and payment_intent is None and token is not None:
        summary["paymentMethod"] = masked(token.value)
    if payment_intent:
        summary["paymentIntent"] = payment_intent
    return summary


def _metadata(request: OperationRequest) -> dict[str, str]:
    return {
        "ctProjectKey": request.project_key,
        "ctPaymentId": request.payment.id,
        "ctTransactionId": request.transaction.id,
    }


def _options(request: OperationRequest) -> stripe.RequestOptions:
    return {"idempotency_key": request.idempotency_key}


def create_adapter(settings: Mapping[str, Any]) -> StripeAdapter:
    """The ``stripe`` entry point of ``connector.adapters``: one instance per Stripe account."""
    parsed = StripeSettings.model_validate(settings)
    http = stripe.AIOHTTPClient(timeout=parsed.timeout_s)
    client = stripe.StripeClient(
        parsed.secret_key.get_secret_value() if parsed.secret_key else "sk_none",  # never sent: see can_execute
        base_addresses={"api": parsed.api_base} if parsed.api_base else None,
        http_client=http,
        max_network_retries=0,  # the processor retries, with the same idempotency key
    )
    return StripeAdapter(
        client, http, parsed.allowed_payment_method_types, parsed.timeout_s, parsed.webhook_secrets, parsed.webhook_tolerance_s,
        can_execute=parsed.secret_key is not None,
    )  # fmt: skip


def _replayed(exc: stripe.StripeError) -> bool:
    """Stripe marks an answer it replays for a key with ``Idempotent-Replayed: true``."""
    headers = {str(k).casefold(): str(v) for k, v in (exc.headers or {}).items()}
    return headers.get("idempotent-replayed", "").casefold() == "true"


def _retry_after_s(exc: stripe.StripeError) -> float | None:
    """A Retry-After in seconds, when a rate-limited answer carried one (Stripe usually does not)."""
    headers = {str(k).casefold(): str(v) for k, v in (exc.headers or {}).items()}
    try:
        seconds = float(headers["retry-after"])
    except (KeyError, ValueError):
        return None
    return seconds if 0 <= seconds <= 3600 else None
