"""End to end over each source (Kafka, Pub/Sub): the worker, the commercetools emulator, the sandbox."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from google.cloud import pubsub_v1

from connector.adapters.contract import OperationRequest, Outcome
from connector.adapters.registry import AdapterRegistry
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger
from connector.app import build_source
from connector.commercetools.client import CommercetoolsClient
from connector.errors import PspUnavailable
from connector.models.payment import Payment
from connector.processor.decisions import claim_actions, plan_work
from connector.processor.reconcile import Processor, ProcessorSettings
from connector.worker import Worker, WorkerLimits
from tests.queues import EventQueue, PubSubQueue
from tests.sandbox_ledger import executions, references_for
from tests.stack import messages
from tests.stack.demo import SCENARIOS
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.stack.pubsub import create_subscription
from tests.stack.queues import PUBSUB_PROJECT
from tests.support import (
    CLIENT_SECRET,
    INTERACTION_TYPE_KEY,
    QUICK_LEASE,
    ConcurrentWriter,
    running_worker,
    sandbox_route,
    settings_for,
    worker_environment,
)

pytestmark = pytest.mark.e2e


async def create_scenario_payments(ct: CommercetoolsClient, count: int, ledger: Path) -> tuple[list[Payment], dict[str, str]]:
    """``count`` payments cycling through the demo's scenarios (what they start out with recorded in the sandbox's
    ``ledger``), and each executable transaction's expected state."""
    payments, expected = [], {}
    for index in range(count):
        scenario = SCENARIOS[index % len(SCENARIOS)]
        references = references_for(ledger, scenario.done)
        payment = await ct.create_payment(payment_draft(scenario.planned, scenario.done, scenario.initial, references))
        payments.append(payment)
        for transaction, state in zip(payment.transactions[len(scenario.done) :], scenario.expected, strict=True):
            if transaction.type.value != "Chargeback":  # the issuer's record: left alone, as test_hostile checks
                expected[transaction.id] = state
    return payments, expected


async def test_many_payments_each_delivered_twice_shuffled_in_both_formats(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """200 payments, every delivery at least twice, shuffled, in both formats: each transaction executed once."""
    payments, expected = await create_scenario_payments(ct, 200, tmp_path / "l.sqlite")
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
    await queue.publish(bodies)

    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "l.sqlite")
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    async with running_worker(settings):
        settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=180)
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before

    states = {t.id: t.state.value for p in settled for t in p.transactions if t.id in expected}
    assert states == expected
    ledger = executions(tmp_path / "l.sqlite")
    executed = Counter(e.transaction_id for e in ledger)
    refused = {tid for p in settled for t in p.transactions if (tid := t.id) in expected and not t.interaction_id}
    assert set(executed) == set(expected) - refused and max(executed.values()) == 1
    assert all(e.calls == 1 for e in ledger), "a redelivery reached the PSP again"
    for payment in settled:
        kinds = Counter((i.fields["type"], i.fields["transactionId"]) for i in payment.interface_interactions)
        for transaction in payment.transactions:
            if transaction.id in expected:
                assert kinds[("request", transaction.id)] == kinds[("response", transaction.id)] == 1
    assert await queue.unfinished() == 0
    print(f"\n{queue.name}: {len(expected)} transactions, {len(bodies)} deliveries: {len(expected) / wall:.0f} tx/s, "
          f"{cpu * 1000 / len(expected):.2f} CPU ms/tx (worker and test in one process)")  # fmt: skip


async def test_poison_delivery_is_dead_lettered_and_the_worker_goes_on(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """A malformed delivery is dead-lettered with its reason; the deliveries after it are processed."""
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    await queue.publish([b'{"truncated": ', messages.payment_created(project_key, as_json(payment), "platform")])
    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "l.sqlite")
    async with running_worker(settings):
        [settled] = await wait_until_settled(ct, [payment.id], timeout_s=60)
        [(body, headers)] = await queue.dead_letters(1, timeout_s=30)
    assert settled.transactions[0].state.value == "Success"
    assert body == b'{"truncated": '
    assert "not valid JSON" in headers["reason"] and headers["attempts"] == "1"
    if queue.name == "kafka":
        assert headers["original_topic"] and headers["original_partition"].isdigit() and headers["original_offset"].isdigit()
    else:
        assert headers["original_subscription"].endswith(settings.pubsub.subscription if settings.pubsub else "?")
    assert await queue.unfinished() == 0


async def test_another_writer_between_claim_and_outcome(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """A concurrent writer makes every outcome write conflict; each payment ends right with one PSP call."""
    payments = [await ct.create_payment(payment_draft(1000 + i, (), (("Charge", 1000 + i),))) for i in range(10)]
    await queue.publish([messages.payment_created(project_key, as_json(p), "cloudevents") for p in payments] * 2)
    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "l.sqlite")
    ledger = tmp_path / "l.sqlite"
    registry = AdapterRegistry({("sandbox", None): ConcurrentWriter(SandboxAdapter(SandboxLedger(ledger)), ct)})
    processor = Processor(ct, registry, ProcessorSettings(project_key=project_key, interaction_type_key=INTERACTION_TYPE_KEY))
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        worker = asyncio.create_task(Worker(build_source(settings), processor, WorkerLimits()).run(stop))
        settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=60)
        stop.set()
        await asyncio.wait_for(worker, timeout=30)
    assert all(p.key == "other-writer" and p.transactions[0].state.value == "Success" for p in settled)
    assert sum(1 for line in logs if line["event"] == "outcome.conflict") == len(payments)
    assert sorted(e.calls for e in executions(ledger)) == [1] * len(payments)


class FailingPsp:
    """The sandbox behind a PSP that is unreachable whenever ``fails`` says so: a fault the simulator cannot produce."""

    def __init__(self, inner: SandboxAdapter, fails: Callable[[OperationRequest], bool]) -> None:
        self._inner, self._fails = inner, fails

    async def charge(self, request: OperationRequest) -> Outcome:
        if self._fails(request):
            raise PspUnavailable("connection reset")
        return await self._inner.charge(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_pubsub_hands_a_held_claim_back_for_its_whole_delay_and_the_redelivery_succeeds(
    pubsub_emulator: object, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """Another worker's fresh claim: on Pub/Sub the message is handed back (a nack with a deadline) and
    comes again no sooner than the claim's lease ends (whole seconds, rounded up, never to zero)."""
    queue = PubSubQueue()
    await queue.create()
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    lease = timedelta(seconds=1.5)
    plan = plan_work(payment, now=datetime.now(UTC), lease=lease)
    claim = claim_actions(plan.work, type_key=INTERACTION_TYPE_KEY, now=datetime.now(UTC), lease=lease, attempt="another")
    await ct.update_payment(payment.id, payment.version, claim)
    await queue.publish([messages.payment_created(project_key, as_json(payment), "platform")])
    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "l.sqlite")
    ledger = tmp_path / "l.sqlite"
    processor = Processor(
        ct, AdapterRegistry({("sandbox", None): SandboxAdapter(SandboxLedger(ledger))}),
        ProcessorSettings(project_key=project_key, interaction_type_key=INTERACTION_TYPE_KEY, claim_lease_s=1.5),
    )  # fmt: skip
    stop = asyncio.Event()
    with structlog.testing.capture_logs(processors=[structlog.processors.TimeStamper(fmt="iso")]) as logs:
        worker = asyncio.create_task(Worker(build_source(settings), processor, WorkerLimits(), jitter=lambda: 0.0).run(stop))
        [settled] = await wait_until_settled(ct, [payment.id], timeout_s=60)
        stop.set()
        await asyncio.wait_for(worker, timeout=30)
    [retrying] = [line for line in logs if line["event"] == "delivery.retrying"]
    [processed] = [line for line in logs if line["event"] == "delivery.processed"]
    assert "ClaimHeld" in retrying["error"] and 0 < retrying["delay_s"] < 1.5
    waited_s = (datetime.fromisoformat(processed["timestamp"]) - datetime.fromisoformat(retrying["timestamp"])).total_seconds()
    assert waited_s >= 1.0  # the deadline was at least one whole second, not an immediate redelivery
    assert settled.transactions[0].state.value == "Success"
    assert [e.calls for e in executions(ledger)] == [1]
    assert await queue.unfinished() == 0


def worker_env(queue: EventQueue, ct_url: str, project_key: str, ledger: Path, latency_ms: int) -> dict[str, str]:
    routes = [sandbox_route(ledger, latency_ms)]
    environment = worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=routes)
    return os.environ | environment | QUICK_LEASE


@pytest.mark.timeout(600)  # the emulator may hold the first worker's leftover messages for minutes
async def test_sigterm_finishes_in_flight_work_and_exits_0(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """SIGTERM stops fetching, lets in-flight work finish, commits and exits 0; a restart finishes the rest."""
    ledger = tmp_path / "l.sqlite"
    payments, expected = await create_scenario_payments(ct, 40, ledger)
    await queue.publish([messages.payment_created(project_key, as_json(p), "platform") for p in payments])
    env = worker_env(queue, ct_url, project_key, ledger, latency_ms=300) | {"CONNECTOR_MAX_IN_FLIGHT": "4"}
    worker = subprocess.Popen([sys.executable, "-m", "connector", "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        async with asyncio.timeout(60):
            while not ledger.exists() or not executions(ledger):
                await asyncio.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        _, log = await asyncio.to_thread(worker.communicate, timeout=30)
    finally:
        worker.kill() if worker.poll() is None else None
    assert worker.returncode == 0, log[-2000:]
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "worker.stopping" in events and "worker.stopped" in events
    assert CLIENT_SECRET not in log
    finished_before_restart = len(executions(ledger))
    assert 0 < finished_before_restart < len(expected), "the stop came too late to test anything"

    restarted_log = tmp_path / "restarted.log"
    # Messages the first worker's stream had received but not handed over stay leased until the
    # stream's deadline: at most 20 s on Pub/Sub, but 20 to 100 s and more on the emulator, and once in
    # a CI run over 300 s, late in a session that had killed many streams. The reconciler finishes what
    # such a message would have, as it would in production; the first worker's exit is what is tested.
    restart_env = env | {"CONNECTOR_RECONCILE_INTERVAL_S": "30"}
    with restarted_log.open("wb") as log_file:
        restarted = subprocess.Popen([sys.executable, "-m", "connector", "run"], env=restart_env, stderr=log_file)
    try:
        settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=300)
    except TimeoutError:
        lines = restarted_log.read_text(errors="replace").splitlines()
        pytest.fail("not settled after the restart; its last log lines:\n" + "\n".join(lines[-40:]))
    finally:
        restarted.send_signal(signal.SIGTERM)
        await asyncio.to_thread(restarted.wait, timeout=30)
    assert {t.id: t.state.value for p in settled for t in p.transactions if t.id in expected} == expected
    assert max(Counter(e.transaction_id for e in executions(ledger)).values()) == 1
    assert all(e.calls == 1 for e in executions(ledger)), "work finished before SIGTERM came again"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"CTP_CLIENT_SECRET": None}, "CTP_CLIENT_SECRET: Field required"),
        ({"CONNECTOR_SOURCE": "carrier-pigeon"}, "CONNECTOR_SOURCE"),
        ({"CONNECTOR_ADAPTERS": "not json"}, "CONNECTOR_ADAPTERS"),
        ({"CONNECTOR_ADAPTERS": '[{"interface": "sandbox", "adapter": "nope"}]'}, "no adapter plugin named 'nope'"),
        ({"CONNECTOR_SOURCE": "pubsub"}, "PUBSUB_PROJECT_ID: Field required"),
        # The sandbox answers Success without moving money: it needs the opt-in, and a local commercetools.
        ({"CONNECTOR_ALLOW_SANDBOX": None}, "set CONNECTOR_ALLOW_SANDBOX=true"),
        ({"CTP_API_URL": "https://api.europe-west1.gcp.commercetools.com"}, "CTP_API_URL names another host"),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(change: dict[str, str | None], named: str, tmp_path: Path) -> None:
    """A missing or invalid setting exits 2 with a message naming it, never printing the secret."""
    env = {
        **os.environ, "CTP_PROJECT_KEY": "p", "CTP_CLIENT_ID": "c", "CTP_CLIENT_SECRET": CLIENT_SECRET,
        "CTP_AUTH_URL": "http://127.0.0.1:9", "CTP_API_URL": "http://127.0.0.1:9",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "KAFKA_TOPIC": "t",
        "CONNECTOR_ADAPTERS": json.dumps([{"interface": "sandbox", "adapter": "sandbox"}]), "CONNECTOR_ALLOW_SANDBOX": "true",
    }  # fmt: skip
    for key, value in change.items():
        env.pop(key) if value is None else env.__setitem__(key, value)
    done = subprocess.run(
        [sys.executable, "-m", "connector", "run"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert CLIENT_SECRET not in done.stderr + done.stdout


async def test_a_stored_psp_error_is_dead_lettered_and_the_payments_around_it_go_through(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """The sandbox fails a charge of 10.55, keeps that 500 for its key, and replays it marked as such (as
    Stripe does): the first failure pauses the route as any 5xx would, the replay dead-letters the
    delivery (no retry with that key can help), and the payments around it go through."""
    poison = await ct.create_payment(payment_draft(1055, (), (("Charge", 1055),)))
    healthy = [await ct.create_payment(payment_draft(2000 + i, (), (("Charge", 2000 + i),))) for i in range(5)]
    ledger = tmp_path / "l.sqlite"
    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=ledger)
    bodies = [messages.payment_created(project_key, as_json(p), "platform") for p in (poison, *healthy)]
    await queue.publish(bodies)
    async with running_worker(settings):
        [(body, headers)] = await queue.dead_letters(1, timeout_s=60)
        settled = await wait_until_settled(ct, [p.id for p in healthy], timeout_s=60)
    assert {p.transactions[0].state.value for p in settled} == {"Success"}
    assert json.loads(body)["resource"]["id"] == poison.id
    assert "PspStoredError" in headers["reason"] and "replays the error stored for this key" in headers["reason"]
    assert (await ct.get_payment(poison.id)).transactions[0].state.value == "Initial"  # nothing was executed
    assert poison.transactions[0].id not in {e.transaction_id for e in executions(ledger)}
    assert await queue.unfinished() == 0


async def test_pubsub_dead_letter_policy_takes_poison_after_its_attempts(
    pubsub_emulator: object, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """Without PUBSUB_DEAD_LETTER_TOPIC the subscription's policy moves a poison message aside after its attempts."""
    queue = PubSubQueue()
    dead_letters = queue.dead_letter_topic
    await asyncio.to_thread(
        create_subscription, PUBSUB_PROJECT, queue.topic, queue.subscription,
        dead_letter_topic=dead_letters, max_delivery_attempts=5, ack_deadline_s=10,
    )  # fmt: skip
    await asyncio.to_thread(subscribe, dead_letters, f"{dead_letters}-reader")  # before anything is forwarded
    queue.dead_letter_topic = ""  # the worker relies on the policy
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    await queue.publish([b"not json at all", messages.payment_created(project_key, as_json(payment), "platform")])
    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "l.sqlite")
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings):
            [settled] = await wait_until_settled(ct, [payment.id], timeout_s=60)
            queue.dead_letter_topic = dead_letters
            [(body, _)] = await queue.dead_letters(1, timeout_s=30)
    assert settled.transactions[0].state.value == "Success" and body == b"not json at all"
    # Judged once; the redeliveries the policy needs before it takes the message are handed straight back.
    assert sum(1 for line in logs if line["event"] == "delivery.dead_lettered") == 1


def subscribe(topic: str, subscription: str) -> None:
    subscriber = pubsub_v1.SubscriberClient()
    try:
        subscriber.create_subscription(
            request={
                "name": subscriber.subscription_path(PUBSUB_PROJECT, subscription),
                "topic": f"projects/{PUBSUB_PROJECT}/topics/{topic}",
            }
        )
    finally:
        subscriber.close()
