"""The processor applying notices, in memory: the guards between a PSP object and a payment.

The PSP here is a stub notifier (a fake: it answers whatever object the test sets, which no real PSP
can be made to produce on demand, such as a payment id that is not a commercetools id or an object of
another account); commercetools is the in-memory store of tests/fakes.py. The real peers run in
tests/test_notifications.py.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from connector.adapters.contract import Finding, Outcome, PspState
from connector.adapters.registry import AdapterRegistry
from connector.errors import ClaimHeld, NotMatched
from connector.models.notice import Notice, NoticeTrigger
from connector.models.payment import Payment, TransactionState, TransactionType
from connector.processor.decisions import claim_actions, plan_work
from connector.processor.reconcile import Processor, ProcessorSettings
from connector.retrying import Backoff
from tests.fakes import InMemoryPayments, ManualClock

PROJECT = "notices"
TYPE_KEY = "connector-payment-interaction"
LEASE = timedelta(seconds=30)


@dataclass
class StubNotifier:
    """A PSP route that takes notifications; ``state`` is what its look-up finds."""

    state: PspState | None = None
    findings_for: list[Finding] = field(default_factory=list)
    looked_up: int = 0

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notice | None:
        raise AssertionError("the receiver's part: not called by a worker")

    async def look_up(self, notice: Notice) -> PspState | None:
        self.looked_up += 1
        return self.state

    def findings(self, state: PspState, payment: Payment) -> tuple[Finding, ...]:
        return tuple(self.findings_for)

    async def authorize(self, request: Any) -> Outcome:
        raise AssertionError("a notice executes nothing")

    charge = refund = cancel_authorization = authorize

    async def aclose(self) -> None:
        return None


@dataclass
class Setup:
    payments: InMemoryPayments
    psp: StubNotifier
    other: StubNotifier
    processor: Processor
    clock: ManualClock


@pytest.fixture
def setup() -> Setup:
    payments, psp, other, clock = InMemoryPayments(TYPE_KEY), StubNotifier(), StubNotifier(), ManualClock()
    registry = AdapterRegistry({("stripe", None): psp, ("stripe", "eu"): other})  # type: ignore[dict-item]
    settings = ProcessorSettings(PROJECT, TYPE_KEY, claim_lease_s=LEASE.total_seconds(), psp_backoff=Backoff(attempts=1))
    return Setup(payments, psp, other, Processor(payments, registry, settings, clock=clock.now), clock)


def pending_payment(payments: InMemoryPayments, state: str = "Pending", account: str | None = None) -> Payment:
    method = {"paymentInterface": "stripe", **({"interfaceAccount": account} if account else {})}
    return payments.create({
        "amountPlanned": {"centAmount": 1000, "currencyCode": "EUR"}, "paymentMethodInfo": method,
        "transactions": [{"type": "Authorization", "amount": {"centAmount": 1000, "currencyCode": "EUR"}, "state": state}],
    })  # fmt: skip


def trigger(account: str | None = None, event_id: str = "evt_1") -> NoticeTrigger:
    return NoticeTrigger("stripe", account, Notice(event_id, "payment_intent.succeeded", "pi_1", 1))


def authorized(payment: Payment) -> Finding:
    return Finding(TransactionType.AUTHORIZATION, TransactionState.SUCCESS, "pi_1", payment.transactions[0].id)


async def test_a_notice_settles_its_transaction_once(setup: Setup) -> None:
    payment = pending_payment(setup.payments)
    setup.psp.state, setup.psp.findings_for = PspState(payment.id, PROJECT, {}), [authorized(payment)]
    assert (await setup.processor.apply_notice(trigger())).outcome == "notice_applied"
    settled = setup.payments.stored(payment.id)
    assert settled.transactions[0].state is TransactionState.SUCCESS
    assert (await setup.processor.apply_notice(trigger())).outcome == "nothing_to_do"  # the same event again
    assert setup.payments.stored(payment.id).version == settled.version


@pytest.mark.parametrize("payment_id", ["../carts", "a/b", "x" * 300, ""])
async def test_a_payment_id_that_is_not_a_commercetools_id_is_never_requested(setup: Setup, payment_id: str) -> None:
    setup.psp.state = PspState(payment_id, PROJECT, {})
    assert (await setup.processor.apply_notice(trigger())).outcome == "not_ours"
    assert setup.payments.requests["GET"] == 0


async def test_another_projects_object_or_another_accounts_payment_is_left_alone(setup: Setup) -> None:
    payment = pending_payment(setup.payments)
    setup.psp.state, setup.psp.findings_for = PspState(payment.id, "another-project", {}), [authorized(payment)]
    assert (await setup.processor.apply_notice(trigger())).outcome == "not_ours"
    eu_payment = pending_payment(setup.payments, account="eu")  # served by the eu route, not the default one
    setup.psp.state, setup.psp.findings_for = PspState(eu_payment.id, PROJECT, {}), [authorized(eu_payment)]
    assert (await setup.processor.apply_notice(trigger())).outcome == "not_ours"
    assert setup.payments.requests["POST"] == 0


async def test_an_outcome_not_stored_yet_waits_for_the_claim(setup: Setup) -> None:
    payment = pending_payment(setup.payments, state="Initial")
    work = plan_work(payment, now=setup.clock.now(), lease=LEASE).work
    setup.payments.write(payment.id, claim_actions(work, type_key=TYPE_KEY, now=setup.clock.now(), lease=LEASE, attempt="a"))
    setup.psp.state, setup.psp.findings_for = PspState(payment.id, PROJECT, {}), [authorized(payment)]
    with pytest.raises(ClaimHeld):
        await setup.processor.apply_notice(trigger())
    setup.clock.advance(LEASE.total_seconds() + 1)  # the claimant died: settled as a takeover's look-up would
    assert (await setup.processor.apply_notice(trigger())).outcome == "notice_applied"


async def test_a_transaction_the_payment_does_not_show_is_retried(setup: Setup) -> None:
    payment = pending_payment(setup.payments)
    missing = Finding(TransactionType.REFUND, TransactionState.FAILURE, "re_1", "no-such-transaction")
    setup.psp.state, setup.psp.findings_for = PspState(payment.id, PROJECT, {}), [missing]
    with pytest.raises(NotMatched):
        await setup.processor.apply_notice(trigger())


async def test_a_write_between_the_read_and_the_update_is_answered_by_deciding_again(setup: Setup) -> None:
    """Another writer (a delivery's outcome, say) settles the transaction first: the 409 refetches, and
    the notice then has nothing left to write."""
    payment = pending_payment(setup.payments)
    setup.psp.state, setup.psp.findings_for = PspState(payment.id, PROJECT, {}), [authorized(payment)]

    async def first_the_other_writer(payment_id: str, actions: list[dict[str, Any]]) -> None:
        setup.payments.before_update = None
        state = {"action": "changeTransactionState", "transactionId": payment.transactions[0].id, "state": "Success"}
        setup.payments.write(payment_id, [state])

    setup.payments.before_update = first_the_other_writer
    assert (await setup.processor.apply_notice(trigger())).outcome == "nothing_to_do"
    stored = setup.payments.stored(payment.id)
    assert stored.transactions[0].state is TransactionState.SUCCESS
    assert not [i for i in stored.interface_interactions if i.fields.get("type") == "notification"]
