"""The reconciler against the emulator and the sandbox: payments no delivery came for, and Pending
transactions no notice settled, found by query and completed through the same protocol."""

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connector.adapters.registry import AdapterRegistry
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger
from connector.commercetools.client import CommercetoolsClient
from connector.processor.reconcile import Processor, ProcessorSettings
from connector.reconciler import Reconciler, ReconcilerSettings, candidates_query
from tests.queues import EventQueue, KafkaQueue
from tests.sandbox_ledger import executions
from tests.stack import messages
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.support import INTERACTION_TYPE_KEY, QUICK_LEASE, running_worker, sandbox_route, settings_for, worker_environment

# With the sandbox and these settings the derived claim lease is about 6 s: the reconciler leaves
# payments changed within it to their deliveries.
QUICK = {"delivery_timeout_s": 5.0, "max_clock_skew_s": 0.0}
INTERVAL_S = 3.0


async def test_a_payment_whose_delivery_never_came_is_completed_within_one_interval(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    payment = await ct.create_payment(payment_draft(1000, (), (("Authorization", 1000), ("Charge", 1000))))  # never published
    ledger = tmp_path / "l.sqlite"
    settings = settings_for(
        queue, ct_url=ct_url, project_key=project_key, ledger=ledger, reconcile_interval_s=INTERVAL_S, **QUICK
    )
    async with running_worker(settings):
        # Quiet for a claim lease (about 6 s), then found by the first sweep after that: one interval.
        [settled] = await wait_until_settled(ct, [payment.id], timeout_s=6 + INTERVAL_S * 1.1 + 5)
    assert [t.state.value for t in settled.transactions] == ["Success", "Success"]
    assert sorted(e.calls for e in executions(ledger)) == [1, 1]
    assert await queue.unfinished() == 0  # nothing came through the queue


async def test_a_pending_transaction_is_settled_through_the_adapters_look_up(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """The PSP answers Pending (amount ending in 42) and decides later; no notice comes. Once it has been
    Pending for CONNECTOR_RECONCILE_PENDING_AGE_S, the reconciler asks the PSP and stores its decision."""
    payment = await ct.create_payment(payment_draft(1042, (), (("Charge", 1042),)))
    await queue.publish([messages.payment_created(project_key, as_json(payment), "platform")])
    ledger = tmp_path / "l.sqlite"
    settings = settings_for(
        queue, ct_url=ct_url, project_key=project_key, ledger=ledger,
        reconcile_interval_s=INTERVAL_S, reconcile_pending_age_s=2.0, **QUICK,
    )  # fmt: skip
    settings.worker.adapters[0].settings["pending_settles_s"] = 1.0
    async with running_worker(settings):
        async with asyncio.timeout(30):
            while (await ct.get_payment(payment.id)).transactions[0].state.value != "Pending":
                await asyncio.sleep(0.2)
        async with asyncio.timeout(6 + INTERVAL_S * 2 + 10):
            while (settled := await ct.get_payment(payment.id)).transactions[0].state.value == "Pending":
                await asyncio.sleep(0.2)
    [charge] = settled.transactions
    assert charge.state.value == "Success"
    [executed] = executions(ledger)
    assert executed.calls == 1 and charge.interaction_id == executed.psp_reference  # asked, never charged again
    responses = [i.fields for i in settled.interface_interactions if i.fields.get("type") == "response"]
    assert [json.loads(r["response"])["state"] for r in responses] == ["Pending", "Success"]


async def test_a_second_replica_leaves_the_turn_to_the_first(
    ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """Two replicas on one interval: the one that wrote the turn sweeps; the other skips the interval."""
    processor = Processor(
        ct, AdapterRegistry({("sandbox", None): SandboxAdapter(SandboxLedger(tmp_path / "l.sqlite"))}),
        ProcessorSettings(project_key=project_key, interaction_type_key=INTERACTION_TYPE_KEY),
    )  # fmt: skip
    interface = f"turn-{os.getpid()}-{id(processor)}"  # a turn of its own in the shared project
    replicas = [
        Reconciler(ct, processor, [interface], ReconcilerSettings(interval_s=60), lease_s=6, replica=name) for name in ("a", "b")
    ]
    assert [await replica._take_turn() for replica in replicas] == [True, False]
    turn = await ct.custom_object("commercetools-payment-connector", f"reconciler-{interface}")
    assert turn is not None and turn["value"]["by"] == "a"


async def test_the_query_pages_by_id_within_its_window(ct: CommercetoolsClient) -> None:
    """The predicates the reconciler sends, answered by the emulator: only the routed interface's payments
    with Initial or Pending transactions, changed within the window, every one once across pages."""
    interface = f"paging-{os.getpid()}"
    drafts: list[dict[str, Any]] = [payment_draft(1000, (), (("Charge", 1000),)) for _ in range(7)]
    drafts.append(payment_draft(1000, (("Charge", 1000),), ()))  # settled: not a candidate
    for draft in drafts:
        draft["paymentMethodInfo"]["paymentInterface"] = interface
    created = [await ct.create_payment(draft) for draft in drafts]
    now = datetime.now(UTC)
    seen: list[str] = []
    after = None
    while True:
        page = await ct.query_payments(
            candidates_query([interface], now - timedelta(hours=1), now + timedelta(seconds=5), after, 3)
        )
        seen += [p.id for p in page]
        if len(page) < 3:
            break
        after = page[-1].id
    assert seen == sorted(p.id for p in created[:7])
    later = await ct.query_payments(candidates_query([interface], now + timedelta(seconds=5), now + timedelta(hours=1), None, 3))
    assert later == []


async def test_connector_reconcile_sweeps_once_and_reports(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    interface = f"oneshot-{os.getpid()}"
    draft = payment_draft(1000, (), (("Charge", 1000),))
    draft["paymentMethodInfo"]["paymentInterface"] = interface
    payment = await ct.create_payment(draft)
    route = sandbox_route(tmp_path / "l.sqlite") | {"interface": interface}
    env = os.environ | worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=[route]) | QUICK_LEASE
    await asyncio.sleep(7)  # older than the claim lease, as a stuck payment is
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "connector", "reconcile"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["examined"] == 1 and report["driven"] == 1
    assert (await ct.get_payment(payment.id)).transactions[0].state.value == "Success"


def test_query_literals_are_escaped() -> None:
    """Interface names come from settings: a quote in one cannot end the predicate's string early."""
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    params = candidates_query(['we"ird\\'], now - timedelta(days=7), now, 'id"x', 50)
    where = [value for name, value in params if name == "where"]
    assert where[0] == 'paymentMethodInfo(paymentInterface in ("we\\"ird\\\\"))'
    assert where[2] == 'lastModifiedAt >= "2026-11-24T12:00:00.000Z" and lastModifiedAt < "2026-12-01T12:00:00.000Z"'
    assert where[3] == 'id > "id\\"x"'
    assert ("sort", "id asc") in params and ("withTotal", "false") in params and ("limit", "50") in params


async def test_a_pending_transaction_whose_adapter_has_no_look_up_is_left_and_counted(
    ct: CommercetoolsClient, project_key: str, tmp_path: Path
) -> None:
    interface = f"nolookup-{os.getpid()}"
    draft = payment_draft(1000, (), ())
    draft["paymentMethodInfo"]["paymentInterface"] = interface
    draft["transactions"] = [{"type": "Charge", "amount": {"currencyCode": "EUR", "centAmount": 1000}, "state": "Pending"}]
    payment = await ct.create_payment(draft)
    keyless = SandboxAdapter(SandboxLedger(tmp_path / "l.sqlite"))
    keyless.find = None  # type: ignore[assignment,method-assign]
    processor = Processor(
        ct, AdapterRegistry({(interface, None): keyless}),
        ProcessorSettings(project_key=project_key, interaction_type_key=INTERACTION_TYPE_KEY),
    )  # fmt: skip
    await asyncio.sleep(0.05)  # changed before the window's end
    settings = ReconcilerSettings(quiet_s=0.0, pending_age_s=0.01)
    report = await Reconciler(ct, processor, [interface], settings, lease_s=6).sweep()
    assert (report.examined, report.results) == (1, {"no_lookup": 1})
    assert (await ct.get_payment(payment.id)).transactions[0].state.value == "Pending"
