"""Settings from the environment, a .env file and a secrets directory."""

import json
from pathlib import Path

import pytest

from connector.adapters.registry import AdapterRegistry, AdapterRoute
from connector.config import WorkerSettings, claim_lease_s, is_local_host, load_settings, without_files
from connector.errors import ConfigurationError

SANDBOX = AdapterRoute(interface="sandbox", adapter="sandbox")
ROUTES = json.dumps([{"interface": "STRIPE", "adapter": "stripe", "settings": {"secret_key": "sk_test_config"}}])


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("CTP_", "KAFKA_", "PUBSUB_", "CONNECTOR_", "SUBSCRIPTION_")):
            monkeypatch.delenv(name)


def test_sources_combine_with_the_environment_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment wins over .env, which wins over the secrets directory."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"CTP_PROJECT_KEY=from-dotenv\nCTP_CLIENT_ID=dotenv-id\nKAFKA_TOPIC=payments\nCONNECTOR_ADAPTERS='{ROUTES}'\n"
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "CTP_CLIENT_SECRET").write_text("mounted-secret")
    (secrets / "CTP_CLIENT_ID").write_text("secret-dir-id")
    monkeypatch.setenv("CTP_PROJECT_KEY", "from-env")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    settings = load_settings(env_file=env_file, secrets_dir=secrets)
    assert settings.commercetools.project_key == "from-env"
    assert settings.commercetools.client_id == "dotenv-id"
    assert settings.commercetools.client_secret.get_secret_value() == "mounted-secret"
    assert settings.kafka.topic == "payments" and settings.worker.adapters[0].adapter == "stripe"
    assert "mounted-secret" not in repr(settings.commercetools)


def test_every_problem_is_named_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All missing or invalid settings are listed by variable name, without their values."""
    monkeypatch.setenv("CTP_CLIENT_SECRET", "do-not-print-me")
    monkeypatch.setenv("CONNECTOR_MAX_IN_FLIGHT", "0")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(env_file=None, secrets_dir=tmp_path)
    message = str(caught.value)
    for name in (
        "CTP_PROJECT_KEY",
        "CTP_CLIENT_ID",
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_TOPIC",
        "CONNECTOR_ADAPTERS",
        "CONNECTOR_MAX_IN_FLIGHT",
    ):
        assert name in message
    assert "CTP_CLIENT_SECRET" not in message and "do-not-print-me" not in message


def test_the_kubernetes_secret_layout_is_read_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/kubernetes mounts the Secret as one file per key: JSON routes and SASL credentials included."""
    routes = [{"interface": "STRIPE", "adapter": "stripe", "settings": {"secret_key": "sk_test_from_file"}}]
    files = {
        "CTP_CLIENT_ID": "id", "CTP_CLIENT_SECRET": "secret", "CONNECTOR_ADAPTERS": json.dumps(routes),
        "KAFKA_SASL_USERNAME": "confluent-key", "KAFKA_SASL_PASSWORD": "confluent-secret",
    }  # fmt: skip
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    for name, value in {"CTP_PROJECT_KEY": "p", "KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_TOPIC": "t"}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(env_file=None, secrets_dir=tmp_path)
    assert settings.worker.adapters[0].settings == routes[0]["settings"]
    assert settings.kafka is not None and settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_username == "confluent-key"
    assert settings.kafka.sasl_password.get_secret_value() == "confluent-secret"


def _sandbox_environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    routes = [
        {"interface": "STRIPE", "adapter": "stripe", "settings": {"secret_key": "sk_test_x"}},
        {"interface": "sbx", "adapter": "sandbox"},
    ]
    base = {
        "CTP_PROJECT_KEY": "p", "CTP_CLIENT_ID": "c", "CTP_CLIENT_SECRET": "s", "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
        "KAFKA_TOPIC": "t", "CONNECTOR_ADAPTERS": json.dumps(routes),
    }  # fmt: skip
    for name, value in (base | variables).items():
        monkeypatch.setenv(name, value)


def test_a_route_to_the_sandbox_needs_the_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox answers Success and moves no money: a route to it by mistake would let orders through unpaid."""
    _sandbox_environment(monkeypatch, CTP_API_URL="http://127.0.0.1:8989", CTP_AUTH_URL="http://localhost:8989")
    with pytest.raises(ConfigurationError, match=r"CONNECTOR_ADAPTERS\[1\]: .*set CONNECTOR_ALLOW_SANDBOX=true"):
        load_settings(env_file=None, secrets_dir=tmp_path)
    monkeypatch.setenv("CONNECTOR_ALLOW_SANDBOX", "true")
    assert load_settings(env_file=None, secrets_dir=tmp_path).worker.allow_sandbox


def test_the_sandbox_refuses_a_commercetools_that_is_not_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with the opt-in, the sandbox is refused against commercetools' own hosts (the default URLs),
    or any host that is neither loopback nor listed; each URL is named, with the other problems."""
    _sandbox_environment(monkeypatch, CONNECTOR_ALLOW_SANDBOX="true", KAFKA_COMMIT_INTERVAL_S="0")
    with pytest.raises(ConfigurationError) as refused:
        load_settings(env_file=None, secrets_dir=tmp_path)
    message = str(refused.value)
    assert "CTP_API_URL names another host" in message and "CTP_AUTH_URL names another host" in message
    assert "KAFKA_COMMIT_INTERVAL_S" in message  # every problem at once
    for name, value in {"CTP_API_URL": "http://commercetools:8989", "CTP_AUTH_URL": "http://commercetools:8989"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KAFKA_COMMIT_INTERVAL_S")
    with pytest.raises(ConfigurationError, match="CTP_API_URL names another host"):
        load_settings(env_file=None, secrets_dir=tmp_path)  # a service name counts only when listed
    monkeypatch.setenv("CONNECTOR_SANDBOX_HOSTS", "Commercetools, other-emulator")
    assert load_settings(env_file=None, secrets_dir=tmp_path).worker.allow_sandbox


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("localhost", True), ("LOCALHOST.", True),
        ("emulator", True), ("commercetools", False), ("api.europe-west1.gcp.commercetools.com", False),
        ("10.0.0.5", False), ("192.168.1.4", False), ("localhost.example.com", False), ("", False),
    ],
)  # fmt: skip
def test_local_hosts_are_loopback_or_listed(host: str, local: bool) -> None:
    assert is_local_host(host, listed={"emulator"}) is local


def test_the_claim_lease_outlasts_what_one_attempt_may_hold_it() -> None:
    """Unset, the lease is the attempt's bound, plus one more PSP request (a request cut off by that bound
    may still run at the PSP), plus the clocks' largest difference. Set shorter, start-up refuses it."""
    worker = without_files(WorkerSettings, adapters=[SANDBOX])
    assert claim_lease_s(worker, longest_request_s=30.0) == 60.0 + 30.0 + 10.0
    longer = without_files(WorkerSettings, adapters=[SANDBOX], claim_lease_s=300.0)
    assert claim_lease_s(longer, longest_request_s=30.0) == 300.0
    old_default = without_files(WorkerSettings, adapters=[SANDBOX], claim_lease_s=30.0)
    with pytest.raises(ConfigurationError, match=r"CONNECTOR_CLAIM_LEASE_S: 30s is shorter .* = 100s"):
        claim_lease_s(old_default, longest_request_s=30.0)


def test_the_longest_request_is_what_the_routed_adapters_declare() -> None:
    """Stripe declares its client timeout, the sandbox its latency and a second."""
    routes = [
        AdapterRoute(interface="sandbox", adapter="sandbox", settings={"latency_ms": 2000}),
        AdapterRoute(interface="STRIPE", adapter="stripe", settings={"secret_key": "sk_test_x", "timeout_s": 45}),
    ]
    assert AdapterRegistry.load(routes[:1]).longest_request_s() == 3.0
    assert AdapterRegistry.load(routes).longest_request_s() == 45.0
