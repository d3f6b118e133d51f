"""Crashes: workers killed with SIGKILL at random moments during a long run, and restarted.

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
from tests.sandbox_ledger import executions
from tests.stack import messages
from tests.stack.kafka import LocalKafka
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.support import sandbox_route, worker_environment

pytestmark = pytest.mark.reliability

PAYMENTS = 1000
# The Pub/Sub emulator keeps sending redeliveries to the streams of killed subscribers, so each kill
# leaves messages that drain in waves a lease long (see the README): minutes, not seconds. Kafka takes
# five kills; Pub/Sub two, which the emulator settles within the bound below.
KILLS = {"kafka": 5, "pubsub": 2}
SETTLE_AFTER_KILLS_S = 600
FINAL = {"Success", "Failure", "Pending"}


def crash_worker_environment(queue: EventQueue, ct_url: str, project_key: str, ledger: Path) -> dict[str, str]:
    environment = worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=[sandbox_route(ledger, 40)])
    return (
        os.environ
        | environment
        | {"CONNECTOR_LOG_LEVEL": "warning", "CONNECTOR_CLAIM_LEASE_S": "2", "CONNECTOR_MAX_IN_FLIGHT": "16"}
    )


async def create_payments(ct: CommercetoolsClient, count: int) -> list[Payment]:
    """One transaction each, mixing authorizations, charges and the sandbox's lost answers (ending in 77)."""
    limit = asyncio.Semaphore(16)

    async def one(index: int) -> Payment:
        kind, amount = [("Authorization", 1000), ("Charge", 2000), ("Charge", 2077), ("Authorization", 3013)][index % 4]
        async with limit:
            return await ct.create_payment(payment_draft(amount, (), ((kind, amount),)))

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def publish_payments(ct: CommercetoolsClient, queue: EventQueue, project_key: str, count: int) -> list[Payment]:
    """Creates ``count`` payments and publishes their PaymentCreated deliveries in both formats."""
    payments = await create_payments(ct, count)
    formats: tuple[messages.Format, ...] = ("platform", "cloudevents")
    await queue.publish([messages.payment_created(project_key, as_json(p), formats[i % 2]) for i, p in enumerate(payments)])
    return payments


def spawn_worker(environment: dict[str, str], stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "connector", "run"], env=environment, stderr=stderr)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("queue", ["kafka", "pubsub"], indirect=True)
async def test_sigkill_at_random_moments_loses_nothing_and_executes_nothing_twice(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, reliability_report: dict[str, Any]
) -> None:
    """1,000 transactions; the worker is killed (SIGKILL) mid-run and restarted, 5 times: no loss, no double execution."""
    payments = await publish_payments(ct, queue, project_key, PAYMENTS)
    ledger = tmp_path / "ledger.sqlite"
    environment = crash_worker_environment(queue, ct_url, project_key, ledger)
    rng = random.Random(5)
    kills = restarts = 0
    executed_at_kill: list[int] = []

    worker = spawn_worker(environment)
    try:
        while kills < KILLS[queue.name]:
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            done = len(executions(ledger)) if ledger.exists() else 0
            if done >= len(payments) * 3 // 4:
                break  # too late for a kill to test anything
            worker.send_signal(signal.SIGKILL)
            await asyncio.to_thread(worker.wait, 10)
            kills += 1
            executed_at_kill.append(done)
            worker, restarts = spawn_worker(environment), restarts + 1
        settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=SETTLE_AFTER_KILLS_S)
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 60)
        assert worker.returncode == 0
    finally:
        if worker.poll() is None:
            worker.kill()

    await check_and_report(queue, settled, ledger, reliability_report, kills=kills, restarts=restarts)
    assert kills == KILLS[queue.name], f"the run finished after {kills} kills (executed at each kill: {executed_at_kill})"


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
    per_transaction = Counter(e.transaction_id for e in executions(ledger))
    doubles = sum(count - 1 for count in per_transaction.values())
    stuck = await queue.unfinished()
    figures = {
        "cases_run": 1, "transactions": len(transactions), "lost": lost, "double_executions": doubles,
        "stuck_offsets": stuck, "crashes_survived": kills, "restarts": restarts,
    }  # fmt: skip
    for name, value in figures.items():
        report[name] = report.get(name, 0) + value
    assert (lost, doubles, stuck) == (0, 0, 0)
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
    assert len(executions(ledger)) == len(payments)
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
