"""Several identity providers (`tokens.issuers`): each token is checked with its own issuer's keys
and rules alone, whatever its `kid`; a table's `issuers:` allow-list. Driven through the ASGI app."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx

from gateway.app import Gateway
from gateway.cli import main
from gateway.loading import ConfigError, load_config
from tests.support import AUDIENCE, KEYS, mint, private_key, write_config

pytestmark = pytest.mark.anyio
UPSTREAM = "http://upstream.test:8080"
A = "https://a.example"
B = "https://b.example"
TABLE = """\
name: payments
upstream: {upstream}
{head}routes:
  GET /things: things:read
  GET /me: authenticated
"""


def jwks(tmp_path: Path, name: str, key: str, kid: str) -> Path:
    """A JWKS file holding the public half of tests/keys/`key`.pem under `kid`."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key(key).public_key()))
    path = tmp_path / f"{name}.jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}))
    return path


def two_issuers(tmp_path: Path, *, head: str = "", extra: str = "") -> Path:
    """Issuer A trusts tests/keys/rsa.pem, issuer B tests/keys/rsa-other.pem: both under kid `k1`."""
    tokens = f"""\
tokens:
  issuers:
    - issuer: {A}
      audience: {AUDIENCE}
      jwks_file: {jwks(tmp_path, 'a', 'rsa', 'k1')}
    - issuer: {B}
      audience: {AUDIENCE}
      jwks_file: {jwks(tmp_path, 'b', 'rsa-other', 'k1')}
      scope_claims: [scp]
{extra}"""
    return write_config(tmp_path, upstream=f"{UPSTREAM}/v3", table=TABLE.replace("{head}", head), tokens=tokens, proxy="proxy:\n  client: httpx\n")


def token(issuer: str, key: str, scope: str | None = None, **claims: Any) -> dict[str, str]:
    """A token naming `issuer`, signed with tests/keys/`key`.pem under kid `k1`; its scopes in
    the claim the issuer reads (A: `scope`, B: `scp`) unless given."""
    if scope is None and issuer != A:
        claims.setdefault("scp", "things:read")
    elif scope is None:
        scope = "things:read"
    return {"Authorization": f"Bearer {mint(scope, key=key, kid='k1', iss=issuer, **claims)}"}


@pytest.fixture
def upstream() -> AsyncIterator[respx.Route]:
    with respx.mock(assert_all_called=False) as router:
        yield router.route(host="upstream.test").mock(return_value=httpx.Response(200, json={"upstream": True}))


async def call(config: Path, headers: dict[str, str], path: str = "/things") -> httpx.Response:
    app = Gateway(load_config(config))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        return await http.get(path, headers=headers)


async def test_each_issuer_s_tokens_are_accepted_with_its_own_keys_and_rules(tmp_path: Path, upstream: respx.Route) -> None:
    config = two_issuers(tmp_path)
    assert (await call(config, token(A, "rsa"))).status_code == 200
    assert (await call(config, token(B, "rsa-other"))).status_code == 200
    # B's scopes come from `scp` alone (its scope_claims): a `scope` claim grants nothing there
    refused = await call(config, token(B, "rsa-other", scope="things:read"))
    assert refused.status_code == 403
    assert upstream.call_count == 2


@pytest.mark.parametrize(("issuer", "key", "words"), [
    (A, "rsa-other", "signature verification failed"),  # B's key, B's kid, but naming A
    (B, "rsa", "signature verification failed"),  # and the other way round
    ("https://c.example", "rsa", "is not one this gateway trusts"),
    (A + "/", "rsa", "is not one this gateway trusts"),  # no lookalike issuer
])
async def test_a_key_of_one_issuer_never_verifies_a_token_naming_another(
    tmp_path: Path, upstream: respx.Route, issuer: str, key: str, words: str,
) -> None:
    answer = await call(two_issuers(tmp_path), token(issuer, key))
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
    assert words in answer.json()["error_description"]
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert not upstream.called


@pytest.mark.parametrize("iss", [None, 42, ["https://a.example"]])
async def test_a_token_without_a_string_iss_is_refused_when_several_issuers_are_trusted(tmp_path: Path, upstream: respx.Route, iss: Any) -> None:
    claims = {"aud": AUDIENCE, "exp": time.time() + 60, "scope": "things:read", **({} if iss is None else {"iss": iss})}
    signed = jwt.api_jws.PyJWS().encode(json.dumps(claims).encode(), private_key("rsa"), "RS256", {"kid": "k1"})  # A's key
    headers = {"Authorization": f"Bearer {signed}"}
    answer = await call(two_issuers(tmp_path), headers)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
    assert not upstream.called


async def test_a_table_accepts_only_the_issuers_it_lists(tmp_path: Path, upstream: respx.Route) -> None:
    config = two_issuers(tmp_path, head=f"issuers: [{B}]\n")
    refused = await call(config, token(A, "rsa"))
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    assert f"accepts tokens of {B} only" in refused.json()["error_description"]
    # whatever the route asks: an `authenticated` route too
    assert (await call(config, token(A, "rsa"), "/me")).status_code == 401
    assert (await call(config, token(B, "rsa-other"))).status_code == 200
    assert upstream.call_count == 1


async def test_the_allow_list_holds_for_a_remembered_token_too(tmp_path: Path, upstream: respx.Route) -> None:
    app = Gateway(load_config(two_issuers(tmp_path, head=f"issuers: [{B}]\n")))
    foreign, own = token(A, "rsa"), token(B, "rsa-other")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        answers = [(await http.get("/things", headers=headers)).status_code for _ in range(3) for headers in (foreign, own)]
    assert answers == [401, 200] * 3 and upstream.call_count == 3


async def test_the_cache_remembers_which_issuer_vouched(tmp_path: Path) -> None:
    app = Gateway(load_config(two_issuers(tmp_path)))
    authenticator = app.runtime.authenticator
    for issuer, key in ((A, "rsa"), (B, "rsa-other")):
        header = [token(issuer, key)["Authorization"].encode()]
        first = await authenticator.authenticate(header, b"")
        again = authenticator.recall(header, b"")
        assert first.issuer == issuer and again is not None and again.recalled and again.issuer == issuer


def test_a_table_naming_an_unknown_issuer_is_a_load_error_at_its_line(tmp_path: Path) -> None:
    config = two_issuers(tmp_path, head=f"issuers:\n  - {B}\n  - https://c.example\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert [str(problem) for problem in error.value.problems] == [
        f"{tmp_path / 'routes' / 'payments.yaml'}:5: issuers: 'https://c.example' is not an issuer of gateway.yaml's tokens (known: {A}, {B})"
    ]


@pytest.mark.parametrize(("tokens", "line", "words"), [
    ("tokens:\n  issuers:\n    - audience: x\n      jwks_file: {jwks}\n", 4, "each entry names its issuer"),
    ("tokens:\n  issuers:\n    - issuer: {a}\n      jwks_file: {jwks}\n    - issuer: {a}\n      jwks_file: {jwks}\n", 6, "is already the entry at line 4"),
    ("tokens:\n  issuers: []\n", 3, "non-empty list"),
    ("tokens:\n  leeway: 5\n  issuers:\n    - issuer: {a}\n      jwks_file: {jwks}\n", 3, "tokens.leeway: with tokens.issuers, set leeway in each issuer's entry"),
    ("tokens:\n  issuers:\n    - issuer: {a}\n      cache_size: 5\n      jwks_file: {jwks}\n", 5, "unknown key 'cache_size'"),
    ("tokens:\n  issuers:\n    - issuer: {a}\n      algorithms: [none]\n      jwks_file: {jwks}\n", 5, "tokens.issuers[0].algorithms: 'none' is never accepted"),
    ("tokens:\n  issuers:\n    - issuer: {a}\n      jwks_file: {jwks}\n    - issuer: {b}\n", 6, "no key is configured"),
])
def test_broken_issuer_lists_name_the_line(tmp_path: Path, tokens: str, line: int, words: str) -> None:
    text = tokens.format(a=A, b=B, jwks=jwks(tmp_path, "a", "rsa", "k1"))
    config = write_config(tmp_path, table=TABLE.replace("{head}", ""), tokens=text)
    with pytest.raises(ConfigError) as error:
        load_config(config)
    shown = [str(problem) for problem in error.value.problems]
    assert any(message.startswith(f"{config}:{line}: ") and words in message for message in shown), shown


def test_the_single_form_is_a_one_entry_list(tmp_path: Path) -> None:
    loaded = load_config(write_config(tmp_path, table=TABLE.replace("{head}", ""), tokens=f"tokens:\n  jwks_file: {KEYS / 'jwks.json'}\n  leeway: 7\n"))
    assert loaded.identity.entries == (loaded.tokens,) and loaded.tokens.issuer is None and loaded.tokens.leeway == 7


async def test_each_issuer_s_jwks_is_fetched_and_refetched_on_its_own(tmp_path: Path) -> None:
    a_keys = json.loads(jwks(tmp_path, "a", "rsa", "k1").read_text())
    b_keys = json.loads(jwks(tmp_path, "b", "rsa-other", "k1").read_text())
    b_rotated = {"keys": [{**b_keys["keys"][0], "kid": "k2"}]}
    tokens = f"""\
tokens:
  issuers:
    - issuer: {A}
      jwks_url: https://a.example/jwks
    - issuer: {B}
      jwks_url: https://b.example/jwks
      jwks_refetch_interval: 0
      scope_claims: [scp]
"""
    config = write_config(tmp_path, upstream=f"{UPSTREAM}/v3", table=TABLE.replace("{head}", ""), tokens=tokens, proxy="proxy:\n  client: httpx\n")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="upstream.test").mock(return_value=httpx.Response(200))
        a_endpoint = router.get("https://a.example/jwks").mock(return_value=httpx.Response(200, json=a_keys))
        b_endpoint = router.get("https://b.example/jwks").mock(side_effect=[httpx.Response(200, json=b_keys), httpx.Response(200, json=b_rotated)])
        app = Gateway(load_config(config))
        await app.runtime.start()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
            assert (await http.get("/things", headers=token(A, "rsa"))).status_code == 200
            # B rotates to k2: only B's JWKS is fetched again, and A's tokens stay valid
            rotated = {"Authorization": f"Bearer {mint(None, key='rsa-other', kid='k2', iss=B, scp='things:read')}"}
            assert (await http.get("/things", headers=rotated)).status_code == 200
            assert (await http.get("/things", headers=token(A, "rsa"))).status_code == 200
        await app.runtime.aclose()
    assert (a_endpoint.call_count, b_endpoint.call_count) == (1, 2)


def test_explain_verifies_with_the_token_s_own_issuer_and_judges_the_allow_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(two_issuers(tmp_path, head=f"issuers: [{B}]\n"))
    assert main(["explain", "--config", config, "GET", "/things", "--token", token(B, "rsa-other")["Authorization"][7:]]) == 0
    shown = capsys.readouterr().out
    assert f"iss={B}" in shown and "from claim 'scp' (tokens.scope_claims)" in shown
    assert main(["explain", "--config", config, "GET", "/things", "--token", token(A, "rsa")["Authorization"][7:]]) == 1
    assert f"401 invalid_token: payments accepts tokens of {B} only" in capsys.readouterr().out
    assert main(["explain", "--config", config, "GET", "/things", "--token", token(A, "rsa-other")["Authorization"][7:]]) == 1
    assert "401 invalid_token: signature verification failed" in capsys.readouterr().out
