"""The money rules: whether a transaction may be executed, judged over the whole payment. No I/O.

Money counts when it is held or moving: a Success or a Pending transaction (a Pending charge may
still be captured, a Pending refund may still be paid out), so two transactions in flight can never
together exceed what one of them may take; only what is refunded must have arrived first. The
rules, each refusal named by its code:

- ``invalid_amount``: amounts are positive. ``currency_mismatch``: in the payment's currency.
  ``currency_minor_units``: a ``fractionDigits`` that is not the currency's (ISO 4217).
- Authorization: ``authorization_exists`` when another one succeeded or is pending, cancelled or not
  (one authorization per payment, so every capture and cancel knows which one it addresses); ``amount_exceeds_planned``
  when it and the payment's charges exceed ``amountPlanned``.
- Charge: ``amount_exceeds_planned`` when it and the payment's other charges exceed ``amountPlanned``.
- Charge on a payment with an Authorization (anywhere, in any state) is a capture of it, never a new
  charge:
  ``authorization_not_successful`` unless it succeeded, ``authorization_cancelled``,
  ``amount_exceeds_authorized`` beyond what is authorized and not yet captured, ``already_captured``
  for a second capture where the PSP captures once, ``partial_capture_unsupported``.
- Refund: ``amount_exceeds_refundable`` beyond what was charged successfully (a Pending charge may
  still fail) minus refunds and chargebacks (an Initial one too: the issuer has claimed it);
  ``partial_refund_unsupported``.
- CancelAuthorization: ``no_authorization``, ``already_captured``, ``already_cancelled``.
- Chargeback: ``not_executable`` (the issuer's record; the planner never hands one over).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from connector.adapters.contract import DEFAULT_CAPABILITIES, Capabilities, Outcome
from connector.models.currency import minor_units
from connector.models.payment import Payment, Transaction, TransactionState, TransactionType

NOTHING_SETTLED: Mapping[str, TransactionState] = MappingProxyType({})

RULES = frozenset(
    {
        "invalid_amount", "currency_mismatch", "currency_minor_units", "authorization_exists", "amount_exceeds_planned",
        "authorization_not_successful", "authorization_cancelled", "amount_exceeds_authorized", "already_captured",
        "partial_capture_unsupported", "amount_exceeds_refundable", "partial_refund_unsupported", "no_authorization",
        "already_cancelled", "not_executable",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    text: str

    def as_outcome(self) -> Outcome:
        return Outcome(TransactionState.FAILURE, None, self.code, self.text, {}, {"refusedBy": "connector"})


@dataclass(frozen=True, slots=True)
class Totals:
    """The payment's money by kind, in minor units; ``live`` means Success or Pending."""

    has_authorization: bool  # in any state, anywhere in the payment: then a Charge is its capture
    authorization_live: bool  # an authorization holds money, or may
    authorized: int  # Success authorizations
    captures: int  # live Charges on a payment with an Authorization, wherever they stand: its captures
    captured: int
    charged: int  # live Charges, captures or not
    charged_settled: int  # Success Charges: what a refund may pay back
    refunded: int  # live Refunds
    charged_back: int  # Chargebacks not failed: an Initial one is the issuer's claim already
    cancelled: bool  # a CancelAuthorization succeeded or is under way

    @classmethod
    def of(cls, payment: Payment, settled: Mapping[str, TransactionState] = NOTHING_SETTLED) -> "Totals":
        """``settled``: new states of some transactions (by id), not stored yet."""
        # One pass: this runs for every transaction the connector executes.
        has_authorization = authorization_live = cancelled = False
        authorized = charges = charged = charged_settled = refunded = charged_back = 0
        for t in payment.transactions:
            amount, state = t.amount.cent_amount, settled.get(t.id, t.state)
            live = state is TransactionState.SUCCESS or state is TransactionState.PENDING
            match t.type:
                case TransactionType.AUTHORIZATION:
                    has_authorization = True
                    authorization_live |= live
                    authorized += amount if state is TransactionState.SUCCESS else 0
                case TransactionType.CHARGE if live:
                    charges, charged = charges + 1, charged + amount
                    charged_settled += amount if state is TransactionState.SUCCESS else 0
                case TransactionType.REFUND if live:
                    refunded += amount
                case TransactionType.CHARGEBACK if state is not TransactionState.FAILURE:
                    charged_back += amount
                case TransactionType.CANCEL_AUTHORIZATION if live:
                    cancelled = True
        # Once the payment has an Authorization, every live Charge counts as its capture, even one made
        # before it was added: the safe side, where a capture too many or a cancel after one is refused.
        captures, captured = (charges, charged) if has_authorization else (0, 0)
        return cls(
            has_authorization, authorization_live, authorized, captures, captured, charged, charged_settled, refunded,
            charged_back, cancelled,
        )  # fmt: skip


def refusal_for(
    payment: Payment,
    transaction: Transaction,
    capabilities: Capabilities = DEFAULT_CAPABILITIES,
    settled: Mapping[str, TransactionState] = NOTHING_SETTLED,
) -> Refusal | None:
    """Why ``transaction`` must fail without a PSP call, or None when it may be executed.

    ``payment`` shows the outcomes of the transactions before it; ``transaction`` is Initial in it (or
    not in it yet). ``settled``: states to judge some transactions by (by id), as in ``Totals.of``.
    """
    if (refusal := _amount_refusal(payment, transaction)) is not None:
        return refusal
    amount = transaction.amount.cent_amount
    totals = Totals.of(payment, settled)
    planned = payment.amount_planned.cent_amount
    if transaction.type is TransactionType.CHARGE and amount + totals.charged > planned:
        return Refusal(
            "amount_exceeds_planned", f"Charge of {amount} with {totals.charged} already charged exceeds the planned {planned}"
        )
    match transaction.type:
        case TransactionType.AUTHORIZATION:
            if totals.authorization_live:
                return Refusal(
                    "authorization_exists", "The payment already has an authorization; another one needs a new payment"
                )
            if amount + totals.charged > planned:
                return Refusal(
                    "amount_exceeds_planned",
                    f"Authorization of {amount} with {totals.charged} already charged exceeds the planned {planned}",
                )
        case TransactionType.CHARGE if totals.has_authorization:
            return _capture_refusal(amount, totals, capabilities)
        case TransactionType.REFUND:
            refundable = totals.charged_settled - totals.refunded - totals.charged_back
            if amount > refundable:
                return Refusal(
                    "amount_exceeds_refundable",
                    f"Refund of {amount} exceeds the {max(refundable, 0)} still refundable (charged successfully"
                    f" {totals.charged_settled}, refunded {totals.refunded}, charged back {totals.charged_back})",
                )
            if amount < refundable and not capabilities.partial_refunds:
                return Refusal("partial_refund_unsupported", f"The PSP refunds only in full: {refundable}, not {amount}")
        case TransactionType.CANCEL_AUTHORIZATION:
            if totals.authorized == 0:
                return Refusal("no_authorization", "There is no successful authorization to cancel")
            if totals.captured > 0:
                return Refusal("already_captured", "An authorization cannot be cancelled after a capture")
            if totals.cancelled:
                return Refusal("already_cancelled", "The authorization is already cancelled")
        case TransactionType.CHARGEBACK:
            return Refusal("not_executable", "Chargebacks are initiated by the card issuer; the connector never executes them")
    return None


def _amount_refusal(payment: Payment, transaction: Transaction) -> Refusal | None:
    amount = transaction.amount
    if amount.cent_amount <= 0:
        return Refusal("invalid_amount", f"Amount must be positive, got {amount.cent_amount} minor units")
    if amount.currency_code != payment.amount_planned.currency_code:
        return Refusal(
            "currency_mismatch",
            f"Transaction currency {amount.currency_code} differs from the payment's {payment.amount_planned.currency_code}",
        )
    digits = minor_units(amount.currency_code)
    for money in (amount, payment.amount_planned):
        if money.fraction_digits is not None and money.fraction_digits != digits:
            return Refusal(
                "currency_minor_units",
                f"{money.currency_code} has {digits} decimal places, but an amount says fractionDigits {money.fraction_digits}",
            )
    return None


def _capture_refusal(amount: int, totals: Totals, capabilities: Capabilities) -> Refusal | None:
    if totals.authorized == 0:
        return Refusal(
            "authorization_not_successful",
            "A Charge on a payment with an Authorization captures it, and no authorization has succeeded",
        )
    if totals.cancelled:
        return Refusal("authorization_cancelled", "The authorization was cancelled; nothing to capture")
    capturable = totals.authorized - totals.captured
    if totals.captures > 0 and not capabilities.multiple_captures:
        return Refusal(
            "already_captured", "The PSP captures an authorization once and has released the rest; more needs a new payment"
        )
    if amount > capturable:
        return Refusal("amount_exceeds_authorized", f"Capture of {amount} exceeds the {capturable} still authorized")
    if amount < capturable and not capabilities.partial_captures:
        return Refusal("partial_capture_unsupported", f"The PSP captures only in full: {capturable}, not {amount}")
    return None
