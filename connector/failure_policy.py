"""Retry or dead-letter: what to do with a delivery whose processing failed. Pure."""

from dataclasses import dataclass

from pydantic import ValidationError

from connector.errors import ClaimHeld, ConnectorError, PermanentError, RetryableError
from connector.models.delivery import describe_validation_error
from connector.retrying import Backoff


@dataclass(frozen=True, slots=True)
class RetryLater:
    delay_s: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str


def decide(error: BaseException, attempt: int, policy: Backoff, jitter: float) -> RetryLater | DeadLetter:
    """``attempt`` counts from 1; ``jitter`` in [0, 1) spreads retries of many workers apart."""
    reason = describe(error)
    if isinstance(error, PermanentError) or not _is_transient(error):
        return DeadLetter(reason)
    if attempt >= policy.attempts:
        return DeadLetter(f"gave up after {attempt} attempts: {reason}")
    if isinstance(error, ClaimHeld):
        return RetryLater(error.retry_after_s + jitter)
    backoff = min(policy.wait_max_s, policy.wait_initial_s * 2 ** (attempt - 1))
    return RetryLater(backoff * (0.5 + jitter / 2))


def describe(error: BaseException) -> str:
    """Names the error without quoting data: only our own messages are known to be free of secrets."""
    name = error.__class__.__name__
    if isinstance(error, ValidationError):
        return f"{name}: {describe_validation_error(error)}"
    if isinstance(error, ConnectorError) and str(error):
        return f"{name}: {error}"
    return name


def _is_transient(error: BaseException) -> bool:
    # A per-delivery timeout is transient too: a slow peer may answer next time.
    return isinstance(error, RetryableError | TimeoutError)
