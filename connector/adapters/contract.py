"""The contract between the connector and a PSP adapter.

An adapter executes one operation per call and says what happened in an ``Outcome``. It knows
nothing of queues or of commercetools updates: the processor claims the transaction before the call
and writes the outcome after it.

Duties of an adapter:
- Send ``request.idempotency_key`` with every PSP call, so that a repeated call (after a crash, a
  timeout or a redelivery) never executes twice. The key is the same every time for a transaction.
- Raise ``connector.errors.PspUnavailable`` for faults worth retrying (network errors, PSP 5xx): the
  processor retries with the same key. Return a ``Failure`` outcome for refusals (declines, 4xx).
- Raise ``connector.errors.PspRequestInProgress`` when the PSP says a request with this key is
  still running (Stripe's 409 ``idempotency_key_in_use``): it is retried, never a Failure.
- Never put secrets (API keys, full payment method tokens, card data) into an ``Outcome``: its
  ``request`` and ``response`` summaries are stored on the Payment as interface interactions.
- Declare what the PSP supports in a ``capabilities`` attribute (``Capabilities``); the money rules
  refuse what it does not support before any call.
- Optionally, implement ``find`` (``FindsExecutions``): what the PSP already did for a transaction.
  The processor asks it before it executes a transaction that was claimed before, so that a takeover
  after a crash, or after the PSP forgot the idempotency key, never executes twice.
- An adapter built without the PSP's credentials (for the receiver, which needs only the webhook
  secrets) says so with ``can_execute = False``; a worker refuses to start with it.
- Optionally, receive the PSP's notifications (``ReceivesNotifications``): verify and parse a webhook
  request into a ``Notice``, look its object up fresh at the PSP, and say what that object's current
  state means for the payment's transactions (``Finding``). The core queues, orders, deduplicates and
  writes; the adapter only speaks for its PSP (docs/adapters.md, 'Notifications').
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from connector.models.notice import Notice
from connector.models.payment import Money, Payment, Transaction, TransactionState, TransactionType


class Operation(StrEnum):
    """One per PaymentAdapter method; the value is the method's name."""

    AUTHORIZE = "authorize"
    CHARGE = "charge"
    REFUND = "refund"
    CANCEL_AUTHORIZATION = "cancel_authorization"


OPERATION_FOR = {
    TransactionType.AUTHORIZATION: Operation.AUTHORIZE,
    TransactionType.CHARGE: Operation.CHARGE,
    TransactionType.REFUND: Operation.REFUND,
    TransactionType.CANCEL_AUTHORIZATION: Operation.CANCEL_AUTHORIZATION,
}


@dataclass(frozen=True, slots=True)
class OperationRequest:
    """One transaction to execute, with the payment it belongs to as the connector last saw it."""

    payment: Payment
    transaction: Transaction
    idempotency_key: str
    project_key: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the PSP did. ``state`` is Success, Failure or Pending (an asynchronous PSP flow)."""

    state: TransactionState
    psp_reference: str | None
    code: str
    text: str
    request: Mapping[str, Any] = field(default_factory=dict)
    response: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state is TransactionState.INITIAL:
            raise ValueError("an outcome moves a transaction out of Initial")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the PSP behind an adapter supports."""

    multiple_captures: bool = False  # Stripe captures an authorization once and releases the rest
    partial_captures: bool = True
    partial_refunds: bool = True
    # The longest one PSP request may run, the PSP's side included: after an attempt is cancelled, its
    # request may go on that long, so the claim lease covers it (docs/design.md, 'The claim lease').
    request_timeout_s: float = 30.0
    # How long the PSP remembers an idempotency key (Stripe: 24 hours). Past it, a retry with the key
    # executes again unless the adapter can look the transaction up (``connector replay`` warns).
    key_retention_s: float = 86_400.0


DEFAULT_CAPABILITIES = Capabilities()


class PaymentAdapter(Protocol):
    async def authorize(self, request: OperationRequest) -> Outcome: ...

    async def charge(self, request: OperationRequest) -> Outcome: ...

    async def refund(self, request: OperationRequest) -> Outcome: ...

    async def cancel_authorization(self, request: OperationRequest) -> Outcome: ...

    async def aclose(self) -> None: ...


class FindsExecutions(Protocol):
    """The optional operation: what the PSP did for ``request.transaction``, or None when it did nothing.

    It looks the execution up by what the adapter sent with it (Stripe: the ``ctTransactionId``
    metadata), not by the idempotency key, which the PSP forgets. An execution the PSP still runs is
    answered with ``PspRequestInProgress``.
    """

    async def find(self, request: OperationRequest) -> Outcome | None: ...


@dataclass(frozen=True, slots=True)
class PspState:
    """A notice's PSP object, looked up fresh: which commercetools payment it belongs to, and the object
    as the PSP shows it now (opaque to the core: only the adapter's ``findings`` reads it)."""

    payment_id: str
    project_key: str | None  # the project that made it, when the PSP object says
    object: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Finding:
    """What the PSP's current state says of one transaction of the payment.

    ``transaction_id`` names an existing transaction; None means the PSP made one of its own (a dispute,
    an authorization it cancelled), which is added once, with ``amount``, matched later by ``psp_reference``.
    The core moves states forward only; ``reverses_success`` allows the move back, Success to
    Failure, for what the PSP undid later (a refund that failed, a dispute won after a withdrawal). ``record``: no
    state changes, but an event worth an interaction of its own, recorded once (funds reinstated).
    """

    type: TransactionType
    state: TransactionState
    psp_reference: str
    transaction_id: str | None = None
    amount: Money | None = None
    code: str = ""
    text: str = ""
    reverses_success: bool = False
    record: str | None = None


class BadNotification(ValueError):
    """A notification request that is not a genuine, readable one of this PSP account; the text names
    what is wrong (a missing or wrong signature, a stale timestamp, a body that is not JSON) and
    never repeats the body."""


class ReceivesNotifications(Protocol):
    """The optional notification contract (docs/adapters.md, 'Notifications')."""

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notice | None:
        """Verifies the request's signature on the raw ``body`` and parses it; None for an event type
        the adapter does not act on (acknowledged and dropped). Raises ``BadNotification``. No I/O:
        the receiver calls it on every request."""
        ...

    async def look_up(self, notice: Notice) -> PspState | None:
        """The notice's object as the PSP shows it now; None when no commercetools payment of this
        connector made it. Raises ``PspUnavailable`` for faults worth retrying."""
        ...

    def findings(self, state: PspState, payment: Payment) -> tuple[Finding, ...]:
        """What ``state`` says of ``payment``'s transactions, from data alone (recomputed after a 409)."""
        ...


@dataclass(frozen=True, slots=True)
class NotificationEndpoint:
    """What ``connector setup`` did to a PSP's webhook endpoint for a route."""

    url: str
    change: str  # "created", "updated", "unchanged"
    secret: str | None = None  # the signing secret, which a PSP shows once, on creation: for the route's settings
    detail: str = ""


class RegistersNotifications(Protocol):
    """Optional: ``connector setup`` registers the receiver's address at the PSP, idempotently."""

    def notification_endpoint_draft(self, url: str) -> dict[str, Any]:
        """What would be registered for ``url`` (``--dry-run`` prints it; no I/O)."""
        ...

    async def register_notifications(self, url: str) -> NotificationEndpoint: ...


def capabilities_of(adapter: PaymentAdapter) -> Capabilities:
    declared = getattr(adapter, "capabilities", DEFAULT_CAPABILITIES)
    return declared if isinstance(declared, Capabilities) else DEFAULT_CAPABILITIES


def finder_of(adapter: PaymentAdapter) -> FindsExecutions | None:
    return adapter if callable(getattr(adapter, "find", None)) else None  # type: ignore[return-value]


def can_execute(adapter: PaymentAdapter) -> bool:
    """False for an adapter built without the credentials to call its PSP (an ``can_execute`` attribute
    set False): enough for the notification receiver, which only verifies; a worker refuses it."""
    return getattr(adapter, "can_execute", True) is not False


def notifier_of(adapter: PaymentAdapter) -> ReceivesNotifications | None:
    return adapter if callable(getattr(adapter, "parse_notification", None)) else None  # type: ignore[return-value]


def registrar_of(adapter: PaymentAdapter) -> RegistersNotifications | None:
    return adapter if callable(getattr(adapter, "register_notifications", None)) else None  # type: ignore[return-value]


class AdapterFactory(Protocol):
    """What the ``connector.adapters`` entry point names: builds an adapter from its settings.

    It validates ``settings`` (a pydantic model is the natural tool) and raises ``ValueError`` (or
    pydantic's ``ValidationError``) naming what is wrong; the worker does this at start-up.
    """

    def __call__(self, settings: Mapping[str, Any]) -> PaymentAdapter: ...


def masked(value: str, keep: int = 4) -> str:
    """Shows only the last ``keep`` characters of a sensitive value, for interaction logs."""
    return "***" + value[-keep:] if len(value) > 2 * keep else "***"
