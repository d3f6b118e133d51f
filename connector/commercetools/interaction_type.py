"""The custom Type of the interface interactions the connector writes to a Payment."""

from typing import Any

from connector.errors import ConfigurationError

# eventId: the PSP event a notification interaction applied (duplicates are told by it).
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
