"""Payments for the demo, the tests and the benchmark: drafts with transactions in given states, the
JSON form that messages embed, and waiting for the connector to settle them."""

import asyncio
import itertools
import uuid
from typing import Any

from connector.commercetools.client import CommercetoolsClient
from connector.models.payment import Payment

SANDBOX_INTERFACE = "sandbox"


def payment_draft(
    planned: int,
    done: tuple[tuple[str, int], ...],
    initial: tuple[tuple[str, int], ...],
    references: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A PaymentDraft in EUR for the sandbox: ``done`` transactions in Success, ``initial`` ones for the
    connector. ``references``: the PSP references of the first ``done`` ones (the strict sandbox captures
    and cancels only authorizations it made); the others get a made-up one."""

    def transaction(kind: str, amount: int, state: str, reference: str | None = None) -> dict[str, Any]:
        draft = {"type": kind, "amount": {"currencyCode": "EUR", "centAmount": amount}, "state": state}
        return draft | ({"interactionId": reference or f"earlier-{uuid.uuid4().hex[:8]}"} if state == "Success" else {})

    settled = [transaction(k, a, "Success", r) for (k, a), r in itertools.zip_longest(done, references[: len(done)])]
    return {
        "amountPlanned": {"currencyCode": "EUR", "centAmount": planned},
        "paymentMethodInfo": {"paymentInterface": SANDBOX_INTERFACE, "method": "card", "token": {"value": "pm_demo_visa_4242"}},
        "transactions": settled + [transaction(k, a, "Initial") for k, a in initial],
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
