"""Real peers for the suite, started once per session on 127.0.0.1 and stopped at its end.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` when set; else a container of the official ``apache/kafka`` image
when a Docker engine answers (a stand-in with its interface, built here, when no registry gives the
image); else a real broker from Maven Central jars. The first line of the report says which.
commercetools: the npm emulator. A peer that cannot start fails the tests that need it; nothing is
skipped.
"""

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connector.commercetools.client import CommercetoolsClient
from connector.commercetools.interaction_type import interaction_type_draft
from connector.retrying import Backoff
from tests.docker_images import KafkaStandIn
from tests.localstripe_peer import LocalStripe
from tests.queues import EventQueue, KafkaQueue, PubSubQueue
from tests.stack.broker import BrokerChoice, choose_broker
from tests.stack.ctmock import LocalCommercetools
from tests.stack.docker_engine import answering_engine
from tests.stack.pubsub import LocalPubSub, installed_emulator
from tests.support import INTERACTION_TYPE_KEY

REPORT_FILE = Path(__file__).parent.parent / ".cache" / "reliability.json"
BROKER = pytest.StashKey[BrokerChoice]()
CLEANUP = pytest.StashKey[contextlib.ExitStack]()
STAND_IN_FAILED = pytest.StashKey[str]()


def broker_choice(config: pytest.Config) -> BrokerChoice:
    """The session's Kafka broker, chosen once (the header says it, unless -q hides the header)."""
    if BROKER not in config.stash:
        config.stash[BROKER] = choose_broker(KafkaStandIn())
    return config.stash[BROKER]


def pytest_report_header(config: pytest.Config) -> str:
    return broker_choice(config).line


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A stand-in Kafka image is built before the first test, outside any test's time limit."""
    if config.option.collectonly or not any(map(_uses_kafka, items)):
        return
    choice = broker_choice(config)
    if choice.stand_in is not None:
        config.stash[CLEANUP] = contextlib.ExitStack()
        try:
            config.stash[CLEANUP].enter_context(choice.stand_in)
        except Exception as error:  # the tests that need Kafka fail with it; the others run
            config.stash[STAND_IN_FAILED] = f"the Kafka stand-in image could not be built: {error}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if (cleanup := config.stash.get(CLEANUP, None)) is not None:
        cleanup.close()


def _uses_kafka(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return "kafka_bootstrap" in getattr(item, "fixturenames", ()) or (
        callspec is not None and callspec.params.get("queue") == "kafka"
    )


def _docker_answers() -> bool:
    client, _ = answering_engine()
    if client is not None:
        client.close()
    return client is not None


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    if failed := pytestconfig.stash.get(STAND_IN_FAILED, None):
        raise RuntimeError(failed)
    choice = broker_choice(pytestconfig)
    # CI says which broker each of its passes must get, so a silent fallback cannot pass for the other path.
    expected = os.environ.get("TEST_KAFKA_EXPECTED")
    assert expected in (None, choice.kind), f"TEST_KAFKA_EXPECTED={expected}, but {choice.line}"
    with choice.start() as servers:
        yield servers


@pytest.fixture(scope="session")
def ct_url() -> Iterator[str]:
    with LocalCommercetools() as emulator:
        yield emulator.url


@pytest.fixture
def project_key() -> str:
    """A project of its own for each test: the emulator keeps projects apart."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def ct(ct_url: str, project_key: str) -> AsyncIterator[CommercetoolsClient]:
    client = CommercetoolsClient.create(
        api_url=ct_url,
        auth_url=ct_url,
        project_key=project_key,
        client_id="test-client",
        client_secret=SecretStr("test-client-secret-s3cr3t"),
        scopes=f"manage_project:{project_key}",
        retry=Backoff(attempts=3, wait_initial_s=0.01, wait_max_s=0.05),
    )
    await client.ensure_type(interaction_type_draft(INTERACTION_TYPE_KEY))
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def localstripe_server() -> Iterator[LocalStripe]:
    with LocalStripe() as server:
        yield server


@pytest.fixture
async def localstripe(localstripe_server: LocalStripe) -> LocalStripe:
    """localstripe with an empty store: it gets slower as its store grows."""
    await localstripe_server.clear()
    return localstripe_server


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """The emulator's host: ``PUBSUB_EMULATOR_HOST`` when set; else the machine's emulator; else
    testcontainers' emulator container when a Docker engine answers."""
    if host := os.environ.get("PUBSUB_EMULATOR_HOST"):
        yield host
    elif not installed_emulator() and _docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        image = "gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators"
        command = "gcloud beta emulators pubsub start --host-port=0.0.0.0:8085"
        ready = LogMessageWaitStrategy("Server started").with_startup_timeout(120)
        with DockerContainer(image).with_command(command).with_exposed_ports(8085).waiting_for(ready) as container:
            host = os.environ["PUBSUB_EMULATOR_HOST"] = f"{container.get_container_host_ip()}:{container.get_exposed_port(8085)}"
            yield host
            del os.environ["PUBSUB_EMULATOR_HOST"]
    else:
        with LocalPubSub() as emulator:
            yield emulator.host


@pytest.fixture(params=["kafka", "pubsub"])
async def queue(request: pytest.FixtureRequest) -> EventQueue:
    """Each source in turn, with topics of its own; only the peer it needs is started."""
    chosen: EventQueue = (
        KafkaQueue(request.getfixturevalue("kafka_bootstrap"))
        if request.param == "kafka"
        else (request.getfixturevalue("pubsub_emulator") and PubSubQueue())
    )
    await chosen.create()
    return chosen


@pytest.fixture(scope="session")
def reliability_report(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Figures the fault tests add up; printed as one JSON line at the end of the session."""
    report: dict[str, Any] = {}
    yield report
    if report:
        line = json.dumps({"reliability": report}, sort_keys=True)
        REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
        REPORT_FILE.write_text(line + "\n")
        request.config.pluginmanager.get_plugin("terminalreporter").write_line(line)
