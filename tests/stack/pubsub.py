"""The official Google Cloud Pub/Sub emulator on 127.0.0.1, and the topics and subscriptions of a run.

The emulator comes with the Google Cloud SDK (Debian package ``google-cloud-cli-pubsub-emulator``).
Clients find it through ``PUBSUB_EMULATOR_HOST``, which ``LocalPubSub`` sets while it runs.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from google.cloud import pubsub_v1

from tests.stack import free_port, terminate

LAUNCHERS = (
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    "/usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
)
READY_LINE = "Server started"


def installed_emulator() -> str | None:
    return next((path for path in LAUNCHERS if os.path.exists(path)), None) or shutil.which("cloud-pubsub-emulator")


def launcher() -> str:
    found = installed_emulator()
    if found is None:
        raise RuntimeError("the Pub/Sub emulator is not installed (Debian package google-cloud-cli-pubsub-emulator)")
    return found


class LocalPubSub:
    """``with LocalPubSub() as emulator: ...``; sets PUBSUB_EMULATOR_HOST while the emulator runs."""

    def __init__(self, start_timeout_s: float = 60.0) -> None:
        self.port = free_port()
        self._start_timeout_s = start_timeout_s
        self._workdir = Path(tempfile.mkdtemp(prefix="connector-pubsub-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._previous_host: str | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "LocalPubSub":
        log_file = self._workdir / "emulator.log"
        with log_file.open("wb") as log:
            self._process = subprocess.Popen(
                [launcher(), "--host=127.0.0.1", f"--port={self.port}", f"--data-dir={self._workdir}"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self._start_timeout_s
        while READY_LINE not in log_file.read_text(errors="replace"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                terminate(self._process)
                raise RuntimeError(f"Pub/Sub emulator did not start; see {log_file}")
            time.sleep(0.2)
        self._previous_host = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = self.host
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._previous_host is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = self._previous_host
        terminate(self._process)
        shutil.rmtree(self._workdir, ignore_errors=True)


def create_subscription(
    project_id: str,
    topic: str,
    subscription: str,
    *,
    dead_letter_topic: str | None = None,
    max_delivery_attempts: int = 5,
    ack_deadline_s: int = 10,
) -> None:
    """Creates a topic and a subscription to it; with ``dead_letter_topic``, a dead-letter policy too."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        topics = [topic] + ([dead_letter_topic] if dead_letter_topic else [])
        for name in topics:
            publisher.create_topic(request={"name": publisher.topic_path(project_id, name)}, timeout=30)
        request: dict[str, object] = {
            "name": subscriber.subscription_path(project_id, subscription),
            "topic": publisher.topic_path(project_id, topic),
            "ack_deadline_seconds": ack_deadline_s,
        }
        if dead_letter_topic:
            request["dead_letter_policy"] = {
                "dead_letter_topic": publisher.topic_path(project_id, dead_letter_topic),
                "max_delivery_attempts": max_delivery_attempts,
            }
        subscriber.create_subscription(request=request, timeout=30)
    finally:
        subscriber.close()
        publisher.stop()
