"""Circuit breakers: one per dependency (commercetools, each PSP interface), so an outage pauses work
instead of burning through retries into dead letters (docs/design.md, 'Outages pause the worker').

A breaker is closed while its dependency answers. A delivery that fails on it after that call's own
retries opens it: the delivery waits, and after a wait that grows with each failed probe (bounded,
and at least the dependency's Retry-After) exactly one waiting delivery probes. Its success closes
the breaker and releases every waiter; its failure reopens it for longer. Time is read from a
monotonic clock, so no wall-clock step can shorten or stretch a pause.
"""

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

COMMERCETOOLS = "commercetools"


def psp_dependency(interface: str, account: str | None = None) -> str:
    """The breaker's name for a PSP route (bounded: the configured routes). One per account: one
    account's revoked key or rate limit pauses that account's payments only."""
    name = f"psp:{interface.casefold()}"
    return f"{name}/{account.casefold()}" if account else name


@dataclass(frozen=True, slots=True)
class PauseWaits:
    initial_s: float = 1.0
    max_s: float = 60.0

    def after(self, failures: int) -> float:
        """The wait after the ``failures``-th consecutive failure (counted from 1)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 30))


class Breaker:
    def __init__(self, name: str, waits: PauseWaits, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._waits = waits
        self._failures = 0  # consecutive, since the breaker last closed
        self._reopens_at = 0.0  # loop time from which a probe may run
        self._opened_at = 0.0
        self._probe: asyncio.Task[object] | None = None
        self._waiters = 0  # tasks in turn()
        self._changed = asyncio.Event()  # set and replaced on every change waiters care about
        self.pauses = 0  # times it opened (for the metric)
        self.closings = 0  # times it closed: a delivery that fails again after one fails alone

    @property
    def is_open(self) -> bool:
        return self._failures > 0

    def open_for_s(self) -> float:
        """How long the dependency has been paused (0 when closed)."""
        return self._clock() - self._opened_at if self.is_open else 0.0

    @property
    def attended(self) -> bool:
        """Some delivery will try the dependency again: one waits for its turn, or probes now."""
        return self._waiters > 0 or self._probe is not None

    def admits(self) -> bool:
        """Whether the calling task may use the dependency now: it is closed, or this task is its probe."""
        return not self.is_open or (self._probe is not None and self._probe is asyncio.current_task())

    def failed(self, retry_after_s: float | None = None) -> float:
        """Records a failure and returns the wait before the next probe.

        The wait grows with the probes that failed, not with every delivery that met the outage: the
        deliveries in flight when it began all fail at once, and count as its start."""
        now = self._clock()
        probing = self._probe is not None and self._probe is asyncio.current_task()
        if not self.is_open:
            self._opened_at = now
            self.pauses += 1
        if not self.is_open or probing:
            self._failures += 1
            self._reopens_at = now + self._waits.after(self._failures)
        self._reopens_at = max(self._reopens_at, now + (retry_after_s or 0.0))
        if probing:
            self._release_probe()
        return self._reopens_at - now

    def succeeded(self) -> None:
        """The dependency answered: closes the breaker and lets every waiter go."""
        if self.is_open:
            self._failures = 0
            self.closings += 1
            self._release_probe()

    def release(self) -> None:
        """The calling task's probe ended without telling anything of this dependency (it failed elsewhere)."""
        if self._probe is asyncio.current_task():
            self._release_probe()

    async def turn(self) -> None:
        """Returns once the breaker is closed, or its wait is over and the calling task is its one probe."""
        self._waiters += 1
        try:
            await self._turn()
        finally:
            self._waiters -= 1
            if not self.attended:
                self._notify()  # whoever waits for a delivery to try again may send one

    async def _turn(self) -> None:
        while self.is_open:
            wait_s = self._reopens_at - self._clock()
            if wait_s <= 0 and self._probe is None:
                probe = asyncio.current_task()
                if probe is not None:
                    probe.add_done_callback(self._probe_ended)  # a cancelled probe frees the turn
                self._probe = probe
                return
            changed = self._changed
            timeout_s = wait_s if wait_s > 0 else self._waits.max_s  # else until the probe's verdict
            try:
                async with asyncio.timeout(timeout_s):
                    await changed.wait()
            except TimeoutError:
                pass

    async def closed_or_unattended(self) -> None:
        """Returns once the breaker is closed, or once no delivery waits to try the dependency again (the
        last one ended otherwise: dead-lettered, say), so that the caller may send one to probe it."""
        while self.is_open and self.attended:
            changed = self._changed
            try:
                async with asyncio.timeout(self._waits.max_s):
                    await changed.wait()
            except TimeoutError:
                pass

    def _probe_ended(self, task: "asyncio.Task[object]") -> None:
        if self._probe is task:
            self._release_probe()

    def _release_probe(self) -> None:
        if self._probe is not None:
            self._probe.remove_done_callback(self._probe_ended)
        self._probe = None
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class Breakers:
    """The worker's breakers, by dependency name; made up front, so metrics and readiness list them all."""

    def __init__(self, names: Iterable[str], waits: PauseWaits) -> None:
        self._waits = waits
        self._by_name = {name: Breaker(name, waits) for name in names}

    def __getitem__(self, name: str) -> Breaker:
        """The dependency's breaker; made on first use for a name not listed up front."""
        if (breaker := self._by_name.get(name)) is None:
            breaker = self._by_name[name] = Breaker(name, self._waits)
        return breaker

    def get(self, name: str) -> Breaker | None:
        return self._by_name.get(name)

    @property
    def all(self) -> Mapping[str, Breaker]:
        return self._by_name

    def open(self) -> list[Breaker]:
        return [breaker for breaker in self._by_name.values() if breaker.is_open]
