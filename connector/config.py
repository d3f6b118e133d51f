"""Settings, from environment variables, a ``.env`` file and a secrets directory (pydantic-settings).

Each group has its own prefix: ``CTP_`` for commercetools (the names commercetools' own tools use),
``KAFKA_`` for the Kafka source, ``CONNECTOR_`` for the worker. Environment variables win over the
``.env`` file, which wins over files in the secrets directory (one file per setting, named like the
variable, as Docker and Kubernetes mount secrets). Errors name the variable and never its value.
"""

import ipaddress
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from connector.adapters.registry import AdapterRoute
from connector.errors import ConfigurationError

DEFAULT_SECRETS_DIR = "/run/secrets"


class CommercetoolsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CTP_", extra="ignore")

    project_key: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    auth_url: str = "https://auth.europe-west1.gcp.commercetools.com"
    api_url: str = "https://api.europe-west1.gcp.commercetools.com"
    scopes: str = Field(default="", description="space-separated; empty: the API client's own scopes")
    timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=64, ge=1)


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(min_length=1)
    topic: str = Field(min_length=1)
    group_id: str = "commercetools-payment-connector"
    dead_letter_topic: str = Field(default="", description="empty: the topic's name with '.dlq' appended")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    commit_interval_s: float = Field(default=1.0, gt=0)
    start_timeout_s: float = Field(default=60.0, gt=0, description="how long start-up waits for the broker and topics")


class PubSubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUBSUB_", extra="ignore")

    project_id: str = Field(min_length=1)
    subscription: str = Field(min_length=1, description="subscription id in the project")
    dead_letter_topic: str = Field(default="", description="empty: the subscription's dead-letter policy")
    dead_letter_subscription: str = Field(default="", description="where connector replay reads the dead letters")
    max_messages: int = Field(default=64, ge=1, description="outstanding messages (flow control)")
    max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="outstanding bytes (flow control)")
    max_lease_s: int = Field(default=3600, ge=10, description="how long a message's lease is extended at most")


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONNECTOR_", extra="ignore")

    source: Literal["kafka", "pubsub"] = "kafka"
    adapters: list[AdapterRoute] = Field(min_length=1, description="JSON list of adapter routes")
    interaction_type_key: str = "connector-payment-interaction"
    max_in_flight: int = Field(default=64, ge=1)
    max_delivery_bytes: int = Field(default=1024 * 1024, ge=1024, description="larger deliveries are dead-lettered")
    delivery_timeout_s: float = Field(default=60.0, gt=0)
    shutdown_timeout_s: float = Field(default=20.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, description="attempts before a delivery failing alone is dead-lettered")
    reconcile_interval_s: float = Field(default=300.0, ge=0, description="between reconciler sweeps; 0: none in the worker")
    reconcile_lookback_s: float = Field(default=7 * 86_400.0, gt=0, description="how far back the reconciler looks")
    reconcile_pending_age_s: float = Field(default=900.0, gt=0, description="Pending this long: the PSP is asked")
    pause_max_s: float = Field(default=60.0, ge=1, le=3600, description="longest wait between probes of a paused dependency")
    claim_lease_s: float | None = Field(default=None, gt=0, le=86_400, description="empty: derived (claim_lease_s())")
    max_clock_skew_s: float = Field(default=10.0, ge=0, description="how far the pods' clocks may differ at most")
    http_host: str = Field(default="0.0.0.0", description="address of /healthz, /readyz and /metrics")
    http_port: int = Field(default=8080, ge=0, le=65535, description="0: any free port (tests, the demo)")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allow_sandbox: bool = Field(default=False, description="the sandbox PSP simulator may serve a route")
    sandbox_hosts: str = Field(default="", description="comma-separated: more hosts the sandbox may reach commercetools at")


class ReceiverSettings(BaseSettings):
    """The notification receiver (``connector receive``): its public listener and its limits."""

    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore")

    http_host: str = Field(default="0.0.0.0", description="address of the public /notifications/... listener")
    http_port: int = Field(default=8443, ge=0, le=65535, description="0: any free port (tests, the demo)")
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024, description="larger requests get 413")
    request_timeout_s: float = Field(default=10.0, gt=0, le=60, description="to read a request, and for the queue to take it")
    max_in_flight: int = Field(default=256, ge=1, description="requests handled at once; beyond, 503")
    pubsub_topic: str = Field(default="", description="Pub/Sub: the topic to queue notices on; empty: PUBSUB_SUBSCRIPTION's")
    public_url: str = Field(default="", description="connector setup: the address PSPs reach the listener at (https://...)")


class PaymentApiSettings(BaseSettings):
    """The Checkout Payments API on the public listener (``connector receive``); it needs the CTP_ settings."""

    model_config = SettingsConfigDict(env_prefix="PAYMENT_API_", extra="ignore")

    enabled: bool = Field(default=False, description="serve POST /{projectKey}/payment-intents/{paymentId}")
    transaction_type_key: str = Field(
        default="connector-payment-request", min_length=2, description="custom Type of added transactions"
    )
    wait_max_s: float = Field(default=10.0, gt=0, le=30, description="the longest Prefer: wait honoured")
    token_cache_s: float = Field(default=30.0, ge=0, le=300, description="how long a token's introspection is reused")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024, description="larger requests get 413")
    request_timeout_s: float = Field(default=10.0, gt=0, le=60, description="for the token and body; then to start storing")
    max_in_flight: int = Field(default=64, ge=1, description="requests handled at once; beyond, 503")


class SubscriptionSettings(BaseSettings):
    """The commercetools Subscription ``connector setup`` creates; values fall back on the worker's variables."""

    model_config = SettingsConfigDict(env_prefix="SUBSCRIPTION_", extra="ignore")

    key: str = Field(default="commercetools-payment-connector", min_length=2)
    destination: Literal["kafka", "pubsub"] = Field(
        default="kafka", validation_alias=AliasChoices("SUBSCRIPTION_DESTINATION", "CONNECTOR_SOURCE")
    )
    format: Literal["Platform", "CloudEvents"] = "Platform"
    topic: str = Field(default="", validation_alias=AliasChoices("SUBSCRIPTION_TOPIC", "KAFKA_TOPIC"))
    # Confluent Cloud / Kafka: the API key commercetools produces with (not the worker's own).
    bootstrap_server: str = Field(
        default="", validation_alias=AliasChoices("SUBSCRIPTION_BOOTSTRAP_SERVER", "KAFKA_BOOTSTRAP_SERVERS")
    )
    api_key: str = ""
    api_secret: SecretStr = SecretStr("")
    acks: Literal["0", "1", "-1", "all"] = "all"
    # Google Cloud Pub/Sub
    project_id: str = Field(default="", validation_alias=AliasChoices("SUBSCRIPTION_PROJECT_ID", "PUBSUB_PROJECT_ID"))
    interaction_type_key: str = Field(
        default="connector-payment-interaction", validation_alias=AliasChoices("CONNECTOR_INTERACTION_TYPE_KEY")
    )
    transaction_type_key: str = Field(
        default="connector-payment-request", validation_alias=AliasChoices("PAYMENT_API_TRANSACTION_TYPE_KEY")
    )

    @model_validator(mode="after")
    def _destination_complete(self) -> "SubscriptionSettings":
        needed = {
            "kafka": {"SUBSCRIPTION_TOPIC": self.topic, "SUBSCRIPTION_BOOTSTRAP_SERVER": self.bootstrap_server,
                      "SUBSCRIPTION_API_KEY": self.api_key, "SUBSCRIPTION_API_SECRET": self.api_secret.get_secret_value()},
            "pubsub": {"SUBSCRIPTION_TOPIC": self.topic, "SUBSCRIPTION_PROJECT_ID": self.project_id},
        }[self.destination]  # fmt: skip
        if missing := [name for name, value in needed.items() if not value]:
            raise ValueError(f"a {self.destination} destination needs {', '.join(missing)}")
        return self


class Settings:
    """All the settings one worker needs, validated together; only the chosen source's are read."""

    def __init__(
        self,
        commercetools: CommercetoolsSettings,
        worker: WorkerSettings,
        kafka: KafkaSettings | None = None,
        pubsub: PubSubSettings | None = None,
    ) -> None:
        if (kafka is None) == (pubsub is None):
            raise ValueError("settings need exactly one source: Kafka or Pub/Sub")
        if problems := sandbox_problems(commercetools, worker):
            raise ConfigurationError("invalid settings:\n" + "\n".join(f"  {p}" for p in problems))
        self.commercetools = commercetools
        self.worker = worker
        self.kafka = kafka
        self.pubsub = pubsub


def claim_lease_s(worker: WorkerSettings, longest_request_s: float) -> float:
    """How long a claim holds a transaction against other workers (docs/design.md, 'The claim lease').

    At least one delivery attempt (its timeout bounds the claim write, every PSP call and retry),
    plus one more PSP request (a request cut off by that timeout may still run at the PSP), plus the
    largest difference between two pods' clocks (each judges another's claim by its own). A lease
    set shorter could expire under a running call: that is refused at start-up.
    """
    needed = worker.delivery_timeout_s + longest_request_s + worker.max_clock_skew_s
    if worker.claim_lease_s is None:
        return needed
    if worker.claim_lease_s < needed:
        raise ConfigurationError(
            f"invalid settings:\n  CONNECTOR_CLAIM_LEASE_S: {worker.claim_lease_s:g}s is shorter than what one attempt may hold"
            f" a claim: CONNECTOR_DELIVERY_TIMEOUT_S ({worker.delivery_timeout_s:g}s) + the longest PSP request"
            f" ({longest_request_s:g}s) + CONNECTOR_MAX_CLOCK_SKEW_S ({worker.max_clock_skew_s:g}s) = {needed:g}s;"
            " leave it unset to derive it"
        )
    return worker.claim_lease_s


SANDBOX_ADAPTER = "sandbox"


def sandbox_problems(commercetools: CommercetoolsSettings, worker: WorkerSettings) -> list[str]:
    """Why the sandbox may not serve these routes. It answers Success without moving money, so a route
    to it is honoured only with ``CONNECTOR_ALLOW_SANDBOX`` set, and only when both commercetools
    URLs name this machine or a host listed in ``CONNECTOR_SANDBOX_HOSTS`` (an emulator's service
    name): a guard against a mistake, not against a deliberate alias (docs/design.md, 'Decisions')."""
    routed = [i for i, route in enumerate(worker.adapters) if route.adapter == SANDBOX_ADAPTER]
    if not routed:
        return []
    where = ", ".join(f"CONNECTOR_ADAPTERS[{i}]" for i in routed)
    if not worker.allow_sandbox:
        return [
            f"{where}: routes to the sandbox, a PSP simulator that moves no money; set CONNECTOR_ALLOW_SANDBOX=true to use it"
        ]
    listed = {host.strip().casefold() for host in worker.sandbox_hosts.split(",") if host.strip()}
    return [
        f"{where}: the sandbox runs only against a local commercetools, and {name} names another host"
        f" (not loopback, and not in CONNECTOR_SANDBOX_HOSTS)"
        for name, url in (("CTP_API_URL", commercetools.api_url), ("CTP_AUTH_URL", commercetools.auth_url))
        if not is_local_host(urlsplit(url).hostname or "", listed)
    ]


def is_local_host(host: str, listed: Collection[str] = ()) -> bool:
    """A loopback address, ``localhost``, or one of ``listed`` (names in lower case)."""
    host = host.rstrip(".").casefold()
    if host == "localhost" or host in listed:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


G = TypeVar("G", bound=BaseSettings)


def load_settings(env_file: str | Path | None = ".env", secrets_dir: str | Path | None = None) -> Settings:
    """Reads and validates every group; raises ConfigurationError listing each bad variable."""
    loader = _Loader(env_file, secrets_dir)
    commercetools = loader.load(CommercetoolsSettings)
    worker = loader.load(WorkerSettings)
    pubsub = worker is not None and worker.source == "pubsub"
    kafka_settings = None if pubsub else loader.load(KafkaSettings)  # Kafka is the default source
    pubsub_settings = loader.load(PubSubSettings) if pubsub else None
    if commercetools is not None and worker is not None:
        loader.add_problems(sandbox_problems(commercetools, worker))
    loader.raise_problems()
    assert commercetools is not None and worker is not None
    return Settings(commercetools, worker, kafka_settings, pubsub_settings)


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """What ``connector receive`` needs: the routes (with their webhook secrets), the queue, the
    listener, and for the Payments API commercetools credentials. Without the API it holds none: the
    notification receiver never writes a payment."""

    worker: WorkerSettings
    receiver: ReceiverSettings
    kafka: KafkaSettings | None
    pubsub: PubSubSettings | None
    payment_api: PaymentApiSettings = field(default_factory=lambda: without_files(PaymentApiSettings))
    commercetools: CommercetoolsSettings | None = None  # with the Payments API only


def load_receiver_settings(env_file: str | Path | None = ".env", secrets_dir: str | Path | None = None) -> ReceiverConfig:
    loader = _Loader(env_file, secrets_dir)
    worker = loader.load(WorkerSettings)
    receiver = loader.load(ReceiverSettings)
    payment_api = loader.load(PaymentApiSettings)
    commercetools = loader.load(CommercetoolsSettings) if payment_api is not None and payment_api.enabled else None
    pubsub = worker is not None and worker.source == "pubsub"
    kafka_settings = None if pubsub else loader.load(KafkaSettings)
    pubsub_settings = loader.load(PubSubSettings) if pubsub else None
    loader.raise_problems()
    assert worker is not None and receiver is not None and payment_api is not None
    return ReceiverConfig(worker, receiver, kafka_settings, pubsub_settings, payment_api, commercetools)


@dataclass(frozen=True, slots=True)
class SetupSettings:
    """What ``connector setup`` needs: commercetools credentials, the Subscription to create and, when
    ``NOTIFY_PUBLIC_URL`` is set, the routes whose PSP webhook endpoints point at the receiver there."""

    commercetools: CommercetoolsSettings
    subscription: SubscriptionSettings
    public_url: str
    adapters: list[AdapterRoute]


def load_setup_settings(env_file: str | Path | None = ".env", secrets_dir: str | Path | None = None) -> SetupSettings:
    loader = _Loader(env_file, secrets_dir)
    commercetools, subscription = loader.load(CommercetoolsSettings), loader.load(SubscriptionSettings)
    receiver = loader.load(ReceiverSettings)
    public_url = receiver.public_url.rstrip("/") if receiver is not None else ""
    if public_url and urlsplit(public_url).scheme not in ("https", "http"):
        loader.add_problems(["NOTIFY_PUBLIC_URL: must be an http(s) address (PSPs require https)"])
    worker = loader.load(WorkerSettings) if public_url else None
    loader.raise_problems()
    assert commercetools is not None and subscription is not None
    return SetupSettings(commercetools, subscription, public_url, worker.adapters if worker is not None else [])


class _Loader:
    """Loads settings groups from the same sources, collecting every problem before raising."""

    def __init__(self, env_file: str | Path | None, secrets_dir: str | Path | None) -> None:
        secrets = secrets_dir or os.environ.get("CONNECTOR_SECRETS_DIR") or DEFAULT_SECRETS_DIR
        self._sources: dict[str, Any] = {
            "_env_file": env_file,
            "_secrets_dir": secrets if Path(secrets).is_dir() else None,
        }
        self._problems: list[str] = []

    def load(self, group: type[G]) -> G | None:
        prefix = group.model_config.get("env_prefix", "")
        try:
            return group(**self._sources)
        except ValidationError as exc:
            self._problems.extend(_describe(prefix, error) for error in exc.errors())
        except SettingsError as exc:  # a complex value (a JSON list, say) that does not parse
            field = match.group(1) if (match := re.search(r'field "(\w+)"', str(exc))) else "?"
            self._problems.append(f"{prefix}{field.upper()}: not valid JSON")
        return None

    def add_problems(self, problems: Iterable[str]) -> None:
        self._problems.extend(problems)

    def raise_problems(self) -> None:
        if self._problems:
            raise ConfigurationError("invalid settings:\n" + "\n".join(f"  {p}" for p in self._problems))


def without_files(group: type[G], **values: Any) -> G:
    """A settings group from ``values`` (and the environment), ignoring any ``.env`` file or secrets directory."""
    return group(_env_file=None, _secrets_dir=None, **values)


def _describe(prefix: str, error: Any) -> str:
    """``CTP_CLIENT_SECRET: Field required``; the offending value is never shown."""
    if not error["loc"]:  # a rule across fields, whose message names them
        return f"{prefix.rstrip('_')}: {error['msg'].removeprefix('Value error, ')}"
    field, *inner = error["loc"]
    where = f"{prefix}{str(field).upper()}" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in inner)
    return f"{where}: {error['msg']}"
