"""The Stripe adapter against localstripe: what it sends, and how it reads Stripe's answers."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from connector.adapters.contract import OperationRequest
from connector.adapters.registry import AdapterRegistry, AdapterRoute
from connector.adapters.stripe_adapter import StripeAdapter, create_adapter, stripe_amount
from connector.errors import (
    ConfigurationError,
    PermanentError,
    PspCredentialsRejected,
    PspRequestInProgress,
    PspStoredError,
    PspUnavailable,
)
from connector.models.payment import Money, Payment, TransactionState
from tests.localstripe_peer import LocalStripe
from tests.stack import free_port

KEY = "sk_test_adapter_4f9a"


def request(
    *transactions: tuple[str, int, str, str | None], currency: str = "EUR", token: str | None = "pm_card_visa", prefix: str = ""
) -> OperationRequest:
    """A request for the last of ``transactions`` (type, amount, state, PSP reference), whose ids start with ``prefix``."""
    payment = Payment.model_validate({
        "id": "pay-1", "version": 1, "amountPlanned": {"centAmount": 10_000, "currencyCode": currency},
        "paymentMethodInfo": {"paymentInterface": "STRIPE", **({"token": {"value": token}} if token else {})},
        "transactions": [
            {"id": f"{prefix}tx-{i}", "type": kind, "amount": {"centAmount": amount, "currencyCode": currency}, "state": state,
             **({"interactionId": ref} if ref else {})}
            for i, (kind, amount, state, ref) in enumerate(transactions)
        ],
    })  # fmt: skip
    last = payment.transactions[-1]
    return OperationRequest(payment, last, f"{last.id}-{last.type.value}", "proj-1")


@pytest.fixture
async def adapter(localstripe: LocalStripe) -> AsyncIterator[StripeAdapter]:
    adapter = create_adapter({"secret_key": KEY, "api_base": localstripe.url})
    yield adapter
    await adapter.aclose()


async def test_authorization_sends_key_metadata_and_manual_capture(adapter: StripeAdapter, localstripe: LocalStripe) -> None:
    """An authorization is a confirmed manual-capture PaymentIntent with our idempotency key and metadata."""
    outcome = await adapter.authorize(request(("Authorization", 2500, "Initial", None)))
    assert outcome.state is TransactionState.SUCCESS and outcome.code == "requires_capture"
    assert outcome.psp_reference and outcome.psp_reference.startswith("pi_")
    [sent] = await localstripe.requests()
    assert sent["headers"]["Idempotency-Key"] == "tx-0-Authorization"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    form = sent["form"]
    assert (form["amount"], form["currency"], form["capture_method"], form["confirm"]) == ("2500", "eur", "manual", "true")
    assert form["allowed_payment_method_types[0]"] == "card" and "payment_method_types[0]" not in form
    assert (form["metadata[ctProjectKey]"], form["metadata[ctPaymentId]"], form["metadata[ctTransactionId]"]) == (
        "proj-1",
        "pay-1",
        "tx-0",
    )
    assert outcome.request["paymentMethod"] == "***visa" and KEY not in repr(outcome)


async def test_zero_decimal_currency_amount_is_sent_as_is(adapter: StripeAdapter, localstripe: LocalStripe) -> None:
    """JPY has no minor unit: centAmount 500 is 500 yen, and Stripe gets 500."""
    await adapter.charge(request(("Charge", 500, "Initial", None), currency="JPY"))
    [intent] = await localstripe.objects("payment_intents")
    assert (intent["amount"], intent["currency"], intent["status"]) == (500, "jpy", "succeeded")


async def test_capture_refund_and_cancel_use_the_payment_intent(adapter: StripeAdapter, localstripe: LocalStripe) -> None:
    """Capture (part), refund and cancel address the PaymentIntent of the earlier transaction."""
    authorized = await adapter.authorize(request(("Authorization", 3000, "Initial", None)))
    intent = authorized.psp_reference
    captured = await adapter.charge(request(("Authorization", 3000, "Success", intent), ("Charge", 1200, "Initial", None)))
    assert captured.state is TransactionState.SUCCESS and captured.psp_reference == intent
    refunded = await adapter.refund(
        request(("Authorization", 3000, "Success", intent), ("Charge", 1200, "Success", intent), ("Refund", 200, "Initial", None))
    )
    assert refunded.state is TransactionState.SUCCESS and (refunded.psp_reference or "").startswith("re_")
    other = (await adapter.authorize(request(("Authorization", 900, "Initial", None), prefix="b-"))).psp_reference
    cancelled = await adapter.cancel_authorization(
        request(("Authorization", 900, "Success", other), ("CancelAuthorization", 900, "Initial", None), prefix="b-")
    )
    assert cancelled.state is TransactionState.SUCCESS and cancelled.code == "canceled"
    paths = [
        (r["path"], r["form"].get("amount_to_capture"), r["headers"]["Idempotency-Key"]) for r in await localstripe.requests()
    ]
    assert (f"/v1/payment_intents/{intent}/capture", "1200", "tx-1-Charge") in paths
    assert (f"/v1/payment_intents/{other}/cancel", None, "b-tx-1-CancelAuthorization") in paths
    # Stripe releases the uncaptured rest of a partial capture as a refund of its own: not ours.
    [refund] = [r for r in await localstripe.objects("refunds") if r["metadata"]]
    assert (refund["amount"], refund["payment_intent"], refund["metadata"]["ctTransactionId"]) == (200, intent, "tx-2")


async def test_declined_card_is_a_failure_with_stripes_code(adapter: StripeAdapter) -> None:
    """A decline is a Failure with Stripe's decline code and message."""
    outcome = await adapter.authorize(request(("Authorization", 1000, "Initial", None), token="pm_card_chargeCustomerFail"))
    assert outcome.state is TransactionState.FAILURE
    assert (outcome.code, outcome.text) == ("card_declined", "Your card was declined.")


async def test_other_client_errors_are_failures_with_stripes_message(adapter: StripeAdapter) -> None:
    """A 4xx other than a decline is a Failure carrying Stripe's message."""
    outcome = await adapter.charge(
        request(("Authorization", 1000, "Success", "pi_doesnotexist"), ("Charge", 1000, "Initial", None))
    )
    assert outcome.state is TransactionState.FAILURE and outcome.text


async def test_missing_token_fails_without_a_call(adapter: StripeAdapter, localstripe: LocalStripe) -> None:
    """No payment method token: a readable Failure, and Stripe is not called."""
    outcome = await adapter.authorize(request(("Authorization", 1000, "Initial", None), token=None))
    assert outcome.state is TransactionState.FAILURE and outcome.code == "no_payment_method"
    assert await localstripe.requests() == []


async def test_server_errors_and_network_errors_are_retryable(localstripe: LocalStripe) -> None:
    """Stripe 5xx and unreachable Stripe raise PspUnavailable, so the processor retries with the same key."""
    seen: list[str | None] = []

    async def unavailable(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Idempotency-Key"))
        return web.json_response({"error": {"message": "try later", "type": "api_error"}}, status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unavailable)  # a stand-in for Stripe answering 503: localstripe never does
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        for base in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"):  # 503, then nobody listening
            adapter = create_adapter({"secret_key": KEY, "api_base": base})
            with pytest.raises(PspUnavailable):
                await adapter.authorize(request(("Authorization", 1000, "Initial", None)))
            await adapter.aclose()
    finally:
        await runner.cleanup()
    assert seen == ["tx-0-Authorization"]


def test_settings_refuse_a_publishable_key() -> None:
    """A publishable key is refused at start-up, naming the route and field without echoing the key."""
    route = AdapterRoute(interface="STRIPE", account="eu", adapter="stripe", settings={"secret_key": "pk_live_abcdef"})
    with pytest.raises(ConfigurationError, match=r"STRIPE/eu.*secret_key.*Stripe secret key") as caught:
        AdapterRegistry.load([route])
    assert "pk_live_abcdef" not in str(caught.value)


@pytest.mark.parametrize(("status", "kind"), [(401, "invalid_request_error"), (403, "invalid_request_error")])
async def test_a_refused_api_key_is_the_operators_fault_not_a_failure(status: int, kind: str) -> None:
    """A revoked key (401) or a restricted key without the permission (403) raises PspCredentialsRejected,
    never an Outcome: the customer's transaction must not fail for it. The key is not in the message."""

    async def refused(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "Invalid API Key provided: sk_test_***9a", "type": kind}}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refused)  # a stand-in for Stripe refusing the key: localstripe accepts any
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    adapter = create_adapter({"secret_key": KEY, "api_base": f"http://127.0.0.1:{port}"})
    try:
        with pytest.raises(PspCredentialsRejected, match=f"HTTP {status}") as refused_error:
            await adapter.authorize(request(("Authorization", 1000, "Initial", None)))
    finally:
        await adapter.aclose()
        await runner.cleanup()
    assert KEY not in str(refused_error.value)


# Stripe's idempotency, as the harness extension of localstripe gives it (tests/localstripe_peer.py)


async def test_a_repeated_key_gets_the_first_answer_and_creates_nothing(adapter: StripeAdapter, localstripe: LocalStripe) -> None:
    """Stripe stores the first answer for a key and replays it: one PaymentIntent, one reference."""
    first = await adapter.authorize(request(("Authorization", 2500, "Initial", None)))
    again = await adapter.authorize(request(("Authorization", 2500, "Initial", None)))
    assert again.psp_reference == first.psp_reference and again.state is TransactionState.SUCCESS
    assert len(await localstripe.objects("payment_intents")) == 1


async def test_a_key_in_flight_is_in_progress_never_a_failure(adapter: StripeAdapter, localstripe: LocalStripe) -> None:
    """Stripe's 409 idempotency_key_in_use while the first request runs: PspRequestInProgress, retried later."""
    await localstripe.configure(delay_ms=1500)
    first = asyncio.create_task(adapter.authorize(request(("Authorization", 2500, "Initial", None))))
    async with asyncio.timeout(5):
        while not await localstripe.requests():  # the first request has reached Stripe
            await asyncio.sleep(0.02)
    with pytest.raises(PspRequestInProgress):
        await adapter.authorize(request(("Authorization", 2500, "Initial", None)))
    assert (await first).state is TransactionState.SUCCESS
    assert len(await localstripe.objects("payment_intents")) == 1


async def test_a_stored_server_error_is_replayed_until_the_key_is_forgotten(
    adapter: StripeAdapter, localstripe: LocalStripe
) -> None:
    """Stripe keeps a 500 with its key: the first is retryable; the retry gets the same 500 marked as
    replayed, which no retry can change (poison, never a Failure), and nothing was created; once the key
    is forgotten the request executes."""
    await localstripe.fail_next(500)
    with pytest.raises(PspUnavailable) as first:
        await adapter.authorize(request(("Authorization", 2500, "Initial", None)))
    assert not isinstance(first.value, PspStoredError)
    with pytest.raises(PspStoredError):
        await adapter.authorize(request(("Authorization", 2500, "Initial", None)))
    assert await localstripe.objects("payment_intents") == []
    await localstripe.configure(retention_s=0)  # every key already forgotten
    assert (await adapter.authorize(request(("Authorization", 2500, "Initial", None)))).state is TransactionState.SUCCESS


async def test_a_key_reused_with_other_parameters_is_never_a_failure(adapter: StripeAdapter) -> None:
    """Stripe's idempotency_error: the key's first request may have moved money, so no Failure is stored:
    a PermanentError dead-letters the delivery for an operator."""
    await adapter.authorize(request(("Authorization", 2500, "Initial", None)))
    with pytest.raises(PermanentError, match="idempotency key"):
        await adapter.authorize(request(("Authorization", 2400, "Initial", None)))


async def test_find_answers_what_stripe_did_for_each_kind_of_transaction(
    adapter: StripeAdapter, localstripe: LocalStripe
) -> None:
    """By metadata for a new PaymentIntent and a refund, by the intent's status for a capture and a cancel;
    None where Stripe did nothing."""
    authorization = request(("Authorization", 3000, "Initial", None))
    assert await adapter.find(authorization) is None
    intent = (await adapter.authorize(authorization)).psp_reference
    found = await adapter.find(authorization)
    assert found is not None and (found.state, found.psp_reference) == (TransactionState.SUCCESS, intent)
    capture = request(("Authorization", 3000, "Success", intent), ("Charge", 3000, "Initial", None))
    assert await adapter.find(capture) is None
    await adapter.charge(capture)
    found = await adapter.find(capture)
    assert found is not None and (found.state, found.psp_reference) == (TransactionState.SUCCESS, intent)
    refund = request(
        ("Authorization", 3000, "Success", intent), ("Charge", 3000, "Success", intent), ("Refund", 500, "Initial", None)
    )
    assert await adapter.find(refund) is None
    refunded = await adapter.refund(refund)
    found = await adapter.find(refund)
    assert found is not None and found.psp_reference == refunded.psp_reference and found.state is TransactionState.SUCCESS


async def test_a_charge_after_an_authorization_stripe_does_not_know_is_refused(
    adapter: StripeAdapter, localstripe: LocalStripe
) -> None:
    """An Authorization without a PaymentIntent (another system's): the Charge is refused, never a new
    automatic-capture PaymentIntent on top of the customer's hold."""
    outcome = await adapter.charge(request(("Authorization", 1000, "Success", None), ("Charge", 1000, "Initial", None)))
    assert (outcome.state, outcome.code) == (TransactionState.FAILURE, "authorization_not_at_stripe")
    assert await localstripe.requests() == []


async def test_stripes_currency_rules(adapter: StripeAdapter, localstripe: LocalStripe) -> None:
    """ISK: commercetools counts whole krónur, Stripe hundredths of them (500 ISK is 50000). Three-decimal
    currencies must end in 0 at Stripe: refused with a readable text otherwise, without a call."""
    await adapter.charge(request(("Charge", 500, "Initial", None), currency="ISK"))
    [intent] = await localstripe.objects("payment_intents")
    assert (intent["amount"], intent["currency"]) == (50_000, "isk")
    refused = await adapter.charge(request(("Charge", 5125, "Initial", None), currency="KWD"))
    assert (refused.state, refused.code) == (TransactionState.FAILURE, "currency_rules") and "KWD" in refused.text
    assert [r["method"] for r in await localstripe.requests()] == ["POST", "GET"]  # the ISK charge, then our listing
    assert stripe_amount(Money(centAmount=5120, currencyCode="KWD")) == 5120


async def test_find_refuses_to_guess_when_stripe_shows_what_this_transaction_did_not_do(
    adapter: StripeAdapter, localstripe: LocalStripe
) -> None:
    """A capture made for another transaction is not taken for ours, and two live PaymentIntents for one
    transaction (a second execution) are reported for an operator, never stored as one outcome."""
    intent = (await adapter.authorize(request(("Authorization", 3000, "Initial", None)))).psp_reference
    await adapter.charge(request(("Authorization", 3000, "Success", intent), ("Charge", 3000, "Initial", None), prefix="x-"))
    with pytest.raises(PermanentError, match="not by this transaction"):
        await adapter.find(request(("Authorization", 3000, "Success", intent), ("Charge", 3000, "Initial", None)))
    # Captured by another Charge of the same payment: nothing was done for this one (the money rules refuse it).
    other = (await adapter.authorize(request(("Authorization", 3000, "Initial", None), prefix="c-"))).psp_reference
    await adapter.charge(request(("Authorization", 3000, "Success", other), ("Charge", 3000, "Initial", None), prefix="c-"))
    captured = (("Authorization", 3000, "Success", other), ("Charge", 3000, "Success", other))
    assert await adapter.find(request(*captured, ("Charge", 1, "Initial", None), prefix="c-")) is None
    await localstripe.configure(retention_s=0)  # Stripe forgot the key: the same request executes again
    twice = request(("Authorization", 1000, "Initial", None), prefix="t-")
    await adapter.authorize(twice)
    await adapter.authorize(twice)
    with pytest.raises(PermanentError, match="2 live PaymentIntents"):
        await adapter.find(twice)


def test_zero_decimal_currencies_that_iso_counts_in_cents() -> None:
    """MGA has two decimals in ISO 4217 and none at Stripe: 10.00 MGA is 10, and a fraction is refused."""
    assert stripe_amount(Money(centAmount=1000, currencyCode="MGA")) == 10
    assert "whole units" in str(stripe_amount(Money(centAmount=1050, currencyCode="MGA")))
    assert stripe_amount(Money(centAmount=500, currencyCode="JPY")) == 500


async def test_a_search_that_has_not_caught_up_falls_back_on_the_key(adapter: StripeAdapter, localstripe: LocalStripe) -> None:
    """Stripe's search lags (about a minute): find misses an intent made just before, and the call with the
    same idempotency key then replays it. One PaymentIntent."""
    await localstripe.configure(search_lag_s=60)
    authorization = request(("Authorization", 2500, "Initial", None))
    first = await adapter.authorize(authorization)
    assert await adapter.find(authorization) is None
    assert (await adapter.authorize(authorization)).psp_reference == first.psp_reference
    assert len(await localstripe.objects("payment_intents")) == 1
