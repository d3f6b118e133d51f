"""Token introspection's cache and bounds (connector/commercetools/introspection.py) against a tiny auth
server of the test's own: a fake for timing, which holds each answer until the test releases it (the
emulator answers at once). tests/test_payment_api_requests.py introspects at the emulator itself."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from connector.commercetools.introspection import IntrospectionUnavailable, TokenIntrospector
from tests.stack import free_port


@dataclass
class AuthServer:
    url: str
    asked: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def auth() -> AsyncIterator[AuthServer]:
    port = free_port()
    server = AuthServer(f"http://127.0.0.1:{port}")

    async def introspect(request: web.Request) -> web.Response:
        token = (await request.post())["token"]
        assert isinstance(token, str)
        server.asked.append(token)
        await server.release.wait()
        if token.startswith("good"):
            return web.json_response({"active": True, "scope": "manage_project:shop", "client_id": "oms"})
        return web.json_response({"active": False})

    app = web.Application()
    app.router.add_post("/oauth/introspect", introspect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server
    server.release.set()
    await runner.cleanup()


def introspector(http: aiohttp.ClientSession, auth: AuthServer, **options: int) -> TokenIntrospector:
    return TokenIntrospector(http, auth_url=auth.url, client_id="c", client_secret=SecretStr("s"), cache_s=30, **options)


async def test_requests_with_one_token_share_one_introspection(auth: AuthServer) -> None:
    async with aiohttp.ClientSession() as http:
        checking = introspector(http, auth)
        asking = [asyncio.create_task(checking.introspect("good-1")) for _ in range(20)]
        while not auth.asked:
            await asyncio.sleep(0.01)
        auth.release.set()
        answers = await asyncio.gather(*asking)
        assert auth.asked == ["good-1"] and all(a.active and a.client_id == "oms" for a in answers)
        assert (await checking.introspect("good-1")).active and auth.asked == ["good-1"]  # cached


async def test_uncached_tokens_are_asked_about_a_few_at_a_time(auth: AuthServer) -> None:
    async with aiohttp.ClientSession() as http:
        checking = introspector(http, auth, max_concurrent=2)
        first = [asyncio.create_task(checking.introspect(f"made-up-{i}")) for i in range(2)]
        while len(auth.asked) < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(IntrospectionUnavailable, match="2 tokens are being introspected"):
            await checking.introspect("made-up-3")
        auth.release.set()
        assert not any(a.active for a in await asyncio.gather(*first))
        assert not (await checking.introspect("made-up-3")).active  # room again


async def test_a_flood_of_made_up_tokens_does_not_evict_known_ones(auth: AuthServer) -> None:
    auth.release.set()
    async with aiohttp.ClientSession() as http:
        checking = introspector(http, auth, max_entries=2)
        assert (await checking.introspect("good-known")).active
        for i in range(5):
            assert not (await checking.introspect(f"made-up-{i}")).active
        asked = len(auth.asked)
        assert (await checking.introspect("good-known")).active and len(auth.asked) == asked  # still cached
