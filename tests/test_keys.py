"""The remote JWKS fetch against a real loopback server that misbehaves: a total time bound and a
size bound, and the last good keys kept when either is hit."""

import asyncio
import json
import logging
import socket
import time
import tracemalloc
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from gateway.keys import KeyStore
from tests.processes import serving_with_admin
from tests.support import (
    AUDIENCE,
    ISSUER,
    KEYS,
    Behaviour,
    Received,
    RecordingUpstream,
    answer,
    mint,
    write_config,
)

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


# --- keys no allowed algorithm can use: refused at load (test_config), not ready at run time -------

RSA_ONLY = json.dumps({"keys": [key for key in json.loads(JWKS)["keys"] if key["kty"] == "RSA"]}).encode()


@pytest.mark.parametrize(("algorithms", "document"), [
    (["ES256"], RSA_ONLY),  # an RSA JWKS where only EC is allowed
    (["RS384"], RSA_ONLY),  # its JWK says alg RS256: that key verifies nothing else
    (["EdDSA"], JWKS),
])
async def test_a_fetched_jwks_that_no_allowed_algorithm_can_use_gives_no_key(algorithms: list[str], document: bytes,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    server = RecordingUpstream(answer(200, document))
    keys = KeyStore((), f"{server.url}/jwks", algorithms=algorithms, refetch_interval=0, fetch_timeout=FETCH_TIMEOUT)
    try:
        await keys.start()
    finally:
        server.close()
    assert keys.keys.keys == () and keys.generation == 0
    assert keys.last_error is not None and "is usable, so every token would be refused" in keys.last_error, keys.last_error


async def test_a_fetched_jwks_keeps_its_usable_keys_and_warns_of_the_others(jwks_server: RecordingUpstream,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    keys = KeyStore((), f"{jwks_server.url}/jwks", algorithms=["ES256"], refetch_interval=0, fetch_timeout=FETCH_TIMEOUT)
    await keys.start()
    assert keys.last_error is None and [key.kid for key in keys.keys.keys] == ["ec-1"]
    assert any("kid 'rsa-1'" in record.getMessage() and "verifies no algorithm" in record.getMessage() for record in caplog.records)


async def test_a_jwks_rotated_to_unusable_keys_keeps_the_last_good_ones(jwks_server: RecordingUpstream,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    keys = KeyStore((), f"{jwks_server.url}/jwks", algorithms=["RS256"], refetch_interval=0, fetch_timeout=FETCH_TIMEOUT)
    await keys.start()
    jwks_server.behaviour = answer(200, json.dumps({"keys": [json.loads(JWKS)["keys"][1]]}).encode())  # the EC key alone
    await keys.refresh()
    assert keys.last_error is not None and "is usable" in keys.last_error and keys.keys.knows("rsa-1")


@pytest.mark.parametrize("document", [(KEYS / "rsa.pub.pem").read_bytes(), b"\n  -----BEGIN PUBLIC KEY-----\n"])
async def test_a_fetched_pem_says_it_is_one(document: bytes) -> None:
    server = RecordingUpstream(answer(200, document))
    keys = KeyStore((), f"{server.url}/jwks", refetch_interval=0, fetch_timeout=FETCH_TIMEOUT)
    try:
        await keys.start()
    finally:
        server.close()
    assert keys.last_error is not None and "PEM file, not a JWKS" in keys.last_error


def test_readyz_is_not_ready_while_no_fetched_key_is_usable(tmp_path: Path) -> None:
    server = RecordingUpstream(answer(200, RSA_ONLY))
    tokens = f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  algorithms: [ES256]\n  jwks_url: {server.url}/jwks\n"
    try:
        with serving_with_admin(write_config(tmp_path, upstream=server.url, tokens=tokens)) as served:  # it answers /api/status too
            ready = served.ready()
            assert ready.status_code == 503 and ready.json()["status"] == "not ready", ready.text
            assert any("no key to verify tokens with" in reason and "is usable" in reason for reason in ready.json()["reasons"])
            assert all(process["keys"] == 0 for process in served.processes())
            # and every token is refused, as the readiness said
            denied = httpx.get(f"{served.base}/api/me", headers={"authorization": f"Bearer {mint(key='ec', algorithm='ES256', kid='ec-1')}"})
            assert denied.status_code == 401
    finally:
        server.close()
