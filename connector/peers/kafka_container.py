"""A single-node Kafka broker (KRaft, combined mode) in a container of the official ``apache/kafka``
image, configured only through the image's documented environment (``KAFKA_*`` properties and
``CLUSTER_ID``), so any image with that interface serves.

The container shares the host's network and binds 127.0.0.1, like the broker from Maven jars: the
advertised address is then the one clients use, with no port mapping to learn after the start.
"""

from types import TracebackType

from connector.peers import free_port
from connector.peers.kafka import READY_LINE, cluster_id

# The version of the Maven broker (peers/kafka/pom.xml) and of deploy/docker-compose.yml.
OFFICIAL_IMAGE = "apache/kafka:3.9.1"
CONTAINER_LABEL = "connector.local-stack"  # every container the local stack starts carries it


def broker_environment(port: int, controller_port: int, partitions: int, cluster: str) -> dict[str, str]:
    """The image's environment for one combined broker and controller on 127.0.0.1."""
    return {
        "CLUSTER_ID": cluster,
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@127.0.0.1:{controller_port}",
        "KAFKA_LISTENERS": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
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
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
    }


class KafkaContainer:
    """``with KafkaContainer(image) as kafka: kafka.bootstrap_servers``; the container is removed on exit."""

    def __init__(self, image: str = OFFICIAL_IMAGE, start_timeout_s: float = 120.0, partitions: int = 4) -> None:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        self.image = image
        self.port = free_port()
        environment = broker_environment(self.port, free_port(), partitions, cluster_id())
        self._container = (
            DockerContainer(image, network_mode="host", labels={CONTAINER_LABEL: "kafka"})
            .with_envs(**environment)
            .waiting_for(LogMessageWaitStrategy(READY_LINE).with_startup_timeout(int(start_timeout_s)))
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "KafkaContainer":
        self._container.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._container.stop()
