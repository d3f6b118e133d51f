"""Subscription deliveries: what commercetools puts on the queue, in both of its formats.

``parse_delivery`` turns the bytes of one delivery into a ``PaymentTrigger`` (reconcile this payment),
a ``NoticeTrigger`` (apply a PSP notification the receiver queued: connector.models.notice), an
``Ignored`` (a message that is not ours to handle, acknowledged and skipped), or raises
``BadDelivery`` naming what is wrong (dead-lettered). It is pure: no I/O, no clock.
"""

import json
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from connector.errors import BadDelivery, ForeignProject
from connector.models.notice import NOTICE_NOTIFICATION_TYPE, Notice, NoticeTrigger
from connector.models.payment import Payment

M = TypeVar("M", bound=BaseModel)

DEFAULT_MAX_BYTES = 1024 * 1024  # Kafka's default record size limit; commercetools leaves out larger payloads
HANDLED_MESSAGE_TYPES = frozenset({"PaymentCreated", "PaymentTransactionAdded"})

# Resource ids go into request paths: accept only what commercetools ids look like.
RESOURCE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,256}$"
ResourceId = Annotated[str, StringConstraints(pattern=RESOURCE_ID_PATTERN)]
# PSP ids (evt_..., pi_...) go into PSP request paths: the same caution.
PspId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_:-]{1,256}$")]


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class ResourceReference(_Envelope):
    type_id: str = Field(alias="typeId")
    id: ResourceId


class PayloadNotIncluded(_Envelope):
    reason: str
    payload_type: str = Field(alias="payloadType")


class PlatformMessage(_Envelope):
    """The Platform format: one flat JSON object (also the ``data`` of a CloudEvent)."""

    notification_type: str = Field(alias="notificationType")
    project_key: str | None = Field(default=None, alias="projectKey")
    id: str | None = None
    type: str | None = None
    resource: ResourceReference
    resource_version: int | None = Field(default=None, alias="resourceVersion")
    sequence_number: int | None = Field(default=None, alias="sequenceNumber")
    payment: dict[str, Any] | None = None
    transaction: dict[str, Any] | None = None
    payload_not_included: PayloadNotIncluded | None = Field(default=None, alias="payloadNotIncluded")


class CloudEvent(_Envelope):
    """CloudEvents 1.0 in structured mode; ``data`` is the Platform payload."""

    specversion: str
    id: str
    type: str
    source: str
    subject: str | None = None
    data: dict[str, Any]


class QueuedNotice(_Envelope):
    """A PSP notification as the receiver queues it (``connector.models.notice.notice_message``)."""

    notification_type: str = Field(alias="notificationType")
    interface: str = Field(min_length=1, max_length=100)
    account: str | None = Field(default=None, min_length=1, max_length=100)
    event_id: PspId = Field(alias="eventId")
    event_type: str = Field(alias="eventType", min_length=1, max_length=100)
    object_id: PspId = Field(alias="objectId")
    created: int = Field(ge=0)
    payment_id: ResourceId | None = Field(default=None, alias="paymentId")


@dataclass(frozen=True, slots=True)
class PaymentTrigger:
    """Reconcile this payment. ``payment`` is the copy embedded in the message, if it came whole."""

    message_id: str | None
    message_type: str
    payment_id: str
    resource_version: int | None
    payment: Payment | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid delivery that asks nothing of us: acknowledge it and go on."""

    message_id: str | None
    reason: str


def parse_delivery(
    body: bytes, max_bytes: int = DEFAULT_MAX_BYTES, project_key: str | None = None
) -> PaymentTrigger | NoticeTrigger | Ignored:
    """``project_key``: the project this worker serves; a message of another is refused (ForeignProject)."""
    if len(body) > max_bytes:
        raise BadDelivery(f"delivery is {len(body)} bytes, above the limit of {max_bytes}")
    try:
        document = orjson.loads(body)  # a third of the standard library's time, on every delivery
    except orjson.JSONDecodeError:
        raise BadDelivery(_why_not_json(body)) from None
    if not isinstance(document, dict):
        raise BadDelivery(f"delivery is JSON {type(document).__name__}, expected an object")
    if document.get("notificationType") == NOTICE_NOTIFICATION_TYPE:
        queued = _validate(QueuedNotice, document, "PSP notification")
        notice = Notice(queued.event_id, queued.event_type, queued.object_id, queued.created, queued.payment_id)
        return NoticeTrigger(queued.interface, queued.account, notice)
    if "specversion" in document:
        event = _validate(CloudEvent, document, "CloudEvent")
        return _from_platform(_validate(PlatformMessage, event.data, "CloudEvent data"), event.id, project_key)
    return _from_platform(_validate(PlatformMessage, document, "message"), None, project_key)


def _from_platform(message: PlatformMessage, fallback_id: str | None, project_key: str | None) -> PaymentTrigger | Ignored:
    message_id = message.id or fallback_id
    if project_key is not None and message.project_key is not None and message.project_key != project_key:
        # A worker pointed at the wrong project, or a topic two projects share: never consumed silently.
        raise ForeignProject(f"delivery is of project {message.project_key!r}, and this worker serves {project_key!r}")
    if message.notification_type != "Message":
        return Ignored(message_id, f"notification type {message.notification_type!r} is not a message")
    if message.resource.type_id != "payment":
        return Ignored(message_id, f"resource type {message.resource.type_id!r} is not a payment")
    if message.type not in HANDLED_MESSAGE_TYPES:
        return Ignored(message_id, f"message type {message.type!r} is not handled")
    return PaymentTrigger(
        message_id=message_id,
        message_type=message.type,
        payment_id=message.resource.id,
        resource_version=message.resource_version,
        payment=_embedded_payment(message),
    )


def _embedded_payment(message: PlatformMessage) -> Payment | None:
    """The payment carried by a PaymentCreated message; None when absent or not usable."""
    if message.payment is None or message.payload_not_included is not None:
        return None
    try:
        payment = Payment.model_validate(message.payment)
    except ValidationError:
        return None  # only an optimisation: the payment is fetched instead
    return payment if payment.id == message.resource.id else None


def _validate(model: type[M], document: Any, what: str) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise BadDelivery(f"invalid {what}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """Names each bad field and what is wrong with it, never the value it held."""
    return "; ".join(f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}" for error in exc.errors())


def _why_not_json(body: bytes) -> str:
    """What is wrong with a body orjson refused, in the standard library's more precise words."""
    try:
        json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"delivery is not valid JSON: {exc.__class__.__name__} at position {_position(exc)}"
    except RecursionError:
        return "delivery is nested too deeply to parse"
    return "delivery is not valid JSON: it holds NaN, Infinity or an unpaired surrogate"


def _position(exc: UnicodeDecodeError | json.JSONDecodeError) -> int:
    return exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
