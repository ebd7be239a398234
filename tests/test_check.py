"""`gateway check`'s warnings (likely mistakes that still load), `--strict`, and a CA file that
does not read: `file:line` from `check` and from `serve`, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processes import run
from tests.support import KEYS, cli, write_config

TABLE = """\
name: shop
upstream: http://shop.internal
prefix: /shop
scopes:
  orders:read:
  orders:write:
    implies: [orders:read]
  orders:admin:
  refunds:write:
    requires: [refunds:approve]
  refunds:approve:
  legacy:export:
routes:
  GET /orders/{orderId}: orders:read
  GET /orders/{orderId}/items: orders:read
  GET /orders/recent: orders:admin
  POST /orders/{orderId}/refunds: refunds:write
  GET /items/{itemId}/orders/{orderId}: orders:read
  GET /items/top/orders/{orderId}: public
  GET /orders/recent/{view}: orders:admin
  GET /items/{itemId}/stock: orders:read
  GET /items/top/{rank}: orders:read
"""
EMPTY = "name: later\nupstream: http://later.internal\nprefix: /later\nroutes: {}\n"


def test_check_prints_each_warning_as_file_line_and_exits_0_unless_strict(tmp_path: Path) -> None:
    config = write_config(tmp_path, table=TABLE)
    (tmp_path / "routes" / "later.yaml").write_text(EMPTY)
    shop, later = tmp_path / "routes" / "payments.yaml", tmp_path / "routes" / "later.yaml"
    expected = [
        f"{later}:4: warning: table later has no routes: every request under /later is refused (404)",
        # orders:write implies a required scope, refunds:approve is required by one: both are used
        f"{shop}:12: warning: scope legacy:export of the catalog is used by no route (none requires it, nor a scope it implies or that requires it)",
        # /orders/recent beside /orders/{orderId}, /items/top/orders/{orderId} beside /items/{itemId}/orders/{orderId}:
        # literals beside parameters, each route reachable as written, no warning; but /orders/recent/items goes to
        # /orders/recent/{view} (orders:admin), not to /orders/{orderId}/items (orders:read), by segment order alone
        (f"{shop}:15: warning: GET /orders/{{orderId}}/items crosses GET /orders/recent/{{view}} ({shop}:20): neither is more specific, "
         "and the requests both match (such as /shop/orders/recent/items) go there, its literal segment coming first"),
        # /items/top/stock: GET /items/top/{rank} takes it, but it decides as GET /items/{itemId}/stock would: no warning
    ]
    result = cli("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[:-1] == expected
    assert result.stdout.splitlines()[-1].startswith("OK: 2 route tables, 9 routes (later: 0, shop: 9)")
    strict = cli("check", "--config", str(config), "--strict")
    assert strict.returncode == 1 and strict.stdout == result.stdout


def test_a_route_crossed_from_another_table_names_that_table(tmp_path: Path) -> None:
    table = "name: wide\nupstream: http://wide.internal\nprefix: /shop\nroutes:\n  GET /{section}/list: public\n"
    config = write_config(tmp_path, table=table)
    narrow = tmp_path / "routes" / "zz-narrow.yaml"
    narrow.write_text("name: narrow\nupstream: http://narrow.internal\nprefix: /shop/orders\nroutes:\n  GET /{id}: public\n")
    result = cli("check", "--config", str(config))
    assert result.returncode == 0
    wide = tmp_path / "routes" / "payments.yaml"
    # another upstream takes /shop/orders/list: the requirements being the same does not make the routes alike
    assert result.stdout.splitlines()[:-1] == [
        (f"{wide}:5: warning: GET /{{section}}/list crosses GET /{{id}} of table narrow ({narrow}:5): neither is more specific, "
         "and the requests both match (such as /shop/orders/list) go there, its literal segment coming first"),
    ]
    # a literal route of narrow for /list refines wide's: each takes its own paths, and nothing crosses any more
    narrow.write_text("name: narrow\nupstream: http://narrow.internal\nprefix: /shop/orders\nroutes:\n  GET /list: public\n  GET /{id}: public\n")
    assert run("check", "--config", str(config), "--strict").returncode == 0


@pytest.mark.parametrize("routes", [
    "  GET /users/{id}: a\n  GET /users/me: b\n",                         # a literal beside a parameter
    "  GET /users/{id}/x: a\n  GET /users/me/x: public\n",               # ... with looser requirements
    "  GET /{a}/{b}: a\n  GET /users/{b}: b\n  GET /users/me: public\n",  # nested refinements
    "  GET /{a}/x: a\n  GET /users/{b}: a\n",                             # crossing, deciding alike
])
def test_routes_that_each_take_their_own_paths_are_no_warning(tmp_path: Path, routes: str) -> None:
    table = f"name: t\nupstream: http://t.internal\nroutes:\n{routes}"
    result = run("check", "--config", str(write_config(tmp_path, table=table)), "--strict")
    assert result.returncode == 0 and result.stdout.startswith("OK: 1 route tables"), result.stdout


@pytest.mark.parametrize("routes", [
    "  GET /{a}/x: a\n  GET /users/{b}: b\n",                             # different requirements
    "  GET /{a}/x: a\n  GET /users/{b}: {scopes: a, hide: true}\n",       # the same, but one hides itself
    "  GET /{a}/{u}/x: {scopes: a, user: u}\n  GET /users/{u}/{b}: a\n",  # one binds the user
])
def test_routes_that_cross_and_decide_differently_are_a_warning(tmp_path: Path, routes: str) -> None:
    table = f"name: t\nupstream: http://t.internal\nroutes:\n{routes}"
    result = run("check", "--config", str(write_config(tmp_path, table=table)), "--strict")
    assert result.returncode == 1 and " crosses " in result.stdout, result.stdout


def test_described_scopes_no_route_uses_are_the_providers_vocabulary(tmp_path: Path) -> None:
    table = "name: t\nupstream: http://t.internal\nscopes:\n  a:\n  openid:\n    description: an OpenID Connect login\n  stale:\nroutes:\n  GET /x: a\n"
    result = run("check", "--config", str(write_config(tmp_path, table=table)))
    assert result.stdout.splitlines()[:-1] == [
        (f"{tmp_path / 'routes' / 'payments.yaml'}:7: warning: scope stale of the catalog is used by no route"
         " (none requires it, nor a scope it implies or that requires it)"),
    ]


def test_the_shipped_tables_pass_check_strict() -> None:
    result = run("check", "--config", str(Path(__file__).parent.parent / "routes" / "tests" / "gateway.yaml"), "--strict")
    assert result.returncode == 0 and result.stdout.startswith("OK: "), result.stdout


def test_tables_without_likely_mistakes_print_only_the_summary(tmp_path: Path) -> None:
    table = "name: t\nupstream: http://t.internal\nscopes:\n  a:\n  b:\n    implies: [a]\nroutes:\n  GET /x/{id}: a\n  GET /y/mine: b\n  GET /z/{id}: public\n"
    result = cli("check", "--config", str(write_config(tmp_path, table=table)), "--strict")
    assert result.returncode == 0 and result.stdout.startswith("OK: 1 route tables, 3 routes")


def test_scopes_required_below_the_route_are_used(tmp_path: Path) -> None:
    """A GraphQL field's or a response member's scope is used although no route requires it."""
    table = (
        "name: t\nupstream: http://t.internal\nscopes:\n  deposit:\n  email:\n  unused:\nroutes:\n"
        "  POST /graphql: {scopes: authenticated, graphql: {fields: {Mutation.makeDeposit: deposit}}}\n"
        "  GET /me: {scopes: authenticated, response_fields: {email: email}}\n"
    )
    result = cli("check", "--config", str(write_config(tmp_path, table=table)))
    assert result.stdout.splitlines()[:-1] == [
        f"{tmp_path / 'routes' / 'payments.yaml'}:6: warning: scope unused of the catalog is used by no route"
        " (none requires it, nor a scope it implies or that requires it)",
    ]


def test_a_ca_file_that_does_not_read_is_a_file_line_error_for_check_and_serve(tmp_path: Path) -> None:
    config = write_config(tmp_path, proxy=f"proxy:\n  connect_timeout: 2\n  ca_file: {KEYS / 'rsa.pub.pem'}\n")
    expected = f"{config}:9: proxy.ca_file: {KEYS / 'rsa.pub.pem'} is not a PEM bundle of CA certificates"
    checked = cli("check", "--config", str(config))
    assert checked.returncode == 1 and checked.stdout.startswith(expected), checked.stdout
    served = run("serve", "--config", str(config), "--port", "0")
    assert served.returncode == 1 and served.stdout.startswith(expected), served.stdout + served.stderr
    assert "Traceback" not in served.stdout + served.stderr


TABLE_OF_TOKENS = "name: t\nupstream: http://t.internal\nscopes:\n  a:\nroutes:\n  GET /x: a\n"


def test_check_refuses_a_key_no_allowed_algorithm_can_use_at_its_line(tmp_path: Path) -> None:
    tokens = f"tokens:\n  algorithms: [RS256]\n  public_keys: [{KEYS / 'ec.pub.pem'}]\n"
    config = write_config(tmp_path, table=TABLE_OF_TOKENS, tokens=tokens)
    checked = run("check", "--config", str(config))
    assert checked.returncode == 1, checked.stdout
    assert checked.stdout.splitlines() == [(
        f"{config}:4: tokens.public_keys {KEYS / 'ec.pub.pem'}: an EC P-256 key (ES256) verifies no algorithm tokens.algorithms"
        " allows (RS256), so every token would be refused"
    )]


def test_check_refuses_a_pem_given_as_jwks_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, table=TABLE_OF_TOKENS, tokens=f"tokens:\n  jwks_file: {KEYS / 'rsa.pub.pem'}\n")
    checked = run("check", "--config", str(config))
    assert checked.returncode == 1 and checked.stdout.splitlines() == [
        f"{config}:3: tokens.jwks_file {KEYS / 'rsa.pub.pem'}: this is a PEM file, not a JWKS (JSON); list a PEM public key under tokens.public_keys",
    ]


def test_check_warns_of_a_jwks_key_left_out_and_fails_only_when_strict(tmp_path: Path) -> None:
    tokens = f"tokens:\n  algorithms: [ES256]\n  jwks_file: {KEYS / 'jwks.json'}\n"
    config = write_config(tmp_path, table=TABLE_OF_TOKENS, tokens=tokens)
    checked = run("check", "--config", str(config))
    warning = (f"{config}:4: warning: tokens.jwks_file {KEYS / 'jwks.json'}: key (kid 'rsa-1'): an RSA key of 2048 bits (RS256) verifies"
               " no algorithm tokens.algorithms allows (ES256), left out")
    assert checked.returncode == 0 and checked.stdout.splitlines()[:-1] == [warning], checked.stdout
    assert run("check", "--config", str(config), "--strict").returncode == 1
