"""Two worker processes on one payment while the PSP works longer than the 30 s the claim lease once was.

The strict sandbox works 35 s on the request and, like Stripe, answers "in progress" to a second
request with the same key meanwhile; its request runs to its end even when its caller gives up. Both
workers read every delivery (two consumer groups), as a duplicate delivery or a rebalance makes two
workers meet on one payment. The lease is derived from the settings (docs/design.md, 'The claim
lease'), so it outlasts the call: one execution, and commercetools shows what the PSP did.
"""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from connector.commercetools.client import CommercetoolsClient
from tests.queues import EventQueue
from tests.sandbox_ledger import executions
from tests.stack import messages
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.support import sandbox_route, worker_environment

PSP_WORKS_MS = 35_000


def events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]


@pytest.mark.e2e
@pytest.mark.timeout(400)
@pytest.mark.parametrize("queue", ["kafka"], indirect=True)
@pytest.mark.parametrize(
    "delivery_timeout_s",
    [pytest.param(60, id="the call outlives the old lease"), pytest.param(20, id="the delivery timeout cancels the attempt")],
)
async def test_two_workers_one_slow_psp_call_execute_once_and_store_the_psps_outcome(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, delivery_timeout_s: int
) -> None:
    """With a 20 s delivery timeout, the first attempt is cancelled while its request still runs at the
    PSP: its claim is not taken back early, and the worker that takes over finds the PSP's outcome."""
    ledger = tmp_path / "ledger.sqlite"
    payment = await ct.create_payment(payment_draft(2500, (), (("Charge", 2500),)))
    base = worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=[sandbox_route(ledger, PSP_WORKS_MS)])
    # Debug: a delivery that did its work logs "delivery.processed" at debug only, and the test waits on it.
    base |= {"CONNECTOR_DELIVERY_TIMEOUT_S": str(delivery_timeout_s), "CONNECTOR_LOG_LEVEL": "debug"}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = []
    for log, group in zip(logs, ("a", "b"), strict=True):
        environment = base | {"KAFKA_GROUP_ID": f"{base['KAFKA_GROUP_ID']}-{group}"}
        with log.open("wb") as stderr:
            workers.append(subprocess.Popen([sys.executable, "-m", "connector", "run"], env=environment, stderr=stderr))
    try:
        await queue.publish([messages.payment_created(project_key, as_json(payment), "platform")])
        [settled] = await wait_until_settled(ct, [payment.id], timeout_s=240)
        async with asyncio.timeout(240):  # both workers are done with the delivery
            while sum(any(e["event"] == "delivery.processed" for e in events(log)) for log in logs) < 2:
                await asyncio.sleep(0.5)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            await asyncio.to_thread(worker.wait, 30)
    [execution] = executions(ledger)
    [transaction] = settled.transactions
    assert (transaction.state.value, transaction.interaction_id) == (execution.state.value, execution.psp_reference)
    everything = [e for log in logs for e in events(log)]
    assert any(e["event"] == "delivery.retrying" and "ClaimHeld" in str(e["error"]) for e in everything)
    assert not any(e["event"] == "transaction.outcome" and e.get("state") == "Failure" for e in everything)
    if delivery_timeout_s < PSP_WORKS_MS / 1000:
        assert any(e["event"] == "transaction.found_at_psp" for e in everything)
        assert execution.calls == 1  # the takeover asked what the PSP did, and called nothing
