"""The commercetools client against the emulator; faults the emulator cannot produce are injected."""

from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from connector.commercetools.auth import AuthenticationFailed, TokenSource
from connector.commercetools.client import CommercetoolsClient
from connector.demo import payment_draft
from connector.errors import ConcurrentModification, NotFound, RateLimited, Rejected, ServerError
from connector.retrying import Backoff

FAST = Backoff(attempts=3, budget_s=5.0, wait_initial_s=0.01, wait_max_s=0.02)


class FaultTransport(httpx.AsyncBaseTransport):
    """Forwards to the real emulator, but answers some API requests itself.

    A fake only for faults the emulator cannot produce: 401s, 429s, 5xx and lost connections.
    """

    def __init__(self, faults: list[Callable[[httpx.Request], httpx.Response]]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.faults = faults
        self.api_requests: list[httpx.Request] = []
        self.token_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            self.token_requests += 1
        else:
            self.api_requests.append(request)
            if self.faults:
                return self.faults.pop(0)(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def client_with(
    ct_url: str, project_key: str, transport: FaultTransport, clock: Callable[[], float] | None = None
) -> CommercetoolsClient:
    http = httpx.AsyncClient(transport=transport)
    tokens = TokenSource(
        http, auth_url=ct_url, client_id="c", client_secret=SecretStr("s"), scopes="", **({"clock": clock} if clock else {})
    )
    return CommercetoolsClient(api_url=ct_url, project_key=project_key, tokens=tokens, http=http, retry=FAST)


def status(code: int, body: dict[str, object] | None = None) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, json=body or {"statusCode": code, "message": "injected"})


def lost_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection reset", request=request)


async def test_payments_round_trip(ct: CommercetoolsClient) -> None:
    """Create, read and update a payment; versions come from the responses."""
    created = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    fetched = await ct.get_payment(created.id)
    assert fetched == created
    updated = await ct.update_payment(created.id, created.version, [{"action": "setStatusInterfaceCode", "interfaceCode": "x"}])
    assert updated.version > created.version and updated.payment_status.interface_code == "x"


async def test_typed_errors(ct: CommercetoolsClient) -> None:
    """A missing payment is NotFound; a stale version is ConcurrentModification with currentVersion."""
    with pytest.raises(NotFound):
        await ct.get_payment("00000000-0000-0000-0000-000000000000")
    created = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    await ct.update_payment(created.id, created.version, [{"action": "setStatusInterfaceCode", "interfaceCode": "a"}])
    with pytest.raises(ConcurrentModification) as conflict:
        await ct.update_payment(created.id, created.version, [{"action": "setStatusInterfaceCode", "interfaceCode": "b"}])
    assert conflict.value.current_version is not None and conflict.value.current_version > created.version
    with pytest.raises(Rejected):
        await ct.update_payment(created.id, conflict.value.current_version, [{"action": "noSuchAction"}])


async def test_ensure_type_is_idempotent(ct: CommercetoolsClient) -> None:
    """Ensuring the interaction Type twice returns the same Type."""
    from connector.commercetools.interaction_type import interaction_type_draft

    first = await ct.ensure_type(interaction_type_draft("twice"))
    second = await ct.ensure_type(interaction_type_draft("twice"))
    assert first["id"] == second["id"]


async def test_transient_faults_are_retried(ct_url: str, project_key: str) -> None:
    """429, 5xx and lost connections are retried with backoff; the request then succeeds."""
    for fault in (status(429), status(503), lost_connection):
        transport = FaultTransport([fault, fault])
        client = client_with(ct_url, project_key, transport)
        with pytest.raises(NotFound):  # the third try reaches the emulator, which has no such payment
            await client.get_payment("missing")
        assert len(transport.api_requests) == FAST.attempts
        await client.aclose()


async def test_retries_are_bounded(ct_url: str, project_key: str) -> None:
    """After the attempts run out the last typed error is raised."""
    transport = FaultTransport([status(502)] * 5)
    client = client_with(ct_url, project_key, transport)
    with pytest.raises(ServerError):
        await client.get_payment("missing")
    assert len(transport.api_requests) == FAST.attempts
    transport.faults = [status(429)] * 5
    with pytest.raises(RateLimited):
        await client.get_payment("missing")
    await client.aclose()


async def test_token_is_cached_and_refreshed_after_401(ct_url: str, project_key: str) -> None:
    """One token serves many requests; a 401 fetches a new one and the request goes through."""
    transport = FaultTransport([])
    client = client_with(ct_url, project_key, transport)
    for _ in range(3):
        with pytest.raises(NotFound):
            await client.get_payment("missing")
    assert transport.token_requests == 1
    transport.faults = [status(401)]
    with pytest.raises(NotFound):
        await client.get_payment("missing")
    assert transport.token_requests == 2
    await client.aclose()


async def test_token_is_refreshed_before_expiry(ct_url: str, project_key: str) -> None:
    """A token close to its expiry is replaced before it is used."""
    now = [0.0]
    transport = FaultTransport([])
    client = client_with(ct_url, project_key, transport, clock=lambda: now[0])
    with pytest.raises(NotFound):
        await client.get_payment("missing")
    now[0] = 172800 - 60  # the emulator's tokens live 48 h; a minute before the end is too late
    with pytest.raises(NotFound):
        await client.get_payment("missing")
    assert transport.token_requests == 2
    await client.aclose()


async def test_a_refused_fresh_token_is_an_authentication_failure(ct_url: str, project_key: str) -> None:
    """When the API refuses a fresh token too, the error says so (retryable, as credentials get rotated)."""
    transport = FaultTransport([status(401), status(401)])
    client = client_with(ct_url, project_key, transport)
    with pytest.raises(AuthenticationFailed, match="fresh token"):
        await client.get_payment("missing")
    assert transport.token_requests == 2
    await client.aclose()
