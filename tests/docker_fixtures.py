"""Docker test fixtures (used by tests through ``pytest_plugins = ["docker_fixtures"]``).

`docker_engine` (session) makes the private Docker Engine answer and the offline
images exist: it runs scripts/dockerd.sh (reusing a running engine) and
scripts/build-images.sh (skips images that are up to date). It skips the test only
when no engine can be started on this machine at all; a failed image build fails.

`container_runtime` is a ContainerRuntime with a node label unique to the test
(`runtime_node`); after the test every container with that label is removed straight
through the docker client, so even a failing test leaves nothing behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from node.roles.provider import engine
from node.roles.provider.runtime import LABEL_NODE, ContainerRuntime

REPO = Path(__file__).resolve().parent.parent
DOCKERD_SH = REPO / "scripts" / "dockerd.sh"
BUILD_IMAGES_SH = REPO / "scripts" / "build-images.sh"


@dataclass(frozen=True)
class DockerEngine:
    host: str  # DOCKER_HOST value, e.g. unix:///tmp/kaisar-docker/docker.sock
    client: docker.DockerClient


def _start_engine() -> str:
    """DOCKER_HOST of a running engine, or pytest.skip with the script's reason."""
    try:
        return engine.start_engine()
    except engine.EngineUnavailable as e:
        pytest.skip(f"docker: {e}")


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    host = os.environ.get("DOCKER_HOST") or _start_engine()
    client = docker.DockerClient(base_url=host, timeout=30)
    try:
        client.ping()
    except docker.errors.DockerException:
        # A stale DOCKER_HOST from the environment: start ours instead.
        client.close()
        host = _start_engine()
        client = docker.DockerClient(base_url=host, timeout=30)
    try:
        engine.build_images(host)
    except engine.EngineUnavailable as e:
        pytest.fail(str(e))
    yield DockerEngine(host=host, client=client)
    client.close()


@pytest.fixture
def docker_client(docker_engine: DockerEngine) -> docker.DockerClient:
    return docker_engine.client


def remove_labelled(client: docker.DockerClient, node: str) -> list[str]:
    """Force-remove every container labelled kaisar.node=<node>; return their names."""
    found = client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_NODE}={node}"})
    for c in found:
        try:
            c.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
    return [c.id[:12] for c in found]


@pytest.fixture
def runtime_node() -> str:
    """A node address unique to this test, so parallel tests never share containers."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def container_runtime(docker_engine: DockerEngine, runtime_node: str) -> Iterator[ContainerRuntime]:
    rt = ContainerRuntime(runtime_node, docker_host=docker_engine.host, stop_timeout=2)
    try:
        yield rt
    finally:
        rt.close()
        remove_labelled(docker_engine.client, runtime_node)
