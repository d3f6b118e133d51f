"""The processing protocol on in-memory peers (tests/fakes.py): claims, leases, conflicts, partial
failures and retries, through the processor and through the worker. No Node, no Java, no network:
the clock is moved by the test, so a lease runs out without waiting for it.

test_reconcile.py and test_worker_e2e.py run the same protocol against the commercetools emulator
and real brokers, for what only they prove.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.contract import OperationRequest, Outcome
from connector.adapters.registry import AdapterRegistry
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger
from connector.breaker import COMMERCETOOLS, Breakers, PauseWaits, psp_dependency
from connector.errors import (
    ClaimHeld,
    ConcurrentModification,
    PermanentError,
    PspCredentialsRejected,
    PspDown,
    PspUnavailable,
    Rejected,
    RetryableError,
    ServerError,
    Unreachable,
)
from connector.metrics import Metrics
from connector.models.delivery import PaymentTrigger
from connector.models.payment import Payment
from connector.processor.decisions import claim_actions, idempotency_key, plan_work
from connector.processor.reconcile import Processor, ProcessorSettings
from connector.retrying import Backoff
from connector.worker import Worker, WorkerLimits
from tests.fakes import InMemoryPayments, InMemorySource, ManualClock
from tests.sandbox_ledger import executions, references_for
from tests.stack import messages
from tests.stack.payments import as_json, payment_draft

PROJECT = "protocol"
TYPE_KEY = "connector-payment-interaction"
LEASE_S = 30.0
NO_PSP_RETRY = Backoff(attempts=1)
FAST_RETRY = Backoff(attempts=3, budget_s=5.0, wait_initial_s=0.001, wait_max_s=0.002)
FAST_PAUSES = PauseWaits(initial_s=0.001, max_s=0.01)


class Gate:
    """The sandbox behind a switch the test holds: calls wait until it opens, or fail while it is broken.
    A fake for timing and faults only; the outcome is the sandbox's own."""

    def __init__(self, inner: SandboxAdapter) -> None:
        self._inner = inner
        self.capabilities = inner.capabilities
        self.lookups = 0  # calls of the optional find operation
        self.failing: Callable[[OperationRequest], bool] = lambda request: False  # which calls always fail
        self.opened = asyncio.Event()
        self.opened.set()
        self.broken = 0  # calls (lookups too) that fail with PspUnavailable before reaching the sandbox
        self.holds: Callable[[OperationRequest], bool] = lambda request: True  # which calls wait for ``opened``
        self.keys: list[str] = []  # one per call that reached the gate
        self._called = asyncio.Event()

    async def calls(self, count: int) -> None:
        """Waits until ``count`` calls have reached the gate."""
        async with asyncio.timeout(5):
            while len(self.keys) < count:
                self._called.clear()
                await self._called.wait()

    async def _call(self, name: str, request: OperationRequest) -> Outcome:
        self.keys.append(request.idempotency_key)
        self._called.set()
        if self.holds(request):
            await self.opened.wait()
        self._fail_if_broken(request)
        result: Outcome = await getattr(self._inner, name)(request)
        return result

    async def find(self, request: OperationRequest) -> Outcome | None:
        self.lookups += 1
        self._fail_if_broken(request)  # a PSP that is down answers no lookup either
        return await self._inner.find(request)

    def _fail_if_broken(self, request: OperationRequest) -> None:
        if self.broken or self.failing(request):
            self.broken = max(self.broken - 1, 0)
            raise PspUnavailable("connection reset")

    async def authorize(self, request: OperationRequest) -> Outcome:
        return await self._call("authorize", request)

    async def charge(self, request: OperationRequest) -> Outcome:
        return await self._call("charge", request)

    async def refund(self, request: OperationRequest) -> Outcome:
        return await self._call("refund", request)

    async def cancel_authorization(self, request: OperationRequest) -> Outcome:
        return await self._call("cancel_authorization", request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def payments() -> InMemoryPayments:
    return InMemoryPayments(TYPE_KEY)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


def strict_sandbox(ledger: Path, clock: ManualClock, **options: Any) -> Gate:
    """The sandbox on the test's clock: its keys' retention and its requests' running time are the test's to move."""
    return Gate(SandboxAdapter(SandboxLedger(ledger), clock=lambda: clock.now().timestamp(), **options))


@pytest.fixture
async def psp(ledger: Path, clock: ManualClock) -> AsyncIterator[Gate]:
    gate = strict_sandbox(ledger, clock)
    yield gate
    await gate.aclose()


def processor(
    payments: InMemoryPayments,
    psp: Gate,
    clock: ManualClock,
    psp_backoff: Backoff = NO_PSP_RETRY,
    metrics: Metrics | None = None,
    breakers: Breakers | None = None,
) -> Processor:
    settings = ProcessorSettings(PROJECT, TYPE_KEY, claim_lease_s=LEASE_S, psp_backoff=psp_backoff)
    registry = AdapterRegistry({("sandbox", None): psp})
    return Processor(payments, registry, settings, clock=clock.now, metrics=metrics, breakers=breakers)


def trigger(payment: Payment, embedded: bool = False) -> PaymentTrigger:
    return PaymentTrigger("msg-1", "PaymentCreated", payment.id, payment.version, payment if embedded else None)


def interactions(payment: Payment, kind: str) -> list[dict[str, Any]]:
    return [i.fields for i in payment.interface_interactions if i.fields.get("type") == kind]


def claim_by_another_worker(payments: InMemoryPayments, payment: Payment, clock: ManualClock, age_s: float) -> None:
    """The claim another worker made ``age_s`` ago, and whose PSP call may still be running."""
    plan = plan_work(payment, now=clock.now(), lease=timedelta(seconds=LEASE_S))
    claimed_at = clock.now() - timedelta(seconds=age_s)
    lease = timedelta(seconds=LEASE_S)
    payments.write(payment.id, claim_actions(plan.work, type_key=TYPE_KEY, now=claimed_at, lease=lease, attempt="another"))


# The processor


async def test_a_transaction_is_claimed_executed_and_recorded_in_three_requests(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    payment = payments.create(payment_draft(1000, (), (("Authorization", 1000),)))
    result = await processor(payments, psp, clock).reconcile(trigger(payment))
    stored = payments.stored(payment.id)
    [execution] = executions(ledger)
    [transaction] = stored.transactions
    assert result.outcome == "done" and transaction.state.value == "Success"
    assert transaction.interaction_id == execution.psp_reference
    [request], [response] = interactions(stored, "request"), interactions(stored, "response")
    assert request["idempotencyKey"] == response["idempotencyKey"] == idempotency_key(transaction.id, transaction.type)
    # One read, the claim and the outcome; the outcome write used the claim's answer for its version.
    assert payments.requests == {"GET": 1, "POST": 2}
    assert stored.payment_status.interface_code == "reserved"


async def test_a_redelivery_executes_and_writes_nothing(payments: InMemoryPayments, psp: Gate, clock: ManualClock) -> None:
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    worker = processor(payments, psp, clock)
    await worker.reconcile(trigger(payment))
    version = payments.stored(payment.id).version
    assert (await worker.reconcile(trigger(payment, embedded=True))).outcome == "nothing_to_do"
    assert payments.stored(payment.id).version == version and len(psp.keys) == 1


async def test_a_stale_embedded_copy_gets_a_409_and_is_read_again(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    charged = (("Charge", 5000),)
    payment = payments.create(payment_draft(5000, charged, (("Refund", 2000),), references_for(ledger, charged)))
    payments.write(payment.id, [{"action": "setKey", "key": "changed-meanwhile"}])
    await processor(payments, psp, clock).reconcile(trigger(payment, embedded=True))
    stored = payments.stored(payment.id)
    assert stored.key == "changed-meanwhile" and stored.transactions[1].state.value == "Success"
    assert len(executions(ledger)) == 1 and payments.requests["GET"] == 1


async def test_a_write_between_claim_and_outcome_is_recomputed_without_a_second_psp_call(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    payment = payments.create(payment_draft(3000, (), (("Charge", 3000),)))

    async def other_writer(payment_id: str, actions: list[dict[str, Any]]) -> None:
        if any(a["action"] == "changeTransactionState" for a in actions) and payments.stored(payment_id).key is None:
            payments.write(payment_id, [{"action": "setKey", "key": "other-writer"}])

    payments.before_update = other_writer
    await processor(payments, psp, clock).reconcile(trigger(payment))
    stored = payments.stored(payment.id)
    assert stored.key == "other-writer" and stored.transactions[0].state.value == "Success"
    assert len(interactions(stored, "response")) == 1
    assert [e.calls for e in executions(ledger)] == [1]


async def test_a_claim_that_keeps_conflicting_is_retried_later_without_a_psp_call(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock
) -> None:
    payment = payments.create(payment_draft(3000, (), (("Charge", 3000),)))

    async def always_first(payment_id: str, actions: list[dict[str, Any]]) -> None:
        payments.write(payment_id, [{"action": "setStatusInterfaceText", "interfaceText": "someone else"}])

    payments.before_update = always_first
    with pytest.raises(RetryableError, match="claim kept conflicting after 10 attempts"):
        await processor(payments, psp, clock).reconcile(trigger(payment))
    assert psp.keys == [] and payments.stored(payment.id).transactions[0].state.value == "Initial"


async def test_a_fresh_claim_holds_for_its_lease_then_is_taken_over_with_the_same_key(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    claim_by_another_worker(payments, payment, clock, age_s=10)
    worker = processor(payments, psp, clock)
    with pytest.raises(ClaimHeld) as held:
        await worker.reconcile(trigger(payment))
    assert held.value.retry_after_s == pytest.approx(LEASE_S - 10) and psp.keys == []
    clock.advance(held.value.retry_after_s - 0.001)
    with pytest.raises(ClaimHeld):
        await worker.reconcile(trigger(payment))
    clock.advance(0.002)
    assert (await worker.reconcile(trigger(payment))).outcome == "done"
    [execution] = executions(ledger)
    transaction = payment.transactions[0]
    assert execution.idempotency_key == idempotency_key(transaction.id, transaction.type)


async def test_a_worker_takes_back_its_own_failed_claim_at_once_and_others_wait_for_the_lease(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    first = processor(payments, psp, clock)
    psp.broken = 1
    with pytest.raises(PspDown):
        await first.reconcile(trigger(payment))
    with pytest.raises(ClaimHeld):  # another worker cannot know that no call of ours still runs
        await processor(payments, psp, clock).reconcile(trigger(payment))
    assert (await first.reconcile(trigger(payment))).outcome == "done"
    assert len(set(psp.keys)) == 1 and len(executions(ledger)) == 1


async def test_a_worker_never_takes_back_a_claim_another_worker_has_made_since(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """A's call fails 10 s into its claim; the claim runs out and B takes over, B's call still at the PSP.
    A's retry must wait for B's lease: A's own claim is no longer the latest."""
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    first = processor(payments, psp, clock)
    psp.opened.clear()
    failing = asyncio.create_task(first.reconcile(trigger(payment)))
    await psp.calls(1)
    clock.advance(10)
    psp.broken = 1
    psp.opened.set()
    with pytest.raises(PspDown):
        await failing
    psp.opened.clear()
    clock.advance(LEASE_S - 10 + 1)
    taking_over = asyncio.create_task(processor(payments, psp, clock).reconcile(trigger(payment)))
    await psp.calls(2)  # B is at the PSP
    clock.advance(1)
    with pytest.raises(ClaimHeld):
        await asyncio.wait_for(first.reconcile(trigger(payment)), timeout=2)  # not a call held at the gate
    assert len(psp.keys) == 2
    psp.opened.set()
    assert (await asyncio.wait_for(taking_over, timeout=5)).outcome == "done"
    assert len(executions(ledger)) == 1


async def test_an_outcome_write_that_fails_is_retried_and_the_psp_executes_once(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """The PSP executed, then commercetools failed: the retry asks the PSP what it did for the transaction
    (the optional find), gets the first outcome back without a second call, and stores it."""
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    worker = processor(payments, psp, clock)

    async def fail_the_outcome(payment_id: str, actions: list[dict[str, Any]]) -> None:
        if any(a["action"] == "changeTransactionState" for a in actions):
            payments.before_update = None
            raise ServerError("POST /payments: 503")

    payments.before_update = fail_the_outcome
    with pytest.raises(ServerError):
        await worker.reconcile(trigger(payment))
    assert payments.stored(payment.id).transactions[0].state.value == "Initial"
    assert (await worker.reconcile(trigger(payment))).outcome == "done"
    [execution] = executions(ledger)
    stored = payments.stored(payment.id)
    assert execution.calls == 1 and psp.lookups == 1 and stored.transactions[0].interaction_id == execution.psp_reference
    assert len(interactions(stored, "response")) == 1


async def test_a_psp_call_that_outlives_the_lease_executes_once_and_is_stored_once(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """Worker A's PSP call hangs past the lease; B takes over with the same key and stores the outcome;
    A's answer then meets a 409, and recomputing finds nothing left to write."""
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    psp.opened.clear()
    slow = asyncio.create_task(processor(payments, psp, clock).reconcile(trigger(payment)))
    await psp.calls(1)
    clock.advance(LEASE_S + 1)
    taking_over = asyncio.create_task(processor(payments, psp, clock).reconcile(trigger(payment)))
    await psp.calls(2)  # B has claimed and called too; then both calls proceed
    psp.opened.set()
    assert (await asyncio.wait_for(taking_over, timeout=5)).outcome == "done"
    assert (await asyncio.wait_for(slow, timeout=5)).outcome == "done"
    stored = payments.stored(payment.id)
    [execution] = executions(ledger)
    assert len(psp.keys) == 2 and len(set(psp.keys)) == 1 and execution.calls == 2
    assert len(interactions(stored, "request")) == 2 and len(interactions(stored, "response")) == 1
    assert stored.transactions[0].state.value == "Success"


async def test_an_executed_outcome_is_stored_when_a_later_transaction_of_the_payment_fails(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """The authorization executes, then the PSP stays unavailable for the capture: the authorization's
    outcome is already stored, and the retry executes only the capture."""
    payment = payments.create(payment_draft(1000, (), (("Authorization", 1000), ("Charge", 1000))))
    psp.failing = lambda request: request.transaction.type.value == "Charge"
    worker = processor(payments, psp, clock)
    with pytest.raises(PspDown):
        await worker.reconcile(trigger(payment))
    stored = payments.stored(payment.id)
    [authorized] = executions(ledger)
    assert [t.state.value for t in stored.transactions] == ["Success", "Initial"]
    assert stored.transactions[0].interaction_id == authorized.psp_reference
    psp.failing = lambda request: False
    assert (await worker.reconcile(trigger(payment))).outcome == "done"
    assert [t.state.value for t in payments.stored(payment.id).transactions] == ["Success", "Success"]
    assert [e.operation.value for e in executions(ledger)] == ["authorize", "charge"]


async def test_an_executed_outcome_is_stored_when_the_delivery_times_out_on_the_next(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """The delivery timeout cancels the attempt during the second transaction: the first one's outcome
    is stored; the cancelled call's claim is not taken back before its request must have ended."""
    payment = payments.create(payment_draft(1000, (), (("Authorization", 1000), ("Charge", 1000))))
    psp.opened.clear()
    psp.holds = lambda request: request.transaction.type.value == "Charge"
    worker = processor(payments, psp, clock)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await worker.reconcile(trigger(payment))
    assert [t.state.value for t in payments.stored(payment.id).transactions] == ["Success", "Initial"]
    psp.opened.set()
    with pytest.raises(ClaimHeld):
        await worker.reconcile(trigger(payment))
    clock.advance(psp.capabilities.request_timeout_s)
    assert (await worker.reconcile(trigger(payment))).outcome == "done"
    assert [t.state.value for t in payments.stored(payment.id).transactions] == ["Success", "Success"]
    assert len(executions(ledger)) == 2


async def test_a_psp_request_that_outlives_the_lease_is_answered_in_progress_never_failure(
    payments: InMemoryPayments, clock: ManualClock, ledger: Path
) -> None:
    """The strict sandbox works 100 s on the request, past the 30 s lease. The worker that takes over asks
    the PSP, hears "in progress", and stores nothing; once the request has ended it stores the PSP's outcome.
    One execution. (The lease in production is derived to outlast this; the test shortens it on purpose.)"""
    psp = strict_sandbox(ledger, clock, latency_ms=100_000)
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    slow = asyncio.create_task(processor(payments, psp, clock).reconcile(trigger(payment)))
    await psp.calls(1)
    async with asyncio.timeout(5):
        while not executions(ledger):  # the request is at the PSP
            await asyncio.sleep(0.01)
    clock.advance(LEASE_S + 1)
    other = processor(payments, psp, clock)
    for _ in range(2):  # the lookup, then (if a lookup missed it) the call with the same key: both in progress
        with pytest.raises(PspUnavailable, match="still"):
            await other.reconcile(trigger(payment))
        assert payments.stored(payment.id).transactions[0].state.value == "Initial"
        clock.advance(LEASE_S + 1)
    clock.advance(100)
    assert (await other.reconcile(trigger(payment))).outcome == "done"
    slow.cancel()
    [execution] = executions(ledger)
    stored = payments.stored(payment.id).transactions[0]
    assert (stored.state.value, stored.interaction_id) == (execution.state.value, execution.psp_reference)
    await psp.aclose()


async def executed_then_crashed(payments: InMemoryPayments, psp: Gate, clock: ManualClock, payment: Payment) -> None:
    """A worker executes the payment's transaction at the PSP and dies before storing the outcome."""

    async def crash_before_the_outcome(payment_id: str, actions: list[dict[str, Any]]) -> None:
        if any(a["action"] == "changeTransactionState" for a in actions):
            payments.before_update = None
            raise Unreachable("the worker died")

    payments.before_update = crash_before_the_outcome
    with pytest.raises(Unreachable):
        await processor(payments, psp, clock).reconcile(trigger(payment))


@pytest.mark.parametrize("finds", [True, False], ids=["with find", "keys alone"])
async def test_a_takeover_after_the_psp_forgot_the_key_asks_the_psp_first(
    payments: InMemoryPayments, clock: ManualClock, ledger: Path, finds: bool
) -> None:
    """A worker executes and dies before storing the outcome; the claim is taken over after the PSP forgot
    the key (60 s here, 24 h at Stripe). With find, the PSP's record is stored and nothing runs again;
    an adapter with keys alone would execute a second time, so the transaction is refused for an
    operator instead (the adapter declares its PSP's key retention)."""
    psp = strict_sandbox(ledger, clock, key_retention_s=60)
    if not finds:
        psp.find = None  # type: ignore[assignment,method-assign]
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    await executed_then_crashed(payments, psp, clock, payment)
    clock.advance(61)
    if finds:
        assert (await processor(payments, psp, clock).reconcile(trigger(payment))).outcome == "done"
        assert payments.stored(payment.id).transactions[0].interaction_id == executions(ledger)[-1].psp_reference
    else:
        with pytest.raises(PermanentError, match="keeps idempotency keys"):
            await processor(payments, psp, clock).reconcile(trigger(payment))
    assert len(executions(ledger)) == 1
    await psp.aclose()


async def test_what_the_psp_did_is_stored_even_where_the_money_rules_now_refuse(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """A refund executes and its worker dies before storing it; meanwhile the issuer charges the whole amount
    back. The takeover asks the PSP first and stores its refund: the rules judge only what is still to do."""
    charged = (("Charge", 1000),)
    payment = payments.create(payment_draft(1000, charged, (("Refund", 1000),), references_for(ledger, charged)))
    await executed_then_crashed(payments, psp, clock, payment)
    chargeback = {"type": "Chargeback", "amount": {"centAmount": 1000, "currencyCode": "EUR"}, "state": "Initial"}
    payments.write(payment.id, [{"action": "addTransaction", "transaction": chargeback}])
    clock.advance(LEASE_S + 1)
    assert (await processor(payments, psp, clock).reconcile(trigger(payment))).outcome == "done"
    [refund] = executions(ledger)
    stored = payments.stored(payment.id).transactions[1]
    assert (stored.state.value, stored.interaction_id) == ("Success", refund.psp_reference)


async def test_a_transaction_claimed_under_an_account_since_removed_is_not_failed(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock
) -> None:
    """It may have been executed under the old route: the delivery is dead-lettered for an operator, and the
    transaction stays Initial instead of failing with unknown_account."""
    draft = payment_draft(1000, (), (("Charge", 1000),))
    draft["paymentMethodInfo"]["interfaceAccount"] = "eu"
    payment = payments.create(draft)
    claim_by_another_worker(payments, payment, clock, age_s=LEASE_S + 1)
    with pytest.raises(PermanentError, match="no longer configured"):
        await processor(payments, psp, clock).reconcile(trigger(payment))
    assert payments.stored(payment.id).transactions[0].state.value == "Initial" and psp.keys == []


async def test_an_outcome_commercetools_refuses_in_full_is_stored_with_state_and_reference(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """Money moved at the PSP: when commercetools refuses the outcome's interaction (400), the state and
    the PSP reference are written alone, and the reduced write is counted."""
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))

    async def refuse_interactions(payment_id: str, actions: list[dict[str, Any]]) -> None:
        if any(a["action"] == "addInterfaceInteraction" and a["fields"]["type"] == "response" for a in actions):
            raise Rejected("400 InvalidField: response too long")

    payments.before_update = refuse_interactions
    metrics = Metrics()
    assert (await processor(payments, psp, clock, metrics=metrics).reconcile(trigger(payment))).outcome == "done"
    [execution] = executions(ledger)
    stored = payments.stored(payment.id)
    assert (stored.transactions[0].state.value, stored.transactions[0].interaction_id) == ("Success", execution.psp_reference)
    assert interactions(stored, "response") == []
    assert metrics.registry.get_sample_value("connector_outcome_writes_reduced_total") == 1


async def test_a_charge_after_an_authorization_the_psp_does_not_know_is_never_a_new_charge(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """An Authorization stored as Success without a PSP reference (another system's, say): the Charge is a
    capture of it, which the PSP refuses; nothing is charged anew on top of the hold."""
    payment = payments.create(payment_draft(1000, (("Authorization", 1000),), (("Charge", 1000),)))
    await processor(payments, psp, clock).reconcile(trigger(payment))
    stored = payments.stored(payment.id).transactions[1]
    assert stored.state.value == "Failure"
    assert [e.state.value for e in executions(ledger)] == ["Failure"]


async def test_money_rules_fail_a_transaction_without_a_psp_call(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock
) -> None:
    payment = payments.create(payment_draft(1000, (("Charge", 1000),), (("Refund", 1500),)))
    await processor(payments, psp, clock).reconcile(trigger(payment))
    stored = payments.stored(payment.id)
    assert stored.transactions[1].state.value == "Failure" and psp.keys == []
    assert "exceeds" in (stored.payment_status.interface_text or "")


async def test_later_transactions_see_earlier_outcomes(payments: InMemoryPayments, psp: Gate, clock: ManualClock) -> None:
    payment = payments.create(payment_draft(9000, (), (("Authorization", 9000), ("Charge", 9000))))
    result = await processor(payments, psp, clock).reconcile(trigger(payment))
    assert [r.outcome.state.value for r in result.results] == ["Success", "Success"]
    assert [t.state.value for t in payments.stored(payment.id).transactions] == ["Success", "Success"]
    assert payments.requests["POST"] == 3  # both claimed together, each outcome stored before the next transaction runs


async def test_what_is_not_ours_or_gone_is_left_alone(payments: InMemoryPayments, psp: Gate, clock: ManualClock) -> None:
    foreign = payment_draft(1000, (), (("Charge", 1000),))
    foreign["paymentMethodInfo"]["paymentInterface"] = "someone-else"
    other, gone = payments.create(foreign), payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    payments.delete(gone.id)
    worker = processor(payments, psp, clock)
    assert (await worker.reconcile(trigger(other))).outcome == "not_ours"
    assert (await worker.reconcile(trigger(gone))).outcome == "payment_not_found"
    assert payments.requests["POST"] == 0 and psp.keys == []


async def test_an_account_without_a_route_fails_readably(payments: InMemoryPayments, psp: Gate, clock: ManualClock) -> None:
    draft = payment_draft(1000, (), (("Charge", 1000),))
    draft["paymentMethodInfo"]["interfaceAccount"] = "mars"
    payment = payments.create(draft)
    await processor(payments, psp, clock).reconcile(trigger(payment))
    stored = payments.stored(payment.id)
    assert stored.transactions[0].state.value == "Failure" and "mars" in (stored.payment_status.interface_text or "")
    assert psp.keys == []


async def test_the_fake_store_is_as_strict_as_commercetools(payments: InMemoryPayments) -> None:
    """What the protocol relies on: 409 with the current version on any stale update, versions taken
    from the answer, states only forward, interaction fields from the Type only."""
    payment = payments.create(payment_draft(1000, (("Charge", 1000),), ()))
    with pytest.raises(ConcurrentModification) as stale:
        await payments.update_payment(payment.id, payment.version + 1, [])
    assert stale.value.current_version == payment.version
    assert await payments.update_payment(payment.id, payment.version, []) == payment.version  # nothing changed
    version = await payments.update_payment(payment.id, payment.version, [{"action": "setKey", "key": "k"}])
    assert version > payment.version + 1  # never assume +1
    backward = {"action": "changeTransactionState", "transactionId": payment.transactions[0].id, "state": "Initial"}
    with pytest.raises(Rejected, match="cannot move from Success to Initial"):
        await payments.update_payment(payment.id, version, [backward])
    unknown = {"action": "addInterfaceInteraction", "type": {"typeId": "type", "key": TYPE_KEY}, "fields": {"secret": "x"}}
    with pytest.raises(Rejected, match="no field"):
        await payments.update_payment(payment.id, version, [unknown])
    assert payments.stored(payment.id).version == version  # refused updates change nothing


# The worker


def worker_for(
    source: InMemorySource,
    payments: InMemoryPayments,
    psp: Gate,
    clock: ManualClock,
    metrics: Metrics | None = None,
    **limits: Any,
) -> Worker:
    defaults: dict[str, Any] = {"retry": FAST_RETRY, "shutdown_timeout_s": 5.0}
    metrics = metrics or Metrics()
    breakers = Breakers([COMMERCETOOLS, psp_dependency("sandbox")], FAST_PAUSES)
    metrics.watch_breakers(breakers.all)
    return Worker(
        source, processor(payments, psp, clock, metrics=metrics, breakers=breakers),
        WorkerLimits(**(defaults | limits)), metrics, jitter=lambda: 0.0, breakers=breakers,
    )  # fmt: skip


async def run_until(worker: Worker, condition: Callable[[], bool], source: InMemorySource) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await source.wait_until(lambda: condition() or running.done())
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)


def created(payment: Payment, fmt: messages.Format = "platform") -> bytes:
    return messages.payment_created(PROJECT, as_json(payment), fmt)


async def test_every_delivery_ends_acknowledged_or_dead_lettered(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    source = InMemorySource(clock)
    batch = [payments.create(payment_draft(1000 + 100 * i, (), (("Charge", 1000 + 100 * i),))) for i in range(20)]
    bodies = [created(p, "platform" if i % 2 else "cloudevents") for i, p in enumerate(batch)]
    source.publish(messages.resource_created(PROJECT), *bodies, bodies[0], b'{"notificationType": ')
    await run_until(worker_for(source, payments, psp, clock), lambda: source.pending == 0, source)
    assert {t.state.value for p in batch for t in payments.stored(p.id).transactions} == {"Success"}
    assert (
        len(source.acked) == 22
        and [reason for _, reason, _ in source.dead_letters] == [source.dead_letters[0][1]]
        and "JSON" in source.dead_letters[0][1]
    )
    assert sorted(e.calls for e in executions(ledger)) == [1] * 20  # the duplicate found nothing to do


@pytest.mark.parametrize("hands_back", [True, False], ids=["pubsub-like", "kafka-like"])
async def test_a_commercetools_failure_pauses_and_the_delivery_is_processed_in_place(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path, hands_back: bool
) -> None:
    """An outage is waited out where the delivery is, on either kind of queue: nothing is handed back
    (Pub/Sub would redeliver it to run the whole protocol again) and nothing is dead-lettered."""
    source = InMemorySource(clock, hands_back=hands_back)
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    payments.failures.append(ServerError("POST /payments: 503"))  # the claim fails once
    source.publish(created(payment))
    metrics = Metrics()
    await run_until(worker_for(source, payments, psp, clock, metrics=metrics), lambda: source.pending == 0, source)
    assert payments.stored(payment.id).transactions[0].state.value == "Success"
    assert source.handed_back == 0 and len(source.acked) == 1 and source.dead_letters == []
    assert [e.calls for e in executions(ledger)] == [1]
    assert metrics.registry.get_sample_value("connector_pauses_total", {"dependency": "commercetools"}) == 1
    assert metrics.registry.get_sample_value("connector_paused", {"dependency": "commercetools"}) == 0


async def test_an_outage_counts_no_attempts_against_the_delivery(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """Six pauses, then a claim that keeps conflicting (retried, as one attempt of three): the delivery
    is not dead-lettered for having waited out an outage first."""
    source = InMemorySource(clock, hands_back=False)
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    conflict = ConcurrentModification("POST /payments: 409", None)
    payments.failures.extend([ServerError("POST /payments: 503")] * 6 + [conflict] * 10)
    source.publish(created(payment))
    await run_until(worker_for(source, payments, psp, clock), lambda: source.pending == 0, source)
    assert source.dead_letters == [] and len(source.acked) == 1
    assert payments.stored(payment.id).transactions[0].state.value == "Success"


async def test_a_psp_outage_pauses_its_route_and_every_payment_completes_once_it_answers(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    source = InMemorySource(clock, hands_back=False)
    batch = [payments.create(payment_draft(1000 + i, (), (("Charge", 1000 + i),))) for i in range(6)]
    psp.broken = 25  # far more failures than any delivery's attempts used to allow
    source.publish(*(created(p) for p in batch))
    metrics = Metrics()
    worker = worker_for(source, payments, psp, clock, metrics=metrics, max_in_flight=3)
    await run_until(worker, lambda: source.pending == 0, source)
    assert source.dead_letters == [] and len(source.acked) == 6
    assert {payments.stored(p.id).transactions[0].state.value for p in batch} == {"Success"}
    assert sorted(e.calls for e in executions(ledger)) == [1] * 6
    assert metrics.registry.get_sample_value("connector_pauses_total", {"dependency": "psp:sandbox"}) >= 1
    # While paused, one probe at a time reached the PSP: not every waiting delivery at each turn.
    assert len(psp.keys) <= 25 + 6 + 3


async def test_a_delivery_that_fails_alone_is_dead_lettered_and_the_others_go_through(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock
) -> None:
    """commercetools answering one payment's updates with a 500 while it answers the others' is no
    outage: that delivery is poison after its attempts."""
    source = InMemorySource(clock, hands_back=False)
    poison, *healthy = (payments.create(payment_draft(1000, (), (("Charge", 1000),))) for _ in range(40))
    payments.failing = lambda payment_id: payment_id == poison.id
    source.publish(created(poison), *(created(p) for p in healthy))
    worker = worker_for(source, payments, psp, clock, max_in_flight=2)
    await run_until(worker, lambda: source.pending == 0, source)
    [(body, reason, attempts)] = source.dead_letters
    assert poison.id.encode() in body and "answered other deliveries" in reason and attempts == 3
    assert {payments.stored(p.id).transactions[0].state.value for p in healthy} == {"Success"}
    assert payments.stored(poison.id).transactions[0].state.value == "Initial"  # replayable


async def test_a_psp_that_replays_a_stored_error_is_poison_not_an_outage(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """Amount ending in 55: the PSP fails, keeps that 500 for the key, and says so when it replays it.
    Dead-lettered at that answer, nothing executed; the payment after it goes through."""
    source = InMemorySource(clock, hands_back=False)
    stored, healthy = (
        payments.create(payment_draft(1055, (), (("Charge", 1055),))),
        payments.create(payment_draft(1000, (), (("Charge", 1000),))),
    )
    source.publish(created(stored), created(healthy))
    worker = worker_for(source, payments, psp, clock, max_in_flight=1)
    await run_until(worker, lambda: source.pending == 0, source)
    [(body, reason, _)] = source.dead_letters
    assert stored.id.encode() in body and "PspStoredError" in reason
    assert payments.stored(healthy.id).transactions[0].state.value == "Success"
    assert [e.transaction_id for e in executions(ledger)] == [healthy.transactions[0].id]


async def test_a_held_claim_is_handed_back_for_the_rest_of_its_lease(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock
) -> None:
    source = InMemorySource(clock)
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    claim_by_another_worker(payments, payment, clock, age_s=5)
    source.publish(created(payment))
    stop = asyncio.Event()
    running = asyncio.create_task(worker_for(source, payments, psp, clock).run(stop))
    await source.wait_for_delayed()
    clock.advance(LEASE_S - 5 - 1)
    assert source.delayed == 1 and psp.keys == []  # not yet: the other worker's lease still runs
    clock.advance(1.0)
    await source.wait_until(lambda: source.pending == 0)
    stop.set()
    await asyncio.wait_for(running, timeout=10)
    assert payments.stored(payment.id).transactions[0].state.value == "Success" and source.handed_back == 1


async def test_deliveries_of_one_payment_run_one_after_the_other(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    source = InMemorySource(clock)
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    source.publish(*[created(payment)] * 5)
    await run_until(worker_for(source, payments, psp, clock), lambda: source.pending == 0, source)
    assert [e.calls for e in executions(ledger)] == [1] and len(source.acked) == 5


async def test_work_cut_off_by_a_stop_comes_again_and_the_lease_lets_the_next_worker_finish_it(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """A stop whose shutdown bound runs out cancels the PSP call in flight: the delivery stays unfinished
    and comes to the next worker, which waits out the claim's lease and executes with the same key."""
    source = InMemorySource(clock)
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    source.publish(created(payment))
    psp.opened.clear()
    stop = asyncio.Event()
    first = asyncio.create_task(worker_for(source, payments, psp, clock, shutdown_timeout_s=0.01).run(stop))
    await psp.calls(1)
    stop.set()
    await asyncio.wait_for(first, timeout=5)
    assert source.acked == [] and source.pending == 1 and executions(ledger) == []

    psp.opened.set()
    stop = asyncio.Event()
    second = asyncio.create_task(worker_for(source, payments, psp, clock).run(stop))
    await source.wait_for_delayed()  # the first worker's claim holds
    clock.advance(LEASE_S)
    await source.wait_until(lambda: source.pending == 0)
    stop.set()
    await asyncio.wait_for(second, timeout=10)
    assert payments.stored(payment.id).transactions[0].state.value == "Success"
    assert len(set(psp.keys)) == 1 and [e.calls for e in executions(ledger)] == [1]


async def test_psp_faults_are_retried_with_the_same_key(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    psp.broken = 2
    await processor(payments, psp, clock, psp_backoff=FAST_RETRY).reconcile(trigger(payment))
    assert len(psp.keys) == 3 and len(set(psp.keys)) == 1
    assert payments.stored(payment.id).transactions[0].state.value == "Success"
    assert [e.calls for e in executions(ledger)] == [1]


async def test_a_psp_that_executes_and_loses_its_answer_executes_once(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """The sandbox's amount ending in 77: executed, then a timeout; the retry with the same key gets the first outcome."""
    payment = payments.create(payment_draft(1077, (), (("Charge", 1077),)))
    await processor(payments, psp, clock, psp_backoff=FAST_RETRY).reconcile(trigger(payment))
    [execution] = executions(ledger)
    assert execution.calls == 2 and payments.stored(payment.id).transactions[0].interaction_id == execution.psp_reference


async def test_an_outcome_stored_but_its_answer_lost_is_not_written_or_executed_again(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """commercetools applied the outcome, and the answer was lost: the retry finds it stored."""
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    worker = processor(payments, psp, clock)

    async def lose_the_outcome_answer(payment_id: str, actions: list[dict[str, Any]]) -> None:
        if any(a["action"] == "changeTransactionState" for a in actions):
            payments.before_update = None
            payments.answers_lost.append(Unreachable("POST /payments timed out"))

    payments.before_update = lose_the_outcome_answer
    with pytest.raises(Unreachable):
        await worker.reconcile(trigger(payment))
    assert (await worker.reconcile(trigger(payment))).outcome == "nothing_to_do"
    stored = payments.stored(payment.id)
    assert stored.transactions[0].state.value == "Success" and len(interactions(stored, "response")) == 1
    assert [e.calls for e in executions(ledger)] == [1]


async def test_a_claim_stored_but_its_answer_lost_is_taken_back_by_its_own_worker_at_once(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """The claim was applied but its sender never learnt it. No PSP call was made under it, so the
    same worker's retry takes it back at once; another worker still waits out the lease."""
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    worker = processor(payments, psp, clock)
    payments.answers_lost.append(Unreachable("POST /payments timed out"))
    with pytest.raises(Unreachable):
        await worker.reconcile(trigger(payment))
    with pytest.raises(ClaimHeld):
        await processor(payments, psp, clock).reconcile(trigger(payment))
    assert psp.keys == []
    assert (await worker.reconcile(trigger(payment))).outcome == "done"
    assert [e.calls for e in executions(ledger)] == [1]


async def test_after_a_kafka_restart_everything_from_the_first_unfinished_delivery_comes_again(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """The first delivery is cut off by a stop while the two after it finish; the next worker reads all
    three again from the committed offset: the finished ones find nothing to do, the first executes once."""
    source = InMemorySource(clock, hands_back=False)
    slow, *quick = (payments.create(payment_draft(1000 + 100 * i, (), (("Charge", 1000 + 100 * i),))) for i in range(3))
    source.publish(created(slow), *map(created, quick))
    psp.opened.clear()
    psp.holds = lambda request: request.payment.id == slow.id
    stop = asyncio.Event()
    first = asyncio.create_task(worker_for(source, payments, psp, clock, shutdown_timeout_s=0.01).run(stop))
    await source.wait_until(lambda: len(source.acked) == 2)
    await psp.calls(3)  # the slow one is at the PSP
    stop.set()
    await asyncio.wait_for(first, timeout=5)

    psp.opened.set()
    clock.advance(LEASE_S)  # the first worker's claim on the slow one runs out (a partition retries in place)
    await run_until(worker_for(source, payments, psp, clock), lambda: len(source.acked) == 5, source)
    assert {t.state.value for p in (slow, *quick) for t in payments.stored(p.id).transactions} == {"Success"}
    assert sorted(e.calls for e in executions(ledger)) == [1, 1, 1]


async def test_an_initial_chargeback_is_left_as_it_is(payments: InMemoryPayments, psp: Gate, clock: ManualClock) -> None:
    """The issuer's record: no claim, no write, no PSP call; the delivery counts as not ours."""
    payment = payments.create(payment_draft(2500, (("Charge", 2500),), (("Chargeback", 2500),)))
    assert (await processor(payments, psp, clock).reconcile(trigger(payment))).outcome == "not_ours"
    stored = payments.stored(payment.id)
    assert stored.version == payment.version and stored.transactions[1].state.value == "Initial"
    assert payments.requests["POST"] == 0 and psp.keys == []


async def test_a_refused_psp_key_pauses_the_route_until_the_key_works(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock, ledger: Path
) -> None:
    """401/403 from the PSP: an operator's fault, never the customer's. The route pauses, counting the
    refusals, and the transaction is neither failed nor dead-lettered: it completes once the key works."""
    source = InMemorySource(clock, hands_back=False)
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    source.publish(created(payment))
    refusals = 3
    sandbox_charge = psp.charge

    async def refused_then_fixed(request: OperationRequest) -> Outcome:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise PspCredentialsRejected("Stripe refused this account's API key (HTTP 401)")
        return await sandbox_charge(request)

    psp.charge = refused_then_fixed  # type: ignore[method-assign]
    metrics = Metrics()
    await run_until(worker_for(source, payments, psp, clock, metrics=metrics), lambda: source.pending == 0, source)
    assert source.dead_letters == [] and len(source.acked) == 1
    assert payments.stored(payment.id).transactions[0].state.value == "Success"
    assert [e.calls for e in executions(ledger)] == [1]
    assert metrics.registry.get_sample_value("connector_psp_credentials_rejected_total", {"interface": "sandbox"}) == 3


async def test_a_key_refused_to_a_look_up_pauses_the_route_and_is_counted_too(
    payments: InMemoryPayments, psp: Gate, clock: ManualClock
) -> None:
    """A takeover's lookup (find) meets a refused key: the route pauses as for a refused call, and the
    refusal is counted, so the alert on refused keys does not hang on which call probed the PSP."""
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    await executed_then_crashed(payments, psp, clock, payment)
    clock.advance(LEASE_S + 1)

    async def refused(request: OperationRequest) -> Outcome | None:
        raise PspCredentialsRejected("Stripe refused this account's API key (HTTP 401)")

    psp.find = refused  # type: ignore[method-assign]
    metrics = Metrics()
    with pytest.raises(PspDown, match="PspCredentialsRejected"):
        await processor(payments, psp, clock, metrics=metrics).reconcile(trigger(payment))
    assert metrics.registry.get_sample_value("connector_psp_credentials_rejected_total", {"interface": "sandbox"}) == 1
    assert payments.stored(payment.id).transactions[0].state.value == "Initial"


async def test_without_a_look_up_a_claim_older_than_the_psps_keys_is_never_executed_again(
    payments: InMemoryPayments, ledger: Path, clock: ManualClock
) -> None:
    """An adapter without find, whose PSP keeps keys a day: a transaction first claimed two days ago (a
    dead letter replayed, a payment the reconciler found) might have been executed under a key the PSP
    has forgotten. It is refused for an operator, not executed; within the retention the key guards it."""
    keyless = Gate(SandboxAdapter(SandboxLedger(ledger), clock=lambda: clock.now().timestamp(), key_retention_s=86_400))
    keyless.find = None  # type: ignore[assignment,method-assign]
    payment = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    claim_by_another_worker(payments, payment, clock, age_s=2 * 86_400)
    with pytest.raises(PermanentError, match="longer ago than sandbox keeps idempotency keys"):
        await processor(payments, keyless, clock).reconcile(trigger(payment))
    assert executions(ledger) == [] and keyless.keys == []
    recent = payments.create(payment_draft(1000, (), (("Charge", 1000),)))
    claim_by_another_worker(payments, recent, clock, age_s=LEASE_S + 1)
    assert (await processor(payments, keyless, clock).reconcile(trigger(recent))).outcome == "done"
