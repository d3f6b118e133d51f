"""PSP notifications (webhooks) as the connector carries them: verified at the receiver, queued, applied by a worker.

A ``Notice`` names an event and the PSP object it is about, and nothing else: no snapshot of the
object (it may hold card data, and it may be stale: events come late, out of order and more than
once), so the worker looks the object up fresh before it acts (docs/design.md, 'PSP notifications').

``notice_message`` writes the queue's envelope: a JSON object with ``notificationType``
``PspNotification``, which ``connector.models.delivery.parse_delivery`` reads beside commercetools'
own messages.
"""

from dataclasses import dataclass
from typing import Any

import orjson

NOTICE_NOTIFICATION_TYPE = "PspNotification"
NOTICE_MESSAGE_TYPE = "PspNotification"  # the deliveries metric's label for notices


@dataclass(frozen=True, slots=True)
class Notice:
    """A verified notification: which event, of which type, about which PSP object."""

    event_id: str
    event_type: str
    object_id: str
    created: int  # the event's time at the PSP, unix seconds
    payment_id: str | None = None  # the commercetools payment, when the event names it: only a hint (it keys the queue)


@dataclass(frozen=True, slots=True)
class NoticeTrigger:
    """Apply a notice: look its PSP object up through the route's adapter and store what changed."""

    interface: str
    account: str | None
    notice: Notice

    @property
    def message_id(self) -> str:
        return self.notice.event_id

    @property
    def payment_id(self) -> str | None:
        return self.notice.payment_id

    @property
    def message_type(self) -> str:
        return NOTICE_MESSAGE_TYPE

    @property
    def key(self) -> str:
        """Orders the work on one payment (the dispatcher's key, the queue's record key)."""
        return self.notice.payment_id or f"{self.interface.casefold()}:{self.notice.object_id}"


def notice_message(trigger: NoticeTrigger) -> bytes:
    notice = trigger.notice
    document: dict[str, Any] = {
        "notificationType": NOTICE_NOTIFICATION_TYPE,
        "interface": trigger.interface,
        "account": trigger.account,
        "eventId": notice.event_id,
        "eventType": notice.event_type,
        "objectId": notice.object_id,
        "created": notice.created,
        "paymentId": notice.payment_id,
    }
    return orjson.dumps(document)
