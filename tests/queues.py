"""The two queues a test can run the worker on, behind one small interface.

Each instance owns fresh topics (and, for Pub/Sub, subscriptions), so tests never see each other's
deliveries.
"""

import asyncio
import time
import uuid
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from google.cloud import pubsub_v1

from connector.config import KafkaSettings, PubSubSettings, without_files
from connector.peers.kafka import create_topics
from connector.peers.pubsub import create_subscription

PARTITIONS = 4
PROJECT = "test-project"


class EventQueue(Protocol):
    name: str

    async def create(self) -> None: ...

    def source_settings(self) -> dict[str, Any]:
        """``kafka=...`` or ``pubsub=...`` for ``connector.config.Settings``."""
        ...

    def environment(self) -> dict[str, str]:
        """The same, as environment variables for ``connector run``."""
        ...

    async def publish(self, bodies: list[bytes]) -> None: ...

    async def dead_letters(self, count: int, timeout_s: float) -> list[tuple[bytes, dict[str, str]]]:
        """The first ``count`` dead-lettered deliveries: body and headers (or attributes)."""
        ...

    async def unfinished(self) -> int:
        """Deliveries neither committed nor acknowledged."""
        ...


class KafkaQueue:
    name = "kafka"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = f"payments-{uuid.uuid4().hex[:10]}"
        self.group = f"group-{self.topic}"

    async def create(self) -> None:
        await create_topics(self.bootstrap, self.topic, f"{self.topic}.dlq", partitions=PARTITIONS)

    def source_settings(self) -> dict[str, Any]:
        kafka = without_files(
            KafkaSettings, bootstrap_servers=self.bootstrap, topic=self.topic, group_id=self.group, commit_interval_s=0.2
        )
        return {"kafka": kafka}

    def environment(self) -> dict[str, str]:
        return {
            "CONNECTOR_SOURCE": "kafka",
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC": self.topic,
            "KAFKA_GROUP_ID": self.group,
        }

    async def publish(self, bodies: list[bytes]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            sent = [await producer.send(self.topic, body) for body in bodies]  # no key: spread over partitions
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    async def dead_letters(self, count: int, timeout_s: float) -> list[tuple[bytes, dict[str, str]]]:
        consumer = AIOKafkaConsumer(f"{self.topic}.dlq", bootstrap_servers=self.bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            async with asyncio.timeout(timeout_s):
                records = [await consumer.getone() for _ in range(count)]
        finally:
            await consumer.stop()
        return [(r.value or b"", {k.replace("dlq.", "").replace(".", "_"): v.decode() for k, v in r.headers}) for r in records]

    async def unfinished(self) -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(partitions)
            behind = 0
            for partition in partitions:
                behind += ends[partition] - ((await consumer.committed(partition)) or 0)
            return behind
        finally:
            await consumer.stop()


class PubSubQueue:
    """A topic and a subscription with an ack deadline of 10 s, and an explicit dead-letter topic."""

    name = "pubsub"
    ack_deadline_s = 10

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.topic, self.subscription, self.dead_letter_topic = f"payments-{suffix}", f"worker-{suffix}", f"dead-{suffix}"

    async def create(self) -> None:
        await asyncio.to_thread(create_subscription, PROJECT, self.topic, self.subscription, ack_deadline_s=self.ack_deadline_s)
        await asyncio.to_thread(create_subscription, PROJECT, self.dead_letter_topic, f"{self.dead_letter_topic}-reader")

    def source_settings(self) -> dict[str, Any]:
        pubsub = without_files(
            PubSubSettings, project_id=PROJECT, subscription=self.subscription, dead_letter_topic=self.dead_letter_topic
        )
        return {"pubsub": pubsub}

    def environment(self) -> dict[str, str]:
        return {
            "CONNECTOR_SOURCE": "pubsub", "PUBSUB_PROJECT_ID": PROJECT, "PUBSUB_SUBSCRIPTION": self.subscription,
            "PUBSUB_DEAD_LETTER_TOPIC": self.dead_letter_topic,
        }  # fmt: skip

    async def publish(self, bodies: list[bytes]) -> None:
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(PROJECT, self.topic)
        try:
            await asyncio.gather(*(asyncio.wrap_future(publisher.publish(topic, body)) for body in bodies))
        finally:
            publisher.stop()

    async def dead_letters(self, count: int, timeout_s: float) -> list[tuple[bytes, dict[str, str]]]:
        return await asyncio.to_thread(self._pull, f"{self.dead_letter_topic}-reader", count, timeout_s, True)

    async def unfinished(self) -> int:
        """Waits out the ack deadline, then counts what Pub/Sub would deliver again."""
        await asyncio.sleep(self.ack_deadline_s + 1)
        return len(await asyncio.to_thread(self._pull, self.subscription, 1000, 3.0, False))

    def _pull(self, subscription: str, count: int, timeout_s: float, ack: bool) -> list[tuple[bytes, dict[str, str]]]:
        subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(PROJECT, subscription)
        received: list[Any] = []
        try:
            end = time.monotonic() + timeout_s
            while len(received) < count and time.monotonic() < end:
                response = subscriber.pull(request={"subscription": path, "max_messages": count - len(received)}, timeout=5)
                received += response.received_messages
                if ack and response.received_messages:
                    subscriber.acknowledge(
                        request={"subscription": path, "ack_ids": [m.ack_id for m in response.received_messages]}
                    )
        finally:
            subscriber.close()
        return [(bytes(m.message.data), {k.replace("dlq_", ""): v for k, v in m.message.attributes.items()}) for m in received]
