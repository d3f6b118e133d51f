"""PSP notifications end to end: localstripe's signed webhooks (or the test's own), the receiver, Kafka, the worker.

The receiver verifies and queues; the worker looks each notice's object up fresh at localstripe and
writes what changed. localstripe sends only payment_intent.succeeded and .payment_failed, once: every
other event here is signed by the test itself, pointing at real localstripe objects (disputes and
failed refunds come from the harness extensions of tests/localstripe_peer.py), and each test says so.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.registry import AdapterRoute
from connector.commercetools.client import CommercetoolsClient
from connector.config import ReceiverConfig, Settings
from connector.models.payment import Payment
from tests.localstripe_peer import LocalStripe
from tests.notices import WEBHOOK_SECRET, deliver, event
from tests.queues import KafkaQueue
from tests.stack import messages
from tests.stack.payments import as_json
from tests.support import receiver_config_for, receiver_url, running_receiver, running_worker, settings_for

pytestmark = pytest.mark.e2e

SECRET_KEY = "sk_test_notices_0001"
OLD_SECRET = "whsec_test_connector_0000"  # the secret being rotated out
CARD_3DS = "4000002500003155"  # authentication required, then approved
CARD_3DS_DECLINED = "4000008260003178"  # authentication required, then declined
FAILING_IBAN = "DE62370400440532013001"  # a SEPA debit that is processing, then fails


@dataclass
class World:
    ct: CommercetoolsClient
    ct_url: str
    project_key: str
    queue: KafkaQueue
    localstripe: LocalStripe
    ledger: Path

    def route(self, secrets: list[str] | None = None) -> AdapterRoute:
        settings = {
            "secret_key": SECRET_KEY, "api_base": self.localstripe.url, "timeout_s": 5,
            "allowed_payment_method_types": ["card", "sepa_debit"], "webhook_secrets": secrets or [WEBHOOK_SECRET],
        }  # fmt: skip
        return AdapterRoute(interface="STRIPE", adapter="stripe", settings=settings)

    def worker_settings(self, **worker: Any) -> Settings:
        return settings_for(
            self.queue, ct_url=self.ct_url, project_key=self.project_key, ledger=self.ledger, routes=[self.route()], **worker
        )

    def receiver_config(self, secrets: list[str] | None = None) -> ReceiverConfig:
        return receiver_config_for(self.queue, [self.route(secrets)])

    async def payment(self, transactions: list[tuple[str, int]], token: str = "pm_card_visa") -> Payment:
        draft = {
            "amountPlanned": {"currencyCode": "EUR", "centAmount": max(a for _, a in transactions)},
            "paymentMethodInfo": {"paymentInterface": "STRIPE", "method": "card", "token": {"value": token}},
            "transactions": [
                {"type": kind, "amount": {"currencyCode": "EUR", "centAmount": a}, "state": "Initial"} for kind, a in transactions
            ],
        }
        payment = await self.ct.create_payment(draft)
        await self.queue.publish([messages.payment_created(self.project_key, as_json(payment), "platform")])
        return payment

    async def card(self, number: str) -> str:
        form = {"type": "card", "card[number]": number, "card[exp_month]": "12", "card[exp_year]": "2031", "card[cvc]": "123"}
        return str((await self.localstripe.call("POST", "/v1/payment_methods", **form))["id"])

    async def sepa_debit(self, iban: str) -> str:
        form = {"type": "sepa_debit", "sepa_debit[iban]": iban, "billing_details[name]": "Jane Doe",
                "billing_details[email]": "jane@example.com"}  # fmt: skip
        return str((await self.localstripe.call("POST", "/v1/payment_methods", **form))["id"])

    async def all_handled(self, timeout_s: float = 60.0) -> None:
        """Every record on the topic processed and committed (observable: the group's committed offsets)."""
        async with asyncio.timeout(timeout_s):
            while await self.queue.unfinished():
                await asyncio.sleep(0.2)

    async def until(self, payment_id: str, done: Callable[[Payment], bool], timeout_s: float = 60.0) -> Payment:
        async with asyncio.timeout(timeout_s):
            while True:
                payment = await self.ct.get_payment(payment_id)
                if done(payment):
                    return payment
                await asyncio.sleep(0.2)


@pytest.fixture
async def world(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, localstripe: LocalStripe
) -> World:
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    return World(ct, ct_url, project_key, queue, localstripe, tmp_path / "ledger.sqlite")


@dataclass
class Running:
    url: str  # the receiver's path for the STRIPE default route


@pytest.fixture
async def running(world: World) -> AsyncIterator[Running]:
    """A worker and a receiver; localstripe posts its own webhooks to the receiver."""
    config = world.receiver_config()
    url = receiver_url(config, "stripe")
    async with running_receiver(config), running_worker(world.worker_settings()):
        await world.localstripe.register_webhook(url, WEBHOOK_SECRET)
        yield Running(url)


def states(payment: Payment) -> list[str]:
    return [t.state.value for t in payment.transactions]


def notifications(payment: Payment) -> list[dict[str, Any]]:
    return [i.fields for i in payment.interface_interactions if i.fields.get("type") == "notification"]


def all_final(payment: Payment) -> bool:
    return all(t.state.value in ("Success", "Failure") for t in payment.transactions)


async def test_localstripe_webhooks_settle_pending_3ds_and_sepa(world: World, running: Running) -> None:
    """localstripe's own signed deliveries: 3-D Secure Pending -> Success and -> Failure, SEPA processing -> Failure."""
    # A Charge: localstripe sends payment_intent.succeeded only once money is captured (for a manual
    # capture Stripe sends amount_capturable_updated, which localstripe never does: see the next test).
    approved = await world.payment([("Charge", 2500)], await world.card(CARD_3DS))
    declined = await world.payment([("Charge", 2600)], await world.card(CARD_3DS_DECLINED))
    sepa = await world.payment([("Charge", 2700)], await world.sepa_debit(FAILING_IBAN))
    pending = {p.id: await world.until(p.id, lambda p: states(p) == ["Pending"]) for p in (approved, declined)}
    for payment in pending.values():
        intent = await world.localstripe.call("GET", f"/v1/payment_intents/{payment.transactions[0].interaction_id}")
        assert intent["status"] == "requires_action"
        # The customer authenticates; the second card is declined after that (localstripe answers 402).
        await world.localstripe.call(
            "POST", f"/v1/payment_intents/{intent['id']}/_authenticate", check=False,
            client_secret=intent["client_secret"], success="true",
        )  # fmt: skip
    settled = {p.id: await world.until(p.id, all_final) for p in (approved, declined, sepa)}
    assert states(settled[approved.id]) == ["Success"]
    assert states(settled[declined.id]) == ["Failure"]
    assert states(settled[sepa.id]) == ["Failure"]
    for payment in settled.values():
        [applied] = notifications(payment)  # localstripe sent one event each, and it was applied once
        assert applied["eventId"].startswith("evt_")
        assert applied["interactionId"] == payment.transactions[0].interaction_id
        assert applied["transactionId"] == payment.transactions[0].id
    assert notifications(settled[approved.id])[0]["operation"] == "payment_intent.succeeded"
    assert notifications(settled[sepa.id])[0]["operation"] == "payment_intent.payment_failed"
    assert settled[approved.id].payment_status.interface_code == "captured"
    created = [r for r in await world.localstripe.requests() if r["method"] == "POST" and r["path"] == "/v1/payment_intents"]
    assert len(created) == 3  # one execution each: the notices only read

    # Events for transactions already final change nothing: the same payment version, with a duplicate
    # of an applied event and with a new one (signed by the test: localstripe sends each event once).
    payment = settled[approved.id]
    intent = await world.localstripe.call("GET", f"/v1/payment_intents/{payment.transactions[0].interaction_id}")
    applied_id = notifications(payment)[0]["eventId"]
    for again in (event("payment_intent.succeeded", intent, event_id=applied_id), event("payment_intent.succeeded", intent)):
        assert (await deliver(running.url, again)).status_code == 200
    await world.all_handled()
    assert (await world.ct.get_payment(payment.id)).version == payment.version
