"""A Docker engine for the tests that need one: the engine the environment points at when it answers;
else one the tests start for themselves (installing Debian's docker.io first when it is missing) and
stop, with its data, when they are done.

The engine started here has a socket and data of its own, no bridge network and no iptables rules:
its containers share the host's network and bind 127.0.0.1 only, and the suite's broker choice (which
looks at the default socket) never sees it.
"""

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker

from connector.peers import terminate
from connector.peers.docker_engine import answering_engine
from tests.debian import ensure_command


class EngineUnavailable(RuntimeError):
    """No engine answers and none could be installed or started here."""


@contextlib.contextmanager
def docker_engine(start_timeout_s: float = 60.0) -> Iterator[docker.DockerClient]:
    client, where = answering_engine()
    if client is not None:
        with contextlib.closing(client):
            yield client
        return
    try:
        dockerd = ensure_command("dockerd", "docker.io")
    except RuntimeError as error:
        raise EngineUnavailable(f"{where}, and none can be started: {error}") from error
    workdir = Path(tempfile.mkdtemp(prefix="connector-dockerd-"))
    socket = f"unix://{workdir}/docker.sock"
    log = workdir / "dockerd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [dockerd, "--host", socket, "--data-root", str(workdir / "data"), "--exec-root", str(workdir / "exec"),
             "--pidfile", str(workdir / "dockerd.pid"), "--bridge=none", "--iptables=false", "--ip-masq=false"],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        try:
            client = _wait_answering(socket, process, log, start_timeout_s)
        except (RuntimeError, TimeoutError) as error:
            raise EngineUnavailable(f"{where}, and the one started here failed: {error}") from error
        with contextlib.closing(client):
            yield client
    finally:
        terminate(process, timeout_s=30)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_answering(socket: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> docker.DockerClient:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dockerd exited with {process.returncode}: {log.read_text(errors='replace')[-1500:]}")
        with contextlib.suppress(docker.errors.DockerException):
            return docker.DockerClient(base_url=socket, timeout=30)  # asks the engine its API version: it answers
        time.sleep(0.5)
    raise TimeoutError(f"dockerd did not answer within {timeout_s}s: {log.read_text(errors='replace')[-1500:]}")
