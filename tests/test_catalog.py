"""Scope catalogs and the decision (docs/route-tables.md, "Scope catalogs and
rules"): every rule as a table of cases, decided by the functions the gateway runs, and
every load error with its file and line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.decision import authorize, evaluate
from gateway.routing import route
from gateway.errors import Refusal, render
from gateway.loading import ConfigError, load_config
from gateway.tables import Tables
from gateway.tokens import VerifiedToken
from tests.support import write_config

UUID = "3f95524e-70aa-4663-8548-763583e08909"
TABLE = f"""\
name: rules
upstream: http://up.test
prefix: /r
scopes:
  entity_read:
    description: View entity-related data
    aliases: [{UUID}]
  entity_write:
    implies: [entity_read]
  email:
    suffixes: [optional]
  balance:
  convert_currency:
    step_up: {{acr: [sms, otp], max_age: 300}}
  transactions:read:all:
  transactions:read:in:
  transactions:read:out:
  transactions:write:
    requires: [transactions:read:all, transactions:read:in, transactions:read:out]
  user:create:
    grant_types: [client_credentials]
  id:{{bank_id}}:
  id:all:
  id:api:
  store_admin:
rules:
  exclusive:
    - ["id:{{bank_id}}", id:all, id:api]
    - [transactions:read:all, transactions:read:in, transactions:read:out]
routes:
  GET /entities: entity_read
  POST /entities: entity_write
  GET /me/email: email
  GET /balance: balance
  POST /convert: convert_currency
  POST /convert/preview: [convert_currency, balance]
  GET /transactions: [transactions:read:all, transactions:read:in]
  PATCH /transactions/{{id}}: transactions:write
  POST /users: user:create
  GET /banks/{{bankId}}/connections: ["id:{{bankId}}", id:all]
  GET /users/{{userId}}/balance: {{scopes: balance, user: userId}}
  GET /users/{{userId}}: {{scopes: authenticated, user: userId}}
  DELETE /stores/{{storeId}}: {{scopes: store_admin, hide: true}}
  GET /stores/{{storeId}}: store_admin
"""
NOW = time.time()
USER = {"sub": "u1", "client_id": "c1"}
CLIENT = {"sub": "c1", "client_id": "c1"}
FRESH_SMS = {**USER, "acr": "sms", "auth_time": NOW - 60}


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    return load_config(write_config(tmp_path_factory.mktemp("catalog"), table=TABLE)).tables


def token(scopes: str, claims: dict[str, Any] | None = None) -> VerifiedToken:
    claims = dict(claims if claims is not None else USER)
    return VerifiedToken(frozenset(scopes.split()), claims.get("sub"), claims.get("client_id"), NOW + 600, json.dumps(claims).encode())


def decide(tables: Tables, request: str, scopes: str, claims: dict[str, Any] | None = None) -> tuple[int, str, dict[str, str]]:
    """(status, error or 'forward', WWW-Authenticate parameters) for one request."""
    method, path = request.split(" ")
    try:
        grant = authorize(route(tables, method, f"/r{path}".encode()), token(scopes, claims))
    except Refusal as refusal:
        status, headers, _ = render(refusal, "rules")
        challenge = dict(headers).get(b"www-authenticate", b"").decode()
        params = dict(part.split("=", 1) for part in challenge.removeprefix("Bearer ").split(", ") if "=" in part)
        return status, refusal.error, {name: value.strip('"') for name, value in params.items()}
    return 200, "forward " + " ".join(sorted(grant.scopes)), {}


# (why, request, token scopes, claims, status, error or 'forward <effective scopes>')
CASES = [
    # normalise: aliases, suffix forms, parameter instances
    ("the alias is its scope", "GET /entities", UUID, None, 200, "forward entity_read"),
    ("implications apply to an alias", "POST /entities", "entity_write", None, 200, "forward entity_read entity_write"),
    ("an optional form of a scope without a condition counts at once", "GET /me/email", "email_optional", None, 200, "forward email"),
    ("a parameter instance is its scope", "GET /banks/B1/connections", "id:B1", None, 200, "forward id:B1"),
    ("{bankId} binds the path's bank", "GET /banks/B2/connections", "id:B1", None, 403, "forbidden"),
    ("the other alternative", "GET /banks/B2/connections", "id:all", None, 200, "forward id:all"),
    ("unknown scopes are ignored by default", "GET /balance", "balance openid", None, 200, "forward balance"),
    # rules: 403 invalid_scope
    ("a suffix the base does not offer", "GET /balance", "balance balance_optional", None, 403, "invalid_scope"),
    ("an offline form the base does not offer", "GET /me/email", "email_offline", None, 403, "invalid_scope"),
    ("suffixes in the wrong order", "GET /me/email", "email_optional_offline", None, 403, "invalid_scope"),
    ("two members of an exclusive group", "GET /banks/B1/connections", "id:B1 id:all", None, 403, "invalid_scope"),
    ("two instances of one parameterised scope count as two", "GET /banks/B1/connections", "id:B1 id:B2", None, 403, "invalid_scope"),
    ("the other exclusive group", "GET /transactions", "transactions:read:all transactions:read:in", None, 403, "invalid_scope"),
    ("a scope held without any of its requires", "PATCH /transactions/t1", "transactions:write", None, 403, "invalid_scope"),
    ("requires met", "PATCH /transactions/t1", "transactions:write transactions:read:out", None, 200, "forward transactions:read:out transactions:write"),
    ("a rule is broken on any route of the API", "GET /balance", "balance id:all id:api", None, 403, "invalid_scope"),
    ("a client-credentials scope in a user token", "POST /users", "user:create", USER, 403, "invalid_scope"),
    ("a client-credentials scope in a client token (sub = client)", "POST /users", "user:create", CLIENT, 200, "forward user:create"),
    ("a client-credentials token without sub", "POST /users", "user:create", {"client_id": "c1"}, 200, "forward user:create"),
    ("the gty claim says client-credentials", "POST /users", "user:create", {**USER, "gty": "client-credentials"}, 200, "forward user:create"),
    ("the gty claim says password", "POST /users", "user:create", {**CLIENT, "gty": "password"}, 403, "invalid_scope"),
    # step-up: 401 insufficient_user_authentication
    ("a step-up scope without acr", "POST /convert", "convert_currency", None, 401, "insufficient_user_authentication"),
    ("a fresh sms authentication", "POST /convert", "convert_currency", FRESH_SMS, 200, "forward convert_currency"),
    ("an amr entry is accepted too", "POST /convert", "convert_currency", {**USER, "amr": ["pwd", "otp"], "auth_time": NOW - 10}, 200, "forward convert_currency"),
    ("too old an authentication", "POST /convert", "convert_currency", {**FRESH_SMS, "auth_time": NOW - 301}, 401, "insufficient_user_authentication"),
    ("no auth_time", "POST /convert", "convert_currency", {**USER, "acr": "sms"}, 401, "insufficient_user_authentication"),
    ("another acr", "POST /convert", "convert_currency", {**USER, "acr": "pwd", "auth_time": NOW}, 401, "insufficient_user_authentication"),
    ("step-up is asked for only if it would meet the requirement", "POST /convert/preview", "email", None, 403, "forbidden"),
    ("another alternative is held: no step-up needed", "POST /convert/preview", "convert_currency balance", None, 200, "forward balance"),
    # user binding
    ("a user token on its own user", "GET /users/u1/balance", "balance", None, 200, "forward balance"),
    ("a user token on another user: as if the route did not exist", "GET /users/u2/balance", "balance", None, 404, "not_found"),
    ("another user, even on an authenticated route", "GET /users/u2", "", None, 404, "not_found"),
    ("own user, authenticated route", "GET /users/u1", "", None, 200, "forward "),
    ("a client-credentials token acts only through offline grants", "GET /users/u1/balance", "balance", CLIENT, 403, "forbidden"),
    # hide
    ("a hidden route refuses with 404", "DELETE /stores/s1", "entity_read", None, 404, "not_found"),
    ("a hidden route still forwards the allowed", "DELETE /stores/s1", "store_admin", None, 200, "forward store_admin"),
    ("the same requirement without hide is 403", "GET /stores/s1", "entity_read", None, 403, "forbidden"),
    ("a broken rule is not hidden", "DELETE /stores/s1", "id:all id:api", None, 403, "invalid_scope"),
]


@pytest.mark.parametrize(("request_line", "scopes", "claims", "status", "outcome"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_the_decision(tables: Tables, request_line: str, scopes: str, claims: dict[str, Any] | None, status: int, outcome: str) -> None:
    assert decide(tables, request_line, scopes, claims)[:2] == (status, outcome)


def test_invalid_scope_names_the_rule_and_the_scopes(tables: Tables) -> None:
    with pytest.raises(Refusal) as refused:
        authorize(route(tables, "GET", b"/r/balance"), token("balance id:B1 id:all"))
    assert refused.value.description == "at most one of id:{bank_id}, id:all, id:api may be held at once; the token holds id:B1 and id:all"
    assert decide(tables, "GET /balance", "balance id:B1 id:all")[2]["error"] == "invalid_scope"
    with pytest.raises(Refusal, match="transactions:write is held only with one of transactions:read:all, transactions:read:in, transactions:read:out"):
        authorize(route(tables, "PATCH", b"/r/transactions/t"), token("transactions:write"))
    with pytest.raises(Refusal, match="balance_optional: balance does not offer the optional suffix"):
        authorize(route(tables, "GET", b"/r/balance"), token("balance_optional"))
    with pytest.raises(Refusal, match="user:create is only for tokens of the client_credentials grant; this token's grant is authorization_code"):
        authorize(route(tables, "POST", b"/r/users"), token("user:create"))


def test_the_step_up_challenge_follows_rfc_9470(tables: Tables) -> None:
    status, error, params = decide(tables, "POST /convert", "convert_currency")
    assert (status, error) == (401, "insufficient_user_authentication")
    assert params["error"] == "insufficient_user_authentication"
    assert (params["acr_values"], params["max_age"]) == ("sms otp", "300")
    assert "convert_currency" in params["error_description"]


def test_a_forbidden_answer_names_what_is_missing(tables: Tables) -> None:
    with pytest.raises(Refusal) as refused:
        authorize(route(tables, "GET", b"/r/banks/B2/connections"), token("id:B1"))
    assert refused.value.description.endswith("(missing one of: id:B2; id:all)")
    assert refused.value.scope == "id:B2"  # type: ignore[attr-defined]
    with pytest.raises(Refusal, match="acts on user u1 only through that user's active offline grants"):
        authorize(route(tables, "GET", b"/r/users/u1/balance"), token("balance", CLIENT))


def test_the_evaluation_records_each_step(tables: Tables) -> None:
    evaluation = evaluate(route(tables, "POST", b"/r/convert"), token(f"convert_currency {UUID} email_optional openid"))
    readings = {reading.raw: reading.describe() for reading in evaluation.assessment.readings}
    assert readings[UUID] == f"{UUID} -> entity_read (alias)"
    assert readings["email_optional"] == "email_optional -> email, its optional form"
    assert readings["openid"] == "openid: not in the catalog"
    assert [scope for scope, _ in evaluation.pending_step_up] == ["convert_currency"]
    assert evaluation.effective == {"entity_read", "email"}
    assert evaluation.refusal is not None and evaluation.refusal.status == 401


def test_scope_sets_are_assessed_once_and_tokens_without_rules_take_the_shortcut(tables: Tables) -> None:
    api = tables.apis[0]
    first = api.catalog.assess(frozenset({"balance", "openid"}))
    assert api.catalog.assess(frozenset({"openid", "balance"})) is first and first.simple
    assert not api.catalog.assess(frozenset({"convert_currency"})).simple
    assert not api.catalog.assess(frozenset({"user:create"})).simple


def test_unknown_scopes_refused_when_the_api_says_so(tmp_path: Path) -> None:
    tables = load_config(write_config(tmp_path, table="name: strict\nupstream: http://up.test\nscopes:\n  a:\n  b:\nrules:\n  unknown_scopes: refuse\nroutes:\n  GET /x: a\n")).tables
    assert authorize(route(tables, "GET", b"/x"), token("a b")).scopes == {"a", "b"}
    with pytest.raises(Refusal, match="unknown scopes are refused by this API: openid") as refused:
        authorize(route(tables, "GET", b"/x"), token("a openid"))
    assert refused.value.error == "invalid_scope"


def test_a_table_without_a_catalog_takes_scopes_as_they_are(tmp_path: Path) -> None:
    tables = load_config(write_config(tmp_path, table="name: plain\nupstream: http://up.test\nroutes:\n  GET /x: a\n")).tables
    assert authorize(route(tables, "GET", b"/x"), token("a openid")).scopes == {"a", "openid"}


HEAD = "name: t\nupstream: http://up.test\n"
# (table, line, words the message must hold)
BROKEN = [
    (HEAD + "scopes:\n  a:\nroutes:\n  GET /x: b\n", 6, "'b' is not in this table's scopes catalog"),
    (HEAD + "scopes:\n  a:\n    implies: [b]\nroutes:\n  GET /x: a\n", 5, "scopes.a.implies: 'b' is not in this table's scopes catalog"),
    (HEAD + "scopes:\n  a:\n    requires: [b]\nroutes:\n  GET /x: a\n", 5, "scopes.a.requires: 'b' is not in this table's scopes catalog"),
    (HEAD + "scopes:\n  a:\n  b:\nrules:\n  exclusive:\n    - [a, c]\nroutes:\n  GET /x: a\n", 8, "rules.exclusive: 'c' is not in this table's scopes catalog"),
    (HEAD + "scopes:\n  a:\nrules:\n  exclusive:\n    - [a]\nroutes:\n  GET /x: a\n", 7, "at least two scopes"),
    (HEAD + "scopes:\n  a:\nrules:\n  exclusive: [a, b]\nroutes:\n  GET /x: a\n", 6, "at least two scopes"),
    (HEAD + "scopes:\n  a:\nrules:\n  unknown_scopes: reject\nroutes:\n  GET /x: a\n", 6, "ignore or refuse"),
    (HEAD + "scopes:\n  a:\nrules:\n  forbid: [a]\nroutes:\n  GET /x: a\n", 6, "unknown key 'forbid'"),
    (HEAD + "scopes:\n  a:\n    implies: [b]\n  b:\n    implies: [a]\nroutes:\n  GET /x: a\n", 5, "implication cycle a -> b -> a"),
    (HEAD + "scopes:\n  a:\n    suffixes: [optional, later]\nroutes:\n  GET /x: a\n", 5, "'later' is not one of offline, optional"),
    (HEAD + "scopes:\n  a:\n    step_up: {max_age: 60}\nroutes:\n  GET /x: a\n", 5, "needs acr"),
    (HEAD + "scopes:\n  a:\n    step_up: {acr: [sms], max_age: 0}\nroutes:\n  GET /x: a\n", 5, "max_age must be a number >= 1"),
    (HEAD + "scopes:\n  a:\n    step_up: {acr: sms, when: 1}\nroutes:\n  GET /x: a\n", 5, "unknown key 'when'"),
    (HEAD + "scopes:\n  a:\n    grants: [client, admin]\nroutes:\n  GET /x: a\n", 5, "'admin' is not one of client, user"),
    (HEAD + "scopes:\n  a:\n    inherits: [b]\nroutes:\n  GET /x: a\n", 5, "unknown key 'inherits'"),
    (HEAD + "scopes:\n  a:\n    aliases: [b]\n  b:\nroutes:\n  GET /x: a\n", 5, "'b' is a scope of this catalog itself"),
    (HEAD + "scopes:\n  a:\n    aliases: [z]\n  b:\n    aliases: [z]\nroutes:\n  GET /x: a\n", 7, "'z' is already an alias of a"),
    (HEAD + "scopes:\n  id:{a}{b}:\nroutes:\n  GET /x: authenticated\n", 4, "one parameter"),
    (HEAD + "scopes:\n  id:{bank_id}:\n    suffixes: [optional]\nroutes:\n  GET /x: authenticated\n", 5, "a parameterised scope has no suffixes"),
    (HEAD + "scopes:\n  id:{bank_id}:\nroutes:\n  GET /banks/{bankId}: \"id:{bank}\"\n", 6, "names {bank}, which the template lacks (it has: bankId)"),
    (HEAD + "scopes:\n  id:{bank_id}:\nroutes:\n  GET /banks/{bankId}: \"x:{bankId}\"\n", 6, "matches no parameterised scope"),
    (HEAD + "routes:\n  GET /users/{userId}: {scopes: authenticated, user: id}\n", 4, "user: 'id' names no parameter of the template (it has: userId)"),
    (HEAD + "routes:\n  GET /users: {scopes: authenticated, hide: yes-please}\n", 4, "hide must be true or false"),
    (HEAD + "routes:\n  GET /users: {scopes: authenticated, cache: 1}\n", 4, "unknown key 'cache'"),
    (HEAD + "routes:\n  POST /graphql: {scopes: authenticated, graphql: {schema: s.graphql}}\n", 4, "graphql.schema: cannot read"),
    # live state is refused until the grant store exists, never skipped silently
    (HEAD + "scopes:\n  a:\n    grants: [client]\nroutes:\n  GET /x: a\n", 5, "scopes.a.grants needs live grants"),
    (HEAD + "scopes:\n  a:\n    suffixes: [offline]\nroutes:\n  GET /x: a\n", 5, "the offline form needs live grants"),
    (HEAD + "scopes:\n  a:\n    suffixes: [optional]\n    condition: the user added a phone\nroutes:\n  GET /x: a\n", 6, "scopes.a.condition needs live grants"),
    (HEAD + "scopes:\n  a:\nrules:\n  grants: [client, user]\nroutes:\n  GET /x: a\n", 6, "rules.grants needs live grants"),
]


@pytest.mark.parametrize(("table", "line", "message"), BROKEN, ids=[case[2] for case in BROKEN])
def test_broken_catalogs_name_file_line_and_problem(tmp_path: Path, table: str, line: int, message: str) -> None:
    config = write_config(tmp_path, table=table)
    with pytest.raises(ConfigError) as error:
        load_config(config)
    shown = [str(problem) for problem in error.value.problems]
    assert any(text.startswith(f"{tmp_path / 'routes' / 'payments.yaml'}:{line}: ") and message in text for text in shown), shown


def test_every_catalog_problem_is_reported_at_once(tmp_path: Path) -> None:
    table = HEAD + "scopes:\n  a:\n    implies: [x]\n    requires: [y]\n    suffixes: [sometimes]\nroutes:\n  GET /x: z\n"
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, table=table))
    assert [problem.line for problem in error.value.problems] == [5, 6, 7, 9]
