"""Stripe's webhook endpoints, as ``connector setup`` registers them: one per route, subscribed to the
events the connector acts on (``stripe_notifications.HANDLED_EVENTS``), created or brought up to date."""

from collections.abc import Mapping
from typing import Any

import stripe

from connector.adapters.contract import NotificationEndpoint
from connector.adapters.stripe_notifications import HANDLED_EVENTS
from connector.errors import PspCredentialsRejected, PspUnavailable

ENDPOINT_DESCRIPTION = "commercetools payment connector"


def endpoint_draft(url: str) -> dict[str, Any]:
    """The webhook endpoint ``connector setup`` registers for a route: its address and the events acted on."""
    return {"url": url, "enabled_events": sorted(HANDLED_EVENTS), "description": ENDPOINT_DESCRIPTION}


def endpoint_changes(existing: Mapping[str, Any], draft: Mapping[str, Any]) -> dict[str, Any]:
    """The update an existing endpoint of the same address needs: the missing events added (others'
    kept), and enabled again if it was disabled; empty when it is as it should be."""
    have = set(existing.get("enabled_events") or ())
    changes: dict[str, Any] = {}
    if "*" not in have and not set(draft["enabled_events"]) <= have:
        changes["enabled_events"] = sorted(have | set(draft["enabled_events"]))
    if existing.get("status") == "disabled":
        changes["disabled"] = False
    return changes


async def register_endpoint(client: stripe.StripeClient, url: str) -> NotificationEndpoint:
    """Creates the account's endpoint for ``url``, or brings the one there up to date."""
    draft = endpoint_draft(url)
    endpoints = client.v1.webhook_endpoints
    try:
        existing = await _endpoint_at(client, url)
        if existing is None:
            created = (await endpoints.create_async(draft)).to_dict()  # type: ignore[arg-type]
            return NotificationEndpoint(url, "created", secret=created.get("secret"), detail=created["id"])
        changes = endpoint_changes(existing, draft)
        if not changes:
            return NotificationEndpoint(url, "unchanged", detail=existing["id"])
        await endpoints.update_async(existing["id"], changes)  # type: ignore[arg-type]
        return NotificationEndpoint(url, "updated", detail=f"{existing['id']} ({', '.join(sorted(changes))})")
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        raise PspCredentialsRejected(
            f"Stripe refused this account's API key (HTTP {exc.http_status}): setup needs write access to webhook endpoints"
        ) from None
    except stripe.StripeError as exc:
        raise PspUnavailable(f"Stripe answered HTTP {exc.http_status} while setting up the webhook endpoint") from None


async def _endpoint_at(client: stripe.StripeClient, url: str) -> dict[str, Any] | None:
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"starting_after": after} if after else {})
        page = await client.v1.webhook_endpoints.list_async(params)  # type: ignore[arg-type]
        found = [endpoint.to_dict() for endpoint in page.data]
        for endpoint in found:
            if endpoint.get("url") == url:
                return endpoint
        if not page.has_more or not found:
            return None
        after = found[-1]["id"]
