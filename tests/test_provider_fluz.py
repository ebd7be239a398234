"""routes/fluz.yaml walked through Fluz's scope page (named atop the table) sentence by sentence,
through the real ASGI app, a real grant store and routes/fluz.graphql: one POST /graphql carries
every operation, and each field counts only while the client's and the user's grants of its scope
are both active."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.scenarios import Case, GivenGrant, Provider, Revoke, Says, Wait, play, store_url

pytestmark = pytest.mark.anyio
G = "/fluz/graphql"


def op(query: str, **members: Any) -> dict[str, Any]:
    return {"query": query, **members}


DEPOSIT = op("mutation Deposit($amount: Float!) { makeDeposit(amount: $amount, paymentMethodId: \"pm1\") { id status } }", variables={"amount": 10})
SCOPES = op("query getApplicationScopes { getApplicationScopes }")

SEED: list[tuple[str, list[Any]]] = [
    ("You can use the getApplicatonScopes query to get your account's current application scopes.", [
        Case(f"POST {G}", "", "forward", json=SCOPES),
        Case(f"GET {G}?query={quote(SCOPES['query'])}", "", "forward"),
        Case(f"POST {G}", None, "401 unauthorized", json=SCOPES),
    ]),
    ("This is checked during generateUserAccessToken.", [
        Case(f"POST {G}", "", "forward", json=op('mutation { generateUserAccessToken(userId: "user-1", scopes: ["MAKE_DEPOSIT"]) { accessToken scopes } }')),
    ]),
    ("Both Grants Must Be Active: the permission must be granted both at the global level and at the individual user level.", [
        # the token carries the scope, the store holds neither grant: the field does not count
        Says(Case(f"POST {G}", "MAKE_DEPOSIT", "403 forbidden", json=DEPOSIT), description=("Mutation.makeDeposit requires MAKE_DEPOSIT",)),
        GivenGrant("MAKE_DEPOSIT"),                       # the global (client) grant alone
        Says(Case(f"POST {G}", "MAKE_DEPOSIT", "403 forbidden", json=DEPOSIT),
             description=("Mutation.makeDeposit requires MAKE_DEPOSIT; the user grant of MAKE_DEPOSIT by user-1 to client client-1 does not exist",)),
        Revoke("MAKE_DEPOSIT"),
        GivenGrant("MAKE_DEPOSIT", subject="user-1"),     # the user grant alone
        Says(Case(f"POST {G}", "MAKE_DEPOSIT", "403 forbidden", json=DEPOSIT),
             description=("; the client grant of MAKE_DEPOSIT to client client-1 was revoked at ",)),
        GivenGrant("MAKE_DEPOSIT"),                       # both
        Case(f"POST {G}", "MAKE_DEPOSIT", "forward", json=DEPOSIT, forwarded_scopes="MAKE_DEPOSIT"),
        # both grants, but the token does not carry the scope
        Case(f"POST {G}", "LIST_OFFERS", "403 forbidden", json=DEPOSIT),
        # another user of the same application has not granted it
        Case(f"POST {G}", "MAKE_DEPOSIT", "403 forbidden", json=DEPOSIT, claims={"sub": "user-2"}),
        # a mutation is never sent with GET, whatever the grants
        Case(f"GET {G}?" + urlencode({"query": DEPOSIT["query"], "variables": '{"amount": 1}'}), "MAKE_DEPOSIT", "400 invalid_request"),
    ]),
    ("Non-expired Grants: both the global and user grants must be current and not expired.", [
        GivenGrant("LIST_OFFERS"),
        GivenGrant("LIST_OFFERS", subject="user-1", ttl=3),
        Case(f"POST {G}", "LIST_OFFERS", "forward", json=op("{ offers(first: 2) { id merchant cashback } }")),
        Wait(4),
        Says(Case(f"POST {G}", "LIST_OFFERS", "403 forbidden", json=op("{ offers(first: 2) { id } }")),
             description=("Query.offers requires LIST_OFFERS", "; the user grant of LIST_OFFERS by user-1 to client client-1 expired at ")),
    ]),
    ("An expired grant will automatically revoke the application's access to the specified resources.", [
        GivenGrant("LIST_PAYMENT"),
        GivenGrant("LIST_PAYMENT", subject="user-1"),
        Case(f"POST {G}", "LIST_PAYMENT", "forward", json=op("{ balance { available currency } paymentMethods { id last4 } }")),
        Revoke("LIST_PAYMENT", subject="user-1"),
        Case(f"POST {G}", "LIST_PAYMENT", "403 forbidden", json=op("{ balance { available } }")),
    ]),
    ("PURCHASE_GIFTCARD allows purchasing a gift card; REVEAL_GIFTCARD allows revealing a gift card code for redemption.", [
        GivenGrant("PURCHASE_GIFTCARD"), GivenGrant("PURCHASE_GIFTCARD", subject="user-1"),
        Case(f"POST {G}", "PURCHASE_GIFTCARD", "forward", json=op('mutation { purchaseGiftCard(offerId: "o1", amount: 25) { id amount } }')),
        # the code is a field of its own: buying the card does not reveal it, however it is asked for
        Case(f"POST {G}", "PURCHASE_GIFTCARD", "403 forbidden", json=op('mutation { purchaseGiftCard(offerId: "o1", amount: 25) { id secret: code } }')),
        Case(f"POST {G}", "PURCHASE_GIFTCARD", "403 forbidden", json=op('mutation { purchaseGiftCard(offerId: "o1", amount: 25) { ...Card } } fragment Card on GiftCard { code }')),
        GivenGrant("REVEAL_GIFTCARD"), GivenGrant("REVEAL_GIFTCARD", subject="user-1"),
        Case(f"POST {G}", "PURCHASE_GIFTCARD REVEAL_GIFTCARD", "forward", json=op('mutation { purchaseGiftCard(offerId: "o1", amount: 25) { id code } }')),
    ]),
    ("CREATE_VIRTUALCARD allows access to create virtual card; REVEAL_VIRTUALCARD allows revealing a virtual card details.", [
        GivenGrant("CREATE_VIRTUALCARD"), GivenGrant("CREATE_VIRTUALCARD", subject="user-1"),
        Case(f"POST {G}", "CREATE_VIRTUALCARD", "forward", json=op("mutation { createVirtualCard(amount: 50) { id last4 } }")),
        Case(f"POST {G}", "CREATE_VIRTUALCARD", "403 forbidden", json=op("mutation { createVirtualCard(amount: 50) { id number cvv } }")),
        # a batch is refused whole when one of its operations is
        Case(f"POST {G}", "CREATE_VIRTUALCARD", "403 forbidden", json=[SCOPES, op('mutation { revealVirtualCard(virtualCardId: "v1") { number } }')]),
    ]),
    ("Ensure you have the correct permissions to perform certain mutations and queries with the Fluz API.", [
        Case(f"POST {G}", "MANAGE_PAYMENT", "403 forbidden", json=op('mutation { removePaymentMethod(paymentMethodId: "pm1") }')),
        Case(f"POST {G}", "", "400 invalid_request", json=op("{ transferFunds }")),  # not in the schema
        Case(f"POST {G}", "", "403 forbidden", json=op("{ __schema { types { name } } }")),  # introspection off
    ]),
]


@pytest.fixture(params=["sqlite", "redis"])
async def fluz(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    provider = Provider("fluz.yaml", tmp_path, store_url(request), files=("fluz.graphql",))
    await provider.start()
    yield provider
    await provider.aclose()


@pytest.mark.parametrize("sentence", [sentence for sentence, _ in SEED])
async def test_fluz_seed(fluz: Provider, sentence: str) -> None:
    await play(fluz, dict(SEED)[sentence])
