"""The decision as a pure function: no sockets, no event loop."""


from pathlib import Path

import pytest

from gateway.loading import load_config
from gateway.tables import Tables
from gateway.decision import authorize, is_public
from gateway.routing import route
from gateway.errors import Forbidden
from gateway.tokens import VerifiedToken
from tests.support import write_config


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    return load_config(write_config(tmp_path_factory.mktemp("decision"))).tables


def token(*scopes: str) -> VerifiedToken:
    return VerifiedToken(scopes=frozenset(scopes), subject="u", client="c", expires_at=float("inf"))


# (method, path, scopes held, allowed)
MATRIX = [
    ("GET", "/api/merchants/M1/webhooks", ["psp.webhook:read"], True),
    ("GET", "/api/merchants/M1/webhooks", ["psp.webhook:write"], True),  # write implies read
    ("GET", "/api/merchants/M1/webhooks", ["psp.accountsettings:write"], False),
    ("GET", "/api/merchants/M1/webhooks", [], False),
    ("POST", "/api/merchants/M1/webhooks", ["psp.webhook:write"], True),
    ("POST", "/api/merchants/M1/webhooks", ["psp.webhook:read"], False),  # read never implies write
    ("GET", "/api/merchants/M1/webhooks/W1", ["psp.webhook:read"], True),
    ("GET", "/api/merchants/M1/webhooks/special", ["psp.webhook:read"], False),  # literal route wins, needs psp.admin
    ("GET", "/api/merchants/M1/webhooks/special", ["psp.admin"], True),
    ("GET", "/api/merchants/M1", ["psp.accountsettings:write"], True),
    ("GET", "/api/merchants/M1", ["psp.onlinepayment:write"], True),
    ("GET", "/api/merchants/M1", ["psp.webhook:write"], False),
    ("POST", "/api/paymentLinks", ["psp:paybylink:write", "psp.onlinepayment.tokenization:write"], True),
    ("POST", "/api/paymentLinks", ["psp:paybylink:write"], False),
    ("POST", "/api/paymentLinks", ["psp.onlinepayment.tokenization:write"], False),
    ("GET", "/api/me", [], True),
    ("HEAD", "/api/merchants/M1/webhooks", ["psp.webhook:read"], True),
]


@pytest.mark.parametrize(("method", "path", "scopes", "allowed"), MATRIX)
def test_allow_deny_matrix(tables: Tables, method: str, path: str, scopes: list[str], allowed: bool) -> None:
    match = route(tables, method, path.encode())
    if allowed:
        grant = authorize(match, token(*scopes))
        assert set(scopes) <= grant.scopes
    else:
        with pytest.raises(Forbidden):
            authorize(match, token(*scopes))


def test_a_refusal_names_the_requirement_and_what_the_token_had(tables: Tables) -> None:
    with pytest.raises(Forbidden) as refused:
        authorize(route(tables, "GET", b"/api/merchants/M1"), token("psp.webhook:read"))
    assert refused.value.description == (
        "GET /merchants/{merchantId} requires one of: psp.accountsettings:write; psp.onlinepayment:write; "
        "the token grants psp.webhook:read (missing one of: psp.accountsettings:write; psp.onlinepayment:write)"
    )
    assert refused.value.scope == "psp.accountsettings:write"
    assert refused.value.extra["required"] == [["psp.accountsettings:write"], ["psp.onlinepayment:write"]]


def test_all_of_requirements_are_listed_together(tables: Tables) -> None:
    with pytest.raises(Forbidden) as refused:
        authorize(route(tables, "POST", b"/api/paymentLinks"), token())
    assert "requires psp.onlinepayment.tokenization:write and psp:paybylink:write; the token grants no scopes" in refused.value.description
    assert refused.value.scope == "psp.onlinepayment.tokenization:write psp:paybylink:write"


def test_effective_scopes_include_implied_ones(tables: Tables) -> None:
    grant = authorize(route(tables, "GET", b"/api/merchants/M1/webhooks"), token("psp.webhook:write"))
    assert grant.scopes == {"psp.webhook:write", "psp.webhook:read"}


def test_public_routes_are_recognised_without_a_token(tables: Tables) -> None:
    assert is_public(route(tables, "GET", b"/api/status"))
    assert not is_public(route(tables, "GET", b"/api/me"))


def test_effective_scopes_are_worked_out_once_per_scope_set_and_api(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "routes" / "ledger.yaml").write_text(
        "name: ledger\nupstream: http://ledger.test\nprefix: /ledger\nroutes:\n  GET /entries: psp.webhook:read\n"
    )
    tables = load_config(config).tables
    payments = authorize(route(tables, "GET", b"/api/merchants/M1/webhooks"), token("psp.webhook:write"))
    assert payments.scopes == {"psp.webhook:write", "psp.webhook:read"}
    # the ledger's catalog implies nothing: what payments worked out must not leak into it
    with pytest.raises(Forbidden, match=r"the token grants psp.webhook:write \(missing psp.webhook:read\)$"):
        authorize(route(tables, "GET", b"/ledger/entries"), token("psp.webhook:write"))
    # another caller with the same scopes: the same answer, not worked out again
    other = VerifiedToken(scopes=frozenset({"psp.webhook:write"}), subject="v", client="d", expires_at=float("inf"))
    again = authorize(route(tables, "GET", b"/api/merchants/M2/webhooks/W1"), other)
    assert again.scopes is payments.scopes and (again.subject, again.client) == ("v", "d")
    # a reload compiles new catalogs, which work it out afresh
    reloaded = authorize(route(load_config(config).tables, "GET", b"/api/merchants/M1/webhooks"), token("psp.webhook:write"))
    assert reloaded.scopes is not payments.scopes and reloaded.scopes == payments.scopes
