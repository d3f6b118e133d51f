"""``connector replay``: dead-lettered deliveries back to the main topic or subscription (docs/operations.md).

Which ones is decided here, from data (``ReplayFilter``); reading and moving them is the source's
(``connector.sources.kafka.KafkaDeadLetters``, ``connector.sources.pubsub.PubSubDeadLetters``). A
replayed delivery is processed like any other, so replaying one whose work was done meanwhile
changes nothing. One risk remains: a delivery older than its PSP's idempotency-key retention, on a
route whose adapter cannot look a transaction up, may execute again what an earlier attempt did.
Those are counted and warned about.
"""

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from connector.errors import BadDelivery
from connector.models.delivery import PaymentTrigger, parse_delivery


class Letter(Protocol):
    """One dead-lettered delivery."""

    @property
    def body(self) -> bytes: ...

    @property
    def reason(self) -> str:
        """Why it was dead-lettered ('' when the queue's own policy moved it and did not say)."""
        ...

    @property
    def age_s(self) -> float:
        """How long ago it was dead-lettered."""
        ...

    @property
    def position(self) -> str: ...

    async def move(self) -> None:
        """Publishes it to the main topic or subscription's topic, then takes it off the dead letters."""


class DeadLetters(Protocol):
    def letters(self) -> AsyncIterator[Letter]:
        """Every dead letter not replayed before, oldest first, as of now."""
        ...

    async def done(self, *, moved_any: bool) -> None:
        """Records how far this replay read (nothing, on a dry run) and releases what it left."""


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    reason: str | None = None  # a part of the reason, in any case
    older_than_s: float | None = None
    newer_than_s: float | None = None
    payment_ids: frozenset[str] = frozenset()

    def matches(self, letter: Letter, payment_id: str | None) -> bool:
        if self.reason is not None and self.reason.casefold() not in letter.reason.casefold():
            return False
        if self.older_than_s is not None and letter.age_s < self.older_than_s:
            return False
        if self.newer_than_s is not None and letter.age_s > self.newer_than_s:
            return False
        return not self.payment_ids or payment_id in self.payment_ids


def payment_id_of(body: bytes) -> str | None:
    """The payment a delivery is about; None for a delivery that cannot be read."""
    try:
        parsed = parse_delivery(body, max_bytes=len(body))
    except BadDelivery:
        return None
    return parsed.payment_id if isinstance(parsed, PaymentTrigger) else None


@dataclass(slots=True)
class ReplayReport:
    dry_run: bool
    examined: int = 0
    matched: int = 0
    moved: int = 0
    # Matched, and older than some route's key retention where its adapter has no look-up.
    older_than_key_retention: int = 0
    matches: list[dict[str, Any]] = field(default_factory=list)  # what a dry run would move

    def as_json(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "dry_run": self.dry_run,
            "examined": self.examined,
            "matched": self.matched,
            "moved": self.moved,
            "older_than_key_retention": self.older_than_key_retention,
        }
        return summary | ({"matches": self.matches} if self.dry_run else {})


async def replay(
    dead_letters: DeadLetters, chosen: ReplayFilter, *, dry_run: bool, keys_forgotten_after_s: Mapping[str, float]
) -> ReplayReport:
    """Moves the dead letters ``chosen`` matches (none on a dry run) and counts them.

    ``keys_forgotten_after_s``: per interface without a look-up, its PSP's key retention."""
    report = ReplayReport(dry_run)
    shortest = min(keys_forgotten_after_s.values(), default=None)
    async for letter in dead_letters.letters():
        report.examined += 1
        payment_id = payment_id_of(letter.body)
        if not chosen.matches(letter, payment_id):
            continue
        report.matched += 1
        risky = shortest is not None and letter.age_s > shortest
        report.older_than_key_retention += risky
        if dry_run:
            report.matches.append(
                {"position": letter.position, "reason": letter.reason, "age_s": round(letter.age_s), "payment_id": payment_id}
                | ({"older_than_key_retention": True} if risky else {})
            )
            continue
        await letter.move()
        report.moved += 1
    await dead_letters.done(moved_any=report.moved > 0)
    return report
