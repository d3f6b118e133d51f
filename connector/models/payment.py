"""The commercetools Payment, as far as the connector reads it.

Unknown fields are tolerated (commercetools adds fields over time) and kept out of our way.
Money is always an integer number of the currency's minor units (``centAmount``).
"""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class TransactionType(StrEnum):
    AUTHORIZATION = "Authorization"
    CANCEL_AUTHORIZATION = "CancelAuthorization"
    CHARGE = "Charge"
    REFUND = "Refund"
    CHARGEBACK = "Chargeback"


class TransactionState(StrEnum):
    INITIAL = "Initial"
    PENDING = "Pending"
    SUCCESS = "Success"
    FAILURE = "Failure"

    @property
    def rank(self) -> int:
        """States move forward only: Initial < Pending < Success | Failure."""
        return _STATE_RANK[self]


_STATE_RANK = {
    TransactionState.INITIAL: 0,
    TransactionState.PENDING: 1,
    TransactionState.SUCCESS: 2,
    TransactionState.FAILURE: 2,
}


class Money(_Model):
    cent_amount: int = Field(alias="centAmount")
    currency_code: str = Field(alias="currencyCode", min_length=3, max_length=3)
    fraction_digits: int | None = Field(default=None, alias="fractionDigits")

    def __str__(self) -> str:
        return f"{self.cent_amount} {self.currency_code} (minor units)"


class CustomFields(_Model):
    type: dict[str, Any]
    fields: dict[str, Any] = {}


class Transaction(_Model):
    id: str
    type: TransactionType
    amount: Money
    state: TransactionState
    timestamp: datetime | None = None
    interaction_id: str | None = Field(default=None, alias="interactionId")
    custom: CustomFields | None = None  # the Payments API's request, on the transactions it added


class PaymentMethodToken(_Model):
    value: str

    def __repr__(self) -> str:
        return "PaymentMethodToken(value='***')"

    __str__ = __repr__


class PaymentMethodInfo(_Model):
    payment_interface: str | None = Field(default=None, alias="paymentInterface")
    method: str | None = None
    token: PaymentMethodToken | None = None
    interface_account: str | None = Field(default=None, alias="interfaceAccount")


class PaymentStatus(_Model):
    interface_code: str | None = Field(default=None, alias="interfaceCode")
    interface_text: str | None = Field(default=None, alias="interfaceText")


class Payment(_Model):
    id: str
    version: int
    key: str | None = None
    amount_planned: Money = Field(alias="amountPlanned")
    payment_method_info: PaymentMethodInfo = Field(default_factory=PaymentMethodInfo, alias="paymentMethodInfo")
    payment_status: PaymentStatus = Field(default_factory=PaymentStatus, alias="paymentStatus")
    transactions: tuple[Transaction, ...] = ()
    interface_interactions: tuple[CustomFields, ...] = Field(default=(), alias="interfaceInteractions")
    last_modified_at: str | None = Field(default=None, alias="lastModifiedAt")  # ISO 8601, as stored

    def transaction(self, transaction_id: str) -> Transaction | None:
        return next((t for t in self.transactions if t.id == transaction_id), None)
