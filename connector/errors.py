"""One error tree for the whole connector.

Vendor errors (aiohttp, aiokafka, PSP SDKs) are mapped onto it once, at the boundary that talks to the
vendor, with ``raise ... from exc``. Everything above that boundary only asks one question of an
error: is it worth trying again (``RetryableError``) or not (``PermanentError``)?

Messages never carry secrets, tokens or payment method data: they are written to logs and to
dead-letter headers.
"""


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""


class RetryableError(ConnectorError):
    """A transient fault: the same work may succeed later."""


class PermanentError(ConnectorError):
    """Trying again cannot help: the delivery is dead-lettered."""


class BadDelivery(PermanentError):
    """A delivery that is not a valid commercetools subscription message."""


class ForeignProject(BadDelivery):
    """A delivery of another commercetools project than the one this worker serves."""


class CommercetoolsError(ConnectorError):
    """Base of the errors of the commercetools API."""


class NotFound(CommercetoolsError, PermanentError):
    """The resource does not exist (or no longer does)."""


class ConcurrentModification(CommercetoolsError):
    """The resource changed since the version we sent: refetch and recompute, never just resend."""

    def __init__(self, message: str, current_version: int | None) -> None:
        super().__init__(message)
        self.current_version = current_version


class Rejected(CommercetoolsError, PermanentError):
    """commercetools refused the request (a 4xx other than 404 and 409)."""


class RateLimited(CommercetoolsError, RetryableError):
    """HTTP 429 from commercetools; ``retry_after_s`` from its Retry-After header, when it sent one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServerError(CommercetoolsError, RetryableError):
    """HTTP 5xx from commercetools."""


class Unreachable(CommercetoolsError, RetryableError):
    """commercetools did not answer in time, or the connection failed."""


class PspUnavailable(RetryableError):
    """The PSP could not be reached or answered with a server error; retry with the same key.
    ``retry_after_s``: how long a rate-limited PSP asked us to wait, when it said."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PspRequestInProgress(PspUnavailable):
    """The PSP is still running a request with this idempotency key (Stripe: 409 ``idempotency_key_in_use``).

    Nothing is known of its outcome yet: retried like any transient fault, never stored as a Failure."""


class PspStoredError(PermanentError):
    """The PSP replays a server error it stored for this idempotency key (Stripe stores a 500 once its
    request had started): no retry with the key can succeed until the PSP forgets it, and whether money
    moved is for an operator to check at the PSP. Poison, not an outage: dead-lettered, never paused on."""


class PspCredentialsRejected(RetryableError):
    """The PSP refused our own credentials (HTTP 401 or 403): an operator's fault, never the customer's.

    Retried, because an operator may fix the key meanwhile, then dead-lettered with this reason; the
    transaction stays Initial, to be replayed once the key works."""


class PspDown(RetryableError):
    """A PSP route failed after its call's own retries (unreachable, a server error, rate limited, or our
    credentials refused): the worker pauses the route (connector.breaker) instead of dead-lettering."""

    def __init__(self, interface: str, account: str | None, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.interface, self.account, self.retry_after_s = interface, account, retry_after_s


class Paused(RetryableError):
    """Not tried: the dependency's breaker is open and this delivery is not its probe."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"{dependency} is paused")
        self.dependency = dependency


class ClaimHeld(RetryableError):
    """Another worker claimed a transaction of this payment recently; try again after its lease."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotMatched(RetryableError):
    """A PSP notice names a transaction the payment does not show (yet): tried again later, then
    dead-lettered (replayable) if it never appears."""


class ConfigurationError(ConnectorError):
    """Settings or plugins that cannot work; raised at start-up only."""
