"""The engine of `gateway test` and the pytest plugin: the real app of a config, its key source
replaced by a throwaway key (verification itself unchanged), every upstream mocked by respx, and
a fresh grant store for each request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cases import Case, Condition, Decision, Expectation, GrantFixture, Probe
from gateway.harness import Harness
from tests.support import KEYS, mint, write_config

ROOT = Path(__file__).parent.parent
SHIPPED_CONFIG = ROOT / "routes" / "tests" / "gateway.yaml"
WEBHOOKS = "/api/merchants/M1/webhooks"
DETAILS = "GET /moneyhub/accounts/a1"  # accounts_details:read counts while the client's grant is active
CONNECTION = "PATCH /moneyhub/users/u1/connections/c1"  # needs user:update, which needs the client's grant


@pytest.fixture
def payments(tmp_path: Path) -> Iterator[Harness]:
    with Harness(write_config(tmp_path)) as harness:
        yield harness


@pytest.fixture
def shipped() -> Iterator[Harness]:
    with Harness(SHIPPED_CONFIG) as harness:
        yield harness


def test_an_allowed_request_reaches_the_upstream_as_the_gateway_forwards_it(payments: Harness) -> None:
    decision = payments.request(f"POST {WEBHOOKS}?dry=1", scopes="psp.webhook:write", claims={"sub": "ana"},
                                headers=[("content-type", "application/json"), ("x-auth-scopes", "psp.admin")], body=b'{"url": "u"}')
    assert decision.forwarded and decision.outcome == "forward" and decision.status == 200
    sent = decision.upstream_request
    assert sent is not None
    assert str(sent.url) == "http://upstream.test:8080/v3/merchants/M1/webhooks?dry=1"
    assert (sent.headers["x-auth-subject"], sent.headers["x-auth-client"]) == ("ana", "test-client")
    assert sent.headers.get_list("x-auth-scopes") == ["psp.webhook:read psp.webhook:write"]  # the client's copy dropped
    assert sent.content == b'{"url": "u"}'
    assert len(payments.upstream.calls) == 1


def test_a_refused_request_never_reaches_the_upstream(payments: Harness) -> None:
    decision = payments.request(f"POST {WEBHOOKS}", scopes="psp.webhook:read")
    assert (decision.forwarded, decision.outcome) == (False, "403 forbidden")
    assert decision.description is not None and "missing psp.webhook:write" in decision.description
    assert decision.header("www-authenticate") is not None and 'scope="psp.webhook:write"' in decision.header("www-authenticate")
    assert len(payments.upstream.calls) == 0


def test_an_upstream_answer_that_looks_like_a_refusal_is_still_a_forward(payments: Harness) -> None:
    payments.upstream.get(url__regex=r"/webhooks$").respond(403, json={"error": "forbidden", "error_description": "upstream says no"})
    decision = payments.request(f"GET {WEBHOOKS}", scopes="psp.webhook:read")
    assert (decision.status, decision.outcome, decision.error) == (403, "forward", None)
    assert not Expectation.parse("403 forbidden").met_by(decision)
    assert not Expectation.parse("403").met_by(decision)
    assert Expectation.parse("forward").met_by(decision)


def test_forward_is_met_only_by_a_request_that_reached_the_upstream() -> None:
    answered_by_the_gateway = Decision(200, [], b"", None)
    assert not Expectation.parse("forward").met_by(answered_by_the_gateway)


@pytest.mark.parametrize(("expect", "outcome", "met"), [
    ("403 forbidden", "403 forbidden", True), ("403", "403 forbidden", True), ("403 invalid_scope", "403 forbidden", False),
    ("404", "403 forbidden", False), ("401 unauthorized", "401 unauthorized", True),
])
def test_an_expectation_without_an_error_checks_the_status_alone(expect: str, outcome: str, met: bool) -> None:
    status, error = outcome.split(" ")
    assert Expectation.parse(expect).met_by(Decision(int(status), [], b"", None, error)) is met


@pytest.mark.parametrize("text", ["200", "302 found", "forwarded", "403 Forbidden", "403  forbidden", "4033", ""])
def test_an_expectation_is_forward_or_a_refusal(text: str) -> None:
    with pytest.raises(ValueError, match="expect must be 'forward' or a refusal's 'STATUS error'"):
        Expectation.parse(text)


def test_token_none_sends_no_authorization_and_a_given_token_is_sent_as_is(payments: Harness) -> None:
    assert payments.request(f"GET {WEBHOOKS}", token=None).outcome == "401 unauthorized"
    assert payments.request("GET /api/status", token=None).outcome == "forward"
    assert payments.request(f"GET {WEBHOOKS}", token="a.b.c").outcome == "401 invalid_token"
    assert payments.request(f"GET {WEBHOOKS}", token=payments.token("psp.webhook:read")).outcome == "forward"


def test_the_configs_issuer_audience_and_expiry_are_still_verified(payments: Harness) -> None:
    for claims in ({"iss": "https://other.test"}, {"aud": "other-api"}, {"exp": "now-60"}, {"exp": None}, {"nbf": "now+600"}):
        decision = payments.request(f"GET {WEBHOOKS}", scopes="psp.webhook:read", claims=claims)
        assert decision.outcome == "401 invalid_token", (claims, decision.description)
    assert payments.request(f"GET {WEBHOOKS}", scopes="psp.webhook:read", claims={"exp": "now+30"}).outcome == "forward"


def test_the_throwaway_key_replaces_the_configs_keys(payments: Harness) -> None:
    # a token the config's own JWKS would accept is not one the gateway under test takes
    decision = payments.request(f"GET {WEBHOOKS}", token=mint("psp.webhook:read"))
    assert decision.outcome == "401 invalid_token" and decision.description == 'no RS256 signing key matches kid "rsa-1"'


@pytest.mark.parametrize(("algorithms", "extra"), [
    ("[ES384]", ""), ("[EdDSA, RS256]", ""), ("[PS256]", ""), ("[HS256]", f"  hmac_secret_file: {KEYS / 'hmac.secret'}\n"),
])
def test_the_throwaway_key_signs_with_the_first_accepted_algorithm(tmp_path: Path, algorithms: str, extra: str) -> None:
    tokens = f"tokens:\n  algorithms: {algorithms}\n  jwks_url: https://auth.test/jwks\n{extra}"
    with Harness(write_config(tmp_path, tokens=tokens)) as harness:
        assert harness.key.algorithm == algorithms.strip("[]").split(",")[0]
        assert harness.request(f"GET {WEBHOOKS}", scopes="psp.webhook:read").outcome == "forward"


def test_scopes_go_in_the_first_configured_scope_claim(tmp_path: Path) -> None:
    tokens = "tokens:\n  scope_claims: [scp]\n  jwks_url: https://auth.test/jwks\n"
    with Harness(write_config(tmp_path, tokens=tokens)) as harness:
        assert harness.claims(["psp.webhook:read", "psp.admin"])["scp"] == "psp.webhook:read psp.admin"
        assert harness.request(f"GET {WEBHOOKS}", scopes=["psp.webhook:read"]).outcome == "forward"


def test_claims_override_the_defaults_and_none_removes_one(payments: Harness) -> None:
    claims = payments.claims("a", {"sub": None, "client_id": "c9", "auth_time": "now-20", "acr": "sms"})
    assert "sub" not in claims and claims["client_id"] == "c9" and claims["acr"] == "sms"
    assert claims["iat"] - 20 == claims["auth_time"] and claims["exp"] - claims["iat"] == 300
    assert (claims["iss"], claims["aud"], claims["scope"]) == ("https://auth.test", "payments-api", "a")
    with pytest.raises(ValueError, match="not a time"):
        payments.claims(claims={"auth_time": "yesterday"})


def test_the_exact_request_target_is_what_the_gateway_sees(payments: Harness) -> None:
    # an HTTP client would remove the dot segment; the gateway under test must see it and refuse it
    assert payments.request("GET /api/merchants/M1/webhooks/%2e%2e/special", scopes="psp.admin").outcome == "400 invalid_request"
    assert payments.request("GET /api/merchants/M1/../M1/webhooks", scopes="psp.webhook:read").outcome == "400 invalid_request"
    assert payments.request(f"GET {WEBHOOKS}?access_token=x", scopes="psp.webhook:read").outcome == "400 invalid_request"


def test_a_client_grant_counts_while_active_in_a_store_fresh_for_each_request(shipped: Harness) -> None:
    details = "accounts:read accounts_details:read"
    forwarded = shipped.request(DETAILS, scopes=details, grants=[GrantFixture("accounts_details:read", ttl=3600)])
    assert forwarded.upstream_request is not None and forwarded.upstream_request.headers["x-auth-scopes"] == "accounts:read accounts_details:read"
    # the next request's store holds nothing of the last one's
    assert shipped.request(DETAILS, scopes=details).upstream_request.headers["x-auth-scopes"] == "accounts:read"
    expired = shipped.request(DETAILS, scopes="accounts_details:read", grants=[GrantFixture("accounts_details:read", ttl=-60)])
    assert expired.outcome == "403 forbidden" and "the client grant of accounts_details:read to client test-client expired at" in expired.description
    other = shipped.request(DETAILS, scopes="accounts_details:read", grants=[GrantFixture("accounts_details:read", client="another")])
    assert other.outcome == "403 forbidden" and "to client test-client does not exist" in other.description


def test_a_user_grant_and_a_condition(shipped: Harness) -> None:
    wallets = "GET /paysera/rest/v1/user/u1/wallets"
    client = {"sub": None}  # a client-credentials token, acting through u1's offline consent
    assert shipped.request(wallets, scopes=[], claims=client).outcome == "403 forbidden"
    assert shipped.request(wallets, scopes=[], claims=client, grants=[GrantFixture("wallet_list_offline", subject="u1")]).outcome == "forward"
    assert shipped.request(wallets, scopes=[], claims=client, grants=[GrantFixture("wallet_list_offline", subject="u2")]).outcome == "403 forbidden"
    phone = "GET /paysera/rest/v1/user/me/phone"
    assert shipped.request(phone, scopes="phone_optional").outcome == "404 not_found"
    assert shipped.request(phone, scopes="phone_optional", conditions=[Condition("phone")]).outcome == "forward"
    assert shipped.request(phone, scopes="phone_optional", conditions=[Condition("phone", subject="u2")]).outcome == "404 not_found"


def test_a_config_naming_redis_is_tested_with_a_temporary_sqlite_store(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    # nothing listens on port 1: a request that read this store would get 503
    config.write_text(SHIPPED_CONFIG.read_text().replace("routes: ../", f"routes: {ROOT / 'routes'}")
                      .replace("sqlite:///grants.db", "redis://127.0.0.1:1/0"))
    with Harness(config) as harness:
        assert harness.request(CONNECTION, scopes="user:update").outcome == "403 forbidden"
        assert harness.request(CONNECTION, scopes="user:update", grants=[GrantFixture("user:update")]).outcome == "forward"


def test_grants_for_a_config_without_a_store_are_refused(payments: Harness) -> None:
    with pytest.raises(ValueError, match="grants and conditions need a grant store"):
        payments.request(f"GET {WEBHOOKS}", scopes="psp.webhook:read", grants=[GrantFixture("psp.webhook:read")])


def test_assert_decision_names_what_was_expected_and_what_came(payments: Harness) -> None:
    assert payments.assert_decision(f"GET {WEBHOOKS}", "forward", scopes="psp.webhook:read").forwarded
    with pytest.raises(AssertionError) as raised:
        payments.assert_decision(f"POST {WEBHOOKS}", "forward", scopes="psp.webhook:read")
    assert str(raised.value).startswith(f"assert_decision: POST {WEBHOOKS}: expected forward, got 403 forbidden (POST /merchants/")


@pytest.mark.anyio
async def test_cases_run_in_order_from_an_async_test(payments: Harness) -> None:
    cases = [Case(Probe.parse(f"GET {WEBHOOKS}", scopes="psp.webhook:read"), Expectation.parse("forward"), "reads", "f:1"),
             Case(Probe.parse(f"GET {WEBHOOKS}", token=None), Expectation.parse("403"), None, "f:2")]
    assert await payments.check(cases) == [
        f"f:2: GET {WEBHOOKS}: expected 403, got 401 unauthorized (this route requires a bearer token: send 'Authorization: Bearer <token>')"]
    assert (await payments.arequest(f"GET {WEBHOOKS}", scopes="psp.webhook:read")).forwarded


@pytest.mark.parametrize("line", ["GET", "get /x", "GET x", "GET /a b", ""])
def test_a_request_line_is_a_method_and_a_path(line: str) -> None:
    with pytest.raises(ValueError, match="is not a request line"):
        Probe.parse(line)


def test_an_upstream_failure_is_the_gateways_502(payments: Harness) -> None:
    payments.upstream.get(url__regex=r"/webhooks$").mock(side_effect=httpx.ConnectError("refused"))
    decision = payments.request(f"GET {WEBHOOKS}", scopes="psp.webhook:read")
    # the upstream was reached (the request went out), so a case says forward; the answer says 502
    assert (decision.outcome, decision.status) == ("forward", 502)


def test_the_grant_fixture_keeps_the_name_earlier_test_files_import() -> None:
    from gateway import harness

    assert harness.Grant is GrantFixture
