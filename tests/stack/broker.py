"""Which Kafka broker the local stack runs, and the one line that says so.

``KAFKA_BOOTSTRAP_SERVERS``, when set, names a broker that is already running. Otherwise a container of
the official image when a Docker engine answers and the image can be had (the tests may bring a
stand-in built here where no registry is reachable); otherwise the broker from Maven jars, with the
reason. A fallback to the Maven broker is another real broker, not a skip.
"""

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal, Protocol

from tests.stack.docker_engine import answering_engine, has_bridge_network, image_available
from tests.stack.kafka import LocalKafka
from tests.stack.kafka_container import OFFICIAL_IMAGE, KafkaContainer

if TYPE_CHECKING:
    import docker


class StandInImage(Protocol):
    """An image with the official one's interface, built on entry and removed on exit."""

    image: str

    def cannot_build(self) -> str | None:
        """None when this machine can build it; else why not."""
        ...

    def __enter__(self) -> str: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class BrokerChoice:
    kind: Literal["given", "container", "maven"]
    line: str  # "Kafka: ...", said before anything else
    start: Callable[[], AbstractContextManager[str]]  # yields the bootstrap servers; stops the broker on exit
    stand_in: StandInImage | None = None  # the image ``start`` builds first, when it is a stand-in


def choose_broker(stand_in: StandInImage | None = None) -> BrokerChoice:
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        line = f"Kafka: the broker at {servers} (KAFKA_BOOTSTRAP_SERVERS)"
        return BrokerChoice("given", line, lambda: contextlib.nullcontext(servers))
    client, where = answering_engine()
    if client is None:
        return BrokerChoice("maven", f"Kafka: a local broker from Maven jars, not a container: {where}", _maven)
    try:
        missing = image_available(client, OFFICIAL_IMAGE)
        published = has_bridge_network(client)
        without_reaper = not published or _reaper_missing(client)  # the reaper needs a published port
    finally:
        client.close()
    how = "published on 127.0.0.1" if published else "on the host's network"
    if missing is None:
        line = f"Kafka: a container of {OFFICIAL_IMAGE}, {how} (Docker engine at {where})"
        return BrokerChoice("container", line, partial(_container, OFFICIAL_IMAGE, None, published, without_reaper))
    if stand_in is not None and (cannot := stand_in.cannot_build()) is None:
        line = f"Kafka: a container of {stand_in.image}, a stand-in for {OFFICIAL_IMAGE} built here, {how}: {missing}"
        return BrokerChoice("container", line, partial(_container, stand_in.image, stand_in, published, without_reaper), stand_in)
    reason = missing if stand_in is None else f"{missing}; and no stand-in: {cannot}"
    return BrokerChoice("maven", f"Kafka: a local broker from Maven jars, not a container: {reason}", _maven)


@contextlib.contextmanager
def _maven() -> Iterator[str]:
    with LocalKafka() as broker:
        yield broker.bootstrap_servers


@contextlib.contextmanager
def _container(image: str, stand_in: StandInImage | None, published: bool, without_reaper: bool) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        if stand_in is not None:
            stack.enter_context(stand_in)
        yield stack.enter_context(KafkaContainer(image, published=published, without_reaper=without_reaper)).bootstrap_servers


def _reaper_missing(client: "docker.DockerClient") -> bool:
    from testcontainers.core.config import testcontainers_config

    return not testcontainers_config.ryuk_disabled and image_available(client, testcontainers_config.ryuk_image) is not None
