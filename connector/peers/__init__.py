"""Local stand-ins for the connector's peers, for the demo and the tests: a real Apache Kafka broker
from Maven Central jars and the commercetools emulator from npm. Each installs what it needs on first
use into the cache folder and binds 127.0.0.1 only. Not used in production."""

import os
import socket
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where downloaded peers live: ``CONNECTOR_PEERS_CACHE``, else ``.cache`` in the working tree."""
    path = Path(os.environ.get("CONNECTOR_PEERS_CACHE") or REPO_ROOT / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
