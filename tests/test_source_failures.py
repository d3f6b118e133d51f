"""What the worker needs from its source, checked at start-up, and source operations that fail at run time.

Real peers only: the broker refuses to create topics on demand (as Confluent Cloud does), so a
dead-letter topic that is missing is missing for the producer too.
"""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord, TopicPartition

from connector.commercetools.client import CommercetoolsClient
from connector.sources.kafka import KafkaConfig, KafkaSource
from tests.queues import EventQueue, KafkaQueue, PubSubQueue
from tests.stack import messages
from tests.stack.kafka import create_topics
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.support import CLIENT_SECRET, running_worker, sandbox_route, settings_for, worker_environment


@pytest.mark.reliability
async def test_an_unwritable_dead_letter_topic_holds_back_only_the_poison_delivery(
    kafka_bootstrap: str,
    ct_url: str,
    project_key: str,
    ct: CommercetoolsClient,
    tmp_path: Path,
    reliability_report: dict[str, Any],
) -> None:
    """The dead-letter topic disappears while the worker runs, and a malformed delivery comes: the worker
    stays up, the payments behind it are processed, and the malformed one stays uncommitted (it would come
    again after a restart) until the topic is back; then it goes there."""
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    payments = [await ct.create_payment(payment_draft(1000 + i, (), (("Charge", 1000 + i),))) for i in range(8)]
    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "l.sqlite")
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings) as worker:
            await _delete_topic(kafka_bootstrap, f"{queue.topic}.dlq")
            bodies = [messages.payment_created(project_key, as_json(p), "platform") for p in payments]
            await queue.publish([b"not json at all", *bodies])
            settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=60)
            async with asyncio.timeout(120):  # a publish waits out the producer's metadata timeout first
                while not any(line["event"] == "source.operation_failed" for line in logs):
                    await asyncio.sleep(0.2)
            assert await queue.unfinished() >= 1  # its partition's commit stops before it
            assert not worker.done()
            await create_topics(kafka_bootstrap, f"{queue.topic}.dlq")
            [(body, headers)] = await queue.dead_letters(1, timeout_s=180)
            async with asyncio.timeout(30):
                while await queue.unfinished():
                    await asyncio.sleep(0.5)
    assert {p.transactions[0].state.value for p in settled} == {"Success"}
    assert body == b"not json at all" and "not valid JSON" in headers["reason"]
    failed = [line for line in logs if line["event"] == "source.operation_failed"]
    assert {line["operation"] for line in failed} == {"dead_letter"}
    reliability_report["source_failures_survived"] = reliability_report.get("source_failures_survived", 0) + len(failed)


async def _delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        async with asyncio.timeout(30):
            while topic in await admin.list_topics():
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


@pytest.mark.parametrize("source", ["kafka", "pubsub"])
async def test_start_up_with_a_missing_dead_letter_topic_exits_2_naming_the_setting(
    source: str, request: pytest.FixtureRequest, ct_url: str, project_key: str, tmp_path: Path
) -> None:
    queue: EventQueue = (
        KafkaQueue(request.getfixturevalue("kafka_bootstrap"))
        if source == "kafka"
        else (request.getfixturevalue("pubsub_emulator") and PubSubQueue())
    )
    await queue.create()
    env = os.environ | worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=[sandbox_route(tmp_path / "l")])
    setting = "KAFKA_DEAD_LETTER_TOPIC" if source == "kafka" else "PUBSUB_DEAD_LETTER_TOPIC"
    env |= {setting: "no-such-topic", "KAFKA_START_TIMEOUT_S": "3"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "connector", "run"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert setting in done.stderr and "no-such-topic" in done.stderr
    assert CLIENT_SECRET not in done.stderr + done.stdout


async def test_a_delivery_of_another_project_is_dead_lettered_naming_both(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path
) -> None:
    """A worker pointed at the wrong project, or a topic two projects share: nothing is consumed silently."""
    payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
    ours = await ct.create_payment(payment_draft(2000, (), (("Charge", 2000),)))
    foreign = messages.payment_created("staging-project", as_json(payment), "platform")
    await queue.publish([foreign, messages.payment_created(project_key, as_json(ours), "cloudevents")])
    settings = settings_for(queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "l.sqlite")
    async with running_worker(settings):
        [(body, headers)] = await queue.dead_letters(1, timeout_s=60)
        [settled] = await wait_until_settled(ct, [ours.id], timeout_s=60)
    assert json.loads(body)["projectKey"] == "staging-project"
    assert "'staging-project'" in headers["reason"] and f"'{project_key}'" in headers["reason"]
    assert (await ct.get_payment(payment.id)).transactions[0].state.value == "Initial"
    assert settled.transactions[0].state.value == "Success"


class _RefusingConsumer:
    """A fake for the fault alone: a broker that refuses commits on cue is not something a real one
    does. It hands out five records of partition 0 from offset 4,990 (where the group's commit stood
    when the partition was assigned), in a partition whose end is 5,000."""

    def __init__(self) -> None:
        self.commits = 0
        self._records = [ConsumerRecord("t", 0, offset, 0, 0, None, b"{}", None, 0, 2, []) for offset in range(4_990, 4_995)]

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        records, self._records = self._records, []
        if not records:
            await asyncio.sleep(timeout_ms / 1000)
        return {TopicPartition("t", 0): records} if records else {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1
        raise KafkaConnectionError()

    def highwater(self, partition: TopicPartition) -> int:
        return 5_000

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", 0)}

    def paused(self) -> set[TopicPartition]:
        return set()

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...


async def test_the_lag_counts_from_where_reading_began_and_a_failed_commit_is_counted() -> None:
    failed: list[int] = []
    config = KafkaConfig("127.0.0.1:9", "t", "g", "t.dlq", poll_timeout_s=0.01)
    source = KafkaSource(config, on_commit_failed=lambda: failed.append(1))
    consumer = _RefusingConsumer()
    source._consumer = consumer  # type: ignore[assignment]
    fetching = asyncio.create_task(source._fetch(consumer))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(5):
            while len(source._buffer) < 5:
                await asyncio.sleep(0.01)
        assert source.lag() == {"0": 10}  # ten behind, not the partition's whole 5,000
        offsets = source._partitions[TopicPartition("t", 0)]
        for offset in range(4_990, 4_995):
            offsets.started(offset)
            offsets.finished(offset)
        await source.commit()
        assert consumer.commits >= 1 and len(failed) == consumer.commits  # counted, and tried again
        assert offsets.committed is None and source.lag() == {"0": 10}
    finally:
        fetching.cancel()
        await asyncio.gather(fetching, return_exceptions=True)
