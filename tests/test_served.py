"""The real gateway served on loopback sockets (uvicorn, granian), fed exact bytes, in front of loopback upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    EndlessUpstream,
    GatewayProcess,
    LiveServer,
    Received,
    RecordingUpstream,
    answer,
    mint,
    raw_exchange,
    request_bytes,
    start_gateway,
    write_config,
)

# (server, upstream client): the forwarding table runs on both clients, the path-safety and
# header-hygiene tests under both servers
COMBINATIONS = [("uvicorn", "pool"), ("uvicorn", "httpx"), ("granian", "pool")]
IDS = [f"{server}-{client}" for server, client in COMBINATIONS]


@pytest.fixture(params=COMBINATIONS, ids=IDS)
def combination(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param


@pytest.fixture
def client_kind(combination: tuple[str, str]) -> str:
    return combination[1]


@pytest.fixture
def server_kind(combination: tuple[str, str]) -> str:
    return combination[0]


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module", params=COMBINATIONS, ids=IDS)
def shared_gateway(request: pytest.FixtureRequest, shared_upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer | GatewayProcess]:
    server, client = request.param
    config = write_config(tmp_path_factory.mktemp(f"{server}-{client}"), upstream=f"{shared_upstream.url}/v3", proxy=proxy(client, read_timeout=1, connect_timeout=1))
    started = start_gateway(config, server)
    yield started
    started.close()


@pytest.fixture
def gateway(shared_gateway: LiveServer | GatewayProcess) -> LiveServer | GatewayProcess:
    return shared_gateway


@pytest.fixture
def upstream(shared_upstream: RecordingUpstream) -> RecordingUpstream:
    """The module's upstream, emptied and answering 200 again: a test sets its `behaviour` for a fault.
    It closes each connection after one exchange, and says so: a gateway that pooled the connection
    could otherwise send the next test's request on it as it closes (a 502 on a busy machine)."""
    shared_upstream.received.clear()
    shared_upstream.behaviour = answer(headers=[(b"content-type", b"application/json"), (b"connection", b"close")])
    return shared_upstream


def proxy(client_kind: str, **settings: object) -> str:
    return "proxy:\n" + "".join(f"  {name}: {value}\n" for name, value in {"client": client_kind, **settings}.items())


TOKEN = ("authorization", f"Bearer {mint('psp.webhook:read psp.webhook:write', lifetime=3600)}")


@pytest.mark.parametrize(("target", "forwarded"), [
    (b"/api/merchants/M1/webhooks", b"/v3/merchants/M1/webhooks"),
    (b"/api/merchants/M%41/webhooks", b"/v3/merchants/M%41/webhooks"),
    (b"/api/merchants/m%c3%a9/webhooks", b"/v3/merchants/m%c3%a9/webhooks"),
    (b"/api/merchants/M;v=1/webhooks", b"/v3/merchants/M;v=1/webhooks"),
    (b"/api/merchants/M1/webhooks?b=%2F&a=1&a=2&c", b"/v3/merchants/M1/webhooks?b=%2F&a=1&a=2&c"),
    (b"/api/merchants/M1/webhooks?", b"/v3/merchants/M1/webhooks"),
])
def test_the_bytes_matched_are_the_bytes_forwarded(gateway: LiveServer, upstream: RecordingUpstream, target: bytes, forwarded: bytes) -> None:
    response = raw_exchange(gateway.port, request_bytes("GET", target, [TOKEN]))
    assert response.status == 200, response.body
    assert [r.target for r in upstream.received] == [forwarded]


PATH_TRICKS = [
    b"/api/merchants/M1/%2e%2e/webhooks",
    b"/api/merchants/M1/webhooks/..",
    b"/api/merchants/../merchants/M1/webhooks",
    b"/api/merchants/M1/./webhooks",
    b"/api/merchants/M1//webhooks",
    b"//api/merchants/M1/webhooks",
    b"/api/merchants/M1/webhooks/",
    b"/api/merchants/M1%2fwebhooks",
    b"/api/merchants/M1%2Fx/webhooks",
    b"/api/merchants/M1%5c..%5cx/webhooks",
    b"/api/merchants/M1\\..\\x/webhooks",
    b"/api/merchants/M1%00/webhooks",
    b"/api/merchants/M1%/webhooks",
    b"/api/merchants/M1%g0/webhooks",
    b"/api/merchants/%ff%fe/webhooks",
    b"/api/merchants/M1/..;/webhooks",
    b"/api/status/..;/merchants/M1/webhooks",
    b"/api/merchants/%252e%252e/webhooks",
]


@pytest.mark.parametrize("target", PATH_TRICKS)
def test_ambiguous_paths_are_refused_before_anything_is_forwarded(gateway: LiveServer, upstream: RecordingUpstream, target: bytes) -> None:
    response = raw_exchange(gateway.port, request_bytes("GET", target, [TOKEN]))
    assert response.status == 400
    assert upstream.received == []
    if response.header(b"content-type") == b"application/json" or isinstance(gateway, LiveServer):
        assert response.json()["error"] == "invalid_request"
        assert "refused" in response.json()["error_description"]


def test_method_override_headers_do_not_change_what_is_authorised(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    reader = ("authorization", f"Bearer {mint('psp.webhook:read')}")
    response = raw_exchange(gateway.port, request_bytes("GET", "/api/merchants/M1/webhooks", [reader, ("x-http-method-override", "POST"), ("x-method-override", "DELETE"), ("X-HTTP-Method", "PATCH")]))
    assert response.status == 200
    [sent] = upstream.received
    assert sent.method == b"GET"
    assert not sent.header(b"x-http-method-override") and not sent.header(b"x-method-override") and not sent.header(b"x-http-method")


def test_client_sent_identity_and_forwarding_headers_are_dropped(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    response = raw_exchange(gateway.port, request_bytes("GET", "/api/merchants/M1/webhooks", [
        TOKEN, ("x-auth-subject", "root"), ("X-Auth-Scopes", "psp.admin"), ("x-auth-client", "admin"),
        ("x-forwarded-for", "10.1.1.1"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.test"),
        ("forwarded", "for=10.1.1.1"), ("x-real-ip", "10.1.1.1"),
    ]))
    assert response.status == 200
    [sent] = upstream.received
    assert sent.header(b"x-auth-subject") == [b"user-1"]
    assert sent.header(b"x-auth-client") == [b"client-1"]
    assert sent.header(b"x-auth-scopes") == [b"psp.webhook:read psp.webhook:write"]
    assert sent.header(b"x-forwarded-for") == [b"127.0.0.1"]
    assert sent.header(b"x-forwarded-proto") == [b"http"]
    assert sent.header(b"x-forwarded-host") == [b"gateway.test"]
    assert sent.header(b"forwarded") == [] and sent.header(b"x-real-ip") == []


def test_connection_listed_headers_are_removed(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    raw_exchange(gateway.port, request_bytes("GET", "/api/status", [("x-private", "1"), ("connection", "x-private")]))
    [sent] = upstream.received
    assert sent.header(b"x-private") == [] and sent.header(b"connection") in ([], [b"keep-alive"])


def test_a_large_request_head_passes(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    cookie = "c=" + "x" * 40 * 1024
    response = raw_exchange(gateway.port, request_bytes("GET", "/api/status", [("cookie", cookie)]))
    assert response.status == 200
    assert upstream.received[0].header(b"cookie") == [cookie.encode()]


def test_the_head_bound_counts_each_request_of_a_connection_afresh(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    # three 40 KiB heads on one keep-alive connection: 120 KiB in all, each under the 64 KiB bound
    head = b"GET /api/status HTTP/1.1\r\nhost: g\r\ncookie: c=" + b"x" * 40 * 1024 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as connection:
        for _ in range(3):
            connection.sendall(head)
            answer = b""
            while not answer.endswith(b'{"ok": true}'):
                received = connection.recv(65536)
                assert received, f"the gateway closed the connection after {answer[:300]!r}"
                answer += received
            assert answer.startswith(b"HTTP/1.1 200")
    assert len(upstream.received) == 3


@pytest.mark.parametrize("pieces", [1, 700], ids=["one-write", "many-small-writes"])
def test_a_request_head_over_64_kib_is_refused_and_never_forwarded(gateway: LiveServer, upstream: RecordingUpstream, pieces: int) -> None:
    # llhttp bounds nothing: without the gateway's bound, a 200 MiB header took 337 MiB under uvicorn
    header = b"GET /api/status HTTP/1.1\r\nhost: g\r\nx-big: " + b"a" * 70 * 1024
    answer = b""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as connection:
        size = len(header) // pieces + 1
        try:
            for start in range(0, len(header), size):
                connection.sendall(header[start:start + size])
            for _ in range(64):  # and more, as a client that never ends its head would
                connection.sendall(b"a" * 65536)
        except OSError:
            pass  # refused and closed while still sending
        with contextlib.suppress(OSError):
            while chunk := connection.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431")
    assert upstream.received == []
    if isinstance(gateway, LiveServer):  # uvicorn: the gateway's own answer (granian's has no body)
        assert b'{"error": "invalid_request", "error_description": "the request line and headers are larger than 64 KiB"}' in answer


def test_a_chunked_request_body_is_streamed_through_complete(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (b"a" * 1000, b"b" * 70000, b"c")) + b"0\r\n\r\n"
    request = b"POST /api/echo HTTP/1.1\r\nhost: g\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n" + chunked
    response = raw_exchange(gateway.port, request)
    assert response.status == 200
    [sent] = upstream.received
    assert sent.body == b"a" * 1000 + b"b" * 70000 + b"c"


def test_a_large_body_passes_both_ways(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB
    upstream.behaviour = answer(200, big, [(b"content-type", b"application/octet-stream")])
    response = raw_exchange(gateway.port, request_bytes("POST", "/api/echo", body=big[::-1]))
    assert response.status == 200 and response.body == big
    assert upstream.received[0].body == big[::-1]


def test_smuggling_with_both_content_length_and_chunked_never_reaches_the_upstream(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    smuggle = (b"POST /api/echo HTTP/1.1\r\nhost: g\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
               b"0\r\n\r\nGET /api/merchants/M1/webhooks HTTP/1.1\r\nhost: g\r\n\r\n")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as connection:
        connection.sendall(smuggle)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    # uvicorn refuses the message outright; granian (hyper) lets Transfer-Encoding win, answers
    # the first request and closes the connection, dropping the rest
    assert reply.startswith(b"HTTP/1.1 400") or (reply.count(b"HTTP/1.1 ") == 1 and b"connection: close" in reply.lower())
    assert all(r.target != b"/v3/merchants/M1/webhooks" for r in upstream.received)


def slow(request: Received, connection: socket.socket) -> None:
    time.sleep(2.5)
    answer()(request, connection)


def garbage(request: Received, connection: socket.socket) -> None:
    connection.sendall(b"SPDY/9 banana\r\n\r\n")


def close_at_once(request: Received, connection: socket.socket) -> None:
    connection.shutdown(socket.SHUT_RDWR)


def headers_then_close(request: Received, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
    connection.shutdown(socket.SHUT_RDWR)


def oversized_headers(request: Received, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 200_000 + b"\r\ncontent-length: 2\r\n\r\nok")


def injected_header(request: Received, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nx-bad: a\rb\r\ncontent-length: 2\r\n\r\nok")


@pytest.mark.parametrize(("behaviour", "status", "error"), [
    (slow, 504, "gateway_timeout"),
    (garbage, 502, "bad_gateway"),
    (close_at_once, 502, "bad_gateway"),
    (injected_header, 502, "bad_gateway"),
    (oversized_headers, 502, "bad_gateway"),
])
def test_upstream_faults_are_answered_by_the_gateway(gateway: LiveServer, upstream: RecordingUpstream, behaviour, status: int, error: str) -> None:
    upstream.behaviour = behaviour  # `slow` answers after the shared gateway's read_timeout of 1 s
    response = raw_exchange(gateway.port, request_bytes("GET", "/api/merchants/M1/webhooks", [TOKEN]))
    assert response.status == status
    assert response.json()["error"] == error


def test_an_unreachable_upstream_is_a_502(tmp_path: Path, live_gateway: Callable[..., LiveServer], client_kind: str, server_kind: str) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        free_port = placeholder.getsockname()[1]
    gateway = live_gateway(write_config(tmp_path, upstream=f"http://127.0.0.1:{free_port}", proxy=proxy(client_kind)), server_kind)
    response = raw_exchange(gateway.port, request_bytes("GET", "/api/status"))
    assert response.status == 502 and response.json()["error"] == "bad_gateway"


def test_an_upstream_dying_mid_body_aborts_the_client_connection(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    upstream.behaviour = headers_then_close
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as connection:
        connection.sendall(request_bytes("GET", "/api/status"))
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1000" in head.lower()
    assert len(body) < 1000  # the client sees a truncated body, never a complete-looking one


def test_refusals_are_answered_on_a_real_socket_with_their_challenge(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    response = raw_exchange(gateway.port, request_bytes("DELETE", "/api/merchants/M1/webhooks", [("authorization", f"Bearer {mint('psp.webhook:read')}")]))
    assert response.status == 404
    response = raw_exchange(gateway.port, request_bytes("POST", "/api/merchants/M1/webhooks", [("authorization", f"Bearer {mint('psp.webhook:read')}")], b"{}"))
    assert response.status == 403
    assert response.header(b"www-authenticate") == b'Bearer realm="payments", error="insufficient_scope", error_description="POST /merchants/{merchantId}/webhooks requires psp.webhook:write; the token grants psp.webhook:read (missing psp.webhook:write)", scope="psp.webhook:write"'
    assert upstream.received == []


def test_proxy_environment_variables_never_divert_upstream_traffic(tmp_path: Path, upstream: RecordingUpstream, live_gateway: Callable[..., LiveServer], client_kind: str, server_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    gateway = live_gateway(write_config(tmp_path, upstream=upstream.url, proxy=proxy(client_kind)), server_kind)
    assert raw_exchange(gateway.port, request_bytes("GET", "/api/status")).status == 200
    assert len(upstream.received) == 1


def test_upstream_server_and_date_headers_pass_through_once(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    upstream.behaviour = answer(200, b"ok", [(b"server", b"upstream/1.0"), (b"date", b"Tue, 01 Jan 2030 00:00:00 GMT")])
    response = raw_exchange(gateway.port, request_bytes("GET", "/api/status"))
    assert [value for name, value in response.headers if name.lower() == b"server"] == [b"upstream/1.0"]
    assert [value for name, value in response.headers if name.lower() == b"date"] == [b"Tue, 01 Jan 2030 00:00:00 GMT"]


def test_response_hop_by_hop_headers_are_removed_whatever_their_case(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    upstream.behaviour = answer(200, b"ok", [
        (b"Connection", b"close, X-Upstream-Private"), (b"X-Upstream-Private", b"1"), (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Authenticate", b"Basic"), (b"Upgrade", b"h2c"), (b"X-Kept", b"yes"),
    ])
    response = raw_exchange(gateway.port, request_bytes("GET", "/api/status"))
    names = {name.lower() for name, _ in response.headers}
    assert response.status == 200 and response.header(b"x-kept") == b"yes"
    assert not names & {b"x-upstream-private", b"keep-alive", b"proxy-authenticate", b"upgrade"}
    assert response.header(b"connection") in (None, b"keep-alive", b"close")  # the server's own, if any


def test_expect_100_continue_is_answered_and_not_forwarded(gateway: LiveServer, upstream: RecordingUpstream) -> None:
    body = b'{"url": "https://example.test/hook"}'
    head = request_bytes("POST", "/api/echo", [("expect", "100-continue"), ("content-length", str(len(body)))])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as connection:
        connection.sendall(head)
        interim = connection.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100")
        connection.sendall(body)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") or b"HTTP/1.1 200" in reply
    [sent] = upstream.received
    assert sent.body == body and sent.header(b"expect") == []


EVENTS_TABLE = """\
name: events
upstream: {upstream}
prefix: /api
routes:
  GET /events: public
  POST /events: public
  GET /status: public
"""


async def _first_event_then_leave(port: int, request: bytes) -> None:
    # bounds against a hang, not a speed test: 200 clients at once share one process with the
    # gateway, and took over 5 s on a loaded machine
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200"), head
        await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 30)
    finally:
        writer.close()


def abandon_streams(port: int, clients: int, batch: int = 200, body: bytes | None = None) -> None:
    """`clients` clients, `batch` at a time, each asking for a stream (GET, or POST when there is
    a body), reading its head and first event through the gateway, then going away; all gone
    when this returns."""
    if body is None:
        request = b"GET /api/events HTTP/1.1\r\nhost: gateway.test\r\n\r\n"
    else:
        request = b"POST /api/events HTTP/1.1\r\nhost: gateway.test\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def run() -> None:
        deadline = time.monotonic() + 60
        for done in range(0, clients, batch):
            assert time.monotonic() < deadline, f"only {done} of {clients} clients served in 60 s"
            await asyncio.gather(*(_first_event_then_leave(port, request) for _ in range(min(batch, clients - done))))
    asyncio.run(run())


@contextlib.contextmanager
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """Errors logged in this process, uvicorn's included (its loggers do not propagate to the root
    logger, so caplog misses them)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def assert_quiet(gateway: LiveServer | GatewayProcess, records: list[logging.LogRecord]) -> None:
    """No traceback and no error logged ('Exception in ASGI application', a task's exception never
    retrieved...). Warnings are let be: asyncio warns of writes to a client whose connection was
    lost in the same turn of the loop, before uvicorn hears of it."""
    if isinstance(gateway, GatewayProcess):
        gateway.close()
        assert b"Traceback" not in gateway.output and b"[ERROR]" not in gateway.output, gateway.output.decode(errors="replace")
    assert [record.getMessage() for record in records] == []


def test_streams_their_clients_left_free_their_upstream_connections(tmp_path: Path, live_gateway: Callable[..., LiveServer], client_kind: str, server_kind: str) -> None:
    # servers' send() returns quietly once the client is gone: without a watch on receive(), each
    # abandoned stream was read on for ever, and 256 of them used up the pool
    upstream = EndlessUpstream(interval=0.02)
    try:
        # the pool capped low enough that abandoned streams would fill it (httpx has no such setting)
        limits = {"max_connections": 256} if client_kind == "pool" else {}
        config = write_config(tmp_path, upstream=upstream.url, table=EVENTS_TABLE, proxy=proxy(client_kind, connect_timeout=2, **limits))
        gateway = live_gateway(config, server_kind)
        with errors_logged() as records:
            abandon_streams(gateway.port, clients=600)  # over twice the pool's cap
            deadline = time.monotonic() + 5
            while upstream.open_connections() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert upstream.open_connections() == 0
            assert upstream.accepted == 600  # one connection each: a stream's is never reused
            response = raw_exchange(gateway.port, request_bytes("GET", "/api/status"))
            assert (response.status, response.body) == (200, b"ok")
            assert_quiet(gateway, records)
    finally:
        upstream.close()


@pytest.mark.parametrize("body", [None, b'{"topics": ["a"]}'], ids=["GET", "POST"])
def test_a_client_leaving_a_silent_stream_closes_its_upstream_connection_at_once(tmp_path: Path, live_gateway: Callable[..., LiveServer], client_kind: str, server_kind: str, body: bytes | None) -> None:
    # an upstream between events sends nothing the gateway could fail to deliver: only receive()
    # tells that the client went away, long before the read timeout
    upstream = EndlessUpstream(interval=None)
    try:
        config = write_config(tmp_path, upstream=upstream.url, table=EVENTS_TABLE, proxy=proxy(client_kind, read_timeout=30))
        gateway = live_gateway(config, server_kind)
        with errors_logged() as records:
            abandon_streams(gateway.port, clients=10, body=body)
            deadline = time.monotonic() + 1
            while upstream.open_connections() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert upstream.open_connections() == 0
            assert upstream.accepted == 10
            assert_quiet(gateway, records)
    finally:
        upstream.close()
