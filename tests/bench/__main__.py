"""``make bench``: the connector against a bare-I/O baseline, in one run, on this machine.

1. Load: N payments (default 5,000) in a mix of transaction types, their deliveries in both
   formats, all published to a local Kafka topic (6 partitions) before the worker starts; the
   commercetools emulator; the sandbox PSP with a fixed latency (default 50 ms). An unmeasured
   baseline run over 2,000 more payments, published at 400/s, warms the emulator and the broker up.
2. Saturation, in five rounds, each the connector and then the baseline (tests/bench/baseline.py:
   raw aiokafka and aiohttp, same concurrency) over loads of the same size: N payments, then N/2
   four times. Throughput: transactions per second from the first to the last PSP call of the round in
   the sandbox ledger; the figures are the medians of the rounds, and ``ratio`` the median of the
   rounds' ratios, because this machine's speed drifts by more than 10% between runs a minute apart.
   From the first round (the whole backlog in the topic before the worker starts): CPU per
   transaction (the process's CPU time, start-up included), peak RSS, commercetools requests per
   transaction (from /metrics).
3. Latency: more deliveries, published at half the measured throughput: p50 and p99 from publish
   to the outcome stored (the payment's lastModifiedAt).
4. Without a token: PaymentCreated deliveries of refunds and cancels only: requests per delivery.
5. The reconciler, idle: the worker idle for 30 s sweeping every second, and 30 s without it; its
   CPU per sweep, and its share at the default interval (5 minutes) of the worker's CPU, loaded (at
   the measured throughput) and idle.
6. The notification receiver (``connector receive``): 5,000 signed Stripe events posted by 64
   concurrent clients, each answered once Kafka holds it: notices accepted per second, the
   receiver's CPU per notice, and the p99 answer time.
7. The Payments API (``connector receive`` with ``PAYMENT_API_ENABLED``): one capture request for
   each of 2,000 authorized payments, from 32 concurrent clients, each answered ``received`` once the
   emulator stored the transaction: requests per second, CPU per request, p50 and p99 answer times.

Prints one JSON line and writes it to tests/bench/result.json. ``--profile`` adds a py-spy
profile of the worker during the second saturation round (top entries in tests/bench/profile.txt).
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from connector.commercetools.client import CommercetoolsClient
from connector.commercetools.interaction_type import interaction_type_draft
from tests.notices import body_of, event, signed
from tests.sandbox_ledger import execution_times, references_for
from tests.stack import free_port, messages
from tests.stack.ctmock import LocalCommercetools
from tests.stack.kafka import LocalKafka, create_topics
from tests.stack.payments import as_json, payment_draft

HERE = Path(__file__).parent
IDLE_S = 30.0
DEFAULT_RECONCILE_INTERVAL_S = 300.0  # CONNECTOR_RECONCILE_INTERVAL_S's default
TYPE_KEY = "connector-payment-interaction"
PARTITIONS = 6
# One cycle of the mix: (done transactions, Initial transactions, delivery). Amounts ending in 13
# are declined by the sandbox. "added" is a PaymentTransactionAdded of the last Initial one. One
# transaction per delivery, as commercetools sends them: an immediate capture is a direct Charge, and
# an authorization is captured later, by a Charge added when the goods ship (in full or in part).
MIX: list[tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...], str]] = [
    ((), (("Authorization", 5000),), "created"),
    ((), (("Authorization", 2500),), "created"),
    ((), (("Authorization", 1913),), "created"),
    ((), (("Charge", 4200),), "created"),
    ((), (("Charge", 990),), "created"),
    ((("Charge", 6000),), (("Refund", 2000),), "created"),
    ((("Authorization", 7000),), (("CancelAuthorization", 7000),), "created"),
    ((("Authorization", 8000),), (("Charge", 8000),), "added"),
    ((("Authorization", 9000),), (("Charge", 4500),), "added"),
    ((("Charge", 4000),), (("Refund", 4000),), "added"),
]
# PaymentCreated deliveries whose work needs no payment method token: the refund and the cancel.
NO_TOKEN_MIX = [kind for kind in MIX if kind[2] == "created" and kind[1][0][0] in ("Refund", "CancelAuthorization")]
CONNECTOR_LEDGER = "connector-ledger.sqlite"
WARM_UP_PAYMENTS = 2000
WARM_UP_RATE = 400  # deliveries per second
ROUNDS = 5


Deliveries = list[tuple[str, bytes]]  # (payment id, delivery body)


class Load:
    """Payments of one project and their deliveries."""

    def __init__(self, ct: CommercetoolsClient, project_key: str, ledger: Path | None = None) -> None:
        """``ledger``: where the connector's sandbox records what payments start out with (the strict
        sandbox captures, cancels and refunds only its own); None for the baseline, which checks none."""
        self._ct, self._project_key, self._ledger = ct, project_key, ledger

    async def create(self, count: int, mix: list[Any]) -> Deliveries:
        limit = asyncio.Semaphore(32)

        async def one(index: int) -> tuple[str, bytes]:
            done, initial, kind = mix[index % len(mix)]
            formats: tuple[messages.Format, ...] = ("platform", "cloudevents")
            fmt = formats[index // len(mix) % 2]
            planned = max(a for _, a in done + initial)
            references = references_for(self._ledger, done) if self._ledger else ()
            async with limit:
                if kind == "created":
                    payment = await self._ct.create_payment(payment_draft(planned, done, initial, references))
                    return payment.id, messages.payment_created(self._project_key, as_json(payment), fmt)
                payment = await self._ct.create_payment(payment_draft(planned, done, (), references))
                added = payment_draft(0, (), initial)["transactions"][0]
                await self._ct.update_payment(payment.id, payment.version, [{"action": "addTransaction", "transaction": added}])
                payment = await self._ct.get_payment(payment.id)
                return payment.id, messages.transaction_added(
                    self._project_key, as_json(payment), as_json(payment)["transactions"][-1], fmt
                )

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def transactions_in(deliveries: Deliveries) -> int:
    """How many Initial transactions the deliveries of ``Load.create(n, MIX)`` carry."""
    return sum(len(MIX[index % len(MIX)][1]) for index in range(len(deliveries)))


async def publish(bootstrap: str, topic: str, bodies: list[bytes], rate_per_s: float | None = None) -> list[float]:
    """Publishes ``bodies`` (at ``rate_per_s``, or at once); returns each one's publish time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0 if rate_per_s else 5)
    await producer.start()
    try:
        sent, started = [], time.time()
        for index, body in enumerate(bodies):
            if rate_per_s:
                await asyncio.sleep(max(0.0, started + index / rate_per_s - time.time()))
            sent.append((time.time(), await producer.send(topic, body)))
        await asyncio.gather(*(future for _, future in sent))
        return [at for at, _ in sent]
    finally:
        await producer.stop()


class Metrics:
    def __init__(self, port: int) -> None:
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def scrape(self) -> dict[str, float]:
        """Sums each series over its labels (and ``deliveries:<result>`` for the delivery results)."""
        sums: dict[str, float] = defaultdict(float)
        try:
            text = self._http.get("/metrics").text
        except httpx.TransportError:
            return sums
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                sums[sample.name] += sample.value
                if sample.name == "connector_deliveries_total":
                    sums[f"deliveries:{sample.labels['result']}"] += sample.value
        return sums

    def wait_for_deliveries(self, count: float, timeout_s: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sums = self.scrape()
            if sums["connector_deliveries_total"] >= count:
                return sums
            time.sleep(0.5)  # a scrape costs the worker CPU: Prometheus scrapes every 15 s or so
        raise TimeoutError(f"the worker handled {self.scrape()['connector_deliveries_total']} of {count} deliveries")


def worker_environment(args: argparse.Namespace, url: str, bootstrap: str, ledger: Path, port: int) -> dict[str, str]:
    route = {
        "interface": "sandbox",
        "adapter": "sandbox",
        "settings": {"ledger_path": str(ledger), "latency_ms": args.latency_ms},
    }
    return {
        **os.environ, "CTP_PROJECT_KEY": "bench-connector", "CTP_CLIENT_ID": "bench", "CTP_CLIENT_SECRET": "bench",
        "CTP_AUTH_URL": url, "CTP_API_URL": url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": "bench-connector",
        "CONNECTOR_ADAPTERS": json.dumps([route]), "CONNECTOR_ALLOW_SANDBOX": "true",
        "CONNECTOR_MAX_IN_FLIGHT": str(args.in_flight), "CONNECTOR_HTTP_HOST": "127.0.0.1", "CONNECTOR_HTTP_PORT": str(port),
        "CONNECTOR_LOG_FORMAT": "json",
    }  # fmt: skip


def measure_reconciler_idle(args: argparse.Namespace, work: Path, url: str, bootstrap: str) -> dict[str, float]:
    """The worker idle for IDLE_S, once with the reconciler sweeping every second and once without it:
    the reconciler's CPU per sweep, over the sweeps the first made. The project holds every payment of
    the run by then, all settled: the query the reconciler sends is answered, and finds nothing to do."""
    cpu_s, sweeps = {}, 0.0
    for interval in ("1", "0"):
        port = free_port()
        environment = worker_environment(args, url, bootstrap, work / CONNECTOR_LEDGER, port)
        environment["CONNECTOR_RECONCILE_INTERVAL_S"] = interval
        with (work / f"idle-worker-{interval}.log").open("wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "connector", "run"], env=environment, stderr=log)
        metrics = Metrics(port)
        try:
            deadline = time.monotonic() + 60
            while "connector_in_flight" not in metrics.scrape():  # started and serving
                if time.monotonic() > deadline:
                    raise TimeoutError("the idle worker did not start")
                time.sleep(0.5)
            time.sleep(2.0)  # start-up's own work done
            before = process_cpu_s(worker.pid)
            time.sleep(IDLE_S)  # the idle time measured, not a wait for an event
            cpu_s[interval] = process_cpu_s(worker.pid) - before
            if interval == "1":
                sweeps = metrics.scrape()["connector_reconciler_sweeps_total"]
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    per_sweep_s = max(0.0, cpu_s["1"] - cpu_s["0"]) / max(sweeps, 1.0)
    return {
        "reconciler_cpu_ms_per_sweep": round(per_sweep_s * 1000, 2),
        "idle_worker_cpu_ms_per_s": round(cpu_s["0"] * 1000 / IDLE_S, 2),
        "reconciler_sweeps_measured": sweeps,
    }


RECEIVER_NOTICES = 5000
RECEIVER_CLIENTS = 64
API_REQUESTS = 2000
API_CLIENTS = 32
BENCH_WEBHOOK_SECRET = "whsec_bench_0001"


async def measure_receiver(work: Path, bootstrap: str) -> dict[str, float]:
    """The receiver's own cost: signed events (made before the clock starts: signing is the PSP's work)
    posted by concurrent clients; each answer comes once the broker acknowledged the notice."""
    await create_topics(bootstrap, "bench-notices", "bench-notices.dlq", partitions=PARTITIONS)
    route = {"interface": "stripe", "adapter": "stripe",
             "settings": {"secret_key": "sk_test_bench", "webhook_secrets": [BENCH_WEBHOOK_SECRET]}}  # fmt: skip
    requests = []
    for index in range(RECEIVER_NOTICES):
        intent = {"id": f"pi_bench{index:06d}", "object": "payment_intent", "status": "succeeded", "amount": 1000,
                  "metadata": {"ctPaymentId": f"bench-{index:06d}", "ctTransactionId": f"t-{index:06d}"}}  # fmt: skip
        body = body_of(event("payment_intent.succeeded", intent))
        requests.append(("/notifications/stripe", body, signed(body, [BENCH_WEBHOOK_SECRET])))
    environment = {"KAFKA_TOPIC": "bench-notices", "CONNECTOR_ADAPTERS": json.dumps([route])}
    async with receiving(work, bootstrap, environment, "receiver") as (receiver, base):
        answer_s, elapsed, cpu_s = await post_all(receiver, base, requests, RECEIVER_CLIENTS)
    return {
        "receiver_notices_per_s": round(RECEIVER_NOTICES / elapsed, 1),
        "receiver_cpu_ms_per_notice": round(cpu_s * 1000 / RECEIVER_NOTICES, 3),
        "receiver_p99_ms": round(answer_s[int(len(answer_s) * 0.99)] * 1000, 1),
    }


async def measure_payment_api(work: Path, url: str, bootstrap: str, ct: CommercetoolsClient) -> dict[str, float]:
    """The Payments API: one capture request per authorized payment, from concurrent clients, each
    answered ``received`` once commercetools stored its transaction (a read and a version-checked
    update of the emulator per request; the token's introspection is cached)."""
    drafts = [payment_draft(1000, (("Authorization", 1000),), ()) for _ in range(API_REQUESTS)]
    payments = await asyncio.gather(*(ct.create_payment(draft) for draft in drafts))
    async with httpx.AsyncClient() as http:
        scope = "manage_checkout_payment_intents:bench-api"
        answer = await http.post(
            f"{url}/oauth/token", params={"grant_type": "client_credentials", "scope": scope}, auth=("bench-oms", "bench")
        )
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}", "Content-Type": "application/json"}
    requests = []
    for index, payment in enumerate(payments):
        action = {
            "action": "capturePayment",
            "amount": {"centAmount": 1000, "currencyCode": "EUR"},
            "merchantReference": f"c-{index}",
        }
        requests.append((f"/bench-api/payment-intents/{payment.id}", json.dumps({"actions": [action]}).encode(), headers))
    route = {"interface": "sandbox", "adapter": "sandbox", "settings": {"ledger_path": str(work / "api-ledger.sqlite")}}
    environment = {  # bench-notices: the receiver's topic, made by measure_receiver
        "KAFKA_TOPIC": "bench-notices", "CONNECTOR_ADAPTERS": json.dumps([route]), "PAYMENT_API_ENABLED": "true",
        "CTP_PROJECT_KEY": "bench-api", "CTP_CLIENT_ID": "bench-api", "CTP_CLIENT_SECRET": "bench", "CTP_AUTH_URL": url,
        "CTP_API_URL": url,
    }  # fmt: skip
    async with receiving(work, bootstrap, environment, "payment-api") as (receiver, base):
        async with httpx.AsyncClient() as http, asyncio.timeout(60):  # it checks its credentials in the background
            while (await http.post(f"{base}/operations/payment-intents/x")).status_code == 503:
                await asyncio.sleep(0.1)
        answer_s, elapsed, cpu_s = await post_all(receiver, base, requests, API_CLIENTS)
    stored = await asyncio.gather(*(ct.get_payment(payment.id) for payment in payments))
    assert all(len(p.transactions) == 2 for p in stored), "a capture was not stored once"
    return {
        "payment_api_requests_per_s": round(API_REQUESTS / elapsed, 1),
        "payment_api_cpu_ms_per_request": round(cpu_s * 1000 / API_REQUESTS, 3),
        "payment_api_received_p50_ms": round(answer_s[len(answer_s) // 2] * 1000, 1),
        "payment_api_received_p99_ms": round(answer_s[int(len(answer_s) * 0.99)] * 1000, 1),
        "payment_api_clients": API_CLIENTS,
    }


@contextlib.asynccontextmanager
async def receiving(
    work: Path, bootstrap: str, settings: dict[str, str], name: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """A ``connector receive`` process with ``settings``, once its public listener answers; stopped after."""
    port, ops = free_port(), free_port()
    environment = os.environ | settings | {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CONNECTOR_HTTP_HOST": "127.0.0.1", "CONNECTOR_HTTP_PORT": str(ops),
        "NOTIFY_HTTP_HOST": "127.0.0.1", "NOTIFY_HTTP_PORT": str(port), "CONNECTOR_LOG_FORMAT": "json",
        "CONNECTOR_LOG_LEVEL": "warning",
    }  # fmt: skip
    with (work / f"{name}.log").open("wb") as log:
        receiver = subprocess.Popen([sys.executable, "-m", "connector", "receive"], env=environment, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 60
            while True:  # ready: any answer (404 here)
                try:
                    await http.post(f"{base}/notifications/none", content=b"{}")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or receiver.poll() is not None:
                        raise TimeoutError(f"connector receive did not start: see {work / name}.log") from None
                    await asyncio.sleep(0.2)
        yield receiver, base
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=60)


async def post_all(
    receiver: subprocess.Popen[bytes], base: str, requests: list[tuple[str, bytes, dict[str, str]]], clients: int
) -> tuple[list[float], float, float]:
    """Each request once, from ``clients`` concurrent clients; every answer must be 200. Returns the
    sorted answer times, the elapsed time, and the receiver's CPU seconds meanwhile."""
    # aiohttp, not httpx: the clients share this machine's two cores with the receiver and the broker,
    # and httpx spent a core on 256 requests a second, more than the receiver itself.
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        pending = iter(requests)
        answer_s: list[float] = []

        async def client() -> None:
            for path, body, headers in pending:
                sent = time.perf_counter()
                async with http.post(base + path, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, (response.status, await response.text())
                answer_s.append(time.perf_counter() - sent)

        cpu_before, started = process_cpu_s(receiver.pid), time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(clients):
                tasks.create_task(client())
        elapsed, cpu_s = time.perf_counter() - started, process_cpu_s(receiver.pid) - cpu_before
    return sorted(answer_s), elapsed, cpu_s


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def process_peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def ledger_rate(path: Path, since: float = 0.0) -> float:
    """Executions per second, from the first to the last (of those at or after ``since``, Unix time)."""
    times = [at for at in execution_times(path) if at >= since]
    return (len(times) - 1) / (times[-1] - times[0])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="connector-bench-"))
    with LocalCommercetools() as emulator, LocalKafka(partitions=PARTITIONS) as kafka:
        url, bootstrap = emulator.url, kafka.bootstrap_servers

        def client(project_key: str) -> CommercetoolsClient:
            return CommercetoolsClient.create(api_url=url, auth_url=url, project_key=project_key, client_id="bench",
                                              client_secret=SecretStr("bench"), scopes="")  # fmt: skip

        ct, baseline_ct, warm_up_ct = client("bench-connector"), client("bench-baseline"), client("bench-warm-up")
        for c in (ct, baseline_ct, warm_up_ct):
            await c.ensure_type(interaction_type_draft(TYPE_KEY))
        load, baseline_load = Load(ct, "bench-connector", work / CONNECTOR_LEDGER), Load(baseline_ct, "bench-baseline")
        print(f"creating {args.payments} payments twice, and more for the rounds, the warm-up and latency ...", file=sys.stderr)
        sizes = [args.payments] + [args.payments // 2] * (ROUNDS - 1)
        warm_up = await Load(warm_up_ct, "bench-warm-up").create(WARM_UP_PAYMENTS, MIX)
        rounds = [(await load.create(size, MIX), await baseline_load.create(size, MIX)) for size in sizes]
        paced = await load.create(args.payments // 2, MIX)
        no_token = await load.create(200, NO_TOKEN_MIX)
        baseline_topics = [f"bench-baseline-{index}" for index in range(ROUNDS)]
        await create_topics(bootstrap, "bench-connector", "bench-connector.dlq", "bench-warm-up", *baseline_topics,
                            partitions=PARTITIONS)  # fmt: skip
        await publish(bootstrap, "bench-connector", [body for _, body in rounds[0][0]])
        for topic, (_, baseline) in zip(baseline_topics, rounds, strict=True):
            await publish(bootstrap, topic, [body for _, body in baseline])

        # The emulator and the broker run slowly until their JITs have compiled the paths a run takes:
        # whichever side ran first paid about 15% more emulator CPU per transaction (measured), and
        # the broker pays for paced traffic (one record per request, as in the latency phase) for
        # its first seconds. An unmeasured baseline run over paced deliveries pays instead.
        print(f"warm-up: {len(warm_up)} deliveries at {WARM_UP_RATE}/s ...", file=sys.stderr)
        warming = start_baseline(args, work / "warm-up.sqlite", url, bootstrap, "bench-warm-up", "bench-warm-up", len(warm_up))
        await publish(bootstrap, "bench-warm-up", [body for _, body in warm_up], rate_per_s=WARM_UP_RATE)
        finish_baseline(warming)
        figures = await measure(args, work, url, bootstrap, ct, rounds, paced, no_token)
        print(f"the reconciler, idle: {IDLE_S:g} s with it and {IDLE_S:g} s without ...", file=sys.stderr)
        idle = measure_reconciler_idle(args, work, url, bootstrap)
        # Its share at the default interval: of the worker's CPU at the measured throughput, and of an idle worker's.
        per_s = idle["reconciler_cpu_ms_per_sweep"] / DEFAULT_RECONCILE_INTERVAL_S
        loaded_cpu_ms_per_s = figures["cpu_ms_per_tx"] * figures["tx_per_s"]
        figures |= idle | {
            "reconciler_share_of_loaded_worker_cpu": round(per_s / loaded_cpu_ms_per_s, 6),
            "reconciler_share_of_idle_worker_cpu": round(per_s / max(idle["idle_worker_cpu_ms_per_s"], 1e-9), 4),
        }
        print(f"the notification receiver: {RECEIVER_NOTICES} notices ...", file=sys.stderr)
        figures |= await measure_receiver(work, bootstrap)
        print(f"the Payments API: {API_REQUESTS} captures from {API_CLIENTS} clients ...", file=sys.stderr)
        api_ct = client("bench-api")
        figures |= await measure_payment_api(work, url, bootstrap, api_ct)
        await api_ct.aclose()
        for c in (ct, baseline_ct, warm_up_ct):
            await c.aclose()
    return figures


async def measure(
    args: argparse.Namespace, work: Path, url: str, bootstrap: str, ct: CommercetoolsClient,
    rounds: list[tuple[Deliveries, Deliveries]], paced: Deliveries, no_token: Deliveries,
) -> dict[str, Any]:  # fmt: skip
    port, ledger = free_port(), work / CONNECTOR_LEDGER
    environment = worker_environment(args, url, bootstrap, ledger, port)
    metrics = Metrics(port)
    backlog, backlog_tx = rounds[0][0], transactions_in(rounds[0][0])
    rates: list[tuple[float, float]] = []  # (connector, baseline) per round
    with (work / "worker.log").open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "connector", "run"], env=environment, stderr=log)
    try:
        handled, started = 0, 0.0
        for index, (deliveries, baseline) in enumerate(rounds):
            print(f"saturation round {index + 1} of {len(rounds)}: {len(deliveries)} deliveries each ...", file=sys.stderr)
            # The second round: the worker is warm, and busy from the first sample to the last.
            profiler = start_profiler(worker.pid, work) if args.profile and index == 1 else None
            if index > 0:  # the first round's deliveries were in the topic before the worker started
                started = time.time()
                await publish(bootstrap, "bench-connector", [body for _, body in deliveries])
            handled += len(deliveries)
            sums = metrics.wait_for_deliveries(handled, timeout_s=900)
            if index == 0:
                at_backlog, cpu_s, rss_mb = sums, process_cpu_s(worker.pid), process_peak_rss_mb(worker.pid)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
                profiler.wait(timeout=60)
                write_profile(work / "profile.raw", HERE / "profile.txt")
            baseline_ledger = work / f"baseline-ledger-{index}.sqlite"
            topic = f"bench-baseline-{index}"
            usage = finish_baseline(start_baseline(args, baseline_ledger, url, bootstrap, "bench-baseline", topic, len(baseline)))
            if index == 0:
                baseline_cpu_s, baseline_rss_mb = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
            rates.append((ledger_rate(ledger, since=started), ledger_rate(baseline_ledger)))
        tx_per_s = statistics.median(connector for connector, _ in rates)

        rate = tx_per_s * args.latency_load * len(paced) / transactions_in(paced)  # deliveries per second
        print(f"latency at {rate:.0f} deliveries/s ...", file=sys.stderr)
        # This process stands in for commercetools' side of the Subscription, which in production runs on
        # other machines. Publishing one record at a time takes it 0.15 to 0.2 of a core; at its normal
        # priority it took that from the emulator and the worker when all wanted a core at once, and
        # their queues grew into the latency tail (README). Lowered for good: what follows is not timed.
        os.nice(10)
        published = await publish(bootstrap, "bench-connector", [body for _, body in paced], rate_per_s=rate)
        handled += len(paced)
        metrics.wait_for_deliveries(handled, timeout_s=300)
        latencies = [
            (_timestamp((await ct.get_payment(payment_id)).last_modified_at) - at) * 1000
            for (payment_id, _), at in zip(paced, published, strict=True)
        ]

        before = metrics.scrape()["connector_commercetools_requests_total"]
        await publish(bootstrap, "bench-connector", [body for _, body in no_token])
        after = metrics.wait_for_deliveries(handled + len(no_token), timeout_s=300)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    percentiles = statistics.quantiles(latencies, n=100)
    return {
        "payments": len(backlog), "transactions": backlog_tx, "rounds_tx_per_s": [[round(c, 1), round(b, 1)] for c, b in rates],
        "tx_per_s": round(tx_per_s, 1), "baseline_tx_per_s": round(statistics.median(b for _, b in rates), 1),
        "ratio": round(statistics.median(c / b for c, b in rates), 3),
        "p50_ms": round(percentiles[49], 1), "p99_ms": round(percentiles[98], 1), "latency_load_deliveries_per_s": round(rate, 1),
        "cpu_ms_per_tx": round(cpu_s * 1000 / backlog_tx, 2), "rss_mb_peak": round(rss_mb, 1),
        "baseline_cpu_ms_per_tx": round(baseline_cpu_s * 1000 / backlog_tx, 2), "baseline_rss_mb_peak": round(baseline_rss_mb, 1),
        "ct_requests_per_tx": round(at_backlog["connector_commercetools_requests_total"] / backlog_tx, 2),
        "ct_requests_per_payment_created_without_token": round(
            (after["connector_commercetools_requests_total"] - before) / len(no_token), 2
        ),
        "deliveries_by_result": {k.split(":", 1)[1]: int(v) for k, v in at_backlog.items() if k.startswith("deliveries:")},
        "sandbox_latency_ms": args.latency_ms, "in_flight": args.in_flight,
    }  # fmt: skip


def start_baseline(
    args: argparse.Namespace, ledger: Path, url: str, bootstrap: str, project_key: str, topic: str, deliveries: int
) -> subprocess.Popen[bytes]:
    """Starts tests/bench/baseline.py over one topic of one project."""
    config = {
        "ct_url": url, "project_key": project_key, "bootstrap_servers": bootstrap, "topic": topic,
        "ledger_path": str(ledger), "latency_ms": args.latency_ms, "concurrency": args.in_flight, "type_key": TYPE_KEY,
        "deliveries": deliveries, "timeout_s": 900,
    }  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "tests.bench.baseline", json.dumps(config)], stdout=subprocess.PIPE)


def finish_baseline(baseline: subprocess.Popen[bytes]) -> resource.struct_rusage:
    """Waits for the baseline to handle its deliveries; returns its resource usage."""
    _, status, usage = os.wait4(baseline.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the baseline failed"
    return usage


def start_profiler(pid: int, work: Path) -> subprocess.Popen[bytes]:
    """py-spy samples the worker until interrupted; ``write_profile`` summarises."""
    command = ["py-spy", "record", "--pid", str(pid), "--rate", "500", "--format", "raw", "--output", str(work / "profile.raw")]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_profile(raw: Path, out: Path, top: int = 20) -> None:
    """The functions the worker spent its samples in, by own time, and the connector's by inclusive time."""
    own: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        # A function once per sample, whichever lines it was at; the entry points hold the event loop: 100%.
        functions = {frame.rsplit(":", 1)[0] + ")" for frame in frames if "(connector/" in frame}
        for function in functions - {"<module> (connector/__main__.py)", "run (connector/cli.py)", "main (connector/cli.py)"}:
            inclusive[function] += samples

    def table(title: str, counts: dict[str, int]) -> list[str]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [title, *(f"{100 * n / total:5.1f}%  {frame}" for frame, n in ranked), ""]

    out.write_text(
        "\n".join(
            [f"{total} samples", "", *table("own time", own), *table("inclusive time, the connector's functions", inclusive)]
        )
    )


def _timestamp(iso: str | None) -> float:
    assert iso is not None, "the emulator always sets lastModifiedAt"
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=int(os.environ.get("BENCH_PAYMENTS", 5000)))
    parser.add_argument("--latency-ms", type=int, default=int(os.environ.get("BENCH_LATENCY_MS", 50)))
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-load", type=float, default=0.5, help="latency phase load, as a share of the throughput")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    line = json.dumps({"bench": figures}, sort_keys=True)
    (HERE / "result.json").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
