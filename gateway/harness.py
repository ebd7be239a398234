"""The gateway under test: the real ASGI app built from a user's config, with its upstreams mocked
by respx, its key source replaced by a throwaway key, and a fresh grant store for each request.
`gateway test` and the pytest plugin (`gateway.testing`) both put their requests through it.

A request goes through `Gateway.__call__` exactly as served (head checks, routing, token
verification with the config's issuer, audience and algorithms, catalog rules, live grants,
forwarding); only what lies outside the gateway is replaced. What it runs, a `Probe` and its
`Expectation`, is modelled in `gateway.cases`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import respx

from gateway.app import Gateway
from gateway.cases import DATE_CLAIMS, MINT, Case, Condition, Decision, Expectation, GrantFixture, Probe, claim_time
from gateway.grants.sqlite import SQLiteStore
from gateway.grants.urls import StoreAddress
from gateway.keys import KeyStore
from gateway.loading import load_config
from gateway.loading.cases import matched_api
from gateway.settings import Config
from gateway.signing import throwaway_key
from gateway.types import Headers, Message
from gateway.upstream import HttpxUpstream

DEFAULT_SUBJECT = "test-user"
DEFAULT_CLIENT = "test-client"
TOKEN_LIFETIME = 300
_CLIENT_ADDRESS = ("203.0.113.10", 50000)
# the case model, for the tests that build cases by hand (`from gateway.harness import Probe`)
__all__ = ["DEFAULT_CLIENT", "DEFAULT_SUBJECT", "Case", "Condition", "Decision", "Expectation", "GrantFixture", "Harness", "Probe"]
# the fixture's name before it had one of its own: test files written for it import it so
Grant = GrantFixture


class Harness:
    """The gateway of `config` under test. Use it as a context manager, or call `close`.

    :param config: a loaded `Config`, or the path of a gateway.yaml.
    :param upstream: the respx router every upstream request goes to; add routes to it to choose
        answers (by default every upstream answers 200 with an empty body).
    :raises ConfigError: the config does not load.
    :raises ValueError: no throwaway key can sign for `tokens.algorithms`.
    """

    def __init__(self, config: Config | str | Path, *, upstream: respx.MockRouter | None = None) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        self.key = throwaway_key(self.config.tokens.algorithms)
        self.upstream = upstream or respx.MockRouter(assert_all_mocked=False, assert_all_called=False)
        self._keys = KeyStore([self.key.verification_key()])
        self._folder = tempfile.TemporaryDirectory(prefix="gateway-test-")
        self._stores = itertools.count(1)

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the grant stores made for requests."""
        self._folder.cleanup()

    def claims(self, scopes: str | Sequence[str] | None = None, claims: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The claims of a token the config's verification accepts: its issuer and first audience,
        a subject and client (`DEFAULT_SUBJECT`, `DEFAULT_CLIENT`), `iat`, `exp` five minutes on,
        and `scopes` in the first of `tokens.scope_claims`; then `claims` over them (None removes
        one; date claims may say "now-60").

        :raises ValueError: a date claim that is not a time.
        """
        now = time.time()
        tokens = self.config.tokens
        minted: dict[str, Any] = {"sub": DEFAULT_SUBJECT, "client_id": DEFAULT_CLIENT, "iat": int(now), "exp": int(now) + TOKEN_LIFETIME}
        if tokens.issuer is not None:
            minted["iss"] = tokens.issuer
        if tokens.audience:
            minted["aud"] = tokens.audience[0]
        if scopes is not None:
            minted[tokens.scope_claims[0]] = scopes if isinstance(scopes, str) else " ".join(scopes)
        for name, value in (claims or {}).items():
            if value is None:
                minted.pop(name, None)
            else:
                minted[name] = claim_time(value, now) if name in DATE_CLAIMS else value
        return minted

    def token(self, scopes: str | Sequence[str] | None = None, claims: Mapping[str, Any] | None = None) -> str:
        """A token signed with the throwaway key, of `self.claims(scopes, claims)`."""
        return self.key.sign(self.claims(scopes, claims))

    def request(self, line: str, **options: Any) -> Decision:
        """Put `Probe.parse(line, **options)` to the gateway (in an event loop of its own: from an
        async test, await `arequest`)."""
        return asyncio.run(self.decide(Probe.parse(line, **options)))

    async def arequest(self, line: str, **options: Any) -> Decision:
        return await self.decide(Probe.parse(line, **options))

    def assert_decision(self, line: str, expect: str, **options: Any) -> Decision:
        """Put the request to the gateway and check the outcome, as a case of a cases file.

        :raises AssertionError: `expected X, got Y (error_description)`.
        """
        case = Case(Probe.parse(line, **options), Expectation.parse(expect), source="assert_decision")
        decision = asyncio.run(self.decide(case.probe))
        mismatch = case.mismatch(decision)
        if mismatch is not None:
            raise AssertionError(mismatch)
        return decision

    async def check(self, cases: Iterable[Case]) -> list[str]:
        """Run `cases` in order; one line per case that did not pass (see `Case.mismatch`)."""
        mismatches = []
        for case in cases:
            mismatch = case.mismatch(await self.decide(case.probe))
            if mismatch is not None:
                mismatches.append(mismatch)
        return mismatches

    async def decide(self, probe: Probe) -> Decision:
        """Put `probe` to a gateway of its own (a fresh grant store holding its grants and
        conditions, every upstream mocked) and return what came of it.

        :raises ValueError: a bad date claim, or grants or conditions for a config without a grant
            store, or without a client or subject to default to.
        """
        claims = None if probe.token is not MINT else self.claims(probe.scopes, probe.claims)
        authorization = None
        if claims is not None:
            authorization = self.key.sign(claims)
        elif isinstance(probe.token, str):
            authorization = probe.token
        config = self.config
        if config.grants.store is not None:
            store = Path(self._folder.name) / f"grants-{next(self._stores)}.db"
            await self._fill(store, probe, claims or {})
            config = replace(config, grants=replace(config.grants, store=StoreAddress.sqlite(store)))
        elif probe.grants or probe.conditions:
            raise ValueError(f"{probe.line}: grants and conditions need a grant store, and {config.source} names none (grants.store)")
        upstream = HttpxUpstream(
            connect_timeout=config.proxy.connect_timeout, read_timeout=config.proxy.read_timeout,
            transport=httpx.MockTransport(self._upstream_answer),
        )
        app = Gateway(config, upstream=upstream, keys=self._keys)
        calls_before = len(self.upstream.calls)
        await app.runtime.start()
        try:
            status, headers, body = await _exchange(app, probe, authorization)
        finally:
            await app.runtime.aclose()
        calls = self.upstream.calls[calls_before:]
        if calls:
            return Decision(status, headers, body, calls[-1].request)
        error, description = _refusal(headers, body)
        return Decision(status, headers, body, None, error, description)

    async def _upstream_answer(self, request: httpx.Request) -> httpx.Response:
        # respx hands back answers already read; the upstream client streams them, as from a socket
        answer = await self.upstream.async_handler(request)
        return httpx.Response(answer.status_code, headers=answer.headers.raw, stream=answer.stream)

    async def _fill(self, path: Path, probe: Probe, claims: Mapping[str, Any]) -> None:
        """A new store at `path`, holding the probe's grants and met conditions."""
        store = SQLiteStore(path)
        try:
            await store.list()  # made, with its tables, even when it stays empty
            if not probe.grants and not probe.conditions:
                return
            api = matched_api(self.config.tables, probe)
            client, subject = claims.get("client_id", claims.get("azp")), claims.get("sub")
            now = time.time()
            for grant in probe.grants:
                expires_at = grant.expires_at if grant.ttl is None else now + grant.ttl
                await store.put_grant(
                    _given(grant.api or api, "api", grant.scope, "the request matches no route"),
                    _given(grant.client or client, "client", grant.scope, "the request sends no minted token with a client_id"),
                    grant.subject, grant.scope, expires_at,
                )
            for condition in probe.conditions:
                await store.set_condition(
                    _given(condition.api or api, "api", condition.scope, "the request matches no route"),
                    _given(condition.subject or subject, "subject", condition.scope, "the request sends no minted token with a sub"),
                    condition.scope, True,
                )
        finally:
            await store.aclose()

def _given(value: str | None, what: str, scope: str, why: str) -> str:
    if value is None:
        raise ValueError(f"the grant or condition of {scope} needs its {what}: {why}")
    return value


def _refusal(headers: Headers, body: bytes) -> tuple[str | None, str | None]:
    """The `error` and `error_description` of the gateway's own JSON answer."""
    if (b"content-type", b"application/json") not in headers:
        return None, None
    try:
        answer = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(answer, dict):
        return None, None
    return answer.get("error"), answer.get("error_description")


async def _exchange(app: Gateway, probe: Probe, authorization: str | None) -> tuple[int, Headers, bytes]:
    """One request into the ASGI app, as a server makes it; the answer's status, headers and body."""
    path, _, query = probe.target.partition("?")
    given = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in probe.headers]
    headers = [] if any(name == b"host" for name, _ in given) else [(b"host", b"gateway.test")]
    if authorization is not None:
        headers.append((b"authorization", b"Bearer " + authorization.encode("latin-1")))
    if probe.body or probe.method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", b"%d" % len(probe.body)))
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": probe.method, "scheme": "http", "path": unquote(path), "raw_path": path.encode("utf-8"),
        "query_string": query.encode("utf-8"), "root_path": "", "headers": headers + given,
        "client": _CLIENT_ADDRESS, "server": ("gateway.test", 80),
    }
    answered = asyncio.Event()
    start: dict[str, Any] = {}
    chunks: list[bytes] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": probe.body, "more_body": False}
        await answered.wait()  # the client stays until the whole answer is in
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                answered.set()

    await app(scope, receive, send)
    answered.set()
    return start["status"], list(start.get("headers", [])), b"".join(chunks)
