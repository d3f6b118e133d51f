"""Stripe events the tests sign themselves, for what localstripe never sends (each test says so)."""

import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson

WEBHOOK_SECRET = "whsec_test_connector_0001"


def event(event_type: str, obj: Mapping[str, Any], *, event_id: str | None = None, created: int | None = None) -> dict[str, Any]:
    """A Stripe event of ``event_type`` carrying ``obj`` as its snapshot."""
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2026-09-30",
        "type": event_type,
        "created": created or int(time.time()),
        "livemode": False,
        "data": {"object": dict(obj)},
    }


def signed(body: bytes, secrets: Sequence[str] = (WEBHOOK_SECRET,), at: int | None = None) -> dict[str, str]:
    """Headers signing ``body`` as Stripe does, with one v1 signature per secret (as during a rotation)."""
    timestamp = int(time.time()) if at is None else at
    # Stripe's scheme, written out here (not the SDK's helper the receiver verifies with): HMAC-SHA256 of "t.body".
    signatures = [
        f"v1={hmac.new(secret.encode(), f'{timestamp}.'.encode() + body, hashlib.sha256).hexdigest()}" for secret in secrets
    ]
    return {"Stripe-Signature": ",".join([f"t={timestamp}", *signatures]), "Content-Type": "application/json"}


def body_of(document: Mapping[str, Any]) -> bytes:
    return orjson.dumps(document)


async def post(url: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url, content=body, headers=dict(headers))


async def deliver(url: str, document: Mapping[str, Any], secrets: Sequence[str] = (WEBHOOK_SECRET,)) -> httpx.Response:
    """Signs ``document`` and posts it to the receiver at ``url``, as Stripe would."""
    body = body_of(document)
    return await post(url, body, signed(body, secrets))
