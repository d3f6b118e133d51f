"""End to end: deliveries on a real Kafka broker, the worker, the commercetools emulator, the sandbox."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connector.adapters.registry import AdapterRegistry
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger
from connector.app import build_source
from connector.commercetools.client import CommercetoolsClient
from connector.demo import SCENARIOS, as_json, payment_draft, wait_until_settled
from connector.models.payment import Payment
from connector.peers import messages
from connector.peers.kafka import create_topics
from connector.processor.reconcile import Processor, ProcessorSettings
from connector.worker import Worker, WorkerLimits
from tests.support import CLIENT_SECRET, INTERACTION_TYPE_KEY, ConcurrentWriter, running_worker, settings_for

pytestmark = pytest.mark.e2e

PARTITIONS = 4


@pytest.fixture
async def topic(kafka_bootstrap: str) -> str:
    name = f"payments-{uuid.uuid4().hex[:10]}"
    await create_topics(kafka_bootstrap, name, f"{name}.dlq", partitions=PARTITIONS)
    return name


async def publish(bootstrap: str, topic: str, bodies: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(topic, body) for body in bodies]  # no key: spread over partitions
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def committed_behind_end(bootstrap: str, topic: str, group: str) -> int:
    """How many records the group has not committed past (0: every offset is committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        behind = 0
        for partition in partitions:
            behind += ends[partition] - ((await consumer.committed(partition)) or 0)
        return behind
    finally:
        await consumer.stop()


async def create_scenario_payments(ct: CommercetoolsClient, count: int) -> tuple[list[Payment], dict[str, str]]:
    """``count`` payments cycling through the demo's scenarios, and each executable transaction's expected state."""
    payments, expected = [], {}
    for index in range(count):
        scenario = SCENARIOS[index % len(SCENARIOS)]
        payment = await ct.create_payment(payment_draft(scenario.planned, scenario.done, scenario.initial))
        payments.append(payment)
        for transaction, state in zip(payment.transactions[len(scenario.done) :], scenario.expected, strict=True):
            expected[transaction.id] = state
    return payments, expected


async def test_many_payments_each_delivered_twice_shuffled_in_both_formats(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, topic: str, tmp_path: Path
) -> None:
    """200 payments, every delivery at least twice, shuffled, in both formats: each transaction executed once."""
    payments, expected = await create_scenario_payments(ct, 200)
    bodies = []
    for payment in payments:
        body = as_json(payment)
        bodies += [
            messages.payment_created(project_key, body, "platform"),
            messages.payment_created(project_key, body, "cloudevents"),
        ]
        last = body["transactions"][-1]
        bodies.append(messages.transaction_added(project_key, body, last, random.choice(["platform", "cloudevents"])))
    bodies.append(messages.resource_created(project_key))
    random.Random(7).shuffle(bodies)
    await publish(kafka_bootstrap, topic, bodies)

    settings = settings_for(
        ct_url=ct_url, project_key=project_key, bootstrap=kafka_bootstrap, topic=topic, ledger=tmp_path / "l.sqlite"
    )
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    async with running_worker(settings):
        settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=180)
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
        await asyncio.sleep(0.5)  # let the last commits go out before the worker stops

    states = {t.id: t.state.value for p in settled for t in p.transactions if t.id in expected}
    assert states == expected
    ledger = SandboxLedger(tmp_path / "l.sqlite").executions()
    executed = Counter(e.transaction_id for e in ledger)
    refused = {tid for p in settled for t in p.transactions if (tid := t.id) in expected and not t.interaction_id}
    assert set(executed) == set(expected) - refused and max(executed.values()) == 1
    assert all(e.calls == 1 for e in ledger), "a redelivery reached the PSP again"
    for payment in settled:
        kinds = Counter((i.fields["type"], i.fields["transactionId"]) for i in payment.interface_interactions)
        for transaction in payment.transactions:
            if transaction.id in expected:
                assert kinds[("request", transaction.id)] == kinds[("response", transaction.id)] == 1
    assert await committed_behind_end(kafka_bootstrap, topic, settings.kafka.group_id) == 0
    print(f"\n{len(expected)} transactions, {len(bodies)} deliveries: {len(expected) / wall:.0f} tx/s, "
          f"{cpu * 1000 / len(expected):.2f} CPU ms/tx (worker and test in one process)")  # fmt: skip


async def test_poison_delivery_is_dead_lettered_and_the_worker_goes_on(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, topic: str, tmp_path: Path
) -> None:
    """A malformed delivery lands in the dead-letter topic with its reason and origin; later ones are processed."""
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    await publish(
        kafka_bootstrap, topic, [b'{"truncated": ', messages.payment_created(project_key, as_json(payment), "platform")]
    )
    settings = settings_for(
        ct_url=ct_url, project_key=project_key, bootstrap=kafka_bootstrap, topic=topic, ledger=tmp_path / "l.sqlite"
    )
    async with running_worker(settings):
        [settled] = await wait_until_settled(ct, [payment.id], timeout_s=60)
        dead = AIOKafkaConsumer(f"{topic}.dlq", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
        await dead.start()
        try:
            record = await asyncio.wait_for(dead.getone(), timeout=30)
        finally:
            await dead.stop()
        await asyncio.sleep(0.5)
    assert settled.transactions[0].state.value == "Success"
    headers = {k: v.decode() for k, v in record.headers}
    assert record.value == b'{"truncated": '
    assert "not valid JSON" in headers["dlq.reason"] and headers["dlq.attempts"] == "1"
    assert headers["dlq.original.topic"] == topic and int(headers["dlq.original.partition"]) in range(PARTITIONS)
    assert headers["dlq.original.offset"].isdigit()
    assert await committed_behind_end(kafka_bootstrap, topic, settings.kafka.group_id) == 0


def worker_env(ct_url: str, project_key: str, bootstrap: str, topic: str, ledger: Path, latency_ms: int) -> dict[str, str]:
    route = {"interface": "sandbox", "adapter": "sandbox", "settings": {"ledger_path": str(ledger), "latency_ms": latency_ms}}
    return {
        **os.environ,
        "CTP_PROJECT_KEY": project_key, "CTP_CLIENT_ID": "test-client", "CTP_CLIENT_SECRET": CLIENT_SECRET,
        "CTP_AUTH_URL": ct_url, "CTP_API_URL": ct_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic, "KAFKA_GROUP_ID": f"group-{topic}",
        "CONNECTOR_ADAPTERS": json.dumps([route]), "CONNECTOR_LOG_FORMAT": "json", "CONNECTOR_CLAIM_LEASE_S": "2",
    }  # fmt: skip


async def test_sigterm_finishes_in_flight_work_and_exits_0(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, topic: str, tmp_path: Path
) -> None:
    """SIGTERM stops fetching, lets in-flight work finish, commits and exits 0; a restart finishes the rest."""
    payments, expected = await create_scenario_payments(ct, 40)
    await publish(kafka_bootstrap, topic, [messages.payment_created(project_key, as_json(p), "platform") for p in payments])
    ledger = tmp_path / "l.sqlite"
    env = worker_env(ct_url, project_key, kafka_bootstrap, topic, ledger, latency_ms=300) | {"CONNECTOR_MAX_IN_FLIGHT": "4"}
    worker = subprocess.Popen([sys.executable, "-m", "connector", "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        async with asyncio.timeout(60):
            while not ledger.exists() or not SandboxLedger(ledger).executions():
                await asyncio.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        _, log = await asyncio.to_thread(worker.communicate, timeout=30)
    finally:
        worker.kill() if worker.poll() is None else None
    assert worker.returncode == 0, log[-2000:]
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "worker.stopping" in events and "worker.stopped" in events
    assert CLIENT_SECRET not in log
    finished_before_restart = len(SandboxLedger(ledger).executions())
    assert 0 < finished_before_restart < len(expected), "the stop came too late to test anything"

    restarted = subprocess.Popen([sys.executable, "-m", "connector", "run"], env=env, stderr=subprocess.DEVNULL)
    try:
        settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=120)
    finally:
        restarted.send_signal(signal.SIGTERM)
        await asyncio.to_thread(restarted.wait, timeout=30)
    assert {t.id: t.state.value for p in settled for t in p.transactions if t.id in expected} == expected
    assert max(Counter(e.transaction_id for e in SandboxLedger(ledger).executions()).values()) == 1
    assert all(e.calls == 1 for e in SandboxLedger(ledger).executions()), "work finished before SIGTERM came again"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"CTP_CLIENT_SECRET": None}, "CTP_CLIENT_SECRET: Field required"),
        ({"CONNECTOR_SOURCE": "carrier-pigeon"}, "CONNECTOR_SOURCE"),
        ({"CONNECTOR_ADAPTERS": "not json"}, "CONNECTOR_ADAPTERS"),
        ({"CONNECTOR_ADAPTERS": '[{"interface": "sandbox", "adapter": "nope"}]'}, "no adapter plugin named 'nope'"),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(change: dict[str, str | None], named: str, tmp_path: Path) -> None:
    """A missing or invalid setting exits 2 with a message naming it, never printing the secret."""
    env = worker_env("http://127.0.0.1:9", "p", "127.0.0.1:9", "t", tmp_path / "l.sqlite", 0)
    for key, value in change.items():
        env.pop(key) if value is None else env.__setitem__(key, value)
    done = subprocess.run(
        [sys.executable, "-m", "connector", "run"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert CLIENT_SECRET not in done.stderr + done.stdout


async def test_another_writer_between_claim_and_outcome(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, topic: str, tmp_path: Path
) -> None:
    """Through Kafka: a concurrent writer makes every outcome write conflict; each ends right with one PSP call."""
    payments = [await ct.create_payment(payment_draft(1000 + i, (), (("Charge", 1000 + i),))) for i in range(10)]
    await publish(
        kafka_bootstrap, topic, [messages.payment_created(project_key, as_json(p), "cloudevents") for p in payments] * 2
    )
    settings = settings_for(
        ct_url=ct_url, project_key=project_key, bootstrap=kafka_bootstrap, topic=topic, ledger=tmp_path / "l.sqlite"
    )
    ledger = SandboxLedger(tmp_path / "l.sqlite")
    registry = AdapterRegistry({("sandbox", None): ConcurrentWriter(SandboxAdapter(ledger), ct)})
    processor = Processor(ct, registry, ProcessorSettings(project_key=project_key, interaction_type_key=INTERACTION_TYPE_KEY))
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        worker = asyncio.create_task(Worker(build_source(settings), processor, WorkerLimits()).run(stop))
        settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=60)
        stop.set()
        await asyncio.wait_for(worker, timeout=30)
    assert all(p.key == "other-writer" and p.transactions[0].state.value == "Success" for p in settled)
    assert sum(1 for line in logs if line["event"] == "outcome.conflict") == len(payments)
    assert sorted(e.calls for e in ledger.executions()) == [1] * len(payments)
