"""The notification receiver on its own: bad input kept as files in tests/hostile/notifications/, and
what it queues. The queue here is an in-memory list (a fake, for what the receiver hands on and for
a queue that fails or hangs); test_notifications.py runs the receiver on real Kafka and Pub/Sub."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog
from pydantic import SecretStr

from connector.adapters.registry import AdapterRegistry, AdapterRoute
from connector.app import build_parts
from connector.config import CommercetoolsSettings, KafkaSettings, Settings, WorkerSettings, without_files
from connector.errors import ConfigurationError
from connector.metrics import Metrics
from connector.models.delivery import parse_delivery
from connector.models.notice import NoticeTrigger
from connector.public_http import PublicServer
from connector.receiver import Receiver, ReceiverLimits
from tests.notices import WEBHOOK_SECRET, body_of, event, signed
from tests.stack import free_port

CASES = sorted((Path(__file__).parent / "hostile" / "notifications").glob("*.json"))
MAX_BODY = 256 * 1024


@dataclass
class ListQueue:
    published: list[tuple[str, bytes]] = field(default_factory=list)
    failing: Exception | None = None
    hanging: bool = False

    async def publish(self, key: str, body: bytes) -> None:
        if self.hanging:
            await asyncio.sleep(3600)
        if self.failing is not None:
            raise self.failing
        self.published.append((key, body))


@dataclass
class Listening:
    url: str
    queue: ListQueue


@pytest.fixture
async def listening(tmp_path: Path) -> AsyncIterator[Listening]:
    routes = [
        AdapterRoute(
            interface="STRIPE", adapter="stripe", settings={"secret_key": "sk_test_r", "webhook_secrets": [WEBHOOK_SECRET]}
        ),
        AdapterRoute(interface="sandbox", adapter="sandbox", settings={"ledger_path": str(tmp_path / "ledger.sqlite")}),
    ]
    registry = AdapterRegistry.load(routes)
    queue = ListQueue()
    port = free_port()
    receiver = Receiver(registry, queue, ReceiverLimits(MAX_BODY, request_timeout_s=1.0), Metrics())
    try:
        async with PublicServer([receiver.add_routes], "127.0.0.1", port, MAX_BODY):
            yield Listening(f"http://127.0.0.1:{port}", queue)
    finally:
        await registry.aclose()


def request_of(case: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    if "body_hex" in case:
        body = bytes.fromhex(case["body_hex"])
    elif "body_repeat" in case:
        body = case["body_repeat"]["text"].encode() * case["body_repeat"]["times"]
    else:
        body = case["body"].encode()
    now = int(time.time())
    sign = case["sign"]
    if sign == "none":
        headers: dict[str, str] = {}
    elif isinstance(sign, dict):
        headers = {"Stripe-Signature": sign["header"].replace("{now}", str(now))}
    else:
        secret = "whsec_test_another_endpoint" if sign == "wrong" else WEBHOOK_SECRET
        at = {"stale": now - 600, "future": now + 600, "replayed": now - 86_400}.get(sign, now)
        headers = signed(body, [secret], at)
        if sign == "replayed":  # the old genuine signature, with a fresh timestamp (spaced) before the old one
            old_t, v1 = headers["Stripe-Signature"].split(",", 1)
            headers["Stripe-Signature"] = f"{v1}, t={now},{old_t}"
    if case.get("tamper"):
        body = body.replace(b'"created"', b'"amount": 999999, "created"')
    return case.get("path", "/notifications/stripe"), body, headers


@pytest.mark.reliability
async def test_bad_notifications_are_refused_readably(listening: Listening, reliability_report: dict[str, Any]) -> None:
    """Each kept case: its 4xx, one clear log line naming what is wrong (never the body), nothing queued."""
    assert len(CASES) >= 15
    reliability_report["bad_notifications_tried"] = reliability_report.get("bad_notifications_tried", 0) + len(CASES)
    async with httpx.AsyncClient(timeout=10) as http:
        for path in CASES:
            case = json.loads(path.read_text())
            where, body, headers = request_of(case)
            with structlog.testing.capture_logs() as logs:
                response = await http.post(listening.url + where, content=body, headers=headers)
            assert response.status_code == case["status"], (path.name, response.text)
            refused = [line for line in logs if line["event"] == "notification.refused"]
            assert len(refused) == 1, (path.name, logs)
            assert case["reason"] in refused[0]["reason"], (path.name, refused[0]["reason"])
            assert refused[0]["status"] == case["status"]
            if b"hostile0001" in body:  # nothing of the body is repeated in the log line or the answer
                assert "hostile0001" not in repr(refused[0]) and "hostile0001" not in response.text, path.name
    assert listening.queue.published == []


async def test_a_genuine_notification_is_queued_without_its_snapshot(listening: Listening) -> None:
    intent = {"id": "pi_genuine01", "object": "payment_intent", "status": "succeeded", "amount": 1000,
              "payment_method": "pm_card_visa", "metadata": {"ctPaymentId": "pay-1", "ctTransactionId": "t-1"}}  # fmt: skip
    document = event("payment_intent.succeeded", intent)
    body = body_of(document)
    async with httpx.AsyncClient() as http:
        response = await http.post(listening.url + "/notifications/STRIPE", content=body, headers=signed(body))
    assert response.status_code == 200
    [(key, queued)] = listening.queue.published
    assert key == "pay-1"
    trigger = parse_delivery(queued)
    assert isinstance(trigger, NoticeTrigger)
    assert (trigger.interface, trigger.account) == ("STRIPE", None)
    assert (trigger.notice.event_id, trigger.notice.object_id, trigger.notice.payment_id) == (
        document["id"],
        "pi_genuine01",
        "pay-1",
    )
    assert b"pm_card_visa" not in queued and b"status" not in queued  # the worker looks the object up fresh


@pytest.mark.parametrize("obj", [{"id": "cus_1", "object": "customer"}, {"object": "balance"}])
async def test_other_event_types_are_acknowledged_and_dropped(listening: Listening, obj: dict[str, Any]) -> None:
    """Whatever their object holds (a balance has no id): never refused, or Stripe would retry for days."""
    body = body_of(event("customer.created" if "id" in obj else "balance.available", obj))
    async with httpx.AsyncClient() as http:
        response = await http.post(listening.url + "/notifications/stripe", content=body, headers=signed(body))
    assert response.status_code == 200 and response.json()["ignored"] is True
    assert listening.queue.published == []


@pytest.mark.parametrize("fault", ["failing", "hanging"])
async def test_a_queue_that_fails_gets_503_so_the_psp_redelivers(listening: Listening, fault: str) -> None:
    """A fake queue that raises, or never answers (bounded by the request timeout): not accepted."""
    if fault == "failing":
        listening.queue.failing = ConnectionError("broker gone")
    else:
        listening.queue.hanging = True
    body = body_of(event("payment_intent.succeeded", {"id": "pi_q1", "object": "payment_intent"}))
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(listening.url + "/notifications/stripe", content=body, headers=signed(body))
    assert response.status_code == 503
    assert time.monotonic() - started < 5
    assert orjson.loads(response.content) == {"received": False}


def test_a_worker_refuses_a_route_without_psp_credentials(tmp_path: Path) -> None:
    """What the receiver runs with (webhook secrets only) cannot serve a worker: refused at start-up."""
    route = AdapterRoute(interface="STRIPE", adapter="stripe", settings={"webhook_secrets": [WEBHOOK_SECRET]})
    settings = Settings(
        without_files(CommercetoolsSettings, project_key="p", client_id="c", client_secret=SecretStr("s")),
        without_files(WorkerSettings, adapters=[route]),
        kafka=without_files(KafkaSettings, bootstrap_servers="127.0.0.1:1", topic="t"),
    )
    with pytest.raises(ConfigurationError, match=r"stripe/\(default\) has no PSP credentials"):
        build_parts(settings)


async def test_beyond_the_in_flight_bound_the_receiver_answers_503_at_once(tmp_path: Path) -> None:
    """A hanging queue (a fake) holds the first request: the second finds the bound reached."""
    routes = [AdapterRoute(interface="STRIPE", adapter="stripe", settings={"webhook_secrets": [WEBHOOK_SECRET]})]
    registry = AdapterRegistry.load(routes)
    queue = ListQueue(hanging=True)
    port = free_port()
    receiver = Receiver(registry, queue, ReceiverLimits(MAX_BODY, request_timeout_s=3.0, max_in_flight=1), Metrics())
    body = body_of(event("payment_intent.succeeded", {"id": "pi_b1", "object": "payment_intent"}))
    try:
        async with PublicServer([receiver.add_routes], "127.0.0.1", port, MAX_BODY), httpx.AsyncClient(timeout=10) as http:
            url = f"http://127.0.0.1:{port}/notifications/stripe"
            first = asyncio.create_task(http.post(url, content=body, headers=signed(body)))
            async with asyncio.timeout(5):
                while receiver._in_flight == 0:
                    await asyncio.sleep(0.01)
            second = await http.post(url, content=body, headers=signed(body))
            assert second.status_code == 503 and second.json()["error"] == "busy"
            assert (await first).status_code == 503  # the hanging queue, after the request timeout
    finally:
        await registry.aclose()


async def test_the_receivers_own_bound_holds_on_a_larger_listener() -> None:
    """The Payments API may raise the listener's limit: a chunked notification above NOTIFY_MAX_BODY_BYTES
    is still refused."""
    routes = [AdapterRoute(interface="STRIPE", adapter="stripe", settings={"webhook_secrets": [WEBHOOK_SECRET]})]
    registry = AdapterRegistry.load(routes)
    queue = ListQueue()
    port = free_port()
    receiver = Receiver(registry, queue, ReceiverLimits(64 * 1024, request_timeout_s=3.0), Metrics())

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bound is met while reading
        for _ in range(5):
            yield b"x" * 30_000

    try:
        async with PublicServer([receiver.add_routes], "127.0.0.1", port, 1024 * 1024), httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"http://127.0.0.1:{port}/notifications/stripe", content=chunks())
    finally:
        await registry.aclose()
    assert response.status_code == 413 and queue.published == []
