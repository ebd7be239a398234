"""Shadow mode (docs/route-tables.md, "Shadow mode"): a table's `mode: shadow` decides every request
as usual and forwards what it would refuse of the caller (401, 403, 404), with identity headers
only from a verified token; refusals of the request's form or of the gateway's state stay
enforced. Through the real ASGI app, in front of a real loopback upstream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import metrics
from gateway.app import Gateway
from gateway.decisions import DecisionGateway
from gateway.explain import Caller, explain
from gateway.loading import ConfigError, load_config
from gateway.reload import SUCCESS, ServingReloads
from tests.support import WALLET_TABLE, RecordingUpstream, Wallet, answer, cli, mint, requests_total, samples, write_config, write_wallet

pytestmark = pytest.mark.anyio

TABLE = """\
name: payments
upstream: {upstream}
prefix: /api
mode: shadow
scopes:
  things:read:
  things:write:
    implies: [things:read]
  approvals:write:
    step_up: {acr: [sms], max_age: 300}
  LIST_PAYMENT:
  a:
  b:
rules:
  exclusive:
    - [a, b]
routes:
  GET /things: things:read
  POST /things: things:write
  POST /approvals: approvals:write
  GET /secret: {scopes: things:write, hide: true}
  GET /users/{userId}/email: {scopes: things:read, user: userId}
  GET /orgs/{orgId}/reports: {scopes: things:read, claims: {org_id: "{orgId}"}}
  GET /status: public
  POST /graphql: {scopes: authenticated, graphql: {fields: {Query.status: public, Query.payments: LIST_PAYMENT}}}
"""
# enforced tables beside it: one elsewhere, one whose prefix lies inside the shadow table's
STRICT = "name: strict\nupstream: {upstream}\nprefix: /api/strict\nroutes:\n  GET /things: things:read\n"
PLAIN = "name: plain\nupstream: {upstream}\nprefix: /plain\nroutes:\n  GET /things: things:read\n"
READ = {"authorization": f"Bearer {mint('things:read', lifetime=3600)}"}  # minted at collection: outlives the suite
# what a client sends to pass for someone: never reaches the upstream
SPOOFED = {"x-auth-subject": "admin", "x-auth-client": "root", "x-auth-scopes": "things:write"}


def write_tables(folder: Path, upstream: str, table: str = TABLE) -> Path:
    config = write_config(folder, upstream=f"{upstream}/v3", table=table)
    (folder / "routes" / "strict.yaml").write_text(STRICT.replace("{upstream}", upstream))
    (folder / "routes" / "plain.yaml").write_text(PLAIN.replace("{upstream}", upstream))
    return config


@pytest.fixture
async def app(tmp_path: Path, upstream: RecordingUpstream, recorder: metrics.Recorder) -> AsyncIterator[Gateway]:
    gateway = Gateway(load_config(write_tables(tmp_path, upstream.url)), metrics=recorder, access_log=True)
    await gateway.runtime.start()
    yield gateway
    await gateway.runtime.aclose()


async def call(app: Any, method: str, target: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
               body: bytes = b"") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        return await http.request(method, target, headers=headers, content=body)


def identity(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.lower().decode(): value.decode() for name, value in headers if name.lower().startswith(b"x-auth-")}


USER = {"sub": "user-1", "client_id": "client-1"}
# (what, method, target, token, the refusal enforce mode gives, the identity headers the upstream gets)
REFUSALS = [
    ("no token", "GET", "/api/things", None, (401, "unauthorized"), {}),
    ("bad token", "GET", "/api/things", "a.b.c", (401, "invalid_token"), {}),
    ("expired token", "GET", "/api/things", mint("things:read", lifetime=-60), (401, "invalid_token"), {}),
    # the effective scopes were worked out: they are what the upstream gets
    ("step-up", "POST", "/api/approvals", mint("approvals:write things:read"), (401, "insufficient_user_authentication"),
     {"x-auth-subject": "user-1", "x-auth-client": "client-1", "x-auth-scopes": "things:read"}),
    ("forbidden", "POST", "/api/things", mint("things:read"), (403, "forbidden"),
     {"x-auth-subject": "user-1", "x-auth-client": "client-1", "x-auth-scopes": "things:read"}),
    ("hidden", "GET", "/api/secret", mint("things:read"), (404, "not_found"),
     {"x-auth-subject": "user-1", "x-auth-client": "client-1", "x-auth-scopes": "things:read"}),
    # refused before any scope counted: who the token names, and no scopes
    ("invalid_scope", "GET", "/api/things", mint("a b things:read"), (403, "invalid_scope"),
     {"x-auth-subject": "user-1", "x-auth-client": "client-1"}),
    ("another user", "GET", "/api/users/user-2/email", mint("things:read"), (404, "not_found"),
     {"x-auth-subject": "user-1", "x-auth-client": "client-1"}),
    ("claims", "GET", "/api/orgs/O1/reports", mint("things:read", org_id="O2"), (404, "not_found"),
     {"x-auth-subject": "user-1", "x-auth-client": "client-1"}),
    # no route inside the prefix: the table's upstream gets the path after its prefix, and no token is verified
    ("no route", "GET", "/api/nowhere/x?q=1", mint("things:read"), (404, "not_found"), {}),
    ("no method", "DELETE", "/api/things", mint("things:write"), (404, "not_found"), {}),
]


@pytest.mark.parametrize(("what", "method", "target", "token", "refusal", "expected"), REFUSALS, ids=[case[0] for case in REFUSALS])
async def test_each_refusal_of_the_caller_is_forwarded_with_only_verified_identity_headers(
    tmp_path: Path, upstream: RecordingUpstream, what: str, method: str, target: str, token: str | None, refusal: tuple[int, str],
    expected: dict[str, str],
) -> None:
    headers = {**SPOOFED, **({"authorization": f"Bearer {token}"} if token else {})}
    for mode in ("enforce", "shadow"):
        table = TABLE.replace("mode: shadow", f"mode: {mode}")
        app = Gateway(load_config(write_tables(tmp_path, upstream.url, table)))
        await app.runtime.start()
        try:
            answer = await call(app, method, target, headers)
        finally:
            await app.runtime.aclose()
        if mode == "enforce":
            assert (answer.status_code, answer.json()["error"]) == refusal
            assert upstream.received == []
        else:
            assert (answer.status_code, answer.json()) == (200, {"ok": True})  # the upstream's answer
    [received] = upstream.received
    path, _, query = target.partition("?")
    assert received.target == f"/v3{path.removeprefix('/api')}{'?' + query if query else ''}".encode()
    assert received.method == method.encode()
    assert identity(received.headers) == expected


async def test_shadow_refusals_are_counted_and_logged_with_their_reason(app: Gateway, upstream: RecordingUpstream,
                                                                        recorder: metrics.Recorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway")
    forbidden_token = mint("things:read")
    assert (await call(app, "POST", "/api/things", {"authorization": f"Bearer {forbidden_token}"})).status_code == 200
    upstream.behaviour = answer(503)
    assert (await call(app, "GET", "/api/things")).status_code == 503  # the upstream's status is the label
    assert (await call(app, "GET", "/api/nowhere")).status_code == 503
    upstream.behaviour = answer(200)
    assert (await call(app, "GET", "/api/things", READ)).status_code == 200
    assert (await call(app, "GET", "/plain/things")).status_code == 401  # another table enforces
    recorder.flush()
    assert requests_total(samples(recorder.directory)) == {
        ("payments", "POST", "/things", "shadow_refuse", "200"): 1,
        ("payments", "GET", "/things", "shadow_refuse", "503"): 1,
        ("payments", "GET", "", "shadow_refuse", "503"): 1,
        ("payments", "GET", "/things", "forward", "200"): 1,
        ("plain", "GET", "/things", "refuse", "401"): 1,
    }
    lines = [record.fields for record in caplog.records if record.name == "gateway.access"]  # type: ignore[attr-defined]
    assert [(line["decision"], line["reason"], line["status"], line["api"], line["route"], line["subject"]) for line in lines] == [
        ("shadow_refuse", "forbidden", 200, "payments", "/things", "user-1"),
        ("shadow_refuse", "unauthorized", 503, "payments", "/things", None),
        ("shadow_refuse", "not_found", 503, "payments", None, None),
        ("forward", "forwarded", 200, "payments", "/things", "user-1"),
        ("refuse", "unauthorized", 401, "plain", "/things", None),
    ]
    said = [record for record in caplog.records if record.name == "gateway" and "shadow mode" in record.getMessage()]
    assert [record.levelno for record in said] == [logging.INFO] * 3
    first = said[0].getMessage()
    assert "POST /things" in first and "403 forbidden" in first and "requires things:write" in first
    assert "no route" in said[2].getMessage() and "404 not_found" in said[2].getMessage()
    assert not any(forbidden_token in record.getMessage() or forbidden_token in json.dumps(getattr(record, "fields", {}))
                   for record in caplog.records)


@pytest.mark.parametrize(("what", "method", "target", "headers", "status"), [
    ("ambiguous path", "GET", "/api/things%2Fx", {}, 400),
    ("dot segment", "GET", "/api/x/%2e%2e/things", {}, 400),
    ("two credentials", "GET", "/api/things", [("authorization", READ["authorization"])] * 2, 400),
    ("token in the query", "GET", "/api/things?access_token=abc", {}, 400),
    ("outside every prefix", "GET", "/elsewhere", {}, 404),
    ("no route of the enforcing table inside the shadow prefix", "GET", "/api/strict/nowhere", {}, 404),
    ("the enforcing table inside the shadow prefix", "GET", "/api/strict/things", {}, 401),
    ("the enforcing table elsewhere", "GET", "/plain/things", {}, 401),
    ("unreadable GraphQL", "POST", "/api/graphql", {**READ, "content-type": "application/json"}, 400),
], ids=lambda value: value if isinstance(value, str) and " " in value else None)
async def test_what_is_refused_for_the_request_or_by_another_table_stays_refused(
    app: Gateway, upstream: RecordingUpstream, what: str, method: str, target: str, headers: Any, status: int,
) -> None:
    answer = await call(app, method, target, headers, body=b"{not json" if "GraphQL" in what else b"")
    assert answer.status_code == status, answer.text
    assert upstream.received == []


async def raw(app: Gateway, **changes: Any) -> int:
    """The status of a request built by hand (what no client library sends), and whether the upstream got it."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/api/things", "raw_path": b"/api/things", "query_string": b"",
             "headers": [(b"host", b"gateway.test")], "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080), **changes}
    started: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])

    await app(scope, receive, send)
    return started[0]


@pytest.mark.parametrize(("what", "changes", "status"), [
    ("HTTP/2", {"http_version": "2"}, 505),
    ("too many fields", {"headers": [(b"host", b"gateway.test")] + [(b"x-pad", b"1")] * 200}, 431),
    ("target too long", {"path": "/api/" + "x" * 9000, "raw_path": b"/api/" + b"x" * 9000}, 414),
    ("two Host headers", {"headers": [(b"host", b"a.test"), (b"host", b"b.test")]}, 400),
    ("no Host", {"headers": []}, 400),
    ("a transfer coding", {"method": "POST", "headers": [(b"host", b"gateway.test"), (b"transfer-encoding", b"gzip")]}, 501),
], ids=lambda value: value if isinstance(value, str) else None)
async def test_head_and_framing_refusals_stay_enforced(app: Gateway, upstream: RecordingUpstream, what: str, changes: dict[str, Any],
                                                      status: int) -> None:
    assert await raw(app, **changes) == status
    assert upstream.received == []


async def test_a_grant_store_that_cannot_be_read_stays_503_and_a_missing_grant_is_forwarded(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    config = write_wallet(tmp_path, store=f"sqlite:///{gone}/grants.db")
    (tmp_path / "routes" / "wallet.yaml").write_text(WALLET_TABLE.replace("prefix: /w\n", "prefix: /w\nmode: shadow\n"))
    wallet = Wallet(config)
    await wallet.app.runtime.start()
    try:
        status, body, forwarded = await wallet.ask("GET /w/accounts/details", "accounts_details:read")
        assert (status, body["error"], forwarded) == (503, "temporarily_unavailable", False)
        gone.mkdir()
        await wallet.fresh()
        # readable now, and the client grant missing: 403 forbidden, which shadow mode forwards
        assert (await wallet.ask("GET /w/accounts/details", "accounts_details:read"))[::2] == (200, True)
    finally:
        await wallet.app.runtime.aclose()


async def test_a_graphql_field_refused_is_forwarded_as_sent_unfiltered(app: Gateway, upstream: RecordingUpstream) -> None:
    document = json.dumps({"query": "{ payments { id } status }"}).encode()
    answer = await call(app, "POST", "/api/graphql", {**READ, "content-type": "application/json"}, body=document)
    assert answer.status_code == 200
    [received] = upstream.received
    assert received.body == document  # as the client sent it: no field removed
    # the route allowed the token (authenticated): its effective scopes are what the upstream gets
    assert identity(received.headers) == {"x-auth-subject": "user-1", "x-auth-client": "client-1", "x-auth-scopes": "things:read"}


async def test_an_rfc_9728_document_under_a_shadow_prefix_is_still_served(tmp_path: Path, upstream: RecordingUpstream) -> None:
    table = TABLE.replace("prefix: /api\n", "prefix: /\nresource:\n  identifier: https://api.example.com/payments\n"
                                           "  authorization_servers: [https://auth.test]\n")
    app = Gateway(load_config(write_config(tmp_path, upstream=upstream.url, table=table)))
    await app.runtime.start()
    try:
        answer = await call(app, "GET", "/.well-known/oauth-protected-resource/payments")
        assert answer.status_code == 200 and answer.json()["resource"] == "https://api.example.com/payments"
        assert (await call(app, "GET", "/anything/else")).status_code == 200  # no route, under the prefix /: forwarded
        assert [received.target for received in upstream.received] == [b"/anything/else"]
    finally:
        await app.runtime.aclose()  # its upstream connection closed here, not by the collector in another test


@pytest.mark.parametrize("endpoint", ["nginx", "forward-auth", "envoy"])
async def test_decision_mode_allows_a_would_be_refusal_with_the_identity_headers(
    tmp_path: Path, endpoint: str, recorder: metrics.Recorder,
) -> None:
    table = TABLE.replace("  POST /graphql:", "  # POST /graphql:")  # decision mode serves no route that reads the body
    config = write_tables(tmp_path, "http://upstream.test", table)
    app = DecisionGateway(load_config(config, "decision"), metrics=recorder)
    await app.runtime.start()
    token = {"authorization": f"Bearer {mint('things:read')}"}
    try:
        for target, method, status, headers in [("/api/things", "POST", 200, {"x-auth-subject": "user-1", "x-auth-client": "client-1",
                                                                              "x-auth-scopes": "things:read"}),
                                                ("/api/nowhere", "GET", 200, {}),
                                                ("/plain/nowhere", "GET", 403 if endpoint == "nginx" else 404, {})]:
            if endpoint == "nginx":
                path, asked = "/nginx", {**token, "x-original-method": method, "x-original-uri": target}
            elif endpoint == "forward-auth":
                path, asked = "/forward-auth", {**token, "x-forwarded-method": method, "x-forwarded-uri": target}
            else:
                path, asked = "/envoy" + target, token
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://decide.test") as http:
                answer = await http.request("GET" if endpoint != "envoy" else method, path, headers=asked)
            assert answer.status_code == status
            assert {name: value for name, value in answer.headers.items() if name.startswith("x-auth-")
                    and name not in ("x-auth-status", "x-auth-error", "x-auth-error-description", "x-auth-refusal")} == headers
    finally:
        await app.runtime.aclose()
    recorder.flush()
    counted = requests_total(samples(recorder.directory))
    assert counted[("payments", "POST", "/things", "shadow_refuse", "200")] == 1
    assert counted[("payments", "GET", "", "shadow_refuse", "200")] == 1
    assert counted[("", "GET", "", "refuse", "403" if endpoint == "nginx" else "404")] == 1  # outside the shadow prefix


async def test_a_reload_flips_a_table_between_enforce_and_shadow(tmp_path: Path, upstream: RecordingUpstream) -> None:
    config = write_tables(tmp_path, upstream.url, TABLE.replace("mode: shadow", "mode: enforce"))
    app = Gateway(load_config(config))
    service = ServingReloads(app)
    await app.runtime.start()
    await service.start()
    try:
        assert (await call(app, "GET", "/api/things")).status_code == 401
        for mode, status in (("shadow", 200), ("enforce", 401), ("shadow", 200)):
            write_tables(tmp_path, upstream.url, TABLE.replace("mode: shadow", f"mode: {mode}"))
            assert (await service.reloader.reload()).result == SUCCESS
            assert (await call(app, "GET", "/api/things")).status_code == status
        assert len(upstream.received) == 2
    finally:
        await service.aclose()
        await app.runtime.aclose()


@pytest.mark.parametrize(("value", "message"), [
    ("shadows", "mode 'shadows' is not one of enforce, shadow"),
    ("Shadow", "mode 'Shadow' is not one of enforce, shadow"),
    ("true", "mode must be a non-empty string"),
    ("[shadow]", "mode must be a non-empty string"),
])
def test_an_unknown_mode_is_a_load_error_naming_file_and_line(tmp_path: Path, value: str, message: str) -> None:
    config = write_tables(tmp_path, "http://upstream.test", TABLE.replace("mode: shadow", f"mode: {value}"))
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert f"payments.yaml:4: {message}" in str(raised.value)


def test_enforce_is_the_default_and_check_warns_of_each_table_in_shadow_mode(tmp_path: Path) -> None:
    config = write_tables(tmp_path, "http://upstream.test")
    tables = load_config(config).tables
    assert [(api.name, api.shadow is not None) for api in tables.apis] == [("payments", True), ("plain", False), ("strict", False)]
    checked = cli("check", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stdout.splitlines() if "shadow mode" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"{tmp_path / 'routes' / 'payments.yaml'}:4: warning: table payments is in shadow mode")
    assert cli("check", "--config", str(config), "--strict").returncode == 1
    (tmp_path / "routes" / "payments.yaml").write_text(TABLE.replace("mode: shadow\n", "").replace("{upstream}", "http://u.test"))
    assert [api.shadow for api in load_config(config).tables.apis] == [None, None, None]
    assert "shadow" not in cli("check", "--config", str(config)).stdout


async def test_explain_says_what_enforce_mode_would_answer_and_that_it_is_forwarded(tmp_path: Path) -> None:
    config = load_config(write_tables(tmp_path, "http://upstream.test"))
    explanation = await explain(config, "POST", "/api/things", Caller(scopes="things:read"))
    assert explanation.refusal is None
    text = "\n".join(explanation.lines)
    assert "decision:  403 forbidden" in text
    assert "shadow:    table payments is in shadow mode" in text and "http://upstream.test/v3/things" in text
    nowhere = await explain(config, "GET", "/api/nowhere?x=1", Caller(scopes="things:read"))
    assert nowhere.refusal is None and "http://upstream.test/v3/nowhere?x=1" in nowhere.lines[-1]
