"""The commercetools emulator (npm ``@labdigital/commercetools-mock``) on 127.0.0.1.

It accepts any client credentials, emits no messages, and checks versions only for actions that
change something (docs/design.md, 'Decisions').
"""

import select
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from tests.stack import cache_dir, terminate

PACKAGE = Path(__file__).parent / "ctmock"


def ensure_installed() -> Path:
    """Installs the emulator from npm once, into the cache folder; returns the folder to run it in."""
    target = cache_dir() / "ctmock"
    lock = PACKAGE / "package-lock.json"
    if not (target / "node_modules" / ".package-lock.json").exists() or _stale(target / "package-lock.json", lock):
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json", "server.mjs"):
            shutil.copy(PACKAGE / name, target / name)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target, check=True)
    shutil.copy(PACKAGE / "server.mjs", target / "server.mjs")
    return target


def _stale(installed: Path, wanted: Path) -> bool:
    return not installed.exists() or installed.read_bytes() != wanted.read_bytes()


class LocalCommercetools:
    """``with LocalCommercetools() as ct: ct.url``; the same URL serves the API and ``/oauth/token``."""

    def __init__(self, start_timeout_s: float = 30.0) -> None:
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalCommercetools":
        folder = ensure_installed()
        self._process = subprocess.Popen(
            ["node", "server.mjs", "0"], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], self._start_timeout_s)
        line = self._process.stdout.readline() if ready else ""  # it prints "listening PORT" once bound
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"commercetools emulator did not start: {line.strip()!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        terminate(self._process)
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> "LocalCommercetools":
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
