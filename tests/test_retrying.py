"""Bounded retries around calls that usually succeed."""

import pytest

from connector.errors import Rejected, ServerError
from connector.retrying import Backoff, retry

QUICK = Backoff(attempts=3, budget_s=5.0, wait_initial_s=0.001, wait_max_s=0.002)


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


async def test_success_needs_one_call() -> None:
    """The happy path calls once."""
    call = Flaky([])
    assert await retry(call, on=ServerError, backoff=QUICK) == "ok" and call.calls == 1


async def test_transient_failures_are_retried_up_to_the_bound() -> None:
    """Two transient failures and a success take three calls; three failures re-raise the last."""
    call = Flaky([ServerError("1"), ServerError("2")])
    assert await retry(call, on=ServerError, backoff=QUICK) == "ok" and call.calls == 3
    failing = Flaky([ServerError("1"), ServerError("2"), ServerError("3")])
    with pytest.raises(ServerError, match="3"):
        await retry(failing, on=ServerError, backoff=QUICK)
    assert failing.calls == 3


async def test_other_errors_are_not_retried() -> None:
    """An error outside ``on`` propagates at once."""
    call = Flaky([Rejected("no")])
    with pytest.raises(Rejected):
        await retry(call, on=ServerError, backoff=QUICK)
    assert call.calls == 1
