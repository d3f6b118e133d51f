"""The documentation covers what the code reads, and the project stands on its own."""

import re
import subprocess
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from connector import config
from connector.adapters.sandbox import SandboxSettings
from connector.adapters.stripe_adapter import StripeSettings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_GROUPS = [
    config.CommercetoolsSettings,
    config.KafkaSettings,
    config.PubSubSettings,
    config.WorkerSettings,
    config.SubscriptionSettings,
    config.ReceiverSettings,
    config.PaymentApiSettings,
]


def environment_names(group: type[BaseSettings]) -> set[str]:
    prefix = group.model_config.get("env_prefix", "")
    names = set()
    for name, field in group.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
        names |= {str(choice) for choice in choices} or {f"{prefix}{name}".upper()}
    return names


def test_every_setting_the_code_reads_is_in_the_configuration_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", page))
    read = set().union(*map(environment_names, SETTINGS_GROUPS)) | {"CONNECTOR_SECRETS_DIR"}
    assert not read - documented, f"settings missing from docs/configuration.md: {sorted(read - documented)}"


def test_every_adapter_setting_is_in_the_configuration_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for model in (SandboxSettings, StripeSettings):
        missing = [name for name in model.model_fields if f"`{name}`" not in page]
        assert not missing, f"{model.__name__} settings missing from docs/configuration.md: {missing}"


def test_no_file_cites_a_document_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\.\./shared|DESIGN\.md|STYLE\.md")
    citing = [
        path for path in tracked if path != "tests/test_docs.py" and outside.search((ROOT / path).read_text(errors="ignore"))
    ]
    assert not citing, f"these files cite documents outside the repository: {citing}"


def test_the_readme_stays_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_repository_path_the_docs_name_exists() -> None:
    """A path in backticks (`connector/...`, `tests/...`, `deploy/...`, `docs/...`) names a file or folder that is there."""
    pages = [ROOT / "README.md", ROOT / "tests" / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {
        (page.relative_to(ROOT), path)
        for page in pages
        for path in re.findall(r"`((?:connector|tests|deploy|docs)/[\w./-]*)`", page.read_text())
    }
    missing = sorted(f"{page}: {path}" for page, path in named if not (ROOT / path.rstrip("/")).exists())
    assert not missing, f"the docs name paths that do not exist: {missing}"
