"""Every request the Stripe adapter makes, checked against Stripe's API specification by stripe-mock.

stripe-mock is Stripe's official mock (Go, built from the module proxy into the cache folder). It
keeps no state, but it validates each request's path, method and parameters against Stripe's
OpenAPI specification and answers 400 naming what it does not accept: a contract check of the
shapes localstripe (which accepts almost anything) cannot give. Its answers are fixtures, so only
the requests are asserted here, not what the adapter makes of the answers.
"""

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import stripe

from connector.adapters.contract import OperationRequest, Outcome
from connector.adapters.stripe_adapter import StripeAdapter, create_adapter
from connector.models.payment import Payment
from tests.go_tools import go_install
from tests.stack import free_port, terminate

STRIPE_MOCK = "github.com/stripe/stripe-mock@v0.203.0"
KEY = "sk_test_contract"


@pytest.fixture(scope="module")
def stripe_mock() -> Iterator[str]:
    """stripe-mock on 127.0.0.1 only: both its listeners are bound, or it opens HTTPS on every interface."""
    binary = go_install(STRIPE_MOCK)
    http, https = free_port(), free_port()
    process = subprocess.Popen(
        [str(binary), "-http-addr", f"127.0.0.1:{http}", "-https-addr", f"127.0.0.1:{https}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                httpx.get(f"{url}/v1/charges", headers={"Authorization": f"Bearer {KEY}"}, timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"stripe-mock did not start (exit code {process.poll()})") from None
                time.sleep(0.1)
        yield url
    finally:
        terminate(process)


@pytest.fixture
async def adapter(stripe_mock: str) -> AsyncIterator[StripeAdapter]:
    adapter = create_adapter({"secret_key": KEY, "api_base": stripe_mock})
    yield adapter
    await adapter.aclose()


def request(*transactions: tuple[str, int, str, str | None]) -> OperationRequest:
    payment = Payment.model_validate({
        "id": "pay-1", "version": 1, "amountPlanned": {"centAmount": 5000, "currencyCode": "EUR"},
        "paymentMethodInfo": {"paymentInterface": "STRIPE", "token": {"value": "pm_card_visa"}},
        "transactions": [
            {"id": f"tx-{i}", "type": kind, "amount": {"centAmount": amount, "currencyCode": "EUR"}, "state": state,
             **({"interactionId": ref} if ref else {})}
            for i, (kind, amount, state, ref) in enumerate(transactions)
        ],
    })  # fmt: skip
    return OperationRequest(payment, payment.transactions[-1], f"{payment.transactions[-1].id}-key", "proj-1")


AUTHORIZED = ("Authorization", 5000, "Success", "pi_123")
CAPTURED = ("Charge", 5000, "Success", "pi_123")


def accepted(outcome: Outcome | None) -> bool:
    """stripe-mock's 400 for a request off the specification would be a Failure carrying Stripe's error."""
    return outcome is None or "error" not in outcome.response


CALLS: dict[str, tuple[str, Any]] = {
    "authorize: a manual-capture PaymentIntent": ("authorize", request(("Authorization", 5000, "Initial", None))),
    "direct charge: an automatic-capture PaymentIntent": ("charge", request(("Charge", 5000, "Initial", None))),
    "capture, in part": ("charge", request(AUTHORIZED, ("Charge", 3000, "Initial", None))),
    "refund": ("refund", request(AUTHORIZED, CAPTURED, ("Refund", 1000, "Initial", None))),
    "cancel": ("cancel_authorization", request(AUTHORIZED, ("CancelAuthorization", 5000, "Initial", None))),
    "find a PaymentIntent: search by metadata": ("find", request(("Authorization", 5000, "Initial", None))),
    "find a capture: the intent's status": ("find", request(AUTHORIZED, ("Charge", 5000, "Initial", None))),
    "find a refund: the intent's refunds": ("find", request(AUTHORIZED, CAPTURED, ("Refund", 1000, "Initial", None))),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_every_request_the_adapter_makes_is_in_stripes_specification(adapter: StripeAdapter, call: str) -> None:
    method, operation_request = CALLS[call]
    outcome = await getattr(adapter, method)(operation_request)
    assert accepted(outcome), f"stripe-mock refused {call}: {outcome.response if outcome else None}"


async def test_stripe_mock_refuses_what_the_specification_does_not_have(adapter: StripeAdapter) -> None:
    """The check can fail: a parameter Stripe does not know is refused (so the green runs above mean something)."""
    intents = adapter._stripe.payment_intents  # the SDK's own client, to send a shape the adapter never sends
    with pytest.raises(stripe.InvalidRequestError, match="additional properties are not allowed"):
        await intents.create_async({"amount": 100, "currency": "eur", "colour": "blue"})  # type: ignore[typeddict-unknown-key]


async def test_notification_requests_are_in_stripes_specification(adapter: StripeAdapter) -> None:
    """The look-ups of a notice's object and the webhook endpoint setup (create, list, update), with the
    events it subscribes to: stripe-mock refuses an event name Stripe does not have."""
    from connector.adapters import stripe_notifications, stripe_webhook_endpoints
    from connector.models.notice import Notice

    for event_type, object_id in (
        ("payment_intent.succeeded", "pi_123"), ("refund.failed", "re_123"), ("charge.dispute.created", "dp_123"),
    ):  # fmt: skip
        # Answers are fixtures (with no metadata of ours): only that each request is accepted counts.
        await adapter.look_up(Notice("evt_1", event_type, object_id, 1))
    created = await adapter.register_notifications("https://hooks.example.com/notifications/stripe")
    assert created.change == "created"  # stripe-mock's fixture carries no secret: localstripe's extension does (test_setup.py)
    listed = await adapter._stripe.webhook_endpoints.list_async({"limit": 1})
    fixture = listed.data[0].to_dict()
    changes = stripe_webhook_endpoints.endpoint_changes(
        fixture | {"status": "disabled"}, stripe_webhook_endpoints.endpoint_draft(fixture["url"])
    )
    assert changes["disabled"] is False and set(stripe_notifications.HANDLED_EVENTS) <= set(changes["enabled_events"])
    await adapter._stripe.webhook_endpoints.update_async(fixture["id"], changes)  # type: ignore[arg-type]
