"""Decision mode (docs/decision-mode.md) over real ASGI: every endpoint answers what proxy mode
answers the same request (status, body, WWW-Authenticate), nginx's in its X-Auth-* headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.decisions import DecisionGateway
from gateway.loading import ConfigError, load_config
from tests.support import RecordingUpstream, mint, write_config

TABLE = """\
name: payments
upstream: {upstream}
prefix: /api
scopes:
  read:
  admin:
  balance:
  convert:
    step_up: {acr: [sms], max_age: 300}
  id:all:
  id:api:
rules:
  exclusive:
    - [id:all, id:api]
routes:
  GET /items/{itemId}: read
  GET /status: public
  POST /convert: convert
  DELETE /stores/{storeId}: {scopes: admin, hide: true}
  GET /users/{userId}/balance: {scopes: balance, user: userId}
"""
TRUSTED = ("127.0.0.1", 50000)
READ = mint("read")

pytestmark = pytest.mark.anyio

# (what, method, target, token): a request, decided by each endpoint and answered by proxy mode
CASES: list[tuple[str, str, str, str | None, int, str | None]] = [
    ("allowed", "GET", "/api/items/1?x=1", READ, 200, None),
    ("public", "GET", "/api/status", None, 200, None),
    ("no token", "GET", "/api/items/1", None, 401, "unauthorized"),
    ("bad token", "GET", "/api/items/1", READ[:-4] + "AAAA", 401, "invalid_token"),
    ("step-up", "POST", "/api/convert", mint("convert"), 401, "insufficient_user_authentication"),
    ("forbidden", "GET", "/api/items/1", mint("admin"), 403, "forbidden"),
    ("invalid scope", "GET", "/api/items/1", mint("read id:all id:api"), 403, "invalid_scope"),
    ("no route", "GET", "/api/nothing", READ, 404, "not_found"),
    ("wrong method", "PUT", "/api/items/1", READ, 404, "not_found"),
    ("hidden", "DELETE", "/api/stores/s1", READ, 404, "not_found"),
    ("another user's resource", "GET", "/api/users/someone-else/balance", mint("balance"), 404, "not_found"),
    ("encoded slash", "GET", "/api/items/a%2Fb", READ, 400, "invalid_request"),
    ("two slashes", "GET", "/api//items/1", READ, 400, "invalid_request"),
]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, table=TABLE)


async def ask(app: Any, method: str, path: str, headers: dict[str, str], client: tuple[str, int] = TRUSTED) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=client)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://decide.test") as http:
        return await http.request(method, path, headers=headers)


async def proxied(config_path: Path, method: str, target: str, token: str | None) -> httpx.Response:
    upstream = RecordingUpstream()
    try:
        config = load_config(write_config(config_path.parent, upstream=upstream.url, table=TABLE))
        app = Gateway(config)
        await app.runtime.start()
        try:
            return await ask(app, method, target, {"authorization": f"Bearer {token}"} if token else {})
        finally:
            await app.runtime.aclose()
    finally:
        upstream.close()


def decision_request(endpoint: str, method: str, target: str, token: str | None) -> tuple[str, str, dict[str, str]]:
    """The request the front proxy sends for `method` `target` (its method, path and headers)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if endpoint == "nginx":
        return "GET", "/nginx", {**headers, "x-original-method": method, "x-original-uri": target}
    if endpoint == "forward-auth":
        return "GET", "/forward-auth?caddy=appends-this", {**headers, "x-forwarded-method": method, "x-forwarded-uri": target,
                                                           "x-forwarded-host": "elsewhere.test"}
    return method, "/envoy" + target, headers


async def decider(config_path: Path, **options: Any) -> DecisionGateway:
    app = DecisionGateway(load_config(config_path, "decision"), **options)
    await app.runtime.start()
    return app


@pytest.mark.parametrize("endpoint", ["nginx", "forward-auth", "envoy"])
@pytest.mark.parametrize(("what", "method", "target", "token", "status", "error"), CASES, ids=[case[0] for case in CASES])
async def test_each_endpoint_decides_as_proxy_mode_answers(
    config_path: Path, endpoint: str, what: str, method: str, target: str, token: str | None, status: int, error: str | None,
) -> None:
    expected = await proxied(config_path, method, target, token)
    if status == 200:
        assert expected.status_code == 200  # forwarded: the recording upstream answers
    else:
        assert (expected.status_code, expected.json()["error"]) == (status, error)
    app = await decider(config_path)
    try:
        answer = await ask(app, *decision_request(endpoint, method, target, token))
    finally:
        await app.runtime.aclose()
    if status == 200:
        assert (answer.status_code, answer.content) == (200, b"")
        if token is not None:
            assert answer.headers["x-auth-scopes"] == "read"
            assert (answer.headers["x-auth-subject"], answer.headers["x-auth-client"]) == ("user-1", "client-1")
        else:
            assert "x-auth-scopes" not in answer.headers
        return
    challenge = expected.headers.get("www-authenticate")
    assert answer.headers.get("www-authenticate") == challenge
    if endpoint != "nginx":
        assert (answer.status_code, answer.json()) == (status, expected.json())
        return
    assert answer.status_code == (401 if status == 401 else 403)
    assert answer.headers["x-auth-status"] == str(status)
    assert answer.headers["x-auth-error"] == error
    assert answer.headers["x-auth-error-description"] == expected.json()["error_description"]
    assert json.loads(answer.headers["x-auth-refusal"]) == expected.json()


@pytest.mark.parametrize("endpoint", ["nginx", "forward-auth", "envoy"])
@pytest.mark.parametrize(("what", "client", "drop", "target"), [
    ("an untrusted peer", ("10.1.2.3", 5000), None, "/api/items/1"),
    ("no original method", TRUSTED, "method", "/api/items/1"),
    ("no original target", TRUSTED, "target", "/api/items/1"),
    ("a fragment", TRUSTED, None, "/api/items/1#frag"),
    ("not a path", TRUSTED, None, "http://evil.test/api/items/1"),
    ("a dot segment", TRUSTED, None, "/api/x/../items/1"),  # as proxy mode refuses it (httpx would remove it there)
])
async def test_a_question_that_cannot_be_believed_is_400_invalid_request_and_decides_nothing(
    config_path: Path, endpoint: str, what: str, client: tuple[str, int], drop: str | None, target: str,
) -> None:
    if endpoint == "envoy" and (drop is not None or not target.startswith("/") or "#" in target or ".." in target):
        pytest.skip("envoy's method and target are the request's own: missing or odd, the client sends no such request")
    method, path, headers = decision_request(endpoint, "GET", target, READ)
    if drop is not None:
        headers = {name: value for name, value in headers.items() if not name.endswith(drop if drop == "method" else ("uri"))}
    app = await decider(config_path)
    try:
        answer = await ask(app, method, path, headers, client)
    finally:
        await app.runtime.aclose()
    assert "x-auth-scopes" not in answer.headers
    if endpoint == "nginx":
        assert (answer.status_code, answer.headers["x-auth-status"], answer.headers["x-auth-error"]) == (403, "400", "invalid_request")
        assert json.loads(answer.headers["x-auth-refusal"])["error"] == "invalid_request"
    else:
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")


async def test_trusted_proxies_come_from_the_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, table=TABLE, proxy="decision:\n  trusted_proxies: [10.0.0.0/8]\n")
    app = await decider(path)
    try:
        inside = await ask(app, *decision_request("forward-auth", "GET", "/api/items/1", READ), client=("10.1.2.3", 1))
        loopback = await ask(app, *decision_request("forward-auth", "GET", "/api/items/1", READ))
    finally:
        await app.runtime.aclose()
    assert inside.status_code == 200
    assert (loopback.status_code, loopback.json()["error"]) == (400, "invalid_request")


def test_an_unknown_key_of_decision_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, table=TABLE, proxy="decision:\n  trusted: [10.0.0.0/8]\n")
    with pytest.raises(ConfigError, match=r"gateway.yaml:\d+: decision: unknown key 'trusted'"):
        load_config(path)


@pytest.mark.parametrize("option", ["{scopes: read, response_fields: {secret: admin}}", "{scopes: public, graphql: {fields: {Query.a: read}}}"])
def test_a_route_that_needs_the_body_or_the_answer_is_a_load_error_in_decision_mode(tmp_path: Path, option: str) -> None:
    path = write_config(tmp_path, table=TABLE + f"  POST /graphql: {option}\n")
    load_config(path)  # proxy mode serves it
    with pytest.raises(ConfigError) as raised:
        load_config(path, "decision")
    line = len(TABLE.splitlines()) + 1
    assert str(raised.value).startswith(f"{tmp_path / 'routes' / 'payments.yaml'}:{line}: POST /graphql: ")
    assert "decision mode" in str(raised.value)


async def test_the_access_log_gives_a_request_id_and_notes_the_original_request(config_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = await decider(config_path, access_log=True)
    try:
        with caplog.at_level("INFO", logger="gateway.access"):
            answer = await ask(app, *decision_request("nginx", "GET", "/api/items/7", READ))
    finally:
        await app.runtime.aclose()
    assert answer.status_code == 200 and answer.headers["x-request-id"]
    [line] = [record for record in caplog.records if record.name == "gateway.access"]
    fields = line.fields  # type: ignore[attr-defined]
    assert (fields["method"], fields["path"], fields["decision"], fields["route"]) == ("GET", "/api/items/7", "forward", "/items/{itemId}")


async def test_an_unknown_endpoint_is_404(config_path: Path) -> None:
    app = await decider(config_path)
    try:
        answer = await ask(app, "GET", "/api/items/1", {"authorization": f"Bearer {READ}"})
    finally:
        await app.runtime.aclose()
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_gateway_serve_mode_decision_answers_on_its_port(config_path: Path, server: str) -> None:
    import shutil
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = shutil.which("gateway") or str(Path(sys.executable).parent / "gateway")
    process = subprocess.Popen([command, "serve", "--mode", "decision", "--config", str(config_path), "--port", str(port),
                                "--server", server, "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0].decode(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the decision listener did not start"
                time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        allowed = httpx.get(f"{base}/nginx", headers={"x-original-method": "GET", "x-original-uri": "/api/items/1",
                                                      "authorization": f"Bearer {READ}"})
        assert (allowed.status_code, allowed.content, allowed.headers["x-auth-scopes"]) == (200, b"", "read")
        hidden = httpx.delete(f"{base}/envoy/api/stores/s1", headers={"authorization": f"Bearer {READ}"})
        assert (hidden.status_code, hidden.json()["error"]) == (404, "not_found")
        missing = httpx.get(f"{base}/forward-auth", headers={"x-forwarded-method": "GET"})
        assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    finally:
        process.terminate()
        process.communicate(timeout=10)
