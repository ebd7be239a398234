from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import metrics
from tests.support import GatewayProcess, LiveServer, RecordingUpstream, RedisServer, logging_state, restore_logging, start_gateway


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture
def live_gateway() -> Iterator[Callable[..., LiveServer | GatewayProcess]]:
    """Start the real gateway from a config file on a loopback port: under uvicorn in a thread,
    or `gateway serve --server granian` in a subprocess."""
    servers: list[LiveServer | GatewayProcess] = []

    def start(config_path: Path, server: str = "uvicorn") -> LiveServer | GatewayProcess:
        started = start_gateway(config_path, server)
        servers.append(started)
        return started

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server on loopback for the session (Debian's package; .ci/run installs it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Whatever a test does to logging (a command run in process configures it, a test silences a
    logger) is undone after it: under two workers, tests meet in any order."""
    saved = logging_state()
    yield
    restore_logging(saved)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[metrics.Recorder]:
    """This process's recorder, as a serving process has it; off again after the test."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    yield metrics.enable(directory)
    metrics.disable()
