"""Payments for the demo, the tests and the benchmark: drafts with transactions in given states, the
JSON form that messages embed, and waiting for the connector to settle them."""

import asyncio
import uuid
from typing import Any

from connector.commercetools.client import CommercetoolsClient
from connector.models.payment import Payment

SANDBOX_INTERFACE = "sandbox"


def payment_draft(planned: int, done: tuple[tuple[str, int], ...], initial: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """A PaymentDraft in EUR for the sandbox: ``done`` transactions in Success, ``initial`` ones for the connector."""

    def transaction(kind: str, amount: int, state: str) -> dict[str, Any]:
        draft = {"type": kind, "amount": {"currencyCode": "EUR", "centAmount": amount}, "state": state}
        return draft | ({"interactionId": f"earlier-{uuid.uuid4().hex[:8]}"} if state == "Success" else {})

    return {
        "amountPlanned": {"currencyCode": "EUR", "centAmount": planned},
        "paymentMethodInfo": {"paymentInterface": SANDBOX_INTERFACE, "method": "card", "token": {"value": "pm_demo_visa_4242"}},
        "transactions": [transaction(k, a, "Success") for k, a in done] + [transaction(k, a, "Initial") for k, a in initial],
    }


def as_json(payment: Payment) -> dict[str, Any]:
    return payment.model_dump(by_alias=True, mode="json", exclude_none=True)


async def wait_until_settled(ct: CommercetoolsClient, payment_ids: list[str], timeout_s: float) -> list[Payment]:
    """The payments once none of their transactions is Initial any more, Chargebacks (the issuer's,
    which the connector leaves as they are) apart; polled every 0.2 s."""
    async with asyncio.timeout(timeout_s):
        while True:
            payments = [await ct.get_payment(pid) for pid in payment_ids]
            if all(t.state.value != "Initial" or t.type.value == "Chargeback" for p in payments for t in p.transactions):
                return payments
            await asyncio.sleep(0.2)
