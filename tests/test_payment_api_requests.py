"""The Payments API's requests against the commercetools emulator, without a queue or a worker: the
kept hostile requests (tests/hostile/payment_intents/), idempotency, concurrent requests, tokens and
the OpenAPI document. Transactions added here stay Initial (nothing executes them); what they do at
a PSP is tests/test_payment_api.py's."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import structlog
from openapi_spec_validator import validate
from pydantic import SecretStr

from connector.adapters.registry import AdapterRegistry, AdapterRoute
from connector.commercetools.client import CommercetoolsClient
from connector.commercetools.introspection import TokenIntrospector
from connector.errors import ConcurrentModification, Rejected, Unreachable
from connector.metrics import Metrics
from connector.models.payment import Payment, TransactionType
from connector.payment_api import OPENAPI_PATH, PaymentApi, PaymentApiOptions
from connector.public_http import PublicServer
from tests.payment_api_client import DOCUMENT, Caller, capture, checked_against, refund
from tests.stack import free_port
from tests.stack.payments import payment_draft
from tests.support import CLIENT_SECRET, sandbox_route

CASES = sorted((Path(__file__).parent / "hostile" / "payment_intents").glob("*.json"))
TYPE_KEY = "connector-payment-request"


@dataclass
class Api:
    url: str
    ct: CommercetoolsClient
    caller: Caller
    metrics: Metrics

    async def payment(self, state: str = "authorized") -> Payment:
        done = {"created": (), "authorized": (("Authorization", 1000),), "captured": (("Authorization", 1000), ("Charge", 1000))}
        return await self.ct.create_payment(payment_draft(2000, done[state], ()))  # more planned than authorized


@pytest.fixture
async def api(ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path) -> AsyncIterator[Api]:
    registry = AdapterRegistry.load([AdapterRoute.model_validate(sandbox_route(tmp_path / "ledger.sqlite"))])
    api_ct = CommercetoolsClient.create(
        api_url=ct_url, auth_url=ct_url, project_key=project_key, client_id="connector-api",
        client_secret=SecretStr(CLIENT_SECRET), scopes="",
    )  # fmt: skip
    metrics = Metrics()
    port = free_port()
    async with aiohttp.ClientSession() as session, httpx.AsyncClient(timeout=30) as http:
        introspector = TokenIntrospector(
            session, auth_url=ct_url, client_id="connector-api", client_secret=SecretStr(CLIENT_SECRET), cache_s=0
        )
        payment_api = PaymentApi(api_ct, registry, introspector, PaymentApiOptions(project_key, TYPE_KEY), metrics)
        await payment_api.start()
        try:
            async with PublicServer([payment_api.add_routes], "127.0.0.1", port, 256 * 1024):
                url = f"http://127.0.0.1:{port}"
                yield Api(url, ct, Caller(url, ct_url, project_key, http), metrics)
        finally:
            await api_ct.aclose()
            await registry.aclose()


async def token_for(api: Api, kind: str) -> dict[str, str]:
    caller = api.caller
    match kind:
        case "valid":
            return {"Authorization": f"Bearer {await caller.token()}"}
        case "none":
            return {}
        case "expired":
            token = await caller.token(f"manage_checkout_payment_intents:{caller.project_key} view_orders:{caller.project_key}")
            await caller.expire(token)
            return {"Authorization": f"Bearer {token}"}
        case "view_only":
            return {"Authorization": f"Bearer {await caller.token(f'view_payments:{caller.project_key}')}"}
        case "other_project":
            return {"Authorization": f"Bearer {await caller.token('manage_project:someone-elses-shop')}"}
        case "made_up":
            return {"Authorization": "Bearer hostile0001bm90LWEtdG9rZW4="}
        case "basic":
            return {"Authorization": "Basic b21zLWNsaWVudDpvbXMtY2xpZW50LXNlY3JldA=="}
    raise AssertionError(kind)


@pytest.mark.reliability
async def test_hostile_requests_are_refused_readably(api: Api, reliability_report: dict[str, Any]) -> None:
    """Each kept case: its 4xx with the expected code, one ``payment_api.refused`` line, nothing written,
    and nothing of the body or the token repeated in the answer or the log."""
    assert len(CASES) >= 20
    reliability_report["bad_payment_api_requests_tried"] = len(CASES)
    payments = {state: await api.payment(state) for state in ("created", "authorized", "captured")}
    for path in CASES:
        case = json.loads(path.read_text())
        payment = payments[case["payment"]]
        where = case["path"].replace("{project}", api.caller.project_key).replace("{payment}", payment.id)
        body = (case["body_repeat"]["text"] * case["body_repeat"]["times"]) if "body_repeat" in case else case["body"]
        headers = await token_for(api, case["token"]) | {"Content-Type": case["content_type"]}
        with structlog.testing.capture_logs() as logs:
            response = await api.caller.http.post(api.url + where, content=body.encode(), headers=headers)
        assert response.status_code == case["status"], (path.name, response.text)
        error = response.json()["errors"][0]
        assert error["code"] == case["code"], (path.name, error)
        if "detail" in case:
            assert case["detail"] in (error.get("field"), error.get("reason")), (path.name, error)
        refused = [line for line in logs if line["event"] == "payment_api.refused"]
        assert len(refused) == 1 and refused[0]["status"] == case["status"], (path.name, logs)
        assert refused[0]["message"] == error["message"]
        shown = response.text + repr(logs)
        assert "hostile0001" not in shown, path.name
        if authorization := headers.get("Authorization"):
            assert authorization.split()[-1] not in shown, path.name
        checked_against(api.caller.document, response, request_valid=False)
        if "message" in case:
            assert error["message"] == case["message"].replace("{payment}", payment.id), path.name
        if response.status_code == 401:  # RFC 6750: no error code when no token came at all
            expected = "Bearer" if case["token"] in ("none", "basic") else 'Bearer error="invalid_token"'
            assert response.headers["WWW-Authenticate"] == expected, path.name
    for state, payment in payments.items():
        assert (await api.ct.get_payment(payment.id)).version == payment.version, state  # nothing written


async def test_the_same_request_twice_adds_one_transaction(api: Api) -> None:
    payment = await api.payment()
    first = await api.caller.outcome(payment.id, capture(600, "order-9-capture-1"))
    again = await api.caller.outcome(payment.id, capture(600, "order-9-capture-1"))
    assert first == again and first["outcome"] == "received"
    changed = await api.caller.act(payment.id, capture(500, "order-9-capture-1"))
    assert changed.status_code == 400 and changed.json()["errors"][0] == {
        "code": "DuplicateField", "field": "merchantReference",
        "message": "merchantReference was used before on this payment for another action or amount.",
    }  # fmt: skip
    stored = await api.ct.get_payment(payment.id)
    assert [t.type for t in stored.transactions] == [TransactionType.AUTHORIZATION, TransactionType.CHARGE]
    assert stored.transactions[1].id == first["transactionId"]


@pytest.mark.parametrize("same_reference", [False, True])
async def test_ten_concurrent_captures_of_what_allows_one_add_one(api: Api, same_reference: bool) -> None:
    """Ten full captures at once (each with its own merchantReference, or all with one): version checks
    order them, the money rules admit the first, and the others see it (or are it)."""
    payment = await api.payment()
    references = ["order-10-capture"] * 10 if same_reference else [f"order-10-capture-{i}" for i in range(10)]
    answers = await asyncio.gather(*(api.caller.act(payment.id, capture(1000, reference)) for reference in references))
    stored = await api.ct.get_payment(payment.id)
    charges = [t for t in stored.transactions if t.type is TransactionType.CHARGE]
    assert len(charges) == 1
    accepted = [a for a in answers if a.status_code == 200]
    if same_reference:
        assert len(accepted) == 10 and {a.json()["transactionId"] for a in accepted} == {charges[0].id}
    else:
        assert len(accepted) == 1 and accepted[0].json()["transactionId"] == charges[0].id
        assert sorted({a.json()["errors"][0].get("reason") for a in answers if a.status_code != 200}) == ["already_captured"]


async def test_concurrent_partial_refunds_stop_at_what_was_captured(api: Api) -> None:
    payment = await api.payment("captured")
    answers = await asyncio.gather(*(api.caller.act(payment.id, refund(300, f"rma-{i}")) for i in range(10)))
    assert sorted(a.status_code for a in answers) == [200] * 3 + [400] * 7
    stored = await api.ct.get_payment(payment.id)
    assert sum(t.amount.cent_amount for t in stored.transactions if t.type is TransactionType.REFUND) == 900


async def test_the_openapi_document_is_served_and_valid(api: Api) -> None:
    response = await api.caller.http.get(api.url + OPENAPI_PATH)
    assert response.status_code == 200 and response.json() == json.loads(DOCUMENT.read_text())
    validate(response.json())


async def test_a_token_is_introspected_again_after_its_cache_time(ct_url: str, api: Api) -> None:
    """Within ``cache_s`` an answer is reused (a revoked token still passes); after it, asked again."""
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        introspector = TokenIntrospector(
            session, auth_url=ct_url, client_id="connector-api", client_secret=SecretStr(CLIENT_SECRET), cache_s=30,
            clock=lambda: now[0],
        )  # fmt: skip
        token = await api.caller.token(f"manage_project:{api.caller.project_key}")
        first = await introspector.introspect(token)
        assert first.active and first.client_id == "oms-client" and first.may_manage_payments_of(api.caller.project_key)
        assert not first.may_manage_payments_of("someone-elses-shop")
        await api.caller.expire(token)
        assert (await introspector.introspect(token)).active  # the cached answer
        now[0] += 31
        assert not (await introspector.introspect(token)).active


async def test_an_auth_server_that_does_not_answer_gets_503(api: Api, project_key: str) -> None:
    """Introspection against a port nobody listens on (a fault the emulator cannot produce)."""
    async with aiohttp.ClientSession() as session:
        introspector = TokenIntrospector(
            session, auth_url=f"http://127.0.0.1:{free_port()}", client_id="x", client_secret=SecretStr("y"), cache_s=0
        )
        registry = AdapterRegistry.load([])
        payment_api = PaymentApi(api.ct, registry, introspector, PaymentApiOptions(project_key, TYPE_KEY), Metrics())
        port = free_port()
        async with PublicServer([payment_api.add_routes], "127.0.0.1", port, 64 * 1024):
            url = f"http://127.0.0.1:{port}/{project_key}/payment-intents/any"
            headers = {"Authorization": f"Bearer {await api.caller.token()}"}
            before_start = await api.caller.http.post(url, json={"actions": [capture(1)]}, headers=headers)
            await payment_api.start()
            with structlog.testing.capture_logs() as logs:
                response = await api.caller.http.post(url, json={"actions": [capture(1)]}, headers=headers)
    assert before_start.status_code == 503 and "starting" in before_start.json()["message"]
    assert response.status_code == 503 and response.json()["errors"][0]["code"] == "General"
    [refused] = [line for line in logs if line["event"] == "payment_api.refused"]
    assert "introspection failed" in refused["cause"] and "introspection" not in response.text  # the detail is logged only


class FaultyUpdates(CommercetoolsClient):
    """commercetools answers an update with ``fault`` (a fault the emulator cannot produce); ``applied``: after
    applying it, as when its answer is lost and the client's retry of the POST meets its own write."""

    fault: Exception = Unreachable("POST /payments timed out")
    applied = True

    async def update_payment_returning(self, payment_id: str, version: int, actions: list[dict[str, Any]]) -> Payment:
        if self.applied:
            await super().update_payment_returning(payment_id, version, actions)
        raise self.fault


@contextlib.asynccontextmanager
async def api_on(client: CommercetoolsClient, api: Api, tmp_path: Path, **options: Any) -> AsyncIterator[Caller]:
    """Another Payments API on the same emulator, over ``client``."""
    registry = AdapterRegistry.load([AdapterRoute.model_validate(sandbox_route(tmp_path / "other.sqlite"))])
    ct_url, project_key = api.caller.ct_url, api.caller.project_key
    async with aiohttp.ClientSession() as session:
        introspector = TokenIntrospector(
            session, auth_url=ct_url, client_id="connector-api", client_secret=SecretStr(CLIENT_SECRET), cache_s=0
        )
        payment_api = PaymentApi(client, registry, introspector, PaymentApiOptions(project_key, TYPE_KEY, **options), Metrics())
        await payment_api.start()
        port = free_port()
        try:
            async with PublicServer([payment_api.add_routes], "127.0.0.1", port, 64 * 1024):
                yield Caller(f"http://127.0.0.1:{port}", ct_url, project_key, api.caller.http)
        finally:
            await client.aclose()
            await registry.aclose()


def faulty(api: Api, fault: Exception, *, applied: bool) -> FaultyUpdates:
    client = FaultyUpdates.create(
        api_url=api.caller.ct_url, auth_url=api.caller.ct_url, project_key=api.caller.project_key, client_id="connector-api",
        client_secret=SecretStr(CLIENT_SECRET), scopes="",
    )  # fmt: skip
    client.fault, client.applied = fault, applied
    return client


@pytest.mark.parametrize(
    "fault",
    [Unreachable("POST /payments timed out"), ConcurrentModification("409 on the retried POST", None)],
    ids=["no-answer", "conflict-with-itself"],
)
async def test_an_update_whose_answer_was_lost_is_found_by_the_request_id(api: Api, tmp_path: Path, fault: Exception) -> None:
    """Without a merchantReference too, and with one attempt only: the request reads the payment again and
    answers with what it added, never "repeat it"."""
    payment = await api.payment("captured")
    async with api_on(faulty(api, fault, applied=True), api, tmp_path, update_attempts=1) as caller:
        answer = await caller.outcome(payment.id, refund(300))
    stored = await api.ct.get_payment(payment.id)
    refunds = [t for t in stored.transactions if t.type is TransactionType.REFUND]
    assert [t.id for t in refunds] == [answer["transactionId"]] and answer["outcome"] == "received"


async def test_an_update_not_applied_or_refused_tells_the_caller_without_commercetools_words(api: Api, tmp_path: Path) -> None:
    payment = await api.payment("captured")
    async with api_on(faulty(api, Unreachable("POST /payments timed out"), applied=False), api, tmp_path) as caller:
        lost = await caller.act(payment.id, refund(300))
    assert lost.status_code == 503 and "shows nothing of this request" in lost.json()["message"]
    refused = Rejected("POST /payments answered HTTP 400: InvalidField the value 'rma-secret-77' is not valid")
    async with api_on(faulty(api, refused, applied=False), api, tmp_path) as caller:
        with structlog.testing.capture_logs() as logs:
            failed = await caller.act(payment.id, refund(300, "rma-secret-77"))
    assert failed.status_code == 500 and failed.json()["errors"][0]["code"] == "General"
    assert "rma-secret-77" not in failed.text
    [line] = [entry for entry in logs if entry["event"] == "payment_api.refused"]
    assert "InvalidField" in line["cause"]
    assert len((await api.ct.get_payment(payment.id)).transactions) == 2  # nothing added
