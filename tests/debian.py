"""Installs what a test set-up needs from Debian's packages, so the README's two commands stay the
whole set-up: only as root, and only what is missing."""

import os
import shutil
import subprocess


def ensure_command(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` first when it is missing."""
    if found := shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin"):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{command} is missing: install Debian's {package} package (the tests install it only as root)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]):
        done = subprocess.run(step, env=environment, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed: {done.stderr.strip()[-500:]}")
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if not found:
        raise RuntimeError(f"{package} is installed but {command} is still missing")
    return found
