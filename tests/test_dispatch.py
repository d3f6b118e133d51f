"""Per-payment order and bounded concurrency."""

import asyncio

from connector.dispatch import KeyedDispatcher


async def test_jobs_of_one_key_run_in_order_and_keys_run_concurrently() -> None:
    """Jobs for one key never overlap and keep their order; other keys run meanwhile."""
    events: list[str] = []
    running: dict[str, int] = {}
    overlap = False
    b_finished = asyncio.Event()

    def job(key: str, n: int, wait_for: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
        async def run() -> None:
            nonlocal overlap
            running[key] = running.get(key, 0) + 1
            overlap |= running[key] > 1
            events.append(f"{key}{n}:start")
            if wait_for is not None:  # a1 ends only after b1: b must not wait for a
                await asyncio.wait_for(wait_for.wait(), timeout=5)
            await asyncio.sleep(0)  # a job yields while it works
            events.append(f"{key}{n}:end")
            running[key] -= 1
            if key == "b":
                b_finished.set()

        return run

    async with asyncio.TaskGroup() as tasks:
        dispatcher = KeyedDispatcher(tasks, max_in_flight=10)
        await dispatcher.submit("a", job("a", 1, wait_for=b_finished))
        await dispatcher.submit("a", job("a", 2))
        await dispatcher.submit("b", job("b", 1))
    assert not overlap
    assert events.index("a1:end") < events.index("a2:start")
    assert events.index("b1:end") < events.index("a1:end")  # b did not wait for a


async def test_submit_waits_when_all_slots_are_taken() -> None:
    """No more than max_in_flight jobs are admitted at once."""
    peak = current = 0

    async def job() -> None:
        nonlocal peak, current
        current += 1
        peak = max(peak, current)
        await asyncio.sleep(0)  # yields: every admitted job is running at once here
        current -= 1

    async with asyncio.TaskGroup() as tasks:
        dispatcher = KeyedDispatcher(tasks, max_in_flight=3)
        for i in range(20):
            await dispatcher.submit(f"k{i}", job)
    assert peak == 3


async def test_drain_cancels_what_does_not_finish_in_time() -> None:
    """Shutdown waits a bounded time, then cancels unfinished jobs."""
    finished: list[str] = []

    async def quick() -> None:
        finished.append("quick")

    async def slow() -> None:
        await asyncio.Event().wait()  # never finishes by itself
        finished.append("slow")

    async with asyncio.TaskGroup() as tasks:
        dispatcher = KeyedDispatcher(tasks, max_in_flight=5)
        await dispatcher.submit("a", quick)
        await dispatcher.submit("b", slow)
        assert await dispatcher.drain(timeout_s=0.1) == 1
    assert finished == ["quick"]
