"""The operations endpoint of a running worker: /healthz, /readyz and /metrics, against the real peers."""

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.commercetools.client import CommercetoolsClient
from connector.errors import ConfigurationError
from connector.metrics import Metrics
from connector.models.payment import Payment
from connector.ops_http import OpsServer
from tests.fault_proxies import FaultyHttp, free_port
from tests.queues import EventQueue, KafkaQueue
from tests.stack import messages
from tests.stack.kafka import LocalKafka
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.support import running_worker, settings_for

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    response.raise_for_status()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def matching(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.mark.parametrize("queue", ["kafka"], indirect=True)  # consumer lag is a Kafka series
async def test_metrics_move_during_a_run_and_healthz_ignores_a_commercetools_outage(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    port = free_port()
    async with FaultyHttp(ct_url) as faults, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        settings = settings_for(
            queue, ct_url=f"http://127.0.0.1:{faults.port}", project_key=project_key, ledger=tmp_path / "ledger.sqlite",
            latency_ms=500, http_host="127.0.0.1", http_port=port,  # PSP calls long enough for a scrape to see them
        )  # fmt: skip
        async with running_worker(settings):
            async with asyncio.timeout(60):
                while (await _get_or_none(http, "/readyz")) != 200:
                    await asyncio.sleep(0.1)

            # 40 charges (every fourth declined by the sandbox) and one unreadable delivery.
            payments = [await ct.create_payment(payment_draft(a, (), (("Charge", a),))) for a in [1000, 1000, 1000, 1013] * 10]
            created = [messages.payment_created(project_key, as_json(p), "platform") for p in payments]
            await queue.publish([b"{not json", *created])
            busy = {"in_flight": 0.0, "lag": 0.0}
            while True:  # scrape first: reading 40 payments back takes longer than a scrape
                samples = await scrape(http)
                busy["in_flight"] = max(busy["in_flight"], value(samples, "connector_in_flight"))
                busy["lag"] = max(busy["lag"], sum(matching(samples, "connector_consumer_lag").values()))
                if all(t.state.value != "Initial" for p in await _all(ct, payments) for t in p.transactions):
                    break
                await asyncio.sleep(0.05)
            async with asyncio.timeout(30):  # the lag returns to 0 once the last offsets are committed
                while sum(matching(after_run := await scrape(http), "connector_consumer_lag").values()) > 0:
                    await asyncio.sleep(0.1)

            # Another writer between claim and outcome: the outcome write meets a 409.
            contested = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
            await queue.publish([messages.payment_created(project_key, as_json(contested), "platform")])
            await _write_once_claimed(ct, contested)
            await wait_until_settled(ct, [contested.id], timeout_s=30)

            # commercetools answers 503 for 3 s while a delivery is processed: liveness stays green.
            late = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
            outage = faults.burst(503, seconds=3)
            await queue.publish([messages.payment_created(project_key, as_json(late), "platform")])
            liveness = []
            while not outage.done():
                liveness.append((await http.get("/healthz")).status_code)
                await asyncio.sleep(0.2)
            await wait_until_settled(ct, [late.id], timeout_s=60)
            final = await scrape(http)

    assert busy["in_flight"] > 0 and busy["lag"] > 0, busy
    assert value(after_run, "connector_deliveries_total", message_type="PaymentCreated", result="done") == 40
    assert value(after_run, "connector_deliveries_total", message_type="unreadable", result="dead_lettered") == 1
    assert value(after_run, "connector_dead_letters_total") == 1
    assert value(after_run, "connector_transactions_total", operation="Charge", outcome="Success") == 30
    assert value(after_run, "connector_transactions_total", operation="Charge", outcome="Failure") == 10
    assert value(after_run, "connector_psp_call_seconds_count", interface="sandbox", operation="charge") == 40
    assert value(after_run, "connector_psp_call_seconds_bucket", interface="sandbox", operation="charge", le="0.05") == 0
    assert value(after_run, "connector_commercetools_requests_total", method="POST", status="200") >= 80  # claim, outcome
    assert set(matching(after_run, "connector_consumer_lag").values()) == {0.0}
    assert value(after_run, "connector_in_flight") == 0

    assert value(final, "connector_conflicts_total", write="outcome") >= 1
    assert faults.answered.get(503), "the outage met no request"
    assert (
        value(final, "connector_commercetools_requests_total", method="GET", status="503")
        + value(final, "connector_commercetools_requests_total", method="POST", status="503")
        == faults.answered[503]
    )
    # Each 503 was followed by a retry of the request or, once those ran out, of the whole delivery.
    retries = value(final, "connector_retries_total", target="commercetools")
    assert retries > 0 and retries + value(final, "connector_retries_total", target="delivery") == faults.answered[503]
    assert liveness and set(liveness) == {200}, liveness
    assert value(final, "connector_deliveries_total", message_type="PaymentCreated", result="done") == 42


async def test_readyz_waits_for_the_source_and_healthz_does_not(ct_url: str, project_key: str, tmp_path: Path) -> None:
    """The broker is down when the worker starts: alive at once, ready only once it has subscribed."""
    port, broker_port = free_port(), free_port()
    queue = KafkaQueue(f"127.0.0.1:{broker_port}")
    settings = settings_for(
        queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "ledger.sqlite", http_host="127.0.0.1", http_port=port
    )
    with contextlib.ExitStack() as broker:  # stopped after the worker
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http, running_worker(settings):
            async with asyncio.timeout(30):
                while (await _get_or_none(http, "/healthz")) != 200:
                    await asyncio.sleep(0.1)
            for _ in range(10):  # for two seconds, nothing to subscribe to
                response = await http.get("/readyz")
                assert response.status_code == 503
                assert response.json()["checks"]["source_subscribed"] is False
                assert (await http.get("/healthz")).status_code == 200
                await asyncio.sleep(0.2)
            broker.enter_context(LocalKafka(port=broker_port))
            await queue.create()  # the worker waits for its topics too, within KAFKA_START_TIMEOUT_S
            async with asyncio.timeout(60):
                while (await _get_or_none(http, "/readyz")) != 200:
                    await asyncio.sleep(0.2)
            assert (await http.get("/readyz")).json() == {
                "ready": True,
                "checks": {
                    "commercetools_token": True, "source_subscribed": True,
                    "commercetools_answering": True, "psp:sandbox_answering": True,
                },
            }  # fmt: skip


async def _get_or_none(http: httpx.AsyncClient, path: str) -> int | None:
    try:
        return (await http.get(path)).status_code
    except httpx.TransportError:
        return None


async def _all(ct: CommercetoolsClient, payments: list[Payment]) -> list[Payment]:
    return [await ct.get_payment(p.id) for p in payments]


async def _write_once_claimed(ct: CommercetoolsClient, payment: Payment) -> None:
    """Changes the payment as soon as the worker's claim shows, while its PSP call (100 ms) runs."""
    async with asyncio.timeout(30):
        while True:
            current = await ct.get_payment(payment.id)
            if current.interface_interactions:
                await ct.update_payment(current.id, current.version, [{"action": "setKey", "key": "other-writer"}])
                return
            await asyncio.sleep(0.01)


async def test_a_port_in_use_is_a_clear_configuration_error() -> None:
    """Two workers on one host with one CONNECTOR_HTTP_PORT: the second says which setting to change."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"CONNECTOR_HTTP_PORT {port} on 127.0.0.1 cannot be used"):
            async with OpsServer("127.0.0.1", port, Metrics().registry, {}):
                pass
