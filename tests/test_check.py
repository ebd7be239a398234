"""`gateway check`'s warnings (likely mistakes that still load), `--strict`, and a CA file that
does not read: `file:line` from `check` and from `serve`, never a traceback."""

from __future__ import annotations

from pathlib import Path

from tests.support import KEYS, cli, write_config
from tests.test_cli import run

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
        f"{shop}:14: warning: GET /orders/{{orderId}} is shadowed by the more specific GET /orders/recent ({shop}:16): the requests both match go there",
        f"{shop}:18: warning: GET /items/{{itemId}}/orders/{{orderId}} is shadowed by the more specific GET /items/top/orders/{{orderId}} ({shop}:19): the requests both match go there",
    ]
    result = cli("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[:-1] == expected
    assert result.stdout.splitlines()[-1].startswith("OK: 2 route tables, 6 routes (later: 0, shop: 6)")
    strict = cli("check", "--config", str(config), "--strict")
    assert strict.returncode == 1 and strict.stdout == result.stdout


def test_a_route_shadowed_from_another_table_names_that_table(tmp_path: Path) -> None:
    table = "name: wide\nupstream: http://wide.internal\nprefix: /shop\nroutes:\n  GET /{section}/list: public\n"
    config = write_config(tmp_path, table=table)
    narrow = tmp_path / "routes" / "zz-narrow.yaml"
    narrow.write_text("name: narrow\nupstream: http://narrow.internal\nprefix: /shop/orders\nroutes:\n  GET /list: public\n  GET /{id}: public\n")
    result = cli("check", "--config", str(config))
    assert result.returncode == 0
    wide = tmp_path / "routes" / "payments.yaml"
    assert result.stdout.splitlines()[:-1] == [
        f"{wide}:5: warning: GET /{{section}}/list is shadowed by the more specific GET /list of table narrow ({narrow}:5): the requests both match go there",
        # /shop/orders/list matches GET /{id} of narrow too, but GET /list takes it: no warning that wide loses to /{id}
        f"{narrow}:6: warning: GET /{{id}} is shadowed by the more specific GET /list ({narrow}:5): the requests both match go there",
    ]


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
