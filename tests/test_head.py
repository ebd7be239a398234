"""The request head under both servers: version, Host, transfer codings, limits and header names
(RFC 9112), fed as exact bytes to the real gateway in front of a recording loopback upstream."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.head import check
from gateway.loading import load_config
from gateway.server import BoundedHttpToolsProtocol
from gateway.settings import LimitSettings
from tests.support import GatewayProcess, LiveServer, RecordingUpstream, mint, start_gateway, write_config

SERVERS = ["uvicorn", "granian"]
TOKEN = f"authorization: Bearer {mint('psp.webhook:read', lifetime=3600)}\r\n".encode()
LIMITS = "limits:\n  max_uri: 200\n  max_headers: 12\n"


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def _gateway(upstream: RecordingUpstream, folder: Path, server: str, extra: str) -> LiveServer | GatewayProcess:
    config = write_config(folder, upstream=f"{upstream.url}/v3", proxy=extra)
    return start_gateway(config, server)


@pytest.fixture(scope="module", params=SERVERS)
def gateway(request: pytest.FixtureRequest, upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer | GatewayProcess]:
    started = _gateway(upstream, tmp_path_factory.mktemp(request.param), request.param, LIMITS)
    yield started
    started.close()


def exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send `data` and read one answer; the answer, and whether the gateway then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(data)
        answer = b""
        while not _complete(answer):
            chunk = connection.recv(65536)
            if not chunk:
                return answer, True
            answer += chunk
        connection.settimeout(0.5)
        try:
            return answer, connection.recv(65536) == b""
        except TimeoutError:
            return answer, False


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.partition(b":")[2])
    return False  # no length: the body ends when the connection does


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


# (name, request bytes, status, `error`, whether granian's own parser answers first, with no body
# of ours): every request here asks for `connection: keep-alive`, and must be answered and closed
REFUSED = [
    ("two Host headers", b"GET /api/status HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\n", 400, "invalid_request", False),
    ("Host with a space", b"GET /api/status HTTP/1.1\r\nhost: a b.test\r\n", 400, "invalid_request", False),
    ("Host with userinfo", b"GET /api/status HTTP/1.1\r\nhost: user@a.test\r\n", 400, "invalid_request", False),
    ("Host with a path", b"GET /api/status HTTP/1.1\r\nhost: a.test/x\r\n", 400, "invalid_request", False),
    ("Host port too large", b"GET /api/status HTTP/1.1\r\nhost: a.test:99999\r\n", 400, "invalid_request", False),
    ("Host port not a number", b"GET /api/status HTTP/1.1\r\nhost: a.test:http\r\n", 400, "invalid_request", False),
    ("HTTP/1.1 without Host", b"GET /api/status HTTP/1.1\r\n", 400, "invalid_request", False),
    ("HTTP/1.1 with an empty Host", b"GET /api/status HTTP/1.1\r\nhost: \r\n", 400, "invalid_request", False),
    ("HTTP/2.0 request line", b"GET /api/status HTTP/2.0\r\nhost: a.test\r\n", 505, "invalid_request", True),
    ("HTTP/1.2 request line", b"GET /api/status HTTP/1.2\r\nhost: a.test\r\n", 505, "invalid_request", True),
    ("HTTP/0.9 request line", b"GET /api/status HTTP/0.9\r\nhost: a.test\r\n", 505, "invalid_request", True),
    ("gzip, chunked", b"POST /api/echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: gzip, chunked\r\n", 501, "not_implemented", False),
    ("two Transfer-Encoding headers", b"POST /api/echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n", 501, "not_implemented", False),
    ("chunked, chunked", b"POST /api/echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked, chunked\r\n", 501, "not_implemented", False),
    ("chunked twice", b"POST /api/echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n", 501, "not_implemented", False),
    ("identity, chunked", b"POST /api/echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: identity, chunked\r\n", 501, "not_implemented", False),
    ("Transfer-Encoding in HTTP/1.0", b"POST /api/echo HTTP/1.0\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n", 400, "invalid_request", True),
    ("target over max_uri", b"GET /api/status?q=" + b"a" * 190 + b" HTTP/1.1\r\nhost: a.test\r\n", 414, "uri_too_long", False),
    ("more fields than max_headers", b"GET /api/status HTTP/1.1\r\nhost: a.test\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(12)), 431, "invalid_request", False),
]
CHUNKED_BODY = b"3\r\nabc\r\n0\r\n\r\n"


@pytest.mark.parametrize(("head", "status", "error", "server_answers"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_bad_request_heads_are_refused_and_never_forwarded(
    gateway: LiveServer | GatewayProcess, upstream: RecordingUpstream, head: bytes, status: int, error: str, server_answers: bool
) -> None:
    upstream.received.clear()
    body = CHUNKED_BODY if b"transfer-encoding" in head else b""
    answer, closed = exchange(gateway.port, head + b"connection: keep-alive\r\n\r\n" + body)
    assert upstream.received == []
    if server_answers and isinstance(gateway, GatewayProcess):
        # hyper answers these itself, before the app sees them: 400, no body, connection closed
        assert status_of(answer) in (status, 400) and closed
        return
    assert status_of(answer) == status, answer
    assert f'"error": "{error}"'.encode() in body_of(answer)
    assert closed or status in (400, 414)  # a framing or head problem closes the connection


def test_a_malformed_chunked_body_answers_400_under_both_servers(gateway: LiveServer | GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.received.clear()
    request = b"POST /api/echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    answer, closed = exchange(gateway.port, request)
    assert status_of(answer) == 400, answer
    assert b'"error": "invalid_request"' in body_of(answer)
    assert closed and upstream.received == []


@pytest.mark.parametrize(("head", "forwarded_host"), [
    (b"GET /api/status HTTP/1.1\r\nhost: a.test\r\n", b"a.test"),
    (b"GET /api/status HTTP/1.1\r\nHost: A.Test:8443\r\n", b"A.Test:8443"),
    (b"GET /api/status HTTP/1.1\r\nhost: [2001:db8::1]:80\r\n", b"[2001:db8::1]:80"),
    (b"GET /api/status HTTP/1.1\r\nhost: 192.0.2.1\r\n", b"192.0.2.1"),
    (b"GET /api/status HTTP/1.0\r\n", None),
    (b"POST /api/echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: Chunked\r\n", b"a.test"),
    (b"GET /api/status?q=" + b"a" * 170 + b" HTTP/1.1\r\nhost: a.test\r\n", b"a.test"),  # 189 bytes: under max_uri
    (b"GET /api/status HTTP/1.1\r\nhost: a.test\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(10)), b"a.test"),  # 12 fields with connection
], ids=["host", "host and port", "IPv6 literal", "IPv4", "HTTP/1.0 without Host", "chunked in any case", "target at the limit", "fields at the limit"])
def test_sound_heads_pass(gateway: LiveServer | GatewayProcess, upstream: RecordingUpstream, head: bytes, forwarded_host: bytes | None) -> None:
    upstream.received.clear()
    body = CHUNKED_BODY if b"hunked" in head else b""
    answer, _ = exchange(gateway.port, head + b"connection: close\r\n\r\n" + body)
    assert status_of(answer) == 200, answer
    [sent] = upstream.received
    assert sent.header(b"x-forwarded-host") == ([forwarded_host] if forwarded_host else [])
    if body:
        assert sent.body == b"abc"


def test_a_whole_head_over_64_kib_in_one_read_is_refused(gateway: LiveServer | GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.received.clear()
    request = b"GET /api/status HTTP/1.1\r\nhost: a.test\r\nx-big: " + b"a" * 70_000 + b"\r\nconnection: close\r\n\r\n"
    answer, closed = exchange(gateway.port, request)
    assert status_of(answer) == 431 and closed
    assert upstream.received == []


def test_a_head_under_64_kib_after_a_body_on_the_same_connection_passes(gateway: LiveServer | GatewayProcess, upstream: RecordingUpstream) -> None:
    # a 200 KB body and the next request's 40 KiB head arrive together: only the head is a head
    upstream.received.clear()
    body = b"b" * 200_000
    first = b"POST /api/echo HTTP/1.1\r\nhost: a.test\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    second = b"GET /api/status HTTP/1.1\r\nhost: a.test\r\ncookie: c=" + b"x" * 40_000 + b"\r\nconnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as connection:
        connection.sendall(first + second)
        answer = b""
        while chunk := connection.recv(65536):  # the second request closes the connection
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 2, answer[:300]
    assert len(upstream.received) == 2


UNDERSCORED = [("x_auth_subject", "root"), ("X_Auth_Scopes", "psp.admin"), ("x-auth_client", "admin"), ("x_custom", "1"), ("transfer_encoding", "chunked")]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("policy", ["drop", "refuse", "pass"])
def test_underscored_header_names_follow_proxy_underscore_headers(
    upstream: RecordingUpstream, tmp_path: Path, server: str, policy: str
) -> None:
    upstream.received.clear()
    extra = "" if policy == "drop" else f"proxy:\n  underscore_headers: {policy}\n"
    started = _gateway(upstream, tmp_path, server, extra)
    try:
        headers = b"".join(f"{name}: {value}\r\n".encode() for name, value in UNDERSCORED)
        answer, _ = exchange(started.port, b"GET /api/merchants/M1/webhooks HTTP/1.1\r\nhost: a.test\r\n" + TOKEN + headers + b"connection: close\r\n\r\n")
    finally:
        started.close()
    if policy == "refuse":
        assert status_of(answer) == 400 and b"holds '_'" in body_of(answer)
        assert upstream.received == []
        return
    assert status_of(answer) == 200, answer
    [sent] = upstream.received
    names = {name.lower() for name, _ in sent.headers}
    # twins of the headers the gateway sets or strips never pass, whatever the policy
    assert not names & {b"x_auth_subject", b"x_auth_scopes", b"x-auth_client", b"transfer_encoding"}
    assert sent.header(b"x-auth-subject") == [b"user-1"]
    assert (b"x_custom" in names) == (policy == "pass")


def _scope(headers: list[tuple[bytes, bytes]], version: str = "1.1") -> dict[str, object]:
    return {"http_version": version, "headers": headers}


def test_the_head_check_gathers_every_authorization_value() -> None:
    headers = [(b"host", b"a.test"), (b"authorization", b"Bearer a"), (b"accept", b"*/*"), (b"authorization", b"Bearer b")]
    assert check(_scope(headers), b"/x", b"", LimitSettings()) == [b"Bearer a", b"Bearer b"]


def test_the_uri_limit_counts_path_question_mark_and_query() -> None:
    limits = LimitSettings(max_uri=10)
    scope = _scope([(b"host", b"a")])
    check(scope, b"/abcd", b"abcd", limits)  # 5 + 1 + 4 = 10
    with pytest.raises(Exception, match="11 bytes long"):
        check(scope, b"/abcd", b"abcde", limits)


class _QuickHeads(BoundedHttpToolsProtocol):
    head_timeout = 0.5


@pytest.fixture
def quick(upstream: RecordingUpstream, tmp_path: Path) -> Iterator[LiveServer]:
    config = write_config(tmp_path, upstream=f"{upstream.url}/v3")
    server = LiveServer(Gateway(load_config(config)), http=_QuickHeads)
    yield server
    server.close()


def _closed_within(connection: socket.socket, seconds: float) -> bool:
    connection.settimeout(seconds)
    try:
        while connection.recv(65536):
            pass
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("sent", [b"", b"GET /api/status HTTP/1.1\r\nhost: a"], ids=["nothing", "half a head"])
def test_a_head_not_sent_in_time_closes_the_connection(quick: LiveServer, upstream: RecordingUpstream, sent: bytes) -> None:
    # uvicorn waits for a head for ever: idle or trickling clients could hold every descriptor
    upstream.received.clear()
    with socket.create_connection(("127.0.0.1", quick.port)) as connection:
        connection.sendall(sent)
        started = time.monotonic()
        for byte in b"ccccc" if sent else b"":  # a trickle (more of the Host value) buys no more time
            time.sleep(0.05)
            connection.sendall(bytes([byte]))
        assert _closed_within(connection, 2)
        assert time.monotonic() - started < 1.5
    assert upstream.received == []


def test_requests_on_a_kept_alive_connection_are_not_cut_by_the_head_timeout(quick: LiveServer, upstream: RecordingUpstream) -> None:
    with socket.create_connection(("127.0.0.1", quick.port), timeout=5) as connection:
        for _ in range(3):
            time.sleep(0.3)  # 0.9 s in all: longer than the head timeout, each head on time
            connection.sendall(b"GET /api/status HTTP/1.1\r\nhost: a\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"ok": true}'):
                chunk = connection.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
