"""The pure decisions of the reconcile protocol: what to claim, refuse and write."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connector.adapters.contract import Operation, Outcome
from connector.models.payment import Payment, TransactionState
from connector.processor import decisions
from connector.processor.decisions import Result

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def payment(
    *transactions: tuple[str, int, str],
    planned: int = 1000,
    currency: str = "EUR",
    interactions: list[dict[str, Any]] | None = None,
) -> Payment:
    return Payment.model_validate({
        "id": "pay-1", "version": 7,
        "amountPlanned": {"centAmount": planned, "currencyCode": "EUR"},
        "paymentMethodInfo": {"paymentInterface": "sandbox"},
        "transactions": [
            {"id": f"tx-{i}", "type": kind, "amount": {"centAmount": amount, "currencyCode": currency}, "state": state}
            for i, (kind, amount, state) in enumerate(transactions)
        ],
        "interfaceInteractions": interactions or [],
    })  # fmt: skip


def claim(key: str, at: datetime, attempt: str = "attempt-b") -> dict[str, Any]:
    return {
        "type": {"typeId": "type", "id": "t"},
        "fields": {
            "type": "request", "idempotencyKey": key, "createdAt": at.isoformat(),
            "request": json.dumps({"attempt": attempt}),
        },
    }  # fmt: skip


def test_plan_takes_initial_transactions_in_order() -> None:
    """Only Initial transactions are work, in the payment's order, each with a stable key."""
    plan = decisions.plan_work(
        payment(("Authorization", 1000, "Success"), ("Charge", 600, "Initial"), ("Refund", 100, "Initial")),
        now=NOW, lease=LEASE,
    )  # fmt: skip
    assert [(w.transaction.id, w.operation) for w in plan.work] == [("tx-1", Operation.CHARGE), ("tx-2", Operation.REFUND)]
    assert plan.work[0].idempotency_key == decisions.idempotency_key("tx-1", plan.work[0].transaction.type)
    assert plan.held_until is None and not any(w.claimed_before for w in plan.work)


def test_fresh_claim_of_another_worker_holds_the_payment() -> None:
    """A claim younger than the lease means someone is executing: come back when it expires."""
    key = decisions.idempotency_key("tx-0", payment(("Charge", 1, "Initial")).transactions[0].type)
    p = payment(("Charge", 500, "Initial"), interactions=[claim(key, NOW - timedelta(seconds=10))])
    plan = decisions.plan_work(p, now=NOW, lease=LEASE)
    assert plan.work == () and plan.held_until == NOW + timedelta(seconds=20)


def test_own_abandoned_claim_is_taken_back_at_once_while_it_is_the_latest() -> None:
    """A fresh claim that this worker made in a failed attempt does not hold its own retry; once another
    worker has claimed the key since, even in the same millisecond, it does: claims are told by attempt."""
    key = decisions.idempotency_key("tx-0", payment(("Charge", 1, "Initial")).transactions[0].type)
    at = NOW - timedelta(seconds=10)
    p = payment(("Charge", 500, "Initial"), interactions=[claim(key, at, "ours")])
    plan = decisions.plan_work(p, now=NOW, lease=LEASE, abandoned={key: "ours"})
    assert [w.idempotency_key for w in plan.work] == [key] and plan.held_until is None
    taken_over = payment(("Charge", 500, "Initial"), interactions=[claim(key, at, "ours"), claim(key, at, "theirs")])
    plan = decisions.plan_work(taken_over, now=NOW, lease=LEASE, abandoned={key: "ours"})
    assert plan.work == () and plan.held_until == at + LEASE


def test_the_claimants_longer_lease_is_honoured() -> None:
    """A claim says its claimant's lease; a worker with a shorter one (another version, other settings) waits for it."""
    p = payment(("Charge", 500, "Initial"))
    [work] = decisions.plan_work(p, now=NOW, lease=LEASE).work
    actions = decisions.claim_actions(
        [work], type_key="t", now=NOW - timedelta(seconds=60), lease=timedelta(seconds=100), attempt="a"
    )
    claimed = payment(("Charge", 500, "Initial"), interactions=[{"type": {"typeId": "type", "id": "t"}, **actions[0]}])
    assert decisions.plan_work(claimed, now=NOW, lease=LEASE).held_until == NOW + timedelta(seconds=40)


def test_stale_claim_is_taken_over_with_the_same_key() -> None:
    """A claim older than the lease is taken over; the idempotency key stays the same."""
    key = decisions.idempotency_key("tx-0", payment(("Charge", 1, "Initial")).transactions[0].type)
    p = payment(("Charge", 500, "Initial"), interactions=[claim(key, NOW - timedelta(seconds=31))])
    plan = decisions.plan_work(p, now=NOW, lease=LEASE)
    assert [w.idempotency_key for w in plan.work] == [key]
    assert plan.work[0].claimed_before  # so the PSP is asked what it did before anything is executed


def test_initial_chargebacks_are_the_issuers_and_never_planned() -> None:
    """A Chargeback is the card issuer's record: no claim, no outcome; the payment is not ours to work on."""
    alone = payment(("Charge", 500, "Success"), ("Chargeback", 500, "Initial"))
    beside = payment(("Chargeback", 100, "Initial"), ("Refund", 100, "Initial"))
    assert decisions.plan_work(alone, now=NOW, lease=LEASE).work == ()
    assert [w.transaction.type.value for w in decisions.plan_work(beside, now=NOW, lease=LEASE).work] == ["Refund"]
    assert decisions.awaits_only_the_issuer(alone) and not decisions.awaits_only_the_issuer(beside)
    assert not decisions.awaits_only_the_issuer(payment(("Charge", 500, "Success")))


def test_payment_method_needed_only_for_authorizations_and_charges() -> None:
    """Refunds and cancels run on the embedded payment; authorizations and charges need the token."""
    refund = decisions.plan_work(payment(("Charge", 500, "Success"), ("Refund", 100, "Initial")), now=NOW, lease=LEASE)
    charge = decisions.plan_work(payment(("Charge", 500, "Initial")), now=NOW, lease=LEASE)
    assert not refund.needs_payment_method and charge.needs_payment_method


def test_an_outcome_is_applied_for_the_next_transactions_rules() -> None:
    """The payment as it will be once an outcome is stored; a state never moves back."""
    p = payment(("Authorization", 1000, "Initial"), ("Charge", 1000, "Success"))
    authorized = decisions.apply_outcome(p, "tx-0", Outcome(TransactionState.SUCCESS, "psp-1", "ok", "ok"))
    assert authorized.transactions[0].state is TransactionState.SUCCESS and authorized.transactions[0].interaction_id == "psp-1"
    unchanged = decisions.apply_outcome(p, "tx-1", Outcome(TransactionState.PENDING, "psp-2", "later", "later"))
    assert unchanged.transactions[1].state is TransactionState.SUCCESS and unchanged.transactions[1].interaction_id is None


def test_only_state_and_reference_when_the_rest_was_refused() -> None:
    """``essential_only`` keeps what money needs (state, PSP reference) and drops the interaction and status."""
    p = payment(("Charge", 1000, "Initial"))
    work = decisions.plan_work(p, now=NOW, lease=LEASE).work[0]
    outcome = Outcome(TransactionState.SUCCESS, "psp-9", "captured", "Amount charged", {"amount": 1000}, {"id": "psp-9"})
    actions = decisions.outcome_actions(p, [Result(work, outcome)], type_key="t", now=NOW, essential_only=True)
    assert [a["action"] for a in actions] == ["changeTransactionState", "changeTransactionInteractionId"]


def test_claim_adds_one_request_interaction_per_transaction() -> None:
    """The claim names each transaction, its operation and its idempotency key."""
    plan = decisions.plan_work(payment(("Charge", 500, "Initial"), ("Refund", 1, "Initial")), now=NOW, lease=LEASE)
    actions = decisions.claim_actions(plan.work, type_key="itype", now=NOW, lease=LEASE, attempt="a")
    assert [a["action"] for a in actions] == ["addInterfaceInteraction"] * 2
    fields = actions[0]["fields"]
    assert fields["type"] == "request" and fields["transactionId"] == "tx-0" and fields["operation"] == "charge"
    assert fields["idempotencyKey"] == plan.work[0].idempotency_key and fields["createdAt"] == "2026-11-22T12:00:00.000Z"
    assert actions[0]["type"] == {"typeId": "type", "key": "itype"}


def test_outcome_actions_store_state_reference_interaction_and_status() -> None:
    """One update carries state, PSP reference, the response interaction and the payment status."""
    p = payment(("Charge", 1000, "Initial"))
    work = decisions.plan_work(p, now=NOW, lease=LEASE).work[0]
    outcome = Outcome(TransactionState.SUCCESS, "psp-9", "captured", "Amount charged", {"amount": 1000}, {"id": "psp-9"})
    actions = decisions.outcome_actions(p, [Result(work, outcome)], type_key="itype", now=NOW)
    by_name = {a["action"]: a for a in actions}
    assert by_name["changeTransactionState"] == {"action": "changeTransactionState", "transactionId": "tx-0", "state": "Success"}
    assert by_name["changeTransactionInteractionId"]["interactionId"] == "psp-9"
    response = by_name["addInterfaceInteraction"]["fields"]
    assert response["type"] == "response" and response["interactionId"] == "psp-9"
    assert json.loads(response["response"])["code"] == "captured"
    assert by_name["setStatusInterfaceCode"]["interfaceCode"] == "captured"
    assert by_name["setStatusInterfaceText"]["interfaceText"] == "captured: Amount charged"


def test_outcome_never_moves_a_state_backwards() -> None:
    """A transaction someone else already finished keeps its state: nothing is written for it."""
    p = payment(("Charge", 1000, "Success"))
    work = decisions.Work(p.transactions[0], Operation.CHARGE, "k")
    outcome = Outcome(TransactionState.PENDING, "psp-1", "pending", "later")
    assert decisions.outcome_actions(p, [Result(work, outcome)], type_key="t", now=NOW) == []


def test_pending_moves_forward_to_success() -> None:
    """Pending may become Success."""
    p = payment(("Charge", 1000, "Pending"))
    work = decisions.Work(p.transactions[0], Operation.CHARGE, "k")
    actions = decisions.outcome_actions(
        p, [Result(work, Outcome(TransactionState.SUCCESS, None, "ok", "ok"))], type_key="t", now=NOW
    )
    assert actions[0] == {"action": "changeTransactionState", "transactionId": "tx-0", "state": "Success"}


@pytest.mark.parametrize(
    ("transactions", "code"),
    [
        ((("Authorization", 1000, "Success"),), "reserved"),
        ((("Authorization", 1000, "Success"), ("Charge", 1000, "Success")), "captured"),
        ((("Charge", 1000, "Success"), ("Refund", 400, "Success")), "partial_refund"),
        ((("Charge", 1000, "Success"), ("Refund", 1000, "Success")), "refunded"),
        ((("Authorization", 1000, "Success"), ("CancelAuthorization", 1000, "Success")), "cancelled"),
        ((("Authorization", 1000, "Failure"),), "failed"),
        ((("Charge", 1000, "Pending"),), "processing"),
        ((("Charge", 1000, "Initial"),), "created"),
    ],
)
def test_payment_status_code(transactions: tuple[tuple[str, int, str], ...], code: str) -> None:
    """The payment-level status follows the generic payments vocabulary."""
    assert decisions.payment_status_code(payment(*transactions)) == code


def test_interaction_text_is_clipped() -> None:
    """Very long PSP texts are clipped so that the update stays within limits."""
    p = payment(("Charge", 1000, "Initial"))
    work = decisions.plan_work(p, now=NOW, lease=LEASE).work[0]
    outcome = Outcome(TransactionState.FAILURE, None, "x", "y" * 10_000)
    actions = decisions.outcome_actions(p, [Result(work, outcome)], type_key="t", now=NOW)
    assert all(
        len(v) <= decisions.MAX_INTERACTION_TEXT for a in actions for v in a.get("fields", {}).values() if isinstance(v, str)
    )


def response(key: str, at: datetime) -> dict[str, Any]:
    return {
        "type": {"typeId": "type", "id": "t"},
        "fields": {"type": "response", "idempotencyKey": key, "createdAt": at.isoformat()},
    }


PENDING_AGE = timedelta(minutes=15)


def test_the_reconciler_takes_initial_transactions_without_a_fresh_claim() -> None:
    unclaimed = payment(("Charge", 1000, "Initial"))
    assert decisions.sweep_of(unclaimed, now=NOW, lease=LEASE, pending_age=PENDING_AGE) == decisions.Sweep(True, ())
    stale = payment(("Charge", 1000, "Initial"), interactions=[claim("tx-0-Charge", NOW - LEASE - timedelta(seconds=1))])
    assert decisions.sweep_of(stale, now=NOW, lease=LEASE, pending_age=PENDING_AGE).initial
    fresh = payment(("Charge", 1000, "Initial"), interactions=[claim("tx-0-Charge", NOW - timedelta(seconds=5))])
    assert not decisions.sweep_of(fresh, now=NOW, lease=LEASE, pending_age=PENDING_AGE).needed  # a worker is on it


def test_the_reconciler_asks_about_pending_transactions_once_they_are_old_enough() -> None:
    """Old enough from the response that stored the Pending; the issuer's chargebacks are never asked about."""
    old = payment(
        ("Charge", 1000, "Pending"), ("Chargeback", 1000, "Pending"),
        interactions=[response("tx-0-Charge", NOW - PENDING_AGE - timedelta(seconds=1))],
    )  # fmt: skip
    assert [t.id for t in decisions.sweep_of(old, now=NOW, lease=LEASE, pending_age=PENDING_AGE).pending] == ["tx-0"]
    young = payment(("Charge", 1000, "Pending"), interactions=[response("tx-0-Charge", NOW - timedelta(minutes=1))])
    assert not decisions.sweep_of(young, now=NOW, lease=LEASE, pending_age=PENDING_AGE).needed
    written_by_someone_else = payment(("Charge", 1000, "Pending")).model_copy(
        update={"last_modified_at": (NOW - timedelta(hours=1)).isoformat()}
    )
    assert decisions.sweep_of(written_by_someone_else, now=NOW, lease=LEASE, pending_age=PENDING_AGE).pending


def test_settled_payments_need_nothing() -> None:
    settled = payment(("Authorization", 1000, "Success"), ("Charge", 1000, "Failure"))
    assert not decisions.sweep_of(settled, now=NOW, lease=LEASE, pending_age=PENDING_AGE).needed


def test_the_reconciler_leaves_a_transaction_claimed_too_often_for_an_operator() -> None:
    """Each drive adds a claim: a transaction that keeps failing would be claimed every sweep for ever."""
    stale = [claim("tx-0-Charge", NOW - timedelta(hours=h)) for h in range(1, 6)]
    five = payment(("Charge", 1000, "Initial"), interactions=stale)
    sweep = decisions.sweep_of(five, now=NOW, lease=LEASE, pending_age=PENDING_AGE)
    assert sweep.claimed_too_often and not sweep.needed
    four = payment(("Charge", 1000, "Initial"), interactions=stale[:4])
    assert decisions.sweep_of(four, now=NOW, lease=LEASE, pending_age=PENDING_AGE).initial
