"""Images the tests build, and stand-ins for the base images that no registry gives here.

Where an official image can be had (on the engine or pulled) it is used as it is. Otherwise a
stand-in with the same interface is built from Debian's packages (debootstrap) and labelled as one:
``connector-standin/...``, ``connector.stand-in-for=<the official image>``. Every image built here is
removed when its context ends; the root file systems are kept as tarballs in the cache folder (as the
Maven jars are), so a second run skips debootstrap.
"""

import contextlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import docker

from tests.debian import ensure_command
from tests.stack import cache_dir
from tests.stack.docker_engine import answering_engine, image_available
from tests.stack.kafka import ensure_jars
from tests.stack.kafka_container import OFFICIAL_IMAGE as OFFICIAL_KAFKA

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_PYTHON = "python:3.11-slim-bookworm"  # the Dockerfile's default base
STAND_IN = "connector-standin"
SUITE = "bookworm"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The official images' search path; Debian's root file system has no ENV of its own.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@contextlib.contextmanager
def python_base(client: docker.DockerClient) -> Iterator[str]:
    """The Dockerfile's base: the official image when it can be had, else a stand-in built here."""
    if image_available(client, OFFICIAL_PYTHON) is None:
        yield OFFICIAL_PYTHON
        return
    packages = ["python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd"]
    with debian_image(client, "python:3.11-slim-bookworm", packages, OFFICIAL_PYTHON, cmd='["python3"]') as tag:
        yield tag


@contextlib.contextmanager
def connector_image(client: docker.DockerClient, base: str) -> Iterator[str]:
    """The project's Dockerfile built on ``base``; removed on exit."""
    tag = f"connector-test/commercetools-payment-connector:{uuid.uuid4().hex[:8]}"
    with built_image(client, tag, path=str(ROOT), dockerfile="Dockerfile", buildargs={"PYTHON_IMAGE": base}):
        yield tag


@contextlib.contextmanager
def built_image(client: docker.DockerClient, tag: str, **build: Any) -> Iterator[None]:
    """``docker build`` with the host's network (pip and apt reach their registries through it); on exit,
    or when the build fails, the image and every layer the build made (its build stages' too) are removed."""
    layers: list[str] = []
    try:
        log = client.api.build(tag=tag, network_mode="host", rm=True, forcerm=True, pull=False, decode=True, **build)
        cached = False
        for entry in log:
            if "error" in entry:
                raise docker.errors.BuildError(entry["error"], [])
            line = entry.get("stream", "").strip()
            if layer := re.fullmatch(r"---> ([0-9a-f]{12})", line):
                layers += [] if cached else [layer[1]]  # a cached layer was there before the build: it stays
            cached = line == "---> Using cache"
        yield
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag, force=True)
        for layer in reversed(layers):  # a tagged one is a FROM image (a base of another context): it stays
            with contextlib.suppress(docker.errors.APIError):
                if not client.images.get(layer).tags:
                    client.images.remove(layer)


class KafkaStandIn:
    """A stand-in for the official Kafka image (tests/containers/kafka) on the default engine; built on
    the first entry, removed on the last exit (the suite enters it before its first test, outside any
    test's time limit, and the broker's start enters it again). See ``tests.stack.broker``."""

    version = OFFICIAL_KAFKA.split(":")[1]
    image = f"{STAND_IN}/kafka:{version}"

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._entered = 0

    def cannot_build(self) -> str | None:
        if os.geteuid() != 0:
            return "building it takes root (debootstrap)"
        return None

    def __enter__(self) -> str:
        self._entered += 1
        if self._entered > 1:
            return self.image
        client, where = answering_engine()
        if client is None:
            self._entered -= 1
            raise RuntimeError(f"cannot build {self.image}: {where}")
        self._stack.callback(client.close)
        try:
            packages = ["openjdk-17-jre-headless", "passwd"]
            base = self._stack.enter_context(debian_image(client, "debian-java:17-bookworm", packages, "", cmd='["bash"]'))
            with tempfile.TemporaryFile() as context:
                _kafka_context(context)
                context.seek(0)
                build_args = {"BASE_IMAGE": base, "KAFKA_VERSION": self.version}
                built = built_image(client, self.image, fileobj=context, custom_context=True, buildargs=build_args)
                self._stack.enter_context(built)
        except BaseException:
            self._entered -= 1
            self._stack.close()
            raise
        return self.image

    def __exit__(self, *_: object) -> None:
        self._entered -= 1
        if self._entered == 0:
            self._stack.close()


@contextlib.contextmanager
def debian_image(client: docker.DockerClient, name: str, packages: list[str], stands_in_for: str, cmd: str) -> Iterator[str]:
    """A Debian root file system with ``packages`` imported as ``connector-standin/<name>``; removed on exit."""
    tarball = _root_filesystem(name, packages)
    repository, tag = f"{STAND_IN}/{name}".rsplit(":", 1)
    labels = f"LABEL connector.stand-in-for={stands_in_for}" if stands_in_for else "LABEL connector.stand-in=base"
    changes = [f"ENV PATH={PATH}", "ENV LANG=C.UTF-8", labels, f"CMD {cmd}"]
    try:
        client.api.import_image(src=str(tarball), repository=repository, tag=tag, changes=changes)
        yield f"{repository}:{tag}"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(f"{repository}:{tag}", force=True)


def _root_filesystem(name: str, packages: list[str]) -> Path:
    """debootstrap's minimal Debian with ``packages``, as a tarball in the cache folder (made once)."""
    tarball = cache_dir() / "rootfs" / f"{name.replace(':', '-')}-{'-'.join(sorted(packages))}.tar"
    if tarball.exists():
        return tarball
    debootstrap = ensure_command("debootstrap", "debootstrap")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="connector-rootfs-"))
    try:
        done = subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(rootfs)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {(done.stdout + done.stderr).strip()[-800:]}")
        # Outgoing TLS may be re-signed by a local authority that only this machine's bundle trusts:
        # pip inside the image build must trust what the machine trusts.
        shutil.copy(HOST_CA_BUNDLE, rootfs / HOST_CA_BUNDLE.relative_to("/"))
        (rootfs / "etc" / "pip.conf").write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\n")
        for package in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            package.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=300)
        partial.rename(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def _kafka_context(target: IO[bytes]) -> None:
    """The stand-in's build context: its Dockerfile and entry point, and the broker's Maven jars."""
    source = ROOT / "tests" / "containers" / "kafka"
    with tarfile.open(fileobj=target, mode="w") as context:
        context.add(source / "Dockerfile", arcname="Dockerfile")
        context.add(source / "run", arcname="run")
        for jar in sorted(ensure_jars().glob("*.jar")):
            context.add(jar, arcname=f"libs/{jar.name}")
