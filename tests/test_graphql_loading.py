"""A route's `graphql:` option at load time: `gateway check` reports every problem of the option,
its SDL and its persisted-query manifest as `file:line: message`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.loading import ConfigError, load_config
from gateway.scopes import Access, Requirement, all_of
from tests.graphql_support import ACCOUNTS_SDL, SDL
from tests.graphql_support import BANK_TABLE_HEAD as HEAD
from tests.graphql_support import GRAPHQL_ROUTE as ROUTE
from tests.support import write_config

GOOD_SDL = SDL.read_text()

# (route lines after `graphql:`, SDL, file the problem is in, line, words of the message)
BROKEN = [
    ("      schema: bank.graphql\n      fields:\n        Bank.status: ADMIN\n", GOOD_SDL, "payments.yaml", 15, "the schema has no type 'Bank'"),
    ("      schema: bank.graphql\n      fields:\n        Query.balance: ADMIN\n", GOOD_SDL, "payments.yaml", 15, "type Query has no field 'balance'"),
    ("      schema: bank.graphql\n      fields:\n        Query.status: NOT_IN_CATALOG\n", GOOD_SDL, "payments.yaml", 15, "'NOT_IN_CATALOG' is not in this table's scopes catalog"),
    ("      schema: bank.graphql\n      fields:\n        status: ADMIN\n", GOOD_SDL, "payments.yaml", 15, "'status' must be Type.field"),
    ("      fields:\n        User.email: ADMIN\n", GOOD_SDL, "payments.yaml", 14, "without graphql.schema only root fields"),
    ("      schema: bank.graphql\n", GOOD_SDL.replace("type Offer {", "type Offer {\n  owner: Owner"), "bank.graphql", 46, "Unknown type 'Owner'"),
    ("      schema: bank.graphql\n", GOOD_SDL.replace("type Deposit {", "type Deposit {{"), "bank.graphql", 50, "Syntax Error"),
    ("      schema: bank.graphql\n", GOOD_SDL.replace('[["REVEAL_CARD"]]) {', '[["SEE_CARD"]]) {'), "bank.graphql", 40, "'SEE_CARD' is not in this table's scopes catalog"),
    ("      schema: bank.graphql\n", GOOD_SDL.replace('@requiresScopes(scopes: [["MAKE_DEPOSIT"]])\n  revealCard', '@requiresScopes(scopes: ["MAKE_DEPOSIT"])\n  revealCard'), "bank.graphql", 15, "non-empty list of non-empty lists"),
    ("      schema: missing.graphql\n", GOOD_SDL, "payments.yaml", 13, "graphql.schema: cannot read"),
    ("      mode: permissive\n", GOOD_SDL, "payments.yaml", 13, "graphql.mode must be reject or filter"),
    ("      limits: {depth: 0}\n", GOOD_SDL, "payments.yaml", 13, "graphql.limits.depth must be an integer >= 1"),
    ("      limits: {width: 3}\n", GOOD_SDL, "payments.yaml", 13, "unknown key 'width'"),
    ("      introspection: [NOT_IN_CATALOG]\n", GOOD_SDL, "payments.yaml", 13, "'NOT_IN_CATALOG' is not in this table's scopes catalog"),
    ("      persisted_queries: persisted.json\n", GOOD_SDL, "payments.yaml", 13, "'id' must be the SHA-256 (lowercase hex) of its body"),
    ("      cache: 10\n", GOOD_SDL, "payments.yaml", 13, "unknown key 'cache'"),
]


def write(tmp_path: Path, graphql: str, sdl: str, route: str = ROUTE) -> Path:
    config = write_config(tmp_path, upstream="http://bank.test", table=HEAD + route + graphql)
    (tmp_path / "routes" / "bank.graphql").write_text(sdl)
    manifest = {"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{"id": "0" * 64, "name": "S", "type": "query", "body": "{ status }"}]}
    (tmp_path / "routes" / "persisted.json").write_text(json.dumps(manifest))
    return config


@pytest.mark.parametrize(("graphql", "sdl", "file", "line", "message"), BROKEN, ids=[row[4] for row in BROKEN])
def test_a_broken_graphql_option_names_file_line_and_problem(tmp_path: Path, graphql: str, sdl: str, file: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, graphql, sdl))
    shown = [str(problem) for problem in error.value.problems]
    assert any(text.startswith(f"{tmp_path / 'routes' / file}:{line}: ") and message in text for text in shown), shown


def test_gateway_check_prints_each_problem_with_its_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "      schema: bank.graphql\n      fields:\n        Query.balance: ADMIN\n        Ledger.total: ADMIN\n", GOOD_SDL)
    assert main(["check", "--config", str(config)]) == 1
    printed = capsys.readouterr()
    output = printed.out + printed.err
    assert f"{tmp_path / 'routes' / 'payments.yaml'}:15: POST /graphql: graphql.fields: Query.balance: type Query has no field 'balance'" in output
    assert f"{tmp_path / 'routes' / 'payments.yaml'}:16: POST /graphql: graphql.fields: Ledger.total: the schema has no type 'Ledger'" in output


def test_a_graphql_route_is_get_or_post_and_has_no_response_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="graphql: serves GET and POST only"):
        load_config(write(tmp_path, "      fields: {Query.status: public}\n", GOOD_SDL, ROUTE.replace("POST", "PUT")))
    route = "  POST /graphql:\n    scopes: authenticated\n    response_fields: {email: ADMIN}\n    graphql:\n"
    with pytest.raises(ConfigError, match="a route has graphql or response_fields, not both"):
        load_config(write(tmp_path, "      fields: {Query.status: public}\n", GOOD_SDL, route))


def test_an_sdl_without_the_directive_declarations_gets_apollos(tmp_path: Path) -> None:
    sdl = "\n".join(line for line in GOOD_SDL.splitlines() if not line.startswith("directive "))
    tables = load_config(write(tmp_path, "      schema: bank.graphql\n", sdl)).tables
    [route] = tables.routes
    assert route.exchange.requirements["Mutation.makeDeposit"] == Requirement(Access.SCOPES, (frozenset({"MAKE_DEPOSIT"}),))


def test_requirements_merge_the_route_the_field_its_types_and_an_interfaces_implementations(tmp_path: Path) -> None:
    tables = load_config(write(tmp_path, "      schema: bank.graphql\n      fields:\n        User.email: ADMIN\n", GOOD_SDL)).tables
    requirements = tables.routes[0].exchange.requirements
    # the route's ADMIN and the SDL's READ_EMAIL-or-ADMIN: ADMIN alone meets both
    assert requirements["User.email"] == Requirement(Access.SCOPES, (frozenset({"ADMIN"}),))
    assert requirements["Card.number"] == Requirement(Access.SCOPES, (frozenset({"REVEAL_CARD"}),))  # the type's own
    assert requirements["Mutation.revealCard"] == Requirement(Access.SCOPES, (frozenset({"REVEAL_CARD"}),))  # the type it returns
    assert requirements["Node.id"] == Requirement(Access.SCOPES, (frozenset({"REVEAL_CARD"}),))  # Card implements Node
    assert "Query.unguarded" not in requirements and "Offer.title" not in requirements


def test_an_interfaces_requirement_holds_for_the_field_of_every_type_that_implements_it(tmp_path: Path) -> None:
    config = write(tmp_path, "      schema: bank.graphql\n      fields:\n        Node.id: ADMIN\n        Account.secret: READ_EMAIL\n        User.secret: LIST_PAYMENT\n", ACCOUNTS_SDL.read_text())
    requirements = load_config(config).tables.routes[0].exchange.requirements
    admin, email, both = (Requirement(Access.SCOPES, (frozenset(scopes),)) for scopes in ({"ADMIN"}, {"READ_EMAIL"}, {"READ_EMAIL", "LIST_PAYMENT"}))
    assert requirements["Account.id"] == requirements["User.id"] == requirements["Bot.id"] == admin  # Account implements Node
    assert requirements["User.secret"] == both and requirements["Bot.secret"] == email
    assert requirements["Account.secret"] == both  # a User may answer it
    assert "User.name" not in requirements


def test_all_of_joins_alternatives() -> None:
    either = Requirement(Access.SCOPES, (frozenset({"a"}), frozenset({"b"})))
    both = Requirement(Access.SCOPES, (frozenset({"c"}),))
    assert all_of([either, both, Requirement(Access.AUTHENTICATED)]) == Requirement(Access.SCOPES, (frozenset({"a", "c"}), frozenset({"b", "c"})))
    assert all_of([either, Requirement(Access.SCOPES, (frozenset({"a"}),))]) == Requirement(Access.SCOPES, (frozenset({"a"}),))
    assert all_of([Requirement(Access.PUBLIC), Requirement(Access.AUTHENTICATED)]) == Requirement(Access.AUTHENTICATED)
    assert all_of([Requirement(Access.PUBLIC)]) == Requirement(Access.PUBLIC)


def test_a_persisted_query_that_does_not_validate_is_a_load_error(tmp_path: Path) -> None:
    config = write(tmp_path, "      schema: bank.graphql\n      persisted_queries: persisted.json\n", GOOD_SDL)
    body = "{ balance }"
    manifest = {"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{"id": hashlib.sha256(body.encode()).hexdigest(), "name": None, "type": "query", "body": body}]}
    (tmp_path / "routes" / "persisted.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="graphql.persisted_queries: operation .*: the document is not valid: Cannot query field 'balance'"):
        load_config(config)
