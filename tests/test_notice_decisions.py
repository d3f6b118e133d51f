"""What a PSP notice changes, from data alone: plan_notice's rules and the Stripe adapter's mapping and verification."""

import time
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from connector.adapters import stripe_notifications
from connector.adapters.contract import BadNotification, Finding, PspState
from connector.adapters.stripe_amounts import from_stripe_amount, stripe_amount
from connector.models.notice import Notice
from connector.models.payment import Money, Payment, TransactionState, TransactionType
from connector.processor import decisions
from connector.processor.notice_decisions import plan_notice
from tests.notices import WEBHOOK_SECRET, body_of, event, signed
from tests.test_decisions import LEASE, NOW, claim, payment

NOTICE = Notice("evt_1", "payment_intent.succeeded", "pi_1", 1_700_000_000, "pay-1")
SUCCESS, FAILURE, PENDING = TransactionState.SUCCESS, TransactionState.FAILURE, TransactionState.PENDING


def plan(p: Payment, *findings: Finding, notice: Notice = NOTICE) -> Any:
    return plan_notice(p, notice, "stripe", findings, type_key="ik", now=NOW, lease=LEASE)


def changes(actions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["transactionId"], a["state"]) for a in actions if a["action"] == "changeTransactionState"]


def applied_interaction(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": {"typeId": "type", "id": "t"}, "fields": {"type": "notification", "eventId": event_id, **fields}}


def test_a_pending_transaction_settles_with_its_interaction_and_status() -> None:
    p = payment(("Authorization", 1000, "Pending"))
    result = plan(p, Finding(TransactionType.AUTHORIZATION, SUCCESS, "pi_1", "tx-0", code="requires_capture", text="ok"))
    assert changes(result.actions) == [("tx-0", "Success")]
    [interaction] = [a for a in result.actions if a["action"] == "addInterfaceInteraction"]
    fields = interaction["fields"]
    assert (fields["type"], fields["eventId"], fields["operation"], fields["interactionId"]) == (
        "notification", "evt_1", "payment_intent.succeeded", "pi_1",
    )  # fmt: skip
    assert fields["transactionId"] == "tx-0" and "idempotencyKey" not in fields
    assert {"action": "setStatusInterfaceCode", "interfaceCode": "reserved"} in result.actions
    assert {"action": "changeTransactionInteractionId", "transactionId": "tx-0", "interactionId": "pi_1"} in result.actions


def test_the_same_event_twice_changes_nothing() -> None:
    p = payment(("Authorization", 1000, "Pending"), interactions=[applied_interaction("evt_1")])
    assert plan(p, Finding(TransactionType.AUTHORIZATION, SUCCESS, "pi_1", "tx-0")).actions == []


@pytest.mark.parametrize(
    ("state", "finding", "reverses", "moved"),
    [
        ("Success", "Failure", False, False),  # final stays final
        ("Failure", "Success", False, False),
        ("Success", "Pending", False, False),  # never backward
        ("Pending", "Pending", False, False),
        ("Success", "Failure", True, True),  # the one move back: a refund failed after it succeeded
        ("Failure", "Success", True, False),  # only Success to Failure, never the other way
        ("Pending", "Failure", False, True),
    ],
)
def test_states_move_forward_only_but_for_a_reversed_success(state: str, finding: str, reverses: bool, moved: bool) -> None:
    p = payment(("Refund", 100, state))
    result = plan(p, Finding(TransactionType.REFUND, TransactionState(finding), "re_1", "tx-0", reverses_success=reverses))
    assert changes(result.actions) == ([("tx-0", finding)] if moved else [])


def test_an_initial_transaction_under_a_fresh_claim_waits_for_it() -> None:
    key = decisions.idempotency_key("tx-0", TransactionType.AUTHORIZATION)
    fresh = payment(("Authorization", 1000, "Initial"), interactions=[claim(key, NOW - timedelta(seconds=5))])
    held = plan(fresh, Finding(TransactionType.AUTHORIZATION, SUCCESS, "pi_1", "tx-0"))
    assert held.actions == [] and held.held_until == NOW - timedelta(seconds=5) + LEASE
    stale = payment(("Authorization", 1000, "Initial"), interactions=[claim(key, NOW - LEASE - timedelta(seconds=1))])
    assert changes(plan(stale, Finding(TransactionType.AUTHORIZATION, SUCCESS, "pi_1", "tx-0")).actions) == [("tx-0", "Success")]


def test_a_transaction_the_payment_does_not_show_is_not_matched_yet() -> None:
    result = plan(payment(("Charge", 100, "Pending")), Finding(TransactionType.REFUND, FAILURE, "re_9", "tx-9"))
    assert result.actions == [] and result.unmatched is not None and "tx-9" in result.unmatched


def test_a_psp_transaction_is_added_once_then_found_by_its_reference() -> None:
    chargeback = Finding(TransactionType.CHARGEBACK, PENDING, "dp_1", None, amount=Money(centAmount=400, currencyCode="EUR"))
    result = plan(payment(("Charge", 1000, "Success")), chargeback)
    [added] = [a for a in result.actions if a["action"] == "addTransaction"]
    assert added["transaction"] == {
        "type": "Chargeback", "amount": {"centAmount": 400, "currencyCode": "EUR"}, "state": "Pending",
        "interactionId": "dp_1", "timestamp": "2026-11-22T12:00:00.000Z",
    }  # fmt: skip
    shown = Payment.model_validate(
        {**_json(payment(("Charge", 1000, "Success"))), "transactions": [
            {"id": "tx-0", "type": "Charge", "amount": {"centAmount": 1000, "currencyCode": "EUR"}, "state": "Success"},
            {"id": "cb-1", "type": "Chargeback", "amount": {"centAmount": 400, "currencyCode": "EUR"}, "state": "Pending",
             "interactionId": "dp_1"},
        ]}
    )  # fmt: skip
    later = Notice("evt_2", "charge.dispute.closed", "dp_1", 1_700_000_100)
    again = plan(shown, Finding(TransactionType.CHARGEBACK, SUCCESS, "dp_1", None, amount=chargeback.amount), notice=later)
    assert changes(again.actions) == [("cb-1", "Success")]
    assert not [a for a in again.actions if a["action"] == "addTransaction"]


def test_a_record_is_written_once() -> None:
    record = Finding(TransactionType.CHARGEBACK, SUCCESS, "dp_1", "tx-1", record="funds_reinstated")
    p = payment(("Charge", 1000, "Success"), ("Chargeback", 1000, "Success"))
    [interaction] = plan(p, record).actions
    assert interaction["fields"]["idempotencyKey"] == "dp_1:funds_reinstated"
    recorded = payment(
        ("Charge", 1000, "Success"), ("Chargeback", 1000, "Success"),
        interactions=[applied_interaction("evt_0", idempotencyKey="dp_1:funds_reinstated")],
    )  # fmt: skip
    assert plan(recorded, record, notice=Notice("evt_3", "charge.dispute.closed", "dp_1", 1)).actions == []


def _json(p: Payment) -> dict[str, Any]:
    return p.model_dump(by_alias=True, mode="json")


# The Stripe adapter's mapping of fresh objects


def intent_state(status: str, made_by: str = "tx-0", **more: Any) -> PspState:
    intent = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": status,
        "metadata": {"ctPaymentId": "pay-1", "ctTransactionId": made_by},
    }
    return PspState("pay-1", None, {"kind": "payment_intent", "intent": intent | more})


def test_stripe_intent_cancelled_while_open_fails_the_authorization() -> None:
    [found] = stripe_notifications.findings(intent_state("canceled"), payment(("Authorization", 1000, "Pending")))
    assert (found.transaction_id, found.state, found.type) == ("tx-0", FAILURE, TransactionType.AUTHORIZATION)


def test_stripe_intent_cancelled_after_authorization_is_an_expiry_unless_we_cancelled() -> None:
    [expiry] = stripe_notifications.findings(intent_state("canceled"), payment(("Authorization", 1000, "Success")))
    assert (expiry.type, expiry.state, expiry.transaction_id) == (TransactionType.CANCEL_AUTHORIZATION, SUCCESS, None)
    assert expiry.amount == Money(centAmount=1000, currencyCode="EUR") and expiry.code == "authorization_expired"
    ours = payment(("Authorization", 1000, "Success"), ("CancelAuthorization", 1000, "Pending"))
    [settled] = stripe_notifications.findings(intent_state("canceled"), ours)
    assert (settled.transaction_id, settled.state) == ("tx-1", SUCCESS)


def test_stripe_captured_intent_settles_the_capture_too() -> None:
    state = intent_state("succeeded")
    state.object["intent"]["metadata"]["ctCaptureTransactionId"] = "tx-1"
    found = stripe_notifications.findings(state, payment(("Authorization", 1000, "Success"), ("Charge", 1000, "Pending")))
    assert [(f.transaction_id, f.state) for f in found] == [("tx-0", SUCCESS), ("tx-1", SUCCESS)]


def test_stripe_unconfirmed_intent_says_nothing() -> None:
    assert stripe_notifications.findings(intent_state("requires_confirmation"), payment(("Charge", 1, "Pending"))) == ()


@pytest.mark.parametrize(
    ("status", "moves", "state", "recorded"),
    [
        ("needs_response", [], PENDING, False),
        ("warning_needs_response", [], PENDING, False),
        ("needs_response", [-1000], SUCCESS, False),  # funds withdrawn
        ("lost", [], SUCCESS, False),
        ("won", [], FAILURE, False),
        ("warning_closed", [], FAILURE, False),
        ("won", [-1000, 1000], FAILURE, True),  # withdrawn, then won and reinstated: nothing charged back, recorded
        ("under_review", [-1000, 1000], SUCCESS, True),  # reinstated before it closes: still withdrawn once, recorded
    ],
)
def test_stripe_dispute_states(status: str, moves: list[int], state: TransactionState, recorded: bool) -> None:
    dispute = {"id": "dp_1", "object": "dispute", "status": status, "amount": 1000, "currency": "eur",
               "balance_transactions": [{"amount": m} for m in moves], "reason": "fraudulent"}  # fmt: skip
    found = stripe_notifications.findings(
        PspState("pay-1", None, {"kind": "dispute", "dispute": dispute}), payment(("Charge", 1000, "Success"))
    )
    assert (
        found[0].state is state
        and found[0].type is TransactionType.CHARGEBACK
        and found[0].amount == Money(centAmount=1000, currencyCode="EUR")
    )
    assert [f.record for f in found[1:]] == (["funds_reinstated"] if recorded else [])
    assert found[0].reverses_success is (status in ("won", "warning_closed"))  # a withdrawn Chargeback may go back


def test_stripe_refund_failure_may_reverse_a_success() -> None:
    refund = {
        "id": "re_1",
        "object": "refund",
        "status": "failed",
        "failure_reason": "lost_or_stolen_card",
        "metadata": {"ctTransactionId": "tx-1"},
    }
    [found] = stripe_notifications.findings(PspState("pay-1", None, {"kind": "refund", "refund": refund}), payment())
    assert (found.state, found.reverses_success, found.code) == (FAILURE, True, "lost_or_stolen_card")


# Verification


SECRETS = [SecretStr(WEBHOOK_SECRET), SecretStr("whsec_test_old")]


def test_either_secret_of_a_rotation_verifies() -> None:
    body = body_of(event("payment_intent.succeeded", {"id": "pi_1"}))
    for signing in ([WEBHOOK_SECRET], ["whsec_test_old"], ["whsec_test_other", "whsec_test_old"]):
        stripe_notifications.verify(body, signed(body, signing)["Stripe-Signature"], SECRETS, 300)
    with pytest.raises(BadNotification, match="matches none"):
        stripe_notifications.verify(body, signed(body, ["whsec_test_other"])["Stripe-Signature"], SECRETS, 300)


@pytest.mark.parametrize(("age_s", "ok"), [(0, True), (299, True), (301, False), (-299, True), (-301, False)])
def test_tolerance_on_both_sides(age_s: int, ok: bool) -> None:
    body = b'{"id": "evt_1"}'
    now = time.time()
    header = signed(body, [WEBHOOK_SECRET], int(now) - age_s)["Stripe-Signature"]
    if ok:
        stripe_notifications.verify(body, header, SECRETS, 300, now=now)
    else:
        with pytest.raises(BadNotification, match="tolerance"):
            stripe_notifications.verify(body, header, SECRETS, 300, now=now)


def test_no_configured_secret_verifies_nothing() -> None:
    with pytest.raises(BadNotification, match="no webhook secret"):
        stripe_notifications.verify(b"{}", "t=1,v1=00", [], 300)


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["EUR", "JPY", "KWD", "ISK", "MGA", "USD", "BHD"]))
def test_stripe_amounts_come_back_as_they_went(cent_amount: int, currency: str) -> None:
    money = Money(centAmount=cent_amount, currencyCode=currency)
    sent = stripe_amount(money)
    if isinstance(sent, int):  # amounts Stripe refuses (a fraction it cannot take) are never sent
        assert from_stripe_amount(sent, currency.lower()) == money


def test_a_psp_that_disagrees_with_a_final_state_changes_nothing_and_is_recorded_once() -> None:
    """A customer retried a failed 3-D Secure with another card: Stripe shows Success of a transaction stored
    as Failure. Left for an operator: one interaction, and the disagreement returned (to be logged)."""
    failed = payment(("Authorization", 1000, "Failure"))
    result = plan(failed, Finding(TransactionType.AUTHORIZATION, SUCCESS, "pi_1", "tx-0"))
    assert changes(result.actions) == [] and len(result.disagreements) == 1
    [interaction] = result.actions
    assert interaction["fields"]["idempotencyKey"] == "pi_1:disagrees:Success"
    recorded = payment(
        ("Authorization", 1000, "Failure"),
        interactions=[applied_interaction("evt_0", idempotencyKey="pi_1:disagrees:Success")],
    )
    again = plan(
        recorded, Finding(TransactionType.AUTHORIZATION, SUCCESS, "pi_1", "tx-0"), notice=Notice("evt_9", "x", "pi_1", 1)
    )
    assert again.actions == [] and len(again.disagreements) == 1


def test_an_object_with_another_psp_reference_than_the_transaction_changes_nothing() -> None:
    shown = Payment.model_validate(
        {**_json(payment()), "transactions": [
            {"id": "tx-0", "type": "Authorization", "amount": {"centAmount": 1000, "currencyCode": "EUR"}, "state": "Pending",
             "interactionId": "pi_ours"},
        ]}
    )  # fmt: skip
    result = plan(shown, Finding(TransactionType.AUTHORIZATION, SUCCESS, "pi_other", "tx-0"))
    assert changes(result.actions) == [] and "pi_ours" in result.disagreements[0]


@pytest.mark.parametrize(("reason", "code"), [(None, "authorization_expired"), ("automatic", "authorization_automatic"),
                                              ("abandoned", "authorization_abandoned")])  # fmt: skip
def test_stripe_cancellation_reasons_name_the_expiry(reason: str | None, code: str) -> None:
    [expiry] = stripe_notifications.findings(
        intent_state("canceled", cancellation_reason=reason), payment(("Authorization", 1000, "Success"))
    )
    assert expiry.code == code and (reason or "expired") in expiry.text
