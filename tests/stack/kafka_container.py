"""A single-node Kafka broker (KRaft, combined mode) in a container of the official ``apache/kafka``
image, configured only through the image's documented environment (``KAFKA_*`` properties and
``CLUSTER_ID``), so any image with that interface serves.

Clients reach it at 127.0.0.1 on a port chosen before the start, which is also the address it
advertises. On an engine with a bridge network the port is published on the host's loopback under
the same number; on one without (as on our machines, where containers share the host's network) the
broker binds 127.0.0.1 itself.
"""

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any, cast

from tests.stack import free_port
from tests.stack.kafka import READY_LINE, cluster_id

# The version of the Maven broker (tests/stack/kafka/pom.xml) and of deploy/docker-compose.yml.
OFFICIAL_IMAGE = "apache/kafka:3.9.1"
CONTAINER_LABEL = "connector.local-stack"  # on every container the local stack starts: `docker ps --filter label=...`
# As the Maven broker's JVM: a small heap, and C1 only (C2's compile threads cost a busy two-core
# machine a tenth to half a core while traffic flows).
JVM_OPTIONS = {"KAFKA_HEAP_OPTS": "-Xms256m -Xmx768m", "KAFKA_JVM_PERFORMANCE_OPTS": "-XX:TieredStopAtLevel=1"}


def broker_environment(port: int, controller_port: int, partitions: int, cluster: str, *, listen_host: str) -> dict[str, str]:
    """The image's environment for one combined broker and controller, advertised at 127.0.0.1:``port``."""
    return {
        "CLUSTER_ID": cluster,
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@127.0.0.1:{controller_port}",
        "KAFKA_LISTENERS": f"PLAINTEXT://{listen_host}:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_NUM_PARTITIONS": str(partitions),
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "4",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",  # as Confluent Cloud: a topic must be created first
        **JVM_OPTIONS,
    }


class KafkaContainer:
    """``with KafkaContainer(image, published=...) as kafka: kafka.bootstrap_servers``; removed on exit.

    ``without_reaper``: testcontainers' reaper container (which removes the containers of a process
    that died) cannot be had; this context alone then removes the container.
    """

    def __init__(
        self, image: str, *, published: bool, without_reaper: bool, start_timeout_s: float = 120.0, partitions: int = 4
    ) -> None:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        self.image = image
        self.port = free_port()
        self._without_reaper = without_reaper
        environment = broker_environment(
            self.port, free_port(), partitions, cluster_id(), listen_host="0.0.0.0" if published else "127.0.0.1"
        )
        ready = LogMessageWaitStrategy(READY_LINE).with_startup_timeout(int(start_timeout_s))
        network: dict[str, Any] = {} if published else {"network_mode": "host"}
        self._container = (
            DockerContainer(image, labels={CONTAINER_LABEL: "kafka"}, **network).with_envs(**environment).waiting_for(ready)
        )
        if published:
            self._container.ports[f"{self.port}/tcp"] = cast(Any, ("127.0.0.1", self.port))  # the host's loopback only

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "KafkaContainer":
        with self._reaper_setting():
            try:
                self._container.start()
            except BaseException:
                self._container.stop()  # a container that never got ready is removed too
                raise
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._container.stop()

    @contextlib.contextmanager
    def _reaper_setting(self) -> Iterator[None]:
        from testcontainers.core.config import testcontainers_config

        before = testcontainers_config.ryuk_disabled
        testcontainers_config.ryuk_disabled = before or self._without_reaper
        try:
            yield
        finally:
            testcontainers_config.ryuk_disabled = before
