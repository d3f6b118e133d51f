"""The Checkout Payments API's request and its errors, as commercetools documents them (docs/payments-api.md).

A request body holds ``actions``: exactly one of ``capturePayment`` {amount}, ``refundPayment``
{amount, transactionId?}, ``cancelPayment`` and ``reversePayment``, each with an optional
``merchantReference``. Errors are commercetools' ErrorResponse: ``statusCode``, ``message`` and
``errors``, whose objects carry the seed's codes (``MultipleActionsNotAllowed``, ``RequiredField``
with ``field``, ``ResourceNotFound``) or commercetools' general ones. No error echoes the request's
values back, but for a payment or transaction id already checked to be one.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from connector.models.delivery import RESOURCE_ID_PATTERN
from connector.models.payment import Money

CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")
RESOURCE_ID = re.compile(RESOURCE_ID_PATTERN)
MAX_MERCHANT_REFERENCE = 256
MAX_CENT_AMOUNT = 2**53 - 1  # beyond, JSON clients lose integer precision; no real payment comes near


class ActionName(StrEnum):
    CAPTURE = "capturePayment"
    REFUND = "refundPayment"
    CANCEL = "cancelPayment"
    REVERSE = "reversePayment"


@dataclass(frozen=True, slots=True)
class PaymentAction:
    name: ActionName
    amount: Money | None = None  # capture and refund: required; cancel and reverse: none
    transaction_id: str | None = None  # refund: the capture it refunds
    merchant_reference: str | None = None  # the caller's idempotency key for this payment


class ApiError(Exception):
    """An answer other than 2xx, with commercetools' error representation."""

    def __init__(self, status: int, code: str, message: str, *, cause: str | None = None, **extra: str) -> None:
        """``extra``: more fields of the error object (``field``, ``reason``); ``cause``: for the log line only."""
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.cause = status, code, message, cause
        self.extra: Mapping[str, str] = extra

    def body(self) -> dict[str, Any]:
        return {
            "statusCode": self.status,
            "message": self.message,
            "errors": [{"code": self.code, "message": self.message, **self.extra}],
        }


def required_field(name: str) -> ApiError:
    return ApiError(400, "RequiredField", f"A value is required for field {name}.", field=name)


def invalid_field(name: str, why: str) -> ApiError:
    return ApiError(400, "InvalidField", f"The value of field {name} is not valid: {why}.", field=name)


def resource_not_found(resource_id: str) -> ApiError:
    shown = resource_id if RESOURCE_ID.fullmatch(resource_id) else "(not an id)"
    return ApiError(404, "ResourceNotFound", f"The Resource with ID {shown} was not found.")


def parse_payment_action(body: bytes) -> PaymentAction:
    """The one action of a request body; ApiError naming the first thing wrong with it."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "InvalidJsonInput", "Request body does not contain valid JSON.") from None
    if not isinstance(document, dict):
        raise ApiError(400, "InvalidJsonInput", "Request body must be a JSON object.")
    actions = document.get("actions")
    if actions is None or actions == []:
        raise required_field("actions")
    if not isinstance(actions, list):
        raise invalid_field("actions", "an array of one action is expected")
    if len(actions) > 1:
        raise ApiError(400, "MultipleActionsNotAllowed", "Actions accepts only one action at time. Array size must be 1.")
    action = actions[0]
    if not isinstance(action, dict):
        raise invalid_field("actions[0]", "an object is expected")
    name = action.get("action")
    if name is None:
        raise required_field("action")
    try:
        action_name = ActionName(name) if isinstance(name, str) else None
    except ValueError:
        action_name = None
    if action_name is None:
        raise invalid_field("action", f"one of {', '.join(ActionName)} is expected")
    reference = _merchant_reference(action.get("merchantReference"))
    if action_name is ActionName.CAPTURE or action_name is ActionName.REFUND:
        amount = _amount(action.get("amount"))
        transaction_id = _transaction_id(action.get("transactionId")) if action_name is ActionName.REFUND else None
        return PaymentAction(action_name, amount, transaction_id, reference)
    if action.get("amount") is not None:
        raise invalid_field("amount", f"{action_name} takes no amount")
    return PaymentAction(action_name, merchant_reference=reference)


def _amount(value: object) -> Money:
    if value is None:
        raise required_field("amount")
    if not isinstance(value, dict):
        raise invalid_field("amount", "an object with centAmount and currencyCode is expected")
    cents, currency, digits = value.get("centAmount"), value.get("currencyCode"), value.get("fractionDigits")
    if cents is None:
        raise required_field("amount.centAmount")
    if not _is_integer(cents) or not 0 < cents <= MAX_CENT_AMOUNT:
        raise invalid_field("amount.centAmount", "a positive integer in the currency's minor units is expected")
    if currency is None:
        raise required_field("amount.currencyCode")
    if not isinstance(currency, str) or not CURRENCY_CODE.fullmatch(currency):
        raise invalid_field("amount.currencyCode", "an ISO 4217 code of three capital letters is expected")
    if digits is not None and (not _is_integer(digits) or not 0 <= digits <= 4):
        raise invalid_field("amount.fractionDigits", "an integer from 0 to 4 is expected")
    return Money(centAmount=cents, currencyCode=currency, fractionDigits=digits)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # 100.0 is a float: refused, never rounded


def _transaction_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not RESOURCE_ID.fullmatch(value):
        raise invalid_field("transactionId", "the id of a transaction of the payment is expected")
    return value


def _merchant_reference(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_MERCHANT_REFERENCE or not value.isprintable():
        raise invalid_field("merchantReference", f"a printable string of 1 to {MAX_MERCHANT_REFERENCE} characters is expected")
    return value
