"""Retry, pause or dead-letter: what to do with a delivery whose processing failed. Pure.

Dead letters are for poison only: a delivery that cannot be read, a permanent refusal, or one that
fails alone while its dependency answers everyone else. A dependency that is down pauses the work
that needs it (connector.breaker) for as long as it is down: an outage is never the delivery's fault.
"""

from dataclasses import dataclass

from pydantic import ValidationError

from connector.breaker import COMMERCETOOLS, psp_dependency
from connector.errors import (
    ClaimHeld,
    CommercetoolsError,
    ConnectorError,
    Paused,
    PermanentError,
    PspDown,
    PspRequestInProgress,
    RateLimited,
    RetryableError,
    ServerError,
)
from connector.models.delivery import describe_validation_error
from connector.retrying import Backoff


@dataclass(frozen=True, slots=True)
class RetryLater:
    delay_s: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait at ``dependency``'s breaker; ``failed`` False: refused at the open breaker, nothing was tried."""

    dependency: str
    failed: bool
    reason: str
    retry_after_s: float | None = None
    # An error answer (a 5xx), which one request may keep getting while others pass: counted towards
    # failing alone. Rate limits, timeouts and refused connections are load or outage, never poison.
    may_be_poison: bool = False


def decide(
    error: BaseException, attempt: int, policy: Backoff, jitter: float, *, waiting_on: str = COMMERCETOOLS
) -> RetryLater | DeadLetter | Pause:
    """``attempt`` counts from 1; ``jitter`` in [0, 1) spreads retries of many workers apart;
    ``waiting_on``: the dependency the attempt was waiting on, blamed when the attempt timed out."""
    reason = describe(error)
    if isinstance(error, PermanentError) or not _is_transient(error):
        return DeadLetter(reason)
    if (pause := _pause_for(error, reason, waiting_on)) is not None:
        return pause
    if isinstance(error, ClaimHeld):  # another worker's claim: its lease ends, so no bound on attempts
        return RetryLater(error.retry_after_s + jitter)
    if isinstance(error, PspRequestInProgress):  # a request of ours still runs at the PSP: it ends too
        return RetryLater(_backoff(policy, attempt, jitter))
    if attempt >= policy.attempts:
        return DeadLetter(f"gave up after {attempt} attempts: {reason}")
    return RetryLater(_backoff(policy, attempt, jitter))


def fails_alone(failures_while_others_succeed: int, policy: Backoff) -> DeadLetter | None:
    """A delivery that keeps getting an error answer from a dependency that answers other deliveries in
    between (the breaker closed since its last failure) is poison in disguise. (A PSP's stored 500 is
    told by the PSP itself: ``PspStoredError``.)"""
    if failures_while_others_succeed < policy.attempts:
        return None
    return DeadLetter(f"failed {failures_while_others_succeed} times while its dependency answered other deliveries")


def describe(error: BaseException) -> str:
    """Names the error without quoting data: only our own messages are known to be free of secrets."""
    name = error.__class__.__name__
    if isinstance(error, ValidationError):
        return f"{name}: {describe_validation_error(error)}"
    if isinstance(error, ConnectorError) and str(error):
        return f"{name}: {error}"
    return name


def _pause_for(error: BaseException, reason: str, waiting_on: str) -> Pause | None:
    if isinstance(error, Paused):
        return Pause(error.dependency, failed=False, reason=reason)
    if isinstance(error, PspDown):
        return Pause(
            psp_dependency(error.interface, error.account), failed=True, reason=reason, retry_after_s=error.retry_after_s
        )
    if isinstance(error, CommercetoolsError):  # transient ones only reach here
        retry_after_s = error.retry_after_s if isinstance(error, RateLimited) else None
        return Pause(
            COMMERCETOOLS, failed=True, reason=reason, retry_after_s=retry_after_s, may_be_poison=isinstance(error, ServerError)
        )
    if isinstance(error, TimeoutError):  # the whole attempt ran out of time waiting on this dependency
        return Pause(waiting_on, failed=True, reason=f"timed out waiting on {waiting_on}")
    return None


def _backoff(policy: Backoff, attempt: int, jitter: float) -> float:
    backoff = min(policy.wait_max_s, policy.wait_initial_s * 2.0 ** min(attempt - 1, 30))
    return backoff * (0.5 + jitter / 2)


def _is_transient(error: BaseException) -> bool:
    # A per-delivery timeout is transient too: a slow peer may answer next time.
    return isinstance(error, RetryableError | TimeoutError)
