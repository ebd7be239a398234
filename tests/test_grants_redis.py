"""The Redis grant store against a real redis-server on a loopback port, as a fleet shares it."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from redis.asyncio.connection import AbstractConnection

from gateway.admin import AdminApp
from gateway.cli import main
from gateway.grants.live import LiveGrants, open_store
from gateway.grants.redis import RedisStore
from gateway.grants.store import EMPTY_VIEW, ConditionRecord, GrantRecord, GrantState, GrantView, StoreUnavailable
from gateway.grants.urls import redacted, scrubbed
from gateway.loading import load_config
from tests.support import RedisServer, cli, eventually, free_port
from tests.support import write_wallet as write_config

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)

pytestmark = pytest.mark.anyio
AWKWARD = ["a:b", "a/b", "a%3Ab", "a b", "a*", "a?[x]\\"]  # separators, encodings, glob characters


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    started = RedisServer()
    started.start()
    yield started
    started.stop()


@pytest.fixture
def db(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on an emptied Redis, to look at what the store wrote."""
    client = redis.Redis(port=server.port, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
async def store(server: RedisServer, db: redis.Redis) -> AsyncIterator[RedisStore]:
    opened = RedisStore(server.url)
    yield opened
    await opened.aclose()


@pytest.fixture
async def other(server: RedisServer, db: redis.Redis) -> AsyncIterator[RedisStore]:
    """A second store on the same Redis: another replica of the fleet."""
    opened = RedisStore(server.url)
    yield opened
    await opened.aclose()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of the test's own, to kill or freeze."""
    started = RedisServer()
    started.start()
    yield started
    started.stop()  # SIGKILL: frozen or not


async def counter(store: RedisStore) -> int:
    return (await store.version())[1]


async def test_every_method_round_trips(store: RedisStore, db: redis.Redis) -> None:
    later = time.time() + 3600
    assert await store.version() == (None, 0)
    await store.put_grant("api", "app", None, "read", None)
    await store.put_grant("api", "app", "alice", "write", later)
    assert await store.set_condition("api", "alice", "payout", True) is True

    assert await store.view("api", "app", "alice") == GrantView(
        client_grants={"read": GrantState()}, user_grants={"write": GrantState(expires_at=later)}, conditions=frozenset({"payout"}))
    assert await store.view("api", "app", None) == GrantView(client_grants={"read": GrantState()})
    # a token without a client id: no grants, but the subject's conditions (store.py's contract)
    assert await store.view("api", None, "alice") == GrantView(conditions=frozenset({"payout"}))
    assert await store.view("api", None, None) == EMPTY_VIEW
    assert await store.view("other", "app", "alice") == GrantView()
    assert await store.list() == ([GrantRecord("api", "app", None, "read", None), GrantRecord("api", "app", "alice", "write", later)],
                                  [ConditionRecord("api", "alice", "payout")])

    before = time.time()
    assert await store.revoke_grant("api", "app", "alice", "write") is True
    revoked = (await store.view("api", "app", "alice")).user_grants["write"]
    assert revoked.expires_at == later and revoked.revoked_at is not None and before <= revoked.revoked_at <= time.time()
    assert await store.set_condition("api", "alice", "payout", False) is True
    assert await store.list() == ([GrantRecord("api", "app", None, "read", None)], [])

    epoch, writes = await store.version()
    assert epoch is not None and writes == 5
    # Expiries are read by the gateway, never left to Redis to delete.
    assert all(db.ttl(key) == -1 for key in db.keys("*"))


async def test_the_documented_key_layout_and_publications(store: RedisStore, db: redis.Redis) -> None:
    pubsub = db.pubsub()
    pubsub.subscribe("gateway:changes")
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    await store.put_grant("api/v1", "app:1", None, "read", 1.5)
    await store.put_grant("api/v1", "app:1", "alice smith", "write", None)
    await store.set_condition("api/v1", "alice smith", "kyc", True)
    await store.revoke_grant("api/v1", "app:1", None, "read")

    assert set(db.keys("*")) == {"gateway:client:api%2Fv1:app%3A1", "gateway:user:api%2Fv1:app%3A1:alice%20smith",
                                 "gateway:condition:api%2Fv1:alice%20smith", "gateway:version", "gateway:epoch"}
    assert json.loads(db.hget("gateway:user:api%2Fv1:app%3A1:alice%20smith", "write")) == {"expires_at": None, "revoked_at": None}
    client_grant = json.loads(db.hget("gateway:client:api%2Fv1:app%3A1", "read"))
    assert client_grant["expires_at"] == 1.5 and isinstance(client_grant["revoked_at"], float)
    assert db.smembers("gateway:condition:api%2Fv1:alice%20smith") == {"kyc"}
    assert db.get("gateway:version") == "4"
    published = [pubsub.get_message(timeout=1) for _ in range(4)]
    assert [message["data"] for message in published] == ["gateway:client:api%2Fv1:app%3A1", "gateway:user:api%2Fv1:app%3A1:alice%20smith",
                                                          "gateway:condition:api%2Fv1:alice%20smith", "gateway:client:api%2Fv1:app%3A1"]
    pubsub.close()


async def test_names_with_separators_encodings_and_glob_characters(store: RedisStore) -> None:
    for name in AWKWARD:
        await store.put_grant(name, name, None, name, None)
        await store.put_grant(name, name, name, name, None)
        await store.set_condition(name, name, name, True)
    for name in AWKWARD:
        assert await store.view(name, name, name) == GrantView({name: GrantState()}, {name: GrantState()}, frozenset({name}))
        assert await store.list(api=name) == ([GrantRecord(name, name, None, name, None), GrantRecord(name, name, name, name, None)],
                                              [ConditionRecord(name, name, name)])
    # Joined without encoding, client "x:y" with subject "z" and client "x" with subject "y:z" would be one key.
    await store.put_grant("api", "x:y", "z", "one", None)
    await store.put_grant("api", "x", "y:z", "two", None)
    assert (await store.view("api", "x:y", "z")).user_grants.keys() == {"one"}
    assert (await store.view("api", "x", "y:z")).user_grants.keys() == {"two"}
    assert [(g.client, g.subject, g.scope) for g in (await store.list(api="api"))[0]] == [("x", "y:z", "two"), ("x:y", "z", "one")]


async def test_a_write_through_one_replica_is_seen_by_another(store: RedisStore, other: RedisStore) -> None:
    seen = await other.version()
    await store.put_grant("api", "app", "alice", "write", None)
    assert await other.version() != seen
    assert await other.version() == await store.version()
    assert (await other.view("api", "app", "alice")).user_grants == {"write": GrantState()}

    seen = await store.version()
    assert await other.revoke_grant("api", "app", "alice", "write") is True
    assert await store.version() != seen
    assert (await store.view("api", "app", "alice")).user_grants["write"].revoked_at is not None


async def test_every_write_changes_the_version(store: RedisStore) -> None:
    writes: list[Callable[[], Awaitable[object]]] = [
        lambda: store.put_grant("api", "app", None, "read", None),
        lambda: store.put_grant("api", "app", None, "read", 10.0),  # the same grant again
        lambda: store.put_grant("api", "app", "alice", "write", None),
        lambda: store.revoke_grant("api", "app", None, "read"),
        lambda: store.set_condition("api", "alice", "kyc", True),
        lambda: store.set_condition("api", "alice", "kyc", False),
    ]
    seen = [await store.version()]
    for write in writes:
        await write()
        seen.append(await store.version())
    assert len(set(seen)) == len(seen)
    # A revocation that finds nothing to revoke writes nothing.
    assert await store.revoke_grant("api", "app", None, "read") is False
    assert await store.revoke_grant("api", "app", None, "absent") is False
    assert await store.version() == seen[-1]


async def test_no_reader_sees_a_write_under_an_older_version(server: RedisServer, store: RedisStore, other: RedisStore) -> None:
    """Every write adds one grant and counts one version. Any snapshot of Redis must hold exactly
    as many grants as the version counts, and a view read between two versions as many as one
    between them: neither would hold if a write and its count landed apart."""
    writes = 300
    done = False
    snapshots: list[tuple[str | None, int]] = []
    views: list[tuple[int, int, int]] = []

    async def write() -> None:
        nonlocal done
        for n in range(writes):
            await store.put_grant("api", "app", None, f"scope-{n}", None)
        done = True

    async def snapshot(raw: redis.asyncio.Redis) -> None:
        while not done:
            async with raw.pipeline(transaction=True) as pipe:
                pipe.get("gateway:version")
                pipe.hlen("gateway:client:api:app")
                version, grants = await pipe.execute()
            snapshots.append((version, grants))

    async def read() -> None:
        while not done:
            before = await counter(other)
            grants = len((await other.view("api", "app", None)).client_grants)
            views.append((before, grants, await counter(other)))

    raw = redis.asyncio.Redis(port=server.port, decode_responses=True)
    try:
        await asyncio.gather(write(), read(), *(snapshot(raw) for _ in range(3)))
    finally:
        await raw.aclose()
    assert len(snapshots) > 100 and all(int(version or 0) == grants for version, grants in snapshots)
    assert len(views) > 10 and all(before <= grants <= after for before, grants, after in views)
    assert await counter(store) == writes


async def test_revocation_and_expiry(store: RedisStore) -> None:
    past, later = time.time() - 60, time.time() + 60
    assert await store.revoke_grant("api", "app", None, "absent") is False

    await store.put_grant("api", "app", None, "expired", past)
    state = (await store.view("api", "app", None)).client_grants["expired"]
    assert state == GrantState(expires_at=past) and not state.active(time.time())
    assert (await store.list())[0] == [GrantRecord("api", "app", None, "expired", past)]  # expired, still listed
    assert await store.revoke_grant("api", "app", None, "expired") is True  # an expired grant can be revoked
    assert await store.revoke_grant("api", "app", None, "expired") is False  # but only once
    state = (await store.view("api", "app", None)).client_grants["expired"]
    assert state.expires_at == past and state.revoked_at is not None
    assert (await store.list())[0] == []

    # Adding again clears the revocation and replaces the expiry.
    await store.put_grant("api", "app", None, "expired", later)
    assert (await store.view("api", "app", None)).client_grants["expired"] == GrantState(expires_at=later)
    await store.put_grant("api", "app", None, "expired", None)
    assert (await store.view("api", "app", None)).client_grants["expired"] == GrantState()

    # A client grant and a user grant of the same scope are separate rows.
    await store.put_grant("api", "app", "alice", "expired", None)
    assert await store.revoke_grant("api", "app", "alice", "expired") is True
    view = await store.view("api", "app", "alice")
    assert view.client_grants["expired"].active(time.time()) and not view.user_grants["expired"].active(time.time())


async def test_conditions(store: RedisStore) -> None:
    assert await store.set_condition("api", "alice", "kyc", False) is False  # not met: nothing to unfulfil
    assert await store.set_condition("api", "alice", "kyc", True) is True
    assert await store.set_condition("api", "alice", "kyc", True) is True  # met again: still met
    assert (await store.view("api", "app", "alice")).conditions == {"kyc"}
    assert (await store.view("api", "app", "bob")).conditions == frozenset()
    assert await store.set_condition("api", "alice", "kyc", False) is True
    assert await store.set_condition("api", "alice", "kyc", False) is False
    assert (await store.view("api", "app", "alice")).conditions == frozenset()


async def test_list_filters_and_order(store: RedisStore) -> None:
    for api in ("payments", "accounts"):
        for client in ("web", "mobile"):
            await store.put_grant(api, client, None, "read", None)
            for subject in ("bob", "alice"):
                await store.put_grant(api, client, subject, "write", 5.0)
        await store.set_condition(api, "alice", "kyc", True)
    await store.put_grant("payments", "web", None, "revoked", None)
    await store.revoke_grant("payments", "web", None, "revoked")

    def rows(listed: tuple[list[GrantRecord], list[ConditionRecord]]) -> tuple[list[tuple], list[tuple]]:
        grants, conditions = listed
        return [(g.api, g.client, g.subject, g.scope) for g in grants], [(c.api, c.subject, c.scope) for c in conditions]

    everything = rows(await store.list())
    assert everything[0][:4] == [("accounts", "mobile", None, "read"), ("accounts", "mobile", "alice", "write"),
                                 ("accounts", "mobile", "bob", "write"), ("accounts", "web", None, "read")]
    assert len(everything[0]) == 12 and everything[1] == [("accounts", "alice", "kyc"), ("payments", "alice", "kyc")]
    assert rows(await store.list(api="payments")) == (
        [("payments", "mobile", None, "read"), ("payments", "mobile", "alice", "write"), ("payments", "mobile", "bob", "write"),
         ("payments", "web", None, "read"), ("payments", "web", "alice", "write"), ("payments", "web", "bob", "write")],
        [("payments", "alice", "kyc")])
    assert rows(await store.list(client="web"))[0] == [row for row in everything[0] if row[1] == "web"]
    # Conditions belong to a subject whatever its client: a client filter keeps them.
    assert rows(await store.list(client="web"))[1] == everything[1]
    # A subject filter keeps that subject's user grants only.
    assert rows(await store.list(subject="bob")) == ([("accounts", "mobile", "bob", "write"), ("accounts", "web", "bob", "write"),
                                                      ("payments", "mobile", "bob", "write"), ("payments", "web", "bob", "write")], [])
    assert rows(await store.list(api="accounts", client="web", subject="alice")) == (
        [("accounts", "web", "alice", "write")], [("accounts", "alice", "kyc")])
    assert await store.list(api="nothing") == ([], [])


async def test_concurrent_writers_on_two_replicas_lose_nothing(store: RedisStore, other: RedisStore) -> None:
    replicas = [store, other]
    scopes = [f"scope-{n}" for n in range(100)]
    # Half into one hash, half into one hash per subject.
    await asyncio.gather(*(replicas[n % 2].put_grant("api", "app", None if n < 50 else f"user-{n}", scope, None)
                           for n, scope in enumerate(scopes)))
    assert sorted(g.scope for g in (await store.list())[0]) == sorted(scopes)
    assert await counter(other) == 100

    # Revocations read, check and write under WATCH: concurrent ones on one hash all land.
    revoked = await asyncio.gather(*(replicas[n % 2].revoke_grant("api", "app", None if n < 50 else f"user-{n}", scope)
                                     for n, scope in enumerate(scopes)))
    assert all(revoked) and (await store.list())[0] == []
    assert await counter(store) == 200

    # Two replicas revoking the same grant at once: one of them does.
    await store.put_grant("api", "app", None, "once", None)
    assert sorted(await asyncio.gather(store.revoke_grant("api", "app", None, "once"), other.revoke_grant("api", "app", None, "once"))) == [False, True]

    met = await asyncio.gather(*(replicas[n % 2].set_condition("api", "alice", scope, True) for n, scope in enumerate(scopes)))
    assert all(met) and (await store.view("api", "app", "alice")).conditions == set(scopes)


async def test_a_view_is_one_round_trip(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.put_grant("api", "app", "alice", "write", None)  # a pooled connection, already set up
    sent = 0
    send = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal sent
        sent += 1
        await send(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    assert (await store.view("api", "app", "alice")).user_grants == {"write": GrantState()}
    assert sent == 1
    await store.view("api", "app", None)
    assert sent == 2


def every_method(store: RedisStore) -> list[Callable[[], Awaitable[object]]]:
    return [
        lambda: store.view("api", "app", "alice"),
        store.version,
        lambda: store.put_grant("api", "app", None, "read", None),
        lambda: store.revoke_grant("api", "app", None, "read"),
        lambda: store.set_condition("api", "alice", "kyc", True),
        store.list,
    ]


async def assert_unavailable(store: RedisStore, port: int, within: float = 2) -> None:
    for method in every_method(store):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"grant store redis://.*127.0.0.1:{port}/0: "):
            await method()
        assert time.monotonic() - started < within


async def assert_available(store: RedisStore) -> None:
    for method in every_method(store):
        await method()


async def test_no_redis_listening_fails_fast_without_the_password() -> None:
    port = free_port()
    store = RedisStore(f"redis://gateway:s3cret@127.0.0.1:{port}/0")
    try:
        await assert_unavailable(store, port)
        with pytest.raises(StoreUnavailable) as raised:
            await store.version()
        assert "s3cret" not in str(raised.value) and f"redis://gateway:***@127.0.0.1:{port}/0" in str(raised.value)
    finally:
        await store.aclose()


async def test_a_dead_redis_fails_fast_and_the_store_recovers_when_it_is_back(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url)
    try:
        await store.put_grant("api", "app", None, "read", None)
        before = await store.version()
        own_server.stop()
        await assert_unavailable(store, own_server.port)

        own_server.start()  # the same port, empty: no persistence
        await store.put_grant("api", "app", None, "read", None)
        # The counter is back where it was: the epoch tells the two versions apart.
        after = await store.version()
        assert after[1] == before[1] and after != before
        await assert_available(store)
    finally:
        await store.aclose()


async def test_a_hung_redis_times_out_and_the_store_recovers(own_server: RedisServer) -> None:
    # every call waits for a hung Redis: the default timeout once, a short one for each method
    store, hasty = RedisStore(own_server.url), RedisStore(own_server.url, timeout=0.2)
    try:
        await store.put_grant("api", "app", None, "read", None)
        own_server.signal(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"grant store redis://127.0.0.1:{own_server.port}/0: "):
            await store.version()
        assert time.monotonic() - started < 2
        await assert_unavailable(hasty, own_server.port, within=0.8)
        own_server.signal(signal.SIGCONT)
        await assert_available(hasty)
        await assert_available(store)
        assert "read" in (await store.view("api", "app", None)).client_grants
    finally:
        await store.aclose()
        await hasty.aclose()


async def test_two_replicas_see_a_change_within_refresh_and_never_decide_on_a_dead_store(own_server: RedisServer) -> None:
    from gateway.grants.live import LiveGrants, open_store

    replicas = [LiveGrants(open_store(own_server.url, Path(".")), refresh=0.1) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    try:
        for replica in replicas:
            assert (await replica.view("wallet", "app", None)).client_grants == {}  # now in memory
        async def views() -> list[set[str] | None]:
            """Each replica's client grants of app, None where its store cannot be read."""
            seen: list[set[str] | None] = []
            for replica in replicas:
                try:
                    seen.append(set((await replica.view("wallet", "app", None)).client_grants))
                except StoreUnavailable:
                    seen.append(None)
            return seen

        async def until(expected: list[set[str] | None], within: float) -> None:
            deadline = asyncio.get_running_loop().time() + within
            while (seen := await views()) != expected and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            assert seen == expected

        await replicas[0].store.put_grant("wallet", "app", None, "s", None)
        await until([{"s"}, {"s"}], within=1)  # refresh is 0.1 s
        own_server.stop()
        await until([None, None], within=5)  # a poll times out after its 1 s: the views held are dropped
        assert [replica.cached("wallet", "app", None) for replica in replicas] == [None, None]
        own_server.start()  # empty: no persistence
        await until([set(), set()], within=5)
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_a_replica_hears_of_a_change_at_once_and_again_after_redis_restarts(own_server: RedisServer) -> None:
    """With a refresh of a minute, only the change channel can make a write seen within seconds."""
    from gateway.grants.live import LiveGrants, open_store

    replica = LiveGrants(open_store(own_server.url, Path(".")), refresh=60)
    writer = RedisStore(own_server.url)
    await replica.start()

    async def seen(scope: str | None) -> bool:
        for _ in range(40):  # 2 s
            view = await replica.view("wallet", "app", None)
            if (scope in view.client_grants) if scope else not view.client_grants:
                return True
            await asyncio.sleep(0.05)
        return False

    try:
        assert await seen(None)  # the empty view is now in memory
        await writer.put_grant("wallet", "app", None, "s", None)
        assert await seen("s")
        own_server.stop()
        own_server.start()  # empty: no persistence
        # the broken subscription dropped the views, and the watcher subscribes again within a second
        assert await seen(None)
        await asyncio.sleep(1.5)
        await writer.put_grant("wallet", "app", None, "t", None)
        assert await seen("t")
    finally:
        await writer.aclose()
        await replica.aclose()


def test_two_gateway_processes_on_one_redis_follow_every_change(own_server: RedisServer, tmp_path: Path) -> None:
    from tests.support import GatewayProcess, RecordingUpstream, mint

    upstream = RecordingUpstream()
    config = write_config(tmp_path, store=own_server.url)
    config.write_text(config.read_text().replace("client: httpx", "client: pool"))
    table = tmp_path / "routes" / "wallet.yaml"
    table.write_text(table.read_text().replace("http://wallet.test", upstream.url))
    gateways = [GatewayProcess(config, "uvicorn"), GatewayProcess(config, "granian")]
    token = {"authorization": f"Bearer {mint('accounts_details:read', lifetime=600, sub='ana', client_id='app')}"}

    def statuses() -> list[int]:
        return [httpx.get(f"http://127.0.0.1:{gateway.port}/w/accounts/details", headers=token).status_code for gateway in gateways]

    try:
        assert statuses() == [403, 403]
        assert cli("grants", "add", "--config", str(config), "--api", "wallet", "--client", "app", "accounts_details:read").returncode == 0
        eventually(lambda: statuses() == [200, 200], what="both allowed")  # refresh is 0.1 s
        assert cli("grants", "revoke", "--config", str(config), "--api", "wallet", "--client", "app", "accounts_details:read").returncode == 0
        eventually(lambda: statuses() == [403, 403], what="both refused")
        own_server.stop()
        eventually(lambda: statuses() == [503, 503], what="both unavailable")  # a poll times out after 1 s: never decided on a guess
        own_server.start()
        eventually(lambda: statuses() == [403, 403], what="both reading the empty redis")  # no grant
    finally:
        for gateway in gateways:
            gateway.close()
        upstream.close()


# --- a store URL's secrets never show ---------------------------------------------------------

SECRET = "s3cret-Pa55"


# {port}: a port held by the test, bound and not listening, so that connecting is refused (a
# template, not a port chosen at collection: test ids must be the same in every pytest-xdist worker)
UNREACHABLE_URLS = [
    f"redis://:{SECRET}@127.0.0.1:{{port}}/0",
    f"redis://gateway:{SECRET}@127.0.0.1:{{port}}/0",
    f"rediss://gateway:{SECRET}@127.0.0.1:{{port}}/0",
    f"redis://127.0.0.1:{{port}}/0?password={SECRET}",
    f"redis://gateway@127.0.0.1:{{port}}/0?db=0&password={SECRET}",
    f"redis://:{SECRET.replace('3', '%33')}@127.0.0.1:{{port}}/0",  # percent-encoded: decoded by redis-py
]


REJECTED_URLS = [
    f"unix:///run/redis.sock?password={SECRET}",
    f"http://:{SECRET}@127.0.0.1/0",
    f"redis://:{SECRET}@127.0.0.1:notaport/0",
    f"sqlite://:{SECRET}@host/grants.db",
    f"redis://:{SECRET}@[::1/0",
]


def cli_output(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exit:
        code = int(exit.code or 0)
    printed = capsys.readouterr()
    return code, printed.out + printed.err


@pytest.mark.parametrize("url", REJECTED_URLS)
def test_gateway_check_never_shows_a_rejected_urls_password(tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, printed = cli_output(capsys, "check", "--config", str(write_config(tmp_path, f'"{url}"')))
    assert code != 0 and "grants.store" in printed, printed
    assert SECRET not in printed and SECRET.replace("3", "%33") not in printed, printed


@pytest.mark.parametrize("template", UNREACHABLE_URLS)
async def test_an_unreachable_store_never_shows_its_password(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               caplog: pytest.LogCaptureFixture, template: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        await _never_shows_its_password(tmp_path, capsys, caplog, template.format(port=held.getsockname()[1]))


async def _never_shows_its_password(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, url: str) -> None:
    config_path = write_config(tmp_path, f'"{url}"')
    # the admin listener's /readyz (unauthenticated)
    app = AdminApp(load_config(config_path), open_store(url, tmp_path), "admin-token-0123456789abcdef")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as client:
        ready = await client.get("/readyz")
        written = await client.put("/grants/wallet/app/accounts_details:read", headers={"authorization": "Bearer admin-token-0123456789abcdef"})
    assert app.store is not None
    await app.store.aclose()
    assert ready.status_code == 503 and "unreadable: grant store redis" in ready.text
    assert written.status_code == 503
    # the serving process's log and status (what /readyz shows of it)
    with caplog.at_level(logging.DEBUG):
        live = LiveGrants(open_store(url, tmp_path), refresh=0.05)
        await live.start()
        await asyncio.sleep(0.1)
        await live.aclose()
    assert live.error is not None and "***" in live.error
    # the commands
    listed = await asyncio.to_thread(cli_output, capsys, "grants", "list", "--config", str(config_path))
    explained = await asyncio.to_thread(cli_output, capsys, "explain", "--config", str(config_path), "GET", "/w/accounts/details",
                                        "--scopes", "accounts_details:read", "--claims", '{"sub": "app", "client_id": "app"}')
    assert listed[0] == 3 and "the grant store cannot be used: grant store" in listed[1]
    for shown in (ready.text, written.text, live.error, caplog.text, listed[1], explained[1]):
        assert SECRET not in shown and SECRET.replace("3", "%33") not in shown, shown


def test_explain_never_shows_the_password_of_a_store_that_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--requirepass", SECRET], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password=SECRET, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()
        for url in (f"redis://:{SECRET}@127.0.0.1:{port}/0", f"redis://default:{SECRET}@127.0.0.1:{port}/0",
                    f"redis://127.0.0.1:{port}/0?password={SECRET}"):
            config = str(write_config(tmp_path, f'"{url}"'))
            assert cli_output(capsys, "grants", "add", "--config", config, "--api", "wallet", "--client", "app", "accounts_details:read")[0] == 0
            code, printed = cli_output(capsys, "explain", "--config", config, "GET", "/w/accounts/details", "--scopes", "accounts_details:read",
                                       "--claims", '{"sub": "app", "client_id": "app"}')
            assert code == 0 and "step 3, live grants: read from redis://" in printed, printed
            assert SECRET not in printed, printed
            listed = cli_output(capsys, "grants", "list", "--config", config)
            assert listed[0] == 0 and SECRET not in listed[1]
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize(("url", "shown"), [
    (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
    (f"redis://user:{SECRET}@h/1", "redis://user:***@h/1"),
    (f"rediss://user:{SECRET.replace('3', '%33')}@h", "rediss://user:***@h"),
    (f"redis://{SECRET}@h", "redis://***@h"),  # a user part alone may be a password
    (f"unix:///run/redis.sock?password={SECRET}&db=1", "unix:///run/redis.sock?password=***&db=***"),
    (f"redis://h/0?password={SECRET}#{SECRET}", "redis://h/0?password=***"),
])
def test_a_store_url_and_an_error_about_it_are_shown_without_its_secrets(url: str, shown: str) -> None:
    assert redacted(url) == shown
    # redis-py's own words may quote the URL or the password, as written or decoded
    text = scrubbed(f"Error connecting to {url}: AUTH {SECRET} failed", url)
    assert SECRET not in text and "%33" not in text and text.startswith("Error connecting to ***: AUTH *** failed")
