"""The worker's image as production runs it: built from the Dockerfile, run with a read-only root file
system as its non-root user, against the session's Kafka broker and the commercetools emulator.

The engine is the one the environment points at, else one the test starts (and installs) for itself;
the base is the official Python image where a registry gives it, else a stand-in built here with
debootstrap (tests/docker_images.py). Without an engine it fails when ``CI`` is set, and is skipped
with the reason elsewhere (a developer's machine without Docker, as a user who is not root).
"""

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator

import docker
import httpx
import pytest

from connector.commercetools.client import CommercetoolsClient
from tests.docker_engine import EngineUnavailable, docker_engine
from tests.docker_images import connector_image, python_base
from tests.queues import KafkaQueue
from tests.stack import free_port, messages
from tests.stack.payments import as_json, payment_draft, wait_until_settled
from tests.support import CLIENT_SECRET, sandbox_route, worker_environment

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(docker_engine())
        except EngineUnavailable as error:
            if os.environ.get("CI"):
                pytest.fail(f"no Docker engine for the image test: {error}")
            pytest.skip(f"no Docker engine for the image test: {error}")
        yield client


@pytest.fixture(scope="module")
def image(engine: docker.DockerClient) -> Iterator[str]:
    with python_base(engine) as base, connector_image(engine, base) as tag:
        yield tag


@pytest.mark.timeout(900)  # the set-up builds a base (debootstrap) and the image on a machine with no registry
async def test_the_image_runs_read_only_as_its_user_processes_a_delivery_and_is_healthy(
    engine: docker.DockerClient, image: str, kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient
) -> None:
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    payment = await ct.create_payment(payment_draft(2000, (), (("Authorization", 2000), ("Charge", 2000))))
    port = free_port()
    routes = [sandbox_route("/tmp/sandbox.sqlite")]
    environment = worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=routes) | {
        "CONNECTOR_HTTP_HOST": "127.0.0.1", "CONNECTOR_HTTP_PORT": str(port),
    }  # fmt: skip
    # The host's network: the broker and the emulator listen on 127.0.0.1 only. /tmp is the one writable
    # place, as the Kubernetes Deployment's emptyDir; the user is the image's own (no --user here).
    container = engine.containers.run(
        image, detach=True, read_only=True, network_mode="host", tmpfs={"/tmp": "size=64m"}, environment=environment
    )
    try:
        settings = engine.api.inspect_container(container.id)
        assert settings["Config"]["User"] == "10001:10001" and settings["HostConfig"]["ReadonlyRootfs"]
        # touch's complaint to /dev/null: exec_run merges both streams, in either order.
        written = container.exec_run(["sh", "-c", "id -u; touch /opt/connector/written 2>/dev/null"])
        assert written.output.decode().split() == ["10001"] and written.exit_code != 0, written.output

        await queue.publish([messages.payment_created(project_key, as_json(payment), "platform")])
        settled = await wait_until_settled(ct, [payment.id], timeout_s=120)
        assert [t.state.value for t in settled[0].transactions] == ["Success", "Success"]

        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        # The image's own HEALTHCHECK (`connector healthcheck`): its first probe runs one interval after the start.
        assert await _health(engine, container.id, timeout_s=120) == "healthy"

        container.stop(timeout=30)
        assert container.wait(timeout=30)["StatusCode"] == 0
        log = container.logs().decode(errors="replace")
        assert "worker.stopped" in [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
        assert CLIENT_SECRET not in log
    finally:
        container.remove(force=True)


async def _health(engine: docker.DockerClient, container_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = "unknown"
    while time.monotonic() < deadline:
        status = engine.api.inspect_container(container_id)["State"].get("Health", {}).get("Status", "none")
        if status in ("healthy", "unhealthy"):
            return str(status)
        await asyncio.sleep(1)
    return status


def test_the_image_holds_no_local_stack_and_offers_only_what_works_in_it(engine: docker.DockerClient, image: str) -> None:
    """No Kafka jar downloader, emulator launcher or demo in the image; ``--help`` lists run, setup,
    healthcheck, replay, reconcile and receive, and the operator's three start there."""
    help_text = engine.containers.run(image, ["--help"], remove=True).decode()
    commands = ("run", "receive", "setup", "healthcheck", "replay", "reconcile")
    assert all(command in help_text for command in commands) and "demo" not in help_text, help_text
    for command in ("replay", "reconcile", "receive"):
        assert "Usage" in engine.containers.run(image, [command, "--help"], remove=True).decode()
    package = "/opt/connector/lib/python3.11/site-packages/connector"
    find = f"find {package} -name pom.xml -o -name '*.mjs' -o -name package.json -o -name 'demo*' -o -name peers -o -name stack"
    found = engine.containers.run(image, ["-c", find], entrypoint="sh", remove=True).decode()
    assert engine.containers.run(image, ["-c", f"ls {package}/cli.py"], entrypoint="sh", remove=True)  # the package is there
    assert found == "", found
