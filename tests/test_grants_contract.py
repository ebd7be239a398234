"""One contract for every grant store backend (gateway/grants/store.py): the same table of cases
runs on a real SQLite file and on a real redis-server, so the two cannot drift apart again."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import respx

from gateway import times
from gateway.app import Gateway
from gateway.grants.live import open_store
from gateway.grants.redis import RedisStore, _key
from gateway.grants.sqlite import SQLiteStore
from gateway.grants.store import (
    ConditionRecord,
    GrantRecord,
    GrantState,
    GrantStore,
    GrantView,
)
from gateway.loading import load_config
from tests.support import RedisServer, mint
from tests.support import write_wallet as write

pytestmark = pytest.mark.anyio
LATER = 4_000_000_000.0


@dataclass
class Backend:
    name: str
    url: str  # as grants.store names it
    store: GrantStore
    damage: Callable[[str, str, str | None, str, Any], None]  # writes a row with a raw expiry, past the store's checks


def _sqlite_damage(path: Path) -> Callable[[str, str, str | None, str, Any], None]:
    def damage(api: str, client: str, subject: str | None, scope: str, raw: Any) -> None:
        with sqlite3.connect(path) as connection:
            connection.execute("INSERT OR REPLACE INTO grants VALUES (?, ?, ?, ?, ?, NULL)", (api, client, subject or "", scope, raw))
    return damage


def _redis_damage(client: redis.Redis) -> Callable[[str, str, str | None, str, Any], None]:
    def damage(api: str, grant_client: str, subject: str | None, scope: str, raw: Any) -> None:
        key = _key("client", api, grant_client) if subject is None else _key("user", api, grant_client, subject)
        client.hset(key, scope, json.dumps({"expires_at": raw, "revoked_at": None}))
        client.incr("gateway:version")
    return damage


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "grants.db"
        store: GrantStore = SQLiteStore(path)
        await store.version()  # made, with its tables
        yield Backend("sqlite", "sqlite:///grants.db", store, _sqlite_damage(path))
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        plain = redis.Redis(port=server.port, decode_responses=True)
        plain.flushall()
        store = RedisStore(server.url)
        yield Backend("redis", server.url, store, _redis_damage(plain))
        plain.close()
    await store.aclose()


async def _fill(store: GrantStore) -> None:
    await store.put_grant("wallet", "app", None, "accounts_details:read", None)
    await store.put_grant("wallet", "app", "ana", "balance_offline", LATER)
    await store.put_grant("wallet", "web", "bob", "balance_offline", None)
    await store.put_grant("wallet", "web", None, "gone", None)
    await store.revoke_grant("wallet", "web", None, "gone")
    await store.set_condition("wallet", "ana", "phone", True)
    await store.set_condition("fluz", "bob", "kyc", True)


ANA_VIA_APP = GrantView({"accounts_details:read": GrantState()}, {"balance_offline": GrantState(LATER)}, frozenset({"phone"}))
APP_ALONE = GrantView({"accounts_details:read": GrantState()})
ANA_ALONE = GrantView(conditions=frozenset({"phone"}))


@pytest.mark.parametrize(("client", "subject", "expected"), [
    ("app", "ana", ANA_VIA_APP),
    ("app", None, APP_ALONE),
    ("app", "", APP_ALONE),  # an empty subject reads as none: never the client grants twice, never a user's
    (None, "ana", ANA_ALONE),  # a token without a client id: the subject's conditions, no grants
    ("", "ana", ANA_ALONE),
    (None, None, GrantView()),
    ("", "", GrantView()),
    ("other", "ana", ANA_ALONE),
    ("app", "bob", APP_ALONE),
])
async def test_views_are_the_same_on_every_backend(backend: Backend, client: str | None, subject: str | None, expected: GrantView) -> None:
    await _fill(backend.store)
    assert await backend.store.view("wallet", client, subject) == expected


def _rows(listed: tuple[list[GrantRecord], list[ConditionRecord]]) -> tuple[list[tuple[Any, ...]], list[tuple[str, ...]]]:
    grants, conditions = listed
    return ([(g.api, g.client, g.subject, g.scope, g.revoked_at is not None) for g in grants],
            [(c.api, c.subject, c.scope) for c in conditions])


APP = ("wallet", "app", None, "accounts_details:read", False)
ANA = ("wallet", "app", "ana", "balance_offline", False)
BOB = ("wallet", "web", "bob", "balance_offline", False)
GONE = ("wallet", "web", None, "gone", True)
PHONE = ("wallet", "ana", "phone")
KYC = ("fluz", "bob", "kyc")


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ([APP, ANA, BOB], [KYC, PHONE])),
    ({"revoked": True}, ([APP, ANA, GONE, BOB], [KYC, PHONE])),
    ({"api": "wallet"}, ([APP, ANA, BOB], [PHONE])),
    ({"client": "app"}, ([APP, ANA], [KYC, PHONE])),  # conditions belong to no client: a client filter keeps them
    ({"client": "web", "revoked": True}, ([GONE, BOB], [KYC, PHONE])),
    ({"subject": "ana"}, ([ANA], [PHONE])),  # a subject: user grants only
    ({"client": "app", "subject": "ana"}, ([ANA], [PHONE])),
    ({"client": "web", "subject": "ana"}, ([], [PHONE])),
    ({"api": "fluz", "subject": "bob"}, ([], [KYC])),
    ({"api": "nothing"}, ([], [])),
])
async def test_lists_are_the_same_on_every_backend(backend: Backend, filters: dict[str, Any], expected: tuple[list[Any], list[Any]]) -> None:
    await _fill(backend.store)
    assert _rows(await backend.store.list(**filters)) == expected


WRITES: list[tuple[str, Callable[[GrantStore], Awaitable[object]]]] = [
    ("client grant to an empty client", lambda store: store.put_grant("wallet", "", None, "balance", None)),
    ("user grant with an empty subject", lambda store: store.put_grant("wallet", "app", "", "balance", None)),
    ("grant on an empty api", lambda store: store.put_grant("", "app", None, "balance", None)),
    ("grant of an empty scope", lambda store: store.put_grant("wallet", "app", None, "", None)),
    ("revoke with an empty subject", lambda store: store.revoke_grant("wallet", "app", "", "accounts_details:read")),
    ("revoke with an empty client", lambda store: store.revoke_grant("wallet", "", None, "accounts_details:read")),
    ("condition of an empty subject", lambda store: store.set_condition("wallet", "", "phone", True)),
    ("unfulfil with an empty subject", lambda store: store.set_condition("wallet", "", "phone", False)),
    ("client with a line break", lambda store: store.put_grant("wallet", "app\ngrant wallet client x", None, "balance", None)),
    ("subject with a NUL", lambda store: store.put_grant("wallet", "app", "ana\x00", "balance", None)),
    ("condition subject with U+2028", lambda store: store.set_condition("wallet", "ana\u2028", "phone", True)),
    ("expiry nan", lambda store: store.put_grant("wallet", "app", None, "balance", math.nan)),
    ("expiry inf", lambda store: store.put_grant("wallet", "app", None, "balance", math.inf)),
    ("expiry -inf", lambda store: store.put_grant("wallet", "app", None, "balance", -math.inf)),
    ("expiry past year 9999", lambda store: store.put_grant("wallet", "app", None, "balance", times.LATEST + 1)),
    ("expiry before year 1", lambda store: store.put_grant("wallet", "app", None, "balance", times.EARLIEST - 1)),
    ("expiry a bool", lambda store: store.put_grant("wallet", "app", None, "balance", True)),  # type: ignore[arg-type]
    ("list by an empty client", lambda store: store.list(client="")),
    ("list by an empty subject", lambda store: store.list(subject="")),
]


@pytest.mark.parametrize(("name", "write"), WRITES, ids=[name for name, _ in WRITES])
async def test_bad_writes_are_refused_and_change_nothing(backend: Backend, name: str, write: Callable[[GrantStore], Awaitable[object]]) -> None:
    await _fill(backend.store)
    before = await backend.store.list(revoked=True)
    with pytest.raises(ValueError):
        await write(backend.store)
    assert await backend.store.list(revoked=True) == before
    assert await backend.store.view("wallet", "app", None) == APP_ALONE  # the client grant is not revoked through an empty subject


BAD_TIMES = [1e300, -1e300, times.LATEST + 10, "soon", "2026-01-01T00:00:00Z"]


@pytest.mark.parametrize("raw", BAD_TIMES, ids=[repr(raw) for raw in BAD_TIMES])
async def test_a_stored_time_that_cannot_be_read_counts_as_revoked(backend: Backend, raw: Any) -> None:
    backend.damage("wallet", "app", None, "accounts_details:read", raw)
    backend.damage("wallet", "app", "ana", "balance_offline", raw)
    view = await backend.store.view("wallet", "app", "ana")
    for state in (view.client_grants["accounts_details:read"], view.user_grants["balance_offline"]):
        assert state == GrantState(None, times.EARLIEST) and not state.active(0)
    listed, _ = await backend.store.list(revoked=True)
    assert {(g.scope, g.revoked_at) for g in listed} == {("accounts_details:read", times.EARLIEST), ("balance_offline", times.EARLIEST)}


async def test_the_data_plane_refuses_a_grant_whose_expiry_cannot_be_read(backend: Backend, tmp_path: Path) -> None:
    backend.damage("wallet", "app", None, "accounts_details:read", 1e300)
    config = load_config(write(tmp_path, backend.url))
    app = Gateway(config)
    await app.runtime.start()
    try:
        token = mint("accounts_details:read", lifetime=600, sub="app", client_id="app")
        with respx.mock(assert_all_called=False) as router:
            upstream = router.route(host="wallet.test").mock(return_value=httpx.Response(200, json={}))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as client:
                answer = await client.get("/w/accounts/details", headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 403 and answer.json()["error"] == "forbidden" and not upstream.called
        assert "revoked at 0001-01-01" in answer.json()["error_description"]
    finally:
        await app.runtime.aclose()


async def test_every_backend_opens_from_its_url(backend: Backend, tmp_path: Path) -> None:
    store = open_store(backend.url, tmp_path)
    try:
        await _fill(backend.store)
        assert await store.view("wallet", "app", "ana") == ANA_VIA_APP
    finally:
        await store.aclose()
