"""A caller of the Payments API for the tests: tokens from the emulator, requests, and every request
and answer checked against the OpenAPI document the connector serves (openapi-core)."""

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

DOCUMENT = Path(__file__).parent.parent / "docs" / "payments-api.openapi.json"
CALLER_ID = "oms-client"  # the order management system's own API client


@dataclass
class _Request:
    """openapi-core's Request protocol, for an httpx request (matched against the document's server)."""

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters


@dataclass
class _Response:
    status_code: int
    data: bytes | None
    content_type: str
    headers: Headers


def checked_against(document: OpenAPI, response: httpx.Response, *, request_valid: bool = True) -> None:
    """Validates the answer (and, when it should be valid, the request) against the document."""
    sent = response.request
    server = document.spec["servers"][0]["url"]
    request = _Request(
        host_url=server,
        path=urlsplit(str(sent.url)).path,
        method=sent.method.lower(),
        body=sent.content,
        content_type=sent.headers.get("content-type", ""),
        parameters=RequestParameters(header=Headers(list(sent.headers.items())), query=ImmutableMultiDict()),
    )
    answer = _Response(
        response.status_code, response.content, response.headers.get("content-type", ""), Headers(list(response.headers.items()))
    )
    if request_valid:
        document.validate_request(request)
    document.validate_response(request, answer)


@dataclass
class Caller:
    """Posts payment actions to ``url`` (the public listener) as an API client of ``ct_url``'s emulator."""

    url: str
    ct_url: str
    project_key: str
    http: httpx.AsyncClient
    document: OpenAPI = field(default_factory=lambda: OpenAPI.from_dict(json.loads(DOCUMENT.read_text())))
    _tokens: dict[str, str] = field(default_factory=dict)

    async def token(self, scope: str | None = None) -> str:
        """A token of the caller's own client, by default with the Payments API's scope for the project."""
        scope = scope or f"manage_checkout_payment_intents:{self.project_key}"
        if scope not in self._tokens:
            answer = await self.http.post(
                f"{self.ct_url}/oauth/token", params={"grant_type": "client_credentials", "scope": scope},
                auth=(CALLER_ID, "oms-client-secret"),
            )  # fmt: skip
            answer.raise_for_status()
            self._tokens[scope] = answer.json()["access_token"]
        return self._tokens[scope]

    async def until_started(self, timeout_s: float = 30.0) -> None:
        """Until the API answers other than 503 (it checks its credentials and Type in the background)."""
        async with asyncio.timeout(timeout_s):
            while (await self.http.post(f"{self.url}/operations/payment-intents/x")).status_code == 503:
                await asyncio.sleep(0.1)

    async def expire(self, token: str) -> None:
        """Ends the token's life at the emulator (its test extension)."""
        (await self.http.post(f"{self.ct_url}/_test/oauth/expire", json={"token": token})).raise_for_status()

    async def act(
        self,
        payment_id: str,
        action: dict[str, Any],
        *,
        wait_s: int | None = None,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One action on the payment; the answer is checked against the document."""
        sent = {"Authorization": f"Bearer {await self.token()}"} | ({"Prefer": f"wait={wait_s}"} if wait_s else {})
        where = path or f"/{self.project_key}/payment-intents/{payment_id}"
        response = await self.http.post(self.url + where, json={"actions": [action]}, headers=sent | (headers or {}))
        checked_against(self.document, response)
        return response

    async def outcome(self, payment_id: str, action: dict[str, Any], *, wait_s: int | None = None) -> dict[str, Any]:
        """The 200 answer's body (fails on any other answer)."""
        response = await self.act(payment_id, action, wait_s=wait_s)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


def capture(cents: int, reference: str | None = None) -> dict[str, Any]:
    return {"action": "capturePayment", "amount": {"centAmount": cents, "currencyCode": "EUR"}} | _reference(reference)


def refund(cents: int, reference: str | None = None, transaction_id: str | None = None) -> dict[str, Any]:
    action = {"action": "refundPayment", "amount": {"centAmount": cents, "currencyCode": "EUR"}} | _reference(reference)
    return action | ({"transactionId": transaction_id} if transaction_id else {})


def cancel(reference: str | None = None) -> dict[str, Any]:
    return {"action": "cancelPayment"} | _reference(reference)


def reverse(reference: str | None = None) -> dict[str, Any]:
    return {"action": "reversePayment"} | _reference(reference)


def _reference(reference: str | None) -> dict[str, str]:
    return {"merchantReference": reference} if reference else {}
