"""The worker loop: source -> dispatcher -> processor, and the acknowledgement after the effect.

Read top to bottom: ``run`` pulls deliveries until told to stop (none while commercetools is paused),
``_route`` sorts each one (bad, ignored, or a payment to reconcile), ``_handle`` reconciles, waiting
out an outage at its dependency's breaker (``_pause``) and retrying other transient faults within
bounds, and only then acks or dead-letters; ``_settle`` retries a failed source operation until it
works. Shutdown is three steps: stop fetching, let in-flight work finish within a bound,
cancel the rest (it comes again, unacknowledged) and commit what is done.
"""

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from connector import failure_policy
from connector.breaker import COMMERCETOOLS, Breaker, Breakers, PauseWaits
from connector.dispatch import KeyedDispatcher
from connector.errors import BadDelivery, ForeignProject
from connector.failure_policy import DeadLetter, Pause
from connector.metrics import Metrics
from connector.models.delivery import DEFAULT_MAX_BYTES, Ignored, PaymentTrigger, parse_delivery
from connector.models.notice import NoticeTrigger
from connector.processor.reconcile import Processor, Progress
from connector.retrying import Backoff
from connector.sources.contract import Delivery, Source

log = structlog.get_logger("connector.worker")


# Retries of a whole delivery: its calls have retried their own transient faults already.
DELIVERY_BACKOFF = Backoff(attempts=5, budget_s=300.0, wait_initial_s=0.5, wait_max_s=30.0)
# A source operation (ack, dead-letter publish, hand-back) that fails is tried again, for as long as
# it takes, with waits growing to this bound: the delivery stays unsettled meanwhile, and comes again
# if the worker stops first.
SOURCE_RETRY = PauseWaits(initial_s=1.0, max_s=60.0)
SOURCE_OPERATION_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    max_in_flight: int = 64
    max_delivery_bytes: int = DEFAULT_MAX_BYTES
    delivery_timeout_s: float = 60.0
    shutdown_timeout_s: float = 20.0
    retry: Backoff = DELIVERY_BACKOFF
    source_retry: PauseWaits = SOURCE_RETRY
    project_key: str | None = None  # deliveries of another project are dead-lettered


class Worker:
    def __init__(
        self,
        source: Source,
        processor: Processor,
        limits: WorkerLimits,
        metrics: Metrics | None = None,
        jitter: Callable[[], float] = random.random,
        breakers: Breakers | None = None,
    ) -> None:
        self._source = source
        self._processor = processor
        self._limits = limits
        self._metrics = metrics or Metrics()
        self._jitter = jitter
        self._breakers = breakers or Breakers([COMMERCETOOLS], PauseWaits())
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
                    if not await self._commercetools_answers(stop):
                        break  # stopping during a pause: the delivery comes again
                    await self._route(delivery, dispatcher)
                log.info("worker.stopping", in_flight=dispatcher.in_flight)
                cancelled = await dispatcher.drain(self._limits.shutdown_timeout_s)
            log.info("worker.stopped", cancelled=cancelled)
        finally:
            await asyncio.shield(self._source.close())  # commit what is done, even when cancelled

    async def _commercetools_answers(self, stop: asyncio.Event) -> bool:
        """Every delivery needs commercetools: while it is paused, no new one is taken, unless no delivery
        is left to probe it (the next one does). False: stopping."""
        breaker = self._breakers[COMMERCETOOLS]
        waited = False
        while breaker.is_open and breaker.attended and not stop.is_set():
            waited = True
            closed = asyncio.ensure_future(breaker.closed_or_unattended())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([closed, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                stopping.cancel()
        return not (waited and stop.is_set())  # a delivery in hand with no pause is routed, as before a stop

    async def _route(self, delivery: Delivery, dispatcher: KeyedDispatcher) -> None:
        try:
            parsed = parse_delivery(delivery.body, self._limits.max_delivery_bytes, self._limits.project_key)
        except BadDelivery as exc:
            # In a task of its own: a dead-letter destination that fails must not hold up the next deliveries.
            reason, label = str(exc), "foreign_project" if isinstance(exc, ForeignProject) else "unreadable"
            await dispatcher.submit(delivery.position, lambda: self._dead_letter(delivery, label, reason, delivery.attempt))
            return
        if isinstance(parsed, Ignored):
            log.debug("delivery.ignored", position=delivery.position, message_id=parsed.message_id, reason=parsed.reason)
            await dispatcher.submit(delivery.position, lambda: self._settle(delivery, "ack", delivery.ack))
            self._count("other", "ignored")  # not our message types: a bounded label
            return
        # A notice goes the same way as a delivery: ordered with its payment's other work, paused,
        # retried and dead-lettered by the same rules (docs/design.md, 'PSP notifications').
        key = parsed.key if isinstance(parsed, NoticeTrigger) else parsed.payment_id
        await dispatcher.submit(key, lambda: self._handle(delivery, parsed))

    async def _handle(self, delivery: Delivery, trigger: PaymentTrigger | NoticeTrigger) -> None:
        structlog.contextvars.bind_contextvars(
            message_id=trigger.message_id, payment_id=trigger.payment_id, position=delivery.position
        )
        attempt = delivery.attempt
        pauses = _Pauses()
        while True:
            progress = Progress()
            try:
                async with asyncio.timeout(self._limits.delivery_timeout_s):
                    if isinstance(trigger, NoticeTrigger):
                        result = await self._processor.apply_notice(trigger, progress)
                    else:
                        result = await self._processor.reconcile(trigger, progress)
            except Exception as exc:  # every failure is judged below; none may stop the worker
                decision = failure_policy.decide(exc, attempt, self._limits.retry, self._jitter(), waiting_on=progress.waiting_on)
                if isinstance(decision, Pause):  # not an attempt of its own: an outage counts for nothing
                    if not await self._pause(delivery, trigger, decision, pauses):
                        return  # it failed alone: dead-lettered
                    continue
                pauses.leave()
                if isinstance(decision, DeadLetter):
                    await self._dead_letter(delivery, trigger.message_type, decision.reason, attempt)
                    return
                log.warning(
                    "delivery.retrying", error=failure_policy.describe(exc), attempt=attempt, delay_s=round(decision.delay_s, 3)
                )
                self._metrics.labelled(self._metrics.retries, "delivery").inc()
                if await self._hand_back(delivery, decision.delay_s):
                    self._count(trigger.message_type, "handed_back")
                    return  # the queue brings it back
                await asyncio.sleep(decision.delay_s)
                attempt += 1
                continue
            # Every processed delivery was answered by commercetools (the client says so of each answer
            # too: connector.app wires it; a store without that hook relies on this).
            self._breakers[COMMERCETOOLS].succeeded()
            pauses.leave()
            await self._settle(delivery, "ack", delivery.ack)
            # A delivery that did its work is told by its transactions' own lines: debug is enough then.
            log_processed = log.debug if result.outcome == "done" else log.info
            log_processed("delivery.processed", outcome=result.outcome, transactions=len(result.results))
            self._count(trigger.message_type, result.outcome)
            return

    async def _pause(
        self, delivery: Delivery, trigger: PaymentTrigger | NoticeTrigger, decision: Pause, pauses: "_Pauses"
    ) -> bool:
        """Waits at the dependency's breaker, to retry as its probe or once it closes; False: dead-lettered
        instead, because the delivery keeps failing while the dependency answers others."""
        breaker = self._breakers[decision.dependency]
        pauses.wait_at(breaker)
        if decision.failed:
            alone = pauses.failed_at(breaker, counts=decision.may_be_poison)
            if (poison := failure_policy.fails_alone(alone, self._limits.retry)) is not None:
                pauses.leave()  # its probe, if it held one, is over: a dead-letter write may take long
                await self._dead_letter(delivery, trigger.message_type, f"{poison.reason}: {decision.reason}", alone)
                return False
            wait_s = breaker.failed(decision.retry_after_s)
            log.warning("delivery.paused", dependency=breaker.name, reason=decision.reason, probe_in_s=round(wait_s, 3))
        self._metrics.labelled(self._metrics.retries, "delivery").inc()
        await breaker.turn()
        return True

    async def _dead_letter(self, delivery: Delivery, message_type: str, reason: str, attempts: int) -> None:
        log.error("delivery.dead_lettered", position=delivery.position, reason=reason, attempts=attempts)
        await self._settle(delivery, "dead_letter", lambda: delivery.dead_letter(reason, attempts=attempts))
        self._count(message_type, "dead_lettered")

    async def _hand_back(self, delivery: Delivery, delay_s: float) -> bool:
        handed_back = False

        async def hand_back() -> None:
            nonlocal handed_back
            handed_back = await delivery.retry_later(delay_s)

        await self._settle(delivery, "retry_later", hand_back)
        return handed_back

    async def _settle(self, delivery: Delivery, operation: str, call: Callable[[], Awaitable[object]]) -> None:
        """Runs a source operation until it works. While it fails the delivery stays unsettled (it comes
        again if the worker stops first); a failure never reaches the worker's other deliveries."""
        failures = 0
        while True:
            try:
                async with asyncio.timeout(SOURCE_OPERATION_TIMEOUT_S):
                    await call()
                return
            except Exception as exc:
                failures += 1
                wait_s = self._limits.source_retry.after(failures)
                log.error(
                    "source.operation_failed", operation=operation, position=delivery.position,
                    error=failure_policy.describe(exc), failures=failures, retry_in_s=wait_s,
                )  # fmt: skip
                self._metrics.labelled(self._metrics.source_failures, operation).inc()
                await asyncio.sleep(wait_s)

    def _count(self, message_type: str, result: str) -> None:
        self._metrics.labelled(self._metrics.deliveries, message_type, result).inc()
        if result == "dead_lettered":
            self._metrics.dead_letters.inc()


@dataclass(slots=True)
class _Pauses:
    """One delivery's pauses: the breaker it waits at, and how often it failed on a dependency that
    answered other deliveries since (the breaker closed in between)."""

    waiting_at: Breaker | None = None
    closings_seen: dict[str, int] = field(default_factory=dict)
    alone: int = 0

    def wait_at(self, breaker: Breaker) -> None:
        if self.waiting_at is not None and self.waiting_at is not breaker:
            self.waiting_at.release()  # its probe told nothing of that dependency
        self.waiting_at = breaker

    def failed_at(self, breaker: Breaker, *, counts: bool) -> int:
        """Records a failure on ``breaker``'s dependency; returns how many failed alone so far (``counts``:
        an error answer, which may be this delivery's own; else load or an outage, never counted)."""
        seen = self.closings_seen.get(breaker.name)
        self.alone += counts and seen is not None and breaker.closings > seen
        self.closings_seen[breaker.name] = breaker.closings
        return self.alone

    def leave(self) -> None:
        if self.waiting_at is not None:
            self.waiting_at.release()
            self.waiting_at = None
