"""The reconcile protocol against the commercetools emulator and the sandbox PSP, without a queue."""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.contract import OperationRequest, Outcome
from connector.adapters.registry import AdapterRegistry
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger
from connector.commercetools.client import CommercetoolsClient
from connector.errors import ClaimHeld, PspUnavailable
from connector.models.delivery import PaymentTrigger
from connector.models.payment import Payment
from connector.processor.decisions import idempotency_key
from connector.processor.reconcile import Processor, ProcessorSettings
from connector.retrying import Backoff
from tests.sandbox_ledger import executions
from tests.stack.demo import as_json, payment_draft
from tests.support import INTERACTION_TYPE_KEY, ConcurrentWriter


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
async def sandbox(ledger: Path) -> AsyncIterator[SandboxAdapter]:
    adapter = SandboxAdapter(SandboxLedger(ledger))
    yield adapter


def processor_for(ct: CommercetoolsClient, adapter: Any, project_key: str, lease_s: float = 30.0) -> Processor:
    settings = ProcessorSettings(project_key=project_key, interaction_type_key=INTERACTION_TYPE_KEY, claim_lease_s=lease_s)
    return Processor(ct, AdapterRegistry({("sandbox", None): adapter}), settings)


def trigger(payment: Payment, embedded: bool = False) -> PaymentTrigger:
    return PaymentTrigger("msg-1", "PaymentCreated", payment.id, payment.version, payment if embedded else None)


def interactions(payment: Payment, kind: str) -> list[dict[str, Any]]:
    return [i.fields for i in payment.interface_interactions if i.fields.get("type") == kind]


async def test_authorization_is_executed_and_recorded(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """Claim, PSP call and outcome: state, PSP reference, both interactions and the payment status."""
    payment = await ct.create_payment(payment_draft(1000, (), (("Authorization", 1000),)))
    result = await processor_for(ct, sandbox, project_key).reconcile(trigger(payment))
    stored = await ct.get_payment(payment.id)
    [transaction] = stored.transactions
    [execution] = executions(ledger)
    assert result.outcome == "done"
    assert transaction.state.value == "Success" and transaction.interaction_id == execution.psp_reference
    [request], [response] = interactions(stored, "request"), interactions(stored, "response")
    key = idempotency_key(transaction.id, transaction.type)
    assert request["transactionId"] == response["transactionId"] == transaction.id
    assert request["idempotencyKey"] == response["idempotencyKey"] == execution.idempotency_key == key
    assert json.loads(response["request"])["paymentMethod"] == "***4242"  # the token, masked
    assert json.loads(response["response"])["code"] == "authorized"
    assert stored.payment_status.interface_code == "reserved"


async def test_redelivery_executes_nothing(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """A second delivery for a finished payment calls no PSP and writes nothing."""
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    processor = processor_for(ct, sandbox, project_key)
    await processor.reconcile(trigger(payment))
    version = (await ct.get_payment(payment.id)).version
    again = await processor.reconcile(trigger(payment, embedded=True))
    assert again.outcome == "nothing_to_do"
    assert (await ct.get_payment(payment.id)).version == version
    assert [e.calls for e in executions(ledger)] == [1]


async def test_stale_embedded_payment_is_refetched_on_conflict(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """A refund claimed on an outdated embedded copy gets a 409, refetches and still ends right."""
    payment = await ct.create_payment(payment_draft(5000, (("Charge", 5000),), (("Refund", 2000),)))
    await ct.update_payment(payment.id, payment.version, [{"action": "setKey", "key": "changed-meanwhile"}])
    await processor_for(ct, sandbox, project_key).reconcile(trigger(payment, embedded=True))
    stored = await ct.get_payment(payment.id)
    assert stored.key == "changed-meanwhile" and stored.transactions[1].state.value == "Success"
    assert len(executions(ledger)) == 1


async def test_conflict_between_claim_and_outcome_is_recomputed(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """Another writer between claim and outcome: 409, refetch, recompute, and no second PSP call."""
    payment = await ct.create_payment(payment_draft(3000, (), (("Charge", 3000),)))
    await processor_for(ct, ConcurrentWriter(sandbox, ct), project_key).reconcile(trigger(payment))
    stored = await ct.get_payment(payment.id)
    assert stored.key == "other-writer"  # the other writer's change survives
    assert stored.transactions[0].state.value == "Success"
    assert len(interactions(stored, "response")) == 1
    assert [e.calls for e in executions(ledger)] == [1]


async def test_fresh_claim_holds_and_stale_claim_is_taken_over(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """Another worker's fresh claim makes us wait; once its lease ran out we take over with the same key."""
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    transaction = payment.transactions[0]
    claim = {
        "action": "addInterfaceInteraction", "type": {"typeId": "type", "key": INTERACTION_TYPE_KEY},
        "fields": {"type": "request", "transactionId": transaction.id,
                   "idempotencyKey": idempotency_key(transaction.id, transaction.type),
                   "createdAt": datetime.now(UTC).isoformat()},
    }  # fmt: skip
    await ct.update_payment(payment.id, payment.version, [claim])
    processor = processor_for(ct, sandbox, project_key, lease_s=0.5)
    with pytest.raises(ClaimHeld):
        await processor.reconcile(trigger(payment))
    assert executions(ledger) == []
    await asyncio.sleep(0.6)
    assert (await processor.reconcile(trigger(payment))).outcome == "done"
    [execution] = executions(ledger)
    assert execution.idempotency_key == idempotency_key(transaction.id, transaction.type)


async def test_unknown_account_fails_readably(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """A payment on an account with no route fails with a readable text and no PSP call."""
    draft = payment_draft(1000, (), (("Charge", 1000),))
    draft["paymentMethodInfo"]["interfaceAccount"] = "mars"
    payment = await ct.create_payment(draft)
    await processor_for(ct, sandbox, project_key).reconcile(trigger(payment))
    stored = await ct.get_payment(payment.id)
    assert stored.transactions[0].state.value == "Failure"
    assert "mars" in (stored.payment_status.interface_text or "")
    assert executions(ledger) == []


async def test_payments_of_other_interfaces_are_left_alone(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, project_key: str
) -> None:
    """A payment for an interface we do not serve is not touched."""
    draft = payment_draft(1000, (), (("Charge", 1000),))
    draft["paymentMethodInfo"]["paymentInterface"] = "someone-else"
    payment = await ct.create_payment(draft)
    result = await processor_for(ct, sandbox, project_key).reconcile(trigger(payment))
    assert result.outcome == "not_ours"
    assert (await ct.get_payment(payment.id)).version == payment.version


async def test_deleted_payment_is_skipped(ct: CommercetoolsClient, sandbox: SandboxAdapter, project_key: str) -> None:
    """A delivery for a payment that no longer exists is skipped."""
    payment = Payment.model_validate(as_json(await ct.create_payment(payment_draft(1000, (), ()))) | {"id": "gone-0000"})
    assert (await processor_for(ct, sandbox, project_key).reconcile(trigger(payment))).outcome == "payment_not_found"


class Unreachable:
    """The sandbox behind a network that fails twice: a fault the simulator itself does not produce."""

    def __init__(self, inner: SandboxAdapter) -> None:
        self._inner = inner
        self.keys: list[str] = []

    async def charge(self, request: OperationRequest) -> Outcome:
        self.keys.append(request.idempotency_key)
        if len(self.keys) <= 2:
            raise PspUnavailable("connection reset")
        return await self._inner.charge(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_psp_faults_are_retried_with_the_same_key(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """A PSP that is unreachable twice is called a third time with the same idempotency key."""
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    flaky = Unreachable(sandbox)
    settings = ProcessorSettings(project_key, INTERACTION_TYPE_KEY, psp_backoff=Backoff(attempts=3, wait_initial_s=0.01))
    await Processor(ct, AdapterRegistry({("sandbox", None): flaky}), settings).reconcile(trigger(payment))
    assert len(flaky.keys) == 3 and len(set(flaky.keys)) == 1
    assert (await ct.get_payment(payment.id)).transactions[0].state.value == "Success"
    assert [e.calls for e in executions(ledger)] == [1]


async def test_psp_that_executes_then_times_out_executes_once(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """The PSP executes but its answer is lost: the retry with the same key creates no second execution."""
    payment = await ct.create_payment(payment_draft(1077, (), (("Charge", 1077),)))
    settings = ProcessorSettings(project_key, INTERACTION_TYPE_KEY, psp_backoff=Backoff(attempts=3, wait_initial_s=0.01))
    await Processor(ct, AdapterRegistry({("sandbox", None): sandbox}), settings).reconcile(trigger(payment))
    [execution] = executions(ledger)
    stored = await ct.get_payment(payment.id)
    assert execution.calls == 2 and stored.transactions[0].interaction_id == execution.psp_reference
