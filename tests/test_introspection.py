"""RFC 7662 introspection of opaque tokens, through the ASGI app; the endpoint mocked with respx
for the edges a real server does not show on demand (timeouts, size, broken answers). The real
server's behaviour is in tests/test_oidc_provider.py."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from gateway.app import Gateway
from gateway.loading import ConfigError, load_config
from tests.support import AUDIENCE, KEYS, mint, write_config

pytestmark = pytest.mark.anyio
IDP = "https://idp.internal"
URL = f"{IDP}/oauth/introspect"
SECRET = "s3cret: with & odd+chars"
TOKEN = "opaque-token-value_0123456789"
TABLE = """\
name: orgs
upstream: http://upstream.test:8080
issuers: [{issuers}]
routes:
  GET /orgs/{orgId}/reports: {scopes: reports:read, claims: {org_id: "{orgId}"}}
  GET /me: authenticated
"""


def config(tmp_path: Path, *, cache: float = 60, audience: bool = True, url: str = URL, issuers: str = IDP) -> Path:
    (tmp_path / "introspect.secret").write_text(SECRET + "\n")
    tokens = f"""\
tokens:
  issuers:
    - issuer: https://auth.test
      audience: {AUDIENCE}
      jwks_file: {KEYS / 'jwks.json'}
    - issuer: {IDP}
{f'      audience: {AUDIENCE}' if audience else ''}
      introspection:
        url: {url}
        client_id: gateway:one
        client_secret_file: introspect.secret
        cache: {cache}
  opaque: {IDP}
"""
    return write_config(tmp_path, table=TABLE.replace("{issuers}", issuers), tokens=tokens, proxy="proxy:\n  client: httpx\n")


def active(**members: Any) -> dict[str, Any]:
    return {"active": True, "scope": "reports:read", "client_id": "c1", "sub": "u1", "exp": int(time.time()) + 600,
            "aud": AUDIENCE, "org_id": "acme", "token_type": "Bearer", **members}


@pytest.fixture
def router() -> AsyncIterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="upstream.test").mock(return_value=httpx.Response(200, json={"upstream": True}))
        yield router


async def calls(app: Gateway, *requests: tuple[str, str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        return [await http.get(path, headers={"Authorization": f"Bearer {token}"}) for path, token in requests]


async def test_an_active_opaque_token_counts_as_its_answer_says(tmp_path: Path, router: respx.MockRouter) -> None:
    endpoint = router.post(URL).mock(return_value=httpx.Response(200, json=active()))
    ok, other_org = await calls(Gateway(load_config(config(tmp_path))), ("/orgs/acme/reports", TOKEN), ("/orgs/evil/reports", TOKEN))
    assert ok.status_code == 200 and other_org.status_code == 404
    request = endpoint.calls[0].request
    assert request.content == f"token={TOKEN}&token_type_hint=access_token".encode()
    # client_secret_basic: id and secret form-encoded, then Basic (RFC 6749 2.3.1)
    assert base64.b64decode(request.headers["authorization"].removeprefix("Basic ")) == b"gateway%3Aone:s3cret%3A+with+%26+odd%2Bchars"
    assert endpoint.call_count == 1  # the second request was answered from the cache


async def test_the_subject_and_client_reach_the_upstream(tmp_path: Path, router: respx.MockRouter) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, json=active()))
    upstream = router.routes[0]
    await calls(Gateway(load_config(config(tmp_path))), ("/me", TOKEN))
    forwarded = upstream.calls[0].request.headers
    assert forwarded["x-auth-subject"] == "u1" and forwarded["x-auth-client"] == "c1"


@pytest.mark.parametrize(("answer", "words"), [
    ({"active": False}, "not active"),
    (active(exp=int(time.time()) - 60), "expired"),
    (active(aud="another-api"), "audience"),
    (active(iss="https://elsewhere.example"), "issuer"),
    (active(token_type="DPoP"), "not a bearer access token"),
    (active(sub="u1\r\nX-Evil: 1"), "control characters"),
    (active(scope="a\tb"), "not a valid scope string"),
])
async def test_an_inactive_or_unfit_token_is_refused_as_invalid(tmp_path: Path, router: respx.MockRouter, answer: dict[str, Any], words: str) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, json=answer))
    [refused] = await calls(Gateway(load_config(config(tmp_path))), ("/orgs/acme/reports", TOKEN))
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    assert words in refused.json()["error_description"]
    assert not router.routes[0].called


async def test_without_an_audience_configured_aud_is_not_checked(tmp_path: Path, router: respx.MockRouter) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, json=active(aud="anything")))
    [ok] = await calls(Gateway(load_config(config(tmp_path, audience=False))), ("/me", TOKEN))
    assert ok.status_code == 200


def too_big() -> httpx.Response:
    return httpx.Response(200, content=b'{"active": true, "pad": "' + b"x" * 70_000 + b'"}')


def streamed_too_big() -> httpx.Response:
    # no Content-Length: the bound is kept while reading
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"active": true, "pad": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'
    return httpx.Response(200, content=chunks())


async def slow(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(30)
    return httpx.Response(200, json=active())


@pytest.mark.parametrize("behaviour", [
    httpx.Response(500, json={"error": "server_error"}),
    httpx.Response(401, json={"error": "invalid_client"}),
    httpx.Response(302, headers={"location": "https://elsewhere.example/"}),
    httpx.Response(200, content=b"<html>maintenance</html>"),
    httpx.Response(200, json=["active", True]),
    httpx.Response(200, json={"scope": "reports:read"}),  # no `active`
    httpx.Response(200, json={"active": "true"}),  # not a boolean
    httpx.Response(200, content=b'{"active": true', headers={"content-type": "application/json"}),
    httpx.Response(200, content=b"[" * 100_000),
    too_big(),
    streamed_too_big(),
    httpx.ConnectError("connection refused"),
    httpx.ReadTimeout("read timed out"),
    slow,
], ids=["500", "401", "redirect", "html", "list", "no-active", "string-active", "truncated", "deep", "over-64KiB", "over-64KiB-streamed",
        "refused", "read-timeout", "slower-than-5s"])
async def test_an_endpoint_that_cannot_answer_is_503_never_a_guess_and_never_cached(
    tmp_path: Path, router: respx.MockRouter, behaviour: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("gateway.introspection.TIMEOUT", 0.2)  # the 5 s bound, shortened
    asked = []

    async def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        if len(asked) > 1:
            return httpx.Response(200, json=active())
        if isinstance(behaviour, Exception):
            raise behaviour
        return await behaviour(request) if callable(behaviour) else behaviour

    router.post(URL).mock(side_effect=answer)
    app = Gateway(load_config(config(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="gateway.introspection"):
        failed, after = await calls(app, ("/orgs/acme/reports", TOKEN), ("/orgs/acme/reports", TOKEN))
    assert failed.status_code == 503 and failed.json()["error"] == "temporarily_unavailable"
    assert failed.headers["retry-after"] == "5"
    assert after.status_code == 200 and len(asked) == 2  # the failure was not remembered
    assert router.routes[0].call_count == 1
    assert TOKEN not in caplog.text and "s3cret" not in caplog.text and "introspection at" in caplog.text


async def test_answers_are_cached_by_a_hash_never_past_exp_nor_the_cache_time(tmp_path: Path, router: respx.MockRouter) -> None:
    now = time.time()
    endpoint = router.post(URL).mock(side_effect=[
        httpx.Response(200, json=active(exp=int(now) + 600)), httpx.Response(200, json={"active": False}),
        httpx.Response(200, json=active(exp=int(now) + 20)), httpx.Response(200, json={"active": False}),
    ])
    app = Gateway(load_config(config(tmp_path, cache=60)))
    introspector = app.runtime.authenticator.introspector
    assert introspector is not None
    clock = [now]
    introspector.clock = lambda: clock[0]
    assert [r.status_code for r in await calls(app, ("/me", TOKEN), ("/me", TOKEN))] == [200, 200]
    assert endpoint.call_count == 1 and TOKEN.encode() not in b"".join(introspector._cache)
    clock[0] = now + 61  # past the cache time: asked again, and the revocation is seen
    assert [r.status_code for r in await calls(app, ("/me", TOKEN))] == [401]
    other = TOKEN + "2"
    clock[0] = now
    assert [r.status_code for r in await calls(app, ("/me", other))] == [200]  # exp in 20 s: cached until then only
    clock[0] = now + 10
    assert [r.status_code for r in await calls(app, ("/me", other))] == [200]
    clock[0] = now + 21
    assert [r.status_code for r in await calls(app, ("/me", other))] == [401]
    assert endpoint.call_count == 4


async def test_the_cache_is_bounded(tmp_path: Path, router: respx.MockRouter) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, json=active()))
    app = Gateway(load_config(config(tmp_path)))
    introspector = app.runtime.authenticator.introspector
    assert introspector is not None
    introspector.cache_size = 3
    await calls(app, *[("/me", f"token-{index}") for index in range(10)])
    assert len(introspector._cache) == 3


async def test_jwts_are_never_introspected_and_opaque_tokens_never_verified_as_jwts(tmp_path: Path, router: respx.MockRouter) -> None:
    endpoint = router.post(URL).mock(return_value=httpx.Response(200, json=active()))
    app = Gateway(load_config(config(tmp_path, issuers=f"{IDP}, https://auth.test")))
    jwt_ok, forged_jwt, dotted = await calls(
        app, ("/me", mint("x")), ("/me", mint("x", kid="rsa-1", key="rsa-other")), ("/me", "a.b.c"),
    )
    assert jwt_ok.status_code == 200 and forged_jwt.status_code == 401
    assert dotted.status_code == 200  # not base64url JSON: opaque, so introspected
    assert endpoint.call_count == 1


async def test_the_table_allow_list_holds_for_opaque_tokens(tmp_path: Path, router: respx.MockRouter) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, json=active()))
    [refused] = await calls(Gateway(load_config(config(tmp_path, issuers="https://auth.test"))), ("/me", TOKEN))
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"


@pytest.mark.parametrize(("url", "words"), [
    ("http://idp.internal/introspect", "must be an https URL (http only on a loopback address)"),
    ("ftp://idp.internal/introspect", "must be an https URL"),
    ("https://user:pw@idp.internal/introspect", "must not carry credentials"),
])
def test_the_introspection_url_must_keep_the_secret_private(tmp_path: Path, url: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(config(tmp_path, url=url))
    assert any(words in str(problem) and ":10: " in str(problem) for problem in error.value.problems), error.value.problems


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/introspect", "http://[::1]:9/introspect", "http://localhost:9/introspect"])
def test_plain_http_is_allowed_on_loopback(tmp_path: Path, url: str) -> None:
    assert load_config(config(tmp_path, url=url)).identity.opaque == IDP


@pytest.mark.parametrize(("edit", "words"), [
    (lambda text: text.replace("  opaque: https://idp.internal\n", ""), "only the entry tokens.opaque names uses"),
    (lambda text: text.replace("  opaque: https://idp.internal", "  opaque: https://auth.test"), "has no introspection endpoint"),
    (lambda text: text.replace("  opaque: https://idp.internal", "  opaque: https://nobody.test"), "no entry of tokens.issuers"),
    (lambda text: text.replace("client_secret_file: introspect.secret", "client_secret_file: missing.secret"), "cannot read"),
    (lambda text: text.replace("        client_id: gateway:one\n", ""), "missing key 'client_id'"),
    (lambda text: text.replace("cache: 60", "cache: -1"), "must be a number >= 0"),
])
def test_broken_introspection_settings_are_refused(tmp_path: Path, edit: Any, words: str) -> None:
    path = config(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert any(words in str(problem) for problem in error.value.problems), error.value.problems


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "introspect.secret").write_text("\n")
    with pytest.raises(ConfigError, match="introspect.secret is empty"):
        load_config(path)


def test_the_secret_never_shows_in_the_settings(tmp_path: Path) -> None:
    assert SECRET not in repr(load_config(config(tmp_path)))
