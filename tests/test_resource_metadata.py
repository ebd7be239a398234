"""RFC 9728 protected-resource metadata: a table's `resource:` block served on the proxy port, its
URL in every 401 of that table (and no other answer), and the block's problems at load time."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from gateway.app import Gateway
from gateway.loading import ConfigError, load_config
from tests.processes import run
from tests.support import mint, write_config

pytestmark = pytest.mark.anyio

TABLE = """\
name: payments
upstream: http://upstream.test:8080
prefix: /api
resource:
  identifier: https://api.example.com/payments
  authorization_servers: [https://auth.test, https://login.example.com/tenant-1]
  documentation: https://docs.example.com/payments
scopes:
  things:read:
    description: Read things
  things:write:
    implies: [things:read]
  approvals:write:
    step_up: {acr: [sms], max_age: 300}
  id:{bank_id}:
rules:
  unknown_scopes: refuse
routes:
  GET /things: things:read
  POST /things: things:write
  POST /approvals: approvals:write
  GET /banks/{bankId}: "id:{bankId}"
  GET /status: public
"""
# a table without `resource:`: its answers are as they always were
PLAIN = "name: plain\nupstream: http://plain.test\nprefix: /plain\nroutes:\n  GET /things: things:read\n"
URL = "https://api.example.com/.well-known/oauth-protected-resource/payments"
DOCUMENT = {
    "resource": "https://api.example.com/payments",
    "authorization_servers": ["https://auth.test", "https://login.example.com/tenant-1"],
    "scopes_supported": ["things:read", "things:write", "approvals:write"],
    "bearer_methods_supported": ["header"],
    "resource_name": "payments",
    "resource_documentation": "https://docs.example.com/payments",
}


def _config(folder: Path, table: str = TABLE) -> Path:
    config = write_config(folder, table=table)
    (folder / "routes" / "plain.yaml").write_text(PLAIN)
    return config


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = Gateway(load_config(_config(tmp_path)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        yield http


async def test_the_document_is_served_with_exactly_its_members_to_anyone(client: httpx.AsyncClient) -> None:
    # the parameterised id:{bank_id} is a pattern, not a scope a client can ask for: not listed
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        answer = await client.get("/.well-known/oauth-protected-resource/payments", headers=headers)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert "www-authenticate" not in answer.headers
        assert json.loads(answer.content) == DOCUMENT
        assert list(json.loads(answer.content)) == list(DOCUMENT)  # in RFC 9728's order too
    head = await client.head("/.well-known/oauth-protected-resource/payments")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == answer.headers["content-length"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_other_methods_are_answered_as_an_unknown_path(client: httpx.AsyncClient, method: str) -> None:
    answer = await client.request(method, "/.well-known/oauth-protected-resource/payments")
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")


@pytest.mark.parametrize(("path", "status"), [
    ("/.well-known/oauth-protected-resource", 404),  # the identifier has a path: only the path's document exists
    ("/.well-known/oauth-protected-resource/payments/x", 404),
    ("/.well-known/oauth-protected-resource/Payments", 404),
    ("/.well-known/oauth-protected-resource/plain", 404),  # a table without `resource:` publishes nothing
    ("/.well-known/oauth-protected-resource/payments/", 400),  # a trailing slash is refused as on any path
    ("/.well-known/oauth-protected-resource/x/%2e%2e/payments", 400),
])
async def test_only_the_document_s_own_path_serves_it(client: httpx.AsyncClient, path: str, status: int) -> None:
    answer = await client.get(path)
    assert answer.status_code == status and "resource" not in answer.json()


# tokens are minted when the test runs, not when it is collected: a long run would outlive them
@pytest.mark.parametrize(("method", "path", "token", "error"), [
    ("GET", "/api/things", lambda: None, "unauthorized"),
    ("GET", "/api/things", lambda: "not-a-token", "invalid_token"),
    ("GET", "/api/things", lambda: mint("things:read", lifetime=-60), "invalid_token"),
    ("POST", "/api/approvals", lambda: mint("approvals:write"), "insufficient_user_authentication"),
    ("POST", "/api/approvals", lambda: mint("approvals:write", acr="sms", auth_time=int(time.time()) - 900), "insufficient_user_authentication"),
])
async def test_every_401_of_the_table_names_the_document(
    client: httpx.AsyncClient, method: str, path: str, token: Callable[[], str | None], error: str,
) -> None:
    bearer = token()
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    answer = await client.request(method, path, headers=headers)
    assert (answer.status_code, answer.json()["error"]) == (401, error)
    assert answer.headers["www-authenticate"].startswith('Bearer realm="payments"')
    assert answer.headers["www-authenticate"].endswith(f', resource_metadata="{URL}"')


@pytest.mark.parametrize(("method", "path", "token", "status", "error"), [
    ("POST", "/api/things", lambda: mint("things:read"), 403, "forbidden"),
    ("GET", "/api/banks/B2", lambda: mint("id:B1"), 403, "forbidden"),
    ("GET", "/api/things", lambda: mint("things:read bogus"), 403, "invalid_scope"),
    ("GET", "/api/things", lambda: "a b", 400, "invalid_request"),  # a challenge, but not a 401
])
async def test_no_other_answer_names_it(
    client: httpx.AsyncClient, method: str, path: str, token: Callable[[], str], status: int, error: str,
) -> None:
    answer = await client.request(method, path, headers={"Authorization": f"Bearer {token()}"})
    assert (answer.status_code, answer.json()["error"]) == (status, error)
    assert "www-authenticate" in answer.headers and "resource_metadata" not in answer.headers["www-authenticate"]


async def test_a_table_without_a_resource_block_names_none(client: httpx.AsyncClient) -> None:
    answer = await client.get("/plain/things")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="plain"'


@pytest.mark.parametrize("headers", [
    {"Host": "evil.example"},
    {"Host": "evil.example:8443", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http", "Forwarded": "host=evil.example"},
])
async def test_the_url_is_the_identifier_s_whatever_the_request_says(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    answer = await client.get("/api/things", headers=headers)
    assert answer.headers["www-authenticate"].endswith(f', resource_metadata="{URL}"')
    document = await client.get("/.well-known/oauth-protected-resource/payments", headers=headers)
    assert json.loads(document.content)["resource"] == DOCUMENT["resource"]


@pytest.mark.parametrize(("identifier", "path", "url"), [
    ("https://api.example.com", "/.well-known/oauth-protected-resource", "https://api.example.com/.well-known/oauth-protected-resource"),
    ("https://api.example.com/", "/.well-known/oauth-protected-resource", "https://api.example.com/.well-known/oauth-protected-resource"),
    ("https://API.example.com:8443/v1/pay/", "/.well-known/oauth-protected-resource/v1/pay",
     "https://API.example.com:8443/.well-known/oauth-protected-resource/v1/pay"),
])
async def test_the_path_follows_rfc_9728_section_3_1(tmp_path: Path, identifier: str, path: str, url: str) -> None:
    table = TABLE.replace("https://api.example.com/payments", identifier)
    app = Gateway(load_config(_config(tmp_path, table)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        document = await http.get(path)
        assert document.status_code == 200
        assert json.loads(document.content)["resource"] == identifier  # as written: clients compare it with what they asked
        answer = await http.get("/api/things")
        assert answer.headers["www-authenticate"].endswith(f', resource_metadata="{url}"')


async def test_without_a_catalog_the_scopes_are_those_the_routes_name(tmp_path: Path) -> None:
    table = ("name: bare\nupstream: http://bare.test\nprefix: /bare\nresource:\n  identifier: https://bare.example.com\n"
             "  authorization_servers: https://auth.test\nroutes:\n  GET /a: [[b, a]]\n  GET /b: [c, a]\n  GET /c: authenticated\n")
    app = Gateway(load_config(write_config(tmp_path, table=table)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        document = json.loads((await http.get("/.well-known/oauth-protected-resource")).content)
    assert document == {"resource": "https://bare.example.com", "authorization_servers": ["https://auth.test"],
                        "scopes_supported": ["a", "b", "c"], "bearer_methods_supported": ["header"], "resource_name": "bare"}


def _problems(folder: Path, block: str, extra: dict[str, str] | None = None) -> list[str]:
    table = TABLE.replace(TABLE[TABLE.index("resource:"):TABLE.index("scopes:")], block)
    config = _config(folder, table)
    for name, text in (extra or {}).items():
        (folder / "routes" / name).write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize(("block", "line", "words"), [
    ("resource:\n  identifier: http://api.example.com/p\n  authorization_servers: [https://a.test]\n", 5, "must use https"),
    ("resource:\n  identifier: https://api.example.com/p#top\n  authorization_servers: [https://a.test]\n", 5, "must not have a fragment"),
    ("resource:\n  identifier: https://api.example.com/p#\n  authorization_servers: [https://a.test]\n", 5, "must not have a fragment"),
    ("resource:\n  identifier: https://api.example.com/p?v=1\n  authorization_servers: [https://a.test]\n", 5, "must not have a query"),
    ("resource:\n  identifier: https://u:p@api.example.com/p\n  authorization_servers: [https://a.test]\n", 5, "must not carry credentials"),
    ("resource:\n  identifier: https://api.example.com:99999/p\n  authorization_servers: [https://a.test]\n", 5, "is not a URL"),
    ("resource:\n  identifier: /payments\n  authorization_servers: [https://a.test]\n", 5, "absolute URL with a host"),
    ("resource:\n  identifier: https://api.example.com/a%2Fb\n  authorization_servers: [https://a.test]\n", 5, "is one the gateway refuses"),
    ("resource:\n  identifier: https://api.example.com/a//b\n  authorization_servers: [https://a.test]\n", 5, "is one the gateway refuses"),
    ("resource:\n  identifier: https://api.example.com/pé\n  authorization_servers: [https://a.test]\n", 5, "must be ASCII"),
    ("resource:\n  identifier: https://api.example.com/p\n", 5, "missing key 'authorization_servers'"),
    ("resource:\n  authorization_servers: [https://a.test]\n", 5, "missing key 'identifier'"),
    ("resource:\n  identifier: https://api.example.com/p\n  authorization_servers: [http://a.test]\n", 6, "https:// issuer URL"),
    ("resource:\n  identifier: https://api.example.com/p\n  authorization_servers: ['https://a.test?x=1']\n", 6, "without query or fragment"),
    ("resource:\n  identifier: https://api.example.com/p\n  authorization_servers: []\n", 6, "non-empty list"),
    ("resource:\n  identifier: https://api.example.com/p\n  authorization_servers: [https://a.test]\n  documentation: ftp://d.test\n", 7,
     "documentation must be an http"),
    ("resource:\n  identifier: https://api.example.com/p\n  authorization_servers: [https://a.test]\n  scopes_supported: [a]\n", 7,
     "unknown key 'scopes_supported'"),
    ("resource: https://api.example.com/p\n", 4, "resource must be a mapping"),
])
def test_a_wrong_block_is_a_problem_at_its_line(tmp_path: Path, block: str, line: int, words: str) -> None:
    problems = _problems(tmp_path, block)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'routes' / 'payments.yaml'}:{line}: ") and words in problems[0], problems


def test_two_tables_publishing_at_one_path_is_a_problem(tmp_path: Path) -> None:
    # the same path from another identifier's origin: one proxy port cannot serve both documents
    other = PLAIN + "resource:\n  identifier: https://other.example.com/payments/\n  authorization_servers: [https://a.test]\n"
    problems = _problems(tmp_path, TABLE[TABLE.index("resource:"):TABLE.index("scopes:")], {"plain.yaml": other})
    assert problems == [(f"{tmp_path / 'routes' / 'plain.yaml'}:7: resource: metadata path /.well-known/oauth-protected-resource/payments "
                         f"is table payments's too ({tmp_path / 'routes' / 'payments.yaml'}:5)")]


@pytest.mark.parametrize("route", ["GET /.well-known/oauth-protected-resource/payments", "POST /{a}/{b}/payments", "GET /{a}/{b}/{c}"])
def test_a_route_matching_the_metadata_path_is_a_problem(tmp_path: Path, route: str) -> None:
    wide = f"name: wide\nupstream: http://wide.test\nroutes:\n  {route}: public\n"
    problems = _problems(tmp_path, TABLE[TABLE.index("resource:"):TABLE.index("scopes:")], {"wide.yaml": wide})
    assert problems == [(f"{tmp_path / 'routes' / 'payments.yaml'}:5: resource: metadata path /.well-known/oauth-protected-resource/payments "
                         f"is matched by route {route} of table wide ({tmp_path / 'routes' / 'wide.yaml'}:4)")]


def test_gateway_check_names_the_problem_and_explain_shows_the_challenge(tmp_path: Path) -> None:
    config = _config(tmp_path, TABLE.replace("https://api.example.com/payments", "http://api.example.com/payments"))
    result = run("check", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout.strip() == (f"{tmp_path / 'routes' / 'payments.yaml'}:5: resource: identifier 'http://api.example.com/payments' "
                                     "must use https (RFC 9728 1.2)")
    _config(tmp_path)
    assert run("check", "--config", str(config)).returncode == 0
    explained = run("explain", "--config", str(config), "GET", "/api/things")
    assert f'resource_metadata="{URL}"' in explained.stdout


async def test_the_access_line_counts_a_document_as_served_not_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.access")
    app = Gateway(load_config(_config(tmp_path)), access_log=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        await http.get("/.well-known/oauth-protected-resource/payments")
        await http.post("/.well-known/oauth-protected-resource/payments")
    served, refused = (record.fields for record in caplog.records if record.name == "gateway.access")  # type: ignore[attr-defined]
    assert (served["decision"], served["reason"], served["status"]) == ("metadata", "protected_resource_metadata", 200)
    assert (refused["decision"], refused["reason"], refused["status"]) == ("refuse", "not_found", 404)
