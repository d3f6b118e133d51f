"""The Payments API's decisions without a network: reading a request (models/payment_action.py) and what
it adds to a payment (processor/intent_decisions.py). tests/test_payment_api.py runs them over HTTP."""

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.adapters.contract import Capabilities
from connector.models.payment import CustomFields, Payment, TransactionState, TransactionType
from connector.models.payment_action import ActionName, ApiError, parse_payment_action
from connector.processor.intent_decisions import Admitted, Repeated, added_transaction, admit, outcome_of

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
TYPE_ID = "type-of-the-connector"
SINGLE = Capabilities()
MULTI = Capabilities(multiple_captures=True)

Row = tuple[str, int, str] | tuple[str, int, str, dict[str, str]]


def payment(*rows: Row, planned: int = 2000) -> Payment:
    transactions: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        kind, amount, state = row[:3]
        transaction: dict[str, Any] = {
            "id": f"tx-{i}",
            "type": kind,
            "amount": {"centAmount": amount, "currencyCode": "EUR"},
            "state": state,
        }
        if len(row) == 4:
            transaction["custom"] = {"type": {"typeId": "type", "id": TYPE_ID}, "fields": row[3]}
        transactions.append(transaction)
    return Payment.model_validate(
        {
            "id": "pay-1",
            "version": 3,
            "amountPlanned": {"centAmount": planned, "currencyCode": "EUR"},
            "transactions": transactions,
        }
    )


def body(action: str, **fields: Any) -> bytes:
    return orjson.dumps({"actions": [{"action": action, **fields}]})


def eur(cents: Any, currency: Any = "EUR") -> dict[str, Any]:
    return {"centAmount": cents, "currencyCode": currency}


def decide(
    p: Payment, request_body: bytes, capabilities: Capabilities = SINGLE, request_id: str = "req-1"
) -> Admitted | Repeated:
    request = parse_payment_action(request_body)
    return admit(
        p, request, request_id=request_id, capabilities=capabilities, type_key="t", type_id=TYPE_ID, requested_by="oms", now=NOW
    )


def refused(p: Payment, request_body: bytes, capabilities: Capabilities = SINGLE) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decide(p, request_body, capabilities)
    return caught.value


# Reading the body: the seed's errors first.


@pytest.mark.parametrize(
    ("raw", "status", "code", "field"),
    [
        (b'{"actions": [{"action": "cancelPayment"}, {"action": "cancelPayment"}]}', 400, "MultipleActionsNotAllowed", None),
        (b"{}", 400, "RequiredField", "actions"),
        (b'{"actions": []}', 400, "RequiredField", "actions"),
        (b'{"actions": [{}]}', 400, "RequiredField", "action"),
        (body("capturePayment"), 400, "RequiredField", "amount"),
        (body("refundPayment", amount={"currencyCode": "EUR"}), 400, "RequiredField", "amount.centAmount"),
        (body("capturePayment", amount={"centAmount": 5}), 400, "RequiredField", "amount.currencyCode"),
        (body("capturePayment", amount=eur(-1)), 400, "InvalidField", "amount.centAmount"),
        (body("capturePayment", amount=eur(0)), 400, "InvalidField", "amount.centAmount"),
        (body("capturePayment", amount=eur(10.5)), 400, "InvalidField", "amount.centAmount"),
        (body("capturePayment", amount=eur(10.0)), 400, "InvalidField", "amount.centAmount"),  # never rounded
        (body("capturePayment", amount=eur(True)), 400, "InvalidField", "amount.centAmount"),
        (body("capturePayment", amount=eur("100")), 400, "InvalidField", "amount.centAmount"),
        (body("capturePayment", amount=eur(2**63)), 400, "InvalidField", "amount.centAmount"),
        (body("capturePayment", amount=eur(100, "eur")), 400, "InvalidField", "amount.currencyCode"),
        (body("payEverything"), 400, "InvalidField", "action"),
        (body("cancelPayment", amount=eur(100)), 400, "InvalidField", "amount"),
        (body("refundPayment", amount=eur(100), transactionId="../x"), 400, "InvalidField", "transactionId"),
        (body("cancelPayment", merchantReference=""), 400, "InvalidField", "merchantReference"),
        (body("cancelPayment", merchantReference="a\nb"), 400, "InvalidField", "merchantReference"),
        (b"not json", 400, "InvalidJsonInput", None),
        (b"[1]", 400, "InvalidJsonInput", None),
        (b'{"actions": "capturePayment"}', 400, "InvalidField", "actions"),
    ],
)
def test_bad_bodies_get_the_seeds_errors(raw: bytes, status: int, code: str, field: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        parse_payment_action(raw)
    error = caught.value
    assert (error.status, error.code, error.extra.get("field")) == (status, code, field)
    assert error.body()["errors"][0]["code"] == code and error.body()["statusCode"] == status


def test_the_seeds_messages_word_for_word() -> None:
    with pytest.raises(ApiError) as two:
        parse_payment_action(b'{"actions": [{"action": "cancelPayment"}, {"action": "cancelPayment"}]}')
    assert two.value.message == "Actions accepts only one action at time. Array size must be 1."
    with pytest.raises(ApiError) as missing:
        parse_payment_action(body("capturePayment"))
    assert missing.value.body()["errors"][0] == {
        "code": "RequiredField",
        "message": "A value is required for field amount.",
        "field": "amount",
    }


def test_a_good_body_is_read_exactly() -> None:
    request = parse_payment_action(body("refundPayment", amount=eur(250), transactionId="tx-1", merchantReference="rma-7"))
    assert request.name is ActionName.REFUND
    assert request.amount is not None and (request.amount.cent_amount, request.amount.currency_code) == (250, "EUR")
    assert (request.transaction_id, request.merchant_reference) == ("tx-1", "rma-7")


# What the request adds.


def test_each_action_becomes_its_initial_transaction() -> None:
    authorized = payment(("Authorization", 1000, "Success"))
    capture = decide(authorized, body("capturePayment", amount=eur(1000), merchantReference="cap-1"))
    assert isinstance(capture, Admitted) and (capture.type, capture.amount.cent_amount) == (TransactionType.CHARGE, 1000)
    [action] = capture.actions
    transaction = action["transaction"]
    assert action["action"] == "addTransaction" and transaction["state"] == "Initial"
    assert transaction["custom"] == {
        "type": {"typeId": "type", "key": "t"},
        "fields": {"paymentAction": "capturePayment", "requestedBy": "oms", "requestId": "req-1", "merchantReference": "cap-1"},
    }
    cancel = decide(authorized, body("cancelPayment"))
    assert isinstance(cancel, Admitted) and (cancel.type, cancel.amount.cent_amount) == (
        TransactionType.CANCEL_AUTHORIZATION,
        1000,
    )
    captured = payment(("Authorization", 1000, "Success"), ("Charge", 1000, "Success"))
    refund = decide(captured, body("refundPayment", amount=eur(300)))
    assert isinstance(refund, Admitted) and (refund.type, refund.amount.cent_amount) == (TransactionType.REFUND, 300)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # something charged: refund all that is still refundable
        ((("Authorization", 1000, "Success"), ("Charge", 800, "Success"), ("Refund", 300, "Success")), ("Refund", 500)),
        ((("Charge", 1000, "Success"),), ("Refund", 1000)),
        # only authorized: cancel it
        ((("Authorization", 1000, "Success"),), ("CancelAuthorization", 1000)),
    ],
)
def test_reverse_refunds_else_cancels(rows: tuple[Row, ...], expected: tuple[str, int]) -> None:
    decision = decide(payment(*rows), body("reversePayment"))
    assert isinstance(decision, Admitted) and (decision.type.value, decision.amount.cent_amount) == expected


@pytest.mark.parametrize(
    "rows",
    [
        (),
        (("Authorization", 1000, "Pending"),),
        (("Authorization", 1000, "Success"), ("CancelAuthorization", 1000, "Success")),
        (("Authorization", 1000, "Success"), ("Charge", 1000, "Initial")),  # a capture is under way
        # a second capture under way beside a settled one: refunding the first alone would leave it charged
        (("Authorization", 1000, "Success"), ("Charge", 400, "Success"), ("Charge", 300, "Initial")),
        (("Authorization", 1000, "Success"), ("Charge", 400, "Success"), ("Charge", 300, "Pending")),
        (("Authorization", 1000, "Success"), ("Charge", 1000, "Success"), ("Refund", 1000, "Initial")),
        (("Charge", 1000, "Success"), ("Chargeback", 1000, "Success")),
    ],
)
def test_reverse_refuses_when_nothing_can_be_reversed(rows: tuple[Row, ...]) -> None:
    error = refused(payment(*rows), body("reversePayment"))
    assert (error.status, error.code, error.extra["reason"]) == (400, "InvalidOperation", "nothing_to_reverse")


@pytest.mark.parametrize(
    ("rows", "request_body", "reason"),
    [
        ((("Authorization", 1000, "Success"),), body("capturePayment", amount=eur(1001)), "amount_exceeds_authorized"),
        (
            (("Authorization", 1000, "Success"), ("Charge", 1000, "Success")),
            body("refundPayment", amount=eur(1001)),
            "amount_exceeds_refundable",
        ),
        ((("Authorization", 1000, "Success"), ("Charge", 1000, "Success")), body("cancelPayment"), "already_captured"),
        ((("Authorization", 1000, "Success"),), body("capturePayment", amount=eur(1000, "USD")), "currency_mismatch"),
        ((), body("cancelPayment"), "no_authorization"),
        ((("Authorization", 1000, "Pending"),), body("capturePayment", amount=eur(1000)), "authorization_not_successful"),
        # Initial transactions count as under way: the worker executes them before this one
        (
            (("Authorization", 1000, "Success"), ("Charge", 1000, "Initial")),
            body("capturePayment", amount=eur(1000)),
            "already_captured",
        ),
        (
            (("Charge", 1000, "Success"), ("Refund", 700, "Initial")),
            body("refundPayment", amount=eur(400)),
            "amount_exceeds_refundable",
        ),
        (
            (("Authorization", 1000, "Success"), ("CancelAuthorization", 1000, "Initial")),
            body("cancelPayment"),
            "already_cancelled",
        ),
        ((("Charge", 1000, "Success"),), body("refundPayment", amount=eur(100), transactionId="tx-9"), "not_a_capture"),
        (
            (
                ("Charge", 600, "Success"),
                ("Charge", 400, "Success"),
                ("Refund", 500, "Success", {"refundedTransactionId": "tx-1"}),
            ),
            body("refundPayment", amount=eur(1), transactionId="tx-1"),  # capture tx-1 (400) is refunded by 500 already
            "amount_exceeds_refundable",
        ),
    ],
)
def test_the_money_rules_of_the_whole_payment_refuse(rows: tuple[Row, ...], request_body: bytes, reason: str) -> None:
    error = refused(payment(*rows), request_body, MULTI if reason == "amount_exceeds_refundable" else SINGLE)
    assert (error.status, error.code, error.extra["reason"]) == (400, "InvalidOperation", reason)
    assert error.message


def test_a_repeated_merchant_reference_adds_nothing_and_a_changed_one_is_refused() -> None:
    fields = {"paymentAction": "capturePayment", "merchantReference": "cap-1", "requestId": "req-0"}
    p = payment(("Authorization", 1000, "Success"), ("Charge", 1000, "Success", fields))
    again = decide(p, body("capturePayment", amount=eur(1000), merchantReference="cap-1"))
    assert isinstance(again, Repeated) and again.transaction.id == "tx-1" and again.earlier_request
    for changed in (
        body("capturePayment", amount=eur(900), merchantReference="cap-1"),
        body("cancelPayment", merchantReference="cap-1"),
    ):
        error = refused(p, changed)
        assert (error.code, error.extra["field"]) == ("DuplicateField", "merchantReference")
    # the same request met again after its update's answer was lost: found by its own id, whatever else
    own = decide(p, body("capturePayment", amount=eur(1000)), request_id="req-0")
    assert isinstance(own, Repeated) and not own.earlier_request


def test_a_reference_under_another_custom_type_is_not_ours() -> None:
    """A merchant's own transaction Type may have a merchantReference field: it is not a repeat."""
    theirs = CustomFields(type={"typeId": "type", "id": "the-merchants-type"}, fields={"merchantReference": "m-1"})
    authorization = payment(("Authorization", 1000, "Success")).transactions[0].model_copy(update={"custom": theirs})
    p = payment().model_copy(update={"transactions": (authorization,)})
    decision = decide(p, body("capturePayment", amount=eur(1000), merchantReference="m-1"))
    assert isinstance(decision, Admitted)


def test_refunds_of_another_type_do_not_count_against_a_named_capture() -> None:
    """Only refunds the API added (our Type) name a capture; another Type's field of that name is not ours."""
    rows: tuple[Row, ...] = (("Charge", 600, "Success"), ("Charge", 400, "Success"), ("Refund", 300, "Success"))
    theirs = CustomFields(type={"typeId": "type", "id": "the-merchants-type"}, fields={"refundedTransactionId": "tx-1"})
    p = payment(*rows)
    p = p.model_copy(update={"transactions": (*p.transactions[:2], p.transactions[2].model_copy(update={"custom": theirs}))})
    decision = decide(p, body("refundPayment", amount=eur(400), transactionId="tx-1"), MULTI)
    assert isinstance(decision, Admitted)
    ours = payment(*rows[:2], ("Refund", 300, "Success", {"refundedTransactionId": "tx-1"}))
    error = refused(ours, body("refundPayment", amount=eur(400), transactionId="tx-1"), MULTI)
    assert error.extra["reason"] == "amount_exceeds_refundable"


def test_the_added_transaction_is_the_one_new_id() -> None:
    before = payment(("Authorization", 1000, "Success"))
    after = payment(("Authorization", 1000, "Success"), ("Charge", 1000, "Initial"))
    assert added_transaction(before, after).id == "tx-1"
    with pytest.raises(ValueError, match="added 0"):
        added_transaction(after, after)


def test_outcomes() -> None:
    assert [outcome_of(s) for s in TransactionState] == ["received", "received", "approved", "rejected"]


@settings(max_examples=300, deadline=None)
@given(
    authorized=st.integers(1, 10_000),
    requests=st.lists(
        st.tuples(st.sampled_from(["capture", "refund", "cancel", "reverse", "settle"]), st.integers(1, 10_000)), max_size=14
    ),
)
def test_admitted_requests_never_together_exceed_the_payment(authorized: int, requests: list[tuple[str, int]]) -> None:
    """Requests one after the other (as version checks order them), with the worker settling what was
    added now and then ("settle": every Initial one succeeds): never more captured than authorized,
    more refunded than captured, or a cancel beside a capture."""
    rows: list[Row] = [("Authorization", authorized, "Success")]
    for kind, amount in requests:
        if kind == "settle":
            rows = [(k, a, "Success" if state == "Initial" else state) for k, a, state, *_ in rows]
            continue
        raw = {
            "capture": body("capturePayment", amount=eur(amount)), "refund": body("refundPayment", amount=eur(amount)),
            "cancel": body("cancelPayment"), "reverse": body("reversePayment"),
        }[kind]  # fmt: skip
        try:
            decision = decide(payment(*rows, planned=authorized), raw, MULTI)
        except ApiError as error:
            assert (error.status, error.code) == (400, "InvalidOperation")
            continue
        assert isinstance(decision, Admitted)
        rows.append((decision.type.value, decision.amount.cent_amount, "Initial"))
    charged = sum(a for k, a, *_ in rows if k == "Charge")
    refunded = sum(a for k, a, *_ in rows if k == "Refund")
    cancelled = any(k == "CancelAuthorization" for k, *_ in rows)
    assert charged <= authorized and refunded <= charged
    assert not (cancelled and charged)
