"""OAuth2 client credentials for the commercetools API, with the token cached and refreshed."""

import asyncio
import base64
import json
import time
from collections.abc import Callable

import aiohttp
from pydantic import SecretStr

from connector.errors import CommercetoolsError, RetryableError


class AuthenticationFailed(CommercetoolsError, RetryableError):
    """The auth server refused the client credentials or could not be reached.

    Retryable, because credentials get rotated and auth servers have hiccups; the worker checks its
    credentials once at start-up so that a wrong secret stops it there instead.
    """


class TokenSource:
    """Hands out a bearer token, fetching a new one before the cached one expires or after a 401."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        auth_url: str,
        client_id: str,
        client_secret: SecretStr,
        scopes: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._token_url = auth_url.rstrip("/") + "/oauth/token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._scopes = scopes
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def current(self) -> str | None:
        """The cached token while it is fresh; None when ``get`` must fetch one."""
        return self._token if self._clock() < self._refresh_at else None

    async def get(self) -> str:
        if (token := self.current()) is not None:
            return token
        async with self._lock:  # one refresh for all the requests that found the token stale
            if self._token is None or self._clock() >= self._refresh_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """Drops ``token`` after the API refused it, unless another request already replaced it."""
        if self._token == token:
            self._token = None

    async def _fetch(self) -> None:
        data = {"grant_type": "client_credentials"}
        if self._scopes:
            data["scope"] = self._scopes
        credentials = base64.b64encode(f"{self._client_id}:{self._client_secret.get_secret_value()}".encode()).decode()
        try:
            async with self._http.post(self._token_url, data=data, headers={"Authorization": f"Basic {credentials}"}) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthenticationFailed(f"token request failed: {exc.__class__.__name__}") from None
        if status != 200:
            raise AuthenticationFailed(f"token request refused with HTTP {status}")
        token = json.loads(body)
        lifetime_s = float(token.get("expires_in", 3600))
        self._token = token["access_token"]
        # Refresh ahead of expiry, so that no request goes out with a token about to lapse.
        self._refresh_at = self._clock() + lifetime_s - min(300.0, lifetime_s / 5)
