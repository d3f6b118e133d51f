"""The reconcile protocol against the commercetools emulator and the sandbox PSP, without a queue: what
the in-memory tests (test_protocol.py) cannot prove, that the client's requests and the emulator's
answers (JSON, versions, 404s and 409s over HTTP) carry the protocol."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.registry import AdapterRegistry
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger
from connector.commercetools.client import CommercetoolsClient
from connector.errors import ClaimHeld
from connector.models.delivery import PaymentTrigger
from connector.models.payment import Payment
from connector.processor.decisions import idempotency_key
from connector.processor.reconcile import Processor, ProcessorSettings
from tests.fakes import ManualClock
from tests.sandbox_ledger import executions, references_for
from tests.stack.payments import as_json, payment_draft
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


async def test_stale_embedded_payment_is_refetched_on_conflict(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """A refund claimed on an outdated embedded copy gets a 409, refetches and still ends right."""
    charged = (("Charge", 5000),)
    payment = await ct.create_payment(payment_draft(5000, charged, (("Refund", 2000),), references_for(ledger, charged)))
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


async def test_deleted_payment_is_skipped(ct: CommercetoolsClient, sandbox: SandboxAdapter, project_key: str) -> None:
    """A delivery for a payment that no longer exists is skipped."""
    payment = Payment.model_validate(as_json(await ct.create_payment(payment_draft(1000, (), ()))) | {"id": "gone-0000"})
    assert (await processor_for(ct, sandbox, project_key).reconcile(trigger(payment))).outcome == "payment_not_found"


async def test_a_claim_read_back_from_the_emulator_holds_for_its_lease(
    ct: CommercetoolsClient, sandbox: SandboxAdapter, ledger: Path, project_key: str
) -> None:
    """The claim's createdAt, as the emulator stores and returns it, times the lease: held within it,
    taken over with the same key after it. The processor's clock is moved, not waited for."""
    clock = ManualClock(datetime.now(UTC))
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    transaction = payment.transactions[0]
    claim = {
        "action": "addInterfaceInteraction", "type": {"typeId": "type", "key": INTERACTION_TYPE_KEY},
        "fields": {"type": "request", "transactionId": transaction.id,
                   "idempotencyKey": idempotency_key(transaction.id, transaction.type),
                   "createdAt": clock.now().isoformat()},
    }  # fmt: skip
    await ct.update_payment(payment.id, payment.version, [claim])
    settings = ProcessorSettings(project_key=project_key, interaction_type_key=INTERACTION_TYPE_KEY, claim_lease_s=30)
    processor = Processor(ct, AdapterRegistry({("sandbox", None): sandbox}), settings, clock=clock.now)
    clock.advance(29.9)
    with pytest.raises(ClaimHeld):
        await processor.reconcile(trigger(payment))
    assert executions(ledger) == []
    clock.advance(0.2)
    assert (await processor.reconcile(trigger(payment))).outcome == "done"
    [execution] = executions(ledger)
    assert execution.idempotency_key == idempotency_key(transaction.id, transaction.type)
