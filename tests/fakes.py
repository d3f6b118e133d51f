"""In-memory stand-ins for the protocol tests: commercetools' payments, a queue, and a clock.

They replace the real peers only where the point is the protocol (claims, leases, 409s, partial
failures, retries), so that those tests run in milliseconds with neither Node nor Java. Each is at
least as strict as the peer it stands for on what the protocol relies on:

- ``InMemoryPayments`` checks the version on every update (the emulator checks it only when an
  action changes something), raises 409 with the current version, moves versions on by more than one
  (callers must take the version from the answer), refuses a transaction state that moves backward
  or from one final state to another, refuses interaction fields its Type does not define, and
  refuses actions it does not know. It can fail an update before applying it (``failures``) or
  after (``answers_lost``: applied, and the answer lost, as a timeout looks to a client).
- ``InMemorySource`` delivers at least once. As Pub/Sub (``hands_back``): a delivery neither
  acknowledged nor dead-lettered when a worker stops comes again to the next one, and one handed back
  comes again once the clock has passed its delay. As Kafka: the next worker reads again from the
  first unfinished delivery on, finished ones after it included.
- ``ManualClock`` moves only when a test moves it.

What only the real peers prove (HTTP, the brokers' protocols, the emulator's JSON) stays in the tests
that start them.
"""

import asyncio
import copy
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connector.commercetools.interaction_type import interaction_type_draft
from connector.errors import ConcurrentModification, NotFound, Rejected, ServerError
from connector.models.payment import Payment, TransactionState

Action = dict[str, Any]
# A hook run as an update arrives, before its version is checked: a test's other writer, or a fault.
BeforeUpdate = Callable[[str, list[Action]], Awaitable[None]]

_RANK = {"Initial": 0, "Pending": 1, "Success": 2, "Failure": 2}


class ManualClock:
    """The processor's clock (``clock.now``) and the source's, moved by ``advance`` only."""

    def __init__(self, start: datetime = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)) -> None:
        self._now = start
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        for listener in self._listeners:
            listener()

    def on_advance(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)


class InMemoryPayments:
    """Payments as commercetools keeps them, for the processor (its ``PaymentStore``) and the tests."""

    VERSION_STEP = 2  # commercetools promises a higher version, not the next one

    def __init__(self, interaction_type_key: str = "connector-payment-interaction") -> None:
        self._payments: dict[str, dict[str, Any]] = {}
        self._type_key = interaction_type_key
        self._fields = {f["name"]: f["type"]["name"] for f in interaction_type_draft(interaction_type_key)["fieldDefinitions"]}
        self.requests: Counter[str] = Counter()  # "GET" and "POST", as the real client would send them
        self.before_update: BeforeUpdate | None = None
        self.failures: deque[Exception] = deque()  # raised by the next updates, one each, before anything changes
        self.answers_lost: deque[Exception] = deque()  # raised by the next updates, one each, after they are applied
        self.failing: Callable[[str], bool] = lambda payment_id: False  # payments whose every update gets a 500

    def create(self, draft: Mapping[str, Any]) -> Payment:
        """A payment from a PaymentDraft (set-up only: not counted as a request)."""
        now = _iso(datetime.now(UTC))
        payment = {
            "id": str(uuid.uuid4()), "version": 1, "createdAt": now, "lastModifiedAt": now,
            "paymentMethodInfo": {}, "paymentStatus": {}, "interfaceInteractions": [],
            **copy.deepcopy(dict(draft)),
        }  # fmt: skip
        payment["transactions"] = [{"id": str(uuid.uuid4()), **t} for t in payment.get("transactions", [])]
        self._payments[payment["id"]] = payment
        return Payment.model_validate(copy.deepcopy(payment))

    def stored(self, payment_id: str) -> Payment:
        """The payment as it is now (for assertions: not counted as a request)."""
        return Payment.model_validate(copy.deepcopy(self._payments[payment_id]))

    def delete(self, payment_id: str) -> None:
        del self._payments[payment_id]

    async def get_payment(self, payment_id: str) -> Payment:
        self.requests["GET"] += 1
        await asyncio.sleep(0)  # a request yields to the event loop, as the real one does
        if payment_id not in self._payments:
            raise NotFound(f"GET /payments/{payment_id}: 404")
        return self.stored(payment_id)

    async def update_payment(self, payment_id: str, version: int, actions: list[Action]) -> int:
        self.requests["POST"] += 1
        await asyncio.sleep(0)
        if self.failures:
            raise self.failures.popleft()
        if self.failing(payment_id):
            raise ServerError(f"POST /payments/{payment_id}: 500")
        if self.before_update is not None:
            await self.before_update(payment_id, actions)
        payment = self._payments.get(payment_id)
        if payment is None:
            raise NotFound(f"POST /payments/{payment_id}: 404")
        if version != payment["version"]:
            raise ConcurrentModification(f"POST /payments/{payment_id}: 409", current_version=payment["version"])
        changed = copy.deepcopy(payment)
        for action in actions:
            self._apply(changed, action)  # all or nothing: a refused action changes nothing
        if changed != payment:  # an update that changes nothing keeps the version
            changed["version"] += self.VERSION_STEP
            changed["lastModifiedAt"] = _iso(datetime.now(UTC))
            self._payments[payment_id] = changed
        if self.answers_lost:
            raise self.answers_lost.popleft()
        return int(changed["version"])

    def write(self, payment_id: str, actions: list[Action]) -> None:
        """Another writer's update at the current version (set-up and hooks: not counted as a request)."""
        payment = copy.deepcopy(self._payments[payment_id])
        for action in actions:
            self._apply(payment, action)
        payment["version"] += self.VERSION_STEP
        self._payments[payment_id] = payment

    def _apply(self, payment: dict[str, Any], action: Action) -> None:
        name = action.get("action")
        if name == "changeTransactionState":
            transaction = _transaction(payment, action["transactionId"])
            old, new = transaction["state"], TransactionState(action["state"]).value
            if new != old and _RANK[new] <= _RANK[old]:
                raise Rejected(f"InvalidOperation: transaction state cannot move from {old} to {new}")
            transaction["state"] = new
        elif name == "changeTransactionInteractionId":
            _transaction(payment, action["transactionId"])["interactionId"] = action["interactionId"]
        elif name == "addInterfaceInteraction":
            if action["type"] != {"typeId": "type", "key": self._type_key}:
                raise Rejected(f"InvalidInput: no Type {action['type']!r}")
            fields = action.get("fields", {})
            if unknown := set(fields) - set(self._fields):
                raise Rejected(f"InvalidInput: the Type defines no field {sorted(unknown)}")
            for name_, value in fields.items():
                if not isinstance(value, str) or (self._fields[name_] == "DateTime" and not _is_datetime(value)):
                    raise Rejected(f"InvalidInput: field {name_} is not a {self._fields[name_]}")
            payment["interfaceInteractions"].append({"type": {"typeId": "type", "id": self._type_key}, "fields": fields})
        elif name == "setStatusInterfaceCode":
            payment["paymentStatus"]["interfaceCode"] = action["interfaceCode"]
        elif name == "setStatusInterfaceText":
            payment["paymentStatus"]["interfaceText"] = action["interfaceText"]
        elif name == "setKey":
            payment["key"] = action["key"]
        elif name == "addTransaction":
            payment["transactions"].append({"id": str(uuid.uuid4()), **action["transaction"]})
        else:
            raise Rejected(f"InvalidInput: unknown update action {name!r}")


def _transaction(payment: dict[str, Any], transaction_id: str) -> dict[str, Any]:
    for transaction in payment["transactions"]:
        if transaction["id"] == transaction_id:
            return transaction  # type: ignore[no-any-return]
    raise Rejected(f"InvalidOperation: no transaction {transaction_id}")


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class InMemoryDelivery:
    """One message of ``InMemorySource``; what happened to it is on the source."""

    body: bytes
    position: str
    attempt: int
    _source: "InMemorySource" = field(repr=False)

    async def ack(self) -> None:
        self._source.finish(self, "acked")

    async def retry_later(self, delay_s: float) -> bool:
        if not self._source.hands_back:
            return False  # as a Kafka partition: the worker retries in place
        self._source.hand_back(self, delay_s)
        return True

    async def dead_letter(self, reason: str, attempts: int) -> None:
        self._source.dead_letters.append((self.body, reason, attempts))
        self._source.finish(self, "dead_lettered")


class InMemorySource:
    """A queue of bodies with at-least-once delivery. ``hands_back`` as Pub/Sub (a nack with a delay,
    which comes again once ``clock`` has passed it); without it as Kafka (the worker retries in place)."""

    def __init__(self, clock: ManualClock, *, hands_back: bool = True) -> None:
        self._clock = clock
        self.hands_back = hands_back
        self._ready: asyncio.Queue[InMemoryDelivery] = asyncio.Queue()
        self._delayed: list[tuple[datetime, InMemoryDelivery]] = []
        self._unfinished: dict[str, InMemoryDelivery] = {}  # handed to a worker, not yet acked or dead-lettered
        self._log: list[tuple[str, bytes]] = []  # every message, in the order published (a partition)
        self._changed = asyncio.Event()
        self._arrived = asyncio.Event()  # set when a delivery is put on ``_ready``
        self._sequence = 0
        self.acked: list[bytes] = []
        self.dead_letters: list[tuple[bytes, str, int]] = []
        self.handed_back = 0
        clock.on_advance(self._release_due)

    def publish(self, *bodies: bytes) -> None:
        for body in bodies:
            self._sequence += 1
            self._log.append((f"memory:{self._sequence}", body))
            self._put(InMemoryDelivery(body, f"memory:{self._sequence}", 1, self))

    def _put(self, delivery: InMemoryDelivery) -> None:
        self._ready.put_nowait(delivery)
        self._arrived.set()

    async def start(self) -> None:
        if self.hands_back:  # Pub/Sub: what the last consumer left unfinished comes again, one attempt later
            for delivery in self._unfinished.values():
                self._put(InMemoryDelivery(delivery.body, delivery.position, delivery.attempt + 1, self))
        elif self._unfinished:  # Kafka: the committed offset is the first unfinished one; all after it come again
            first = min(self._log.index((d.position, d.body)) for d in self._unfinished.values())
            self._ready = asyncio.Queue()
            for position, body in self._log[first:]:
                self._put(InMemoryDelivery(body, position, 1, self))
        self._unfinished.clear()

    async def deliveries(self, stop: asyncio.Event) -> AsyncIterator[InMemoryDelivery]:
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if self._ready.empty():
                    arrived = asyncio.ensure_future(self._arrived.wait())
                    await asyncio.wait({arrived, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    arrived.cancel()
                    self._arrived.clear()
                    continue
                # Taken and registered in one step: ``pending`` never misses a delivery in between.
                delivery = self._ready.get_nowait()
                self._unfinished[delivery.position] = delivery
                yield delivery
        finally:
            stopped.cancel()

    async def close(self) -> None:
        """Nothing to commit: what is unfinished stays so, and comes again to the next ``start``."""

    def lag(self) -> Mapping[str, int]:
        return {"memory-0": self._ready.qsize() + len(self._delayed) + len(self._unfinished)}

    def finish(self, delivery: InMemoryDelivery, how: str) -> None:
        if self._unfinished.pop(delivery.position, None) is None:
            raise AssertionError(f"{delivery.position} was {how} twice, or after it was handed back")
        if how == "acked":
            self.acked.append(delivery.body)
        self._notify()

    def hand_back(self, delivery: InMemoryDelivery, delay_s: float) -> None:
        self._unfinished.pop(delivery.position)
        self.handed_back += 1
        again = InMemoryDelivery(delivery.body, delivery.position, delivery.attempt + 1, self)
        self._delayed.append((self._clock.now() + timedelta(seconds=delay_s), again))
        self._notify()

    @property
    def delayed(self) -> int:
        """Messages handed back and waiting for the clock to pass their delay."""
        return len(self._delayed)

    @property
    def pending(self) -> int:
        """Messages not finished: ready, delayed, or with a worker."""
        return self.lag()["memory-0"]

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Waits until ``condition()`` holds, rechecked after each ack, dead letter or hand-back."""
        async with asyncio.timeout(timeout_s):
            while True:
                self._changed.clear()
                if condition():
                    return
                await self._changed.wait()

    async def wait_for_delayed(self, count: int = 1, timeout_s: float = 5.0) -> None:
        """Waits until ``count`` deliveries are handed back and waiting for the clock."""
        await self.wait_until(lambda: len(self._delayed) >= count, timeout_s)

    def _release_due(self) -> None:
        now = self._clock.now()
        due = [d for at, d in self._delayed if at <= now]
        self._delayed = [(at, d) for at, d in self._delayed if at > now]
        for delivery in due:
            self._put(delivery)

    def _notify(self) -> None:
        self._changed.set()
