"""The commercetools client against the emulator; faults the emulator cannot produce are injected."""

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from pydantic import SecretStr

from connector.commercetools.auth import AuthenticationFailed, TokenSource
from connector.commercetools.client import CommercetoolsClient
from connector.errors import ConcurrentModification, NotFound, RateLimited, Rejected, ServerError
from connector.retrying import Backoff
from tests.fault_proxies import FaultyHttp
from tests.stack.payments import payment_draft

FAST = Backoff(attempts=3, budget_s=5.0, wait_initial_s=0.01, wait_max_s=0.02)


@pytest.fixture
async def proxy(ct_url: str) -> AsyncIterator[FaultyHttp]:
    """Forwards to the real emulator, but answers the faults it is given itself.

    A fake only for faults the emulator cannot produce: 401s, 429s, 5xx and lost connections.
    """
    async with FaultyHttp(ct_url) as faulty:
        yield faulty


def client_with(proxy: FaultyHttp, project_key: str, clock: Callable[[], float] | None = None) -> CommercetoolsClient:
    http = aiohttp.ClientSession()
    tokens = TokenSource(
        http, auth_url=proxy.url, client_id="c", client_secret=SecretStr("s"), scopes="", **({"clock": clock} if clock else {})
    )
    return CommercetoolsClient(api_url=proxy.url, project_key=project_key, tokens=tokens, http=http, retry=FAST)


async def test_payments_round_trip(ct: CommercetoolsClient) -> None:
    """Create, read and update a payment; versions come from the responses."""
    created = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    fetched = await ct.get_payment(created.id)
    assert fetched == created
    version = await ct.update_payment(created.id, created.version, [{"action": "setStatusInterfaceCode", "interfaceCode": "x"}])
    updated = await ct.get_payment(created.id)
    assert version == updated.version > created.version and updated.payment_status.interface_code == "x"


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


async def test_transient_faults_are_retried(proxy: FaultyHttp, project_key: str) -> None:
    """429, 5xx and lost connections are retried with backoff; the request then succeeds."""
    client = client_with(proxy, project_key)
    for fault in (429, 503, FaultyHttp.DROP):
        proxy.faults, proxy.api_requests = [fault, fault], 0
        with pytest.raises(NotFound):  # the third try reaches the emulator, which has no such payment
            await client.get_payment("missing")
        assert proxy.api_requests == FAST.attempts
    await client.aclose()


async def test_retries_are_bounded(proxy: FaultyHttp, project_key: str) -> None:
    """After the attempts run out the last typed error is raised."""
    proxy.faults = [502] * 5
    client = client_with(proxy, project_key)
    with pytest.raises(ServerError):
        await client.get_payment("missing")
    assert proxy.api_requests == FAST.attempts
    proxy.faults = [429] * 5
    with pytest.raises(RateLimited):
        await client.get_payment("missing")
    await client.aclose()


async def test_token_is_cached_and_refreshed_after_401(proxy: FaultyHttp, project_key: str) -> None:
    """One token serves many requests; a 401 fetches a new one and the request goes through."""
    client = client_with(proxy, project_key)
    for _ in range(3):
        with pytest.raises(NotFound):
            await client.get_payment("missing")
    assert proxy.token_requests == 1
    proxy.faults = [401]
    with pytest.raises(NotFound):
        await client.get_payment("missing")
    assert proxy.token_requests == 2
    await client.aclose()


async def test_token_is_refreshed_before_expiry(proxy: FaultyHttp, project_key: str) -> None:
    """A token close to its expiry is replaced before it is used."""
    now = [0.0]
    client = client_with(proxy, project_key, clock=lambda: now[0])
    with pytest.raises(NotFound):
        await client.get_payment("missing")
    now[0] = 172800 - 60  # the emulator's tokens live 48 h; a minute before the end is too late
    with pytest.raises(NotFound):
        await client.get_payment("missing")
    assert proxy.token_requests == 2
    await client.aclose()


async def test_a_refused_fresh_token_is_an_authentication_failure(proxy: FaultyHttp, project_key: str) -> None:
    """When the API refuses a fresh token too, the error says so (retryable, as credentials get rotated)."""
    proxy.faults = [401, 401]
    client = client_with(proxy, project_key)
    with pytest.raises(AuthenticationFailed, match="fresh token"):
        await client.get_payment("missing")
    assert proxy.token_requests == 2
    await client.aclose()
