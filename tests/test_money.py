"""The money rules (connector/processor/money.py): examples for each rule, and properties over random
sequences of transactions and PSP outcomes (hypothesis)."""

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.adapters.contract import Capabilities
from connector.models.payment import Payment, Transaction, TransactionState, TransactionType
from connector.processor import money
from connector.processor.money import RULES

SINGLE_CAPTURE = Capabilities()
MULTI_CAPTURE = Capabilities(multiple_captures=True)
FULL_ONLY = Capabilities(partial_captures=False, partial_refunds=False)

Row = tuple[str, int, str]


def payment(*transactions: Row, planned: int = 1000, currency: str = "EUR", fraction_digits: int | None = None) -> Payment:
    digits = {} if fraction_digits is None else {"fractionDigits": fraction_digits}
    return Payment.model_validate({
        "id": "pay-1", "version": 1,
        "amountPlanned": {"centAmount": planned, "currencyCode": "EUR" if currency != "JPY" else "JPY"},
        "transactions": [
            {"id": f"tx-{i}", "type": kind, "amount": {"centAmount": amount, "currencyCode": currency, **digits}, "state": state}
            for i, (kind, amount, state) in enumerate(transactions)
        ],
    })  # fmt: skip


def refusal(*transactions: Row, capabilities: Capabilities = SINGLE_CAPTURE, **options: int | str) -> str | None:
    p = payment(*transactions, **options)  # type: ignore[arg-type]
    found = money.refusal_for(p, p.transactions[-1], capabilities)
    assert found is None or (found.code in RULES and found.text)
    return None if found is None else found.code


@pytest.mark.parametrize(
    ("transactions", "code"),
    [
        ((("Chargeback", 100, "Initial"),), "not_executable"),
        ((("Charge", 0, "Initial"),), "invalid_amount"),
        ((("Charge", -5, "Initial"),), "invalid_amount"),
        ((("Authorization", 1001, "Initial"),), "amount_exceeds_planned"),
        ((("Charge", 1001, "Initial"),), "amount_exceeds_planned"),
        # path 3 of the issue: two Initial charges of the whole amount, one after the other
        ((("Charge", 1000, "Success"), ("Charge", 1000, "Initial")), "amount_exceeds_planned"),
        ((("Charge", 600, "Pending"), ("Charge", 600, "Initial")), "amount_exceeds_planned"),
        ((("Authorization", 1000, "Success"), ("Authorization", 1000, "Initial")), "authorization_exists"),
        ((("Authorization", 1000, "Pending"), ("Authorization", 10, "Initial")), "authorization_exists"),
        ((("Charge", 600, "Success"), ("Authorization", 600, "Initial")), "amount_exceeds_planned"),
        # a Charge made before the Authorization was added counts as its capture from then on: the safe side
        ((("Charge", 500, "Success"), ("Authorization", 500, "Success"), ("Charge", 500, "Initial")), "already_captured"),
        (
            (("Charge", 500, "Success"), ("Authorization", 500, "Success"), ("CancelAuthorization", 500, "Initial")),
            "already_captured",
        ),
        ((("Authorization", 1000, "Success"), ("Charge", 700, "Success"), ("Charge", 300, "Initial")), "already_captured"),
        ((("Authorization", 1000, "Success"), ("Charge", 1001, "Initial")), "amount_exceeds_planned"),
        ((("Authorization", 800, "Success"), ("Charge", 801, "Initial")), "amount_exceeds_authorized"),
        # path 2: a Charge on a payment with an Authorization is a capture of it, never a new charge
        ((("Authorization", 1000, "Failure"), ("Charge", 100, "Initial")), "authorization_not_successful"),
        ((("Authorization", 1000, "Pending"), ("Charge", 100, "Initial")), "authorization_not_successful"),
        ((("Authorization", 1000, "Initial"), ("Charge", 100, "Initial")), "authorization_not_successful"),
        (
            (("Authorization", 1000, "Success"), ("CancelAuthorization", 1000, "Success"), ("Charge", 10, "Initial")),
            "authorization_cancelled",
        ),
        ((("Charge", 1000, "Success"), ("Refund", 600, "Success"), ("Refund", 401, "Initial")), "amount_exceeds_refundable"),
        ((("Charge", 1000, "Success"), ("Refund", 300, "Pending"), ("Refund", 701, "Initial")), "amount_exceeds_refundable"),
        # chargebacks reduce what may still be refunded
        ((("Charge", 1000, "Success"), ("Chargeback", 1000, "Success"), ("Refund", 1, "Initial")), "amount_exceeds_refundable"),
        ((("Charge", 1000, "Success"), ("Chargeback", 400, "Pending"), ("Refund", 601, "Initial")), "amount_exceeds_refundable"),
        ((("Refund", 1, "Initial"),), "amount_exceeds_refundable"),
        # a Pending charge may still fail: nothing to pay back yet; an Initial chargeback is the issuer's claim already
        ((("Charge", 1000, "Pending"), ("Refund", 1000, "Initial")), "amount_exceeds_refundable"),
        ((("Charge", 1000, "Success"), ("Chargeback", 1000, "Initial"), ("Refund", 1, "Initial")), "amount_exceeds_refundable"),
        (
            (("Authorization", 1000, "Success"), ("Charge", 1000, "Success"), ("CancelAuthorization", 1000, "Initial")),
            "already_captured",
        ),
        (
            (("Authorization", 1000, "Success"), ("CancelAuthorization", 1000, "Success"), ("CancelAuthorization", 1, "Initial")),
            "already_cancelled",
        ),
        ((("CancelAuthorization", 1000, "Initial"),), "no_authorization"),
    ],
)
def test_each_rule_refuses_with_its_code(transactions: tuple[Row, ...], code: str) -> None:
    """Transactions that break a money rule fail with that rule's code and a readable text, no PSP call."""
    assert refusal(*transactions) == code


@pytest.mark.parametrize(
    "transactions",
    [
        (("Authorization", 1000, "Initial"),),
        (("Authorization", 1000, "Success"), ("Charge", 400, "Initial")),
        (("Charge", 1000, "Initial"),),
        (("Charge", 400, "Success"), ("Charge", 600, "Initial")),
        (("Charge", 1000, "Success"), ("Refund", 500, "Success"), ("Refund", 500, "Initial")),
        (("Charge", 1000, "Success"), ("Chargeback", 300, "Success"), ("Refund", 700, "Initial")),
        (("Authorization", 1000, "Success"), ("CancelAuthorization", 1000, "Initial")),
        (("Authorization", 1000, "Failure"), ("Authorization", 1000, "Initial")),
    ],
)
def test_what_is_covered_is_allowed(transactions: tuple[Row, ...]) -> None:
    """Amounts within what is planned, authorized or charged are executed."""
    assert refusal(*transactions) is None


def test_a_charge_is_a_capture_wherever_the_authorization_stands() -> None:
    """An Authorization later in the list makes a Charge its capture too, never a new charge on top of the hold."""
    for state, code in (("Pending", "authorization_not_successful"), ("Success", None)):
        p = payment(("Charge", 1000, "Initial"), ("Authorization", 1000, state))
        found = money.refusal_for(p, p.transactions[0])
        assert (found.code if found else None) == code
        assert money.Totals.of(p).has_authorization


def test_the_adapter_declares_multiple_and_partial_captures_and_partial_refunds() -> None:
    """Stripe captures once; an adapter that declares multi-capture may capture the rest later. An adapter
    without partial operations gets only the full amount."""
    second = (("Authorization", 1000, "Success"), ("Charge", 400, "Success"), ("Charge", 600, "Initial"))
    assert refusal(*second, capabilities=SINGLE_CAPTURE) == "already_captured"
    assert refusal(*second, capabilities=MULTI_CAPTURE) is None
    assert refusal(("Authorization", 1000, "Success"), ("Charge", 400, "Initial"), capabilities=FULL_ONLY) == (
        "partial_capture_unsupported"
    )
    assert (
        refusal(("Charge", 1000, "Success"), ("Refund", 400, "Initial"), capabilities=FULL_ONLY) == "partial_refund_unsupported"
    )
    assert refusal(("Charge", 1000, "Success"), ("Refund", 1000, "Initial"), capabilities=FULL_ONLY) is None


def test_currency_and_its_minor_units() -> None:
    """The payment's currency, counted in that currency's ISO 4217 minor units."""
    assert refusal(("Charge", 100, "Initial"), currency="USD") == "currency_mismatch"
    assert refusal(("Charge", 100, "Initial"), fraction_digits=2) is None
    assert refusal(("Charge", 100, "Initial"), fraction_digits=3) == "currency_minor_units"
    assert refusal(("Charge", 500, "Initial"), currency="JPY", fraction_digits=0, planned=500) is None
    assert refusal(("Charge", 500, "Initial"), currency="JPY", fraction_digits=2, planned=500) == "currency_minor_units"


# Properties. The connector judges every transaction but Chargebacks (the issuer's); the PSP then
# answers anything at all for what was allowed, and settles a Pending transaction later either way.
EXECUTED = [t for t in TransactionType if t is not TransactionType.CHARGEBACK]
PSP_SAYS = [TransactionState.SUCCESS, TransactionState.FAILURE, TransactionState.PENDING]
LIVE = (TransactionState.SUCCESS, TransactionState.PENDING)
AUTHORIZATION, CHARGE, REFUND, CANCEL, CHARGEBACK = (
    TransactionType.AUTHORIZATION, TransactionType.CHARGE, TransactionType.REFUND,
    TransactionType.CANCEL_AUTHORIZATION, TransactionType.CHARGEBACK,
)  # fmt: skip


@dataclass
class Ledger:
    """Money as the test counts it, written apart from money.Totals: the rules' specification, a second time."""

    planned: int
    transactions: list[Transaction]

    def of(self, kind: TransactionType, *states: TransactionState) -> list[Transaction]:
        return [t for t in self.transactions if t.type is kind and t.state in (states or LIVE)]

    def sum(self, kind: TransactionType, *states: TransactionState) -> int:
        return sum(t.amount.cent_amount for t in self.of(kind, *states))

    def captures(self) -> list[Transaction]:
        """Once the payment has an Authorization, every live Charge, wherever it stands."""
        return self.of(CHARGE) if any(t.type is AUTHORIZATION for t in self.transactions) else []

    def capturable(self) -> int:
        return self.sum(AUTHORIZATION, TransactionState.SUCCESS) - sum(t.amount.cent_amount for t in self.captures())

    def refundable(self) -> int:
        issuer = self.sum(CHARGEBACK, TransactionState.INITIAL, *LIVE)
        return self.sum(CHARGE, TransactionState.SUCCESS) - self.sum(REFUND) - issuer

    def allows(self, kind: TransactionType, amount: int, declared: Capabilities) -> bool:
        if amount <= 0:
            return False
        if kind is AUTHORIZATION:
            return not self.of(AUTHORIZATION) and amount + self.sum(CHARGE) <= self.planned
        if kind is CHARGE:
            if amount + self.sum(CHARGE) > self.planned:
                return False
            if not any(t.type is AUTHORIZATION for t in self.transactions):
                return True  # a direct charge
            room = self.capturable()
            return (
                bool(self.of(AUTHORIZATION, TransactionState.SUCCESS)) and not self.of(CANCEL)
                and (not self.captures() or declared.multiple_captures)
                and amount <= room and (amount == room or declared.partial_captures)
            )  # fmt: skip
        if kind is REFUND:
            room = self.refundable()
            return amount <= room and (amount == room or declared.partial_refunds)
        assert kind is CANCEL
        return bool(self.of(AUTHORIZATION, TransactionState.SUCCESS)) and not self.captures() and not self.of(CANCEL)


capabilities = st.builds(
    Capabilities, multiple_captures=st.booleans(), partial_captures=st.booleans(), partial_refunds=st.booleans()
)


# No time limits: a busy machine (a CI pass runs peers beside it) slows generation, not the rules.
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), planned=st.integers(1, 1000), declared=capabilities)
def test_the_rules_allow_exactly_what_their_specification_allows(
    data: st.DataObject, planned: int, declared: Capabilities
) -> None:
    """Random payments built step by step: transactions of every kind with amounts around each limit,
    the PSP's answers, later settlements of Pending ones, and the issuer's chargebacks. Every decision
    equals the specification's (tests' own Ledger); every refusal names its rule; and money moved never
    exceeds what is planned, authorized, or charged."""
    ledger = Ledger(planned, [])
    captured_by_us: set[str] = set()  # Charges the rules let through as captures
    # Most paths begin with an authorization or a charge, settled or not.
    start = data.draw(st.sampled_from([None, AUTHORIZATION, CHARGE]), label="starts with")
    if start is not None:
        state = data.draw(st.sampled_from([TransactionState.SUCCESS, TransactionState.PENDING]), label="first state")
        ledger.transactions.append(_transaction(99, start, data.draw(st.integers(1, planned), label="first amount"), state))
    for i in range(data.draw(st.integers(1, 14), label="steps")):
        move = data.draw(st.sampled_from(["judge", "judge", "judge", "settle", "chargeback"]), label="move")
        pending = [n for n, t in enumerate(ledger.transactions) if t.state is TransactionState.PENDING]
        if move == "settle" and pending:
            n = data.draw(st.sampled_from(pending), label="settled")
            state = data.draw(st.sampled_from([TransactionState.SUCCESS, TransactionState.FAILURE]), label="settles as")
            ledger.transactions[n] = ledger.transactions[n].model_copy(update={"state": state})
            continue
        if move == "chargeback":
            amount = data.draw(st.integers(1, max(ledger.sum(CHARGE, TransactionState.SUCCESS), 1)), label="disputed")
            issuer = data.draw(st.sampled_from([TransactionState.INITIAL, *PSP_SAYS]), label="dispute state")
            ledger.transactions.append(_transaction(i, CHARGEBACK, amount, issuer))
            continue
        kind = data.draw(st.sampled_from([*EXECUTED, CHARGE]), label="kind")  # captures twice as often: they have most rules
        limits = [ledger.planned - ledger.sum(CHARGE), ledger.capturable(), ledger.refundable(), planned]
        near = [limit + d for limit in limits for d in (-1, 0, 1)]
        within = [st.integers(1, max(room, 1)) for room in limits[:3]]  # partial amounts within each room
        amount = data.draw(st.one_of(st.sampled_from(near), *within, st.integers(-2, planned + 2)), label="amount")
        candidate = _transaction(i, kind, amount, TransactionState.INITIAL)
        refused = money.refusal_for(_payment(planned, [*ledger.transactions, candidate]), candidate, declared)
        assert (refused is None) == ledger.allows(kind, amount, declared), (kind, amount, refused, ledger.transactions)
        if refused is not None:
            assert refused.code in RULES and refused.text, refused
        psp_says = TransactionState.FAILURE if refused else data.draw(st.sampled_from(PSP_SAYS), label="PSP says")
        if kind is CHARGE and not refused and any(t.type is AUTHORIZATION for t in ledger.transactions):
            captured_by_us.add(candidate.id)
        ledger.transactions.append(_transaction(i, kind, amount, psp_says))
        assert ledger.sum(CHARGE) <= planned
        assert len(ledger.of(AUTHORIZATION)) <= 1
        live_captures = [t for t in ledger.of(CHARGE) if t.id in captured_by_us]
        assert len(live_captures) <= 1 or declared.multiple_captures


def _transaction(i: int, kind: TransactionType, amount: int, state: TransactionState) -> Transaction:
    return Transaction.model_validate(
        {"id": f"tx-{i}", "type": kind.value, "amount": {"centAmount": amount, "currencyCode": "EUR"}, "state": state.value}
    )


def _payment(planned: int, transactions: list[Transaction]) -> Payment:
    return Payment.model_validate(
        {"id": "pay-1", "version": 1, "amountPlanned": {"centAmount": planned, "currencyCode": "EUR"}}
    ).model_copy(update={"transactions": tuple(transactions)})
