"""Builds a worker from settings and runs it until told to stop."""

import asyncio
import gc
from collections.abc import Callable
from dataclasses import replace

from connector.adapters.registry import AdapterRegistry
from connector.breaker import COMMERCETOOLS, Breaker, Breakers, PauseWaits, psp_dependency
from connector.commercetools.client import CommercetoolsClient
from connector.commercetools.interaction_type import interaction_type_draft
from connector.config import CommercetoolsSettings, Settings, claim_lease_s
from connector.metrics import Metrics
from connector.ops_http import OpsServer
from connector.processor.reconcile import Processor, ProcessorSettings
from connector.sources.contract import Source
from connector.sources.kafka import KafkaConfig, KafkaSource
from connector.worker import DELIVERY_BACKOFF, Worker, WorkerLimits

# The garbage collector's young-generation threshold, raised from Python's 700. Each delivery keeps
# a few dozen objects alive while it waits on the network (its task, frames, buffered records), so
# at the default a young collection ran every few deliveries and paused everything in flight
# (measured in the benchmark: docs/design.md, 'Decisions').
GC_THRESHOLDS = (10_000, 10, 10)


def build_commercetools(ct: CommercetoolsSettings, metrics: Metrics | None = None) -> CommercetoolsClient:
    return CommercetoolsClient.create(
        api_url=ct.api_url,
        auth_url=ct.auth_url,
        project_key=ct.project_key,
        client_id=ct.client_id,
        client_secret=ct.client_secret,
        scopes=ct.scopes,
        timeout_s=ct.timeout_s,
        max_connections=ct.max_connections,
        metrics=metrics,
    )


def build_source(settings: Settings) -> Source:
    if settings.pubsub is not None:
        # Imported here: google-cloud-pubsub and gRPC cost a Kafka worker a second of start-up CPU.
        from connector.sources.pubsub import PubSubConfig, PubSubSource

        pubsub = settings.pubsub
        return PubSubSource(
            PubSubConfig(
                project_id=pubsub.project_id,
                subscription=pubsub.subscription,
                dead_letter_topic=pubsub.dead_letter_topic or None,
                max_messages=pubsub.max_messages,
                max_bytes=pubsub.max_bytes,
                max_lease_s=pubsub.max_lease_s,
            )
        )
    kafka = settings.kafka
    assert kafka is not None  # Settings holds exactly one source
    return KafkaSource(
        KafkaConfig(
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
    )


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Checks plugins, credentials and the interaction Type, then runs the worker until ``stop``.

    The operations endpoint answers from the start: alive at once, ready once subscribed.
    """
    worker_settings = settings.worker
    registry = AdapterRegistry.load(worker_settings.adapters)  # a bad plugin fails here, before any delivery
    metrics = Metrics()
    ct = build_commercetools(settings.commercetools, metrics)
    try:
        source = build_source(settings)
        metrics.watch_lag(source.lag)
        processor_settings = ProcessorSettings(
            project_key=settings.commercetools.project_key,
            interaction_type_key=worker_settings.interaction_type_key,
            claim_lease_s=claim_lease_s(worker_settings, registry.longest_request_s()),
        )
        limits = WorkerLimits(
            max_in_flight=worker_settings.max_in_flight,
            max_delivery_bytes=worker_settings.max_delivery_bytes,
            delivery_timeout_s=worker_settings.delivery_timeout_s,
            shutdown_timeout_s=worker_settings.shutdown_timeout_s,
            retry=replace(DELIVERY_BACKOFF, attempts=worker_settings.max_attempts),
            project_key=settings.commercetools.project_key,
        )
        breakers = Breakers(
            [COMMERCETOOLS, *map(psp_dependency, registry.interfaces())],
            PauseWaits(max_s=worker_settings.pause_max_s),
        )
        metrics.watch_breakers(breakers.all)
        processor = Processor(ct, registry, processor_settings, metrics=metrics, breakers=breakers)
        worker = Worker(source, processor, limits, metrics, breakers=breakers)
        token_obtained = asyncio.Event()
        readiness = {"commercetools_token": token_obtained.is_set, "source_subscribed": worker.subscribed.is_set} | {
            f"{name}_answering": _answering(breaker) for name, breaker in breakers.all.items()
        }
        async with OpsServer(worker_settings.http_host, worker_settings.http_port, metrics.registry, readiness):
            await ct.check_credentials()
            token_obtained.set()
            await ct.ensure_type(interaction_type_draft(worker_settings.interaction_type_key))
            # What start-up allocated (modules, models, schemas) lives as long as the process: keep it
            # out of the garbage collector's full scans, which otherwise revisit it on every pass.
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            await worker.run(stop)
    finally:
        await registry.aclose()
        await ct.aclose()


def _answering(breaker: Breaker) -> Callable[[], bool]:
    return lambda: not breaker.is_open
