"""The Docker engine the environment points at (``DOCKER_HOST``, else the default socket), if it answers.

The local stack uses containers only where an engine already answers: it never starts one itself, so
a machine without Docker runs the same stack as processes.
"""

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker

DEFAULT_SOCKET = "/var/run/docker.sock"
PING_TIMEOUT_S = 5  # an engine that does not answer a ping in this time counts as absent
CALL_TIMEOUT_S = 120  # each later call (a read of a pull's or a build's progress, a removal)


def answering_engine() -> "tuple[docker.DockerClient | None, str]":
    """(a client of the engine, where it is) when one answers a ping; else (None, why not)."""
    where = os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    if not os.environ.get("DOCKER_HOST") and not os.path.exists(DEFAULT_SOCKET):
        return None, f"no Docker engine: {DEFAULT_SOCKET} does not exist and DOCKER_HOST is not set"
    if where.startswith("unix://") and not os.path.exists(where.removeprefix("unix://")):
        # Not even tried: the docker client leaves the socket of a failed connect unclosed, and its
        # ResourceWarning would fail whichever test the garbage collector happens to run in.
        return None, f"no Docker engine: {where} does not exist"
    try:
        import docker  # the tests' dependency (testcontainers brings it)
    except ImportError:
        return None, "the docker package is not installed (make install brings it)"
    try:
        client = docker.from_env(timeout=PING_TIMEOUT_S)
    except docker.errors.DockerException as error:
        return None, f"the Docker engine at {where} does not answer ({type(error).__name__})"
    try:
        client.ping()
    except Exception as error:  # any failure to reach it (refused, timed out, an HTTP error) means: no engine
        client.close()
        return None, f"the Docker engine at {where} does not answer ({type(error).__name__})"
    client.api.timeout = CALL_TIMEOUT_S
    return client, where


def image_available(client: "docker.DockerClient", image: str) -> str | None:
    """None when ``image`` is on the engine or could be pulled now; else why it cannot be had."""
    import docker.errors
    import requests

    try:
        client.images.get(image)
        return None
    except docker.errors.ImageNotFound:
        pass
    except (docker.errors.DockerException, requests.RequestException) as error:
        return f"the engine could not say whether it has {image} ({type(error).__name__})"
    try:
        client.images.pull(image)
    except docker.errors.APIError as error:
        return f"{image} is not on the engine and its pull failed: {_first_line(error.explanation or str(error))}"
    except (docker.errors.DockerException, requests.RequestException) as error:
        return f"{image} is not on the engine and its pull failed ({type(error).__name__})"
    return None


def has_bridge_network(client: "docker.DockerClient") -> bool:
    """Whether the engine can publish container ports (it has its default bridge network)."""
    return any(network.name == "bridge" for network in client.networks.list(names=["bridge"]))


def _first_line(text: str | bytes) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    return text.strip().splitlines()[0][:200] if text.strip() else "no reason given"
