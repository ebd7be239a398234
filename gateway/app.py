"""The ASGI app: where the steps meet, in one short function (`Gateway.__call__`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from urllib.parse import quote

from gateway.config import Config, ProxySettings
from gateway.credentials import bearer_token, presented
from gateway.decision import Grant, authorize, is_public, route
from gateway.errors import Refusal, render
from gateway.keys import KeyStore
from gateway.pool import PooledUpstream
from gateway.proxy import ClientDisconnected, Forwarder
from gateway.tokens import TokenVerifier
from gateway.types import Receive, Scope, Send
from gateway.upstream import HttpxUpstream, UpstreamClient

logger = logging.getLogger("gateway")


def raw_path(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    if raw is None:
        # a server without raw_path: re-encode the decoded path, so what is matched is what is sent
        return quote(scope["path"], safe="/!$&'()*+,;=:@").encode("ascii")
    # some servers include the query string in raw_path
    return raw.partition(b"?")[0]


def upstream_client(settings: ProxySettings) -> UpstreamClient:
    if settings.client == "httpx":
        return HttpxUpstream(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
    return PooledUpstream(
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
        total_timeout=settings.total_timeout, max_connections=settings.max_connections,
        idle_timeout=settings.idle_timeout, ca_file=str(settings.ca_file) if settings.ca_file else None,
    )


@functools.lru_cache(maxsize=1024)  # callers share a few scope sets, and sorting costs
def _scopes_header(scopes: frozenset[str]) -> bytes:
    return " ".join(sorted(scopes)).encode("utf-8")


def identity_headers(grant: Grant) -> list[tuple[bytes, bytes]]:
    # subject and client are encoded per request: a memo of them would keep an object the
    # garbage collector tracks per caller, and a stream of new callers made it run twice as often
    headers = [(b"x-auth-scopes", _scopes_header(grant.scopes))]
    if grant.subject is not None:
        headers.append((b"x-auth-subject", grant.subject.encode("utf-8")))
    if grant.client is not None:
        headers.append((b"x-auth-client", grant.client.encode("utf-8")))
    return headers


class Gateway:
    """The gateway as an ASGI app.

    :param config: a loaded `Config`; a reload swaps it whole.
    :param upstream: the upstream client; by default an `HttpxUpstream` with the config's timeouts.
    :param keys: the key store; by default one built from `config.tokens`.
    """

    def __init__(self, config: Config, *, upstream: UpstreamClient | None = None, keys: KeyStore | None = None) -> None:
        tokens = config.tokens
        self.config = config
        self.keys = keys or KeyStore(
            tokens.static_keys, tokens.jwks_url,
            refetch_interval=tokens.jwks_refetch_interval, max_age=tokens.jwks_max_age,
        )
        self.verifier = TokenVerifier(tokens, self.keys)
        self.upstream = upstream or upstream_client(config.proxy)
        self.forwarder = Forwarder(self.upstream, config.proxy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # an HTTP request is handled here rather than in a method of its own: every coroutine
        # between the server and the upstream's answer is resumed at each step of the exchange
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        method = scope["method"]
        query = scope.get("query_string", b"")
        realm = "gateway"
        try:
            match = route(self.config.tables, method, raw_path(scope), query)
            api = match.route.api
            realm = api.name
            identity: Sequence[tuple[bytes, bytes]] = ()
            if not is_public(match):
                authorization = [value for name, value in scope["headers"] if name == b"authorization"]
                credential = presented(authorization, query)
                verified = self.verifier.recall(credential) if credential is not None else None
                if verified is None:
                    verified = await self.verifier.verify(bearer_token(authorization, query), key=credential)
                identity = identity_headers(authorize(match, verified))
            await self.forwarder.forward(scope, receive, send, api, match.upstream_target, identity)
        except Refusal as refusal:
            # debug, as Envoy's RBAC denials: a line per refused request would let anyone fill the log
            logger.debug("%s %s refused: %d %s: %s", method, scope.get("path"), refusal.status, refusal.error, refusal.description)
            status, headers, body = render(refusal, realm)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except ClientDisconnected:
            logger.info("%s %s: client disconnected mid-request", method, scope.get("path"))

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            # upgrades are hop-by-hop and never forwarded; the server answers 403
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.keys.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.aclose()
                await self.keys.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
