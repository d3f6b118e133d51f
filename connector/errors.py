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
    """HTTP 429 from commercetools."""


class ServerError(CommercetoolsError, RetryableError):
    """HTTP 5xx from commercetools."""


class Unreachable(CommercetoolsError, RetryableError):
    """commercetools did not answer in time, or the connection failed."""


class PspUnavailable(RetryableError):
    """The PSP could not be reached or answered with a server error; retry with the same key."""


class PspRequestInProgress(PspUnavailable):
    """The PSP is still running a request with this idempotency key (Stripe: 409 ``idempotency_key_in_use``).

    Nothing is known of its outcome yet: retried like any transient fault, never stored as a Failure."""


class PspCredentialsRejected(RetryableError):
    """The PSP refused our own credentials (HTTP 401 or 403): an operator's fault, never the customer's.

    Retried, because an operator may fix the key meanwhile, then dead-lettered with this reason; the
    transaction stays Initial, to be replayed once the key works."""


class ClaimHeld(RetryableError):
    """Another worker claimed a transaction of this payment recently; try again after its lease."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigurationError(ConnectorError):
    """Settings or plugins that cannot work; raised at start-up only."""
