"""Subscription deliveries as commercetools writes them, for the demo, tests and benchmark.

The emulator emits no messages, so these stand in for the Subscription: the Platform format, and
CloudEvents (structured mode) wrapping it.
"""

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

Format = Literal["platform", "cloudevents"]
MASKED = "********"


def payment_created(project_key: str, payment: dict[str, Any], fmt: Format) -> bytes:
    embedded = json.loads(json.dumps(payment))
    if embedded.get("paymentMethodInfo", {}).get("token"):
        embedded["paymentMethodInfo"]["token"]["value"] = MASKED  # messages carry the token masked
    return _encode(project_key, "PaymentCreated", payment["id"], payment["version"], 1, {"payment": embedded}, fmt)


def transaction_added(project_key: str, payment: dict[str, Any], transaction: dict[str, Any], fmt: Format) -> bytes:
    sequence = 1 + len(payment.get("transactions", []))
    return _encode(
        project_key, "PaymentTransactionAdded", payment["id"], payment["version"], sequence, {"transaction": transaction}, fmt
    )


def resource_created(project_key: str) -> bytes:
    """The test delivery commercetools sends when a subscription is created."""
    now = _now()
    return json.dumps({
        "notificationType": "ResourceCreated", "projectKey": project_key, "version": 1,
        "resource": {"typeId": "subscription", "id": str(uuid.uuid4())}, "createdAt": now, "modifiedAt": now,
    }).encode()  # fmt: skip


def _encode(
    project_key: str, message_type: str, payment_id: str, version: int, sequence: int, payload: dict[str, Any], fmt: Format
) -> bytes:
    now = _now()
    message_id = str(uuid.uuid4())
    message = {
        "notificationType": "Message", "projectKey": project_key, "id": message_id, "version": 1,
        "sequenceNumber": sequence, "resource": {"typeId": "payment", "id": payment_id}, "resourceVersion": version,
        "resourceUserProvidedIdentifiers": {}, "type": message_type, "createdAt": now, "lastModifiedAt": now,
        **payload,
    }  # fmt: skip
    if fmt == "cloudevents":
        message = {
            "specversion": "1.0", "id": message_id, "type": f"com.commercetools.payment.message.{message_type}",
            "source": f"/{project_key}/payments", "subject": payment_id, "time": now, "sequence": str(sequence),
            "sequencetype": "Integer", "dataref": f"/{project_key}/messages/{message_id}", "data": message,
        }  # fmt: skip
    return json.dumps(message).encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
