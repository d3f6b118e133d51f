"""What a Payments API request adds to a payment, decided from data alone (docs/design.md, 'The Payments API').

- A ``merchantReference`` the payment already holds adds nothing: the transaction it added answers,
  if the request asks the same (action and amount); otherwise ``DuplicateField``.
- Otherwise the request becomes one Initial transaction, which the worker executes like any other:
  capturePayment a Charge, refundPayment a Refund, cancelPayment a CancelAuthorization of what is
  authorized, and reversePayment a Refund of all that is still refundable, else a CancelAuthorization
  of the authorization, else a refusal.
- The money rules (``money.refusal_for``) judge it over the whole payment with every Initial
  transaction counted as under way: the worker executes those too, so requests that each fit can
  never together take more than the payment allows. The caller's update is version-checked, so two
  concurrent requests are judged one after the other.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from connector.adapters.contract import Capabilities
from connector.commercetools import interaction_type as ct_type
from connector.models.payment import Money, Payment, Transaction, TransactionState, TransactionType
from connector.models.payment_action import ActionName, ApiError, PaymentAction
from connector.processor.money import Refusal, Totals, refusal_for

Outcome = Literal["approved", "rejected", "received"]
Action = dict[str, Any]


_TYPE_OF = {
    ActionName.CAPTURE: TransactionType.CHARGE,
    ActionName.REFUND: TransactionType.REFUND,
    ActionName.CANCEL: TransactionType.CANCEL_AUTHORIZATION,
}
_NEW = "(the requested transaction)"  # the id of a candidate, which is not in the payment


@dataclass(frozen=True, slots=True)
class Admitted:
    """A new transaction: ``actions`` add it, at the payment's version."""

    type: TransactionType
    amount: Money
    actions: list[Action]


@dataclass(frozen=True, slots=True)
class Repeated:
    """The request was made before: its transaction answers."""

    transaction: Transaction
    earlier_request: bool  # another request added it; False: this very request, whose update's answer was lost


def admit(
    payment: Payment,
    request: PaymentAction,
    *,
    request_id: str,
    capabilities: Capabilities,
    type_key: str,
    type_id: str,
    requested_by: str,
    now: datetime,
) -> Admitted | Repeated:
    """The transaction ``request`` adds to ``payment``, or the one it added before; ApiError when refused.

    ``request_id`` is this request's own (a fresh one per request): an earlier attempt of it whose
    answer was lost, but which commercetools applied, is found by it and not added twice. Only
    transactions of our custom Type (``type_id``) are taken for the API's: another Type may name a
    field ``merchantReference`` too."""
    if (own := found_by_request_id(payment, request_id, type_id)) is not None:
        return Repeated(own, earlier_request=False)
    if request.merchant_reference is not None and (
        earlier := _by_field(payment, ct_type.REFERENCE_FIELD, request.merchant_reference, type_id)
    ):
        if _same_request(earlier, request):
            return Repeated(earlier, earlier_request=True)
        raise ApiError(
            400, "DuplicateField",
            "merchantReference was used before on this payment for another action or amount.", field="merchantReference",
        )  # fmt: skip
    under_way = {t.id: TransactionState.PENDING for t in payment.transactions if t.state is TransactionState.INITIAL}
    kind, amount = _transaction_for(payment, request, under_way)
    candidate = Transaction(id=_NEW, type=kind, amount=amount, state=TransactionState.INITIAL)
    refusal = refusal_for(payment, candidate, capabilities, settled=under_way) or _capture_refund_refusal(
        payment, request, under_way, type_id
    )
    if refusal is not None:
        raise ApiError(400, "InvalidOperation", refusal.text, reason=refusal.code)
    recorded = {
        ct_type.ACTION_FIELD: request.name.value,
        ct_type.REQUESTED_BY_FIELD: requested_by,
        ct_type.REQUEST_ID_FIELD: request_id,
    }
    if request.merchant_reference is not None:
        recorded[ct_type.REFERENCE_FIELD] = request.merchant_reference
    if request.transaction_id is not None:
        recorded[ct_type.REFUNDS_FIELD] = request.transaction_id
    draft = {
        "type": kind.value,
        "amount": amount.model_dump(by_alias=True, exclude_none=True),
        "state": TransactionState.INITIAL.value,
        "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "custom": {"type": {"typeId": "type", "key": type_key}, "fields": recorded},
    }
    return Admitted(kind, amount, [{"action": "addTransaction", "transaction": draft}])


def outcome_of(state: TransactionState) -> Outcome:
    if state is TransactionState.SUCCESS:
        return "approved"
    return "rejected" if state is TransactionState.FAILURE else "received"


def added_transaction(before: Payment, after: Payment) -> Transaction:
    """The transaction an update at ``before``'s version added (version checks make it the only one)."""
    known = {t.id for t in before.transactions}
    added = [t for t in after.transactions if t.id not in known]
    if len(added) != 1:
        raise ValueError(f"the update added {len(added)} transactions, not one")
    return added[0]


def found_by_request_id(payment: Payment, request_id: str, type_id: str) -> Transaction | None:
    """The transaction a request added, by the request's own id."""
    return _by_field(payment, ct_type.REQUEST_ID_FIELD, request_id, type_id)


def _transaction_for(
    payment: Payment, request: PaymentAction, under_way: Mapping[str, TransactionState]
) -> tuple[TransactionType, Money]:
    if request.name is ActionName.REVERSE:
        return _reversal(payment, under_way)
    kind = _TYPE_OF[request.name]
    if request.amount is not None:
        return kind, request.amount
    # cancelPayment names no amount: it cancels what is authorized.
    authorized = [
        t for t in payment.transactions if t.type is TransactionType.AUTHORIZATION and t.state is TransactionState.SUCCESS
    ]
    if not authorized:
        raise ApiError(400, "InvalidOperation", "There is no successful authorization to cancel", reason="no_authorization")
    return kind, authorized[0].amount


def _reversal(payment: Payment, under_way: Mapping[str, TransactionState]) -> tuple[TransactionType, Money]:
    """Refund what was charged, else cancel the authorization, else refuse (reversePayment)."""
    totals = Totals.of(payment, under_way)
    currency = payment.amount_planned.currency_code
    if totals.charged > totals.charged_settled:
        # A refund of the settled part now would leave the capture under way charged after an answer
        # that says reversed; its outcome decides what there is to refund.
        raise ApiError(
            400, "InvalidOperation", "Nothing to reverse yet: a capture is under way; reverse once it settled.",
            reason="nothing_to_reverse",
        )  # fmt: skip
    refundable = totals.charged_settled - totals.refunded - totals.charged_back
    if refundable > 0:
        return TransactionType.REFUND, Money(centAmount=refundable, currencyCode=currency)
    if totals.charged > 0:
        raise ApiError(
            400, "InvalidOperation", "Nothing to reverse: everything charged is refunded, being refunded or charged back.",
            reason="nothing_to_reverse",
        )  # fmt: skip
    if totals.authorized > 0 and not totals.cancelled:
        return TransactionType.CANCEL_AUTHORIZATION, Money(centAmount=totals.authorized, currencyCode=currency)
    raise ApiError(
        400, "InvalidOperation", "Nothing to reverse: the payment holds no charge and no authorization.",
        reason="nothing_to_reverse",
    )  # fmt: skip


def _capture_refund_refusal(
    payment: Payment, request: PaymentAction, under_way: Mapping[str, TransactionState], type_id: str
) -> Refusal | None:
    """refundPayment with ``transactionId``: it names a successful capture, and refunds no more than it took."""
    if request.transaction_id is None or request.amount is None:
        return None
    capture = payment.transaction(request.transaction_id)
    if capture is None or capture.type is not TransactionType.CHARGE or capture.state is not TransactionState.SUCCESS:
        return Refusal("not_a_capture", f"Transaction {request.transaction_id} is not a successful Charge of this payment")
    refunded = sum(
        t.amount.cent_amount
        for t in payment.transactions
        if t.type is TransactionType.REFUND
        and under_way.get(t.id, t.state) is not TransactionState.FAILURE
        and t.custom is not None
        and t.custom.type.get("id") == type_id
        and t.custom.fields.get(ct_type.REFUNDS_FIELD) == capture.id
    )
    left = capture.amount.cent_amount - refunded
    if request.amount.cent_amount > left:
        return Refusal(
            "amount_exceeds_refundable", f"Refund of {request.amount.cent_amount} exceeds the {left} left of capture {capture.id}"
        )
    return None


def _by_field(payment: Payment, name: str, value: str, type_id: str) -> Transaction | None:
    return next(
        (
            t
            for t in payment.transactions
            if t.custom is not None and t.custom.type.get("id") == type_id and t.custom.fields.get(name) == value
        ),
        None,
    )


def _same_request(earlier: Transaction, request: PaymentAction) -> bool:
    assert earlier.custom is not None
    if earlier.custom.fields.get(ct_type.ACTION_FIELD) != request.name.value:
        return False
    if request.amount is not None:
        same_amount = (earlier.amount.cent_amount, earlier.amount.currency_code) == (
            request.amount.cent_amount, request.amount.currency_code,
        )  # fmt: skip
        return same_amount and earlier.custom.fields.get(ct_type.REFUNDS_FIELD) == request.transaction_id
    return True
