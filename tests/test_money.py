"""The money rules (connector/processor/money.py): examples for each rule, and properties over random
sequences of transactions and PSP outcomes (hypothesis)."""

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
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


# Properties: the connector judges every transaction but Chargebacks (the issuer's); the PSP then
# decides any outcome at all for what was allowed.
EXECUTED = [t for t in TransactionType if t is not TransactionType.CHARGEBACK]
PSP_SAYS = [TransactionState.SUCCESS, TransactionState.FAILURE, TransactionState.PENDING]
LIVE = (TransactionState.SUCCESS, TransactionState.PENDING)


@dataclass
class Ledger:
    """Money as the test counts it, independently of money.Totals."""

    transactions: list[Transaction]

    def live(self, kind: TransactionType) -> list[Transaction]:
        return [t for t in self.transactions if t.type is kind and t.state in LIVE]

    def amount(self, kind: TransactionType) -> int:
        return sum(t.amount.cent_amount for t in self.live(kind))


step = st.one_of(
    st.tuples(st.sampled_from(EXECUTED), st.integers(-10, 1500), st.sampled_from(PSP_SAYS)),
    st.tuples(st.just(TransactionType.CHARGEBACK), st.integers(1, 1500), st.sampled_from(PSP_SAYS)),
)
capabilities = st.builds(
    Capabilities, multiple_captures=st.booleans(), partial_captures=st.booleans(), partial_refunds=st.booleans()
)


@settings(max_examples=600, deadline=None)
@given(planned=st.integers(1, 1200), steps=st.lists(step, max_size=14), declared=capabilities)
def test_money_moved_never_exceeds_what_the_rules_allow(
    planned: int, steps: list[tuple[TransactionType, int, TransactionState]], declared: Capabilities
) -> None:
    """Whatever the order of transactions and whatever the PSP answers: charges stay within the planned
    amount and, after an authorization, within what it authorized; one capture unless multi-capture is
    declared; no new charge after an authorization; refunds within what was charged minus refunds and
    chargebacks; and every refusal names its rule."""
    ledger = Ledger([])
    for i, (kind, amount, psp_says) in enumerate(steps):
        if kind is TransactionType.CHARGEBACK:  # the issuer takes back at most what was charged
            amount = min(amount, ledger.amount(TransactionType.CHARGE) - ledger.amount(TransactionType.CHARGEBACK))
            if amount > 0:
                ledger.transactions.append(_transaction(i, kind, amount, psp_says))
            continue
        candidate = _transaction(i, kind, amount, TransactionState.INITIAL)
        current = _payment(planned, [*ledger.transactions, candidate])
        refused = money.refusal_for(current, candidate, declared)
        if refused is not None:
            assert refused.code in RULES and refused.text, refused
            ledger.transactions.append(_transaction(i, kind, amount, TransactionState.FAILURE))
            continue
        authorizations = [t for t in ledger.transactions if t.type is TransactionType.AUTHORIZATION]
        if kind is TransactionType.CHARGE and authorizations:
            assert [t.state for t in authorizations if t.state in LIVE] == [TransactionState.SUCCESS], (
                "a capture of one authorization"
            )
            assert not ledger.live(TransactionType.CANCEL_AUTHORIZATION)
        if kind is TransactionType.CANCEL_AUTHORIZATION:
            assert ledger.amount(TransactionType.AUTHORIZATION) > 0 and not _captures(ledger), "no cancel after a capture"
        ledger.transactions.append(_transaction(i, kind, amount, psp_says))
        _check(ledger, planned, declared)


def _check(ledger: Ledger, planned: int, declared: Capabilities) -> None:
    charged = ledger.amount(TransactionType.CHARGE)
    assert charged <= planned
    assert ledger.amount(TransactionType.AUTHORIZATION) + _direct_charged(ledger) <= planned
    assert len(ledger.live(TransactionType.AUTHORIZATION)) <= 1
    assert ledger.amount(TransactionType.REFUND) + ledger.amount(TransactionType.CHARGEBACK) <= charged
    captures = _captures(ledger)
    assert sum(t.amount.cent_amount for t in captures) <= ledger.amount(TransactionType.AUTHORIZATION) or not captures
    assert len(captures) <= 1 or declared.multiple_captures


def _captures(ledger: Ledger) -> list[Transaction]:
    """The live Charges after the first Authorization: captures of it."""
    first = next((i for i, t in enumerate(ledger.transactions) if t.type is TransactionType.AUTHORIZATION), None)
    after = [] if first is None else ledger.transactions[first:]
    return [t for t in after if t.type is TransactionType.CHARGE and t.state in LIVE]


def _direct_charged(ledger: Ledger) -> int:
    direct = 0
    for t in ledger.transactions:
        if t.type is TransactionType.AUTHORIZATION:
            break
        direct += t.amount.cent_amount if t.type is TransactionType.CHARGE and t.state in LIVE else 0
    return direct


def _transaction(i: int, kind: TransactionType, amount: int, state: TransactionState) -> Transaction:
    return Transaction.model_validate(
        {"id": f"tx-{i}", "type": kind.value, "amount": {"centAmount": amount, "currencyCode": "EUR"}, "state": state.value}
    )


def _payment(planned: int, transactions: list[Transaction]) -> Payment:
    return Payment.model_validate(
        {"id": "pay-1", "version": 1, "amountPlanned": {"centAmount": planned, "currencyCode": "EUR"}}
    ).model_copy(update={"transactions": tuple(transactions)})
