"""Helpers shared by the tests: test keys, token minting, config writing, loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import jwt
import redis
import respx
import uvicorn
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics

KEYS = Path(__file__).parent / "keys"
ISSUER = "https://auth.test"
AUDIENCE = "payments-api"


@functools.cache
def private_key(name: str) -> Any:
    """A test key, loaded once: loading checks an RSA key's primes, some 80 ms each time."""
    return serialization.load_pem_private_key((KEYS / f"{name}.pem").read_bytes(), password=None)


def mint(
    scope: str | list[str] | None = "psp.webhook:read",
    *,
    key: str = "rsa",
    algorithm: str = "RS256",
    kid: str | None = "rsa-1",
    lifetime: float = 300,
    headers: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A token signed with a test key; claims default to a valid token for the test config."""
    now = int(time.time())
    body: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "client_id": "client-1",
                            "iat": now, "exp": now + lifetime}
    if scope is not None:
        body["scope"] = scope
    body.update(claims)
    for name in drop:
        body.pop(name, None)
    signing_key: Any = (KEYS / "hmac.secret").read_text().strip() if algorithm.startswith("HS") else private_key(key)
    header = dict(headers or {})
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(body, signing_key, algorithm=algorithm, headers=header)


def sign_raw(payload: str, *, kid: str = "rsa-1") -> str:
    """An RS256 token over a hand-written JSON payload, for what json.dumps would not write
    (NaN, Infinity, 1e400)."""
    return jwt.api_jws.PyJWS().encode(payload.encode("utf-8"), private_key("rsa"), algorithm="RS256", headers={"kid": kid})


def raw_claims(**claims: str) -> str:
    """A valid token's claims as JSON text, each given claim's value written as is."""
    now = int(time.time())
    members = {"iss": json.dumps(ISSUER), "aud": json.dumps(AUDIENCE), "sub": '"user-1"', "scope": '"a"',
               "iat": str(now), "exp": str(now + 300), **claims}
    return "{" + ", ".join(f'"{name}": {value}' for name, value in members.items()) + "}"


class Clock:
    """A wall clock for a test to move on instead of sleeping through an expiry: the real time plus
    an offset. `install` puts it in place of the `time` module of the gateway's modules that judge
    expiries (grant expiries in `gateway.decision` by default; token expiries in `gateway.tokens`);
    the rest of `time` (monotonic, sleep) is the real one."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def install(self, monkeypatch: Any, *modules: str) -> Clock:
        import importlib

        for module in modules or ("gateway.decision",):
            monkeypatch.setattr(importlib.import_module(module), "time", self)
        return self


async def seen(live: Any) -> None:
    """Have `live` (a `LiveGrants`) check the store's version now, as its poll does every
    `refresh` seconds: a write made before this returns is seen, without sleeping through a poll."""
    await live._check()


def eventually(condition: Callable[[], Any], timeout: float = 10, what: str = "the condition") -> Any:
    """Poll `condition` until it holds (returning its value): for what another process does on
    its own time, instead of a sleep long enough for a busy machine."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.02)
    return value


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS` run in this process, for a command a subprocess would show nothing more of
    (the entry point, signals and serving are tested in subprocesses): its exit status and what it
    wrote, as `subprocess.run` gives them. A thread of its own, as a command runs its own event
    loop and the caller may be inside one; the logging set-up it makes is undone after it."""
    from gateway.cli import main

    outcome: list[int] = []

    def command() -> None:
        try:
            outcome.append(main(list(args)))
        except SystemExit as exit_:  # argparse's refusals, --help
            outcome.append(exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1)
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)

    stdout, stderr = io.StringIO(), io.StringIO()
    saved = logging_state()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), contextlib.chdir(cwd or Path.cwd()):
            thread = threading.Thread(target=command)
            thread.start()
            thread.join()
    finally:
        restore_logging(saved)
    assert outcome, f"gateway {' '.join(args)} raised: {stderr.getvalue()}"
    return subprocess.CompletedProcess(["gateway", *args], outcome[0], stdout.getvalue(), stderr.getvalue())


def logging_state() -> dict[str, tuple[int, list[logging.Handler], bool, bool]]:
    loggers = {name: logger for name, logger in logging.Logger.manager.loggerDict.items() if isinstance(logger, logging.Logger)}
    return {name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled) for name, logger in [("", logging.root), *loggers.items()]}


def _pytests(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")


def restore_logging(saved: dict[str, tuple[int, list[logging.Handler], bool, bool]]) -> None:
    for name, logger in [("", logging.root), *logging.Logger.manager.loggerDict.items()]:
        if not isinstance(logger, logging.Logger):
            continue
        level, handlers, propagate, disabled = saved.get(name, (logging.NOTSET, [], True, False))
        if logger is logging.root:
            # pytest swaps its own capture handlers on the root at each phase of a test: the
            # current phase's stay, whatever was saved in another phase
            handlers = [*(handler for handler in handlers if not _pytests(handler)), *filter(_pytests, logger.handlers)]
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


TABLE = """\
name: payments
upstream: {upstream}
prefix: /api
scopes:
  psp.webhook:read:
  psp.webhook:write:
    implies: [psp.webhook:read]
  psp.admin:
  psp.accountsettings:write:
  psp.onlinepayment:write:
  psp:paybylink:write:
  psp.onlinepayment.tokenization:write:
routes:
  GET /merchants/{merchantId}/webhooks: psp.webhook:read
  POST /merchants/{merchantId}/webhooks: psp.webhook:write
  GET /merchants/{merchantId}/webhooks/{webhookId}: psp.webhook:read
  GET /merchants/{merchantId}/webhooks/special: psp.admin
  GET /merchants/{merchantId}: [psp.accountsettings:write, psp.onlinepayment:write]
  POST /paymentLinks: [[psp:paybylink:write, psp.onlinepayment.tokenization:write]]
  GET /status: public
  POST /echo: public
  GET /me: authenticated
"""


def write_config(
    folder: Path,
    upstream: str = "http://upstream.test:8080/v3",
    *,
    table: str = TABLE,
    tokens: str | None = None,
    proxy: str = "",
) -> Path:
    """gateway.yaml + routes/payments.yaml in `folder`, with the test JWKS; returns the config path."""
    routes = folder / "routes"
    routes.mkdir(exist_ok=True)
    (routes / "payments.yaml").write_text(table.replace("{upstream}", upstream))
    if tokens is None:
        tokens = f"""\
tokens:
  issuer: {ISSUER}
  audience: {AUDIENCE}
  jwks_file: {KEYS / 'jwks.json'}
  leeway: 5
"""
    (folder / "gateway.yaml").write_text(f"routes: routes/\n{tokens}{proxy}")
    return folder / "gateway.yaml"


# --- a loopback upstream that records what it received and misbehaves on request ----------------


@dataclass
class Received:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


Behaviour = Callable[[Received, socket.socket], None]


def answer(status: int = 200, body: bytes = b'{"ok": true}', headers: list[tuple[bytes, bytes]] | None = None) -> Behaviour:
    def respond(request: Received, connection: socket.socket) -> None:
        head = [b"HTTP/1.1 %d X" % status]
        for name, value in headers or [(b"content-type", b"application/json")]:
            head.append(name + b": " + value)
        if not any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers or []):
            head.append(b"content-length: %d" % len(body))
        connection.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
    return respond


@dataclass
class RecordingUpstream:
    """A threaded loopback HTTP/1.1 server: parses each request with h11, records it, then lets
    `behaviour` write whatever bytes it likes."""

    behaviour: Behaviour = field(default_factory=answer)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                # h11 refuses an unfinished head over 16 KiB by default; the gateway passes up to 64 KiB,
                # and whether a head arrives in one read or several is up to the kernel
                parser = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * 1024)
                self.request.settimeout(10)
                request = None
                body = b""
                while True:
                    event = parser.next_event()
                    if event is h11.NEED_DATA:
                        data = self.request.recv(65536)
                        if not data:
                            return
                        parser.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        assert request is not None
                        received = Received(request.method, request.target, list(request.headers.raw_items()), body)
                        upstream.received.append(received)
                        upstream.behaviour(received, self.request)
                        return

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # `shutdown` waits for the loop to look at its flag: every 0.5 s by default, half a second a test
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _EndlessAnswer(asyncio.Protocol):
    """One connection to an `EndlessUpstream`: answers its first request and counts itself open."""

    def __init__(self, upstream: EndlessUpstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.timer: asyncio.TimerHandle | None = None
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.upstream.open.add(self)
        self.upstream.accepted += 1

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in self.head:
            return  # answered: one exchange per connection, and a request body is not read
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        assert self.transport is not None
        if self.head.split(b" ", 2)[1].endswith(b"/status"):
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + self._event())
        if self.upstream.interval is not None:
            self.timer = asyncio.get_running_loop().call_later(self.upstream.interval, self._next)

    def _event(self) -> bytes:
        self.sent += 1
        event = b"data: %d\n\n" % self.sent
        return b"%x\r\n%s\r\n" % (len(event), event)

    def _next(self) -> None:
        assert self.transport is not None and self.upstream.interval is not None
        self.transport.write(self._event())
        self.timer = asyncio.get_running_loop().call_later(self.upstream.interval, self._next)

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.open.discard(self)
        if self.timer is not None:
            self.timer.cancel()


class EndlessUpstream:
    """A loopback upstream, in its own thread and event loop, that answers every request with an
    event stream that never ends: an event at once, then one every `interval` seconds (none more
    when `interval` is None: an upstream silent between events). A target ending in `/status` is
    answered in one piece instead. `open` holds the connections open to it now."""

    def __init__(self, interval: float | None = 0.02) -> None:
        self.interval = interval
        self.open: set[_EndlessAnswer] = set()
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(self._loop.create_server(lambda: _EndlessAnswer(self), "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def open_connections(self) -> int:
        """How many connections are open to it, read in its own loop."""
        return asyncio.run_coroutine_threadsafe(self._count(), self._loop).result(5)

    async def _count(self) -> int:
        return len(self.open)

    def close(self) -> None:
        def stop() -> None:
            self._server.close()
            for connection in list(self.open):
                if connection.transport is not None:
                    connection.transport.abort()
            self._loop.call_soon(self._loop.stop)

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)
        self._loop.close()


class LiveServer:
    """An ASGI app under a real uvicorn on a loopback port, in its own thread and event loop."""

    def __init__(self, app: Any, **options: Any) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        from gateway.server import uvicorn_options

        settings = {"log_level": "warning", **uvicorn_options(), **options}
        self.server = uvicorn.Server(uvicorn.Config(app, **settings))
        self._thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self._socket])), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._socket.close()


class GatewayProcess:
    """`gateway serve` in a subprocess, for servers that cannot run in a thread (granian), or with
    options of its own (`args`: `--mode decision`, say)."""

    def __init__(self, config_path: Path, server: str = "granian", args: tuple[str, ...] = ()) -> None:
        import shutil
        import subprocess
        import sys

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = shutil.which("gateway") or str(Path(sys.executable).parent / "gateway")
        self.output = b""  # what it wrote, once closed
        self.process = subprocess.Popen(
            [command, "serve", "--config", str(config_path), "--port", str(self.port), "--server", server, "--log-level", "warning", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.process.communicate()[0].decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway did not start") from None
                time.sleep(0.05)

    def close(self) -> None:
        """Stop the gateway (once: later calls do nothing); what it wrote is kept in `output`."""
        import signal

        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.output = self.process.communicate(timeout=10)[0]
        except Exception:
            self.process.kill()
            self.output = self.process.communicate()[0]


def start_gateway(config_path: Path, server: str = "uvicorn") -> LiveServer | GatewayProcess:
    if server == "uvicorn":
        from gateway.app import Gateway
        from gateway.loading import load_config

        return LiveServer(Gateway(load_config(config_path)))
    return GatewayProcess(config_path, server)


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> RawResponse:
    """Send exact bytes, read one response with h11 (connection closed after)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))  # align h11's state
        parser.send(h11.EndOfMessage())
        response = None
        body = b""
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = connection.recv(65536)
                parser.receive_data(data)
                if not data and response is None:
                    raise ConnectionError("closed before a response")
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                assert response is not None
                return RawResponse(response.status_code, list(response.headers.raw_items()), body)


def request_bytes(method: str, target: str | bytes, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    target_bytes = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode() + b" " + target_bytes + b" HTTP/1.1", b"host: gateway.test", b"connection: close"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if body:
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- query strings that carry a token under a name some framework reads as access_token ----------

QUERY_TOKENS = [
    # the name itself, anywhere, with or without a value, after either separator
    b"access_token=x", b"access_token", b"access_token=", b"a=1&access_token=x", b"a=1&access_token=x&b=2",
    b"a=1&access_token", b"a=1&access_token=&b=2", b"a=1;access_token=x", b"a=1;access_token", b"&&access_token=x",
    # any percent-escape of any of its characters, either hex case, and the %uXXXX form ASP.NET decodes
    b"access%5Ftoken=x", b"access%5ftoken=x", b"%61ccess_token=x", b"acce%73s_token=x", b"access_toke%6E=x",
    b"access_toke%6e", b"a=1&access%5Ftoken", b"b=2;%61ccess_token=", b"%61%63%63%65%73%73%5F%74%6F%6B%65%6E=x",
    b"%u0061ccess_token=x", b"access%u005Ftoken=x", b"access%U005ftoken",
    # PHP: ' ' (also as '+'), '.' and an unclosed '[' read as '_'; leading spaces skipped; a NUL ends the name
    b"access.token=x", b"access%2Etoken=x", b"access+token=x", b"access%20token=x", b"access[token=x",
    b"access%5Btoken=x", b"a=1;access.token", b"+access_token=x", b"%20access_token=x", b"access_token%00=x",
    b"access_token%00junk=x",
    # PHP, Rack, qs: a bracketed name is filed under the name before its brackets; Rack 2 and qs skip leading ones
    b"access_token[]=x", b"access_token[x]=x", b"access_token[]", b"access_token%5B%5D=x", b"access_token%5b0%5d=x",
    b"access.token[]=x", b"[access_token]=x", b"access_token]=x", b"a=1&access_token[=x",
]

QUERIES_WITHOUT_TOKEN = [
    b"", b"a=1", b"tokens=1", b"token=1", b"id_token=x", b"my_access_token=x", b"access_tokenx=1", b"access_token_=1",
    b"my_access_token_count=3", b"ACCESS_TOKEN=x", b"Access_Token=x", b"accesstoken=x", b"access-token=x",
    b"access__token=x", b"q=access_token", b"q=%61ccess_token&r=access_token[]", b"x=1&y=%20",
    b"access%255Ftoken=x",  # decoded once, as servers do: the name is access%5Ftoken
]


# --- a real redis-server on loopback, for the Redis grant store ------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server subprocess, without persistence, that can be stopped, frozen and started again
    on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


# --- the admin listener, and the wallet table with live grants (shared by the admin, grants, metrics and reload tests)

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def with_admin(config: Path, port: int = 9901) -> Path:
    (config.parent / "admin.token").write_text(ADMIN_TOKEN + "\n")
    config.write_text(config.read_text() + f"admin:\n  listen: 127.0.0.1:{port}\n  token_file: admin.token\n")
    return config


WALLET_TABLE = """\
name: wallet
upstream: http://wallet.test
prefix: /w
scopes:
  balance:
    description: Get balance of user's wallet
    suffixes: [offline]
  phone:
    description: Get user's confirmed phone number
    suffixes: [offline, optional]
    condition: User must add and validate phone number
  email:
    suffixes: [optional]
  accounts_details:read:
    grants: [client]
  make_deposit:
    grants: [client, user]
routes:
  GET /balance: balance
  GET /phone: phone
  GET /email: email
  GET /accounts/details: accounts_details:read
  POST /deposits: make_deposit
  GET /users/{userId}/balance: {scopes: balance, user: userId}
  GET /status: public
"""


def write_wallet(folder: Path, store: str = "sqlite:///grants.db", refresh: float = 0.1) -> Path:
    (folder / "routes").mkdir(exist_ok=True)
    (folder / "routes" / "wallet.yaml").write_text(WALLET_TABLE)
    config = folder / "gateway.yaml"
    config.write_text(
        f"routes: routes/\ntokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n"
        f"proxy:\n  client: httpx\ngrants:\n  store: {store}\n  refresh: {refresh}\n"
    )
    return config


# --- front proxies (nginx, Caddy) from the shipped examples/, in front of the decision listener ---

EXAMPLES = Path(__file__).parent.parent / "examples"
# the addresses the examples are written for, replaced by a test's own ports
EXAMPLE_DECISION = "127.0.0.1:8081"
EXAMPLE_UPSTREAM = "127.0.0.1:9000"


class Tap:
    """A loopback TCP relay to `port` that keeps every request head it passes on: what a front
    proxy asked the decision listener, byte for byte. Requests without a body only (decision
    requests have none)."""

    def __init__(self, port: int) -> None:
        self.heads: list[bytes] = []
        self.connections = 0  # accepted so far
        tap = self

        class Relay(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                tap.connections += 1
                with socket.create_connection(("127.0.0.1", port)) as backend:
                    threading.Thread(target=_pipe, args=(backend, self.request), daemon=True).start()
                    pending = b""
                    while data := self.request.recv(65536):
                        # noted before it is passed on: the answer cannot reach the test first
                        pending += data
                        while b"\r\n\r\n" in pending:
                            head, pending = pending.split(b"\r\n\r\n", 1)
                            tap.heads.append(head)
                        backend.sendall(data)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Relay)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def asked(self, request_id: str) -> list[dict[bytes, bytes]]:
        """The heads of the decision requests carrying this X-Request-Id, as {lowercase name: value}
        (the request line under b':line')."""
        found = []
        for head in list(self.heads):
            line, *fields = head.split(b"\r\n")
            headers = {b":line": line}
            for field_line in fields:
                name, _, value = field_line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if headers.get(b"x-request-id") == request_id.encode():
                found.append(headers)
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class FrontProxy:
    """nginx or Caddy, run from the shipped example with only its ports and paths replaced, on a
    free loopback port; stopped (and waited for) by `close`."""

    def __init__(self, name: str, folder: Path, decision_port: int, upstream_port: int) -> None:
        import os
        import shutil

        self.name = name
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "error.log"
        binary = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
        if binary is None:
            raise FileNotFoundError(name)
        env = dict(os.environ)
        if name == "nginx":
            site = self._example("nginx/scope-gateway.conf", decision_port, upstream_port)
            site = site.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
            (folder / "scope-gateway.conf").write_text(site)
            temp = "".join(f"    {kind}_temp_path {folder / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            # as root, workers would run as nobody, who cannot enter a private temporary folder
            user = "user root;\n" if os.geteuid() == 0 else ""
            (folder / "nginx.conf").write_text(
                f"{user}worker_processes 1;\ndaemon off;\npid {folder / 'nginx.pid'};\nerror_log {self.log} warn;\n"
                f"events {{ worker_connections 256; }}\n"
                f"http {{\n    access_log off;\n{temp}    include {folder / 'scope-gateway.conf'};\n}}\n")
            command = [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(self.log)]
        else:
            site = self._example("caddy/Caddyfile", decision_port, upstream_port)
            site = site.replace("admin 127.0.0.1:2019", f"admin 127.0.0.1:{free_port()}").replace(":8080 {", f":{self.port} {{")
            (folder / "Caddyfile").write_text(site)
            env.update(HOME=str(folder), XDG_DATA_HOME=str(folder / "data"), XDG_CONFIG_HOME=str(folder / "config"))
            command = [binary, "run", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=folder)
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start: {self.log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.05)

    @staticmethod
    def _example(name: str, decision_port: int, upstream_port: int) -> str:
        text = (EXAMPLES / name).read_text()
        assert EXAMPLE_DECISION in text and EXAMPLE_UPSTREAM in text, f"examples/{name} no longer names the addresses the tests replace"
        return text.replace(EXAMPLE_DECISION, f"127.0.0.1:{decision_port}").replace(EXAMPLE_UPSTREAM, f"127.0.0.1:{upstream_port}")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# the caller of the wallet table's requests, unless they name their own claims: a user of client app
WALLET_USER = {"sub": "ana", "client_id": "app"}


class Wallet:
    """The gateway with the wallet table and a SQLite store, in front of a respx-mocked upstream."""

    def __init__(self, config: Path, metrics: Any = None) -> None:
        from gateway.app import Gateway
        from gateway.loading import load_config

        self.config = config
        self.app = Gateway(load_config(config), metrics=metrics)

    async def ask(self, request: str, scopes: str | None, claims: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], bool]:
        method, path = request.split(" ", 1)
        headers = {} if scopes is None else {"authorization": f"Bearer {mint(scopes, lifetime=600, **(claims or WALLET_USER))}"}
        with respx.mock(assert_all_called=False) as router:
            upstream = router.route(host__in=["wallet.test", "fluz.test"]).mock(return_value=httpx.Response(200, json={}))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gateway.test") as client:
                response = await client.request(method, path, headers=headers)
        body = response.json() if not upstream.called else {}
        return response.status_code, body | {"retry-after": response.headers.get("retry-after")}, upstream.called

    async def fresh(self) -> None:
        """See the store's writes now, as a poll would within `refresh` (tested on its own in test_grants.py)."""
        assert self.app.runtime.grants is not None
        await seen(self.app.runtime.grants)


# --- metrics, as /metrics shows them ---------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(directory: Path) -> Samples:
    """Every sample `/metrics` would show for `directory`, parsed by prometheus-client's parser."""
    body, content_type = metrics.exposition(directory)
    assert content_type.startswith(b"text/plain; version=")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode()) for sample in family.samples}


def requests_total(found: Samples) -> dict[tuple[str, str, str, str, str], float]:
    return {tuple(dict(labels)[name] for name in metrics.REQUEST_LABELS): value  # type: ignore[misc]
            for (name, labels), value in found.items() if name == "gateway_requests_total"}
