"""Local stand-ins for the connector's peers, for the demo and the tests: a real Apache Kafka broker
(in a container of the official image when a Docker engine answers and has it, else from Maven
Central jars; see ``broker``) and the commercetools emulator from npm. Each installs what it needs on
first use into the cache folder and binds 127.0.0.1 only. Not used in production."""

import os
import socket
import subprocess
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


def terminate(process: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout_s``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
