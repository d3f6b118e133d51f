"""The commercetools Subscription that feeds the connector, and what to change in an existing one.

Pure functions: the setup command reads what exists, asks here what to send, and sends it.
"""

from dataclasses import dataclass
from typing import Any, Literal

from connector.errors import ConfigurationError

PAYMENT_MESSAGES = ("PaymentCreated", "PaymentTransactionAdded")
# Returned only partially by the API (masked), so never compared.
HIDDEN_DESTINATION_FIELDS = frozenset({"apiKey", "apiSecret"})


@dataclass(frozen=True, slots=True)
class ConfluentCloud:
    bootstrap_server: str
    topic: str
    api_key: str
    api_secret: str
    acks: str = "all"

    def as_destination(self) -> dict[str, Any]:
        return {
            "type": "ConfluentCloud",
            "bootstrapServer": self.bootstrap_server,
            "apiKey": self.api_key,
            "apiSecret": self.api_secret,
            "acks": self.acks,
            "topic": self.topic,
        }


@dataclass(frozen=True, slots=True)
class GooglePubSub:
    project_id: str
    topic: str

    def as_destination(self) -> dict[str, Any]:
        return {"type": "GoogleCloudPubSub", "projectId": self.project_id, "topic": self.topic}


def subscription_draft(
    key: str, destination: ConfluentCloud | GooglePubSub, delivery_format: Literal["Platform", "CloudEvents"]
) -> dict[str, Any]:
    return {
        "key": key,
        "destination": destination.as_destination(),
        "messages": [{"resourceTypeId": "payment", "types": list(PAYMENT_MESSAGES)}],
        "format": {"type": "CloudEvents", "cloudEventsVersion": "1.0"}
        if delivery_format == "CloudEvents"
        else {"type": "Platform"},
    }


def subscription_changes(existing: dict[str, Any], draft: dict[str, Any]) -> list[dict[str, Any]]:
    """The update actions that make ``existing`` deliver what ``draft`` asks for; [] when it does."""
    if existing.get("format", {}).get("type", "Platform") != draft["format"]["type"]:
        raise ConfigurationError(
            f"subscription {draft['key']!r} delivers in the {existing.get('format', {}).get('type')} format and"
            f" commercetools cannot change a format: delete it, then run setup again"
        )
    actions: list[dict[str, Any]] = []
    if _visible(existing.get("destination", {})) != _visible(draft["destination"]):
        actions.append({"action": "changeDestination", "destination": draft["destination"]})
    if _message_types(existing.get("messages", [])) != _message_types(draft["messages"]):
        actions.append({"action": "setMessages", "messages": draft["messages"]})
    return actions


def masked(draft: dict[str, Any]) -> dict[str, Any]:
    """The draft as it may be printed: the destination's credentials replaced."""
    destination = {k: ("***" if k in HIDDEN_DESTINATION_FIELDS else v) for k, v in draft["destination"].items()}
    return draft | {"destination": destination}


def _visible(destination: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in destination.items() if k not in HIDDEN_DESTINATION_FIELDS}


def _message_types(messages: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(m.get("resourceTypeId", ""), t) for m in messages for t in (m.get("types") or ["*"])}
