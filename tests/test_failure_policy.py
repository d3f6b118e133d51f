"""Retry, pause or dead-letter, decided from the error and the attempt count."""

import pytest
from pydantic import BaseModel, ValidationError

from connector import failure_policy
from connector.errors import (
    BadDelivery,
    ClaimHeld,
    NotFound,
    Paused,
    PspDown,
    PspRequestInProgress,
    RateLimited,
    RetryableError,
    ServerError,
    Unreachable,
)
from connector.failure_policy import DeadLetter, Pause, RetryLater
from connector.retrying import Backoff

POLICY = Backoff(attempts=4, wait_initial_s=1.0, wait_max_s=5.0)


def test_other_transient_errors_back_off_exponentially_with_a_cap() -> None:
    """Transient faults that are no outage (a write that kept conflicting) back off, capped, with jitter."""
    conflict = RetryableError("claim kept conflicting after 10 attempts")
    delays = [failure_policy.decide(conflict, attempt, POLICY, jitter=0.999) for attempt in (1, 2, 3)]
    assert [round(d.delay_s, 2) for d in delays if isinstance(d, RetryLater)] == [1.0, 2.0, 4.0]
    low = failure_policy.decide(conflict, 3, Backoff(attempts=10, wait_initial_s=1.0, wait_max_s=3.0), jitter=0.0)
    assert isinstance(low, RetryLater) and low.delay_s == 1.5


def test_they_are_dead_lettered_after_their_attempts() -> None:
    """After max_attempts the delivery is dead-lettered, saying why."""
    decision = failure_policy.decide(RetryableError("claim kept conflicting"), 4, POLICY, jitter=0.5)
    assert isinstance(decision, DeadLetter) and "4 attempts" in decision.reason and "conflicting" in decision.reason


@pytest.mark.parametrize(
    ("error", "dependency", "retry_after_s"),
    [
        (ServerError("GET /payments/x answered HTTP 503"), "commercetools", None),
        (Unreachable("GET /payments/x failed: ClientConnectorError"), "commercetools", None),
        (RateLimited("POST /payments/x answered HTTP 429", retry_after_s=7.0), "commercetools", 7.0),
        (PspDown("Stripe", None, "PspUnavailable: Stripe answered HTTP 503"), "psp:stripe", None),
        (PspDown("Stripe", "EU", "PspUnavailable: Stripe rate limited", retry_after_s=2.0), "psp:stripe/eu", 2.0),
    ],
)
def test_an_outage_pauses_and_never_dead_letters(error: Exception, dependency: str, retry_after_s: float | None) -> None:
    """However many attempts it has taken: an outage is not the delivery's fault."""
    for attempt in (1, 5, 500):
        decision = failure_policy.decide(error, attempt, POLICY, jitter=0.5)
        assert isinstance(decision, Pause)
        assert (decision.dependency, decision.failed, decision.retry_after_s) == (dependency, True, retry_after_s)
        # Only an error answer may be a delivery's own; load and unreachable peers never are.
        assert decision.may_be_poison is isinstance(error, ServerError)


def test_a_timed_out_attempt_blames_what_it_waited_on() -> None:
    decision = failure_policy.decide(TimeoutError(), 9, POLICY, jitter=0.5, waiting_on="psp:stripe")
    assert isinstance(decision, Pause) and decision.dependency == "psp:stripe" and decision.failed


def test_a_delivery_refused_at_an_open_breaker_waits_without_counting_a_failure() -> None:
    decision = failure_policy.decide(Paused("psp:stripe"), 1, POLICY, jitter=0.5)
    assert isinstance(decision, Pause) and decision.dependency == "psp:stripe" and not decision.failed


def test_a_delivery_that_fails_alone_is_poison() -> None:
    """Failing again each time its dependency had answered others in between (a PSP's stored 500)."""
    assert failure_policy.fails_alone(POLICY.attempts - 1, POLICY) is None
    poison = failure_policy.fails_alone(POLICY.attempts, POLICY)
    assert poison is not None and "answered other deliveries" in poison.reason


def test_a_key_in_flight_at_the_psp_is_waited_for_without_a_bound() -> None:
    decision = failure_policy.decide(PspRequestInProgress("idempotency_key_in_use"), 50, POLICY, jitter=0.0)
    assert isinstance(decision, RetryLater) and decision.delay_s == 2.5


@pytest.mark.parametrize("error", [BadDelivery("x"), NotFound("gone"), KeyError("secret-value"), ZeroDivisionError()])
def test_permanent_and_unexpected_errors_dead_letter_at_once(error: Exception) -> None:
    """Retrying cannot help a permanent fault or a bug: dead-letter at the first attempt."""
    assert isinstance(failure_policy.decide(error, 1, POLICY, jitter=0.5), DeadLetter)


def test_held_claims_wait_for_their_lease() -> None:
    """A payment claimed by another worker is retried once the claim's lease has run out."""
    decision = failure_policy.decide(ClaimHeld("held", retry_after_s=12.0), 1, POLICY, jitter=0.25)
    assert isinstance(decision, RetryLater) and decision.delay_s == 12.25


def test_reasons_never_quote_foreign_messages() -> None:
    """Only our own error messages are quoted; others could carry data (a token, say)."""
    assert failure_policy.describe(KeyError("pm_card_secret")) == "KeyError"

    class Model(BaseModel):
        amount: int

    try:
        Model.model_validate({"amount": "tok_secret"})
    except ValidationError as exc:
        described = failure_policy.describe(exc)
    assert "amount" in described and "tok_secret" not in described
