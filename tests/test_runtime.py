"""The app's runtime: started (or failing to start) through lifespan, swapped whole while requests
are in flight, and the exchange seam between the decision and the forwarder."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.errors import Forbidden
from gateway.tables import Forwarding
from gateway.loading import load_config
from gateway.routing import parse_template
from gateway.tables import RouteTrie, Tables
from gateway.runtime import Runtime
from gateway.settings import Config
from gateway.types import Headers, Scope
from tests.support import Received, RecordingUpstream, answer, mint, write_config

pytestmark = pytest.mark.anyio


async def lifespan_start(app: Gateway) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent[-1]


async def call(app: Gateway, method: str, path: str, token: str | None = None, body: bytes = b"") -> tuple[int, Headers, bytes]:
    headers = [(b"host", b"gateway.test")]
    if token:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    if body:
        headers.append((b"content-length", b"%d" % len(body)))
    scope = {"type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.update(status=message["status"], headers=message["headers"])
        else:
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], answer["headers"], answer["body"]


async def test_a_start_that_fails_is_reported_with_its_reason(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text((Path(__file__).parent / "keys" / "rsa.pub.pem").read_text())  # not a CA: the loader says so
    config = write_config(tmp_path, proxy="proxy:\n  ca_file: ca.pem\n")
    with pytest.raises(Exception, match="not a PEM bundle of CA certificates"):
        load_config(config)
    # a file that was a CA bundle when the config loaded, and is not when the gateway starts
    good = load_config(write_config(tmp_path))
    app = Gateway(replace(good, proxy=replace(good.proxy, ca_file=ca_file)))
    message = await lifespan_start(app)
    assert message["type"] == "lifespan.startup.failed"
    assert message["message"].startswith(f"the gateway cannot start: the CA file {ca_file} cannot be loaded: ")


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_a_serving_process_whose_config_no_longer_loads_exits_non_zero(tmp_path: Path, server: str) -> None:
    # `gateway serve` checks the config first; a worker that loads it after it broke must not serve
    config = write_config(tmp_path, table="name: t\nupstream: ftp://x\nroutes:\n  GET /a: public\n")
    program = f"from pathlib import Path; from gateway.server import run; run(Path({str(config)!r}), host='127.0.0.1', port=0, server={server!r})"
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60)
    output = (finished.stdout + finished.stderr).decode()
    assert finished.returncode != 0, output
    assert "payments.yaml:2: upstream must be an http:// or https:// URL" in output


async def test_a_swap_serves_new_requests_with_the_new_runtime_and_lets_old_ones_finish(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(request: Received, connection: Any) -> None:
        release.wait(10)
        answer(200, b"old")(request, connection)

    old_upstream, new_upstream = RecordingUpstream(slow), RecordingUpstream(answer(200, b"new"))
    try:
        (tmp_path / "old").mkdir()
        app = Gateway(load_config(write_config(tmp_path / "old", upstream=old_upstream.url)))
        token = mint(lifetime=600)
        in_flight = asyncio.ensure_future(call(app, "GET", "/api/merchants/M1/webhooks", token))
        for _ in range(200):
            if old_upstream.received:
                break
            await asyncio.sleep(0.01)
        assert old_upstream.received, "the first request never reached its upstream"
        (tmp_path / "new").mkdir()
        new_table = "name: payments\nupstream: {upstream}\nprefix: /api\nroutes:\n  GET /merchants/{merchantId}/webhooks: psp.webhook:read\n"
        previous = app.swap(Runtime.build(load_config(write_config(tmp_path / "new", upstream=new_upstream.url, table=new_table))))
        await app.runtime.start()
        assert (await call(app, "GET", "/api/merchants/M1/webhooks", token))[::2] == (200, b"new")
        assert (await call(app, "GET", "/api/status"))[0] == 404  # gone from the new table
        release.set()
        assert (await in_flight)[::2] == (200, b"old")  # finished under the runtime it started with
        await previous.aclose()
        await app.runtime.aclose()
    finally:
        release.set()
        old_upstream.close()
        new_upstream.close()


class _Censor:
    """A test exchange: refuses bodies that say so, shouts the rest, and drops `secret` from JSON answers."""

    option = "censor"
    graphql = False
    requirements: dict[str, Any] = {}

    def __init__(self, body_limit: int | None = 100) -> None:
        self.body_limit = body_limit
        self.seen: list[tuple[bytes | None, str | None]] = []

    async def prepare(self, scope: Scope, body: bytes | None, grant: Any) -> Forwarding:
        self.seen.append((body, grant.subject if grant else None))
        if body and b"forbidden" in body:
            raise Forbidden("this body is not allowed", scope="")
        return Forwarding(body=None if body is None else body.upper(), rewrite=self._rewrite)

    async def describe(self, scope: Scope, body: bytes | None, allowed: Any) -> list[str]:
        return []

    @staticmethod
    def _rewrite(status: int, headers: Headers, body: bytes, limit: int) -> tuple[int, Headers, bytes]:
        document = json.loads(body)
        document.pop("secret", None)
        return status, headers, json.dumps(document).encode()


def with_exchange(config: Config, method: str, template: str, exchange: Any) -> Config:
    entries = []
    for route in config.tables.routes:
        if (route.method, route.template) == (method, template):
            route = replace(route, exchange=exchange)
        entries.append(((*route.api.prefix, *parse_template(route.template)), route))
    tables = Tables(apis=config.tables.apis, trie=RouteTrie(entries), routes=tuple(route for _, route in entries))
    return replace(config, tables=tables)


UPSTREAM_ANSWER = json.dumps({"id": 1, "secret": "s" * 50}).encode()


async def test_an_exchange_reads_the_body_refuses_or_rewrites_it_and_rewrites_the_answer(tmp_path: Path) -> None:
    upstream = RecordingUpstream(answer(200, UPSTREAM_ANSWER))
    censor = _Censor()
    app = Gateway(with_exchange(load_config(write_config(tmp_path, upstream=upstream.url)), "POST", "/merchants/{merchantId}/webhooks", censor))
    token = mint("psp.webhook:write", lifetime=600)
    try:
        status, headers, body = await call(app, "POST", "/api/merchants/M1/webhooks", token, b'{"url": "x"}')
        assert (status, json.loads(body)) == (200, {"id": 1})
        assert dict(headers)[b"content-length"] == b"%d" % len(body)
        [sent] = upstream.received
        assert sent.body == b'{"URL": "X"}' and sent.header(b"content-length") == [b"12"]
        assert censor.seen == [(b'{"url": "x"}', "user-1")]

        status, _, body = await call(app, "POST", "/api/merchants/M1/webhooks", token, b"forbidden words")
        assert status == 403 and json.loads(body)["error_description"] == "this body is not allowed"
        status, _, body = await call(app, "POST", "/api/merchants/M1/webhooks", token, b"x" * 101)
        assert status == 400 and "larger than 100 bytes" in json.loads(body)["error_description"]
        assert len(upstream.received) == 1  # neither refusal reached the upstream

        # a route without an exchange is forwarded as ever, byte for byte
        status, _, body = await call(app, "GET", "/api/merchants/M1/webhooks", mint(lifetime=600))
        assert (status, body) == (200, UPSTREAM_ANSWER)
    finally:
        await app.runtime.aclose()
        upstream.close()


async def test_an_answer_longer_than_the_rewrite_limit_is_a_502_never_a_truncated_answer(tmp_path: Path) -> None:
    upstream = RecordingUpstream(answer(200, UPSTREAM_ANSWER))
    config = load_config(write_config(tmp_path, upstream=upstream.url, proxy="proxy:\n  max_rewritten_response: 60\n"))
    app = Gateway(with_exchange(config, "GET", "/me", _Censor(body_limit=None)))
    try:
        status, _, body = await call(app, "GET", "/api/me", mint(lifetime=600))
        assert status == 502 and "larger than 60 bytes" in json.loads(body)["error_description"]
        upstream.behaviour = answer(200, json.dumps({"id": 1, "secret": "s" * 37}).encode())  # 60 bytes: rewritten
        status, _, body = await call(app, "GET", "/api/me", mint(lifetime=600))
        assert (status, json.loads(body)) == (200, {"id": 1})
    finally:
        await app.runtime.aclose()
        upstream.close()


def test_the_decision_modules_import_no_loader_and_no_yaml() -> None:
    # docs/architecture.md: the decision is a function of frozen values; loaders and pyyaml stay at the edge
    program = (
        "import sys\n"
        "import gateway.head, gateway.paths, gateway.routing, gateway.credentials, gateway.tokens, gateway.catalog, "
        "gateway.scopes, gateway.decision, gateway.authentication, gateway.settings, gateway.tables\n"
        "print(sorted(name for name in sys.modules if name == 'yaml' or name.startswith('gateway.loading') or name in "
        "('gateway.proxy', 'gateway.pool', 'gateway.app', 'gateway.cli')))\n"
    )
    # `import gateway.x` runs gateway/__init__.py first, which exports the app: load the modules
    # without it, as a decision API would
    finished = subprocess.run(
        [sys.executable, "-c", "import importlib.util, sys, types\n"
         "package = types.ModuleType('gateway'); package.__path__ = [str(__import__('pathlib').Path(importlib.util.find_spec('gateway').origin).parent)]\n"
         "sys.modules['gateway'] = package\n" + program],
        capture_output=True, text=True, timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "[]"
