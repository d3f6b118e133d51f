"""Crashes: workers killed with SIGKILL at random moments during a long run, and restarted.

The PSP is the strict sandbox, as unforgiving as Stripe (docs/adapters.md): a request runs to its end
at the PSP whoever gives up on it, a key in flight is answered "in progress", and here keys are
forgotten after 5 s, shorter than the claim lease, so every takeover after a crash happens after
the PSP forgot the key, as one after Stripe's 24 hours would. Some payments hold two transactions
(a kill may fall between them), and some take the PSP 3 s while their caller times out after 1 s (a
PSP slower than its client's timeout, which Stripe can be): their retries meet "in progress".

In the crash case, notices arrive too: a tenth of the payments are charges the PSP answers Pending,
and the test plays the PSP deciding them later, settling each and notifying the receiver (``connector
receive``, killed at each kill beside the worker) until it answers 2xx, as Stripe retries. Every
notice must be applied, and none twice.

Figures go to the session's reliability report (printed by ``make reliability``).
"""

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connector.commercetools.client import CommercetoolsClient
from connector.models.payment import Payment
from tests.fault_proxies import FaultyHttp, Toxiproxy
from tests.queues import EventQueue, KafkaQueue
from tests.sandbox_ledger import SandboxNotifier, answers, executions
from tests.stack import free_port, messages
from tests.stack.kafka import LocalKafka
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.support import QUICK_LEASE, sandbox_route, worker_environment

pytestmark = pytest.mark.reliability

PAYMENTS = 1000
# The Pub/Sub emulator keeps sending redeliveries to the streams of killed subscribers, so each kill
# leaves messages that drain in waves a lease long (see the README): minutes, not seconds. Kafka takes
# five kills; Pub/Sub two, which the emulator settles within the bound below.
KILLS = {"kafka": 5, "pubsub": 2}
SETTLE_AFTER_KILLS_S = 600
FINAL = {"Success", "Failure", "Pending"}


# Keys kept 5 s, under the derived lease (CONNECTOR_DELIVERY_TIMEOUT_S 5 + the declared 1 s timeout); a
# slow request (3 s) still ends well within its key's retention, as at Stripe.
STRICT_PSP = {"key_retention_s": 5, "timeout_ms": 1000, "slow_ms": 3000}


def crash_worker_environment(queue: EventQueue, ct_url: str, project_key: str, ledger: Path) -> dict[str, str]:
    route = sandbox_route(ledger, 40)
    route["settings"] |= STRICT_PSP | {"webhook_secret": NOTIFY_SECRET}
    environment = worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=[route])
    return os.environ | environment | QUICK_LEASE | {"CONNECTOR_LOG_LEVEL": "warning", "CONNECTOR_MAX_IN_FLIGHT": "16"}


MIX: list[tuple[tuple[str, int], ...]] = [
    (("Authorization", 1000),),
    (("Charge", 2000),),
    (("Charge", 2077),),  # the PSP executes and the answer is lost
    (("Authorization", 3013),),  # declined
    (("Authorization", 4088), ("Charge", 4088)),  # two slow transactions: a kill may well fall between them
    (("Charge", 5088),),  # the PSP works longer than its caller waits
    (("Authorization", 1000),),
    (("Charge", 2000),),
    (("Charge", 6042),),  # Pending: the PSP decides it later, and notifies (the crash case's notifier)
    (("Authorization", 7000),),
]
NOTIFY_SECRET = "reliability-webhook-secret"


async def create_payments(ct: CommercetoolsClient, count: int) -> list[Payment]:
    """Payments of the mix above, in turn."""
    limit = asyncio.Semaphore(16)

    async def one(index: int) -> Payment:
        transactions = MIX[index % len(MIX)]
        async with limit:
            return await ct.create_payment(payment_draft(transactions[0][1], (), transactions))

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def publish_payments(ct: CommercetoolsClient, queue: EventQueue, project_key: str, count: int) -> list[Payment]:
    """Creates ``count`` payments and publishes their PaymentCreated deliveries in both formats."""
    payments = await create_payments(ct, count)
    formats: tuple[messages.Format, ...] = ("platform", "cloudevents")
    await queue.publish([messages.payment_created(project_key, as_json(p), formats[i % 2]) for i, p in enumerate(payments)])
    return payments


def spawn_worker(environment: dict[str, str], stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "connector", "run"], env=environment, stderr=stderr)


def spawn_receiver(environment: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    listener = {"NOTIFY_HTTP_HOST": "127.0.0.1", "NOTIFY_HTTP_PORT": str(port)}
    return subprocess.Popen([sys.executable, "-m", "connector", "receive"], env=environment | listener, stderr=subprocess.DEVNULL)


async def wait_until_notified(
    ct: CommercetoolsClient, payments: list[Payment], notifier: SandboxNotifier, timeout_s: float
) -> list[Payment]:
    """The payments once every Pending one the notifier decided shows its outcome."""
    async with asyncio.timeout(timeout_s):
        while True:
            current = [await ct.get_payment(p.id) for p in payments]
            if not notifier.unanswered and all(t.state.value != "Pending" for p in current for t in p.transactions):
                return current
            await asyncio.sleep(0.5)


def check_notices(settled: list[Payment], notifier: SandboxNotifier, report: dict[str, Any]) -> None:
    """Every notice the receiver accepted shows on its payment, and none is applied twice. (A worker's own
    takeover may have stored the PSP's decision first, through its look-up: then the notice rightly
    changes nothing, and writes no interaction.)"""
    by_reference = {t.interaction_id: p for p in settled for t in p.transactions if t.interaction_id}
    lost = twice = 0
    for reference, event_id in notifier.accepted.items():
        payment = by_reference[reference]
        applied = [i.fields for i in payment.interface_interactions if i.fields.get("type") == "notification"]
        transaction = next(t for t in payment.transactions if t.interaction_id == reference)
        lost += transaction.state.value != "Success"
        twice += len(applied) > 1
        assert not applied or applied[0]["eventId"] == event_id
    figures = {"notices_accepted": len(notifier.accepted), "notices_lost": lost, "notices_applied_twice": twice,
               "notice_deliveries_refused_or_unanswered": notifier.failed_attempts}  # fmt: skip
    for name, value in figures.items():
        report[name] = report.get(name, 0) + value
    assert (lost, twice) == (0, 0)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("queue", ["kafka", "pubsub"], indirect=True)
async def test_sigkill_at_random_moments_loses_nothing_and_executes_nothing_twice(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, reliability_report: dict[str, Any]
) -> None:
    """1,000 transactions; the worker and the receiver are killed (SIGKILL) mid-run and restarted, 5 times,
    while notices arrive: no loss, no double execution, every notice applied once."""
    payments = await publish_payments(ct, queue, project_key, PAYMENTS)
    ledger = tmp_path / "ledger.sqlite"
    environment = crash_worker_environment(queue, ct_url, project_key, ledger)
    rng = random.Random(5)
    kills = restarts = between = 0
    executed_at_kill: list[int] = []
    pairs = {p.id for p in payments if len(p.transactions) == 2}
    port = free_port()
    notifier = SandboxNotifier(ledger, f"http://127.0.0.1:{port}/notifications/sandbox", NOTIFY_SECRET)
    notifying = asyncio.Event()

    worker, receiver = spawn_worker(environment), spawn_receiver(environment, port)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(notifier.run(notifying))
            try:
                while kills < KILLS[queue.name]:
                    await asyncio.sleep(rng.uniform(1.0, 4.0))
                    done = len(executions(ledger)) if ledger.exists() else 0
                    if done >= len(payments) * 3 // 4:
                        break  # too late for a kill to test anything
                    for process in (worker, receiver):
                        process.send_signal(signal.SIGKILL)
                        await asyncio.to_thread(process.wait, 10)
                    kills += 1
                    executed_at_kill.append(done)
                    between += killed_between_transactions(ledger, pairs)
                    worker, receiver, restarts = spawn_worker(environment), spawn_receiver(environment, port), restarts + 1
                settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=SETTLE_AFTER_KILLS_S)
                settled = await wait_until_notified(ct, settled, notifier, timeout_s=SETTLE_AFTER_KILLS_S)
            finally:
                notifying.set()
        for process in (worker, receiver):
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 60)
            assert process.returncode == 0
    finally:
        for process in (worker, receiver):
            if process.poll() is None:
                process.kill()

    reliability_report["killed_between_transactions"] = reliability_report.get("killed_between_transactions", 0) + between
    await check_and_report(queue, settled, ledger, reliability_report, kills=kills, restarts=restarts)
    check_notices(settled, notifier, reliability_report)
    assert len(notifier.accepted) >= PAYMENTS // len(MIX)
    assert kills == KILLS[queue.name], f"the run finished after {kills} kills (executed at each kill: {executed_at_kill})"
    psp = answers(ledger)
    assert psp.get("in_progress") and psp.get("found_key_forgotten"), f"the strict PSP's paths were not met: {psp}"
    assert between > 0, "no kill fell between the two transactions of a payment"


def killed_between_transactions(ledger: Path, pairs: set[str]) -> int:
    """Payments of two transactions whose first was executed at the PSP and whose second was not, at a kill."""
    executed = Counter(e.payment_id for e in executions(ledger) if e.payment_id in pairs)
    return sum(1 for count in executed.values() if count == 1)


async def stop(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and wait for the exit: the worker commits (or acknowledges) what it finished as it stops."""
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, 60)


async def check_and_report(
    queue: EventQueue, settled: list[Payment], ledger: Path, report: dict[str, Any], *, kills: int, restarts: int
) -> None:
    """Adds the run's figures to the report, then asserts: nothing lost, nothing twice, nothing stuck."""
    transactions = [t for p in settled for t in p.transactions]
    lost = sum(1 for t in transactions if t.state.value not in FINAL or not t.interaction_id)
    executed = executions(ledger)
    per_transaction = Counter(e.transaction_id for e in executed)
    doubles = sum(count - 1 for count in per_transaction.values())
    at_psp = {e.transaction_id: e for e in executed}  # the latest execution of each
    differs = sum(
        1
        for t in transactions
        if (e := at_psp.get(t.id)) is None or (t.state.value, t.interaction_id) != (e.state.value, e.psp_reference)
    )
    stuck = await queue.unfinished()
    psp = answers(ledger)
    figures = {
        "cases_run": 1, "transactions": len(transactions), "lost": lost, "double_executions": doubles,
        "state_differs_from_psp": differs, "stuck_offsets": stuck, "crashes_survived": kills, "restarts": restarts,
        "psp_in_progress_answers": psp.get("in_progress", 0), "psp_keys_forgotten": psp.get("key_forgotten", 0),
        "found_at_psp": psp.get("found", 0), "found_at_psp_after_its_key_was_forgotten": psp.get("found_key_forgotten", 0),
    }  # fmt: skip
    for name, value in figures.items():
        report[name] = report.get(name, 0) + value
    assert (lost, doubles, differs, stuck) == (0, 0, 0, 0)
    assert len(per_transaction) == len(transactions)


@pytest.mark.timeout(900)  # Pub/Sub: the emulator's redeliveries to the killed stream (see KILLS)
@pytest.mark.parametrize("queue", ["kafka", "pubsub"], indirect=True)
async def test_the_other_worker_of_the_group_takes_over(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, reliability_report: dict[str, Any]
) -> None:
    """Two workers share the consumer group (or subscription); one is killed mid-run and the other finishes its partitions."""
    payments = await publish_payments(ct, queue, project_key, PAYMENTS // 2)
    ledger = tmp_path / "ledger.sqlite"
    environment = crash_worker_environment(queue, ct_url, project_key, ledger)
    logs = [tmp_path / f"worker-{index}.log" for index in range(2)]
    workers = []
    for log_path in logs:
        with log_path.open("wb") as log:
            workers.append(spawn_worker(environment, stderr=log))
    try:
        async with asyncio.timeout(60):
            while not ledger.exists() or len(executions(ledger)) < len(payments) // 10:
                await asyncio.sleep(0.2)
        workers[0].send_signal(signal.SIGKILL)
        await asyncio.to_thread(workers[0].wait, 10)
        async with asyncio.TaskGroup() as tasks:  # the survivor exiting on its own ends the wait at once
            settling = tasks.create_task(wait_until_settled(ct, [p.id for p in payments], timeout_s=SETTLE_AFTER_KILLS_S))
            survivor = tasks.create_task(asyncio.to_thread(workers[1].wait, SETTLE_AFTER_KILLS_S + 10))
            await asyncio.wait([settling, survivor], return_when=asyncio.FIRST_COMPLETED)
            assert not survivor.done(), f"the surviving worker exited with {workers[1].returncode}: {logs[1].read_text()[-3000:]}"
            survivor.cancel()
        settled = settling.result()
        workers[1].send_signal(signal.SIGTERM)
        await asyncio.to_thread(workers[1].wait, 60)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert workers[1].returncode == 0
    assert len(executions(ledger)) == sum(len(p.transactions) for p in payments)
    await check_and_report(queue, settled, ledger, reliability_report, kills=1, restarts=0)


async def test_the_worker_reconnects_after_a_broker_restart(
    ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, reliability_report: dict[str, Any]
) -> None:
    """The broker is restarted mid-run (a broker of its own); the worker reconnects by itself and finishes."""
    with LocalKafka() as broker:
        queue = KafkaQueue(broker.bootstrap_servers)
        await queue.create()
        payments = await publish_payments(ct, queue, project_key, PAYMENTS // 2)
        ledger = tmp_path / "ledger.sqlite"
        worker = spawn_worker(crash_worker_environment(queue, ct_url, project_key, ledger))
        try:
            async with asyncio.timeout(60):
                while not ledger.exists() or len(executions(ledger)) < len(payments) // 5:
                    await asyncio.sleep(0.2)
            await asyncio.to_thread(broker.restart)
            settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=300)
            await stop(worker)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert worker.returncode == 0
        await check_and_report(queue, settled, ledger, reliability_report, kills=0, restarts=0)
        reliability_report["broker_restarts"] = reliability_report.get("broker_restarts", 0) + 1


@pytest.mark.parametrize("queue", ["kafka"], indirect=True)
async def test_commercetools_faults_are_retried_and_nothing_is_lost(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, reliability_report: dict[str, Any]
) -> None:
    """Latency, bursts of 429 and 503, reset and stalled connections between worker and commercetools."""
    payments = await publish_payments(ct, queue, project_key, PAYMENTS // 2)
    ledger = tmp_path / "ledger.sqlite"
    log_path = tmp_path / "worker.log"
    async with FaultyHttp(ct_url) as http_faults:
        with Toxiproxy() as toxiproxy:
            address = "http://" + toxiproxy.proxy("commercetools", f"127.0.0.1:{http_faults.port}")
            environment = crash_worker_environment(queue, address, project_key, ledger) | {"CTP_TIMEOUT_S": "2"}
            with log_path.open("wb") as log:
                worker = spawn_worker(environment, stderr=log)
            try:
                async with asyncio.timeout(60):
                    while not ledger.exists() or not executions(ledger):
                        await asyncio.sleep(0.2)
                await toxiproxy.toxic("commercetools", "latency", {"latency": 300, "jitter": 200}, seconds=3)
                await http_faults.burst(429, seconds=2)
                await http_faults.burst(503, seconds=2)
                await toxiproxy.toxic("commercetools", "reset_peer", {"timeout": 0}, seconds=1.5)
                await toxiproxy.toxic("commercetools", "timeout", {"timeout": 0}, seconds=3)  # stalls: client timeouts
                settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=300)
                await stop(worker)
            finally:
                if worker.poll() is None:
                    worker.kill()
    assert worker.returncode == 0
    assert http_faults.answered.get(429) and http_faults.answered.get(503), "the bursts met no request"
    retries = log_path.read_text().count("retry")
    assert retries > 0, "no retry was logged"
    await check_and_report(queue, settled, ledger, reliability_report, kills=0, restarts=0)
    reliability_report["commercetools_faults"] = reliability_report.get("commercetools_faults", 0) + 5
