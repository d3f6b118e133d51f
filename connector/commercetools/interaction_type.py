"""The custom Types of what the connector writes to a Payment: its interface interactions, and the
transactions the Payments API adds."""

from typing import Any

from connector.errors import ConfigurationError

# eventId: the PSP event a notification interaction applied (duplicates are told by it).
# On the transactions the Payments API adds: the action asked for, the caller's merchantReference, the
# API client that asked (the token's client_id), for a refund the capture it names, and the request's
# own id (an update whose answer was lost and that was applied is found again by it).
ACTION_FIELD, REFERENCE_FIELD, REQUESTED_BY_FIELD, REFUNDS_FIELD, REQUEST_ID_FIELD = (
    "paymentAction", "merchantReference", "requestedBy", "refundedTransactionId", "requestId",
)  # fmt: skip
TRANSACTION_FIELDS = (ACTION_FIELD, REFERENCE_FIELD, REQUESTED_BY_FIELD, REFUNDS_FIELD, REQUEST_ID_FIELD)
STRING_FIELDS = ("type", "transactionId", "operation", "idempotencyKey", "interactionId", "eventId", "request", "response")


def interaction_type_draft(key: str) -> dict[str, Any]:
    """A TypeDraft for ``payment-interface-interaction``; ``createdAt`` orders claims and leases."""
    fields = [_field(name, "String", multi_line=name in ("request", "response")) for name in STRING_FIELDS]
    fields.append(_field("createdAt", "DateTime", multi_line=False))
    return {
        "key": key,
        "name": {"en": "Payment connector interaction"},
        "description": {
            "en": "Requests sent to, responses received from, and notifications applied of a PSP by the payment connector."
        },
        "resourceTypeIds": ["payment-interface-interaction"],
        "fieldDefinitions": fields,
    }


def transaction_type_draft(key: str) -> dict[str, Any]:
    """A TypeDraft for ``transaction``: the Payments API's request that added the transaction (who asked,
    what, and the caller's ``merchantReference``, by which a repeated request is recognised)."""
    return {
        "key": key,
        "name": {"en": "Payment connector request"},
        "description": {"en": "The Payments API request that added this transaction."},
        "resourceTypeIds": ["transaction"],
        "fieldDefinitions": [_field(name, "String", multi_line=False) for name in TRANSACTION_FIELDS],
    }


def _field(name: str, type_name: str, *, multi_line: bool) -> dict[str, Any]:
    return {
        "name": name,
        "label": {"en": name},
        "required": False,
        "type": {"name": type_name},
        "inputHint": "MultiLine" if multi_line else "SingleLine",
    }


def type_changes(existing: dict[str, Any], draft: dict[str, Any]) -> list[dict[str, Any]]:
    """``addFieldDefinition`` for each field the existing Type lacks; a field of another type cannot be changed."""
    present = {field["name"]: field["type"]["name"] for field in existing.get("fieldDefinitions", [])}
    actions: list[dict[str, Any]] = []
    for field in draft["fieldDefinitions"]:
        if field["name"] not in present:
            actions.append({"action": "addFieldDefinition", "fieldDefinition": field})
        elif present[field["name"]] != field["type"]["name"]:
            raise ConfigurationError(
                f"Type {draft['key']!r} has field {field['name']!r} of type {present[field['name']]},"
                f" not {field['type']['name']}: use another CONNECTOR_INTERACTION_TYPE_KEY"
            )
    return actions
