"""The contract every source (Kafka, Pub/Sub) fulfils."""

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Protocol


class Delivery(Protocol):
    """One message from the queue. Exactly one of ``ack`` and ``dead_letter`` is called, or neither
    (the work was interrupted): then the message comes again later."""

    @property
    def body(self) -> bytes: ...

    @property
    def position(self) -> str:
        """Where the message sits in its queue, for logs (never its content)."""
        ...

    @property
    def attempt(self) -> int:
        """Which delivery of this message this is, when the queue counts them (else 1)."""
        ...

    async def ack(self) -> None:
        """The outcome is stored (or the message is not ours): never deliver it again."""

    async def retry_later(self, delay_s: float) -> bool:
        """Hands the message back to come again after about ``delay_s``; False when the queue
        cannot (Kafka: a partition is read in order), and the caller then retries in place."""
        ...

    async def dead_letter(self, reason: str, attempts: int) -> None:
        """Moves the message aside, with why and after how many attempts, then acknowledges it."""


class Source(Protocol):
    async def start(self) -> None:
        """Connects and subscribes; retries a missing broker within its own time bound."""

    def deliveries(self, stop: asyncio.Event) -> AsyncIterator[Delivery]:
        """Yields deliveries until ``stop`` is set."""
        ...

    async def close(self) -> None:
        """Commits what is done and disconnects."""

    def lag(self) -> Mapping[str, int]:
        """Messages not yet committed, per partition; empty where the queue itself reports its backlog."""
        ...
