"""Async commercetools API client: payments and types, typed errors, bounded retries.

aiohttp, directly: in the benchmark's profile httpx's request and response models (over its aiohttp
transport) cost more CPU than the requests themselves (docs/design.md, 'Decisions'). Payments are
parsed by pydantic straight from the response bytes.
"""

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel, SecretStr

from connector.commercetools.auth import AuthenticationFailed, TokenSource
from connector.errors import ConcurrentModification, NotFound, RateLimited, Rejected, ServerError, Unreachable
from connector.metrics import Metrics
from connector.models.payment import Payment
from connector.retrying import Backoff, retry

TRANSIENT = (RateLimited, ServerError, Unreachable)
COMMERCETOOLS_BACKOFF = Backoff(attempts=5, budget_s=30.0, wait_initial_s=0.1, wait_max_s=5.0)


class CommercetoolsClient:
    def __init__(
        self,
        *,
        api_url: str,
        project_key: str,
        tokens: TokenSource,
        http: aiohttp.ClientSession,
        retry: Backoff = COMMERCETOOLS_BACKOFF,
        metrics: Metrics | None = None,
        on_answer: Callable[[], object] = lambda: None,
    ) -> None:
        self._base = f"{api_url.rstrip('/')}/{project_key}"
        self._on_answer = on_answer  # commercetools answered (no 5xx, no 429): a pause of it ends
        self._tokens = tokens
        self._http = http
        self._retry = retry
        self._metrics = metrics or Metrics()

    @classmethod
    def create(
        cls,
        *,
        api_url: str,
        auth_url: str,
        project_key: str,
        client_id: str,
        client_secret: SecretStr,
        scopes: str,
        timeout_s: float = 10.0,
        max_connections: int = 64,
        retry: Backoff = COMMERCETOOLS_BACKOFF,
        metrics: Metrics | None = None,
        on_answer: Callable[[], object] = lambda: None,
    ) -> "CommercetoolsClient":
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            json_serialize=_compact_json,
            cookie_jar=aiohttp.DummyCookieJar(),  # the API sets no cookies; skip the jar's work
        )
        tokens = TokenSource(http, auth_url=auth_url, client_id=client_id, client_secret=client_secret, scopes=scopes)
        return cls(
            api_url=api_url, project_key=project_key, tokens=tokens, http=http, retry=retry, metrics=metrics, on_answer=on_answer
        )

    async def aclose(self) -> None:
        await self._http.close()

    async def check_credentials(self) -> None:
        """Obtains a token, so that wrong credentials are found at start-up."""
        await self._tokens.get()

    async def get_payment(self, payment_id: str) -> Payment:
        return Payment.model_validate_json(await self._request("GET", f"/payments/{payment_id}"))

    async def update_payment(self, payment_id: str, version: int, actions: list[dict[str, Any]]) -> int:
        """Applies ``actions`` to the payment at ``version``; returns its new version (never assume +1).

        Only the version is read from the answer: the caller knows what it changed, and parsing the
        whole payment would cost more than the rest of the update (docs/design.md, 'Decisions')."""
        body = await self._request("POST", f"/payments/{payment_id}", {"version": version, "actions": actions})
        return _Versioned.model_validate_json(body).version

    async def update_payment_returning(self, payment_id: str, version: int, actions: list[dict[str, Any]]) -> Payment:
        """As ``update_payment``, returning the whole updated payment (the Payments API needs the added transaction)."""
        body = await self._request("POST", f"/payments/{payment_id}", {"version": version, "actions": actions})
        return Payment.model_validate_json(body)

    async def query_payments(self, params: list[tuple[str, str]]) -> list[Payment]:
        """One page of ``GET /payments`` (``where``, ``sort``, ``limit``... as query parameters, repeatable)."""
        return _PaymentPage.model_validate_json(await self._request("GET", "/payments", params=params)).results

    async def custom_object(self, container: str, key: str) -> dict[str, Any] | None:
        """The Custom Object at ``container``/``key``; None when there is none."""
        try:
            found: dict[str, Any] = orjson.loads(await self._request("GET", f"/custom-objects/{container}/{key}"))
        except NotFound:
            return None
        return found

    async def put_custom_object(self, draft: dict[str, Any]) -> dict[str, Any]:
        """Creates or replaces a Custom Object; with ``version`` in the draft, only at that version (0: a new one)."""
        stored: dict[str, Any] = orjson.loads(await self._request("POST", "/custom-objects", draft))
        return stored

    async def create_payment(self, draft: dict[str, Any]) -> Payment:
        return Payment.model_validate_json(await self._request("POST", "/payments", draft))

    async def ensure_type(self, draft: dict[str, Any]) -> dict[str, Any]:
        """Returns the Type with the draft's key, creating it when the project has none."""
        return await self.find_by_key("types", draft["key"]) or await self.create_resource("types", draft)

    async def find_by_key(self, endpoint: str, key: str) -> dict[str, Any] | None:
        """A resource (``endpoint``: types, subscriptions, ...) by its key; None when there is none."""
        try:
            found: dict[str, Any] = orjson.loads(await self._request("GET", f"/{endpoint}/key={key}"))
        except NotFound:
            return None
        return found

    async def create_resource(self, endpoint: str, draft: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = orjson.loads(await self._request("POST", f"/{endpoint}", draft))
        return created

    async def update_resource(self, endpoint: str, resource: dict[str, Any], actions: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"version": resource["version"], "actions": actions}
        updated: dict[str, Any] = orjson.loads(await self._request("POST", f"/{endpoint}/{resource['id']}", body))
        return updated

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: list[tuple[str, str]] | None = None
    ) -> bytes:
        """The response body of a successful request; typed errors otherwise."""
        retried = self._metrics.labelled(self._metrics.retries, "commercetools").inc
        return await retry(lambda: self._send(method, path, body, params), on=TRANSIENT, backoff=self._retry, on_retry=retried)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, params: list[tuple[str, str]] | None) -> bytes:
        """One request; after a 401 (a token revoked or expired early), one more with a fresh token."""
        latency = self._metrics.labelled(self._metrics.commercetools_seconds, method)
        for _ in range(2):
            token = self._tokens.current() or await self._tokens.get()  # no coroutine on the hot path
            started = time.perf_counter()
            try:
                async with self._http.request(
                    method, self._base + path, json=body, params=params, headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    status, content, retry_after = response.status, await response.read(), response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:
                latency.observe(time.perf_counter() - started)
                self._metrics.labelled(self._metrics.commercetools_requests, method, "error").inc()
                failure = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc.__class__.__name__}"
                raise Unreachable(f"{method} {path} {failure}") from None
            latency.observe(time.perf_counter() - started)
            self._metrics.labelled(self._metrics.commercetools_requests, method, str(status)).inc()
            if status < 500 and status != 429:
                self._on_answer()
            if status == 401:
                self._tokens.invalidate(token)
                continue
            if status >= 300:
                _raise_for(method, path, status, content, retry_after)
            return content
        raise AuthenticationFailed(f"{method} {path}: a fresh token was refused too")


class _Versioned(BaseModel):
    version: int


class _PaymentPage(BaseModel):
    results: list[Payment]


def _raise_for(method: str, path: str, status: int, content: bytes, retry_after: str | None = None) -> None:
    what = f"{method} {path} answered HTTP {status}"
    first_error = _first_error(content)
    if status == 404:
        raise NotFound(what)
    if status == 409 and first_error.get("code") == "ConcurrentModification":
        return_version = first_error.get("currentVersion")
        raise ConcurrentModification(what, return_version if isinstance(return_version, int) else None)
    if status == 429:
        raise RateLimited(what, _seconds(retry_after))
    if status >= 500:
        raise ServerError(what)
    code = first_error.get("code", "")
    message = str(first_error.get("message", ""))[:300]
    raise Rejected(f"{what}: {code} {message}".rstrip())


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds (an HTTP date is not used by commercetools; read as absent)."""
    try:
        seconds = float(retry_after) if retry_after is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 3600 else None


def _first_error(content: bytes) -> dict[str, Any]:
    try:
        errors = orjson.loads(content).get("errors") or [{}]
    except (ValueError, AttributeError):
        return {}
    return errors[0] if isinstance(errors[0], dict) else {}


def _compact_json(value: Any) -> str:
    return orjson.dumps(value).decode()
