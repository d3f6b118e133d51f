"""``connector setup``: the interaction Type, the Subscription and the PSP webhook endpoints, created or brought up to date.

Idempotent: each resource is read by key, and only what differs is sent, so a second run sends
nothing. The decisions (drafts and update actions) are pure and live beside the resources they
describe; this module reads, decides and writes.
"""

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from connector.adapters.contract import can_execute, registrar_of
from connector.adapters.registry import AdapterRegistry, AdapterRoute
from connector.commercetools.client import CommercetoolsClient
from connector.commercetools.interaction_type import interaction_type_draft, transaction_type_draft, type_changes
from connector.commercetools.subscription import ConfluentCloud, GooglePubSub, masked, subscription_changes, subscription_draft
from connector.config import SubscriptionSettings
from connector.receiver import notification_path


@dataclass(frozen=True, slots=True)
class Resource:
    endpoint: str  # "types", "subscriptions"
    draft: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.draft["key"])


@dataclass(frozen=True, slots=True)
class Applied:
    endpoint: str
    key: str
    change: Literal["created", "updated", "unchanged"]
    actions: tuple[str, ...] = ()

    def describe(self) -> str:
        done = f"{self.change} ({', '.join(self.actions)})" if self.actions else self.change
        return f"{self.endpoint[:-1]} {self.key}: {done}"


def resources(settings: SubscriptionSettings) -> list[Resource]:
    destination: ConfluentCloud | GooglePubSub
    if settings.destination == "kafka":
        destination = ConfluentCloud(
            bootstrap_server=settings.bootstrap_server,
            topic=settings.topic,
            api_key=settings.api_key,
            api_secret=settings.api_secret.get_secret_value(),
            acks=settings.acks,
        )
    else:
        destination = GooglePubSub(project_id=settings.project_id, topic=settings.topic)
    return [
        Resource("types", interaction_type_draft(settings.interaction_type_key)),
        Resource("types", transaction_type_draft(settings.transaction_type_key)),  # the Payments API's
        Resource("subscriptions", subscription_draft(settings.key, destination, settings.format)),
    ]


def printable(resource: Resource) -> dict[str, Any]:
    """What ``--dry-run`` prints: the draft, with the destination's credentials masked."""
    return {
        "endpoint": resource.endpoint,
        "draft": masked(resource.draft) if resource.endpoint == "subscriptions" else resource.draft,
    }


async def apply(ct: CommercetoolsClient, resource: Resource) -> Applied:
    existing = await ct.find_by_key(resource.endpoint, resource.key)
    if existing is None:
        await ct.create_resource(resource.endpoint, resource.draft)
        return Applied(resource.endpoint, resource.key, "created")
    changes = type_changes if resource.endpoint == "types" else subscription_changes
    actions = changes(existing, resource.draft)
    if not actions:
        return Applied(resource.endpoint, resource.key, "unchanged")
    await ct.update_resource(resource.endpoint, existing, actions)
    return Applied(resource.endpoint, resource.key, "updated", tuple(a["action"] for a in actions))


def webhook_drafts(public_url: str, routes: list[AdapterRoute]) -> list[dict[str, Any]]:
    """What ``--dry-run`` prints for the webhook endpoints: each registering route's draft (no I/O)."""
    if not public_url:
        return []
    registry = AdapterRegistry.load(routes)  # builds the adapters: no request is sent
    drafts = []
    try:
        for route in routes:
            found = registry.route(route.interface, route.account)
            registrar = registrar_of(found.adapter) if found is not None else None
            if registrar is not None:
                draft = registrar.notification_endpoint_draft(public_url + notification_path(route.interface, route.account))
                drafts.append({"endpoint": f"{route.adapter} webhook endpoint", "draft": draft})
    finally:
        asyncio.run(registry.aclose())
    return drafts


async def register_webhooks(public_url: str, routes: list[AdapterRoute]) -> list[str]:
    """Registers each route's receiver address at its PSP; a secret the PSP returns (once, on creation)
    is printed for the operator to put in the route's settings, the only time it can be seen."""
    if not public_url:
        return []
    registry = AdapterRegistry.load(routes)
    lines: list[str] = []
    try:
        for route in routes:
            found = registry.route(route.interface, route.account)
            registrar = registrar_of(found.adapter) if found is not None else None
            if found is None or registrar is None:
                continue
            where = f"{route.interface}/{route.account or '(default)'}"
            if not can_execute(found.adapter):
                lines.append(f"{route.adapter} webhook endpoint ({where}): skipped, the route has no PSP key to register it with")
                continue
            endpoint = await registrar.register_notifications(public_url + notification_path(route.interface, route.account))
            lines.append(
                f"{route.adapter} webhook endpoint {endpoint.url} ({where}): {endpoint.change} {endpoint.detail}".rstrip()
            )
            if endpoint.secret:
                lines.append(
                    f"  signing secret, shown only now: {endpoint.secret} -> add it to webhook_secrets of route {where}"
                    " (docs/operations.md, 'Notifications')"
                )
    finally:
        await registry.aclose()
    return lines
