"""The reconcile protocol: load, claim, execute at the PSP, store the outcome (docs/design.md, 'Processing protocol').

Every decision comes from ``connector.processor.decisions``; this module only does the I/O around
them, and answers each 409 by refetching the payment and deciding again.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from connector.adapters.contract import Operation, OperationRequest, Outcome
from connector.adapters.registry import AdapterRegistry, Route, UnknownAccount
from connector.errors import (
    ClaimHeld,
    ConcurrentModification,
    NotFound,
    PspCredentialsRejected,
    PspUnavailable,
    RetryableError,
)
from connector.metrics import Metrics
from connector.models.delivery import PaymentTrigger
from connector.models.payment import Payment
from connector.processor import decisions
from connector.processor.decisions import Plan, Refusal, Result
from connector.retrying import Backoff, retry

log = structlog.get_logger("connector.processor")


class PaymentStore(Protocol):
    """The part of the commercetools client the processor needs."""

    async def get_payment(self, payment_id: str) -> Payment: ...

    async def update_payment(self, payment_id: str, version: int, actions: list[dict[str, Any]]) -> int:
        """Applies ``actions`` at ``version`` and returns the new version; ConcurrentModification on a stale one."""
        ...


# PSP calls retried with the same idempotency key, within the delivery's own timeout.
PSP_BACKOFF = Backoff(attempts=3, budget_s=20.0, wait_initial_s=0.5)


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    project_key: str
    interaction_type_key: str
    claim_lease_s: float = 30.0
    max_conflicts: int = 10  # 409s answered per write before the delivery is retried later
    psp_backoff: Backoff = PSP_BACKOFF


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What one delivery did to its payment, for the log line and the tests."""

    payment_id: str
    outcome: str  # "done", "nothing_to_do", "not_ours", "payment_not_found"
    results: tuple[Result, ...] = ()


class Processor:
    def __init__(
        self,
        store: PaymentStore,
        registry: AdapterRegistry,
        settings: ProcessorSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._lease = timedelta(seconds=settings.claim_lease_s)
        # Keys this worker claimed in attempts that failed, and when: a retry here may take them back
        # at once, because no call of ours is still running for them. Within the lease nobody else can.
        self._abandoned: dict[str, datetime] = {}

    async def reconcile(self, trigger: PaymentTrigger) -> Reconciled:
        try:
            payment = trigger.payment or await self._store.get_payment(trigger.payment_id)
            route = self._registry.find(payment.payment_method_info)
            if route is None:
                return Reconciled(payment.id, "not_ours")
            structlog.contextvars.bind_contextvars(interface=route.interface)
            payment, plan = await self._claim(payment, fetched=trigger.payment is None)
        except NotFound:
            return Reconciled(trigger.payment_id, "payment_not_found")
        if not plan.work:  # Initial Chargebacks are the issuer's: left as they are, and counted as not ours
            return Reconciled(payment.id, "not_ours" if decisions.awaits_only_the_issuer(payment) else "nothing_to_do")
        try:
            results = await self._execute(payment, plan, route)
            await self._store_outcomes(payment, results)
        except BaseException:
            self._abandoned.update((work.idempotency_key, self._clock()) for work in plan.work)
            raise
        for work in plan.work:
            self._abandoned.pop(work.idempotency_key, None)
        return Reconciled(payment.id, "done", tuple(results))

    async def _claim(self, payment: Payment, *, fetched: bool) -> tuple[Payment, Plan]:
        """Claims the payment's Initial transactions; returns the payment at its claimed version, and the plan.

        ``fetched`` tells whether ``payment`` was read through the API: a message's copy may be
        stale and carries the payment method token masked.
        """
        now = self._clock()
        self._abandoned = {key: at for key, at in self._abandoned.items() if at + self._lease > now}
        for _ in range(self._settings.max_conflicts):
            now = self._clock()
            plan = decisions.plan_work(payment, now=now, lease=self._lease, abandoned=self._abandoned)
            if plan.held_until is not None:
                wait_s = (plan.held_until - now).total_seconds()
                raise ClaimHeld(f"a transaction is claimed by another worker for {wait_s:.1f}s more", wait_s)
            if not plan.work:
                return payment, plan
            if plan.needs_payment_method and not fetched:
                payment, fetched = await self._store.get_payment(payment.id), True
                continue
            actions = decisions.claim_actions(plan.work, type_key=self._settings.interaction_type_key, now=now)
            try:
                version = await self._store.update_payment(payment.id, payment.version, actions)
            except ConcurrentModification:
                log.info("claim.conflict", version=payment.version)
                self._metrics.labelled(self._metrics.conflicts, "claim").inc()
                payment, fetched = await self._store.get_payment(payment.id), True
                continue
            # The update was checked against the version read, so the payment is now that one plus the
            # claim's interactions, which nothing after the claim reads: parsing the answer would cost
            # more than the rest of the claim.
            return payment.model_copy(update={"version": version}), plan
        raise RetryableError(f"claim kept conflicting after {self._settings.max_conflicts} attempts")

    async def _execute(self, payment: Payment, plan: Plan, route: Route | UnknownAccount) -> list[Result]:
        results: list[Result] = []
        current = payment
        for work in plan.work:
            structlog.contextvars.bind_contextvars(transaction_id=work.transaction.id)
            if isinstance(route, UnknownAccount):
                outcome = _unknown_account(route).as_outcome()
            elif (refusal := decisions.refusal_for(current, work.transaction)) is not None:
                outcome = refusal.as_outcome()
            else:
                assert work.operation is not None  # refusal_for refuses what has no operation
                outcome = await self._call_psp(route, work.operation, OperationRequest(
                    current, work.transaction, work.idempotency_key, self._settings.project_key
                ))  # fmt: skip
            log.info("transaction.outcome", state=outcome.state.value, code=outcome.code, psp_reference=outcome.psp_reference)
            self._metrics.labelled(self._metrics.transactions, work.transaction.type.value, outcome.state.value).inc()
            results.append(Result(work, outcome))
            if len(results) < len(plan.work):  # the next transaction's checks see this outcome
                current = decisions.apply_outcome(current, work.transaction.id, outcome)
        structlog.contextvars.unbind_contextvars("transaction_id")
        return results

    async def _call_psp(self, route: Route, operation: Operation, request: OperationRequest) -> Outcome:
        method = getattr(route.adapter, operation.value)  # each Operation names its PaymentAdapter method
        latency = self._metrics.labelled(self._metrics.psp_call_seconds, route.interface, operation.value)

        async def timed_call() -> Outcome:
            started = time.perf_counter()
            try:
                result: Outcome = await method(request)
                return result
            finally:
                latency.observe(time.perf_counter() - started)

        retried = self._metrics.labelled(self._metrics.retries, "psp").inc
        try:
            # Every attempt carries the same idempotency key.
            return await retry(timed_call, on=PspUnavailable, backoff=self._settings.psp_backoff, on_retry=retried)
        except PspCredentialsRejected:
            # An operator's fault: the delivery is retried, then dead-lettered; the transaction stays Initial.
            log.error("psp.credentials_rejected", operation=operation.value)
            self._metrics.labelled(self._metrics.psp_credentials_rejected, route.interface).inc()
            raise

    async def _store_outcomes(self, payment: Payment, results: list[Result]) -> None:
        for _ in range(self._settings.max_conflicts):
            actions = decisions.outcome_actions(payment, results, type_key=self._settings.interaction_type_key, now=self._clock())
            if not actions:
                return
            try:
                await self._store.update_payment(payment.id, payment.version, actions)
                return
            except ConcurrentModification:
                # Someone else wrote meanwhile: decide again from what is there now, never call the PSP again.
                log.info("outcome.conflict", version=payment.version)
                self._metrics.labelled(self._metrics.conflicts, "outcome").inc()
                payment = await self._store.get_payment(payment.id)
        raise RetryableError(f"outcome write kept conflicting after {self._settings.max_conflicts} attempts")


def _unknown_account(route: UnknownAccount) -> Refusal:
    return Refusal("unknown_account", f"No PSP account {route.account!r} is configured for {route.interface}")
