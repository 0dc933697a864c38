"""Shared fixtures. Area fixtures live in their own modules and are imported here."""

import os

import pytest

from node.devnet import start_network

os.environ.setdefault("KAISAR_PASSWORD", "test-password-123")

pytest_plugins = ["docker_fixtures"]


@pytest.fixture
async def net3():
    async with start_network(3) as hosts:
        yield hosts
