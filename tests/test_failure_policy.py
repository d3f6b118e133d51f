"""Retry or dead-letter, decided from the error and the attempt count."""

import pytest
from pydantic import BaseModel, ValidationError

from connector import failure_policy
from connector.errors import BadDelivery, ClaimHeld, NotFound, ServerError
from connector.failure_policy import DeadLetter, RetryLater
from connector.retrying import Backoff

POLICY = Backoff(attempts=4, wait_initial_s=1.0, wait_max_s=5.0)


def test_transient_errors_back_off_exponentially_with_a_cap() -> None:
    """Transient faults are retried with capped exponential backoff and jitter."""
    delays = [failure_policy.decide(ServerError("503"), attempt, POLICY, jitter=0.999) for attempt in (1, 2, 3)]
    assert all(isinstance(d, RetryLater) for d in delays)
    assert [round(d.delay_s, 2) for d in delays if isinstance(d, RetryLater)] == [1.0, 2.0, 4.0]
    low = failure_policy.decide(ServerError("503"), 3, Backoff(attempts=10, wait_initial_s=1.0, wait_max_s=3.0), jitter=0.0)
    assert isinstance(low, RetryLater) and low.delay_s == 1.5


def test_attempts_are_bounded() -> None:
    """After max_attempts the delivery is dead-lettered, saying why."""
    decision = failure_policy.decide(ServerError("503"), 4, POLICY, jitter=0.5)
    assert isinstance(decision, DeadLetter) and "4 attempts" in decision.reason and "503" in decision.reason


@pytest.mark.parametrize("error", [BadDelivery("x"), NotFound("gone"), KeyError("secret-value"), ZeroDivisionError()])
def test_permanent_and_unexpected_errors_dead_letter_at_once(error: Exception) -> None:
    """Retrying cannot help a permanent fault or a bug: dead-letter at the first attempt."""
    assert isinstance(failure_policy.decide(error, 1, POLICY, jitter=0.5), DeadLetter)


def test_timeouts_are_retried() -> None:
    """A delivery that timed out is tried again."""
    assert isinstance(failure_policy.decide(TimeoutError(), 1, POLICY, jitter=0.5), RetryLater)


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
