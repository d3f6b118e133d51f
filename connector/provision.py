"""``connector setup``: the interaction Type and the Subscription, created or brought up to date.

Idempotent: each resource is read by key, and only what differs is sent, so a second run sends
nothing. The decisions (drafts and update actions) are pure and live beside the resources they
describe; this module reads, decides and writes.
"""

from dataclasses import dataclass
from typing import Any, Literal

from connector.commercetools.client import CommercetoolsClient
from connector.commercetools.interaction_type import interaction_type_draft, type_changes
from connector.commercetools.subscription import ConfluentCloud, GooglePubSub, masked, subscription_changes, subscription_draft
from connector.config import SubscriptionSettings


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
