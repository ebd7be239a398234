"""A route's `claims:` conditions: the token's claims bound to literals and decoded path
parameters; unmet is 404, as if the route did not exist, before any scope is judged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from gateway.app import Gateway
from gateway.loading import ConfigError, load_config
from tests.support import mint, write_config

pytestmark = pytest.mark.anyio
TABLE = """\
name: orgs
upstream: http://upstream.test:8080
routes:
  GET /orgs/{orgId}/reports: {scopes: reports:read, claims: {org_id: "{orgId}", tier: gold}}
  GET /orgs/{orgId}/members: {scopes: authenticated, claims: {org_id: "{orgId}"}}
  GET /orgs/{orgId}/open: reports:read
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = Gateway(load_config(write_config(tmp_path, table=TABLE, proxy="proxy:\n  client: httpx\n")))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="upstream.test").mock(return_value=httpx.Response(200, json={"upstream": True}))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
            yield http


def bearer(scope: str | None = "reports:read", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(scope, **claims)}"}


@pytest.mark.parametrize(("path", "claims", "status"), [
    ("/orgs/acme/reports", {"org_id": "acme", "tier": "gold"}, 200),
    ("/orgs/acme/reports", {"org_id": ["other", "acme"], "tier": "gold"}, 200),  # a list claim holds when it contains it
    ("/orgs/42/reports", {"org_id": 42, "tier": "gold"}, 200),  # an integer claim, as its digits
    ("/orgs/caf%C3%A9/reports", {"org_id": "café", "tier": "gold"}, 200),  # the decoded parameter
    ("/orgs/acme/reports", {"org_id": "other", "tier": "gold"}, 404),  # another tenant
    ("/orgs/acme/reports", {"org_id": "acme", "tier": "silver"}, 404),  # a literal unmet
    ("/orgs/acme/reports", {"org_id": "acme"}, 404),  # a claim absent
    ("/orgs/acme/reports", {"tier": "gold"}, 404),
    ("/orgs/acme/reports", {"org_id": ["other"], "tier": "gold"}, 404),
    ("/orgs/acme/reports", {"org_id": "ACME", "tier": "gold"}, 404),  # exact, case included
    ("/orgs/acme/reports", {"org_id": "acme", "tier": ["gold"]}, 200),
    ("/orgs/acme/reports", {"org_id": {"id": "acme"}, "tier": "gold"}, 404),  # no other type equals
    ("/orgs/1/reports", {"org_id": True, "tier": "gold"}, 404),
    ("/orgs/42/reports", {"org_id": 42.0, "tier": "gold"}, 404),
    ("/orgs/acme/members", {"org_id": "acme"}, 200),
    ("/orgs/acme/members", {"org_id": "evil"}, 404),
    ("/orgs/acme/open", {"org_id": "evil"}, 200),  # a route without conditions
])
async def test_claim_conditions(client: httpx.AsyncClient, path: str, claims: dict[str, Any], status: int) -> None:
    answer = await client.get(path, headers=bearer(**claims))
    assert answer.status_code == status, answer.text
    if status == 404:
        assert answer.json()["error"] == "not_found" and "www-authenticate" not in answer.headers
        assert "org_id" not in answer.text and "tier" not in answer.text  # it reveals nothing


@pytest.mark.parametrize("scope", [None, "reports:write", "reports:read"])
async def test_another_tenant_learns_nothing_whatever_its_scopes(client: httpx.AsyncClient, scope: str | None) -> None:
    """Before the scope requirement: a 403 would tell another tenant the route is there."""
    answer = await client.get("/orgs/acme/reports", headers=bearer(scope, org_id="other", tier="gold"))
    assert answer.status_code == 404


async def test_the_tenant_without_the_scope_is_told_what_is_missing(client: httpx.AsyncClient) -> None:
    answer = await client.get("/orgs/acme/reports", headers=bearer("other:scope", org_id="acme", tier="gold"))
    assert answer.status_code == 403 and "reports:read" in answer.json()["error_description"]


async def test_a_remembered_token_meets_the_conditions_of_each_path_anew(client: httpx.AsyncClient) -> None:
    headers = bearer(org_id="acme", tier="gold")
    assert [(await client.get(f"/orgs/{org}/reports", headers=headers)).status_code for org in ("acme", "evil", "acme", "evil")] == [200, 404, 200, 404]


@pytest.mark.parametrize(("route", "words"), [
    ('GET /orgs/{orgId}: {scopes: s, claims: {org_id: "{org}"}}', "claims.org_id: {org} names no parameter of the template (it has: orgId)"),
    ('GET /orgs: {scopes: s, claims: {org_id: "{orgId}"}}', "names no parameter of the template (it has: none)"),
    ('GET /orgs/{orgId}: {scopes: s, claims: {org_id: "org-{orgId}"}}', "a value is a literal or one whole '{param}'"),
    ("GET /orgs/{orgId}: {scopes: s, claims: {}}", "claims maps token claims"),
    ("GET /orgs/{orgId}: {scopes: s, claims: [org_id]}", "claims must be a mapping"),
    ("GET /orgs/{orgId}: {scopes: s, claims: {tier: [gold]}}", "claims.tier must be a string, an integer or a '{param}'"),
    ("GET /orgs/{orgId}: {scopes: s, claims: {tier: true}}", "claims.tier must be"),
    ('GET /orgs/{orgId}: {scopes: public, claims: {org_id: "{orgId}"}}', "a public route reads no token"),
])
def test_a_claim_condition_the_template_cannot_meet_is_refused_at_its_line(tmp_path: Path, route: str, words: str) -> None:
    config = write_config(tmp_path, table=f"name: t\nupstream: http://up.test\nroutes:\n  {route}\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    shown = [str(problem) for problem in error.value.problems]
    assert any(text.startswith(f"{tmp_path / 'routes' / 'payments.yaml'}:4: ") and words in text for text in shown), shown
