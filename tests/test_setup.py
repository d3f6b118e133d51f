"""``connector setup``: the Type and the Subscription, created once, unchanged the second time."""

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from connector.adapters.stripe_notifications import HANDLED_EVENTS
from connector.commercetools.client import CommercetoolsClient
from connector.commercetools.interaction_type import interaction_type_draft, type_changes
from connector.commercetools.subscription import ConfluentCloud, GooglePubSub, masked, subscription_changes, subscription_draft
from connector.errors import ConfigurationError
from tests.fault_proxies import free_port
from tests.localstripe_peer import LocalStripe

API_SECRET = "confluent-secret-Zq81"
KAFKA = ConfluentCloud("pkc-1.europe-west1.gcp.confluent.cloud:9092", "payments", "CKEY123", API_SECRET)


def test_an_identical_subscription_needs_no_change_even_with_masked_credentials() -> None:
    draft = subscription_draft("s", KAFKA, "Platform")
    as_returned = draft | {"destination": draft["destination"] | {"apiKey": "CKE****", "apiSecret": "****"}}
    assert subscription_changes(as_returned, draft) == []


def test_a_changed_destination_or_message_list_is_updated_in_place() -> None:
    draft = subscription_draft("s", KAFKA, "Platform")
    elsewhere = subscription_draft("s", ConfluentCloud(KAFKA.bootstrap_server, "other-topic", "k", "s"), "Platform")
    fewer = draft | {"messages": [{"resourceTypeId": "payment", "types": ["PaymentCreated"]}]}
    assert [a["action"] for a in subscription_changes(elsewhere, draft)] == ["changeDestination"]
    assert subscription_changes(fewer, draft) == [{"action": "setMessages", "messages": draft["messages"]}]


def test_a_subscription_in_another_format_is_refused_with_what_to_do() -> None:
    existing = subscription_draft("s", GooglePubSub("p", "t"), "Platform")
    with pytest.raises(ConfigurationError, match="cannot change a format: delete it"):
        subscription_changes(existing, subscription_draft("s", GooglePubSub("p", "t"), "CloudEvents"))


def test_the_printed_draft_hides_the_credentials() -> None:
    printed = json.dumps(masked(subscription_draft("s", KAFKA, "Platform")))
    assert API_SECRET not in printed and KAFKA.api_key not in printed
    assert KAFKA.bootstrap_server in printed


def test_a_type_missing_fields_gets_them_and_a_field_of_another_type_is_refused() -> None:
    draft = interaction_type_draft("t")
    older = draft | {"fieldDefinitions": draft["fieldDefinitions"][:-1]}
    assert type_changes(older, draft) == [{"action": "addFieldDefinition", "fieldDefinition": draft["fieldDefinitions"][-1]}]
    clash = draft | {"fieldDefinitions": [{**draft["fieldDefinitions"][0], "type": {"name": "Number"}}]}
    with pytest.raises(ConfigurationError, match="use another CONNECTOR_INTERACTION_TYPE_KEY"):
        type_changes(clash, draft)


def setup_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("CTP_", "KAFKA_", "PUBSUB_", "CONNECTOR_", "SUBSCRIPTION_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "connector", "setup", *args], env=clean | env, capture_output=True, text=True, timeout=60
    )


def credentials(url: str, project_key: str) -> dict[str, str]:
    return {
        "CTP_PROJECT_KEY": project_key, "CTP_CLIENT_ID": "setup-client", "CTP_CLIENT_SECRET": "setup-secret",
        "CTP_AUTH_URL": url, "CTP_API_URL": url,
    }  # fmt: skip


KAFKA_ENV = {
    "SUBSCRIPTION_BOOTSTRAP_SERVER": KAFKA.bootstrap_server, "SUBSCRIPTION_TOPIC": KAFKA.topic,
    "SUBSCRIPTION_API_KEY": KAFKA.api_key, "SUBSCRIPTION_API_SECRET": API_SECRET,
}  # fmt: skip


async def test_setup_creates_the_type_and_a_confluent_subscription_then_changes_nothing(
    ct_url: str, project_key: str, ct: CommercetoolsClient
) -> None:
    env = credentials(ct_url, project_key) | KAFKA_ENV | {"CONNECTOR_INTERACTION_TYPE_KEY": "setup-interaction"}
    first = setup_command(env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "type setup-interaction: created",
        "type connector-payment-request: created",
        "subscription commercetools-payment-connector: created",
    ]
    subscription = await ct.find_by_key("subscriptions", "commercetools-payment-connector")
    interaction_type = await ct.find_by_key("types", "setup-interaction")
    assert subscription is not None and interaction_type is not None
    assert subscription["destination"] | {"apiKey": "", "apiSecret": ""} == {
        "type": "ConfluentCloud", "bootstrapServer": KAFKA.bootstrap_server, "topic": "payments", "acks": "all",
        "apiKey": "", "apiSecret": "",
    }  # fmt: skip
    assert subscription["messages"] == [{"resourceTypeId": "payment", "types": ["PaymentCreated", "PaymentTransactionAdded"]}]
    assert subscription["format"] == {"type": "Platform"}
    assert interaction_type["resourceTypeIds"] == ["payment-interface-interaction"]
    request_type = await ct.find_by_key("types", "connector-payment-request")  # for the Payments API's transactions
    assert request_type is not None and request_type["resourceTypeIds"] == ["transaction"]

    second = setup_command(env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "type setup-interaction: unchanged",
        "type connector-payment-request: unchanged",
        "subscription commercetools-payment-connector: unchanged",
    ]
    assert _versions(
        await ct.find_by_key("subscriptions", subscription["key"]), await ct.find_by_key("types", "setup-interaction")
    ) == (_versions(subscription, interaction_type))
    assert API_SECRET not in first.stdout + first.stderr + second.stdout + second.stderr


async def test_setup_for_pubsub_in_cloudevents_format(ct_url: str, project_key: str, ct: CommercetoolsClient) -> None:
    env = credentials(ct_url, project_key) | {
        "CONNECTOR_SOURCE": "pubsub", "PUBSUB_PROJECT_ID": "shop-prod", "SUBSCRIPTION_TOPIC": "ct-payments",
        "SUBSCRIPTION_FORMAT": "CloudEvents", "SUBSCRIPTION_KEY": "payments-to-pubsub",
    }  # fmt: skip
    result = setup_command(env)
    assert result.returncode == 0, result.stderr
    subscription = await ct.find_by_key("subscriptions", "payments-to-pubsub")
    assert subscription is not None
    assert subscription["destination"] == {"type": "GoogleCloudPubSub", "projectId": "shop-prod", "topic": "ct-payments"}
    assert subscription["format"] == {"type": "CloudEvents", "cloudEventsVersion": "1.0"}
    assert setup_command(env).stdout.count("unchanged") == 3


async def test_dry_run_prints_the_drafts_and_sends_nothing(ct_url: str, project_key: str, ct: CommercetoolsClient) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request would fail the command
    result = setup_command(credentials(nowhere, project_key) | KAFKA_ENV, "--dry-run")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert [p["endpoint"] for p in printed] == ["types", "types", "subscriptions"]
    assert printed[2]["draft"]["destination"]["apiSecret"] == "***"
    assert API_SECRET not in result.stdout
    # And against the emulator: still nothing there afterwards.
    assert setup_command(credentials(ct_url, project_key) | KAFKA_ENV, "--dry-run").returncode == 0
    assert await ct.find_by_key("subscriptions", "commercetools-payment-connector") is None


def test_a_kafka_destination_without_its_secret_names_what_is_missing(project_key: str) -> None:
    env = credentials("http://127.0.0.1:1", project_key) | KAFKA_ENV
    del env["SUBSCRIPTION_API_SECRET"]
    result = setup_command(env)
    assert result.returncode == 2
    assert "SUBSCRIPTION: a kafka destination needs SUBSCRIPTION_API_SECRET" in result.stderr


def _versions(*resources: dict[str, Any] | None) -> tuple[int, ...]:
    return tuple(r["version"] for r in resources if r is not None)


async def test_setup_registers_each_stripe_accounts_webhook_endpoint_once(
    ct_url: str, project_key: str, localstripe: LocalStripe
) -> None:
    """With NOTIFY_PUBLIC_URL, each Stripe route's endpoint is created with the events acted on and its
    secret shown once; the second run changes nothing, and one disabled meanwhile is enabled again.
    localstripe keeps endpoints through a harness extension (stripe-mock checks the request shapes)."""
    routes = [
        {"interface": "STRIPE", "adapter": "stripe", "settings": {"secret_key": "sk_test_setup_1", "api_base": localstripe.url}},
        {"interface": "STRIPE", "account": "EU", "adapter": "stripe",
         "settings": {"secret_key": "sk_test_setup_2", "api_base": localstripe.url}},
    ]  # fmt: skip
    env = credentials(ct_url, project_key) | KAFKA_ENV | {
        "NOTIFY_PUBLIC_URL": "https://hooks.example.com/", "CONNECTOR_ADAPTERS": json.dumps(routes),
    }  # fmt: skip
    dry = setup_command(env, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    drafts = [p["draft"] for p in json.loads(dry.stdout) if p["endpoint"] == "stripe webhook endpoint"]
    assert [d["url"] for d in drafts] == [
        "https://hooks.example.com/notifications/stripe",
        "https://hooks.example.com/notifications/stripe/eu",
    ]
    assert await localstripe.call("GET", "/v1/webhook_endpoints") == {
        "object": "list",
        "url": "/v1/webhook_endpoints",
        "has_more": False,
        "data": [],
    }

    first = setup_command(env)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split(": ")[1].split()[0] for line in lines if line.startswith("stripe webhook endpoint")] == [
        "created",
        "created",
    ]
    secrets = [line.split("shown only now: ")[1].split()[0] for line in lines if "shown only now" in line]
    assert len(secrets) == 2 and all(s.startswith("whsec_") for s in secrets)
    endpoints = (await localstripe.call("GET", "/v1/webhook_endpoints"))["data"]
    assert sorted(e["url"] for e in endpoints) == [d["url"] for d in drafts]
    assert all(sorted(e["enabled_events"]) == sorted(HANDLED_EVENTS) for e in endpoints)

    await localstripe.call("POST", f"/v1/webhook_endpoints/{endpoints[0]['id']}", disabled="true")
    second = setup_command(env)
    assert second.returncode == 0, second.stderr
    changes = [
        line.split(": ")[1].split()[0] for line in second.stdout.splitlines() if line.startswith("stripe webhook endpoint")
    ]
    assert sorted(changes) == ["unchanged", "updated"]
    assert "shown only now" not in second.stdout
    assert setup_command(env).stdout.count("unchanged") == 5  # both types, subscription and both endpoints
