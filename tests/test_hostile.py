"""Hostile and malformed deliveries, kept as files in tests/hostile/, against a running worker.

- ``dead_lettered/``: not a valid subscription message; dead-lettered with a reason.
- ``ignored/``: valid, but nothing for us (other types, other resources, our own writes); acknowledged.
- ``skipped/``: a payment that no longer exists; acknowledged.
- ``payments/``: a payment draft, an optional patch of its PaymentCreated delivery, and what must
  become of its transactions (``states``, all of them) and of its paymentStatus (``code``).
Each case gets one structured log line, the worker stays up, and nothing else changes.
"""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from connector.commercetools.client import CommercetoolsClient
from tests.queues import EventQueue
from tests.stack import messages
from tests.stack.payments import as_json
from tests.support import CLIENT_SECRET, settings_for

pytestmark = pytest.mark.reliability

CASES = Path(__file__).parent / "hostile"
TOKEN = "pm_hostile_token_9876"


def files(kind: str) -> list[Path]:
    return sorted((CASES / kind).iterdir())


def patched(delivery: bytes, patch: dict[str, Any]) -> bytes:
    message = json.loads(delivery)
    for field, changes in patch.items():
        message[field].update(changes)
    return json.dumps(message).encode()


async def test_hostile_deliveries(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, reliability_report: dict[str, Any]
) -> None:
    """Every hostile case is dead-lettered, ignored, skipped or failed readably, and the worker goes on."""
    payment_cases = {path.name: json.loads(path.read_text()) for path in files("payments")}
    payments = {name: await ct.create_payment(case["draft"]) for name, case in payment_cases.items()}
    dead, ignored, skipped = (files(kind) for kind in ("dead_lettered", "ignored", "skipped"))
    if queue.name == "pubsub":
        dead = [path for path in dead if path.stat().st_size]  # Pub/Sub refuses to carry an empty message

    def read(path: Path) -> bytes:  # the files name the project "hostile": a worker refuses another project's
        return path.read_bytes().replace(b'"projectKey": "hostile"', f'"projectKey": "{project_key}"'.encode())

    bodies = [read(path) for path in (*dead, *ignored, *skipped)]
    bodies += [
        patched(messages.payment_created(project_key, as_json(payments[name]), "platform"), case["patch"])
        for name, case in payment_cases.items()
    ]
    assert len(bodies) >= 30
    await queue.publish(bodies)

    settings = settings_for(
        queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "l.sqlite", max_delivery_bytes=64 * 1024
    )
    from connector.app import run_worker

    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        worker = asyncio.create_task(run_worker(settings, stop))
        dead_letters = await queue.dead_letters(len(dead), timeout_s=60)
        async with asyncio.timeout(60):
            while sum(1 for line in logs if line["event"] in ("delivery.processed", "delivery.ignored")) < len(bodies) - len(
                dead
            ):
                await asyncio.sleep(0.2)
        assert not worker.done(), "the worker stopped"
        stop.set()
        await asyncio.wait_for(worker, timeout=30)

    assert sorted(body for body, _ in dead_letters) == sorted(read(path) for path in dead)
    assert all(headers["reason"] for _, headers in dead_letters)
    events = [line["event"] for line in logs]
    assert events.count("delivery.dead_lettered") == len(dead)
    assert events.count("delivery.ignored") == len(ignored)
    outcomes = [line["outcome"] for line in logs if line["event"] == "delivery.processed"]
    assert outcomes.count("payment_not_found") == len(skipped)
    assert outcomes.count("not_ours") == sum(1 for case in payment_cases.values() if case["expect"]["outcome"] == "not_ours")

    for name, case in payment_cases.items():
        before, after = payments[name], await ct.get_payment(payments[name].id)
        expect = case["expect"]
        assert [t.state.value for t in after.transactions] == expect["states"], name
        if expect["outcome"] == "not_ours":
            assert after.version == before.version, f"{name}: a payment that is not ours was changed"
            continue
        text = after.payment_status.interface_text or ""
        assert text.startswith(f"{expect['code']}: ") and text.isprintable(), name

    logged = json.dumps(logs, default=str)
    assert TOKEN not in logged and CLIENT_SECRET not in logged
    assert await queue.unfinished() == 0
    reliability_report["cases_run"] = reliability_report.get("cases_run", 0) + 1
    reliability_report["bad_inputs_tried"] = reliability_report.get("bad_inputs_tried", 0) + len(bodies)
