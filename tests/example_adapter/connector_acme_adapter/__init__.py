"""The ACME adapter: an example plugin. ACME is an imaginary PSP that approves everything."""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from connector.adapters.contract import OperationRequest, Outcome
from connector.models.payment import TransactionState


class AcmeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant: str


class AcmeAdapter:
    def __init__(self, settings: AcmeSettings) -> None:
        self._merchant = settings.merchant
        self._executed: dict[str, Outcome] = {}  # idempotency key -> first outcome

    async def authorize(self, request: OperationRequest) -> Outcome:
        return self._execute("authorize", request)

    async def charge(self, request: OperationRequest) -> Outcome:
        return self._execute("charge", request)

    async def refund(self, request: OperationRequest) -> Outcome:
        return self._execute("refund", request)

    async def cancel_authorization(self, request: OperationRequest) -> Outcome:
        return self._execute("cancel_authorization", request)

    async def aclose(self) -> None:
        self._executed.clear()

    def _execute(self, operation: str, request: OperationRequest) -> Outcome:
        if request.idempotency_key not in self._executed:
            reference = f"acme_{self._merchant}_{len(self._executed) + 1}"
            summary = {"operation": operation, "amount": request.transaction.amount.cent_amount}
            self._executed[request.idempotency_key] = Outcome(
                TransactionState.SUCCESS, reference, "approved", "Approved by ACME", summary, {"reference": reference}
            )
        return self._executed[request.idempotency_key]


def create_adapter(settings: Mapping[str, Any]) -> AcmeAdapter:
    return AcmeAdapter(AcmeSettings.model_validate(settings))
