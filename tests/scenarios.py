"""A provider's worked table from routes/, served by the real ASGI app with its upstream mocked
by respx: each scenario case says what a caller sends and what must come back, and whether (and
with which identity headers) the request reached the upstream."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import respx

from gateway.app import Gateway
from gateway.grants.urls import parse_store
from gateway.loading import load_config
from gateway.settings import Config
from tests.support import AUDIENCE, ISSUER, KEYS, Clock, mint, seen

ROOT = Path(__file__).parent.parent


@dataclass
class Case:
    """One request of a scenario: `expect` is 'forward' or 'STATUS error'."""

    request: str
    scopes: str | None
    expect: str
    claims: dict[str, Any] = field(default_factory=dict)
    forwarded_scopes: str | None = None  # X-Auth-Scopes the upstream must get, when forwarded
    json: Any = None  # a JSON request body (a GraphQL operation), sent with the request


@dataclass
class Answer:
    status: int
    error: str | None
    challenge: str | None
    forwarded: list[httpx.Request]
    response: httpx.Response


def store_url(request: pytest.FixtureRequest) -> str:
    """The grant store a provider fixture parametrised with "sqlite" or "redis" uses: a file of the
    test's own, or the session's redis-server, emptied."""
    if request.param == "sqlite":
        return "sqlite:///grants.db"
    server = request.getfixturevalue("redis_server")
    client = redis.Redis(port=server.port)
    client.flushall()
    client.close()
    return server.url


_LOADED: dict[tuple[str, tuple[str, ...]], Config] = {}


def _load(config: Path, table: str, files: tuple[str, ...], store: str) -> Config:
    """The config of `table`, loaded once per session (its YAML alone takes some 50 ms), with this
    test's own store: a SQLite file in its folder, or the URL given."""
    key = (table, files)
    if key not in _LOADED:
        _LOADED[key] = load_config(config)
    loaded = _LOADED[key]
    return dataclasses.replace(loaded, grants=dataclasses.replace(loaded.grants, store=parse_store(store, config.parent)))


class Provider:
    """The gateway with one table of routes/ in front of a respx-mocked upstream, and a grant
    store (a real SQLite file) that `grant` and friends write to. Call `start` before use and
    `aclose` after."""

    REFRESH = 0.05

    def __init__(self, table: str, folder: Path, store: str = "sqlite:///grants.db", files: tuple[str, ...] = ()) -> None:
        self.clock = Clock()  # what `Wait` moves on: grant expiries are judged by it
        self._patches = pytest.MonkeyPatch()
        (folder / "routes").mkdir()
        for name in (table, *files):  # `files`: what the table names beside it (a GraphQL schema)
            (folder / "routes" / name).write_text((ROOT / "routes" / name).read_text())
        self.config = folder / "gateway.yaml"
        self.config.write_text(
            f"routes: routes/\ntokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n"
            f"proxy:\n  client: httpx\ngrants:\n  store: {store}\n  refresh: {self.REFRESH}\n"
        )
        loaded = _load(self.config, table, files, store)
        self.api = loaded.tables.apis[0].name
        self.upstream_host = loaded.tables.apis[0].upstream.origin.host
        self.app = Gateway(loaded)
        self.response = httpx.Response(200, json={"upstream": True})

    async def start(self) -> None:
        self.clock.install(self._patches)
        await self.app.runtime.start()

    async def aclose(self) -> None:
        await self.app.runtime.aclose()
        self._patches.undo()

    async def seen(self) -> None:
        assert self.app.runtime.grants is not None
        await seen(self.app.runtime.grants)

    async def grant(self, client: str, scope: str, subject: str | None = None, expires_at: float | None = None) -> None:
        """A client grant (a user grant with `subject`), seen by the gateway once this returns."""
        assert self.app.runtime.grants is not None
        await self.app.runtime.grants.store.put_grant(self.api, client, subject, scope, expires_at)
        await self.seen()

    async def revoke(self, client: str, scope: str, subject: str | None = None) -> None:
        assert self.app.runtime.grants is not None
        assert await self.app.runtime.grants.store.revoke_grant(self.api, client, subject, scope)
        await self.seen()

    async def fulfil(self, subject: str, scope: str, met: bool = True) -> None:
        assert self.app.runtime.grants is not None
        await self.app.runtime.grants.store.set_condition(self.api, subject, scope, met)
        await self.seen()

    async def ask(self, case: Case) -> Answer:
        method, path = case.request.split(" ", 1)
        headers = {}
        if case.scopes is not None:
            claims = {name: value.claim() if isinstance(value, Ago) else value for name, value in case.claims.items()}
            headers["authorization"] = f"Bearer {mint(case.scopes, lifetime=600, **claims)}"
        with respx.mock(assert_all_called=False) as router:
            upstream = router.route(host=self.upstream_host).mock(return_value=self.response)
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
                response = await client.request(method, path, headers=headers, json=case.json)
            forwarded = [call.request for call in upstream.calls]
        error = response.json().get("error") if response.headers.get("content-type") == "application/json" and not forwarded else None
        return Answer(response.status_code, error, response.headers.get("www-authenticate"), forwarded, response)

    async def check(self, case: Case) -> Answer:
        answer = await self.ask(case)
        if case.expect == "forward":
            assert answer.status == 200 and len(answer.forwarded) == 1, (case, answer)
            if case.forwarded_scopes is not None:
                assert answer.forwarded[0].headers["x-auth-scopes"] == case.forwarded_scopes, (case, answer.forwarded[0].headers)
        else:
            status, _, error = case.expect.partition(" ")
            assert (answer.status, answer.error) == (int(status), error), (case, answer)
            assert answer.forwarded == [], case
        return answer


@dataclass(frozen=True)
class Ago:
    """A claim's time, `seconds` before the token is minted: a provider's table of cases is built when the tests
    are collected, long before (in a whole suite, minutes before) its case runs."""

    seconds: float

    def claim(self) -> int:
        return int(time.time() - self.seconds)


def fresh(acr: str, age: float = 10) -> dict[str, Any]:
    """Claims of a token from a login `age` seconds before it is minted, with `acr`."""
    return {"acr": acr, "auth_time": Ago(age)}


# --- Steps: a scenario that needs live state interleaves these with its cases ------------------------
# Each is a callable on the provider, so a provider's table of cases can hold them beside its cases and `play` runs
# them in order; being dataclasses, a failing step prints what it was.


@dataclass
class GivenGrant:
    """The store gets a grant (a user grant with `subject`); `ttl`: it expires that many seconds
    from when the step runs."""

    scope: str
    subject: str | None = None
    client: str = "client-1"
    ttl: float | None = None

    async def __call__(self, provider: Provider) -> None:
        await provider.grant(self.client, self.scope, self.subject, None if self.ttl is None else provider.clock.time() + self.ttl)


@dataclass
class Revoke:
    scope: str
    subject: str | None = None
    client: str = "client-1"

    async def __call__(self, provider: Provider) -> None:
        await provider.revoke(self.client, self.scope, self.subject)


@dataclass
class Fulfil:
    """The store records `subject` met (or, `met=False`, no longer meets) `scope`'s condition."""

    subject: str
    scope: str
    met: bool = True

    async def __call__(self, provider: Provider) -> None:
        await provider.fulfil(self.subject, self.scope, self.met)


@dataclass
class Wait:
    """Time passes: the provider's clock moves on `seconds` (no sleep)."""

    seconds: float

    async def __call__(self, provider: Provider) -> None:
        provider.clock.advance(self.seconds)


@dataclass
class Upstream:
    """What the mocked upstream answers from now on: a JSON body."""

    json: Any

    async def __call__(self, provider: Provider) -> None:
        provider.response = httpx.Response(200, json=self.json)


@dataclass
class Says:
    """A case whose answer must also say more: fragments of its `error_description` and of its
    WWW-Authenticate, and (forwarded) exactly which top-level JSON members come back."""

    case: Case
    description: tuple[str, ...] = ()
    challenge: tuple[str, ...] = ()
    members: frozenset[str] | None = None

    async def __call__(self, provider: Provider) -> Answer:
        answer = await provider.check(self.case)
        if self.description:
            said = answer.response.json()["error_description"]
            for fragment in self.description:
                assert fragment in said, (self.case, fragment, said)
        for fragment in self.challenge:
            assert answer.challenge is not None and fragment in answer.challenge, (self.case, fragment, answer.challenge)
        if self.members is not None:
            assert set(answer.response.json()) == self.members, (self.case, answer.response.json())
        return answer


Step = Case | GivenGrant | Revoke | Fulfil | Wait | Upstream | Says


async def play(provider: Provider, steps: list[Any]) -> None:
    """Run a scenario's cases and steps in order (a step is any async callable on the provider)."""
    for step in steps:
        if isinstance(step, Case):
            await provider.check(step)
        else:
            await step(provider)
