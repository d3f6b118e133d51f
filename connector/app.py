"""Builds a worker from settings and runs it until told to stop."""

import asyncio
import contextlib
import gc
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import aiohttp
import structlog

from connector.adapters.registry import AdapterRegistry
from connector.breaker import COMMERCETOOLS, Breaker, Breakers, PauseWaits, psp_dependency
from connector.commercetools.client import COMMERCETOOLS_BACKOFF, CommercetoolsClient
from connector.commercetools.interaction_type import interaction_type_draft
from connector.commercetools.introspection import TokenIntrospector
from connector.config import (
    CommercetoolsSettings,
    KafkaSettings,
    PaymentApiSettings,
    PubSubSettings,
    ReceiverConfig,
    Settings,
    claim_lease_s,
)  # fmt: skip
from connector.errors import ConfigurationError
from connector.metrics import Metrics
from connector.models.payment_action import ActionName
from connector.ops_http import OpsServer
from connector.payment_api import UNKNOWN_ACTION, PaymentApi, PaymentApiOptions
from connector.processor.reconcile import Processor, ProcessorSettings
from connector.public_http import AddRoutes, PublicServer
from connector.receiver import Receiver, ReceiverLimits
from connector.reconciler import Reconciler, ReconcilerSettings, SweepReport
from connector.replay import ReplayFilter, ReplayReport, replay
from connector.retrying import Backoff
from connector.sources.contract import Source
from connector.sources.kafka import KafkaConfig, KafkaDeadLetters, KafkaPublisher, KafkaSource
from connector.worker import DELIVERY_BACKOFF, Worker, WorkerLimits

if TYPE_CHECKING:
    from connector.sources.pubsub import PubSubConfig, PubSubPublisher

# The garbage collector's young-generation threshold, raised from Python's 700. Each delivery keeps
# a few dozen objects alive while it waits on the network (its task, frames, buffered records), so
# at the default a young collection ran every few deliveries and paused everything in flight
# (measured in the benchmark: docs/design.md, 'Decisions').
GC_THRESHOLDS = (10_000, 10, 10)


# The Payments API's callers wait on each request: commercetools is retried briefly, then 503.
PAYMENT_API_BACKOFF = Backoff(attempts=3, budget_s=5.0, wait_initial_s=0.1, wait_max_s=1.0)


def build_commercetools(
    ct: CommercetoolsSettings,
    metrics: Metrics | None = None,
    on_answer: Callable[[], object] = lambda: None,
    retry: Backoff = COMMERCETOOLS_BACKOFF,
) -> CommercetoolsClient:
    return CommercetoolsClient.create(
        retry=retry,
        api_url=ct.api_url,
        auth_url=ct.auth_url,
        project_key=ct.project_key,
        client_id=ct.client_id,
        client_secret=ct.client_secret,
        scopes=ct.scopes,
        timeout_s=ct.timeout_s,
        max_connections=ct.max_connections,
        metrics=metrics,
        on_answer=on_answer,
    )


def build_source(settings: Settings, metrics: Metrics | None = None) -> Source:
    if settings.pubsub is not None:
        # Imported here: google-cloud-pubsub and gRPC cost a Kafka worker a second of start-up CPU.
        from connector.sources.pubsub import PubSubSource

        return PubSubSource(_pubsub_config(settings.pubsub))
    # Kafka commits run in the source's fetch loop, not through the worker: the source reports failures.
    failed_commit = metrics.labelled(metrics.source_failures, "commit").inc if metrics is not None else lambda: None
    return KafkaSource(_kafka_config(settings.kafka), failed_commit)


async def replay_dead_letters(settings: Settings, chosen: ReplayFilter, *, dry_run: bool) -> ReplayReport:
    """``connector replay``: the chosen dead letters back to where the worker reads (none on a dry run)."""
    registry = AdapterRegistry.load(settings.worker.adapters)
    try:
        forgotten_after = registry.keys_forgotten_after_s()
        if settings.pubsub is not None:
            from connector.sources.pubsub import PubSubDeadLetters

            if not settings.pubsub.dead_letter_subscription:
                raise ConfigurationError(
                    "invalid settings:\n  PUBSUB_DEAD_LETTER_SUBSCRIPTION: connector replay reads the dead letters through it"
                )
            async with PubSubDeadLetters(_pubsub_config(settings.pubsub), settings.pubsub.dead_letter_subscription) as letters:
                return await replay(letters, chosen, dry_run=dry_run, keys_forgotten_after_s=forgotten_after)
        async with KafkaDeadLetters(_kafka_config(settings.kafka)) as kafka_letters:
            return await replay(kafka_letters, chosen, dry_run=dry_run, keys_forgotten_after_s=forgotten_after)
    finally:
        await registry.aclose()


def _pubsub_config(pubsub: PubSubSettings | None) -> "PubSubConfig":
    from connector.sources.pubsub import PubSubConfig

    assert pubsub is not None
    return PubSubConfig(
        project_id=pubsub.project_id,
        subscription=pubsub.subscription,
        dead_letter_topic=pubsub.dead_letter_topic or None,
        max_messages=pubsub.max_messages,
        max_bytes=pubsub.max_bytes,
        max_lease_s=pubsub.max_lease_s,
    )


def _kafka_config(kafka: KafkaSettings | None) -> KafkaConfig:
    assert kafka is not None  # settings hold exactly one source
    return KafkaConfig(
        bootstrap_servers=kafka.bootstrap_servers,
        topic=kafka.topic,
        group_id=kafka.group_id,
        dead_letter_topic=kafka.dead_letter_topic or f"{kafka.topic}.dlq",
        security_protocol=kafka.security_protocol,
        sasl_mechanism=kafka.sasl_mechanism,
        sasl_username=kafka.sasl_username,
        sasl_password=kafka.sasl_password,
        commit_interval_s=kafka.commit_interval_s,
        start_timeout_s=kafka.start_timeout_s,
    )


@dataclass(frozen=True, slots=True)
class Parts:
    """What both the worker and the one-shot reconciler are made of."""

    registry: AdapterRegistry
    ct: CommercetoolsClient
    metrics: Metrics
    breakers: Breakers
    processor: Processor
    reconciler: Reconciler

    async def aclose(self) -> None:
        await self.registry.aclose()
        await self.ct.aclose()


def build_parts(settings: Settings) -> Parts:
    """Loads the adapters (a bad plugin fails here, before any delivery) and wires the rest to them."""
    worker_settings = settings.worker
    registry = AdapterRegistry.load(worker_settings.adapters)
    if unable := registry.without_credentials():
        raise ConfigurationError(
            f"invalid settings:\n  CONNECTOR_ADAPTERS: {', '.join(unable)} has no PSP credentials (secret_key): a worker"
            " calls the PSP; only the notification receiver runs without them"
        )
    metrics = Metrics()
    metrics.start_worker_series(registry.interfaces())
    breakers = Breakers(
        [COMMERCETOOLS, *(psp_dependency(*route) for route in registry.routes())], PauseWaits(max_s=worker_settings.pause_max_s)
    )
    metrics.watch_breakers(breakers.all)
    # Any answer of commercetools ends a pause of it, whichever request got it.
    ct = build_commercetools(settings.commercetools, metrics, on_answer=breakers[COMMERCETOOLS].succeeded)
    lease_s = claim_lease_s(worker_settings, registry.longest_request_s())
    if worker_settings.reconcile_lookback_s <= lease_s:
        raise ConfigurationError(
            f"invalid settings:\n  CONNECTOR_RECONCILE_LOOKBACK_S: {worker_settings.reconcile_lookback_s:g}s leaves the"
            f" reconciler nothing to look at: it skips payments changed within the claim lease ({lease_s:g}s)"
        )
    processor_settings = ProcessorSettings(
        project_key=settings.commercetools.project_key,
        interaction_type_key=worker_settings.interaction_type_key,
        claim_lease_s=lease_s,
    )
    processor = Processor(ct, registry, processor_settings, metrics=metrics, breakers=breakers)
    reconciler_settings = ReconcilerSettings(
        interval_s=worker_settings.reconcile_interval_s,
        lookback_s=worker_settings.reconcile_lookback_s,
        quiet_s=lease_s,
        pending_age_s=worker_settings.reconcile_pending_age_s,
        attempt_timeout_s=worker_settings.delivery_timeout_s,
    )
    interfaces = sorted({route.interface for route in worker_settings.adapters})
    reconciler = Reconciler(ct, processor, interfaces, reconciler_settings, lease_s=lease_s, breakers=breakers, metrics=metrics)
    return Parts(registry, ct, metrics, breakers, processor, reconciler)


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Checks plugins, credentials and the interaction Type, then runs the worker (and the reconciler,
    unless its interval is 0) until ``stop``.

    The operations endpoint answers from the start: alive at once, ready once subscribed.
    """
    worker_settings = settings.worker
    parts = build_parts(settings)
    try:
        source = build_source(settings, parts.metrics)
        parts.metrics.watch_lag(source.lag)
        limits = WorkerLimits(
            max_in_flight=worker_settings.max_in_flight,
            max_delivery_bytes=worker_settings.max_delivery_bytes,
            delivery_timeout_s=worker_settings.delivery_timeout_s,
            shutdown_timeout_s=worker_settings.shutdown_timeout_s,
            retry=replace(DELIVERY_BACKOFF, attempts=worker_settings.max_attempts),
            project_key=settings.commercetools.project_key,
        )
        worker = Worker(source, parts.processor, limits, parts.metrics, breakers=parts.breakers)
        token_obtained = asyncio.Event()
        readiness = {"commercetools_token": token_obtained.is_set, "source_subscribed": worker.subscribed.is_set} | {
            f"{name}_answering": _answering(breaker) for name, breaker in parts.breakers.all.items()
        }
        parts.metrics.watch_readiness(readiness)
        async with OpsServer(worker_settings.http_host, worker_settings.http_port, parts.metrics.registry, readiness):
            await parts.ct.check_credentials()
            token_obtained.set()
            await parts.ct.ensure_type(interaction_type_draft(worker_settings.interaction_type_key))
            # What start-up allocated (modules, models, schemas) lives as long as the process: keep it
            # out of the garbage collector's full scans, which otherwise revisit it on every pass.
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            # Beside the worker, not in a TaskGroup with it: a start-up error of the worker (a missing
            # topic) must reach the command as itself, not wrapped in an exception group, to exit 2.
            reconciling = asyncio.create_task(parts.reconciler.run(stop)) if worker_settings.reconcile_interval_s > 0 else None
            try:
                await worker.run(stop)
            finally:
                if reconciling is not None:  # a sweep under way is cut off: its claims lapse, as a delivery's
                    reconciling.cancel()
                    await asyncio.gather(reconciling, return_exceptions=True)
    finally:
        await parts.aclose()


async def reconcile_once(settings: Settings) -> SweepReport:
    """One sweep of the reconciler, now, whoever swept last (``connector reconcile``)."""
    parts = build_parts(settings)
    try:
        await parts.ct.check_credentials()
        return await parts.reconciler.sweep()
    finally:
        await parts.aclose()


def _answering(breaker: Breaker) -> Callable[[], bool]:
    return lambda: not breaker.is_open


async def run_receiver(config: ReceiverConfig, stop: asyncio.Event) -> None:
    """``connector receive``: the public listener (notifications, and the Payments API when enabled)
    until ``stop``. It opens once the queue is connected; the operations endpoint (CONNECTOR_HTTP_PORT)
    answers from the start. The API checks commercetools' credentials and its transaction Type in the
    background, answering 503 until then, so that notifications never wait for commercetools."""
    registry = AdapterRegistry.load(config.worker.adapters)
    metrics = Metrics()
    queue = _notice_queue(config)
    connected = asyncio.Event()
    readiness = {"queue_connected": connected.is_set}
    metrics.watch_readiness(readiness)
    actions = [*(action.value for action in ActionName), UNKNOWN_ACTION] if config.payment_api.enabled else []
    metrics.start_receiver_series(registry.interfaces(), actions)
    limits = ReceiverLimits(config.receiver.max_body_bytes, config.receiver.request_timeout_s, config.receiver.max_in_flight)
    receiver = Receiver(registry, queue, limits, metrics)
    parts: list[AddRoutes] = [receiver.add_routes]
    max_body = config.receiver.max_body_bytes
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(registry.aclose)
        stack.push_async_callback(queue.close)
        api = None
        if config.payment_api.enabled:
            assert config.commercetools is not None  # loaded with the API
            api = _payment_api(config.commercetools, config.payment_api, registry, metrics, stack)
            parts.append(api.add_routes)
            max_body = max(max_body, config.payment_api.max_body_bytes)
        await stack.enter_async_context(OpsServer(config.worker.http_host, config.worker.http_port, metrics.registry, readiness))
        await queue.start()
        connected.set()
        async with (
            PublicServer(parts, config.receiver.http_host, config.receiver.http_port, max_body),
            asyncio.TaskGroup() as tasks,
        ):
            structlog.get_logger("connector.receiver").info(
                "receiver.started", routes=receiver.paths(), payment_api=api is not None
            )
            if api is not None:
                starting = tasks.create_task(_start_payment_api(api))
            await stop.wait()
            if api is not None:
                starting.cancel()


async def _start_payment_api(api: "PaymentApi") -> None:
    """Until it started: commercetools may be down, or the credentials wrong (an operator fixes them)."""
    wait_s = 1.0
    while True:
        try:
            await api.start()
        except Exception as exc:  # whatever it is (a CTP_AUTH_URL that answers a web page), notifications go on
            error = f"{exc.__class__.__name__}: {exc}"[:300]
            structlog.get_logger("connector.payment_api").error("payment_api.not_started", error=error, retry_in_s=wait_s)
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, 60.0)
        else:
            structlog.get_logger("connector.payment_api").info("payment_api.started")
            return


def _payment_api(
    ct_settings: CommercetoolsSettings,
    settings: PaymentApiSettings,
    registry: AdapterRegistry,
    metrics: Metrics,
    stack: contextlib.AsyncExitStack,
) -> PaymentApi:
    ct = build_commercetools(ct_settings, metrics, retry=PAYMENT_API_BACKOFF)
    stack.push_async_callback(ct.aclose)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ct_settings.timeout_s))
    stack.push_async_callback(http.close)
    introspector = TokenIntrospector(
        http, auth_url=ct_settings.auth_url, client_id=ct_settings.client_id, client_secret=ct_settings.client_secret,
        cache_s=settings.token_cache_s,
    )  # fmt: skip
    options = PaymentApiOptions(
        project_key=ct_settings.project_key,
        transaction_type_key=settings.transaction_type_key,
        max_body_bytes=settings.max_body_bytes,
        request_timeout_s=settings.request_timeout_s,
        wait_max_s=settings.wait_max_s,
        max_in_flight=settings.max_in_flight,
    )
    return PaymentApi(ct, registry, introspector, options, metrics)


def _notice_queue(config: ReceiverConfig) -> "KafkaPublisher | PubSubPublisher":
    if config.pubsub is not None:
        from connector.sources.pubsub import PubSubPublisher

        return PubSubPublisher(_pubsub_config(config.pubsub), config.receiver.pubsub_topic or None)
    return KafkaPublisher(_kafka_config(config.kafka))
