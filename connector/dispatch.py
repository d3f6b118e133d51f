"""Runs work concurrently across payments and strictly in order within one payment.

Queues promise no order and Kafka records are not keyed by payment (docs/design.md, 'Processing
protocol'), so two deliveries for one payment may arrive together: the second waits for the first,
and then usually finds nothing left to do.
"""

import asyncio
from collections.abc import Awaitable, Callable

Job = Callable[[], Awaitable[None]]


class KeyedDispatcher:
    def __init__(self, tasks: asyncio.TaskGroup, max_in_flight: int) -> None:
        self._tasks = tasks
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tails: dict[str, asyncio.Task[None]] = {}  # the last job submitted for each key
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, key: str, job: Job) -> None:
        """Schedules ``job`` after the jobs already submitted for ``key``; waits while all slots are taken."""
        await self._slots.acquire()
        task = self._tasks.create_task(self._run(key, self._tails.get(key), job))
        self._tails[key] = task
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def drain(self, timeout_s: float) -> int:
        """Waits up to ``timeout_s`` for submitted jobs, then cancels the rest; returns how many were cancelled."""
        if not self._running:
            return 0
        _, unfinished = await asyncio.wait(set(self._running), timeout=timeout_s)
        for task in unfinished:
            task.cancel()
        return len(unfinished)

    async def _run(self, key: str, previous: asyncio.Task[None] | None, job: Job) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])  # order only: its failure is its own
            await job()
        finally:
            self._slots.release()
            if self._tails.get(key) is asyncio.current_task():
                del self._tails[key]
