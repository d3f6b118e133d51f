"""PSP notifications end to end: localstripe's signed webhooks (or the test's own), the receiver, Kafka, the worker.

The receiver verifies and queues; the worker looks each notice's object up fresh at localstripe and
writes what changed. localstripe sends only payment_intent.succeeded and .payment_failed, once: every
other event here is signed by the test itself, pointing at real localstripe objects (disputes and
failed refunds come from the harness extensions of tests/localstripe_peer.py), and each test says so.
"""

import asyncio
import contextlib
import time
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
from tests.notices import WEBHOOK_SECRET, body_of, deliver, event, post, signed
from tests.queues import EventQueue, KafkaQueue
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
    queue: EventQueue
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

    async def authenticate(self, intent: dict[str, Any]) -> None:
        """The customer completes 3-D Secure for ``intent`` (localstripe's own endpoint)."""
        await self.localstripe.call(
            "POST", f"/v1/payment_intents/{intent['id']}/_authenticate", client_secret=intent["client_secret"], success="true"
        )

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


@pytest.fixture
async def world_on_each_queue(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, localstripe: LocalStripe
) -> World:
    return World(ct, ct_url, project_key, queue, localstripe, tmp_path / "ledger.sqlite")


@dataclass
class Running:
    url: str  # the receiver's path for the STRIPE default route


@contextlib.asynccontextmanager
async def serving(world: World) -> AsyncIterator[Running]:
    """A worker and a receiver; localstripe posts its own webhooks to the receiver."""
    config = world.receiver_config([WEBHOOK_SECRET, OLD_SECRET])  # during a rotation: the new secret, then the old
    url = receiver_url(config, "stripe")
    async with running_receiver(config), running_worker(world.worker_settings()):
        await world.localstripe.register_webhook(url, WEBHOOK_SECRET)
        yield Running(url)


@pytest.fixture
async def running(world: World) -> AsyncIterator[Running]:
    async with serving(world) as running:
        yield running


def states(payment: Payment) -> list[str]:
    return [t.state.value for t in payment.transactions]


def notifications(payment: Payment) -> list[dict[str, Any]]:
    return [i.fields for i in payment.interface_interactions if i.fields.get("type") == "notification"]


def all_final(payment: Payment) -> bool:
    return all(t.state.value in ("Success", "Failure") for t in payment.transactions)


async def test_localstripe_webhooks_settle_pending_3ds_and_sepa(world_on_each_queue: World) -> None:
    """localstripe's own signed deliveries: 3-D Secure Pending -> Success and -> Failure, SEPA processing -> Failure,
    through the receiver, each queue and the worker."""
    async with serving(world_on_each_queue) as running:
        await _settles_pending(world_on_each_queue, running)


async def _settles_pending(world: World, running: Running) -> None:
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


async def intent_of(world: World, payment: Payment, index: int = 0) -> dict[str, Any]:
    return await world.localstripe.call("GET", f"/v1/payment_intents/{payment.transactions[index].interaction_id}")


async def test_amount_capturable_updated_authorizes(world: World, running: Running) -> None:
    """Signed by the test (localstripe sends nothing for a manual capture): a 3-D Secure Authorization
    is Pending until payment_intent.amount_capturable_updated, then Success."""
    payment = await world.payment([("Authorization", 3100)], await world.card(CARD_3DS))
    pending = await world.until(payment.id, lambda p: states(p) == ["Pending"])
    intent = await intent_of(world, pending)
    await world.authenticate(intent)
    snapshot = await intent_of(world, pending)
    assert snapshot["status"] == "requires_capture"
    assert (await deliver(running.url, event("payment_intent.amount_capturable_updated", snapshot))).status_code == 200
    settled = await world.until(payment.id, all_final)
    assert states(settled) == ["Success"]
    assert settled.payment_status.interface_code == "reserved"
    [applied] = notifications(settled)
    assert applied["operation"] == "payment_intent.amount_capturable_updated"


async def test_expired_authorization_is_recorded_once(world: World, running: Running) -> None:
    """Signed by the test (localstripe never expires an authorization): an intent Stripe cancelled by
    itself adds a CancelAuthorization of Stripe's, Success, once; after our own cancel it adds nothing."""
    expiring = await world.payment([("Authorization", 4200)])
    cancelled_by_us = await world.payment([("Authorization", 4300), ("CancelAuthorization", 4300)])
    authorized = await world.until(expiring.id, all_final)
    ours = await world.until(cancelled_by_us.id, all_final)
    assert states(authorized) == ["Success"] and states(ours) == ["Success", "Success"]
    # Stripe's expiry, 7 days on: the intent is cancelled at Stripe, not by the connector.
    expired = await world.localstripe.call("POST", f"/v1/payment_intents/{authorized.transactions[0].interaction_id}/cancel")
    first = event("payment_intent.canceled", expired)
    for delivery in (first, first, event("payment_intent.canceled", expired)):
        assert (await deliver(running.url, delivery)).status_code == 200
    assert (await deliver(running.url, event("payment_intent.canceled", await intent_of(world, ours)))).status_code == 200
    recorded = await world.until(expiring.id, lambda p: len(p.transactions) == 2)
    await world.all_handled()
    recorded = await world.ct.get_payment(expiring.id)
    cancel = recorded.transactions[1]
    assert (cancel.type.value, cancel.state.value) == ("CancelAuthorization", "Success")
    assert cancel.amount.cent_amount == 4200 and cancel.interaction_id == expired["id"]
    assert recorded.payment_status.interface_code == "cancelled"
    assert "expired" in (recorded.payment_status.interface_text or "")
    assert [n["eventId"] for n in notifications(recorded)] == [first["id"]]
    unchanged = await world.ct.get_payment(cancelled_by_us.id)
    assert unchanged.version == ours.version and len(unchanged.transactions) == 2


async def test_refund_failing_after_success(world: World, running: Running) -> None:
    """Signed by the test, on a refund the harness fails (localstripe's refunds always succeed): a
    refund that fails after Success moves to Failure, the one move back; a stale event after it, whose
    snapshot still says succeeded, changes nothing (the object is looked up fresh)."""
    payment = await world.payment([("Charge", 5000), ("Refund", 2000)])
    settled = await world.until(payment.id, all_final)
    assert states(settled) == ["Success", "Success"] and settled.payment_status.interface_code == "partial_refund"
    refund_id = settled.transactions[1].interaction_id
    assert refund_id is not None and refund_id.startswith("re_")
    [succeeded] = [r for r in await world.localstripe.objects("refunds") if r["id"] == refund_id]
    stale = event("refund.updated", succeeded, created=int(time.time()) - 60)
    await world.localstripe.harness(f"refunds/{refund_id}/fail", failure_reason="expired_or_canceled_card")
    failed = dict(succeeded, status="failed", failure_reason="expired_or_canceled_card")
    assert (await deliver(running.url, event("refund.failed", failed))).status_code == 200
    reversed_ = await world.until(payment.id, lambda p: states(p) == ["Success", "Failure"])
    assert reversed_.payment_status.interface_code == "captured"
    assert "expired_or_canceled_card" in (reversed_.payment_status.interface_text or "")
    assert (await deliver(running.url, stale)).status_code == 200
    await world.all_handled()
    after = await world.ct.get_payment(payment.id)
    assert after.version == reversed_.version and states(after) == ["Success", "Failure"]


async def test_dispute_steps(world: World, running: Running) -> None:
    """Signed by the test, on disputes of the harness (localstripe has none): created -> Chargeback
    Pending once; funds withdrawn -> Success; won and reinstated -> Failure and one interaction; an
    inquiry closed -> Failure; won before any withdrawal -> Failure; lost -> Success, with a stale
    created after it."""
    payments = [await world.payment([("Charge", amount)]) for amount in (5000, 5100, 5200, 5300)]
    charged = [await world.until(p.id, all_final) for p in payments]
    intents = [p.transactions[0].interaction_id for p in charged]

    async def dispute(index: int, **asked: Any) -> dict[str, Any]:
        return await world.localstripe.harness("disputes", payment_intent=intents[index], **asked)

    async def change(dispute_id: str, **asked: Any) -> dict[str, Any]:
        return await world.localstripe.harness(f"disputes/{dispute_id}", **asked)

    async def chargebacks(index: int, done: Callable[[list[tuple[str, int, str | None]]], bool]) -> Payment:
        def seen(p: Payment) -> list[tuple[str, int, str | None]]:
            return [
                (t.state.value, t.amount.cent_amount, t.interaction_id) for t in p.transactions if t.type.value == "Chargeback"
            ]

        return await world.until(payments[index].id, lambda p: done(seen(p)))

    # 1. Opened, withdrawn, won and reinstated.
    opened = await dispute(0, amount=4000)
    created = event("charge.dispute.created", opened)
    for delivery in (created, created, event("charge.dispute.updated", opened)):
        assert (await deliver(running.url, delivery)).status_code == 200
    await chargebacks(0, lambda c: c == [("Pending", 4000, opened["id"])])
    withdrawn = await change(opened["id"], balance_transaction=-4000)
    assert (await deliver(running.url, event("charge.dispute.funds_withdrawn", withdrawn))).status_code == 200
    await chargebacks(0, lambda c: c == [("Success", 4000, opened["id"])])
    await change(opened["id"], status="won")
    won = await change(opened["id"], balance_transaction=4000)
    for delivery in (event("charge.dispute.funds_reinstated", won), event("charge.dispute.closed", won)):
        assert (await deliver(running.url, delivery)).status_code == 200
    await world.all_handled()
    first = await chargebacks(0, lambda c: c == [("Failure", 4000, opened["id"])])  # won: nothing charged back in the end
    records = [n for n in notifications(first) if n.get("idempotencyKey") == f"{opened['id']}:funds_reinstated"]
    assert len(records) == 1
    assert [t.state.value for t in first.transactions] == ["Success", "Failure"]

    # 2. An inquiry (a warning) closed without a chargeback.
    inquiry = await dispute(1, status="warning_needs_response")
    assert (await deliver(running.url, event("charge.dispute.created", inquiry))).status_code == 200
    await chargebacks(1, lambda c: c == [("Pending", 5100, inquiry["id"])])
    closed = await change(inquiry["id"], status="warning_closed")
    assert (await deliver(running.url, event("charge.dispute.closed", closed))).status_code == 200
    await chargebacks(1, lambda c: c == [("Failure", 5100, inquiry["id"])])

    # 3. Won before any withdrawal.
    contested = await dispute(2, status="under_review")
    assert (await deliver(running.url, event("charge.dispute.created", contested))).status_code == 200
    await chargebacks(2, lambda c: c == [("Pending", 5200, contested["id"])])
    won_early = await change(contested["id"], status="won")
    assert (await deliver(running.url, event("charge.dispute.closed", won_early))).status_code == 200
    await chargebacks(2, lambda c: c == [("Failure", 5200, contested["id"])])

    # 4. Lost, and the created event arriving late, after the closing one.
    lost_early = await dispute(3)
    stale_created = event("charge.dispute.created", lost_early, created=int(time.time()) - 30)
    lost = await change(lost_early["id"], status="lost")
    assert (await deliver(running.url, event("charge.dispute.closed", lost))).status_code == 200
    fourth = await chargebacks(3, lambda c: c == [("Success", 5300, lost["id"])])
    assert (await deliver(running.url, stale_created)).status_code == 200
    await world.all_handled()
    assert (await world.ct.get_payment(payments[3].id)).version == fourth.version


async def test_signatures_rotation_tolerance(world: World, running: Running) -> None:
    """Signed by the test: a third secret, or a signature older than the tolerance, is refused with 400
    and nothing is written; during a rotation the old secret and the new one are both accepted, alone
    or together."""
    payment = await world.payment([("Authorization", 1000)], await world.card(CARD_3DS))
    pending = await world.until(payment.id, lambda p: states(p) == ["Pending"])
    intent = await intent_of(world, pending)
    await world.authenticate(intent)
    authorized = await intent_of(world, pending)
    for secrets, at in ((["whsec_test_someone_else"], None), ([WEBHOOK_SECRET], int(time.time()) - 301)):
        body = body_of(event("payment_intent.amount_capturable_updated", authorized))
        response = await post(running.url, body, signed(body, secrets, at))
        assert response.status_code == 400, response.text
    await world.all_handled()
    assert (await world.ct.get_payment(payment.id)).version == pending.version
    old = event("payment_intent.amount_capturable_updated", authorized)
    assert (await deliver(running.url, old, [OLD_SECRET])).status_code == 200
    settled = await world.until(payment.id, all_final)
    assert states(settled) == ["Success"] and [n["eventId"] for n in notifications(settled)] == [old["id"]]
    for secrets in ([WEBHOOK_SECRET], [WEBHOOK_SECRET, OLD_SECRET]):
        assert (await deliver(running.url, event("payment_intent.succeeded", authorized), secrets)).status_code == 200


async def test_duplicates_and_two_receivers_change_a_payment_once(world: World, running: Running) -> None:
    """The same signed delivery twice to one receiver and once to a second receiver of the same endpoint
    (all at once): the payment changes once. Signed by the test: localstripe sends each event once."""
    payment = await world.payment([("Authorization", 3300)], await world.card(CARD_3DS))
    pending = await world.until(payment.id, lambda p: states(p) == ["Pending"])
    intent = await intent_of(world, pending)
    await world.authenticate(intent)
    document = event("payment_intent.amount_capturable_updated", await intent_of(world, pending))
    body = body_of(document)
    headers = signed(body)
    second = world.receiver_config()
    async with running_receiver(second):
        answers = await asyncio.gather(
            post(running.url, body, headers),
            post(running.url, body, headers),
            post(receiver_url(second, "stripe"), body, headers),
        )
    assert [a.status_code for a in answers] == [200, 200, 200]
    await world.all_handled()
    settled = await world.ct.get_payment(payment.id)
    assert states(settled) == ["Success"]
    assert [n["eventId"] for n in notifications(settled)] == [document["id"]]
    # One update of four actions (state, interaction, status code and text); the emulator counts a
    # version per action. A second write of any kind would show as more.
    assert settled.version == pending.version + 4
