"""Kafka source on aiokafka: a consumer group with offsets committed only behind finished work.

Deliveries of one partition finish out of order (they belong to different payments), so each
partition commits only up to its lowest unfinished offset: a crash then re-reads unfinished work,
and finished work that comes again is harmless because processing is idempotent.
"""

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import stamina
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from connector.errors import ConfigurationError

log = structlog.get_logger("connector.sources.kafka")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str
    topic: str
    group_id: str
    dead_letter_topic: str
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    max_batch: int = 500
    poll_timeout_s: float = 0.5
    commit_interval_s: float = 1.0
    start_timeout_s: float = 60.0
    revoke_wait_s: float = 10.0

    def client_options(self) -> dict[str, object]:
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.endswith("SSL"):
            options["ssl_context"] = ssl.create_default_context()
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return options


@dataclass(slots=True)
class PartitionOffsets:
    """Offsets of one partition's deliveries: which are in flight, and what may be committed."""

    in_flight: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest offset handed out
    committed: int | None = None
    read_from: int = 0  # the first offset read since the assignment: where the group's commit stood

    def started(self, offset: int) -> None:
        self.in_flight.add(offset)
        self.next_offset = max(self.next_offset or 0, offset + 1)

    def finished(self, offset: int) -> None:
        self.in_flight.discard(offset)

    def committable(self) -> int | None:
        """The offset to commit now (the next to read), or None when nothing moved."""
        if self.next_offset is None:
            return None
        offset = min(self.in_flight) if self.in_flight else self.next_offset
        return offset if self.committed is None or offset > self.committed else None


@dataclass(frozen=True, slots=True)
class KafkaDelivery:
    record: ConsumerRecord[bytes, bytes]
    offsets: PartitionOffsets
    source: "KafkaSource"

    @property
    def body(self) -> bytes:
        return self.record.value or b""

    @property
    def position(self) -> str:
        return f"{self.record.topic}/{self.record.partition}@{self.record.offset}"

    @property
    def attempt(self) -> int:
        return 1  # Kafka does not count deliveries; the worker counts its own attempts

    async def ack(self) -> None:
        self.offsets.finished(self.record.offset)

    async def retry_later(self, delay_s: float) -> bool:
        return False  # skipping a record would hold back the partition's commits just the same

    async def dead_letter(self, reason: str, attempts: int) -> None:
        await self.source.publish_dead_letter(self.record, reason, attempts)
        self.offsets.finished(self.record.offset)


class KafkaSource:
    def __init__(self, config: KafkaConfig, on_commit_failed: Callable[[], None] = lambda: None) -> None:
        self._config = config
        self._on_commit_failed = on_commit_failed  # counted in the worker's metrics; the commit comes again
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._buffer: deque[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]] = deque()  # fetched, not yet yielded
        self._arrived = asyncio.Event()
        self._fetcher: asyncio.Task[None] | None = None
        self._last_commit = 0.0

    async def start(self) -> None:
        """Connects and checks the topics, retrying within ``start_timeout_s`` (a broker or a topic still
        being set up); a topic still missing then is a ConfigurationError naming its setting."""
        await _connect_within(self._config, self._connect)

    async def _connect(self) -> None:
        options = self._config.client_options()
        consumer = AIOKafkaConsumer(
            group_id=self._config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._config.max_batch,
            **options,
        )
        producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **options)
        try:
            await consumer.start()
            await self._check_topics(consumer)
            consumer.subscribe([self._config.topic], listener=_Rebalance(self))
            await producer.start()
        except BaseException:
            await consumer.stop()
            await producer.stop()
            raise
        self._consumer, self._producer = consumer, producer

    async def _check_topics(self, consumer: AIOKafkaConsumer) -> None:
        """Both topics must exist: the dead letters' too, or the first poison delivery would hold its
        partition back until someone created it. Read from the cluster's metadata, which creates nothing."""
        topics = await consumer.topics()
        for setting, topic in (("KAFKA_TOPIC", self._config.topic), ("KAFKA_DEAD_LETTER_TOPIC", self._config.dead_letter_topic)):
            if topic not in topics:
                raise _MissingTopic(setting, topic)

    async def deliveries(self, stop: asyncio.Event) -> AsyncIterator[KafkaDelivery]:
        """Yields what the fetch task buffered. The worker may stop taking deliveries for minutes (its
        in-flight bound, an outage's pause): the fetch task polls on meanwhile, so the consumer stays
        in its group (aiokafka leaves it after ``max_poll_interval_ms`` without a poll)."""
        consumer = self._require(self._consumer)
        fetcher = self._fetcher = asyncio.create_task(self._fetch(consumer))
        try:
            while not stop.is_set():
                if not self._buffer:
                    self._arrived.clear()
                    await _first_of(self._arrived.wait(), stop.wait(), fetcher, timeout_s=self._config.poll_timeout_s)
                    if fetcher.done():
                        fetcher.result()  # its error, if it had one (a KafkaError it waits out)
                    continue
                partition, record = self._buffer.popleft()
                offsets = self._partitions.get(partition)
                if offsets is None:
                    continue  # revoked since it was fetched: its new owner reads it
                offsets.started(record.offset)
                yield KafkaDelivery(record, offsets, self)
        finally:
            await self._stop_fetching()

    async def _stop_fetching(self) -> None:
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
            self._fetcher = None
        self._buffer.clear()  # read again from the committed offsets, by whoever owns them next

    async def _fetch(self, consumer: AIOKafkaConsumer) -> None:
        """Polls for as long as the source is read, pausing the partitions while the buffer is full."""
        while True:
            full = len(self._buffer) >= self._config.max_batch
            if full:
                consumer.pause(*consumer.assignment())
            elif paused := consumer.paused():
                consumer.resume(*paused)
            try:
                batches = await consumer.getmany(
                    timeout_ms=int(self._config.poll_timeout_s * 1000), max_records=self._config.max_batch
                )
            except KafkaError as exc:  # the broker went away: aiokafka reconnects, we wait and poll again
                log.warning("kafka.fetch_failed", error=exc.__class__.__name__)
                await asyncio.sleep(1.0)
                continue
            for partition, records in batches.items():
                if partition not in self._partitions:
                    self._partitions[partition] = PartitionOffsets(read_from=records[0].offset)
                self._buffer.extend((partition, record) for record in records)
            if batches:
                self._arrived.set()
            await self.commit(force=False)

    async def commit(self, *, force: bool = True) -> None:
        """Commits each partition up to its lowest unfinished offset; a failed commit comes again."""
        loop = asyncio.get_running_loop()
        if self._consumer is None or (not force and loop.time() - self._last_commit < self._config.commit_interval_s):
            return
        self._last_commit = loop.time()
        offsets = {p: o for p, tracker in self._partitions.items() if (o := tracker.committable()) is not None}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("kafka.commit_failed", error=exc.__class__.__name__, partitions=len(offsets))
            self._on_commit_failed()
            return
        for partition, offset in offsets.items():
            self._partitions[partition].committed = offset

    def lag(self) -> Mapping[str, int]:
        """Per partition: the end of the partition, as of the last fetch, minus the committed offset (before
        this worker's first commit on it, the offset it started reading from)."""
        if self._consumer is None:
            return {}
        behind: dict[str, int] = {}
        for partition, tracker in list(self._partitions.items()):
            end = self._consumer.highwater(partition)
            if end is not None:
                committed = tracker.committed if tracker.committed is not None else tracker.read_from
                behind[str(partition.partition)] = max(0, end - committed)
        return behind

    async def publish_dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str, attempts: int) -> None:
        headers = [
            ("dlq.reason", reason.encode()),
            ("dlq.attempts", str(attempts).encode()),
            ("dlq.original.topic", record.topic.encode()),
            ("dlq.original.partition", str(record.partition).encode()),
            ("dlq.original.offset", str(record.offset).encode()),
        ]
        producer = self._require(self._producer)
        async for attempt in stamina.retry_context(on=KafkaError, attempts=5, timeout=30.0):
            with attempt:
                await producer.send_and_wait(self._config.dead_letter_topic, value=record.value, key=record.key, headers=headers)

    async def close(self) -> None:
        await self._stop_fetching()  # a reader that left its loop early may not have closed it
        await self.commit()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Gives in-flight work of the revoked partitions a bounded time to finish, then commits it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.revoke_wait_s
        # Acks are plain method calls; polling them keeps the hot path free of events.
        while loop.time() < deadline and any(self._partitions.get(p, PartitionOffsets()).in_flight for p in revoked):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self.commit()
        for partition in revoked:
            self._partitions.pop(partition, None)  # late acks land on the detached tracker
        self._buffer = deque(item for item in self._buffer if item[0] not in revoked)

    @staticmethod
    def _require(client: T | None) -> T:
        if client is None:
            raise RuntimeError("KafkaSource.start() was not awaited")
        return client


async def _connect_within(config: KafkaConfig, connect: Callable[[], Awaitable[None]]) -> None:
    """Runs ``connect`` until it works, within ``start_timeout_s``; a topic still missing then is a
    ConfigurationError naming its setting."""
    try:
        async for attempt in stamina.retry_context(on=KafkaError, attempts=None, timeout=config.start_timeout_s, wait_max=5.0):
            with attempt:
                await connect()
    except _MissingTopic as missing:
        raise ConfigurationError(
            f"{missing.setting}: topic {missing.topic!r} does not exist on {config.bootstrap_servers}, or these"
            " credentials cannot see it (brokers like Confluent Cloud create no topic on demand: create it first)"
        ) from None


class _MissingTopic(KafkaError):  # type: ignore[misc]
    """Retried like the broker's own errors while the worker starts (the topic may be on its way)."""

    def __init__(self, setting: str, topic: str) -> None:
        super().__init__(f"{setting}: {topic}")
        self.setting, self.topic = setting, topic


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._source.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("kafka.partitions_assigned", partitions=sorted(p.partition for p in assigned))


async def _first_of(*waits: "Awaitable[object]", timeout_s: float) -> None:
    """Waits until the first of ``waits`` is done, or ``timeout_s``; cancels the others (not tasks passed in)."""
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(futures, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, wait in zip(futures, waits, strict=True):
            if future is not wait:
                future.cancel()


@dataclass(frozen=True, slots=True)
class KafkaLetter:
    record: ConsumerRecord[bytes, bytes]
    letters: "KafkaDeadLetters"

    @property
    def body(self) -> bytes:
        return self.record.value or b""

    @property
    def reason(self) -> str:
        return next((value.decode(errors="replace") for key, value in self.record.headers if key == "dlq.reason"), "")

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - float(self.record.timestamp) / 1000)

    @property
    def position(self) -> str:
        return f"{self.record.topic}/{self.record.partition}@{self.record.offset}"

    async def move(self) -> None:
        await self.letters.republish(self)


class KafkaDeadLetters:
    """The dead-letter topic as ``connector replay`` reads it: with a consumer group of its own
    (``<group>.replay``), whose committed offsets say how far earlier replays got. Each partition's
    offset moves past what was replayed, up to the first letter left there: a later replay sees every
    letter left, and again any moved after one (moving one twice is harmless: processing is idempotent)."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._ends: dict[TopicPartition, int] = {}
        self._examined: dict[TopicPartition, list[int]] = {}  # offsets read, in order
        self._moved: set[tuple[TopicPartition, int]] = set()

    async def __aenter__(self) -> "KafkaDeadLetters":
        options = self._config.client_options()
        consumer = AIOKafkaConsumer(
            group_id=f"{self._config.group_id}.replay", enable_auto_commit=False, auto_offset_reset="earliest", **options
        )
        producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **options)
        self._consumer, self._producer = consumer, producer
        try:
            await consumer.start()
            await producer.start()
            topic = self._config.dead_letter_topic
            if topic not in await consumer.topics():
                raise ConfigurationError(f"KAFKA_DEAD_LETTER_TOPIC: topic {topic!r} does not exist")
        except BaseException:
            await self.__aexit__()
            raise
        partitions = [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]
        consumer.assign(partitions)
        self._ends = await consumer.end_offsets(partitions)  # what is there now; later letters wait for the next replay
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def letters(self) -> AsyncIterator[KafkaLetter]:
        consumer = KafkaSource._require(self._consumer)
        for partition, end in sorted(self._ends.items()):
            examined = self._examined.setdefault(partition, [])
            position = await consumer.position(partition)
            while position < end:
                batches = await consumer.getmany(partition, timeout_ms=1000, max_records=500)
                for record in batches.get(partition, []):
                    if record.offset >= end:
                        break
                    position = record.offset + 1
                    examined.append(record.offset)
                    yield KafkaLetter(record, self)

    async def republish(self, letter: KafkaLetter) -> None:
        producer = KafkaSource._require(self._producer)
        record = letter.record
        headers = [("dlq.replayed.from", letter.position.encode())]
        await producer.send_and_wait(self._config.topic, value=record.value, key=record.key, headers=headers)
        self._moved.add((TopicPartition(record.topic, record.partition), record.offset))

    async def done(self, *, moved_any: bool) -> None:
        if not moved_any:
            return  # nothing changed (a dry run, or nothing matched)
        offsets: dict[TopicPartition, int] = {}
        for partition, examined in self._examined.items():
            left = next((offset for offset in examined if (partition, offset) not in self._moved), None)
            if examined:
                offsets[partition] = left if left is not None else examined[-1] + 1
        if offsets:
            await KafkaSource._require(self._consumer).commit(offsets)


class KafkaPublisher:
    """Publishes records to the topic the workers read (the notification receiver's queue). A record
    is durable once ``publish`` returns: acknowledged by every in-sync replica, written once even when
    the producer retries (idempotence)."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connects and checks the topic, retrying within ``start_timeout_s``."""
        await _connect_within(self._config, self._connect)

    async def _connect(self) -> None:
        producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **self._config.client_options())
        try:
            await producer.start()
            if not await producer.partitions_for(self._config.topic):
                raise _MissingTopic("KAFKA_TOPIC", self._config.topic)
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def publish(self, key: str, body: bytes) -> None:
        await KafkaSource._require(self._producer).send_and_wait(self._config.topic, value=body, key=key.encode())

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
