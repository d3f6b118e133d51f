"""``connector replay`` on both sources: an operator's story from dead letter to processed payment."""

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from connector.adapters.registry import AdapterRegistry, AdapterRoute
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger
from connector.commercetools.client import CommercetoolsClient
from connector.processor.decisions import claim_actions, plan_work
from connector.replay import ReplayFilter, payment_id_of
from tests.queues import EventQueue, PubSubQueue
from tests.sandbox_ledger import executions
from tests.stack import messages
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.support import INTERACTION_TYPE_KEY, running_worker, sandbox_route, settings_for, worker_environment


@pytest.mark.timeout(600)  # the Pub/Sub emulator may hold a message for the stopped worker's stream for minutes
async def test_replay_moves_the_chosen_dead_letters_back_and_a_dry_run_moves_nothing(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """A payment of PSP account 'eu', claimed before by a worker that had that route, meets workers
    without it: dead-lettered, since what the PSP did cannot be asked. The operator restores the route
    and replays that one delivery; the unreadable one beside it stays a dead letter."""
    draft = payment_draft(1000, (), (("Charge", 1000),))
    draft["paymentMethodInfo"]["interfaceAccount"] = "eu"
    payment = await ct.create_payment(draft)
    long_ago, lease = datetime.now(UTC) - timedelta(hours=1), timedelta(seconds=30)
    plan = plan_work(payment, now=long_ago, lease=lease)
    claim = claim_actions(plan.work, type_key=INTERACTION_TYPE_KEY, now=long_ago, lease=lease, attempt="gone")
    await ct.update_payment(payment.id, payment.version, claim)
    await queue.publish([b"not json at all", messages.payment_created(project_key, as_json(payment), "platform")])
    ledger = tmp_path / "l.sqlite"
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=ledger)):
            async with asyncio.timeout(60):
                while sum(line["event"] == "delivery.dead_lettered" for line in logs) < 2:
                    await asyncio.sleep(0.2)
    reasons = sorted(line["reason"] for line in logs if line["event"] == "delivery.dead_lettered")
    assert any("no longer configured" in reason for reason in reasons), reasons

    eu = sandbox_route(ledger) | {"account": "eu"}
    env = os.environ | worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=[sandbox_route(ledger), eu])
    if isinstance(queue, PubSubQueue):
        env["PUBSUB_DEAD_LETTER_SUBSCRIPTION"] = f"{queue.dead_letter_topic}-reader"

    dry = await _replay(env, tmp_path, "--dry-run", "--reason", "NO LONGER CONFIGURED")
    assert (dry["examined"], dry["matched"], dry["moved"]) == (2, 1, 0)
    assert [m["payment_id"] for m in dry["matches"]] == [payment.id]
    assert (await ct.get_payment(payment.id)).transactions[0].state.value == "Initial"  # a dry run moves nothing

    moved = await _replay(env, tmp_path, "--reason", "no longer configured", "--older-than-s", "0")
    assert (moved["matched"], moved["moved"], moved["older_than_key_retention"]) == (1, 1, 0)

    restored = settings_for(
        queue, ct_url=ct_url, project_key=project_key, ledger=ledger, routes=[AdapterRoute.model_validate(eu)]
    )
    async with running_worker(restored):
        # The Pub/Sub emulator may first hand the message to the stream of the worker stopped above, and
        # redeliver it only after that stream's lease: minutes at worst (see the reliability suite).
        [settled] = await wait_until_settled(ct, [payment.id], timeout_s=420)
    assert settled.transactions[0].state.value == "Success"
    assert [e.calls for e in executions(ledger)] == [1]

    left = await _replay(env, tmp_path, "--dry-run")
    assert None in [m["payment_id"] for m in left["matches"]]  # the unreadable one is still a dead letter
    assert "not valid JSON" in " ".join(m["reason"] for m in left["matches"])


async def _replay(env: dict[str, str], cwd: Path, *arguments: str) -> dict[str, Any]:
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "connector", "replay", *arguments],
        env=env, capture_output=True, text=True, timeout=120, cwd=cwd, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


class _Letter:
    def __init__(self, body: bytes, reason: str, age_s: float) -> None:
        self.body, self.reason, self.age_s, self.position = body, reason, age_s, "t/0@1"

    async def move(self) -> None:  # pragma: no cover - the filter alone is tested here
        raise AssertionError


def test_the_filter_chooses_by_reason_age_and_payment() -> None:
    body = messages.payment_created(
        "p", {"id": "pay-1", "version": 1, "amountPlanned": {"centAmount": 1, "currencyCode": "EUR"}}, "platform"
    )
    letter = _Letter(body, "PermanentError: transaction claimed before", age_s=3600)
    assert payment_id_of(body) == "pay-1" and payment_id_of(b"not json") is None
    assert ReplayFilter().matches(letter, "pay-1")
    assert ReplayFilter(reason="CLAIMED BEFORE").matches(letter, "pay-1")
    assert not ReplayFilter(reason="gave up").matches(letter, "pay-1")
    assert ReplayFilter(older_than_s=600).matches(letter, "pay-1") and not ReplayFilter(older_than_s=7200).matches(
        letter, "pay-1"
    )
    assert ReplayFilter(newer_than_s=7200).matches(letter, "pay-1") and not ReplayFilter(newer_than_s=60).matches(letter, "pay-1")
    assert ReplayFilter(payment_ids=frozenset({"pay-1"})).matches(letter, "pay-1")
    assert not ReplayFilter(payment_ids=frozenset({"pay-2"})).matches(letter, "pay-1")


async def test_a_replay_warns_of_deliveries_older_than_the_keys_where_nothing_can_be_looked_up() -> None:
    from connector.replay import replay

    class Letters:
        def __init__(self) -> None:
            self.done_with: bool | None = None

        async def letters(self):  # type: ignore[no-untyped-def]
            yield _Letter(b"x", "r", age_s=90_000)
            yield _Letter(b"y", "r", age_s=60)

        async def done(self, *, moved_any: bool) -> None:
            self.done_with = moved_any

    registry = AdapterRegistry({("sandbox", None): SandboxAdapter(SandboxLedger(":memory:"))})  # keys kept a day
    with_lookup = await replay(Letters(), ReplayFilter(), dry_run=True, keys_forgotten_after_s=registry.keys_forgotten_after_s())
    assert with_lookup.older_than_key_retention == 0  # the sandbox can look a transaction up
    report = await replay(Letters(), ReplayFilter(), dry_run=True, keys_forgotten_after_s={"acme": 86_400.0})
    assert (report.matched, report.moved, report.older_than_key_retention) == (2, 0, 1)
    assert report.matches[0]["older_than_key_retention"] is True
    await registry.aclose()
