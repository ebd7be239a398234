from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import load_config
from tests.support import LiveServer, RecordingUpstream


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture
def live_gateway() -> Iterator[Callable[..., LiveServer]]:
    """Start the real gateway, from a config file, under uvicorn on a loopback port."""
    servers: list[LiveServer] = []

    def start(config_path: Path, **options: object) -> LiveServer:
        server = LiveServer(Gateway(load_config(config_path)), **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
