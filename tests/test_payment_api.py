"""The Payments API end to end: HTTP requests to ``connector receive``, a real Kafka broker, the
commercetools emulator, and the worker executing at the sandbox and at Stripe (localstripe).

The emulator emits no messages: ``SubscriptionRelay`` publishes a PaymentTransactionAdded for each
transaction the API adds, as the commercetools Subscription would. Its token introspection is the
project's test extension of the emulator (tests/stack/ctmock/server.mjs). Every answer is checked
against the OpenAPI document (tests/payment_api_client.py).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.adapters.registry import AdapterRoute
from connector.adapters.sandbox_notifications import signed_notice
from connector.commercetools.client import CommercetoolsClient
from connector.models.payment import Payment, TransactionState, TransactionType
from tests.localstripe_peer import LocalStripe
from tests.payment_api_client import CALLER_ID, Caller, cancel, capture, refund, reverse
from tests.queues import KafkaQueue
from tests.stack import free_port, messages
from tests.stack.payments import as_json, payment_draft
from tests.support import SubscriptionRelay, receiver_config_for, running_receiver, running_worker, sandbox_route, settings_for

pytestmark = pytest.mark.e2e

STRIPE_KEY = "sk_test_payment_api_01"


@dataclass
class World:
    ct: CommercetoolsClient
    project_key: str
    queue: KafkaQueue
    caller: Caller
    relay: SubscriptionRelay

    async def authorized(self, interface: str, cents: int = 1000) -> Payment:
        """A payment whose Authorization the worker executed at the PSP."""
        if interface == "sandbox":
            draft = payment_draft(cents, (), (("Authorization", cents),))
        else:
            draft = {
                "amountPlanned": {"currencyCode": "EUR", "centAmount": cents},
                "paymentMethodInfo": {"paymentInterface": "STRIPE", "method": "card", "token": {"value": "pm_card_visa"}},
                "transactions": [
                    {"type": "Authorization", "amount": {"currencyCode": "EUR", "centAmount": cents}, "state": "Initial"}
                ],
            }
        created = await self.ct.create_payment(draft)
        await self.queue.publish([messages.payment_created(self.project_key, as_json(created), "platform")])
        payment = await self.settled(created.id)
        assert payment.transactions[0].state is TransactionState.SUCCESS, payment.payment_status
        self.relay.watch(payment)
        return payment

    async def settled(self, payment_id: str, timeout_s: float = 60.0) -> Payment:
        """The payment once none of its transactions is Initial or Pending (polled)."""
        async with asyncio.timeout(timeout_s):
            while True:
                payment = await self.ct.get_payment(payment_id)
                if all(t.state.rank >= TransactionState.SUCCESS.rank for t in payment.transactions):
                    return payment
                await asyncio.sleep(0.2)


@pytest.fixture
async def world(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, localstripe: LocalStripe
) -> AsyncIterator[World]:
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    ledger = tmp_path / "ledger.sqlite"
    stripe = AdapterRoute(
        interface="STRIPE", adapter="stripe", settings={"secret_key": STRIPE_KEY, "api_base": localstripe.url, "timeout_s": 5}
    )
    config = receiver_config_for(
        queue, [AdapterRoute.model_validate(sandbox_route(ledger)), stripe], payment_api=(ct_url, project_key)
    )
    relay = SubscriptionRelay(ct, queue, project_key)
    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=ledger, routes=[stripe])
    async with (
        running_receiver(config),
        running_worker(settings),
        httpx.AsyncClient(timeout=30) as http,
        _running(relay.run()),
    ):
        caller = Caller(f"http://127.0.0.1:{config.receiver.http_port}", ct_url, project_key, http)
        await caller.until_started()
        yield World(ct, project_key, queue, caller, relay)


@contextlib.asynccontextmanager
async def _running(coroutine: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """``coroutine`` as a task for the block's duration; cancelled after it."""
    task = asyncio.create_task(coroutine)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def made_by_api(payment: Payment, transaction_id: str) -> dict[str, str]:
    transaction = payment.transaction(transaction_id)
    assert transaction is not None and transaction.custom is not None
    return transaction.custom.fields


def interactions_of(payment: Payment, transaction_id: str) -> list[str]:
    return [i.fields["type"] for i in payment.interface_interactions if i.fields.get("transactionId") == transaction_id]


@pytest.mark.parametrize("interface", ["sandbox", "STRIPE"])
async def test_capture_refund_and_reverse_reach_the_psp(world: World, interface: str) -> None:
    payment = await world.authorized(interface)
    caller = world.caller

    captured = await caller.outcome(payment.id, capture(1000, "order-1-capture"), wait_s=10)
    assert (captured["outcome"], captured["transactionType"]) == ("approved", "Charge")

    refunded = await caller.outcome(payment.id, refund(300, "order-1-rma-1", transaction_id=captured["transactionId"]))
    assert (refunded["outcome"], refunded["transactionType"]) == ("received", "Refund")  # no wait asked: stored, not executed
    after_refund = await world.settled(payment.id)
    assert after_refund.transaction(refunded["transactionId"]).state is TransactionState.SUCCESS  # type: ignore[union-attr]

    reversed_ = await caller.outcome(payment.id, reverse("order-1-reverse"), wait_s=10)
    assert (reversed_["outcome"], reversed_["transactionType"]) == ("approved", "Refund")

    payment = await world.settled(payment.id)
    kinds = [(t.type, t.amount.cent_amount, t.state) for t in payment.transactions]
    assert kinds == [
        (TransactionType.AUTHORIZATION, 1000, TransactionState.SUCCESS),
        (TransactionType.CHARGE, 1000, TransactionState.SUCCESS),
        (TransactionType.REFUND, 300, TransactionState.SUCCESS),
        (TransactionType.REFUND, 700, TransactionState.SUCCESS),  # the rest, which reverse refunded
    ]
    for answer, action in ((captured, "capturePayment"), (refunded, "refundPayment"), (reversed_, "reversePayment")):
        fields = made_by_api(payment, answer["transactionId"])
        assert (fields["paymentAction"], fields["requestedBy"]) == (action, CALLER_ID)
        # executed as any transaction: the worker's claim, then the PSP's answer
        assert interactions_of(payment, answer["transactionId"]) == ["request", "response"], interface
        assert payment.transaction(answer["transactionId"]).interaction_id  # type: ignore[union-attr]
    assert made_by_api(payment, refunded["transactionId"])["refundedTransactionId"] == captured["transactionId"]
    assert payment.payment_status.interface_code == "refunded"

    # Nothing is left to reverse: refused, and nothing added.
    response = await caller.act(payment.id, reverse())
    assert response.status_code == 400 and response.json()["errors"][0]["reason"] == "nothing_to_reverse"
    assert len((await world.ct.get_payment(payment.id)).transactions) == 4


@pytest.mark.parametrize("interface", ["sandbox", "STRIPE"])
async def test_cancel_and_reverse_of_an_authorization(world: World, interface: str) -> None:
    cancelled = await world.authorized(interface)
    answer = await world.caller.outcome(cancelled.id, cancel("order-2-cancel"), wait_s=10)
    assert (answer["outcome"], answer["transactionType"]) == ("approved", "CancelAuthorization")
    late = await world.caller.act(cancelled.id, capture(1000))
    assert late.status_code == 400 and late.json()["errors"][0]["reason"] == "authorization_cancelled"

    reversed_ = await world.authorized(interface)
    answer = await world.caller.outcome(reversed_.id, reverse(), wait_s=10)
    assert (answer["outcome"], answer["transactionType"]) == ("approved", "CancelAuthorization")
    payment = await world.settled(reversed_.id)
    assert [(t.type, t.amount.cent_amount, t.state) for t in payment.transactions][1] == (
        TransactionType.CANCEL_AUTHORIZATION, 1000, TransactionState.SUCCESS,
    )  # fmt: skip
    assert payment.payment_status.interface_code == "cancelled"
    assert interactions_of(payment, answer["transactionId"]) == ["request", "response"]


async def test_a_declined_capture_is_rejected_and_a_pending_one_received(world: World) -> None:
    """The sandbox declines a Charge whose amount ends in 13 and leaves one ending in 42 Pending."""
    payment = await world.authorized("sandbox", 2000)
    declined = await world.caller.outcome(payment.id, capture(1913), wait_s=10)
    assert (declined["outcome"], declined["transactionType"]) == ("rejected", "Charge")
    # a failed capture holds no money: another one is admitted, and its wait ends before its outcome
    pending = await world.caller.act(payment.id, capture(1942), wait_s=2)
    assert pending.status_code == 200 and pending.json()["outcome"] == "received"
    assert pending.headers["Preference-Applied"] == "wait=2"
    stored = await world.ct.get_payment(payment.id)
    assert stored.transaction(declined["transactionId"]).state is TransactionState.FAILURE  # type: ignore[union-attr]
    assert stored.transaction(pending.json()["transactionId"]).state is TransactionState.PENDING  # type: ignore[union-attr]
    assert stored.payment_status.interface_code == "reserved"  # the capture is not settled yet


async def test_the_operations_path(world: World) -> None:
    """Checkout's path towards its connectors serves the same; a longer wait than allowed is cut to the bound."""
    payment = await world.authorized("sandbox")
    operations = f"/operations/payment-intents/{payment.id}"
    response = await world.caller.act(payment.id, capture(1000), path=operations, wait_s=100)
    assert response.status_code == 200 and response.json()["outcome"] == "approved"
    assert response.headers["Preference-Applied"] == "wait=10"  # PAYMENT_API_WAIT_MAX_S bounds the wait asked for


async def test_notifications_go_on_while_the_api_cannot_start(kafka_bootstrap: str, project_key: str, tmp_path: Path) -> None:
    """commercetools unreachable at start-up (nothing listens at its address): the API answers 503 and
    keeps trying, and the receiver takes the PSP's notifications all the same."""
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    route = AdapterRoute.model_validate(sandbox_route(tmp_path / "ledger.sqlite"))
    route = route.model_copy(update={"settings": route.settings | {"webhook_secret": "api-test-webhook-secret"}})
    nowhere = f"http://127.0.0.1:{free_port()}"
    config = receiver_config_for(queue, [route], payment_api=(nowhere, project_key))
    base = f"http://127.0.0.1:{config.receiver.http_port}"
    body, headers = signed_notice("sbx_0001", "00000000-0000-4000-8000-0000000000aa", "api-test-webhook-secret")
    async with running_receiver(config), httpx.AsyncClient(timeout=10) as http:
        notified = await http.post(f"{base}/notifications/sandbox", content=body, headers=headers)
        api = await http.post(f"{base}/{project_key}/payment-intents/any", json={"actions": [cancel()]})
    assert notified.status_code == 200 and notified.json() == {"received": True}
    assert api.status_code == 503 and "starting" in api.json()["message"]
