"""Helpers shared by the tests: settings for a worker against the session's peers, and running it."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from connector.adapters.contract import OperationRequest, Outcome
from connector.adapters.registry import AdapterRoute
from connector.adapters.sandbox import SandboxAdapter
from connector.app import run_receiver, run_worker
from connector.commercetools.client import CommercetoolsClient
from connector.config import (
    CommercetoolsSettings,
    PaymentApiSettings,
    ReceiverConfig,
    ReceiverSettings,
    Settings,
    WorkerSettings,
    without_files,
)  # fmt: skip
from connector.models.payment import Payment
from tests.queues import EventQueue
from tests.stack import free_port, messages
from tests.stack.payments import as_json

INTERACTION_TYPE_KEY = "connector-payment-interaction"
CLIENT_SECRET = "test-client-secret-s3cr3t"


def settings_for(
    queue: EventQueue,
    *,
    ct_url: str,
    project_key: str,
    ledger: Path,
    latency_ms: int = 0,
    routes: Sequence[AdapterRoute] = (),
    **worker: Any,
) -> Settings:
    """A worker on ``queue`` against the session's peers: the sandbox serves ``sandbox``, ``routes`` the rest."""
    route = AdapterRoute.model_validate(sandbox_route(ledger, latency_ms))
    return Settings(
        without_files(
            CommercetoolsSettings, project_key=project_key, client_id="test-client",
            client_secret=SecretStr(CLIENT_SECRET), auth_url=ct_url, api_url=ct_url,
        ),
        without_files(
            WorkerSettings, source=queue.name, adapters=[route, *routes], **({"http_port": 0, "allow_sandbox": True} | worker)
        ),
        **queue.source_settings(),
    )  # fmt: skip


# Workers of one test share this machine's clock (no skew), and a short bound on an attempt gives a
# short derived claim lease (about 6 s with the sandbox): a killed worker's claims free up in seconds.
QUICK_LEASE = {"CONNECTOR_DELIVERY_TIMEOUT_S": "5", "CONNECTOR_MAX_CLOCK_SKEW_S": "0"}


def sandbox_route(ledger: Path | str, latency_ms: int = 0) -> dict[str, Any]:
    """The route of the ``sandbox`` interface to the PSP simulator, keeping its ledger at ``ledger``."""
    return {"interface": "sandbox", "adapter": "sandbox", "settings": {"ledger_path": str(ledger), "latency_ms": latency_ms}}


def worker_environment(queue: EventQueue, *, ct_url: str, project_key: str, routes: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The variables of a ``connector run`` process (or container) on ``queue`` against the session's peers;
    the sandbox is allowed (the emulator is local). The host's own environment is not included."""
    return {
        **queue.environment(),
        "CTP_PROJECT_KEY": project_key, "CTP_CLIENT_ID": "test-client", "CTP_CLIENT_SECRET": CLIENT_SECRET,
        "CTP_AUTH_URL": ct_url, "CTP_API_URL": ct_url,
        "CONNECTOR_ADAPTERS": json.dumps(list(routes)), "CONNECTOR_ALLOW_SANDBOX": "true",
        "CONNECTOR_LOG_FORMAT": "json", "CONNECTOR_HTTP_PORT": "0",  # any free port: workers run side by side
    }  # fmt: skip


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, stop_timeout_s: float = 30.0) -> AsyncIterator[asyncio.Task[None]]:
    """Runs the worker in this event loop; stops it (and surfaces its errors) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(stop_timeout_s):
            await task


def receiver_config_for(
    queue: EventQueue, routes: Sequence[AdapterRoute], *, payment_api: tuple[str, str] | None = None, **receiver: Any
) -> ReceiverConfig:
    """A notification receiver queueing on ``queue`` for ``routes``, on a free port of 127.0.0.1; with
    ``payment_api`` (the emulator's URL and the project key), serving the Payments API too."""
    worker = without_files(WorkerSettings, source=queue.name, adapters=list(routes), http_port=0)
    listener = without_files(ReceiverSettings, **({"http_host": "127.0.0.1", "http_port": free_port()} | receiver))
    sources = queue.source_settings()
    if payment_api is None:
        return ReceiverConfig(worker, listener, sources.get("kafka"), sources.get("pubsub"))
    ct_url, project_key = payment_api
    ct = without_files(
        CommercetoolsSettings, project_key=project_key, client_id="connector-api", client_secret=SecretStr(CLIENT_SECRET),
        auth_url=ct_url, api_url=ct_url,
    )  # fmt: skip
    api = without_files(PaymentApiSettings, enabled=True)
    return ReceiverConfig(worker, listener, sources.get("kafka"), sources.get("pubsub"), api, ct)


class SubscriptionRelay:
    """Stands in for the commercetools Subscription, which the emulator does not deliver: each new
    transaction of a watched payment (one the Payments API added, say) is published to the queue as
    PaymentTransactionAdded, as commercetools would."""

    def __init__(self, ct: CommercetoolsClient, queue: EventQueue, project_key: str) -> None:
        self._ct, self._queue, self._project_key = ct, queue, project_key
        self._seen: dict[str, set[str]] = {}

    def watch(self, payment: Payment) -> None:
        self._seen[payment.id] = {t.id for t in payment.transactions}

    async def run(self) -> None:
        while True:
            for payment_id, seen in list(self._seen.items()):
                payment = await self._ct.get_payment(payment_id)
                for transaction in payment.transactions:
                    if transaction.id not in seen:
                        seen.add(transaction.id)
                        embedded = transaction.model_dump(by_alias=True, mode="json", exclude_none=True)
                        message = messages.transaction_added(self._project_key, as_json(payment), embedded, "platform")
                        await self._queue.publish([message])
            await asyncio.sleep(0.1)


def receiver_url(config: ReceiverConfig, interface: str, account: str | None = None) -> str:
    return f"http://127.0.0.1:{config.receiver.http_port}/notifications/{interface}" + (f"/{account}" if account else "")


@contextlib.asynccontextmanager
async def running_receiver(config: ReceiverConfig, start_timeout_s: float = 30.0) -> AsyncIterator[asyncio.Task[None]]:
    """Runs the receiver in this event loop until its listener answers; stops it on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_receiver(config, stop))
    try:
        async with asyncio.timeout(start_timeout_s):
            while not task.done():
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", config.receiver.http_port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        if task.done():
            await task  # its start-up error
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(30.0):
            await task


class ConcurrentWriter:
    """The sandbox, with another writer changing the payment while the PSP call is in flight.

    A fake for timing only: it makes the 409 between claim and outcome happen every time.
    """

    def __init__(self, inner: SandboxAdapter, ct: CommercetoolsClient) -> None:
        self._inner, self._ct = inner, ct

    async def charge(self, request: OperationRequest) -> Outcome:
        current = await self._ct.get_payment(request.payment.id)
        await self._ct.update_payment(current.id, current.version, [{"action": "setKey", "key": "other-writer"}])
        return await self._inner.charge(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
