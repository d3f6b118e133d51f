"""Stripe's notifications (webhooks): verification, the events acted on, and what each object's current state means.

Verification is Stripe's own (``WebhookSignature.verify_header``, what ``construct_event`` runs) on the
raw body, against each of the account's webhook secrets in turn (two during a rotation), with a
tolerance on the signed timestamp. The body is then parsed with orjson: the connector needs only the
event's id, type, time and object id, never the snapshot, which may be stale and may hold card data.

What a notice means is read from the object fetched fresh (``look_up``), never from the event:
- a PaymentIntent: the state of the transaction that made it (``ctTransactionId``) and of its capture
  (``ctCaptureTransactionId``). Cancelled while its Authorization is still open: the Authorization
  failed (abandoned 3-D Secure). Cancelled after a successful Authorization, with no CancelAuthorization
  of ours: Stripe let it expire (7 days), recorded as a CancelAuthorization of Stripe's, Success.
- a Refund: its state; a refund that failed after it succeeded moves Success to Failure.
- a Dispute: a Chargeback (``interactionId`` the dispute's id), Pending while it is open, Success once
  the funds are withdrawn or the dispute is lost, Failure when it is won or an inquiry closes (after a
  withdrawal too: the money comes back, so nothing is charged back in the end); funds reinstated are
  recorded once as an interaction.
"""

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import stripe
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from connector.adapters.contract import BadNotification, Finding, PspState
from connector.adapters.stripe_amounts import from_stripe_amount
from connector.errors import PermanentError, PspCredentialsRejected, PspRequestInProgress, PspUnavailable
from connector.models.delivery import describe_validation_error
from connector.models.notice import Notice
from connector.models.payment import Payment, Transaction, TransactionState, TransactionType

PAYMENT_INTENT_EVENTS = frozenset(
    {
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.processing",
        "payment_intent.requires_action",
    }
)
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed"})
DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
        "charge.dispute.closed",
    }
)
HANDLED_EVENTS = PAYMENT_INTENT_EVENTS | REFUND_EVENTS | DISPUTE_EVENTS  # what `connector setup` subscribes to
DEFAULT_TOLERANCE_S = 300  # Stripe's: a signature older than this is refused (a replayed request)

_INTENT_STATES = {
    "requires_capture": TransactionState.SUCCESS,  # authorized
    "succeeded": TransactionState.SUCCESS,
    "processing": TransactionState.PENDING,
    "requires_action": TransactionState.PENDING,
    "requires_payment_method": TransactionState.FAILURE,  # declined, or 3-D Secure failed
}
_REFUND_STATES = {
    "succeeded": TransactionState.SUCCESS,
    "pending": TransactionState.PENDING,
    "requires_action": TransactionState.PENDING,
    "failed": TransactionState.FAILURE,
    "canceled": TransactionState.FAILURE,
}
_RESOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")
_DISPUTE_LOST = frozenset({"lost"})
_DISPUTE_WON = frozenset({"won", "warning_closed", "prevented"})


class _StripeObject(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_]{1,255}$")
    metadata: dict[str, Any] | None = None


class _EventData(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    object: _StripeObject


class _EventHead(BaseModel):
    """What every event has, whatever its type; its object is read only for the types acted on."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=r"^evt_[A-Za-z0-9_]{1,250}$")
    object: str = Field(pattern=r"^event$")
    type: str = Field(min_length=1, max_length=100)
    created: int = Field(ge=0)


class _Event(_EventHead):
    data: _EventData


def parse(body: bytes, headers: Mapping[str, str], secrets: Sequence[SecretStr], tolerance_s: int) -> Notice | None:
    """Verifies and parses one webhook request; None for an event type the connector does not act on."""
    verify(body, headers.get("Stripe-Signature") or headers.get("stripe-signature"), secrets, tolerance_s)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadNotification("the body is not JSON") from None
    try:
        if _EventHead.model_validate(document).type not in HANDLED_EVENTS:
            return None  # acknowledged: an object of a type not acted on is not read at all
        event = _Event.model_validate(document)
    except ValidationError as exc:
        raise BadNotification(f"not a Stripe event: {describe_validation_error(exc)}") from None
    hint = (event.data.object.metadata or {}).get("ctPaymentId")
    payment_id = hint if isinstance(hint, str) and _RESOURCE_ID.fullmatch(hint) else None
    return Notice(event.id, event.type, event.data.object.id, event.created, payment_id)


def verify(body: bytes, header: str | None, secrets: Sequence[SecretStr], tolerance_s: int, now: float | None = None) -> None:
    """Raises BadNotification unless ``header`` signs ``body`` with one of ``secrets``, within the tolerance.

    Stripe's own check decides both the signature and its age (``verify_header`` with the tolerance):
    the timestamp it signs is the one it judges. A header naming more than one timestamp is refused
    outright, so that nothing else can read another one. Stripe checks no future times; a signature
    dated beyond the tolerance ahead is refused here too."""
    if not header:
        raise BadNotification("no Stripe-Signature header")
    if not secrets:
        raise BadNotification("no webhook secret is configured for this account")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadNotification("the body is not UTF-8 text") from None
    timestamp = _timestamp(header)
    now = time.time() if now is None else now
    stale = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret.get_secret_value(), tolerance=tolerance_s)
        except stripe.SignatureVerificationError as exc:
            stale |= str(exc).startswith("Timestamp outside the tolerance zone")  # signed with this secret, but too old
            continue
        if timestamp > now + tolerance_s:
            raise BadNotification(f"the signature is dated {timestamp - now:.0f}s ahead, beyond the tolerance of {tolerance_s}s")
        return
    if stale:
        raise BadNotification(f"the signature is {now - timestamp:.0f}s old, beyond the tolerance of {tolerance_s}s")
    raise BadNotification("the signature matches none of this account's webhook secrets")


def _timestamp(header: str) -> int:
    """The header's one timestamp, read as Stripe reads it (items split at commas, nothing stripped)."""
    stamps = [value for name, _, value in (item.partition("=") for item in header.split(",")) if name == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit() or len(stamps[0]) > 12:
        raise BadNotification("the Stripe-Signature header does not have exactly one timestamp")
    return int(stamps[0])


async def look_up(client: stripe.StripeClient, notice: Notice) -> PspState | None:
    """The notice's object as Stripe shows it now, with the PaymentIntent it belongs to."""
    v1 = client.v1
    try:
        if notice.event_type in DISPUTE_EVENTS:
            dispute = (await v1.disputes.retrieve_async(notice.object_id)).to_dict()
            intent_id = dispute.get("payment_intent")
            if not isinstance(intent_id, str):
                return None  # a dispute of a charge made without a PaymentIntent: not the connector's
            intent = (await v1.payment_intents.retrieve_async(intent_id)).to_dict()
            return _state(intent, {"kind": "dispute", "dispute": dispute, "intent": intent})
        if notice.event_type in REFUND_EVENTS:
            refund = (await v1.refunds.retrieve_async(notice.object_id)).to_dict()
            return _state(refund, {"kind": "refund", "refund": refund})
        intent = (await v1.payment_intents.retrieve_async(notice.object_id)).to_dict()
        return _state(intent, {"kind": "payment_intent", "intent": intent})
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return None  # not an object of this account (any more)
        raise PermanentError(f"Stripe refused to look the notice's object up (HTTP {exc.http_status}, {exc.code})") from None
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        raise PspCredentialsRejected(f"Stripe refused this account's API key (HTTP {exc.http_status})") from None
    except stripe.StripeError as exc:
        if exc.http_status == 409:
            raise PspRequestInProgress("Stripe is busy with this object") from None
        raise PspUnavailable(f"Stripe unreachable while looking a notice up: {exc.__class__.__name__}") from None


def _state(owner: Mapping[str, Any], found: dict[str, Any]) -> PspState | None:
    metadata = owner.get("metadata") or {}
    payment_id = metadata.get("ctPaymentId")
    if not isinstance(payment_id, str) or not payment_id:
        return None  # made by someone else than the connector
    project_key = metadata.get("ctProjectKey")
    return PspState(payment_id, project_key if isinstance(project_key, str) else None, found)


def findings(state: PspState, payment: Payment) -> tuple[Finding, ...]:
    kind = state.object["kind"]
    if kind == "refund":
        return _refund_findings(state.object["refund"])
    if kind == "dispute":
        return _dispute_findings(state.object["dispute"], payment)
    return _intent_findings(state.object["intent"], payment)


def _intent_findings(intent: Mapping[str, Any], payment: Payment) -> tuple[Finding, ...]:
    metadata = intent.get("metadata") or {}
    made_by = metadata.get("ctTransactionId")
    if not isinstance(made_by, str):
        return ()
    maker = payment.transaction(made_by)
    maker_type = maker.type if maker is not None else TransactionType.AUTHORIZATION
    status = intent.get("status")
    if status == "canceled":
        return _cancelled(intent, payment, made_by, maker)
    state = _INTENT_STATES.get(str(status))
    if state is None:
        return ()  # requires_confirmation: not confirmed yet, nothing to say
    error = intent.get("last_payment_error") or {} if state is TransactionState.FAILURE else {}
    code = str(error.get("code") or status)
    text = str(error.get("message") or f"Stripe payment intent {status}")
    found = [Finding(maker_type, state, intent["id"], made_by, code=code, text=text)]
    captured_by = metadata.get("ctCaptureTransactionId")
    if status == "succeeded" and isinstance(captured_by, str):
        found.append(Finding(TransactionType.CHARGE, TransactionState.SUCCESS, intent["id"], captured_by, code="succeeded",
                             text="Stripe payment intent captured"))  # fmt: skip
    return tuple(found)


def _cancelled(intent: Mapping[str, Any], payment: Payment, made_by: str, maker: Transaction | None) -> tuple[Finding, ...]:
    reason = str(intent.get("cancellation_reason") or "expired")
    if maker is None or maker.state.rank < TransactionState.SUCCESS.rank:
        # Cancelled before it completed: the customer abandoned 3-D Secure, or it was cancelled at Stripe.
        kind = maker.type if maker is not None else TransactionType.AUTHORIZATION
        text = f"Stripe cancelled the payment intent ({reason})"
        return (Finding(kind, TransactionState.FAILURE, intent["id"], made_by, code=reason, text=text),)
    if maker.type is not TransactionType.AUTHORIZATION or maker.state is not TransactionState.SUCCESS:
        return ()
    ours = [
        t
        for t in payment.transactions
        if t.type is TransactionType.CANCEL_AUTHORIZATION and t.state is not TransactionState.FAILURE
    ]
    if ours:  # our own cancel: settle it
        return (Finding(TransactionType.CANCEL_AUTHORIZATION, TransactionState.SUCCESS, intent["id"], ours[0].id, code="canceled",
                        text="Stripe payment intent canceled"),)  # fmt: skip
    text = f"Stripe cancelled the authorization ({reason}): the hold is released, nothing can be captured"
    return (
        Finding(TransactionType.CANCEL_AUTHORIZATION, TransactionState.SUCCESS, intent["id"], None, amount=maker.amount,
                code=f"authorization_{reason}", text=text),
    )  # fmt: skip


def _refund_findings(refund: Mapping[str, Any]) -> tuple[Finding, ...]:
    made_by = (refund.get("metadata") or {}).get("ctTransactionId")
    state = _REFUND_STATES.get(str(refund.get("status")))
    if not isinstance(made_by, str) or state is None:
        return ()
    failed = state is TransactionState.FAILURE
    code = str(refund.get("failure_reason") or refund.get("status")) if failed else str(refund.get("status"))
    text = f"Stripe refund {refund.get('status')}" + (
        f" ({refund.get('failure_reason')})" if refund.get("failure_reason") else ""
    )
    return (Finding(TransactionType.REFUND, state, refund["id"], made_by, code=code, text=text, reverses_success=failed),)


def _dispute_findings(dispute: Mapping[str, Any], payment: Payment) -> tuple[Finding, ...]:
    status = str(dispute.get("status"))
    moves = [int(bt.get("amount") or 0) for bt in dispute.get("balance_transactions") or () if isinstance(bt, Mapping)]
    withdrawn, reinstated = any(m < 0 for m in moves), any(m > 0 for m in moves)
    if status in _DISPUTE_WON:
        # Closed in the merchant's favour: nothing is charged back in the end, even if the funds were
        # withdrawn meanwhile (they come back: the reinstatement is recorded below).
        state, reverses = TransactionState.FAILURE, True
    elif status in _DISPUTE_LOST or withdrawn:
        state, reverses = TransactionState.SUCCESS, False  # the money went back to the cardholder
    else:
        state, reverses = TransactionState.PENDING, False
    existing = next(
        (t for t in payment.transactions if t.type is TransactionType.CHARGEBACK and t.interaction_id == dispute["id"]), None
    )
    amount = from_stripe_amount(
        int(dispute.get("amount") or 0), str(dispute.get("currency") or payment.amount_planned.currency_code)
    )
    text = f"Stripe dispute {status} ({dispute.get('reason') or 'no reason given'})"
    found = [
        Finding(TransactionType.CHARGEBACK, state, dispute["id"], existing.id if existing else None, amount=amount,
                code=f"dispute_{status}", text=text, reverses_success=reverses)
    ]  # fmt: skip
    if reinstated:
        found.append(
            Finding(TransactionType.CHARGEBACK, state, dispute["id"], existing.id if existing else None, code="funds_reinstated",
                    text=f"Stripe reinstated the disputed funds ({status})", record="funds_reinstated")
        )  # fmt: skip
    return tuple(found)
