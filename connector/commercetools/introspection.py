"""What a caller's bearer token may do: commercetools' token introspection (RFC 7662), cached briefly.

The Payments API's callers hold their own commercetools API clients; the connector asks the auth
server about each token (``POST /oauth/introspect``, with the connector's own client credentials,
which need the ``introspect_oauth_tokens`` scope to see other clients' tokens). An answer is kept
for ``cache_s`` (and never beyond the token's expiry), so a revoked token is refused at most that
long after. Tokens are kept by their SHA-256 only, and never logged. Requests with the same token
share one introspection; different tokens not in the cache are asked about ``max_concurrent`` at a
time at most (beyond, 503). Inactive answers are kept apart from active ones, so a flood of made-up
tokens evicts only its own kind and known callers go on from the cache. A bound on concurrency is
not a rate limit: rate-limit anonymous traffic at the ingress.
"""

import asyncio
import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson
from pydantic import SecretStr

from connector.errors import CommercetoolsError, RetryableError

MAX_TOKEN_BYTES = 4096  # commercetools' tokens are a few dozen characters; anything far longer is not one


class IntrospectionUnavailable(CommercetoolsError, RetryableError):
    """The auth server did not answer an introspection: the caller is told to try again (503)."""


@dataclass(frozen=True, slots=True)
class Introspection:
    active: bool
    scopes: frozenset[str] = frozenset()
    client_id: str = ""

    def may_manage_payments_of(self, project_key: str) -> bool:
        """The Checkout Payments API's scope for the project, or the project's full one."""
        return bool(self.scopes & {f"manage_checkout_payment_intents:{project_key}", f"manage_project:{project_key}"})


INACTIVE = Introspection(False)


class TokenIntrospector:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        auth_url: str,
        client_id: str,
        client_secret: SecretStr,
        cache_s: float,
        max_entries: int = 10_000,
        max_concurrent: int = 16,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._url = auth_url.rstrip("/") + "/oauth/introspect"
        self._credentials = SecretStr(base64.b64encode(f"{client_id}:{client_secret.get_secret_value()}".encode()).decode())
        self._cache_s = cache_s
        self._max_entries = max_entries
        self._max_concurrent = max_concurrent
        self._clock, self._wall_clock = clock, wall_clock
        # By the token's SHA-256: (kept until, answer); active and inactive apart.
        self._active: dict[bytes, tuple[float, Introspection]] = {}
        self._inactive: dict[bytes, tuple[float, Introspection]] = {}
        self._asking: dict[bytes, asyncio.Task[Introspection]] = {}

    async def introspect(self, token: str) -> Introspection:
        if not token or len(token) > MAX_TOKEN_BYTES or not token.isascii():
            return INACTIVE
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        for cache in (self._active, self._inactive):
            if (cached := cache.get(key)) is not None and now < cached[0]:
                return cached[1]
        asking = self._asking.get(key)
        if asking is None:
            if len(self._asking) >= self._max_concurrent:
                raise IntrospectionUnavailable(f"{len(self._asking)} tokens are being introspected already")
            asking = self._asking[key] = asyncio.create_task(self._ask_and_keep(key, token))
            asking.add_done_callback(lambda done: self._done(key, done))
        # Shielded: one caller giving up does not cancel the answer the others wait for.
        return await asyncio.shield(asking)

    async def _ask_and_keep(self, key: bytes, token: str) -> Introspection:
        answer, lifetime_s = await self._ask(token)
        self._keep(self._active if answer.active else self._inactive, key, self._clock() + min(self._cache_s, lifetime_s), answer)
        return answer

    def _done(self, key: bytes, done: "asyncio.Task[Introspection]") -> None:
        del self._asking[key]
        if not done.cancelled():
            done.exception()  # seen: when every caller gave up, nobody else reads it

    async def _ask(self, token: str) -> tuple[Introspection, float]:
        headers = {"Authorization": f"Basic {self._credentials.get_secret_value()}"}
        try:
            async with self._http.post(self._url, data={"token": token}, headers=headers) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IntrospectionUnavailable(f"token introspection failed: {exc.__class__.__name__}") from None
        if status != 200:
            raise IntrospectionUnavailable(f"token introspection answered HTTP {status}")
        try:
            answer = orjson.loads(body)
            active = answer.get("active") is True
        except (orjson.JSONDecodeError, AttributeError):
            raise IntrospectionUnavailable("token introspection answered something other than a JSON object") from None
        if not active:
            return INACTIVE, self._cache_s
        scope, client_id, expires = answer.get("scope"), answer.get("client_id"), answer.get("exp")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        lifetime_s = self._cache_s
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            # RFC 7662 gives seconds since the epoch; a value in milliseconds is read as such.
            expires_s = expires / 1000 if expires > 100_000_000_000 else float(expires)
            lifetime_s = expires_s - self._wall_clock()
            if lifetime_s <= 0:
                return INACTIVE, self._cache_s
        return Introspection(True, scopes, client_id if isinstance(client_id, str) else ""), lifetime_s

    def _keep(self, cache: dict[bytes, tuple[float, Introspection]], key: bytes, until: float, answer: Introspection) -> None:
        if len(cache) >= self._max_entries:  # bounded: expired answers go first, then the oldest
            now = self._clock()
            for stale in [k for k, (kept_until, _) in cache.items() if kept_until <= now]:
                del cache[stale]
            while len(cache) >= self._max_entries:
                del cache[next(iter(cache))]
        cache[key] = (until, answer)
