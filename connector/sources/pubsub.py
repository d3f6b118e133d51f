"""Google Cloud Pub/Sub source: streaming pull with flow control, ack only after the effect.

The client library calls back on its own threads; each message is handed to the event loop and
waits in a queue there. Flow control bounds how many messages (and bytes) are outstanding, and the
library extends their leases while they are processed, so long PSP calls keep them.

Poison deliveries: with ``dead_letter_topic`` set, the message is published there with attributes
naming the reason, the attempt count and its origin, then acknowledged. Without it, the message is
nacked and the subscription's own dead-letter policy moves it aside after its maximum number of
delivery attempts (that policy must then exist: ``start`` checks); this process remembers it, and
hands each redelivery straight back without processing it again.
"""

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import structlog
from google.api_core.exceptions import GoogleAPICallError, PermissionDenied
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message

from connector.errors import ConfigurationError

log = structlog.get_logger("connector.sources.pubsub")

MAX_ACK_DEADLINE_S = 600  # Pub/Sub's upper bound
LEASE_EXTENSION_S = 20
MAX_POISON_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class PubSubConfig:
    project_id: str
    subscription: str
    dead_letter_topic: str | None = None
    max_messages: int = 64
    max_bytes: int = 16 * 1024 * 1024
    max_lease_s: int = 3600
    start_timeout_s: float = 30.0


@dataclass(slots=True)
class PubSubDelivery:
    message: Message
    source: "PubSubSource"

    @property
    def body(self) -> bytes:
        return bytes(self.message.data)

    @property
    def position(self) -> str:
        return f"{self.source.subscription_id}/{self.message.message_id}"

    @property
    def attempt(self) -> int:
        return self.source.attempt(self.message)

    async def ack(self) -> None:
        self.message.ack()
        self.source.settled(self.message)

    async def retry_later(self, delay_s: float) -> bool:
        """Pub/Sub redelivers once the deadline passes: a nack that waits ``delay_s``."""
        # Whole seconds, rounded up: a delay below one second must not become an immediate redelivery.
        self.message.modify_ack_deadline(max(1, min(MAX_ACK_DEADLINE_S, math.ceil(delay_s))))
        self.message.drop()  # out of lease management, so the deadline is not extended again
        return True

    async def dead_letter(self, reason: str, attempts: int) -> None:
        await self.source.dead_letter(self.message, reason, attempts)
        self.source.settled(self.message)


class PubSubSource:
    def __init__(self, config: PubSubConfig) -> None:
        self._config = config
        self._subscriber = pubsub_v1.SubscriberClient()
        self._publisher = pubsub_v1.PublisherClient() if config.dead_letter_topic else None
        self._path = self._subscriber.subscription_path(config.project_id, config.subscription)
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._pull: Future[None] | None = None
        self._received: dict[str, int] = {}  # message id -> deliveries seen by this process
        self._poison: dict[str, None] = {}  # ids nacked for the dead-letter policy, oldest first

    @property
    def subscription_id(self) -> str:
        return self._config.subscription

    async def start(self) -> None:
        """Checks the subscription (and its dead-letter set-up), then starts the streaming pull."""
        try:
            subscription = await asyncio.wait_for(
                asyncio.to_thread(self._subscriber.get_subscription, request={"subscription": self._path}),
                self._config.start_timeout_s,
            )
        except GoogleAPICallError as exc:
            raise ConfigurationError(
                f"PUBSUB_SUBSCRIPTION: subscription {self._path} cannot be read: {exc.__class__.__name__}"
            ) from None
        if self._publisher is not None and self._config.dead_letter_topic:
            topic = self._publisher.topic_path(self._config.project_id, self._config.dead_letter_topic)
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(self._publisher.get_topic, request={"topic": topic}), self._config.start_timeout_s
                )
            except PermissionDenied:
                # roles/pubsub.publisher may publish but not read the topic: what it can do shows at the
                # first dead letter (connector_source_failures_total), not here.
                log.warning("pubsub.dead_letter_topic_unverified", topic=topic, reason="no permission to read it")
            except GoogleAPICallError as exc:
                raise ConfigurationError(
                    f"PUBSUB_DEAD_LETTER_TOPIC: topic {topic} cannot be read: {exc.__class__.__name__}"
                    " (it must exist, and these credentials reach it)"
                ) from None
        if not self._config.dead_letter_topic and not subscription.dead_letter_policy.dead_letter_topic:
            raise ConfigurationError(
                f"PUBSUB_DEAD_LETTER_TOPIC is empty and subscription {self._path} has no dead-letter policy:"
                " poison deliveries would come back forever"
            )
        loop = asyncio.get_running_loop()
        flow_control = pubsub_v1.types.FlowControl(
            max_messages=self._config.max_messages,
            max_bytes=self._config.max_bytes,
            max_lease_duration=self._config.max_lease_s,
            # Short extensions, renewed while a message is processed: after a crash its messages
            # come back within this bound instead of the library's adaptive (up to 10 min) deadline.
            max_duration_per_lease_extension=LEASE_EXTENSION_S,
        )
        self._pull = self._subscriber.subscribe(
            self._path, lambda message: loop.call_soon_threadsafe(self._queue.put_nowait, message), flow_control=flow_control
        )

    async def deliveries(self, stop: asyncio.Event) -> AsyncIterator[PubSubDelivery]:
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except TimeoutError:
                if self._pull is not None and self._pull.done():
                    self._pull.result()  # the streaming pull died: raise its error, and the process restarts
                continue
            if message.message_id in self._poison:
                # Judged poison already, and left to the subscription's dead-letter policy: handed back
                # at once until the policy takes it, never processed again.
                message.nack()
                continue
            # Without a dead-letter policy Pub/Sub does not count deliveries: count them here.
            self._received[message.message_id] = self._received.get(message.message_id, 0) + 1
            yield PubSubDelivery(message, self)

    def attempt(self, message: Message) -> int:
        return message.delivery_attempt or self._received.get(message.message_id, 1)

    def settled(self, message: Message) -> None:
        self._received.pop(message.message_id, None)

    async def dead_letter(self, message: Message, reason: str, attempts: int) -> None:
        if self._publisher is None or not self._config.dead_letter_topic:
            self._poison[message.message_id] = None
            while len(self._poison) > MAX_POISON_REMEMBERED:
                self._poison.pop(next(iter(self._poison)))
            message.nack()  # the subscription's dead-letter policy takes it after its maximum attempts
            return
        topic = self._publisher.topic_path(self._config.project_id, self._config.dead_letter_topic)
        published = self._publisher.publish(
            topic,
            bytes(message.data),
            dlq_reason=reason,
            dlq_attempts=str(attempts),
            dlq_original_subscription=self._path,
            dlq_original_message_id=message.message_id,
        )
        await asyncio.wait_for(asyncio.wrap_future(published), timeout=30.0)
        message.ack()

    def lag(self) -> Mapping[str, int]:
        return {}  # the backlog is the subscription's num_undelivered_messages, in Cloud Monitoring

    async def close(self) -> None:
        """Stops the streaming pull, then hands back what was received but not started.

        The pull stops first, so that callbacks the library was still running land in the queue and
        are handed back too. The hand-back is one direct call, awaited: ``Message.nack`` only queues a
        request. Messages the stream had sent but the library had not handed over yet stay leased
        until the stream's deadline (at most ``LEASE_EXTENSION_S``; the emulator takes longer).
        """
        if self._pull is not None:
            self._pull.cancel()
            await asyncio.to_thread(self._pull.result, timeout=30)  # callbacks still queued run meanwhile
        unstarted = [self._queue.get_nowait().ack_id for _ in range(self._queue.qsize())]
        if unstarted:
            request = {"subscription": self._path, "ack_ids": unstarted, "ack_deadline_seconds": 0}
            await asyncio.to_thread(self._subscriber.modify_ack_deadline, request=request, timeout=10)
        self._subscriber.close()
        if self._publisher is not None:
            self._publisher.stop()


@dataclass(slots=True)
class PubSubLetter:
    received: Any  # a ReceivedMessage of the dead-letter subscription
    letters: "PubSubDeadLetters"

    @property
    def body(self) -> bytes:
        return bytes(self.received.message.data)

    @property
    def reason(self) -> str:
        return str(self.received.message.attributes.get("dlq_reason", ""))

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - float(self.received.message.publish_time.timestamp()))

    @property
    def position(self) -> str:
        return f"{self.letters.subscription_id}/{self.received.message.message_id}"

    async def move(self) -> None:
        await self.letters.republish(self)


class PubSubDeadLetters:
    """The dead-letter topic as ``connector replay`` reads it: through a subscription of its own
    (``PUBSUB_DEAD_LETTER_SUBSCRIPTION``). A letter moved is published to the main subscription's topic,
    then acknowledged; a letter left is handed back at the end. Only letters published before the
    replay began are read, so one dead-lettered again meanwhile waits for the next replay."""

    def __init__(self, config: PubSubConfig, dead_letter_subscription: str) -> None:
        self._config = config
        self._subscriber = pubsub_v1.SubscriberClient()
        self._publisher = pubsub_v1.PublisherClient()
        self.subscription_id = dead_letter_subscription
        self._path = self._subscriber.subscription_path(config.project_id, dead_letter_subscription)
        self._main_topic = ""
        self._left: list[str] = []  # ack ids to hand back
        self._read: list[PubSubLetter] = []
        self._began = time.time()

    async def __aenter__(self) -> "PubSubDeadLetters":
        main = self._subscriber.subscription_path(self._config.project_id, self._config.subscription)
        try:
            subscription = await asyncio.to_thread(self._subscriber.get_subscription, request={"subscription": main}, timeout=30)
            await asyncio.to_thread(self._subscriber.get_subscription, request={"subscription": self._path}, timeout=30)
        except GoogleAPICallError as exc:
            self._close()
            raise ConfigurationError(
                f"PUBSUB_SUBSCRIPTION or PUBSUB_DEAD_LETTER_SUBSCRIPTION: {exc.__class__.__name__} reading {main} or {self._path}"
            ) from None
        self._main_topic = subscription.topic
        return self

    async def __aexit__(self, *_: object) -> None:
        self._close()

    async def letters(self) -> AsyncIterator[PubSubLetter]:
        empty = 0
        while empty < 2:  # a pull may come back empty while messages remain: twice in a row ends it
            response = await asyncio.to_thread(
                self._subscriber.pull, request={"subscription": self._path, "max_messages": 100}, timeout=10
            )
            received = list(response.received_messages)
            empty = 0 if received else empty + 1
            if received:  # leased for the whole replay, not the subscription's deadline
                request = {"subscription": self._path, "ack_ids": [m.ack_id for m in received], "ack_deadline_seconds": 600}
                await asyncio.to_thread(self._subscriber.modify_ack_deadline, request=request, timeout=10)
            for message in received:
                if message.message.publish_time.timestamp() > self._began:
                    self._left.append(message.ack_id)  # dead-lettered again since the replay began
                    continue
                letter = PubSubLetter(message, self)
                self._read.append(letter)
                yield letter

    async def republish(self, letter: PubSubLetter) -> None:
        message = letter.received.message
        published = self._publisher.publish(self._main_topic, bytes(message.data), dlq_replayed_from=letter.position)
        await asyncio.wait_for(asyncio.wrap_future(published), timeout=30.0)
        request = {"subscription": self._path, "ack_ids": [letter.received.ack_id]}
        await asyncio.to_thread(self._subscriber.acknowledge, request=request, timeout=10)
        letter.received = None  # moved: not handed back

    async def done(self, *, moved_any: bool) -> None:
        """Hands back every letter read and not moved (Pub/Sub keeps each until it is acknowledged)."""
        left = self._left + [letter.received.ack_id for letter in self._read if letter.received is not None]
        for start in range(0, len(left), 1000):
            request = {"subscription": self._path, "ack_ids": left[start : start + 1000], "ack_deadline_seconds": 0}
            await asyncio.to_thread(self._subscriber.modify_ack_deadline, request=request, timeout=10)

    def _close(self) -> None:
        self._subscriber.close()
        self._publisher.stop()


class PubSubPublisher:
    """Publishes messages to the topic behind the workers' subscription (the notification receiver's
    queue): ``topic`` when given, else the subscription's own. A message is durable once ``publish`` returns."""

    def __init__(self, config: PubSubConfig, topic: str | None = None, timeout_s: float = 30.0) -> None:
        self._config = config
        self._publisher = pubsub_v1.PublisherClient()
        self._topic = self._publisher.topic_path(config.project_id, topic) if topic else ""
        self._timeout_s = timeout_s

    async def start(self) -> None:
        if self._topic:
            return  # publishing needs no more than roles/pubsub.publisher: the first publish shows what it can do
        subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(self._config.project_id, self._config.subscription)
        try:
            subscription = await asyncio.wait_for(
                asyncio.to_thread(subscriber.get_subscription, request={"subscription": path}), self._config.start_timeout_s
            )
        except GoogleAPICallError as exc:
            raise ConfigurationError(
                f"NOTIFY_PUBSUB_TOPIC is empty and subscription {path} (PUBSUB_SUBSCRIPTION) cannot be read to find its topic:"
                f" {exc.__class__.__name__}"
            ) from None
        finally:
            subscriber.close()
        self._topic = subscription.topic

    async def publish(self, key: str, body: bytes) -> None:
        published = self._publisher.publish(self._topic, body, key=key)
        await asyncio.wait_for(asyncio.wrap_future(published), timeout=self._timeout_s)

    async def close(self) -> None:
        self._publisher.stop()
