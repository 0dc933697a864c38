"""Find or start the project's private Docker Engine and its offline images.

`kaisar devnet` and the tests call ``ensure_engine``: it reuses ``$DOCKER_HOST`` when an
engine answers there, otherwise runs ``scripts/dockerd.sh start`` (which installs
Debian's docker.io when missing and starts a private dockerd), then
``scripts/build-images.sh`` (skips images that are up to date). See docs/CONTAINERS.md.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from node.errors import UserError

REPO = Path(__file__).resolve().parents[3]
DOCKERD_SH = REPO / "scripts" / "dockerd.sh"
BUILD_IMAGES_SH = REPO / "scripts" / "build-images.sh"


class EngineUnavailable(UserError):
    """No Docker Engine answers and none could be started here."""


def _answers(host: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=10)
    except docker.errors.DockerException:
        return False
    try:
        client.ping()
        return True
    except docker.errors.DockerException:
        return False
    finally:
        client.close()


def start_engine() -> str:
    """DOCKER_HOST of the private engine, started if needed; EngineUnavailable otherwise."""
    try:
        out = subprocess.run(
            [str(DOCKERD_SH), "start"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailable(f"cannot run {DOCKERD_SH}: {exc}") from None
    if out.returncode != 0:
        reason = " | ".join(out.stderr.strip().splitlines()[-4:])
        raise EngineUnavailable(f"no Docker Engine can be started here: {reason}")
    for line in out.stdout.splitlines():
        if line.startswith("export DOCKER_HOST="):
            return line.split("=", 1)[1].strip()
    raise EngineUnavailable(f"{DOCKERD_SH.name} printed no DOCKER_HOST: {out.stdout!r}")


def build_images(host: str) -> None:
    built = subprocess.run(
        [str(BUILD_IMAGES_SH)],
        env={**os.environ, "DOCKER_HOST": host},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if built.returncode != 0:
        raise EngineUnavailable(f"{BUILD_IMAGES_SH.name} failed: {built.stderr.strip()[-500:]}")


def ensure_engine(*, images: bool = True) -> str:
    """A DOCKER_HOST that answers (exported into os.environ), with the images built."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host or not _answers(host):
        host = start_engine()
    os.environ["DOCKER_HOST"] = host
    if images:
        build_images(host)
    return host
