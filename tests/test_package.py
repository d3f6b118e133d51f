"""What a clean ``pip install .`` ships: the product, without the local stack the demo and the tests use."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import typer
from typer.testing import CliRunner

from connector.cli import app

ROOT = Path(__file__).resolve().parent.parent
# The local stack's parts: the Kafka jar downloader (its Maven pom), the emulators' launchers, the demo.
DEV_TOOLING = ("peers", "demo", "stack", "pom.xml", "server.mjs", "package.json", "ctmock")


def test_the_wheel_holds_the_connector_package_only(tmp_path: Path) -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"  # a copy of the working tree as committed, so that no build output lands in it
    for path in tracked:
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / path)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True,
    )
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packaged == {"connector"}, packaged
    assert "connector/adapters/stripe_adapter.py" in names  # the product is there
    shipped_tooling = [name for name in names if any(part in name for part in DEV_TOOLING)]
    assert not shipped_tooling, shipped_tooling
    with zipfile.ZipFile(wheel) as archive:
        importing = [
            name for name in names
            if name.endswith(".py") and re.search(rb"^\s*(from|import) (tests|testcontainers|docker)\b", archive.read(name), re.M)
        ]  # fmt: skip
    assert not importing, f"the product imports the local stack or test tooling: {importing}"


def test_the_command_line_offers_only_what_works_in_the_image() -> None:
    """The image test runs each of them; ``demo`` needs the repository's local stack and is ``make demo``."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert set(commands) == {"run", "receive", "setup", "healthcheck", "replay", "reconcile"}
    help_text = CliRunner().invoke(app, ["--help"]).output
    assert all(name in help_text for name in commands) and "demo" not in help_text
