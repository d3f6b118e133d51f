"""``make demo`` (``python -m tests.stack.demo``): the whole product on one machine, with the sandbox PSP.

Starts a local Kafka broker (a container of the official image when a Docker engine answers and the
image can be had, else the broker from Maven jars; or uses ``KAFKA_BOOTSTRAP_SERVERS``), and says
which in its first line; or with ``--source pubsub`` the Pub/Sub emulator (or uses
``PUBSUB_EMULATOR_HOST``); and the commercetools emulator;
creates payments with every transaction type, publishes their deliveries in both formats (with a
duplicate, the subscription's test delivery and a malformed one), runs the worker and the
notification receiver until every transaction has left Initial, and prints each transaction's final
state and PSP reference. Then it plays the PSP deciding the asynchronous payment: the sandbox settles
it and sends its signed notification to the receiver, and the demo shows the Pending charge settled.
Last, an order management system captures the authorized payment through the Payments API.
"""

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import aiohttp
import orjson
from pydantic import SecretStr

from connector.adapters.registry import AdapterRoute
from connector.adapters.sandbox import SandboxLedger
from connector.adapters.sandbox_notifications import signed_notice
from connector.app import build_commercetools, run_receiver, run_worker
from connector.commercetools.client import CommercetoolsClient
from connector.config import (
    CommercetoolsSettings,
    PaymentApiSettings,
    ReceiverConfig,
    ReceiverSettings,
    Settings,
    WorkerSettings,
    without_files,
)  # fmt: skip
from connector.logs import configure_logging
from connector.models.payment import Payment, TransactionState
from tests.sandbox_ledger import references_for
from tests.stack import free_port, messages
from tests.stack.broker import choose_broker
from tests.stack.ctmock import LocalCommercetools
from tests.stack.payments import SANDBOX_INTERFACE, as_json, payment_draft, wait_until_settled
from tests.stack.pubsub import LocalPubSub
from tests.stack.queues import KafkaTopic, LocalQueue, PubSubTopic

PROJECT_KEY = "demo"
WEBHOOK_SECRET = "demo-webhook-secret"  # signs the sandbox's notifications


@dataclass(frozen=True)
class Scenario:
    name: str
    planned: int
    done: tuple[tuple[str, int], ...]  # transactions that already succeeded before the demo
    initial: tuple[tuple[str, int], ...]  # transactions for the connector
    expected: tuple[str, ...]  # final state of each initial transaction


SCENARIOS = (
    Scenario("authorize", 1000, (), (("Authorization", 1000),), ("Success",)),
    Scenario("authorize, capture in part", 3000, (), (("Authorization", 3000), ("Charge", 1200)), ("Success", "Success")),
    Scenario(
        "a second capture, refused (captured once)",
        2000,
        (),
        (("Authorization", 2000), ("Charge", 1200), ("Charge", 800)),
        ("Success", "Success", "Failure"),
    ),
    Scenario("direct charge", 4500, (), (("Charge", 4500),), ("Success",)),
    Scenario("two refunds", 5000, (("Charge", 5000),), (("Refund", 2000), ("Refund", 1000)), ("Success", "Success")),
    Scenario("refund above charged", 1000, (("Charge", 1000),), (("Refund", 1500),), ("Failure",)),
    Scenario(
        "authorize, then cancel", 6000, (), (("Authorization", 6000), ("CancelAuthorization", 6000)), ("Success", "Success")
    ),
    Scenario("declined card", 7013, (), (("Authorization", 7013),), ("Failure",)),
    Scenario("asynchronous PSP", 8042, (), (("Charge", 8042),), ("Pending",)),
    Scenario("chargeback, left to the issuer", 2500, (("Charge", 2500),), (("Chargeback", 2500),), ("Initial",)),
    Scenario("authorize, then capture", 9000, (), (("Authorization", 9000), ("Charge", 9000)), ("Success", "Success")),
)


@contextlib.contextmanager
def local_peers(source: Literal["kafka", "pubsub"]) -> Iterator[tuple[LocalQueue, str]]:
    """(a queue on the chosen source, the commercetools URL), starting what the environment does not give."""
    with contextlib.ExitStack() as stack:
        queue: LocalQueue
        if source == "pubsub":
            if not os.environ.get("PUBSUB_EMULATOR_HOST"):
                stack.enter_context(LocalPubSub())
            queue = PubSubTopic()
        else:
            broker = choose_broker()
            print(broker.line, flush=True)
            queue = KafkaTopic(stack.enter_context(broker.start()))
        yield queue, stack.enter_context(LocalCommercetools()).url


async def create_payments(ct: CommercetoolsClient, ledger: str) -> list[Payment]:
    """The scenarios' payments; what they start out with is recorded in the sandbox's ``ledger`` first."""
    return [
        await ct.create_payment(payment_draft(s.planned, s.done, s.initial, references_for(ledger, s.done))) for s in SCENARIOS
    ]


def deliveries_for(payments: list[Payment]) -> list[bytes]:
    """Each payment's PaymentCreated, alternating formats, plus a duplicate, a test and a malformed delivery."""
    bodies = [messages.resource_created(PROJECT_KEY)]
    for index, payment in enumerate(payments):
        fmt: messages.Format = "platform" if index % 2 == 0 else "cloudevents"
        bodies.append(messages.payment_created(PROJECT_KEY, as_json(payment), fmt))
    bodies.append(bodies[1])  # subscriptions deliver at least once
    bodies.append(b'{"notificationType": "Message", "resource": ')  # cut short: dead-lettered
    return bodies


def report(payments: list[Payment]) -> tuple[str, bool]:
    width = max(len(s.name) for s in SCENARIOS)
    lines = [f"{'scenario':<{width}} {'transaction':<20} {'amount':>8}  {'expected':<8} {'state':<8} PSP reference"]
    all_right = True
    for scenario, payment in zip(SCENARIOS, payments, strict=True):
        executed = payment.transactions[len(scenario.done) :]
        for transaction, expected in zip(executed, scenario.expected, strict=True):
            right = transaction.state.value == expected
            all_right &= right
            lines.append(
                f"{scenario.name:<{width}} {transaction.type.value:<20} {transaction.amount.cent_amount:>8}  "
                f"{expected:<8} {transaction.state.value:<8} {transaction.interaction_id or '-'}{'' if right else '  <-- WRONG'}"
            )
    return "\n".join(lines), all_right


async def run_demo(queue: LocalQueue, ct_url: str, timeout_s: float = 60.0) -> bool:
    ledger = os.path.join(tempfile.mkdtemp(prefix="connector-demo-"), "sandbox-ledger.sqlite")
    settings = Settings(
        without_files(
            CommercetoolsSettings, project_key=PROJECT_KEY, client_id="demo-client",
            client_secret=SecretStr("demo-secret"), auth_url=ct_url, api_url=ct_url,
        ),
        without_files(
            WorkerSettings, source=queue.name, http_port=0, allow_sandbox=True,  # any free port: 8080 may be taken here
            adapters=[
                AdapterRoute(interface=SANDBOX_INTERFACE, adapter="sandbox",
                             settings={"ledger_path": ledger, "latency_ms": 50, "webhook_secret": WEBHOOK_SECRET})
            ],
        ),
        **queue.source_settings(),
    )  # fmt: skip
    await queue.create()
    ct = build_commercetools(settings.commercetools)
    stop = asyncio.Event()
    try:
        payments = await create_payments(ct, ledger)
        await queue.publish(deliveries_for(payments))
        receiver = ReceiverConfig(
            settings.worker, without_files(ReceiverSettings, http_host="127.0.0.1", http_port=free_port()),
            settings.kafka, settings.pubsub, without_files(PaymentApiSettings, enabled=True), settings.commercetools,
        )  # fmt: skip
        async with asyncio.TaskGroup() as tasks:
            worker = tasks.create_task(run_worker(settings, stop))
            receiving = tasks.create_task(run_receiver(receiver, stop))
            try:
                settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s)
                table, all_right = report(settled)
                print(table)
                print(
                    f"\n{len(SCENARIOS)} payments, all transactions as expected"
                    if all_right
                    else "\nsome transactions ended WRONG"
                )
                all_right &= await settle_by_notification(ct, ledger, settled, receiver.receiver.http_port, timeout_s)
                all_right &= await capture_through_the_api(
                    ct, queue, settled, f"{ct_url}", receiver.receiver.http_port, timeout_s
                )
            finally:
                stop.set()
            await worker
            await receiving
    finally:
        await ct.aclose()
    return all_right


async def settle_by_notification(
    ct: CommercetoolsClient, ledger: str, settled: list[Payment], port: int, timeout_s: float
) -> bool:
    """The PSP decides the asynchronous charge (the bank confirmed it) and notifies the receiver, as Stripe
    would; the worker looks the execution up and settles the Pending charge."""
    [payment] = [p for s, p in zip(SCENARIOS, settled, strict=True) if s.name == "asynchronous PSP"]
    pending = payment.transactions[-1]
    assert pending.interaction_id is not None
    psp = SandboxLedger(ledger)
    try:
        psp.settle(pending.interaction_id, TransactionState.SUCCESS, "captured", "Amount charged (the bank confirmed)")
    finally:
        psp.close()
    body, headers = signed_notice(pending.interaction_id, payment.id, WEBHOOK_SECRET)
    url = f"http://127.0.0.1:{port}/notifications/{SANDBOX_INTERFACE.casefold()}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as answer:
        accepted = answer.status
    async with asyncio.timeout(timeout_s):
        while (now := (await ct.get_payment(payment.id)).transactions[-1]).state is TransactionState.PENDING:
            await asyncio.sleep(0.2)
    event_id = orjson.loads(body)["id"]
    right = accepted == 200 and now.state is TransactionState.SUCCESS
    print(
        f"\nasynchronous PSP: the sandbox settled {pending.interaction_id} and sent notification {event_id};"
        f" the receiver answered {accepted}, and the charge went Pending -> {now.state.value}" + ("" if right else "  <-- WRONG")
    )
    return right


async def capture_through_the_api(
    ct: CommercetoolsClient, queue: LocalQueue, settled: list[Payment], ct_url: str, port: int, timeout_s: float
) -> bool:
    """An order management system captures the authorized payment through the Payments API, with a token of
    its own API client; the demo then delivers the PaymentTransactionAdded the Subscription would, and
    the worker captures it at the PSP."""
    [payment] = [p for s, p in zip(SCENARIOS, settled, strict=True) if s.name == "authorize"]
    action = {"action": "capturePayment", "amount": {"centAmount": 1000, "currencyCode": "EUR"}, "merchantReference": "demo-1"}
    async with aiohttp.ClientSession() as http:
        scope = f"manage_checkout_payment_intents:{PROJECT_KEY}"
        query = {"grant_type": "client_credentials", "scope": scope}  # the emulator reads them from the query
        basic = {"Authorization": "Basic " + base64.b64encode(b"demo-oms:demo-oms-secret").decode()}
        async with http.post(f"{ct_url}/oauth/token", params=query, headers=basic, data={}) as answer:
            token = (await answer.json())["access_token"]
        api_url = f"http://127.0.0.1:{port}/{PROJECT_KEY}/payment-intents/{payment.id}"
        async with asyncio.timeout(timeout_s):  # the API checks its credentials in the background: 503 until then
            while True:
                async with http.post(api_url) as probe:
                    if probe.status != 503:
                        break
                await asyncio.sleep(0.1)
        async with http.post(api_url, json={"actions": [action]}, headers={"Authorization": f"Bearer {token}"}) as answer:
            status, result = answer.status, await answer.json()
    if status != 200:
        print(f"\nPayments API: capturePayment answered {status} {result}  <-- WRONG")
        return False
    stored = await ct.get_payment(payment.id)
    transaction = stored.transaction(result["transactionId"])
    assert transaction is not None
    embedded = transaction.model_dump(by_alias=True, mode="json", exclude_none=True)
    await queue.publish([messages.transaction_added(PROJECT_KEY, as_json(stored), embedded, "platform")])
    async with asyncio.timeout(timeout_s):
        while (now := (await ct.get_payment(payment.id)).transaction(transaction.id)) and now.state is TransactionState.INITIAL:
            await asyncio.sleep(0.2)
    right = result["outcome"] == "received" and now is not None and now.state is TransactionState.SUCCESS
    print(
        f"\nPayments API: capturePayment of 1000 answered {status} {result['outcome']!r} with {result['transactionType']}"
        f" {transaction.id}; the worker captured it at the PSP: {now.state.value if now else '?'}"
        + ("" if right else "  <-- WRONG")
    )
    return right


def main(source: Literal["kafka", "pubsub"] = "kafka") -> int:
    with local_peers(source) as (queue, ct_url):
        return 0 if asyncio.run(run_demo(queue, ct_url)) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=["kafka", "pubsub"], default="kafka", help="the queue to run on")
    arguments = parser.parse_args()
    configure_logging("console" if sys.stderr.isatty() else "json", "warning")
    # A fresh broker answers the first group join with a retried coordinator error: noise in a demo.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    sys.exit(main(arguments.source))
