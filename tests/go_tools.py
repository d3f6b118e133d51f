"""Tools from the Go module proxy, built once into the cache folder: toxiproxy, kustomize, CRD schemas."""

import json
import os
import re
import subprocess
from pathlib import Path

from tests.stack import cache_dir


def go_install(package: str) -> Path:
    """The binary of ``package`` (``path/to/cmd@version``), built on first use."""
    path, version = package.split("@")
    folder = cache_dir() / "go-bin" / version
    *_, parent, last = path.split("/")
    binary = folder / (parent if re.fullmatch(r"v\d+", last) else last)  # .../kustomize/v5 builds "kustomize"
    if not binary.exists():
        subprocess.run(["go", "install", package], env={**os.environ, "GOBIN": str(folder)}, check=True, timeout=900)
    return binary


def go_module_dir(module: str) -> Path:
    """The source tree of ``module@version``, downloaded on first use (read-only)."""
    result = subprocess.run(["go", "mod", "download", "-json", module], capture_output=True, text=True, check=True, timeout=600)
    return Path(json.loads(result.stdout)["Dir"])
