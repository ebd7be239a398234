"""routes/moneyhub.yaml walked through Moneyhub's scope page (named atop the table) sentence by
sentence, each quoted beside its cases, through the real ASGI app and a real grant store: the
bank selectors and the transactions:read scopes are exclusive, transactions:write needs a read
scope, user management is for client credentials only, and accounts_details:read counts only
while the client's grant is active."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.scenarios import Case, GivenGrant, Provider, Revoke, Says, Wait, play, store_url

pytestmark = pytest.mark.anyio
M = "/moneyhub"
CC = {"sub": "client-1"}  # a client-credentials token: no grant-type claim, sub == client_id
GTY = {"gty": "client-credentials"}  # one that says so (sub stays user-1: the user it acts for)

SEED: list[tuple[str, list[Any]]] = [
    ("We use scopes to both describe the access the user is granting and the way in which you would like the user to identify themselves.", [
        Case(f"GET {M}/accounts", "accounts:read", "forward", forwarded_scopes="accounts:read"),
        Case(f"GET {M}/accounts", "categories:read", "403 forbidden"),
        Case(f"GET {M}/accounts", None, "401 unauthorized"),
    ]),
    ("please check our discovery document ... to see which particular scopes are supported by a given deployment", [
        # a deployment may support scopes this scope page does not list: ignored, never forwarded
        Case(f"GET {M}/accounts", "accounts:read statements_basic:read", "forward", forwarded_scopes="accounts:read"),
    ]),
    ("openid - this scope is required and indicates that you are using our OpenID Connect interface", [
        # required by the identity service when it issues the token; it opens no data route
        Case(f"GET {M}/accounts", "openid", "403 forbidden"),
        Case(f"GET {M}/accounts", "openid accounts:read", "forward", forwarded_scopes="accounts:read openid"),
    ]),
    ("offline_access - this scope indicates that you would like ongoing access to the user's resources, when it is present we will issue a refresh token", [
        Case(f"GET {M}/accounts", "offline_access", "403 forbidden"),
        Case(f"GET {M}/accounts", "openid offline_access accounts:read", "forward", forwarded_scopes="accounts:read offline_access openid"),
    ]),
    ("reauth - Scope required to initiate a re authentication journey / reconsent - ... to reconsent a connection / refresh - ... to refresh a legacy connection", [
        # journeys of the identity service: accepted in a token, no data route opens with them
        Case(f"GET {M}/accounts", "openid reauth reconsent refresh", "403 forbidden"),
        Case(f"GET {M}/accounts", "openid reauth reconsent refresh accounts:read", "forward"),
    ]),

    # --- Financial institutions -----------------------------------------------------------------------
    ("id:{bank_id} - if you pass a specific bank id ... we will bypass the bank chooser and take the user directly to the selected bank", [
        Case(f"GET {M}/accounts", "openid id:1ffe704d39629a929c8e293880fb449a accounts:read", "forward",
             forwarded_scopes="accounts:read id:1ffe704d39629a929c8e293880fb449a openid"),
        Case(f"GET {M}/oidc/.well-known/all-connections", None, "forward"),   # where bank ids come from
    ]),
    ("id:all / id:api / id:legacy / id:test - display a list of all / API based / legacy (screen scraping) / test connections", [
        Case(f"GET {M}/accounts", "id:all accounts:read", "forward", forwarded_scopes="accounts:read id:all"),
        Case(f"GET {M}/accounts", "id:api accounts:read", "forward"),
        Case(f"GET {M}/accounts", "id:legacy accounts:read", "forward"),
        Case(f"GET {M}/accounts", "id:test accounts:read", "forward"),
        Case(f"GET {M}/oidc/.well-known/api-connections", None, "forward"),
        Case(f"GET {M}/oidc/.well-known/legacy-connections", None, "forward"),
        Case(f"GET {M}/oidc/.well-known/test-connections", None, "forward"),
    ]),
    ("The above scopes are mutually exclusive and we will return an error of invalid_scope if more than one of the above is supplied.", [
        Says(Case(f"GET {M}/accounts", "id:B1 id:all accounts:read", "403 invalid_scope"),
             description=("at most one of", "id:B1 and id:all"), challenge=('error="invalid_scope"',)),
        # two bank ids are two selectors
        Case(f"GET {M}/accounts", "id:B1 id:B2 accounts:read", "403 invalid_scope"),
        Case(f"GET {M}/accounts", "id:api id:legacy accounts:read", "403 invalid_scope"),
        Case(f"GET {M}/accounts", "id:all id:test accounts:read", "403 invalid_scope"),
        Case(f"GET {M}/accounts", "id:all id:api id:legacy id:test accounts:read", "403 invalid_scope"),
        Case(f"GET {M}/transactions", "id:test id:B1 transactions:read:all", "403 invalid_scope"),
        # one is fine
        Case(f"GET {M}/accounts", "id:B2 accounts:read", "forward"),
    ]),

    # --- Data access ----------------------------------------------------------------------------------
    ("Most data access scopes are available to use in both use cases. The scopes ending in write:all are only available in the second use.", [
        # which use case a token was issued for is the identity service's to decide: the gateway
        # honours a write:all scope the token carries
        Case(f"DELETE {M}/accounts/a1", "accounts:write:all", "forward"),
        Case(f"DELETE {M}/transactions/t1", "transactions:write:all", "forward"),
    ]),
    ("transactions:read:all - All transactions / transactions:read:in - All incoming transactions / transactions:read:out - All outgoing transactions", [
        Case(f"GET {M}/transactions", "transactions:read:all", "forward", forwarded_scopes="transactions:read:all"),
        Case(f"GET {M}/transactions", "transactions:read:in", "forward", forwarded_scopes="transactions:read:in"),
        Case(f"GET {M}/transactions", "transactions:read:out", "forward", forwarded_scopes="transactions:read:out"),
        Case(f"GET {M}/transactions/t1", "transactions:read:in", "forward"),
        Case(f"GET {M}/transactions/t1/files/f1", "transactions:read:out", "forward"),
        Case(f"GET {M}/transactions", "accounts:read", "403 forbidden"),
        # creating a transaction needs all transactions in view
        Case(f"POST {M}/transactions", "transactions:read:in transactions:write:all", "403 forbidden"),
    ]),
    ("Note - the above transactions:read scopes are mutually exclusive - if more than one is provided there will be an invalid_scope error.", [
        Says(Case(f"GET {M}/transactions", "transactions:read:all transactions:read:in", "403 invalid_scope"),
             description=("transactions:read:all and transactions:read:in",)),
        Case(f"GET {M}/transactions", "transactions:read:in transactions:read:out", "403 invalid_scope"),
        Case(f"GET {M}/transactions", "transactions:read:all transactions:read:in transactions:read:out", "403 invalid_scope"),
        # on any route of the API: the token itself is invalid
        Case(f"GET {M}/accounts", "accounts:read transactions:read:all transactions:read:out", "403 invalid_scope"),
    ]),
    ("transactions:write - ... it is possible to edit certain fields (e.g. category, notes, etc.). If transactions:write is provided without any transactions:read scope there will be an invalid_scope error", [
        Says(Case(f"PATCH {M}/transactions/t1", "transactions:write", "403 invalid_scope"),
             description=("transactions:write is held only with one of",)),
        Case(f"GET {M}/accounts", "accounts:read transactions:write", "403 invalid_scope"),
        Case(f"PATCH {M}/transactions/t1", "transactions:write transactions:write:all", "403 invalid_scope"),
        Case(f"PATCH {M}/transactions/t1", "transactions:write transactions:read:all", "forward",
             forwarded_scopes="transactions:read:all transactions:write"),
        Case(f"PATCH {M}/transactions/t1", "transactions:write transactions:read:in", "forward"),
        Case(f"POST {M}/transactions/t1/files", "transactions:write transactions:read:out", "forward"),
        Case(f"DELETE {M}/transactions/t1/files/f1", "transactions:write transactions:read:out", "forward"),
        # edits only: deleting a transaction or splitting it needs write:all
        Case(f"DELETE {M}/transactions/t1", "transactions:write transactions:read:all", "403 forbidden"),
        Case(f"POST {M}/transactions/t1/splits", "transactions:write transactions:read:all", "403 forbidden"),
        Case(f"PATCH {M}/transactions/t1", "transactions:read:all", "403 forbidden"),
    ]),
    ("transactions:write:all - This allows full access to create transactions, edit all their properties and delete transactions.", [
        Case(f"POST {M}/transactions", "transactions:read:all transactions:write:all", "forward"),
        Case(f"POST {M}/transactions-collection", "transactions:read:all transactions:write:all", "forward"),
        Case(f"PATCH {M}/transactions/t1", "transactions:read:all transactions:write:all", "forward"),
        Case(f"DELETE {M}/transactions/t1", "transactions:write:all", "forward", forwarded_scopes="transactions:write:all"),
        Case(f"POST {M}/transactions/t1/splits", "transactions:write:all", "forward"),
        Case(f"PATCH {M}/transactions/t1/splits/s1", "transactions:write:all", "forward"),
        Case(f"DELETE {M}/transactions/t1/splits", "transactions:write:all", "forward"),
        Case(f"POST {M}/transactions", "transactions:write:all", "403 forbidden"),   # creating also reads all
    ]),
    ("accounts:read - Read access to all accounts", [
        Case(f"GET {M}/accounts", "accounts:read", "forward"),
        Case(f"GET {M}/accounts/a1", "accounts:read", "forward"),
        Case(f"GET {M}/accounts/syncs", "accounts:read", "forward"),
        Case(f"GET {M}/accounts/a1/balances", "accounts:read", "forward"),
        Case(f"GET {M}/accounts/a1/holdings/h1", "accounts:read", "forward"),
        Case(f"POST {M}/accounts/a1/balances", "accounts:read", "403 forbidden"),
        Case(f"GET {M}/accounts/a1", "accounts:write", "403 forbidden"),
    ]),
    # accounts_details:read: see test_accounts_details_count_only_while_the_client_grant_is_active
    ("accounts:write - Write access to all accounts.", [
        Case(f"POST {M}/accounts/a1/balances", "accounts:read accounts:write", "forward", forwarded_scopes="accounts:read accounts:write"),
        Case(f"POST {M}/accounts/a1/notification-thresholds", "accounts:read accounts:write", "forward"),
        Case(f"DELETE {M}/accounts/a1/notification-thresholds/n1", "accounts:read accounts:write", "forward"),
        Case(f"POST {M}/sync/c1", "accounts:read accounts:write", "forward"),
        Case(f"POST {M}/accounts/a1/balances", "accounts:write", "403 forbidden"),
        # deleting an account is not a write of its fields
        Case(f"DELETE {M}/accounts/a1", "accounts:read accounts:write", "403 forbidden"),
    ]),
    ("accounts:write:all - Full write access including the ability to delete accounts.", [
        Case(f"DELETE {M}/accounts/a1", "accounts:write:all", "forward"),
        Case(f"POST {M}/accounts", "accounts:read accounts:write:all", "forward"),
        Case(f"PATCH {M}/accounts/a1", "accounts:read accounts:write:all", "forward"),
        # full write access covers every write
        Case(f"POST {M}/accounts/a1/balances", "accounts:read accounts:write:all", "forward",
             forwarded_scopes="accounts:read accounts:write accounts:write:all"),
    ]),
    ("beneficiaries:read - Read access to a customers beneficiaries. / beneficiaries_detail:read - Read access to beneficiaries details such as address.", [
        Case(f"GET {M}/beneficiaries", "beneficiaries:read", "forward", forwarded_scopes="beneficiaries:read"),
        Case(f"GET {M}/beneficiaries/b1", "beneficiaries:read", "forward"),
        Case(f"GET {M}/beneficiaries/b1", "beneficiaries_detail:read", "forward", forwarded_scopes="beneficiaries_detail:read"),
        Case(f"GET {M}/beneficiaries", "accounts:read", "403 forbidden"),
    ]),
    ("categories:read - Read access to a customer's categories. / categories:write - Write access to a customer's custom categories.", [
        Case(f"GET {M}/categories", "categories:read", "forward"),
        Case(f"GET {M}/categories/c1", "categories:read", "forward"),
        Case(f"GET {M}/category-groups", "categories:read", "forward"),
        Case(f"POST {M}/categories", "categories:write", "forward"),
        Case(f"POST {M}/categories", "categories:read", "403 forbidden"),
        Case(f"GET {M}/standard-categories", None, "forward"),   # Moneyhub's own categories: public
    ]),
    ("projects:delete - Allows deleting a customer's project / projects:read - Read access / projects:write - Write access to a customer's projects", [
        Case(f"GET {M}/projects", "projects:read", "forward"),
        Case(f"GET {M}/projects/p1", "projects:read", "forward"),
        Case(f"POST {M}/projects", "projects:write", "forward"),
        Case(f"PATCH {M}/projects/p1", "projects:write", "forward"),
        Case(f"DELETE {M}/projects/p1", "projects:delete", "forward"),
        Case(f"DELETE {M}/projects/p1", "projects:write", "403 forbidden"),
        Case(f"POST {M}/projects", "projects:read", "403 forbidden"),
    ]),
    ("regular_transactions:read- Read access to regular transactions series / regular_transactions:write- Allows triggering the detection of regular transactions", [
        Case(f"GET {M}/regular-transactions", "regular_transactions:read accounts:read transactions:read:all", "forward"),
        Case(f"GET {M}/regular-transactions", "regular_transactions:read", "403 forbidden"),
        Case(f"POST {M}/regular-transactions/a1/detect", "regular_transactions:write regular_transactions:read accounts:read transactions:read:all", "forward"),
        Case(f"POST {M}/regular-transactions/a1/detect", "regular_transactions:read accounts:read transactions:read:all", "403 forbidden"),
    ]),
    ("rental_record:read - Read access to a user's rental record / rental_record:write- Allows creating a rental record for a user", [
        Case(f"GET {M}/rental-records", "rental_record:read", "forward", forwarded_scopes="rental_record:read"),
        Case(f"POST {M}/rental-records", "rental_record:write", "forward"),
        Case(f"DELETE {M}/rental-records/r1", "rental_record:write", "forward"),
        Case(f"POST {M}/rental-records", "rental_record:read", "403 forbidden"),
        # the spelling of Moneyhub's Swagger and Node client, an alias
        Case(f"GET {M}/rental-records", "rental_records:read", "forward", forwarded_scopes="rental_record:read"),
    ]),
    ("spending_analysis:read - Read access to a customer's spending analysis.", [
        Case(f"POST {M}/spending-analysis", "spending_analysis:read", "forward"),
        Case(f"POST {M}/spending-analysis", "transactions:read:all", "403 forbidden"),
    ]),
    ("spending_goals:read / spending_goals:write / spending_goals:write:all - Full write access to spending goals, including the ability to delete goals.", [
        Case(f"GET {M}/spending-goals", "spending_goals:read", "forward"),
        Case(f"PATCH {M}/spending-goals/g1", "spending_goals:read spending_goals:write", "forward"),
        Case(f"DELETE {M}/spending-goals/g1", "spending_goals:read spending_goals:write", "403 forbidden"),
        Case(f"DELETE {M}/spending-goals/g1", "spending_goals:write:all", "forward"),
        Case(f"POST {M}/spending-goals", "spending_goals:read spending_goals:write:all", "forward"),
        Case(f"PATCH {M}/spending-goals/g1", "spending_goals:read spending_goals:write:all", "forward",
             forwarded_scopes="spending_goals:read spending_goals:write spending_goals:write:all"),
    ]),
    ("savings_goals:read / savings_goals:write / savings_goals:write:all - Full write access to saving goals, including the ability to delete goals.", [
        Case(f"GET {M}/savings-goals/g1", "savings_goals:read", "forward"),
        Case(f"PATCH {M}/savings-goals/g1", "savings_goals:read savings_goals:write", "forward"),
        Case(f"DELETE {M}/savings-goals/g1", "savings_goals:read savings_goals:write", "403 forbidden"),
        Case(f"DELETE {M}/savings-goals/g1", "savings_goals:write:all", "forward"),
        Case(f"POST {M}/savings-goals", "savings_goals:read savings_goals:write", "403 forbidden"),
        Case(f"PATCH {M}/savings-goals/g1", "savings_goals:read savings_goals:write:all", "forward"),
    ]),
    ("standing_orders:read - Read access to a customers standing orders. / standing_orders_detail:read - ... such as full account number and sort code.", [
        Case(f"GET {M}/accounts/a1/standing-orders", "accounts:read standing_orders:read", "forward"),
        Case(f"GET {M}/accounts/a1/standing-orders", "accounts:read standing_orders_detail:read", "forward"),
        Case(f"GET {M}/accounts/a1/standing-orders", "accounts:read", "403 forbidden"),
        Case(f"GET {M}/accounts/a1/standing-orders", "standing_orders:read", "403 forbidden"),
    ]),

    # --- Affordability --------------------------------------------------------------------------------
    ("affordability_restricted:read - ... confidence report / affordability:read - ... affordability reports / affordability:write - Ability to generate an affordability report", [
        Case(f"GET {M}/affordability", "affordability:read", "forward"),
        Case(f"GET {M}/affordability/r1", "affordability:read", "forward"),
        Case(f"POST {M}/affordability", "affordability:read affordability:write", "forward"),
        Case(f"POST {M}/affordability", "affordability:read", "403 forbidden"),
        Case(f"GET {M}/affordability/confidence", "affordability_restricted:read", "forward"),
        Case(f"GET {M}/affordability", "affordability_restricted:read", "403 forbidden"),
    ]),

    # --- Payments -------------------------------------------------------------------------------------
    ("payee:create - this scope is required to create a new payee. / payee:read - ... to retrieve all of the payees that have been created by an API client.", [
        Case(f"POST {M}/payees", "payee:create", "forward"),
        Case(f"POST {M}/payees", "payee:read", "403 forbidden"),
        Case(f"GET {M}/payees", "payee:read", "forward"),
        Case(f"GET {M}/payees/p1", "payee:read", "forward"),
    ]),
    ("payment - this scope is required to initiate a payment. / payment:read - ... to retrieve all of the payments that have been initiated", [
        Case(f"GET {M}/payments", "payment:read", "forward"),
        Case(f"GET {M}/payments/p1", "payment:read", "forward"),
        # payment is spent at the identity service's authorization request; it reads nothing here
        Case(f"GET {M}/payments", "payment", "403 forbidden"),
    ]),
    ("reverse_payment - Allows payment refunds / standing_orders:create - this scope is required to create new standing orders.", [
        # both asked for in the authorization request that starts the payment; no REST read opens with them
        Case(f"GET {M}/payments/p1", "reverse_payment", "403 forbidden"),
        Case(f"GET {M}/standing-orders", "standing_orders:create", "403 forbidden"),
        Case(f"GET {M}/standing-orders", "payment:read", "forward"),
    ]),
    ("recurring_payment:create - ... to create new recurring payments (VRP). / recurring_payment:read - ... to read recurring payments (VRP) that have been created.", [
        Case(f"POST {M}/recurring-payments/r1/pay", "recurring_payment:create", "forward"),
        Case(f"DELETE {M}/recurring-payments/r1", "recurring_payment:create", "forward"),
        Case(f"POST {M}/recurring-payments/r1/pay", "recurring_payment:read", "403 forbidden"),
        Case(f"GET {M}/recurring-payments", "recurring_payment:read", "forward"),
        Case(f"GET {M}/recurring-payments/r1", "recurring_payment:read", "forward"),
    ]),

    # --- User management ------------------------------------------------------------------------------
    ("user:create - this scope is only supported with the client credentials grant type. It allows a relying party to create a new user profile.", [
        Case(f"POST {M}/users", "user:create", "forward", claims=CC, forwarded_scopes="user:create"),
        Case(f"POST {M}/users", "user:create", "forward", claims=GTY),
        Case(f"POST {M}/users", "user:create", "forward", claims={"gty": "client_credentials"}),
        Case(f"POST {M}/users", "user:create", "forward", claims={"drop": ("sub",)}),   # no subject: the client's own
        Says(Case(f"POST {M}/users", "user:create", "403 invalid_scope"),
             description=("user:create is only for tokens of the client_credentials grant; this token's grant is authorization_code",)),
        # the grant-type claim, when present, is what counts
        Case(f"POST {M}/users", "user:create", "403 invalid_scope", claims={"sub": "client-1", "gty": "authorization_code"}),
        Case(f"POST {M}/users", "user:read", "403 forbidden", claims=CC),
    ]),
    ("user:read - this scope is only supported with the client credentials grant type. It allows a relying party to access their user profiles.", [
        Case(f"GET {M}/users", "user:read", "forward", claims=CC),
        Case(f"GET {M}/users/u1", "user:read", "forward", claims=GTY),
        Case(f"GET {M}/users/u1", "user:read", "403 invalid_scope"),
        # a user token carrying it is refused on any route, not only on the user routes
        Case(f"GET {M}/accounts", "accounts:read user:read", "403 invalid_scope"),
        Case(f"GET {M}/accounts", "accounts:read user:read", "forward", claims=GTY),
    ]),
    ("user:delete - this scope is only supported with the client credentials grant type. It allows a relying party to delete a user profile.", [
        Case(f"DELETE {M}/users/u1", "user:delete", "forward", claims=CC),
        Case(f"DELETE {M}/users/u1", "user:delete", "403 invalid_scope"),
        Case(f"DELETE {M}/users/u1", "user:read", "403 forbidden", claims=CC),
    ]),
    # user:update: see test_user_update_only_for_a_client_enabled_for_it

    # --- Default Scopes -------------------------------------------------------------------------------
    ("Below are the default scopes that are enabled when first creating a client: ... tax:read ...", [
        # enabled for a client is not held by its tokens: a token holds what it carries
        Case(f"GET {M}/accounts", "", "403 forbidden"),
        Case(f"GET {M}/tax", "tax:read", "forward"),
        Case(f"GET {M}/tax", "accounts:read", "403 forbidden"),
    ]),
    ("(deny by default) Every request not listed in the table", [
        Case(f"GET {M}/accounts/a1/statements", "accounts:read", "404 not_found"),
        Case(f"GET {M}/accounts-list", "accounts:read", "404 not_found"),
    ]),
]


@pytest.fixture(params=["sqlite", "redis"])
async def moneyhub(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Provider]:
    provider = Provider("moneyhub.yaml", tmp_path, store_url(request))
    await provider.start()
    yield provider
    await provider.aclose()


@pytest.mark.parametrize(("sentence", "steps"), SEED, ids=[sentence[:60] for sentence, _ in SEED])
async def test_the_seed_sentence_by_sentence(moneyhub: Provider, sentence: str, steps: list[Any]) -> None:
    await play(moneyhub, steps)


async def test_accounts_details_count_only_while_the_client_grant_is_active(moneyhub: Provider) -> None:
    """accounts_details:read - Read access to accounts details such as full account number and sort
    code. This scope needs to be requested to be enabled for your api client.

    No route needs it alone (Moneyhub adds the details to the account reads), so where it counts
    shows in X-Auth-Scopes; a refusal for what else is missing names its grant."""
    details = "accounts:read accounts_details:read"
    await play(moneyhub, [
        # not enabled for client-1: carried, not counted, and the upstream is not told
        Case(f"GET {M}/accounts", details, "forward", forwarded_scopes="accounts:read"),
        Says(Case(f"GET {M}/accounts", "accounts_details:read", "403 forbidden"),
             description=("the client grant of accounts_details:read to client client-1 does not exist",)),
        # a user's grant is not the client's enablement
        GivenGrant("accounts_details:read", subject="user-1"),
        Case(f"GET {M}/accounts/a1", details, "forward", forwarded_scopes="accounts:read"),
        # enabled for client-1, for three seconds
        GivenGrant("accounts_details:read", ttl=3.0),
        Case(f"GET {M}/accounts", details, "forward", forwarded_scopes="accounts:read accounts_details:read"),
        Case(f"GET {M}/accounts/a1", details, "forward", forwarded_scopes="accounts:read accounts_details:read"),
        Case(f"GET {M}/accounts/a1", details, "forward", claims={"sub": "user-2"}, forwarded_scopes="accounts:read accounts_details:read"),
        # ... for client-1 only
        Case(f"GET {M}/accounts", details, "forward", claims={"client_id": "client-2"}, forwarded_scopes="accounts:read"),
        # the enablement lapses
        Wait(3.0),
        Case(f"GET {M}/accounts", details, "forward", forwarded_scopes="accounts:read"),
        Says(Case(f"GET {M}/accounts", "accounts_details:read", "403 forbidden"),
             description=("the client grant of accounts_details:read to client client-1 expired at",)),
        # enabled again without an expiry, then withdrawn
        GivenGrant("accounts_details:read"),
        Case(f"GET {M}/accounts", details, "forward", forwarded_scopes="accounts:read accounts_details:read"),
        Revoke("accounts_details:read"),
        Case(f"GET {M}/accounts", details, "forward", forwarded_scopes="accounts:read"),
        Says(Case(f"GET {M}/accounts", "accounts_details:read", "403 forbidden"), description=("was revoked at",)),
    ])


async def test_user_update_only_for_a_client_enabled_for_it(moneyhub: Provider) -> None:
    """user:update- this scope allows to update a user's connection for re consent purposes. This
    scope is only allowed for API clients that have their own consent screen."""
    route = f"PATCH {M}/users/u1/connections/c1"
    await play(moneyhub, [
        Says(Case(route, "user:update", "403 forbidden", claims=CC),
             description=("the client grant of user:update to client client-1 does not exist",)),
        GivenGrant("user:update"),   # client-1 has its own consent screen
        Case(route, "user:update", "forward", claims=CC, forwarded_scopes="user:update"),
        Case(route, "user:update", "forward"),   # not limited to a grant type
        Case(route, "user:update", "403 forbidden", claims={"client_id": "client-2"}),
        Case(route, "user:read", "403 forbidden", claims=CC),
    ])
