"""Outages as long as real ones: three minutes each, against real peers, with deliveries arriving
throughout. The worker (``connector run``) pauses the work that needs the dependency, keeps its
deliveries uncommitted, shows the pause on ``/readyz`` and ``/metrics``, and once the dependency
answers again finishes every payment: nothing dead-lettered, lost or executed twice, no restart.

The four run side by side, each with its own worker, topic and fault proxy (``FaultyHttp``: neither
the emulator nor localstripe can answer 503 or 429, and stopping them would lose what they store).
A fifth, beside them, has PSP notices arrive during a commercetools outage: the receiver (``connector
receive``) needs no commercetools, so it queues each one (2xx), and the paused worker applies each
once when commercetools is back. Figures go to the reliability report: ``outages_survived``,
``dead_letters_from_outages`` and ``notices_during_outage``.
"""

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from connector.commercetools.client import CommercetoolsClient
from connector.models.payment import Payment
from tests.fault_proxies import FaultyHttp
from tests.localstripe_peer import LocalStripe
from tests.queues import KafkaQueue
from tests.sandbox_ledger import SandboxNotifier, executions
from tests.stack import free_port, messages
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.stack.queues import PARTITIONS
from tests.support import sandbox_route, worker_environment

pytestmark = pytest.mark.reliability

OUTAGE_S = 180.0
PAYMENTS = 20
BEFORE = 5  # processed before the outage; the rest arrive during it
STRIPE_KEY = "sk_test_outage_0001"


@dataclass
class Scenario:
    name: str
    dependency: str  # the breaker that pauses: its readiness check and metric label
    psp: str  # "sandbox" or "stripe"
    readiness_seen: set[int] = field(default_factory=set)  # /readyz statuses during the outage
    paused_seen: bool = False  # connector_paused{dependency} was 1 at some scrape
    healthz_seen: set[int] = field(default_factory=set)


SCENARIOS = [
    Scenario("commercetools answers 503", "commercetools", "sandbox"),
    Scenario("commercetools refuses connections", "commercetools", "sandbox"),
    Scenario("commercetools answers 429 with Retry-After", "commercetools", "sandbox"),
    Scenario("the PSP answers 503", "psp:stripe", "stripe"),
]


@pytest.mark.timeout(900)
async def test_three_minute_outages_pause_and_lose_nothing(
    kafka_bootstrap: str,
    ct_url: str,
    project_key: str,
    ct: CommercetoolsClient,
    localstripe: LocalStripe,
    tmp_path: Path,
    reliability_report: dict[str, Any],
) -> None:
    for index in range(len(SCENARIOS)):
        (tmp_path / f"case-{index}").mkdir()
    (tmp_path / "notices").mkdir()
    results = await asyncio.gather(
        *(
            _survive(scenario, kafka_bootstrap, ct_url, project_key, ct, localstripe, tmp_path / f"case-{index}")
            for index, scenario in enumerate(SCENARIOS)
        ),
        _notices_survive(kafka_bootstrap, ct_url, project_key, ct, tmp_path / "notices"),
    )
    dead_letters = sum(results)
    reliability_report["notices_during_outage"] = reliability_report.get("notices_during_outage", 0) + NOTICES
    reliability_report["outages_survived"] = reliability_report.get("outages_survived", 0) + len(SCENARIOS) + 1
    reliability_report["dead_letters_from_outages"] = reliability_report.get("dead_letters_from_outages", 0) + dead_letters
    assert dead_letters == 0


async def _survive(
    scenario: Scenario,
    bootstrap: str,
    ct_url: str,
    project_key: str,
    ct: CommercetoolsClient,
    localstripe: LocalStripe,
    folder: Path,
) -> int:
    """Runs one outage; returns how many deliveries were dead-lettered (after asserting the rest)."""
    queue = KafkaQueue(bootstrap)
    await queue.create()
    upstream = localstripe.url if scenario.psp == "stripe" else ct_url
    async with FaultyHttp(upstream) as proxy:
        ct_for_worker = ct_url if scenario.psp == "stripe" else proxy.url
        payments = [await ct.create_payment(_draft(scenario.psp, index)) for index in range(PAYMENTS)]
        port = free_port()
        worker = _spawn(scenario, queue, ct_for_worker, project_key, proxy.url, folder, port)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as ops:
                await _until_ready(ops, worker)
                await queue.publish([_created(project_key, p) for p in payments[:BEFORE]])
                await wait_until_settled(ct, [p.id for p in payments[:BEFORE]], timeout_s=60)
                outage = _start(scenario, proxy)
                await queue.publish([_created(project_key, p) for p in payments[BEFORE:]])
                while not outage.done():
                    await _observe(scenario, ops)
                    await asyncio.sleep(2.0)
                settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=240)
                assert worker.poll() is None, f"{scenario.name}: the worker exited ({worker.returncode})"
                metrics = (await ops.get("/metrics")).text
            worker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(worker.wait, 60)
        finally:
            if worker.poll() is None:
                worker.kill()
    log = (folder / "worker.log").read_text(errors="replace")
    assert worker.returncode == 0, f"{scenario.name}: {log[-3000:]}"
    assert _sample(metrics, "connector_dead_letters_total") == 0, scenario.name
    assert {scenario.dependency: 1.0} == {scenario.dependency: _sample(metrics, "connector_pauses_total", scenario.dependency)}
    assert 503 in scenario.readiness_seen and scenario.paused_seen, f"{scenario.name}: the pause was not shown"
    assert scenario.healthz_seen == {200}, f"{scenario.name}: liveness failed during the outage"
    assert all(t.state.value == "Success" and t.interaction_id for p in settled for t in p.transactions), scenario.name
    await _assert_executed_once(scenario, settled, folder, localstripe)
    assert await queue.unfinished() == 0
    return await _dead_letter_count(bootstrap, f"{queue.topic}.dlq")


NOTICES = 10
NOTIFY_SECRET = "outage-webhook-secret"


async def _notices_survive(bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, folder: Path) -> int:
    """Pending charges, decided by the PSP during a commercetools outage: every notice is accepted
    during it, and applied once after it."""
    queue = KafkaQueue(bootstrap)
    await queue.create()
    ledger = folder / "ledger.sqlite"
    async with FaultyHttp(ct_url) as proxy:
        amounts = [1042 + 100 * index for index in range(NOTICES)]  # ending in 42: the sandbox answers Pending
        payments = [await ct.create_payment(payment_draft(a, (), (("Charge", a),))) for a in amounts]
        route = sandbox_route(ledger, 20)
        route["settings"]["webhook_secret"] = NOTIFY_SECRET
        environment = os.environ | worker_environment(queue, ct_url=proxy.url, project_key=project_key, routes=[route])
        ops_port, listener = free_port(), free_port()
        environment |= {"CONNECTOR_PAUSE_MAX_S": "20", "CONNECTOR_LOG_LEVEL": "warning"}
        with (folder / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "connector", "run"], env=environment | {"CONNECTOR_HTTP_PORT": str(ops_port)}, stderr=log
            )
        receiver = subprocess.Popen(
            [sys.executable, "-m", "connector", "receive"], stderr=subprocess.DEVNULL,
            env=environment | {"NOTIFY_HTTP_HOST": "127.0.0.1", "NOTIFY_HTTP_PORT": str(listener)},
        )  # fmt: skip
        notifier = SandboxNotifier(ledger, f"http://127.0.0.1:{listener}/notifications/sandbox", NOTIFY_SECRET)
        stop_notifying = asyncio.Event()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops_port}", timeout=5) as ops:
                await _until_ready(ops, worker)
                await queue.publish([_created(project_key, p) for p in payments])
                async with asyncio.timeout(60):
                    while not all([await _pending(ct, p) for p in payments]):
                        await asyncio.sleep(0.2)
                outage = proxy.burst(503, OUTAGE_S)
                notifying = asyncio.create_task(notifier.run(stop_notifying))
                async with asyncio.timeout(60):
                    while len(notifier.accepted) < NOTICES:
                        await asyncio.sleep(0.2)
                assert not outage.done(), "the notices were not all accepted during the outage"
                await outage
                async with asyncio.timeout(240):
                    while True:
                        settled = [await ct.get_payment(p.id) for p in payments]
                        if all(t.state.value == "Success" for p in settled for t in p.transactions):
                            break
                        await asyncio.sleep(0.5)
                metrics = (await ops.get("/metrics")).text
            stop_notifying.set()
            await notifying
            for process in (worker, receiver):
                process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(process.wait, 60)
        finally:
            stop_notifying.set()
            for process in (worker, receiver):
                if process.poll() is None:
                    process.kill()
    assert (worker.returncode, receiver.returncode) == (0, 0), (folder / "worker.log").read_text(errors="replace")[-3000:]
    assert _sample(metrics, "connector_pauses_total", "commercetools") >= 1.0
    for payment in settled:
        applied = [i.fields["eventId"] for i in payment.interface_interactions if i.fields.get("type") == "notification"]
        assert applied == [notifier.accepted[payment.transactions[0].interaction_id or ""]], payment.id
    assert await queue.unfinished() == 0
    return await _dead_letter_count(bootstrap, f"{queue.topic}.dlq")


async def _pending(ct: CommercetoolsClient, payment: Payment) -> bool:
    return all(t.state.value == "Pending" for t in (await ct.get_payment(payment.id)).transactions)


def _draft(psp: str, index: int) -> dict[str, Any]:
    amount = 1000 + 100 * index  # none ends in the sandbox's special endings
    pair = (("Authorization", amount), ("Charge", amount))
    transactions = pair if index % 2 else (("Charge", amount),)
    draft = payment_draft(amount, (), transactions)
    if psp == "stripe":
        draft["paymentMethodInfo"] = {"paymentInterface": "STRIPE", "method": "card", "token": {"value": "pm_card_visa"}}
    return draft


def _created(project_key: str, payment: Payment) -> bytes:
    return messages.payment_created(project_key, as_json(payment), "platform")


def _spawn(
    scenario: Scenario, queue: KafkaQueue, ct_url: str, project_key: str, proxy_url: str, folder: Path, port: int
) -> subprocess.Popen[bytes]:
    if scenario.psp == "stripe":
        route = {
            "interface": "STRIPE",
            "adapter": "stripe",
            "settings": {"secret_key": STRIPE_KEY, "api_base": proxy_url, "timeout_s": 5},
        }
    else:
        route = sandbox_route(folder / "ledger.sqlite", 20)
    environment = os.environ | worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=[route])
    environment |= {"CONNECTOR_HTTP_PORT": str(port), "CONNECTOR_PAUSE_MAX_S": "20", "CONNECTOR_LOG_LEVEL": "warning"}
    with (folder / "worker.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "connector", "run"], env=environment, stderr=log)


async def _until_ready(ops: httpx.AsyncClient, worker: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(60):
        while True:
            assert worker.poll() is None, "the worker did not start"
            try:
                if (await ops.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)


def _start(scenario: Scenario, proxy: FaultyHttp) -> "asyncio.Task[None]":
    if "refuses" in scenario.name:
        return proxy.refuse(OUTAGE_S)
    if "429" in scenario.name:
        return proxy.burst(429, OUTAGE_S, headers={"Retry-After": "15"})
    return proxy.burst(503, OUTAGE_S)


async def _observe(scenario: Scenario, ops: httpx.AsyncClient) -> None:
    ready = await ops.get("/readyz")
    scenario.readiness_seen.add(ready.status_code)
    if ready.status_code == 503:
        assert ready.json()["checks"][f"{scenario.dependency}_answering"] is False
    scenario.paused_seen |= _sample((await ops.get("/metrics")).text, "connector_paused", scenario.dependency) == 1.0
    scenario.healthz_seen.add((await ops.get("/healthz")).status_code)


def _sample(metrics: str, name: str, dependency: str | None = None) -> float:
    wanted = f'{name}{{dependency="{dependency}"}}' if dependency else name
    for line in metrics.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


async def _assert_executed_once(scenario: Scenario, settled: list[Payment], folder: Path, localstripe: LocalStripe) -> None:
    transactions = {t.id for p in settled for t in p.transactions}
    if scenario.psp == "sandbox":
        executed = executions(folder / "ledger.sqlite")
        assert Counter(e.transaction_id for e in executed) == Counter(transactions), scenario.name
        return
    intents = await localstripe.objects("payment_intents")
    ours = [i for i in intents if (i.get("metadata") or {}).get("ctPaymentId") in {p.id for p in settled}]
    per_payment = Counter(i["metadata"]["ctPaymentId"] for i in ours)
    assert set(per_payment.values()) == {1} and len(per_payment) == len(settled), scenario.name


async def _dead_letter_count(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return sum(ends.values())
    finally:
        await consumer.stop()
