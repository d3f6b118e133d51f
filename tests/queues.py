"""The queues of the tests: the demo's local queues, plus what tests read back from them.

Each instance owns fresh topics (and, for Pub/Sub, subscriptions), so tests never see each other's
deliveries.
"""

import asyncio
import time
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from google.cloud import pubsub_v1

from tests.stack.queues import PARTITIONS, PUBSUB_PROJECT, KafkaTopic, LocalQueue, PubSubTopic


class EventQueue(LocalQueue, Protocol):
    async def dead_letters(self, count: int, timeout_s: float) -> list[tuple[bytes, dict[str, str]]]:
        """The first ``count`` dead-lettered deliveries: body and headers (or attributes), ``dlq`` prefix dropped."""
        ...

    async def unfinished(self) -> int:
        """Deliveries neither committed nor acknowledged."""
        ...


class KafkaQueue(KafkaTopic):
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


class PubSubQueue(PubSubTopic):
    async def dead_letters(self, count: int, timeout_s: float) -> list[tuple[bytes, dict[str, str]]]:
        return await asyncio.to_thread(self._pull, f"{self.dead_letter_topic}-reader", count, timeout_s, True)

    async def unfinished(self) -> int:
        """Waits out the ack deadline, then counts what Pub/Sub would deliver again."""
        await asyncio.sleep(self.ack_deadline_s + 1)
        return len(await asyncio.to_thread(self._pull, self.subscription, 1000, 3.0, False))

    def _pull(self, subscription: str, count: int, timeout_s: float, ack: bool) -> list[tuple[bytes, dict[str, str]]]:
        subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(PUBSUB_PROJECT, subscription)
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
