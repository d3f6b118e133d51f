"""Settings from the environment, a .env file and a secrets directory."""

import json
from pathlib import Path

import pytest

from connector.config import load_settings
from connector.errors import ConfigurationError

ROUTES = json.dumps([{"interface": "sandbox", "adapter": "sandbox"}])


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
    assert settings.kafka.topic == "payments" and settings.worker.adapters[0].adapter == "sandbox"
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
