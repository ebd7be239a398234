"""The admin listener (docs/admin-api.md): grants and conditions over HTTP on a real SQLite
store, its token, its errors, and beside a real `gateway serve`."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.admin import AdminApp
from gateway.grants.sqlite import SQLiteStore
from gateway.loading import ConfigError, load_config
from tests.support import ADMIN_AUTH as AUTH
from tests.support import ADMIN_TOKEN as TOKEN
from tests.support import GatewayProcess, RecordingUpstream, eventually, mint, with_admin
from tests.support import write_wallet as write

pytestmark = pytest.mark.anyio


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = load_config(with_admin(write(tmp_path)))
    app = AdminApp(config, SQLiteStore(tmp_path / "grants.db"), TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as client:
        yield client
    assert app.store is not None
    await app.store.aclose()


async def test_health_needs_no_token_and_everything_else_does(admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/healthz")).json() == {"status": "serving"}
    ready = await admin.get("/readyz")
    assert ready.status_code == 200 and ready.json()["grant_store"] == "reachable"
    for headers in ({}, {"authorization": "Bearer wrong-token-0123456789abcdef"}, {"authorization": TOKEN}):
        refused = await admin.get("/grants", headers=headers)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


async def test_grants_and_conditions_over_http(admin: httpx.AsyncClient) -> None:
    put = await admin.put("/grants/wallet/app/accounts_details:read", headers=AUTH)
    assert put.status_code == 200 and put.json() == {"api": "wallet", "client": "app", "subject": None, "scope": "accounts_details:read", "expires_at": None}
    # segments are percent-encoded: a client id with '/' and a subject with ':' and a space
    user = await admin.put("/grants/wallet/team%2Fapp/users/ana%3A1%20b/balance_offline", headers=AUTH, json={"expires_at": "2099-01-01T00:00:00Z"})
    assert user.status_code == 200 and user.json()["subject"] == "ana:1 b" and user.json()["client"] == "team/app"
    assert (await admin.put("/conditions/wallet/ana/phone", headers=AUTH)).status_code == 200
    listed = (await admin.get("/grants", headers=AUTH, params={"api": "wallet"})).json()
    assert listed == {
        "grants": [
            {"api": "wallet", "client": "app", "subject": None, "scope": "accounts_details:read", "expires_at": None},
            {"api": "wallet", "client": "team/app", "subject": "ana:1 b", "scope": "balance_offline", "expires_at": "2099-01-01T00:00:00Z"},
        ],
        "conditions": [{"api": "wallet", "subject": "ana", "scope": "phone"}],
    }
    assert (await admin.get("/grants", headers=AUTH, params={"client": "team/app"})).json()["grants"][0]["scope"] == "balance_offline"
    assert (await admin.delete("/grants/wallet/app/accounts_details:read", headers=AUTH)).status_code == 204
    missing = await admin.delete("/grants/wallet/app/accounts_details:read", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert (await admin.delete("/conditions/wallet/ana/phone", headers=AUTH)).status_code == 204
    assert (await admin.delete("/conditions/wallet/ana/phone", headers=AUTH)).status_code == 404


@pytest.mark.parametrize(("method", "path", "body", "words"), [
    ("PUT", "/grants/nope/app/balance", None, "no route table is named 'nope'"),
    ("PUT", "/grants/wallet/app/balance_optional", None, "neither a scope of this API's catalog"),
    ("PUT", "/grants/wallet/app/balance", b"{not json", "the body is not JSON"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires": 1}', 'the body is {"expires_at"'),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": 1893456000}', "must be an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": "soon"}', "is not an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": "2099-01-01T00:00:00"}', "has no time zone"),
    ("PUT", "/grants/wallet/app/balance", b"x" * 70_000, "larger than 65536 bytes"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": "10000-01-01T00:00:00Z"}', "is not an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": "+10000-01-01T00:00:00Z"}', "is not an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": "9999-12-31T23:00:00-05:00"}', "outside years 1 to 9999"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": "0001-01-01T00:30:00+01:00"}', "outside years 1 to 9999"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": "2026-01-01T00:00:00+99:00"}', "is not an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": true}', "must be an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": NaN}', "must be an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": 1e999}', "must be an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/balance", b'{"expires_at": ["2099-01-01T00:00:00Z"]}', "must be an RFC 3339 time"),
    ("PUT", "/grants/wallet/app/users/ana/balance_offline", b'{"expires_at": "9999-12-31T23:59:59-00:01"}', "outside years 1 to 9999"),
    ("GET", "/grants?api=nope", None, "no route table is named 'nope'"),
    ("GET", "/grants?owner=x", None, "unknown query parameters: owner"),
])
async def test_bad_requests_answer_400(admin: httpx.AsyncClient, method: str, path: str, body: bytes | None, words: str) -> None:
    answer = await admin.request(method, path, headers=AUTH, content=body)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"
    assert words in answer.json()["error_description"]


@pytest.mark.parametrize(("method", "path", "words"), [
    ("PUT", "/grants/wallet//balance", "empty path segment"),
    ("DELETE", "/grants/wallet//balance", "empty path segment"),
    ("PUT", "/grants//app/balance", "empty path segment"),
    ("PUT", "/grants/wallet/app/users//balance", "empty path segment"),  # never a client grant of 'users'
    ("DELETE", "/grants/wallet/app/users//balance", "empty path segment"),
    ("PUT", "/grants/wallet/app/balance/", "empty path segment"),
    ("PUT", "/grants/wallet/app/users/ana/balance_offline/", "empty path segment"),
    ("PUT", "//grants/wallet/app/balance", "empty path segment"),
    ("PUT", "/conditions/wallet//phone", "empty path segment"),
    ("DELETE", "/conditions/wallet//phone", "empty path segment"),
    ("GET", "/grants/", "empty path segment"),
    ("PUT", "/grants/wallet/%FF/balance", "not UTF-8"),
    ("PUT", "/grants/wallet/%FE/balance", "not UTF-8"),
    ("PUT", "/grants/wallet/app/users/%FF/balance_offline", "not UTF-8"),
    ("PUT", "/grants/wallet/app/users/%C3/balance_offline", "not UTF-8"),  # a cut-off sequence
    ("PUT", "/conditions/wallet/%FF/phone", "not UTF-8"),
    ("DELETE", "/grants/wallet/%FE/balance", "not UTF-8"),
    ("PUT", "/grants/wallet/app%0A/balance", "control characters"),
    ("PUT", "/grants/wallet/app/users/ana%00/balance_offline", "control characters"),
    ("PUT", "/conditions/wallet/ana%E2%80%A8/phone", "control characters"),
    ("PUT", "/grants/wallet/%G1/balance", "malformed percent-escape"),
    ("PUT", "/grants/wallet/app%/balance", "malformed percent-escape"),
    ("GET", "/grants?client=%FF", "not UTF-8"),
    ("GET", "/grants?subject=%FE", "not UTF-8"),
    ("GET", "/grants?%FF=x", "not UTF-8"),
    ("GET", "/grants?client=", "query parameter client is empty"),
    ("GET", "/grants?subject", "query parameter subject is empty"),
    ("GET", "/grants?api=", "query parameter api is empty"),
    ("GET", "/grants?client=a&client=b", "given twice"),
])
async def test_empty_segments_and_bytes_that_are_not_utf8_are_refused(admin: httpx.AsyncClient, method: str, path: str, words: str) -> None:
    answer = await admin.request(method, httpx.URL("http://admin.test" + path), headers=AUTH)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", answer.text
    assert words in answer.json()["error_description"]
    assert (await admin.get("/grants", headers=AUTH)).json() == {"grants": [], "conditions": []}  # nothing stored


async def test_an_encoded_slash_stays_inside_its_segment(admin: httpx.AsyncClient) -> None:
    put = await admin.put(httpx.URL("/grants/wallet/team%2Fapp/users/ana%2F1/balance_offline"), headers=AUTH)
    assert put.status_code == 200 and (put.json()["client"], put.json()["subject"]) == ("team/app", "ana/1")
    # a %FF and a %FE never meet as one U+FFFD: a real UTF-8 name round-trips
    assert (await admin.put(httpx.URL("/grants/wallet/%C3%A9quipe/balance"), headers=AUTH)).json()["client"] == "équipe"
    listed = (await admin.get(httpx.URL("/grants?client=team%2Fapp"), headers=AUTH)).json()["grants"]
    assert [(g["client"], g["subject"]) for g in listed] == [("team/app", "ana/1")]
    assert (await admin.delete(httpx.URL("/grants/wallet/team%2Fapp/users/ana%2F1/balance_offline"), headers=AUTH)).status_code == 204
    # the unencoded form is another path: five segments, no such admin path
    assert (await admin.put(httpx.URL("/grants/wallet/team/app/balance"), headers=AUTH)).status_code == 404


async def test_a_wrong_method_on_a_known_path_is_404_as_an_unknown_path(admin: httpx.AsyncClient) -> None:
    for method, path in (("POST", "/grants/wallet/app/balance"), ("PATCH", "/conditions/wallet/ana/phone"), ("DELETE", "/grants"),
                         ("GET", "/reload"), ("POST", "/healthz")):
        answer = await admin.request(method, path, headers=AUTH)
        assert answer.status_code == 404 and answer.json()["error"] == "not_found" and "allow" not in answer.headers
    assert (await admin.head("/healthz")).status_code == 200


async def test_the_last_second_of_year_9999_is_kept_and_read_back(admin: httpx.AsyncClient) -> None:
    for when in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59+00:00"):
        put = await admin.put("/grants/wallet/app/balance", headers=AUTH, json={"expires_at": when})
        assert put.status_code == 200 and put.json()["expires_at"] == when.replace("+00:00", "Z")
        assert (await admin.get("/grants", headers=AUTH)).json()["grants"][0]["expires_at"] == when.replace("+00:00", "Z")


async def test_unknown_paths_are_404(admin: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/grants/wallet"), ("POST", "/grants/wallet/app/balance"), ("PUT", "/grants/wallet/app/people/ana/balance"), ("GET", "/")):
        assert (await admin.request(method, path, headers=AUTH)).status_code == 404


async def test_readyz_says_when_the_store_cannot_be_read(tmp_path: Path) -> None:
    config = load_config(with_admin(write(tmp_path)))
    app = AdminApp(config, SQLiteStore(tmp_path / "missing" / "grants.db"), TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "unreadable" in ready.json()["grant_store"]
        assert (await client.put("/grants/wallet/app/balance", headers=AUTH)).status_code == 503


@pytest.mark.parametrize(("admin_yaml", "words"), [
    ("admin:\n  listen: 127.0.0.1:9901\n", "admin.listen needs admin.token_file"),
    ("admin:\n  listen: localhost\n  token_file: admin.token\n", "admin.listen must be host:port"),
    ("admin:\n  listen: 127.0.0.1:9901\n  token_file: short.token\n", "at least 16 are required"),
])
def test_admin_settings_are_checked(tmp_path: Path, admin_yaml: str, words: str) -> None:
    config = write(tmp_path)
    (tmp_path / "admin.token").write_text(TOKEN)
    (tmp_path / "short.token").write_text("short")
    config.write_text(config.read_text() + admin_yaml)
    with pytest.raises(ConfigError, match=words):
        load_config(config)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_a_grant_put_through_the_admin_listener_lets_the_next_request_through(tmp_path: Path, server: str) -> None:
    upstream = RecordingUpstream()
    admin_port = _free_port()
    config = with_admin(write(tmp_path), admin_port)
    config.write_text(config.read_text().replace("http://wallet.test", upstream.url).replace("client: httpx", "client: pool"))
    (tmp_path / "routes" / "wallet.yaml").write_text((tmp_path / "routes" / "wallet.yaml").read_text().replace("http://wallet.test", upstream.url))
    gateway = GatewayProcess(config, server)
    try:
        token = {"authorization": f"Bearer {mint('accounts_details:read', lifetime=600, sub='ana', client_id='app')}"}
        proxy = f"http://127.0.0.1:{gateway.port}/w/accounts/details"
        assert httpx.get(proxy, headers=token).status_code == 403
        assert httpx.put(f"http://127.0.0.1:{admin_port}/grants/wallet/app/accounts_details:read", headers=AUTH).status_code == 200
        eventually(lambda: httpx.get(proxy, headers=token).status_code == 200, what="the grant seen")  # refresh is 0.1 s
        assert len(upstream.received) == 1  # refused requests never reach it
        # the admin API is never on the proxy's port
        assert httpx.get(f"http://127.0.0.1:{gateway.port}/grants", headers=AUTH).status_code == 404
        # the raw path decides under each server: an empty segment and a %FF never reach the store
        for path in ("/grants/wallet//accounts_details:read", "/grants/wallet/%FF/accounts_details:read",
                     "/grants/wallet/app/users//accounts_details:read"):
            answer = httpx.put(httpx.URL(f"http://127.0.0.1:{admin_port}{path}"), headers=AUTH)
            assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", (path, answer.text)
        encoded = httpx.put(httpx.URL(f"http://127.0.0.1:{admin_port}/grants/wallet/a%2Fb/accounts_details:read"), headers=AUTH)
        assert encoded.status_code == 200 and encoded.json()["client"] == "a/b"
        listed = httpx.get(f"http://127.0.0.1:{admin_port}/grants", headers=AUTH).json()["grants"]
        assert sorted(g["client"] for g in listed) == ["a/b", "app"]
    finally:
        gateway.close()
        upstream.close()
    with pytest.raises(OSError):  # the admin listener stops with the gateway
        socket.create_connection(("127.0.0.1", admin_port), timeout=1).close()
