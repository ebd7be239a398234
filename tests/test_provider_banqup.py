"""routes/banqup.yaml walked through Banqup's scope page (named atop the table) sentence by
sentence, each quoted beside its cases, through the real ASGI app (the project's own pytest
plugin, gateway.testing, builds it from the config the example tables are tested under)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.harness import Harness
from tests.scenarios import Case

UUID = "3f95524e-70aa-4663-8548-763583e08909"
ENTITY = "/banqup/entitystore/v1/entities/6b0c4e2e-6f55-4d5f-9a57-2f1b3c1d0e01"

SEED = [
    ("read: Grants permission to the application or user to view or read specific resources without the ability to modify or write data.", [
        Case(f"GET {ENTITY}", "entity_read", "forward", forwarded_scopes="entity_read"),
        Case(f"PATCH {ENTITY}", "entity_read", "403 forbidden"),
        Case("GET /banqup/entitystore/v1/spaces/s1", "space_read", "forward"),
        Case("PATCH /banqup/entitystore/v1/spaces/s1", "space_read", "403 forbidden"),
    ]),
    ("write: Grants permission to the application or user to create, modify, or delete data within the API.", [
        Case(f"PATCH {ENTITY}", "entity_write", "forward"),
        # the table's reading: write holds read's view too (the levels nest)
        Case(f"GET {ENTITY}", "entity_write", "forward", forwarded_scopes="entity_read entity_write"),
        Case("DELETE /banqup/entitystore/v1/spaces/s1/payment-accounts/p1", "space_write", "forward"),
    ]),
    ("admin: Grants extensive control and management capabilities within the API.", [
        Case("POST /banqup/servicemngmt/v2/applications/a1/approve", "store_admin", "forward", forwarded_scopes="store_admin store_read store_write"),
        Case("POST /banqup/servicemngmt/v2/applications", "store_admin", "forward"),
        # approval is hidden from everyone else: as if it did not exist
        Case("POST /banqup/servicemngmt/v2/applications/a1/approve", "store_write", "404 not_found"),
    ]),
    ("Every Banqup scope is assigned: a name (e.g. entity_read), an identifier (e.g. 3f95524e-70aa-4663-8548-763583e08909)", [
        Case(f"GET {ENTITY}", UUID, "forward", forwarded_scopes="entity_read"),
        Case(f"PATCH {ENTITY}", UUID, "403 forbidden"),
        # only the identifier the scope page gives stands for a scope; no other is made up
        Case(f"GET {ENTITY}", "3f95524e-70aa-4663-8548-763583e08900", "403 forbidden"),
    ]),
    ("[no scope] Grants read-only access to public information (e.g. API authorization).", [
        Case("POST /banqup/oauth2/client_credential/gettoken", None, "forward"),
        Case("GET /banqup/entitystore/v1/spaces/s1/context", "", "forward"),
        Case("GET /banqup/entitystore/v1/spaces/s1/context", None, "401 unauthorized"),
    ]),
    ("store_read / store_write: view / manipulate data related to applications from the Banqup Store.", [
        Case("GET /banqup/servicemngmt/v2/applications", "store_read", "forward"),
        Case("POST /banqup/servicemngmt/v2/applications", "store_read", "403 forbidden"),
        Case("POST /banqup/servicemngmt/v2/applications", "store_write", "forward"),
    ]),
    ("user_read / user_write: view / manipulate user-related data, such as name, email, status etc.", [
        Case("GET /banqup/solution/business/v1/users/me", "user_read", "forward"),
        Case("PATCH /banqup/solution/business/v1/users/me", "user_read", "403 forbidden"),
        Case("PATCH /banqup/solution/business/v1/users/me", "user_write", "forward"),
    ]),
    ("account_read / account_write: view / manipulate data related to payment accounts.", [
        Case(f"GET {ENTITY}/payment-accounts", "account_read", "forward"),
        Case(f"POST {ENTITY}/payment-accounts", "account_read", "403 forbidden"),
        Case(f"POST {ENTITY}/payment-accounts", "account_write", "forward"),
    ]),
    ("extension_write: Grants access to manipulate extension-related data, e.g. granting permission to an extension.", [
        Case("POST /banqup/entitystore/v1/spaces/s1/extensions/e1/permissions", "extension_write", "forward"),
        Case("POST /banqup/entitystore/v1/spaces/s1/extensions/e1/permissions", "extension_read", "403 forbidden"),
        Case("GET /banqup/entitystore/v1/spaces/s1/extensions/e1", "extension_write", "forward"),
    ]),
    ("(deny by default) anything the table does not route", [
        Case("DELETE /banqup/entitystore/v1/entities/e1", "entity_write", "404 not_found"),
    ]),
]


@pytest.fixture
def banqup(make_gateway: Callable[..., Harness]) -> Harness:
    return make_gateway("routes/tests/gateway.yaml")


def check(banqup: Harness, case: Case) -> None:
    """The case's outcome, and (forwarded) the scopes the upstream is told; no scopes: no token."""
    caller = {"token": None} if case.scopes is None else {"scopes": case.scopes}
    decision = banqup.assert_decision(case.request, case.expect, **caller)
    if case.forwarded_scopes is not None:
        assert decision.upstream_request is not None and decision.upstream_request.headers["x-auth-scopes"] == case.forwarded_scopes, case


@pytest.mark.parametrize(("sentence", "cases"), SEED, ids=[sentence[:60] for sentence, _ in SEED])
def test_the_seed_sentence_by_sentence(banqup: Harness, sentence: str, cases: list[Case]) -> None:
    for case in cases:
        check(banqup, case)


def test_a_refusal_names_the_scope_in_the_challenge(banqup: Harness) -> None:
    decision = banqup.assert_decision(f"PATCH {ENTITY}", "403 forbidden", scopes="entity_read")
    challenge = decision.header("www-authenticate")
    assert challenge is not None and 'realm="banqup"' in challenge and 'scope="entity_write"' in challenge
