"""The worker loop: source -> dispatcher -> processor, and the acknowledgement after the effect.

Read top to bottom: ``run`` pulls deliveries until told to stop, ``_route`` sorts each one (bad,
ignored, or a payment to reconcile), ``_handle`` reconciles with bounded retries, and only then acks
or dead-letters. Shutdown is three steps: stop fetching, let in-flight work finish within a bound,
cancel the rest (it comes again, unacknowledged) and commit what is done.
"""

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from connector import failure_policy
from connector.dispatch import KeyedDispatcher
from connector.errors import BadDelivery
from connector.failure_policy import DeadLetter
from connector.metrics import Metrics
from connector.models.delivery import DEFAULT_MAX_BYTES, Ignored, PaymentTrigger, parse_delivery
from connector.processor.reconcile import Processor
from connector.retrying import Backoff
from connector.sources.contract import Delivery, Source

log = structlog.get_logger("connector.worker")


# Retries of a whole delivery: its calls have retried their own transient faults already.
DELIVERY_BACKOFF = Backoff(attempts=5, budget_s=300.0, wait_initial_s=0.5, wait_max_s=30.0)


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    max_in_flight: int = 64
    max_delivery_bytes: int = DEFAULT_MAX_BYTES
    delivery_timeout_s: float = 60.0
    shutdown_timeout_s: float = 20.0
    retry: Backoff = DELIVERY_BACKOFF


class Worker:
    def __init__(
        self,
        source: Source,
        processor: Processor,
        limits: WorkerLimits,
        metrics: Metrics | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._source = source
        self._processor = processor
        self._limits = limits
        self._metrics = metrics or Metrics()
        self._jitter = jitter
        self.subscribed = asyncio.Event()  # readiness: the source is started

    async def run(self, stop: asyncio.Event) -> None:
        await self._source.start()
        self.subscribed.set()
        log.info("worker.started", max_in_flight=self._limits.max_in_flight)
        try:
            async with asyncio.TaskGroup() as tasks:
                dispatcher = KeyedDispatcher(tasks, self._limits.max_in_flight)
                self._metrics.in_flight.set_function(lambda: dispatcher.in_flight)
                async for delivery in self._source.deliveries(stop):
                    await self._route(delivery, dispatcher)
                log.info("worker.stopping", in_flight=dispatcher.in_flight)
                cancelled = await dispatcher.drain(self._limits.shutdown_timeout_s)
            log.info("worker.stopped", cancelled=cancelled)
        finally:
            await asyncio.shield(self._source.close())  # commit what is done, even when cancelled

    async def _route(self, delivery: Delivery, dispatcher: KeyedDispatcher) -> None:
        try:
            parsed = parse_delivery(delivery.body, self._limits.max_delivery_bytes)
        except BadDelivery as exc:
            log.warning("delivery.dead_lettered", position=delivery.position, reason=str(exc), attempts=delivery.attempt)
            await delivery.dead_letter(str(exc), attempts=delivery.attempt)
            self._count("unreadable", "dead_lettered")
            return
        if isinstance(parsed, Ignored):
            log.debug("delivery.ignored", position=delivery.position, message_id=parsed.message_id, reason=parsed.reason)
            await delivery.ack()
            self._count("other", "ignored")  # not our message types: a bounded label
            return
        await dispatcher.submit(parsed.payment_id, lambda: self._handle(delivery, parsed))

    async def _handle(self, delivery: Delivery, trigger: PaymentTrigger) -> None:
        structlog.contextvars.bind_contextvars(
            message_id=trigger.message_id, payment_id=trigger.payment_id, position=delivery.position
        )
        attempt = delivery.attempt
        while True:
            try:
                async with asyncio.timeout(self._limits.delivery_timeout_s):
                    result = await self._processor.reconcile(trigger)
            except Exception as exc:  # every failure is judged below; none may stop the worker
                decision = failure_policy.decide(exc, attempt, self._limits.retry, self._jitter())
                if isinstance(decision, DeadLetter):
                    log.error("delivery.dead_lettered", reason=decision.reason, attempts=attempt)
                    await delivery.dead_letter(decision.reason, attempts=attempt)
                    self._count(trigger.message_type, "dead_lettered")
                    return
                log.warning(
                    "delivery.retrying", error=failure_policy.describe(exc), attempt=attempt, delay_s=round(decision.delay_s, 3)
                )
                self._metrics.labelled(self._metrics.retries, "delivery").inc()
                if await delivery.retry_later(decision.delay_s):
                    self._count(trigger.message_type, "handed_back")
                    return  # the queue brings it back
                await asyncio.sleep(decision.delay_s)
                attempt += 1
                continue
            await delivery.ack()
            # A delivery that did its work is told by its transactions' own lines: debug is enough then.
            log_processed = log.debug if result.outcome == "done" else log.info
            log_processed("delivery.processed", outcome=result.outcome, transactions=len(result.results))
            self._count(trigger.message_type, result.outcome)
            return

    def _count(self, message_type: str, result: str) -> None:
        self._metrics.labelled(self._metrics.deliveries, message_type, result).inc()
        if result == "dead_lettered":
            self._metrics.dead_letters.inc()
