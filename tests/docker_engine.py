"""A Docker engine for the tests that need one: the engine the environment points at when it answers;
else one the tests start for themselves (installing Debian's docker.io first when it is missing) and
stop, with its data, when they are done.

The engine started here has a socket and data of its own, no bridge network and no iptables rules:
its containers share the host's network and bind 127.0.0.1 only, and the suite's broker choice (which
looks at the default socket) never sees it.
"""

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker

from tests.debian import ensure_command
from tests.stack import terminate
from tests.stack.docker_engine import CALL_TIMEOUT_S, answering_engine


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
    socket_path = workdir / "docker.sock"
    log = workdir / "dockerd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [dockerd, "--host", f"unix://{socket_path}", "--data-root", str(workdir / "data"),
             "--exec-root", str(workdir / "exec"), "--pidfile", str(workdir / "dockerd.pid"),
             "--bridge=none", "--iptables=false", "--ip-masq=false"],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        try:
            client = _wait_answering(socket_path, process, log, start_timeout_s)
        except (RuntimeError, TimeoutError) as error:
            raise EngineUnavailable(f"{where}, and the one started here failed: {error}") from error
        with contextlib.closing(client):
            yield client
    finally:
        terminate(process, timeout_s=30)
        _unmount_below(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_answering(socket_path: Path, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> docker.DockerClient:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dockerd exited with {process.returncode}: {log.read_text(errors='replace')[-1500:]}")
        if _pings(socket_path):
            return docker.DockerClient(base_url=f"unix://{socket_path}", timeout=CALL_TIMEOUT_S)
        time.sleep(0.5)
    raise TimeoutError(f"dockerd did not answer within {timeout_s}s: {log.read_text(errors='replace')[-1500:]}")


def _pings(socket_path: Path) -> bool:
    """The engine's ``/_ping`` over its socket, by hand: docker-py's client leaks the socket of a
    request that fails, which the suite's warnings-as-errors then reports."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        try:
            connection.connect(str(socket_path))
            connection.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = connection.recv(64).split(b"\r\n", 1)[0]
            return status_line.startswith(b"HTTP/") and b" 200 " in status_line + b" "
        except OSError:
            return False


def _unmount_below(folder: Path) -> None:
    """dockerd leaves its network namespace mounted under its exec root when it stops."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False, timeout=30)
