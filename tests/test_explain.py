"""`gateway explain`'s whole trace: exact lines for representative requests (the installed command,
a real SQLite grant store), and for a table of cases the same status as the app over ASGI."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cases import Condition, GrantFixture
from gateway.explain import Caller, explain
from gateway.grants.sqlite import SQLiteStore
from gateway.harness import DEFAULT_CLIENT, DEFAULT_SUBJECT, Harness
from gateway.loading import load_config
from tests.support import cli, write_config

SHOP = """\
name: shop
upstream: http://shop.test
prefix: /s
scopes:
  orders:read:
  orders:write:
    implies: [orders:read]
  accounts:read:
    grants: [client]
  balance:
    suffixes: [offline]
  phone:
    suffixes: [optional]
    condition: the user added a phone number
  email:
  transfer:
    step_up: {acr: [sms], max_age: 300}
  deposit:
  id:{bank_id}:
  id:all:
rules:
  exclusive:
    - ["id:{bank_id}", id:all]
routes:
  GET /orders/{orderId}: orders:read
  GET /orders/latest: orders:write
  DELETE /orders/{orderId}: orders:write
  GET /accounts: accounts:read
  GET /users/{userId}/balance: {scopes: balance, user: userId}
  POST /transfers: transfer
  GET /banks/{bankId}: ["id:{bankId}", id:all]
  GET /me: {scopes: authenticated, response_fields: {email: email, phone: phone}}
  GET /secrets/{secretId}: {scopes: orders:write, hide: true}
  GET /users/{userId}/secrets: {scopes: orders:read, user: userId, hide: true}
  POST /graphql:
    scopes: authenticated
    graphql:
      fields:
        Query.orders: orders:read
        Mutation.makeDeposit: deposit
"""
ANA = ["--claims", '{"sub": "ana", "client_id": "app"}']
NO_LIVE = "step 3, live grants: nothing to do: no scope of the token counts only through the grant store"
NO_STEP_UP = "step 4, step-up: nothing to do: no step-up scope in play"
INDENT = " " * 11


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return write_config(tmp_path, table=SHOP, proxy="grants:\n  store: sqlite:///grants.db\n")


def trace(config: Path, *args: str, code: int) -> list[str]:
    """explain's lines, with the table's path shortened to T."""
    result = cli("explain", "--config", str(config), *args)
    assert result.returncode == code, result.stdout + result.stderr
    return result.stdout.replace(str(config.parent / "routes" / "payments.yaml"), "T").splitlines()


def grants(config: Path, *args: str) -> None:
    done = cli("grants", *args, "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_forward_shows_the_candidates_each_step_and_the_upstream_url(shop: Path) -> None:
    assert trace(shop, "HEAD", "/s/orders/latest", "--scopes", "orders:write", code=0) == [
        "request:   HEAD /s/orders/latest",
        "path:      /s/orders/latest, segments ['s', 'orders', 'latest']",
        "route:     GET /orders/latest  (table shop, T:26)",
        "candidate: GET /orders/latest  (table shop, T:26): matched: HEAD is answered by the GET route",
        "candidate: GET /orders/{orderId}  (table shop, T:25): less specific than the route matched",
        "candidate: DELETE /orders/{orderId}  (table shop, T:27): another method",
        "requires:  orders:write",
        "token:     given with --scopes (signature and claims not checked)",
        "scopes:    orders:write, from --scopes 'orders:write'",
        "step 1, aliases and forms:",
        f"{INDENT}orders:write",
        "step 2, rules: none broken",
        NO_LIVE,
        NO_STEP_UP,
        "step 5, implications: orders:read (implied by the catalog of shop)",
        "effective: orders:read orders:write",
        "decision:  forward to http://shop.test/orders/latest",
    ]


def test_a_wrong_method_is_a_404_naming_the_routes_of_the_path(shop: Path) -> None:
    assert trace(shop, "PUT", "/s/orders/O1", "--scopes", "orders:write", code=1) == [
        "request:   PUT /s/orders/O1",
        "path:      /s/orders/O1, segments ['s', 'orders', 'O1']",
        "route:     none for PUT: this path has routes for DELETE, GET only, and a wrong method is answered as an unknown path (404), revealing no method",
        "candidate: GET /orders/{orderId}  (table shop, T:25): another method",
        "candidate: DELETE /orders/{orderId}  (table shop, T:27): another method",
        "decision:  404 not_found: no route for PUT /s/orders/O1",
    ]
    assert trace(shop, "GET", "/s/nothing/here", code=1)[2:] == [
        "route:     none: no route of any method has a template matching this path",
        "decision:  404 not_found: no route for GET /s/nothing/here",
    ]


def test_a_live_grant_is_shown_missing_then_expired_then_active(shop: Path) -> None:
    head = [
        "requires:  accounts:read",
        'token:     given with --scopes (signature and claims not checked); claims {"client_id": "app", "sub": "ana"}',
        "scopes:    accounts:read, from --scopes 'accounts:read'",
        "step 1, aliases and forms:",
        f"{INDENT}accounts:read",
        "step 2, rules: none broken",
        "step 3, live grants: read from sqlite:///grants.db for client app, user ana",
    ]
    missing = trace(shop, "GET", "/s/accounts", "--scopes", "accounts:read", *ANA, code=1)
    assert missing[4:] == [*head, f"{INDENT}the client grant of accounts:read to client app: missing", f"{INDENT}counts: (nothing)",
                           NO_STEP_UP, "step 5, implications: nothing implied", "effective: (none)",
                           "decision:  403 forbidden: GET /accounts requires accounts:read; the token grants no scopes (missing accounts:read); "
                           "the client grant of accounts:read to client app does not exist",
                           'header:    WWW-Authenticate: Bearer realm="shop", error="insufficient_scope", error_description="GET /accounts requires '
                           'accounts:read; the token grants no scopes (missing accounts:read); the client grant of accounts:read to client app '
                           'does not exist", scope="accounts:read"']
    grants(shop, "add", "--api", "shop", "--client", "app", "accounts:read", "--expires", "2020-01-01T00:00:00Z")
    expired = trace(shop, "GET", "/s/accounts", "--scopes", "accounts:read", *ANA, code=1)
    assert f"{INDENT}the client grant of accounts:read to client app: expired at 2020-01-01T00:00:00+00:00" in expired
    assert expired[-2].endswith("the client grant of accounts:read to client app expired at 2020-01-01T00:00:00+00:00")
    grants(shop, "add", "--api", "shop", "--client", "app", "accounts:read", "--expires", "2099-01-01T00:00:00Z")
    active = trace(shop, "GET", "/s/accounts", "--scopes", "accounts:read", *ANA, code=0)
    assert active[11:14] == [f"{INDENT}the client grant of accounts:read to client app: active until 2099-01-01T00:00:00+00:00",
                             f"{INDENT}counts: accounts:read", NO_STEP_UP]


def test_a_client_credentials_token_on_a_user_route_shows_the_users_offline_grants(shop: Path) -> None:
    refused = trace(shop, "GET", "/s/users/ana/balance", "--scopes", "balance", "--claims", '{"client_id": "app"}', code=1)
    assert refused[11:16] == [
        f"{INDENT}grant type client_credentials: inferred: no claim 'gty', and the token has no subject",
        "user:      the route acts on user 'ana' (parameter userId); a client-credentials token acts only through that user's offline grants to its client",
        "step 3, live grants: read from sqlite:///grants.db for client app, user ana",
        f"{INDENT}the user has no offline grant to this client",
        f"{INDENT}counts: (nothing)",
    ]
    grants(shop, "add", "--api", "shop", "--client", "app", "--subject", "ana", "balance_offline")
    allowed = trace(shop, "GET", "/s/users/ana/balance", "--scopes", "balance", "--claims", '{"client_id": "app", "gty": "client-credentials"}', code=0)
    assert f"{INDENT}grant type client_credentials: from claim 'gty' (tokens.grant_type_claim)" in allowed
    assert f"{INDENT}the offline grant balance_offline by ana to client app: active, no expiry" in allowed


def test_a_step_up_refusal_shows_the_pending_scope_and_the_challenge(shop: Path) -> None:
    lines = trace(shop, "POST", "/s/transfers", "--scopes", "transfer", "--claims", '{"sub": "ana", "acr": "pwd"}', code=1)
    assert lines[-7:] == [
        "step 4, step-up:",
        f"{INDENT}transfer is pending: it counts only after an authentication with acr sms within 300 s",
        f'{INDENT}{INDENT}the token\'s acr is "pwd", not sms',
        "step 5, implications: nothing implied",
        "effective: (none)",
        "decision:  401 insufficient_user_authentication: POST /transfers needs transfer, which counts only after a recent authentication "
        "with acr sms within 300 seconds: authenticate again and retry with the new token",
        'header:    WWW-Authenticate: Bearer realm="shop", error="insufficient_user_authentication", error_description="POST /transfers needs '
        'transfer, which counts only after a recent authentication with acr sms within 300 seconds: authenticate again and retry with the '
        'new token", acr_values="sms", max_age="300"',
    ]


@pytest.mark.parametrize(("claims", "shortfall"), [
    ({"sub": "ana", "acr": "sms"}, "the token has no auth_time claim: it needs an authentication at most 300 s old"),
    ({"sub": "ana", "auth_time": "NOW"}, "the token has no acr claim (nor amr): it needs acr sms"),
    ({"sub": "ana", "amr": ["pwd"], "auth_time": "NOW"}, 'the token\'s acr is null and amr ["pwd"], not sms'),
    ({"sub": "ana", "acr": "sms", "auth_time": "1 hour ago"}, 'the token\'s auth_time "1 hour ago" is not a time (seconds since 1970)'),
    # a second or two pass between minting and deciding
    ({"sub": "ana", "acr": "sms", "auth_time": "OLD"}, re.compile(r"the token's authentication is 100[0-3] s old \(auth_time\), over max_age 300 s")),
])
def test_a_pending_step_up_says_what_the_token_lacks(shop: Path, claims: dict[str, Any], shortfall: str | re.Pattern[str]) -> None:
    now = int(time.time())
    given = json.dumps(claims).replace('"NOW"', str(now)).replace('"OLD"', str(now - 1000))
    lines = trace(shop, "POST", "/s/transfers", "--scopes", "transfer", "--claims", given, code=1)
    pending = lines.index(f"{INDENT}transfer is pending: it counts only after an authentication with acr sms within 300 s")
    told = lines[pending + 1].removeprefix(INDENT * 2)
    assert shortfall.fullmatch(told) if isinstance(shortfall, re.Pattern) else told == shortfall, told
    assert lines[-2].startswith("decision:  401 insufficient_user_authentication")


def test_a_step_up_that_counts_has_no_shortfall(shop: Path) -> None:
    claims = json.dumps({"sub": "ana", "acr": "sms", "auth_time": int(time.time())})
    lines = trace(shop, "POST", "/s/transfers", "--scopes", "transfer", "--claims", claims, code=0)
    assert f"{INDENT}transfer counts: the token's authentication is recent and strong enough" in lines
    assert not any(line.startswith(INDENT * 2) for line in lines)


def test_a_hidden_route_says_it_hides_and_what_is_missing(shop: Path) -> None:
    lines = trace(shop, "GET", "/s/secrets/s1", "--scopes", "orders:read bogus", *ANA, code=1)
    assert lines[-2:] == [
        ("hidden:    GET /secrets/{secretId} says hide: true, so this refusal is answered 404 as if the route did not exist; it is "
         "403 forbidden: GET /secrets/{secretId} requires orders:write; the token grants orders:read (missing orders:write); "
         "ignored: bogus, not in the catalog of shop"),
        "decision:  404 not_found: no route for GET /s/secrets/s1",
    ]
    # allowed: nothing hidden
    assert not any(line.startswith("hidden:") for line in trace(shop, "GET", "/s/secrets/s1", "--scopes", "orders:write", *ANA, code=0))
    # another user's resource is a 404 of its own, whatever the route hides: no hidden 403 to show
    other = trace(shop, "GET", "/s/users/bob/secrets", "--scopes", "orders:read", *ANA, code=1)
    assert not any(line.startswith("hidden:") for line in other) and other[-1] == "decision:  404 not_found: no route for GET /s/users/bob/secrets"
    # the caller's own resource without the scope: hidden, and what is missing
    own = trace(shop, "GET", "/s/users/ana/secrets", "--scopes", "email", *ANA, code=1)
    assert own[-2].startswith("hidden:    GET /users/{userId}/secrets says hide: true") and own[-2].endswith("(missing orders:read)")


@pytest.mark.parametrize("scopes", ["orders:read bogus other:thing", "orders:read bogus other:thing transfer"])
@pytest.mark.anyio
async def test_a_403_names_the_token_scopes_the_catalog_ignores(tmp_path: Path, scopes: str) -> None:
    """Both ways the app decides (the plain shortcut, and step by step when a step-up scope is in play)."""
    config = load_config(write_config(tmp_path, table=SHOP, proxy="grants:\n  store: sqlite:///grants.db\n"))
    with Harness(config) as harness:
        refused = await harness.arequest("DELETE /s/orders/O1", scopes=scopes)
        allowed = await harness.arequest("GET /s/orders/O1", scopes=scopes)
    assert refused.outcome == "403 forbidden"
    assert refused.description.endswith("(missing orders:write); ignored: bogus other:thing, not in the catalog of shop")
    assert allowed.forwarded
    assert "bogus" not in allowed.upstream_request.headers["x-auth-scopes"]


@pytest.mark.anyio
async def test_a_403_without_unknown_scopes_names_none(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, table=SHOP, proxy="grants:\n  store: sqlite:///grants.db\n"))
    with Harness(config) as harness:
        refused = await harness.arequest("DELETE /s/orders/O1", scopes="orders:read")
    assert refused.outcome == "403 forbidden" and "ignored" not in refused.description


def test_a_broken_rule_stops_at_step_2_with_invalid_scope(shop: Path) -> None:
    assert trace(shop, "GET", "/s/banks/B1", "--scopes", "id:B1 id:all", code=1)[6:] == [
        "token:     given with --scopes (signature and claims not checked)",
        "scopes:    id:B1 id:all, from --scopes 'id:B1 id:all'",
        "bound:     one of: id:B1; id:all (the path's parameters in the requirement)",
        "step 1, aliases and forms:",
        f"{INDENT}id:B1: an instance of id:{{bank_id}}",
        f"{INDENT}id:all",
        "step 2, rules: broken: at most one of id:{bank_id}, id:all may be held at once; the token holds id:B1 and id:all",
        "decision:  403 invalid_scope: at most one of id:{bank_id}, id:all may be held at once; the token holds id:B1 and id:all",
        'header:    WWW-Authenticate: Bearer realm="shop", error="invalid_scope", error_description="at most one of id:{bank_id}, id:all may be '
        'held at once; the token holds id:B1 and id:all"',
    ]


def test_a_graphql_refusal_names_each_field_and_its_requirement(shop: Path, tmp_path: Path) -> None:
    body = tmp_path / "deposit.json"
    body.write_text(json.dumps({"query": "mutation Deposit { makeDeposit(amount: 1) { id } orders { id } }"}))
    lines = trace(shop, "POST", "/s/graphql", "--scopes", "orders:read", "--body", f"@{body}", "--content-type", "application/json", code=1)
    assert lines[-5:-1] == [
        "graphql:   mutation Deposit",
        f"{INDENT}Mutation.makeDeposit at makeDeposit: requires deposit: refused",
        f"{INDENT}Mutation.orders at orders: no requirement covers it (deny by default): refused",
        "decision:  403 forbidden: the operation selects fields the token may not use: Mutation.makeDeposit requires deposit; "
        "Mutation.orders is not allowed on this route",
    ]
    allowed = trace(shop, "POST", "/s/graphql", "--scopes", "orders:read", "--body", '{"query": "{ orders { id } }"}', "--content-type", "application/json", code=0)
    assert allowed[-3:] == ["graphql:   query (anonymous)", f"{INDENT}Query.orders at orders: requires orders:read: met", "decision:  forward to http://shop.test/graphql"]
    unreadable = trace(shop, "POST", "/s/graphql", "--scopes", "orders:read", "--body", "{ orders { id", "--content-type", "application/graphql", code=1)
    assert unreadable[-1].startswith("decision:  400 invalid_request: the document does not parse:")


def test_response_fields_say_which_members_are_removed(shop: Path) -> None:
    lines = trace(shop, "GET", "/s/me", "--scopes", "email phone_optional", *ANA, code=0)
    assert lines[11:] == [
        "step 3, live grants: read from sqlite:///grants.db for client app, user ana",
        f"{INDENT}the condition of phone (the user added a phone number): not met: phone_optional waits for it",
        f"{INDENT}counts: (nothing)",
        NO_STEP_UP,
        "step 5, implications: nothing implied",
        "effective: email",
        "field:     email: requires email: kept",
        "field:     phone: requires phone: removed from a JSON answer",
        "decision:  forward to http://shop.test/me",
    ]


def test_usage_errors_exit_2(shop: Path) -> None:
    missing = cli("explain", "--config", str(shop), "POST", "/s/graphql", "--scopes", "a", "--body", "@/no/such/file")
    assert missing.returncode == 2 and missing.stdout.strip() == "--body: No such file or directory: /no/such/file"
    bad = cli("explain", "--config", str(shop), "GET", "/s/me", "--scopes", "a", "--claims", "[1]")
    assert bad.returncode == 2 and "--claims: a JSON object of claims" in bad.stdout


DEPOSIT = json.dumps({"query": "mutation { makeDeposit(amount: 1) { id } }"}).encode()
# (request, scopes, other claims, grants, conditions, body): explain's status must be the app's
CASES: list[tuple[str, str, dict[str, Any], list[GrantFixture], list[Condition], bytes]] = [
    ("GET /s/orders/O1", "orders:read", {}, [], [], b""),
    ("GET /s/orders/O1", "email", {}, [], [], b""),
    ("PUT /s/orders/O1", "orders:write", {}, [], [], b""),
    ("GET /s/accounts", "accounts:read", {}, [], [], b""),
    ("GET /s/accounts", "accounts:read", {}, [GrantFixture("accounts:read", ttl=-60)], [], b""),
    ("GET /s/accounts", "accounts:read", {}, [GrantFixture("accounts:read", ttl=600)], [], b""),
    ("GET /s/users/test-user/balance", "balance_offline", {}, [], [], b""),
    ("GET /s/users/test-user/balance", "balance_offline", {}, [GrantFixture("balance_offline", subject=DEFAULT_SUBJECT)], [], b""),
    ("GET /s/users/someone/balance", "balance", {}, [], [], b""),
    ("GET /s/users/ana/balance", "", {"sub": None}, [GrantFixture("balance_offline", subject="ana")], [], b""),
    ("GET /s/users/ana/balance", "", {"sub": None}, [GrantFixture("balance_offline", subject="bob")], [], b""),
    ("POST /s/transfers", "transfer", {"acr": "pwd"}, [], [], b""),
    ("POST /s/transfers", "transfer", {"acr": "sms", "auth_time": "now-10"}, [], [], b""),
    ("GET /s/banks/B1", "id:B1 id:all", {}, [], [], b""),
    ("GET /s/me", "phone_optional", {}, [], [], b""),
    ("GET /s/me", "phone_optional", {}, [], [Condition("phone")], b""),
    ("POST /s/graphql", "orders:read", {}, [], [], DEPOSIT),
    ("POST /s/graphql", "deposit", {}, [], [], DEPOSIT),
    ("POST /s/graphql", "deposit", {}, [], [], b"{not json"),
    ("GET /s/secrets/s1", "orders:read", {}, [], [], b""),
    ("GET /s/secrets/s1", "orders:write", {}, [], [], b""),
    ("GET /s/users/test-user/secrets", "email", {}, [], [], b""),
    ("GET /s/users/bob/secrets", "orders:read", {}, [], [], b""),
]


@pytest.mark.parametrize(("request_line", "scopes", "claims", "given", "conditions", "body"), CASES)
@pytest.mark.anyio
async def test_explain_decides_as_the_app_does(
    tmp_path: Path, request_line: str, scopes: str, claims: dict[str, Any], given: list[GrantFixture], conditions: list[Condition], body: bytes,
) -> None:
    config_path = write_config(tmp_path, table=SHOP, proxy="grants:\n  store: sqlite:///grants.db\n")
    config = load_config(config_path)
    headers = [("content-type", "application/json")] if body else []
    with Harness(config) as harness:
        app = await harness.arequest(request_line, scopes=scopes, claims=claims, grants=given, conditions=conditions, body=body, headers=headers)
        minted = {name: value for name, value in harness.claims(scopes, claims).items() if name in ("sub", "client_id", "acr", "auth_time")}
    store = SQLiteStore(tmp_path / "grants.db")
    now = time.time()
    for grant in given:
        await store.put_grant("shop", DEFAULT_CLIENT, grant.subject, grant.scope, now + grant.ttl if grant.ttl is not None else None)
    for condition in conditions:
        await store.set_condition("shop", DEFAULT_SUBJECT, condition.scope, True)
    await store.aclose()
    method, target = request_line.split(" ", 1)
    explained = await explain(config, method, target, Caller(scopes, minted), body=body or None, content_type="application/json" if body else None)
    assert (explained.status or 200) == app.status, "\n".join(explained.lines) + f"\napp: {app.status} {app.description}"
