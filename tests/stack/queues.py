"""Local queues for the demo and the tests: fresh topics on a Kafka broker or the Pub/Sub emulator,
publishing, and the settings that point a worker at them."""

import asyncio
import uuid
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from google.cloud import pubsub_v1

from connector.config import KafkaSettings, PubSubSettings, without_files
from tests.stack.kafka import create_topics
from tests.stack.pubsub import create_subscription

PARTITIONS = 4
PUBSUB_PROJECT = "local-project"


class LocalQueue(Protocol):
    name: str

    async def create(self) -> None: ...

    def source_settings(self) -> dict[str, Any]:
        """``kafka=...`` or ``pubsub=...`` for ``connector.config.Settings``."""
        ...

    def environment(self) -> dict[str, str]:
        """The same, as environment variables for ``connector run``."""
        ...

    async def publish(self, bodies: list[bytes]) -> None: ...


class KafkaTopic:
    """A topic with 4 partitions and its dead-letter topic."""

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


class PubSubTopic:
    """A topic and a subscription with an ack deadline of 10 s, and an explicit dead-letter topic."""

    name = "pubsub"
    ack_deadline_s = 10

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.topic, self.subscription, self.dead_letter_topic = f"payments-{suffix}", f"worker-{suffix}", f"dead-{suffix}"

    async def create(self) -> None:
        await asyncio.to_thread(
            create_subscription, PUBSUB_PROJECT, self.topic, self.subscription, ack_deadline_s=self.ack_deadline_s
        )
        await asyncio.to_thread(create_subscription, PUBSUB_PROJECT, self.dead_letter_topic, f"{self.dead_letter_topic}-reader")

    def source_settings(self) -> dict[str, Any]:
        pubsub = without_files(
            PubSubSettings, project_id=PUBSUB_PROJECT, subscription=self.subscription, dead_letter_topic=self.dead_letter_topic
        )
        return {"pubsub": pubsub}

    def environment(self) -> dict[str, str]:
        return {
            "CONNECTOR_SOURCE": "pubsub", "PUBSUB_PROJECT_ID": PUBSUB_PROJECT, "PUBSUB_SUBSCRIPTION": self.subscription,
            "PUBSUB_DEAD_LETTER_TOPIC": self.dead_letter_topic,
        }  # fmt: skip

    async def publish(self, bodies: list[bytes]) -> None:
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(PUBSUB_PROJECT, self.topic)
        try:
            await asyncio.gather(*(asyncio.wrap_future(publisher.publish(topic, body)) for body in bodies))
        finally:
            publisher.stop()
