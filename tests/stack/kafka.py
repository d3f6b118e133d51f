"""A single-node Apache Kafka broker (KRaft, combined mode) on 127.0.0.1, from Maven Central jars."""

import base64
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.stack import cache_dir, free_port, terminate

POM = Path(__file__).parent / "kafka" / "pom.xml"
READY_LINE = "Kafka Server started"
LOG4J = """log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
"""


def ensure_jars() -> Path:
    """Resolves the broker's jars with Maven once; later calls reuse the cache."""
    jars = cache_dir() / "kafka-jars"
    if not (jars / ".complete").exists():
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={jars}"],
            check=True,
        )  # fmt: skip
        (jars / ".complete").touch()
    return jars


class LocalKafka:
    """``with LocalKafka() as kafka: kafka.bootstrap_servers``; stops the broker and deletes its data on exit."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 90.0, partitions: int = 4) -> None:
        self.port = port or free_port()
        self._controller_port = free_port()
        self._start_timeout_s = start_timeout_s
        self._partitions = partitions
        self._workdir = Path(tempfile.mkdtemp(prefix="connector-kafka-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self._workdir / "broker.log"

    def start(self) -> "LocalKafka":
        properties = self._write_config()
        formatted = subprocess.run(
            [*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(properties)],
            capture_output=True,
            text=True,
        )
        if formatted.returncode != 0:
            raise RuntimeError(f"formatting the Kafka broker's storage failed: {formatted.stderr.strip()[-500:]}")
        self._launch()
        return self

    def restart(self) -> None:
        """Stops the broker (SIGTERM) and starts it again on the same port with the same data."""
        terminate(self._process)
        self._launch()

    def _java(self) -> list[str]:
        log_config = f"-Dlog4j.configuration=file:{self._workdir / 'log4j.properties'}"
        # C1 only: on two shared cores, the C2 compiler threads took 0.1 to 0.4 of a core for tens of
        # seconds of traffic (measured in the benchmark's latency phase); with C1 the broker settles
        # in about 3 s, at 0.3 of a core for 250 records/s against 0.5 to 1.0 with C2.
        return ["java", "-Xms256m", "-Xmx768m", "-XX:TieredStopAtLevel=1", log_config, "-cp", f"{ensure_jars()}/*"]

    def _launch(self) -> None:
        with self.log_file.open("wb") as log:  # a fresh log: readiness is read from it
            self._process = subprocess.Popen(
                [*self._java(), "kafka.Kafka", str(self._workdir / "server.properties")], stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()

    def stop(self) -> None:
        terminate(self._process)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "LocalKafka":
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _write_config(self) -> Path:
        (self._workdir / "log4j.properties").write_text(LOG4J)
        properties = self._workdir / "server.properties"
        properties.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self._controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self._controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={self._workdir / 'data'}",
                f"num.partitions={self._partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",  # as Confluent Cloud: a topic must be created first
            ])
            + "\n"
        )  # fmt: skip
        return properties

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Kafka broker exited with {self._process.returncode}; see {self.log_file}")
            if READY_LINE in self.log_file.read_text(errors="replace"):
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"Kafka broker not ready after {self._start_timeout_s}s")


async def create_topics(bootstrap_servers: str, *names: str, partitions: int = 4) -> None:
    """Creates topics that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, partitions, 1) for name in names if name not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


def cluster_id() -> str:
    """A random cluster id that, like Kafka's own, never starts with '-': the format tool would take it for an option."""
    while (candidate := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return candidate
