"""The reconciler: finds payments that need work without waiting for a delivery (docs/design.md, 'The reconciler').

A delivery may never come: a subscription misconfigured for an hour, a message that expired, a
dead letter nobody replayed, a Pending transaction whose PSP notice never arrives. On an interval
the reconciler asks commercetools for the payments of the routed interfaces that still hold Initial
or Pending transactions, changed within a bounded window, and:
- runs the processor on those whose Initial transactions carry no claim, or only stale ones: the
  same protocol as a delivery (claim, look-up of earlier attempts, idempotency key), so it is safe
  beside the workers and beside another reconciler;
- asks the PSP, through the adapter's look-up, what became of transactions Pending for longer than
  ``pending_age_s``, and stores what it decided. Adapters without a look-up leave them, counted.

Safety never depends on one reconciler at a time. To spare commercetools the same queries from
every replica, a replica sweeps only when it wins the turn: a Custom Object saying when the last
sweep began, replaced version-checked (the loser of a race skips this interval).
"""

import asyncio
import os
import random
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from connector import failure_policy
from connector.breaker import Breakers
from connector.errors import ClaimHeld, ConcurrentModification, Paused, PspDown
from connector.metrics import Metrics
from connector.models.delivery import PaymentTrigger
from connector.models.payment import Payment, TransactionState
from connector.processor import decisions
from connector.processor.reconcile import Processor

log = structlog.get_logger("connector.reconciler")

TURN_CONTAINER = "commercetools-payment-connector"


class PaymentQueries(Protocol):
    """The part of the commercetools client the reconciler needs."""

    async def query_payments(self, params: list[tuple[str, str]]) -> list[Payment]: ...

    async def get_payment(self, payment_id: str) -> Payment: ...

    async def custom_object(self, container: str, key: str) -> dict[str, Any] | None: ...

    async def put_custom_object(self, draft: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class ReconcilerSettings:
    interval_s: float = 300.0
    lookback_s: float = 7 * 86_400.0  # how far back a payment's last change may lie
    quiet_s: float = 100.0  # changed more recently: its delivery may still be on its way (the claim lease)
    pending_age_s: float = 900.0
    attempt_timeout_s: float = 60.0  # one payment's protocol, as one delivery's attempt
    page_size: int = 100


def candidates_query(
    interfaces: Sequence[str], since: datetime, until: datetime, after_id: str | None, limit: int
) -> list[tuple[str, str]]:
    """One page of the payments to look at, as query parameters.

    Friendly to the real API's indexes: a bounded window on ``lastModifiedAt``, keyset paging by id
    (``id > last``, sorted by id, no offset) and no total to count."""
    names = ", ".join(_quoted(name) for name in interfaces)
    where = [
        f"paymentMethodInfo(paymentInterface in ({names}))",
        'transactions(state in ("Initial", "Pending"))',
        f'lastModifiedAt >= "{_iso(since)}" and lastModifiedAt < "{_iso(until)}"',
    ]
    if after_id is not None:
        where.append(f"id > {_quoted(after_id)}")
    return [*(("where", w) for w in where), ("sort", "id asc"), ("limit", str(limit)), ("withTotal", "false")]


@dataclass(frozen=True, slots=True)
class SweepReport:
    examined: int
    results: dict[str, int]  # payments by what was done: driven, settled, still_pending, no_lookup, held, failed

    def as_json(self) -> dict[str, Any]:
        return {"examined": self.examined, **self.results}


class Reconciler:
    def __init__(
        self,
        store: PaymentQueries,
        processor: Processor,
        interfaces: Sequence[str],
        settings: ReconcilerSettings,
        *,
        lease_s: float,
        breakers: Breakers | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        replica: str | None = None,
    ) -> None:
        self._store = store
        self._processor = processor
        self._interfaces = sorted(interfaces)
        self._settings = settings
        self._lease = timedelta(seconds=lease_s)
        self._breakers = breakers
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        self._turn_key = "reconciler-" + "-".join(_key_safe(name) for name in self._interfaces)[:200]

    async def run(self, stop: asyncio.Event) -> None:
        """Sweeps every ``interval_s`` (spread by a tenth, so replicas drift apart) until ``stop``."""
        log.info("reconciler.started", interval_s=self._settings.interval_s)
        while not stop.is_set():
            try:
                async with asyncio.timeout(self._settings.interval_s * random.uniform(0.9, 1.1)):
                    await stop.wait()
                break
            except TimeoutError:
                pass
            if self._breakers is not None and self._breakers.open():
                self._count_sweep("paused")  # the workers wait out the outage; so does the reconciler
                continue
            try:
                if await self._take_turn():
                    await self.sweep()
                else:
                    self._count_sweep("not_its_turn")
            except Exception as exc:  # the next interval tries again; nothing here may stop the worker
                log.error("reconciler.sweep_failed", error=failure_policy.describe(exc))
                self._count_sweep("failed")

    async def sweep(self) -> SweepReport:
        """One pass over the window: every page, every payment that needs something."""
        now = self._clock()
        since, until = now - timedelta(seconds=self._settings.lookback_s), now - timedelta(seconds=self._settings.quiet_s)
        results: Counter[str] = Counter()
        examined, after = 0, None
        while True:
            page = await self._store.query_payments(
                candidates_query(self._interfaces, since, until, after, self._settings.page_size)
            )
            for payment in page:
                examined += 1
                sweep = decisions.sweep_of(
                    payment, now=self._clock(), lease=self._lease, pending_age=timedelta(seconds=self._settings.pending_age_s)
                )
                if sweep.claimed_too_often:
                    results["claimed_too_often"] += 1
                    log.warning("reconciler.left_for_an_operator", payment_id=payment.id, reason="claimed too often")
                if sweep.needed:
                    with structlog.contextvars.bound_contextvars(payment_id=payment.id, via="reconciler"):
                        results.update(await self._drive(payment, sweep))
            if len(page) < self._settings.page_size:
                break
            after = page[-1].id
        for result, count in results.items():
            self._metrics.labelled(self._metrics.reconciled, result).inc(count)
        self._count_sweep("swept")
        log.info("reconciler.swept", examined=examined, **results)
        return SweepReport(examined, dict(results))

    async def _drive(self, payment: Payment, sweep: decisions.Sweep) -> Counter[str]:
        done: Counter[str] = Counter()
        try:
            async with asyncio.timeout(self._settings.attempt_timeout_s):
                if sweep.initial:
                    trigger = PaymentTrigger(None, "Reconciler", payment.id, None, None)
                    result = await self._processor.reconcile(trigger)
                    done["driven" if result.outcome == "done" else result.outcome] += 1
                if sweep.pending and not self._processor.can_look_up(payment):
                    done["no_lookup"] += 1  # left Pending, counted: its adapter cannot ask the PSP
                elif sweep.pending:
                    fresh = await self._store.get_payment(payment.id)  # the version to write against
                    ids = {t.id for t in sweep.pending}
                    pending = [t for t in fresh.transactions if t.id in ids and t.state is TransactionState.PENDING]
                    if pending:
                        done[(await self._processor.settle_pending(fresh, pending)).outcome] += 1
        except ClaimHeld:
            done["held"] += 1  # a worker is on it
        except (Paused, PspDown) as exc:
            done["psp_paused"] += 1
            log.warning("reconciler.psp_unavailable", error=failure_policy.describe(exc))
        except Exception as exc:  # each payment on its own: the next sweep tries again
            done["failed"] += 1
            log.error("reconciler.payment_failed", error=failure_policy.describe(exc))
        return done

    async def _take_turn(self) -> bool:
        """Whether this replica sweeps now: no sweep began within most of an interval, and this replica's
        version-checked write of the turn won."""
        now = self._clock()
        current = await self._store.custom_object(TURN_CONTAINER, self._turn_key)
        if current is not None:
            began = decisions.parse_time(current.get("value", {}).get("sweptAt"))
            if began is not None and now - began < timedelta(seconds=self._settings.interval_s * 0.8):
                return False
        draft = {
            "container": TURN_CONTAINER,
            "key": self._turn_key,
            "value": {"sweptAt": _iso(now), "by": self._replica},
            "version": current["version"] if current is not None else 0,
        }
        try:
            await self._store.put_custom_object(draft)
        except ConcurrentModification:
            return False  # another replica took this turn
        return True

    def _count_sweep(self, result: str) -> None:
        self._metrics.labelled(self._metrics.sweeps, result).inc()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _quoted(text: str) -> str:
    """A string literal of a query predicate."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
