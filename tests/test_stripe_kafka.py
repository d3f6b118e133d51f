"""End to end with Stripe: Kafka deliveries, the worker, the commercetools emulator and localstripe.

The source does not matter here (test_worker_e2e.py runs both): Kafka stands for either."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from connector.adapters.registry import AdapterRoute
from connector.commercetools.client import CommercetoolsClient
from connector.config import Settings
from connector.models.payment import Payment
from connector.processor.decisions import idempotency_key
from tests.localstripe_peer import LocalStripe
from tests.queues import KafkaQueue
from tests.stack import messages
from tests.stack.payments import as_json, wait_until_settled
from tests.support import INTERACTION_TYPE_KEY, running_worker, settings_for

pytestmark = pytest.mark.e2e

KEYS = {None: "sk_test_default_0001", "eu": "sk_test_eu_0002", "us": "sk_test_us_0003"}
VISA, DECLINING = "pm_card_visa", "pm_card_chargeCustomerFail"
EXAMPLE_PACKAGE = Path(__file__).parent / "example_adapter"


def draft(
    transactions: list[tuple[str, int]], *, interface: str = "STRIPE", account: str | None = None, token: str = VISA
) -> dict[str, Any]:
    method: dict[str, Any] = {"paymentInterface": interface, "method": "card", "token": {"value": token}}
    if account:
        method["interfaceAccount"] = account
    return {
        "amountPlanned": {"currencyCode": "EUR", "centAmount": max(amount for _, amount in transactions)},
        "paymentMethodInfo": method,
        "transactions": [
            {"type": kind, "amount": {"currencyCode": "EUR", "centAmount": a}, "state": "Initial"} for kind, a in transactions
        ],
    }


SCENARIOS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "authorize, capture in full": (draft([("Authorization", 3000), ("Charge", 3000)]), ["Success", "Success"]),
    "authorize, capture part": (draft([("Authorization", 3000), ("Charge", 1000)]), ["Success", "Success"]),
    "direct charge": (draft([("Charge", 2000)]), ["Success"]),
    "two refunds, a third above the rest": (
        draft([("Charge", 5000), ("Refund", 2000), ("Refund", 1500), ("Refund", 2000)]),
        ["Success", "Success", "Success", "Failure"],
    ),
    "cancel an authorization": (draft([("Authorization", 4000), ("CancelAuthorization", 4000)]), ["Success", "Success"]),
    "cancel after capture": (
        draft([("Authorization", 4000), ("Charge", 4000), ("CancelAuthorization", 4000)]),
        ["Success", "Success", "Failure"],
    ),
    "declined card": (draft([("Authorization", 1000)], token=DECLINING), ["Failure"]),
    "eu account": (draft([("Charge", 1100)], account="eu"), ["Success"]),
    "us account": (draft([("Charge", 1200)], account="US"), ["Success"]),
    "account without credentials": (draft([("Charge", 1300)], account="mars"), ["Failure"]),
}


@dataclass
class World:
    """The peers of one test: its commercetools project, its topic, localstripe."""

    ct: CommercetoolsClient
    ct_url: str
    project_key: str
    queue: KafkaQueue
    localstripe: LocalStripe
    ledger: Path

    def settings(self, *routes: AdapterRoute, **worker: Any) -> Settings:
        """A worker serving STRIPE (three accounts), the sandbox, and ``routes``."""
        stripe = [
            AdapterRoute(
                interface="STRIPE",
                account=account,
                adapter="stripe",
                settings={"secret_key": key, "api_base": self.localstripe.url, "timeout_s": 5},
            )
            for account, key in KEYS.items()
        ]
        return settings_for(
            self.queue, ct_url=self.ct_url, project_key=self.project_key, ledger=self.ledger, routes=[*routes, *stripe], **worker
        )

    async def publish_twice(self, payments: list[Payment]) -> None:
        """Each payment's PaymentCreated in both formats: every transaction is delivered twice."""
        formats: tuple[messages.Format, ...] = ("platform", "cloudevents")
        await self.queue.publish(
            [messages.payment_created(self.project_key, as_json(p), f) for p in payments for f in formats],
        )


@pytest.fixture
async def world(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, localstripe: LocalStripe
) -> World:
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    return World(ct, ct_url, project_key, queue, localstripe, tmp_path / "ledger.sqlite")


def stripe_requests_for(requests: list[dict[str, Any]], payment: Payment) -> list[dict[str, Any]]:
    """The requests localstripe saw for a payment: by metadata, or by the PaymentIntent in the path."""
    intents = {t.interaction_id for t in payment.transactions if (t.interaction_id or "").startswith("pi_")}
    return [
        r for r in requests if r["form"].get("metadata[ctPaymentId]") == payment.id or any(i and i in r["path"] for i in intents)
    ]


async def test_stripe_operations_end_to_end(world: World) -> None:
    """Every operation, decline, refusal and account through Kafka into localstripe, each delivery twice."""
    payments = {name: await world.ct.create_payment(d) for name, (d, _) in SCENARIOS.items()}
    await world.publish_twice(list(payments.values()))
    settings = world.settings()
    async with running_worker(settings):
        settled = dict(
            zip(payments, await wait_until_settled(world.ct, [p.id for p in payments.values()], timeout_s=90), strict=True)
        )

    requests = await world.localstripe.requests()
    for name, payment in settled.items():
        expected = SCENARIOS[name][1]
        assert [t.state.value for t in payment.transactions] == expected, name
        for transaction in payment.transactions:
            kinds = [i.fields["type"] for i in payment.interface_interactions if i.fields.get("transactionId") == transaction.id]
            assert sorted(kinds) == ["request", "response"], name
            if transaction.state.value == "Success":
                assert (transaction.interaction_id or "")[:3] in ("pi_", "re_"), name
        sent = stripe_requests_for(requests, payment)
        assert all(r["headers"]["Idempotency-Key"].startswith(tuple(t.id for t in payment.transactions)) for r in sent), name

    # Interactions name the payment method by its last characters only, and never a key.
    logged = json.dumps([i.fields for p in settled.values() for i in p.interface_interactions])
    assert not [secret for secret in (*KEYS.values(), VISA, DECLINING) if secret in logged]
    assert "***visa" in logged

    # Each PaymentIntent and refund exactly once, though every delivery came twice.
    intents = await world.localstripe.objects("payment_intents")
    refunds = [r for r in await world.localstripe.objects("refunds") if r["metadata"]]
    recorded = {t.interaction_id for p in settled.values() for t in p.transactions if (t.interaction_id or "").startswith("pi_")}
    assert recorded <= {i["id"] for i in intents}
    assert len(intents) == 9 and len(refunds) == 2  # one intent per authorization or direct charge, the declined one too

    refunds_payment = settled["two refunds, a third above the rest"]
    assert refunds_payment.payment_status.interface_code == "partial_refund"
    assert {r["amount"] for r in refunds} == {2000, 1500}
    above = refunds_payment.transactions[3]
    assert not [r for r in requests if r["form"].get("metadata[ctTransactionId]") == above.id]  # refused before Stripe

    cancel_after_capture = settled["cancel after capture"]
    assert not [r for r in stripe_requests_for(requests, cancel_after_capture) if r["path"].endswith("/cancel")]
    assert "captured" in (cancel_after_capture.payment_status.interface_text or "")

    declined = settled["declined card"]
    assert declined.payment_status.interface_text == "card_declined: Your card was declined."

    for name, account in (("eu account", "eu"), ("us account", "us"), ("direct charge", None)):
        [sent] = stripe_requests_for(requests, settled[name])
        assert sent["headers"]["Authorization"] == f"Bearer {KEYS[account]}", name
    assert "mars" in (settled["account without credentials"].payment_status.interface_text or "")
    assert not stripe_requests_for(requests, settled["account without credentials"])


async def test_claimed_transaction_is_not_executed_again(world: World) -> None:
    """Redelivered while another worker's claim is fresh: no PaymentIntent; after the lease, exactly one."""
    payment = await world.ct.create_payment(draft([("Authorization", 2500)]))
    transaction = payment.transactions[0]
    claim = {
        "action": "addInterfaceInteraction", "type": {"typeId": "type", "key": INTERACTION_TYPE_KEY},
        "fields": {"type": "request", "transactionId": transaction.id, "createdAt": datetime.now(UTC).isoformat(),
                   "idempotencyKey": idempotency_key(transaction.id, transaction.type)},
    }  # fmt: skip
    await world.ct.update_payment(payment.id, payment.version, [claim])
    claimed = await world.ct.get_payment(payment.id)
    await world.publish_twice([claimed])
    settings = world.settings(delivery_timeout_s=10.0, max_clock_skew_s=0.0)  # a lease of 10 + 5 s (Stripe's timeout_s)
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings):
            async with asyncio.timeout(30):  # the worker has met the claim, and backs off for the rest of its lease
                while not any(line["event"] == "delivery.retrying" and "ClaimHeld" in line["error"] for line in logs):
                    await asyncio.sleep(0.05)
            assert await world.localstripe.objects("payment_intents") == []
            [settled] = await wait_until_settled(world.ct, [payment.id], timeout_s=60)
    assert settled.transactions[0].state.value == "Success"
    [intent] = await world.localstripe.objects("payment_intents")
    assert intent["id"] == settled.transactions[0].interaction_id


@pytest.fixture(scope="module")
def example_adapter_installed() -> Iterator[None]:
    """Installs the example third-party package into this environment, and removes it afterwards."""
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(EXAMPLE_PACKAGE)], check=True, timeout=180)
    yield
    subprocess.run([*pip, "uninstall", "--yes", "connector-acme-adapter"], check=True, timeout=180)


async def test_third_party_adapter_is_routed_to(example_adapter_installed: None, world: World) -> None:
    """An installed plugin serves its interface while STRIPE and the sandbox keep working."""
    acme = AdapterRoute(interface="ACME", adapter="acme", settings={"merchant": "shop1"})
    payments = [
        await world.ct.create_payment(draft([("Charge", 1000)], interface="ACME")),
        await world.ct.create_payment(draft([("Charge", 1000)], interface="STRIPE")),
        await world.ct.create_payment(draft([("Charge", 1000)], interface="sandbox")),
    ]
    await world.publish_twice(payments)
    settings = world.settings(acme)
    async with running_worker(settings):
        settled = await wait_until_settled(world.ct, [p.id for p in payments], timeout_s=60)
    references = [p.transactions[0].interaction_id or "" for p in settled]
    assert [r.split("_")[0] for r in references] == ["acme", "pi", "sbx"]
    assert all(p.transactions[0].state.value == "Success" for p in settled)
