"""The Docker engine the environment points at (``DOCKER_HOST``, else the default socket), if it answers.

The local stack uses containers only where an engine already answers: it never starts one itself, so
a machine without Docker runs the same stack as processes.
"""

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker

DEFAULT_SOCKET = "/var/run/docker.sock"


def answering_engine(timeout_s: float = 5.0) -> "tuple[docker.DockerClient | None, str]":
    """(a client of the engine, where it is) when one answers a ping; else (None, why not)."""
    where = os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    if not os.environ.get("DOCKER_HOST") and not os.path.exists(DEFAULT_SOCKET):
        return None, f"no Docker engine: {DEFAULT_SOCKET} does not exist and DOCKER_HOST is not set"
    import docker  # the tests' dependency (testcontainers brings it); imported only where an engine may answer

    client = None
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except Exception as error:  # any failure to reach it means: no engine for us
        if client is not None:
            client.close()
        return None, f"the Docker engine at {where} does not answer ({type(error).__name__})"
    return client, where


def image_available(client: "docker.DockerClient", image: str) -> str | None:
    """None when ``image`` is on the engine or could be pulled now; else why it cannot be had."""
    import docker.errors

    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(image)
        return None
    try:
        client.images.pull(image)
    except docker.errors.APIError as error:
        return f"{image} is not on the engine and its pull failed: {_first_line(error.explanation or str(error))}"
    return None


def _first_line(text: str | bytes) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    return text.strip().splitlines()[0][:200] if text.strip() else "no reason given"
