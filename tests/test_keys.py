"""The remote JWKS fetch against a real loopback server that misbehaves: a total time bound and a
size bound, and the last good keys kept when either is hit."""

import asyncio
import json
import logging
import socket
import time
import tracemalloc
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import pytest

from gateway.keys import KeyStore
from tests.support import KEYS, Behaviour, Received, RecordingUpstream, answer

pytestmark = pytest.mark.anyio
JWKS = (KEYS / "jwks.json").read_bytes()
FETCH_TIMEOUT = 1.0
MARGIN = 1.0  # for a loaded machine: the bound is asserted, not the speed
MiB = 1 << 20
T = TypeVar("T")


def drip(head: bytes) -> Behaviour:
    """Send `head`, then one byte every 50 ms, far within any per-read timeout, until the client leaves."""
    def respond(request: Received, connection: socket.socket) -> None:
        try:
            connection.sendall(head)
            while True:
                time.sleep(0.05)
                connection.sendall(b" ")
        except OSError:
            return
    return respond


def flood(total: int) -> Behaviour:
    """A 200 answer of `total` bytes without Content-Length (ended by closing), sent as fast as read."""
    chunk = b" " * (64 * 1024)

    def respond(request: Received, connection: socket.socket) -> None:
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n")
            for _ in range(total // len(chunk)):
                connection.sendall(chunk)
        except OSError:
            return
    return respond


@pytest.fixture
def jwks_server() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(answer(200, JWKS))
    yield server
    server.close()


async def started(server: RecordingUpstream) -> KeyStore:
    """A key store that fetched the good JWKS once; every later fetch meets `server`'s new behaviour."""
    keys = KeyStore((), f"{server.url}/jwks", refetch_interval=0, fetch_timeout=FETCH_TIMEOUT)
    await keys.start()
    assert keys.last_error is None and keys.generation == 1 and keys.keys.knows("rsa-1")
    return keys


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """The awaitable's result, or a test failure once `seconds` have passed."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        pytest.fail(f"still waiting after {seconds} s")


def assert_last_good_keys_kept(keys: KeyStore, caplog: pytest.LogCaptureFixture, words: str) -> None:
    assert keys.last_error is not None and words in keys.last_error, keys.last_error
    assert keys.generation == 1 and keys.keys.knows("rsa-1")
    assert any("keeping 2 known keys" in record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)


SLOW = {
    "head": drip(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-drip: "),
    "body": drip(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n"),
    "body without length": drip(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"),
}


@pytest.mark.parametrize("behaviour", list(SLOW.values()), ids=list(SLOW))
async def test_a_drip_fed_jwks_fails_within_the_total_timeout_and_holds_no_request_longer(
    jwks_server: RecordingUpstream, caplog: pytest.LogCaptureFixture, behaviour: Behaviour
) -> None:
    keys = await started(jwks_server)
    jwks_server.behaviour = behaviour
    fetch = asyncio.create_task(keys.refresh())
    while len(jwks_server.received) < 2:  # the slow fetch holds the refresh lock
        await asyncio.sleep(0.01)
    # a token with an unknown kid waits for the fetch in flight, but no longer than its bound
    assert await within(FETCH_TIMEOUT + MARGIN, keys.candidates("rotated", "RS256")) == ()
    await within(MARGIN, fetch)
    assert len(jwks_server.received) == 2, "the waiting request rode on the fetch under way, it did not start another"
    assert_last_good_keys_kept(keys, caplog, f"no complete answer within {FETCH_TIMEOUT:g} s")
    assert len(await keys.candidates("rsa-1", "RS256")) == 1


async def test_a_huge_answer_is_given_up_at_the_size_bound_not_read_whole(jwks_server: RecordingUpstream, caplog: pytest.LogCaptureFixture) -> None:
    keys = await started(jwks_server)
    jwks_server.behaviour = flood(64 * MiB)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await within(FETCH_TIMEOUT + MARGIN, keys.refresh())
        growth = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert_last_good_keys_kept(keys, caplog, "larger than 1 MiB")
    assert growth < 4 * MiB, f"a 64 MiB answer grew the process by {growth / MiB:.1f} MiB"


async def test_a_declared_huge_content_length_is_refused_before_the_body(jwks_server: RecordingUpstream, caplog: pytest.LogCaptureFixture) -> None:
    keys = await started(jwks_server)
    jwks_server.behaviour = drip(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 68719476736\r\n\r\n{")
    await within(FETCH_TIMEOUT + MARGIN, keys.refresh())
    assert_last_good_keys_kept(keys, caplog, "Content-Length 68719476736")


async def test_a_compressed_answer_is_refused_as_its_size_is_unknown_until_decoded(jwks_server: RecordingUpstream, caplog: pytest.LogCaptureFixture) -> None:
    import gzip

    keys = await started(jwks_server)
    assert jwks_server.received[0].header(b"accept-encoding") == [b"identity"]
    jwks_server.behaviour = answer(200, gzip.compress(JWKS), [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")])
    await within(FETCH_TIMEOUT + MARGIN, keys.refresh())
    assert_last_good_keys_kept(keys, caplog, "'gzip'-encoded")


async def test_a_jwks_just_under_the_bound_is_read(jwks_server: RecordingUpstream) -> None:
    keys = await started(jwks_server)
    document = json.loads(JWKS)
    document["padding"] = " " * (MiB - len(JWKS) - 64)
    jwks_server.behaviour = answer(200, json.dumps(document).encode())
    await within(FETCH_TIMEOUT + MARGIN, keys.refresh())
    assert keys.last_error is None and keys.keys.knows("rsa-1")
