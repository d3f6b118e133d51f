"""The reconcile protocol: load, claim, execute at the PSP, store the outcome (docs/design.md, 'Processing protocol').

Every decision comes from ``connector.processor.decisions``; this module only does the I/O around
them, and answers each 409 by refetching the payment and deciding again.
"""

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import structlog

from connector.adapters.contract import (
    OPERATION_FOR,
    Operation,
    OperationRequest,
    Outcome,
    capabilities_of,
    finder_of,
    notifier_of,
)
from connector.adapters.registry import AdapterRegistry, Route, UnknownAccount
from connector.breaker import COMMERCETOOLS, Breakers, psp_dependency
from connector.errors import (
    ClaimHeld,
    ConcurrentModification,
    NotFound,
    NotMatched,
    Paused,
    PermanentError,
    PspCredentialsRejected,
    PspDown,
    PspRequestInProgress,
    PspUnavailable,
    Rejected,
    RetryableError,
)
from connector.metrics import Metrics
from connector.models.delivery import RESOURCE_ID_PATTERN, PaymentTrigger
from connector.models.notice import NoticeTrigger
from connector.models.payment import Payment, Transaction
from connector.processor import decisions, money, notice_decisions
from connector.processor.decisions import Plan, Result, Work, idempotency_key
from connector.processor.money import Refusal
from connector.retrying import Backoff, retry

T = TypeVar("T")
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
    claim_lease_s: float = 100.0  # derived from the other settings at start-up (connector.config.claim_lease_s)
    max_conflicts: int = 10  # 409s answered per write before the delivery is retried later
    psp_backoff: Backoff = PSP_BACKOFF


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What one delivery did to its payment, for the log line and the tests."""

    payment_id: str
    outcome: (
        str  # "done", "nothing_to_do", "not_ours", "payment_not_found"; settle_pending: "settled", "still_pending",
        # "no_lookup"; apply_notice: "notice_applied", "nothing_to_do", "not_ours"
    )
    results: tuple[Result, ...] = ()


@dataclass(slots=True)
class Progress:
    """Which dependency an attempt is waiting on: the one a timeout of the whole attempt is blamed on."""

    waiting_on: str = COMMERCETOOLS


class Processor:
    def __init__(
        self,
        store: PaymentStore,
        registry: AdapterRegistry,
        settings: ProcessorSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._breakers = breakers
        self._lease = timedelta(seconds=settings.claim_lease_s)
        # Keys this worker claimed in attempts that ended unfinished: the claiming attempt's id, and from
        # when it may take them back (no call of ours runs for them then), as long as that claim is the latest.
        self._abandoned: dict[str, tuple[str, datetime]] = {}

    async def reconcile(self, trigger: PaymentTrigger, progress: Progress | None = None) -> Reconciled:
        progress = progress or Progress()
        try:
            payment = trigger.payment or await self._store.get_payment(trigger.payment_id)
            route = self._registry.find(payment.payment_method_info)
            if route is None:
                return Reconciled(payment.id, "not_ours")
            structlog.contextvars.bind_contextvars(interface=route.interface)
            self._check_open(route)  # before the claim: a paused route claims nothing
            payment, plan, attempt = await self._claim(payment, route, fetched=trigger.payment is None)
        except NotFound:
            return Reconciled(trigger.payment_id, "payment_not_found")
        if not plan.work:  # Initial Chargebacks are the issuer's: left as they are, and counted as not ours
            return Reconciled(payment.id, "not_ours" if decisions.awaits_only_the_issuer(payment) else "nothing_to_do")
        results: list[Result] = []
        unfinished = {work.idempotency_key for work in plan.work}
        try:
            for work in plan.work:
                structlog.contextvars.bind_contextvars(transaction_id=work.transaction.id)
                result = Result(work, await self._outcome(payment, work, route, progress))
                # Stored before the next transaction runs: an outcome the PSP gave is never lost to a later fault.
                payment = await self._store_outcome(payment, result)
                unfinished.discard(work.idempotency_key)
                results.append(result)
        except asyncio.CancelledError:
            # The delivery timed out or the worker is stopping: the cancelled PSP request may still run
            # at the PSP, so its claim is not taken back before that request must have ended.
            self._abandon(unfinished, attempt, after_s=_request_timeout_s(route))
            raise
        except BaseException:
            self._abandon(unfinished, attempt, after_s=0.0)
            raise
        finally:
            structlog.contextvars.unbind_contextvars("transaction_id")
        for work in plan.work:
            self._abandoned.pop(work.idempotency_key, None)
        return Reconciled(payment.id, "done", tuple(results))

    async def settle_pending(self, payment: Payment, pending: Sequence[Transaction]) -> Reconciled:
        """Asks the PSP what became of Pending transactions (the adapter's look-up) and stores what it
        decided since. Nothing is executed, so no claim is needed: each outcome is written version-checked
        and forward only, so when another replica (or a notice) stored it first, this writes nothing.
        ``payment`` must have been read through the API (its version is written against)."""
        route = self._registry.find(payment.payment_method_info)
        finder = finder_of(route.adapter) if isinstance(route, Route) else None
        if not isinstance(route, Route) or finder is None:
            return Reconciled(payment.id, "no_lookup")  # left Pending, and counted by the caller
        structlog.contextvars.bind_contextvars(interface=route.interface)
        self._check_open(route)
        results: list[Result] = []
        for transaction in pending:
            work = Work(transaction, OPERATION_FOR[transaction.type], idempotency_key(transaction.id, transaction.type), True)
            request = OperationRequest(payment, transaction, work.idempotency_key, self._settings.project_key)
            try:
                found = await self._find(route, request)
            except PspRequestInProgress:
                continue  # the PSP is still at it
            except (PspUnavailable, PspCredentialsRejected) as exc:
                raise self._down(route, exc) from exc
            if found is None or found.state.rank <= transaction.state.rank:
                continue
            log.info("transaction.settled_at_psp", transaction_id=transaction.id, state=found.state.value)
            result = Result(work, found)
            payment = await self._store_outcome(payment, result)
            results.append(result)
        return Reconciled(payment.id, "settled" if results else "still_pending", tuple(results))

    async def apply_notice(self, trigger: NoticeTrigger, progress: Progress | None = None) -> Reconciled:
        """Applies a PSP notice (docs/design.md, 'PSP notifications'): its object is looked up fresh
        through the route's adapter, since events come late, out of order and more than once, and what
        that state says is written version-checked, forward only, once per event
        (``notice_decisions.plan_notice``). Nothing is executed at the PSP, so nothing is claimed."""
        progress = progress or Progress()
        notice = trigger.notice
        route = self._registry.route(trigger.interface, trigger.account)
        notifier = notifier_of(route.adapter) if route is not None else None
        if route is None or notifier is None:
            where = f"{trigger.interface}/{trigger.account or '(default)'}"
            raise PermanentError(f"no adapter route {where} that takes notifications is configured in this worker")
        structlog.contextvars.bind_contextvars(interface=route.interface, event_id=notice.event_id, event_type=notice.event_type)
        self._check_open(route)
        progress.waiting_on = psp_dependency(route.interface, route.account)
        retried = self._metrics.labelled(self._metrics.retries, "psp").inc
        try:
            look_up = self._timed(route, "look_up", lambda: notifier.look_up(notice))
            state = await retry(look_up, on=PspUnavailable, backoff=self._settings.psp_backoff, on_retry=retried)
        except PspRequestInProgress:
            raise
        except (PspUnavailable, PspCredentialsRejected) as exc:
            raise self._down(route, exc) from exc
        self._psp_answered(route)
        progress.waiting_on = COMMERCETOOLS
        if state is None or (state.project_key is not None and state.project_key != self._settings.project_key):
            log.info("notice.not_ours", object_id=notice.object_id)
            return Reconciled(notice.payment_id or notice.object_id, "not_ours")
        if not re.fullmatch(RESOURCE_ID_PATTERN, state.payment_id):  # it goes into a request path
            log.warning("notice.not_ours", object_id=notice.object_id, reason="its payment id is not a commercetools id")
            return Reconciled(notice.object_id, "not_ours")
        try:
            payment = await self._store.get_payment(state.payment_id)
        except NotFound:
            raise NotMatched(f"payment {state.payment_id}, named by {notice.object_id}, is not found") from None
        served_by = self._registry.find(payment.payment_method_info)
        if not isinstance(served_by, Route) or served_by.adapter is not route.adapter:
            # Another account's object cannot speak for this payment, whatever its metadata says.
            log.warning("notice.other_route", object_id=notice.object_id, payment_id=payment.id)
            return Reconciled(payment.id, "not_ours")
        for _ in range(self._settings.max_conflicts):
            now = self._clock()
            plan = notice_decisions.plan_notice(
                payment, notice, route.interface, notifier.findings(state, payment),
                type_key=self._settings.interaction_type_key, now=now, lease=self._lease,
            )  # fmt: skip
            if plan.held_until is not None:
                wait_s = (plan.held_until - now).total_seconds()
                raise ClaimHeld(f"the notice's transaction is claimed by a worker for {wait_s:.1f}s more", wait_s)
            if plan.unmatched is not None:
                raise NotMatched(plan.unmatched)
            for disagreement in plan.disagreements:
                log.error("notice.psp_disagrees", payment_id=payment.id, reason=disagreement)
                self._metrics.labelled(self._metrics.notice_disagreements, route.interface.casefold()).inc()
            if not plan.actions:
                return Reconciled(payment.id, "nothing_to_do")
            try:
                await self._store.update_payment(payment.id, payment.version, plan.actions)
            except ConcurrentModification:
                log.info("notice.conflict", version=payment.version)
                self._metrics.labelled(self._metrics.conflicts, "notice").inc()
                payment = await self._store.get_payment(payment.id)
                continue
            log.info("notice.applied", payment_id=payment.id, actions=len(plan.actions))
            return Reconciled(payment.id, "notice_applied")
        raise RetryableError(f"notice write kept conflicting after {self._settings.max_conflicts} attempts")

    def can_look_up(self, payment: Payment) -> bool:
        """Whether the payment's route has an adapter that can look a transaction up at the PSP."""
        route = self._registry.find(payment.payment_method_info)
        return isinstance(route, Route) and finder_of(route.adapter) is not None

    def _check_open(self, route: Route | UnknownAccount) -> None:
        if isinstance(route, UnknownAccount):
            return  # no PSP is called for it
        breaker = self._breakers.get(psp_dependency(route.interface, route.account)) if self._breakers else None
        if breaker is not None and not breaker.admits():
            raise Paused(breaker.name)

    def _abandon(self, keys: Iterable[str], attempt: str, *, after_s: float) -> None:
        """Lets this worker take back its claims (by ``attempt``) of ``keys`` ``after_s`` from now, when no
        call of ours runs for them, unless another worker has claimed them since."""
        free_from = self._clock() + timedelta(seconds=after_s)
        self._abandoned.update((key, (attempt, free_from)) for key in keys)

    async def _claim(self, payment: Payment, route: Route | UnknownAccount, *, fetched: bool) -> tuple[Payment, Plan, str]:
        """Claims the payment's Initial transactions; returns the payment at its claimed version, the plan,
        and the claiming attempt's id.

        ``fetched`` tells whether ``payment`` was read through the API: a message's copy may be
        stale and carries the payment method token masked.
        """
        now = self._clock()
        self._abandoned = {key: held for key, held in self._abandoned.items() if held[1] + self._lease > now}
        attempt = uuid.uuid4().hex
        for _ in range(self._settings.max_conflicts):
            now = self._clock()
            free = {key: ours for key, (ours, free_from) in self._abandoned.items() if free_from <= now}
            plan = decisions.plan_work(payment, now=now, lease=self._lease, abandoned=free)
            if plan.held_until is not None:
                wait_s = (plan.held_until - now).total_seconds()
                raise ClaimHeld(f"a transaction is claimed by another worker for {wait_s:.1f}s more", wait_s)
            if not plan.work:
                return payment, plan, attempt
            if isinstance(route, UnknownAccount) and any(work.claimed_before for work in plan.work):
                # It may have been executed under an account since removed: refused before claiming, so
                # that a replay, once the route is restored, finds no fresh claim of ours in its way.
                raise PermanentError(
                    f"transaction claimed before, and {route.interface} account {route.account!r} is no longer"
                    " configured: check at the PSP what was done, then restore the route or record it"
                )
            if plan.needs_payment_method and not fetched:
                payment, fetched = await self._store.get_payment(payment.id), True
                continue
            actions = decisions.claim_actions(
                plan.work, type_key=self._settings.interaction_type_key, now=now, lease=self._lease, attempt=attempt
            )
            try:
                version = await self._store.update_payment(payment.id, payment.version, actions)
            except ConcurrentModification:
                log.info("claim.conflict", version=payment.version)
                self._metrics.labelled(self._metrics.conflicts, "claim").inc()
                payment, fetched = await self._store.get_payment(payment.id), True
                continue
            except BaseException:
                # The claim may have been stored with its answer lost; no PSP call was made under it,
                # so this worker's retry may take it back at once instead of waiting out its own lease.
                self._abandon((work.idempotency_key for work in plan.work), attempt, after_s=0.0)
                raise
            # The update was checked against the version read, so the payment is now that one plus the
            # claim's interactions, which nothing after the claim reads: parsing the answer would cost
            # more than the rest of the claim.
            return payment.model_copy(update={"version": version}), plan, attempt
        raise RetryableError(f"claim kept conflicting after {self._settings.max_conflicts} attempts")

    async def _outcome(self, payment: Payment, work: Work, route: Route | UnknownAccount, progress: Progress) -> Outcome:
        """The outcome of one claimed transaction: what the PSP already did, a refusal, or a PSP call.

        What the PSP did comes first: the money rules judge what is still to be done, and a transaction
        executed under an earlier claim may break them since (a chargeback added meanwhile, say).
        """
        if isinstance(route, UnknownAccount):  # never claimed before: the claim refused that (_claim)
            outcome = _unknown_account(route).as_outcome()
        else:
            request = OperationRequest(payment, work.transaction, work.idempotency_key, self._settings.project_key)
            progress.waiting_on = psp_dependency(route.interface, route.account)
            try:
                outcome = await self._psp_outcome(payment, work, route, request)
            except PspRequestInProgress:
                raise  # one key in flight, not an outage
            except (PspUnavailable, PspCredentialsRejected) as exc:
                raise self._down(route, exc) from exc
            progress.waiting_on = COMMERCETOOLS
        log.info("transaction.outcome", state=outcome.state.value, code=outcome.code, psp_reference=outcome.psp_reference)
        self._metrics.labelled(self._metrics.transactions, work.transaction.type.value, outcome.state.value).inc()
        return outcome

    async def _psp_outcome(self, payment: Payment, work: Work, route: Route, request: OperationRequest) -> Outcome:
        found = await self._find(route, request) if work.claimed_before else None
        if found is not None:
            return found
        if work.claimed_before and finder_of(route.adapter) is None:
            self._check_key_remembered(route, work)
        if (refusal := money.refusal_for(payment, work.transaction, capabilities_of(route.adapter))) is not None:
            return refusal.as_outcome()
        outcome = await self._call_psp(route, work.operation, request)
        self._psp_answered(route)
        return outcome

    def _check_key_remembered(self, route: Route, work: Work) -> None:
        """Without a look-up only the key guards a transaction claimed before, and only while the PSP
        remembers it: past its retention a call would execute again what an earlier attempt may have."""
        retention = timedelta(seconds=capabilities_of(route.adapter).key_retention_s)
        if work.first_claimed_at is not None and self._clock() - work.first_claimed_at > retention:
            raise PermanentError(
                f"transaction first claimed {work.first_claimed_at.isoformat(timespec='seconds')}, longer ago than"
                f" {route.interface} keeps idempotency keys ({retention.total_seconds():g}s), and its adapter cannot"
                " look it up: check at the PSP what was done, then record it on the transaction"
            )

    def _psp_answered(self, route: Route) -> None:
        """The PSP answered: a pause of its route (connector.breaker) ends."""
        breaker = self._breakers.get(psp_dependency(route.interface, route.account)) if self._breakers else None
        if breaker is not None:
            breaker.succeeded()

    async def _find(self, route: Route, request: OperationRequest) -> Outcome | None:
        """What the PSP did for a transaction claimed before (by a crashed worker, or past the PSP's key retention)."""
        finder = finder_of(route.adapter)
        if finder is None:
            return None  # the idempotency key alone guards it, within the PSP's retention of keys
        retried = self._metrics.labelled(self._metrics.retries, "psp").inc
        find = self._timed(route, "find", lambda: finder.find(request))
        found = await retry(find, on=PspUnavailable, backoff=self._settings.psp_backoff, on_retry=retried)
        self._psp_answered(route)
        self._metrics.labelled(self._metrics.psp_lookups, route.interface.casefold(), "found" if found else "nothing").inc()
        if found is not None:
            log.info("transaction.found_at_psp", psp_reference=found.psp_reference)
        return found

    def _down(self, route: Route, error: PspUnavailable | PspCredentialsRejected) -> PspDown:
        """The route's outage: a PSP that does not answer, or refuses our own key (an operator's fault,
        never the customer's: the route pauses as for an outage, its transactions stay Initial)."""
        if isinstance(error, PspCredentialsRejected):
            log.error("psp.credentials_rejected", error=str(error))
            self._metrics.labelled(self._metrics.psp_credentials_rejected, route.interface.casefold()).inc()
        retry_after_s = error.retry_after_s if isinstance(error, PspUnavailable) else None
        return PspDown(route.interface, route.account, f"{error.__class__.__name__}: {error}", retry_after_s)

    def _timed(self, route: Route, operation: str, call: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        """``call``, each attempt timed in ``connector_psp_call_seconds`` (lookups too: retries count them)."""
        latency = self._metrics.labelled(self._metrics.psp_call_seconds, route.interface.casefold(), operation)

        async def timed_call() -> T:
            started = time.perf_counter()
            try:
                return await call()
            finally:
                latency.observe(time.perf_counter() - started)

        return timed_call

    async def _call_psp(self, route: Route, operation: Operation, request: OperationRequest) -> Outcome:
        method = getattr(route.adapter, operation.value)  # each Operation names its PaymentAdapter method
        timed_call: Callable[[], Awaitable[Outcome]] = self._timed(route, operation.value, lambda: method(request))
        retried = self._metrics.labelled(self._metrics.retries, "psp").inc
        # Every attempt carries the same idempotency key.
        return await retry(timed_call, on=PspUnavailable, backoff=self._settings.psp_backoff, on_retry=retried)

    async def _store_outcome(self, payment: Payment, result: Result) -> Payment:
        """Writes one outcome; returns the payment as it now is, for the next transaction's money rules."""
        essential_only = False
        for _ in range(self._settings.max_conflicts):
            actions = decisions.outcome_actions(
                payment, [result], type_key=self._settings.interaction_type_key, now=self._clock(), essential_only=essential_only
            )
            if not actions:
                return payment
            try:
                version = await self._store.update_payment(payment.id, payment.version, actions)
            except ConcurrentModification:
                # Someone else wrote meanwhile: decide again from what is there now, never call the PSP again.
                log.info("outcome.conflict", version=payment.version)
                self._metrics.labelled(self._metrics.conflicts, "outcome").inc()
                payment = await self._store.get_payment(payment.id)
                continue
            except Rejected as error:
                if essential_only:
                    outcome = result.outcome
                    log.error("outcome.not_stored", psp_reference=outcome.psp_reference, state=outcome.state.value)
                    self._metrics.outcomes_not_stored.inc()
                    raise Rejected(
                        f"{error}; the PSP's outcome is not stored: {outcome.state.value}, reference {outcome.psp_reference}"
                    ) from None
                # Money moved at the PSP: its state and reference must be stored even if commercetools
                # refuses the interaction (a field it does not accept, a size limit).
                log.error("outcome.write_rejected", error=str(error))
                self._metrics.outcome_writes_reduced.inc()
                essential_only = True
                continue
            applied = decisions.apply_outcome(payment, result.work.transaction.id, result.outcome)
            return applied.model_copy(update={"version": version})
        raise RetryableError(f"outcome write kept conflicting after {self._settings.max_conflicts} attempts")


def _request_timeout_s(route: Route | UnknownAccount) -> float:
    return 0.0 if isinstance(route, UnknownAccount) else capabilities_of(route.adapter).request_timeout_s


def _unknown_account(route: UnknownAccount) -> Refusal:
    return Refusal("unknown_account", f"No PSP account {route.account!r} is configured for {route.interface}")
