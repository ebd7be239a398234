"""Forwarding an allowed request: header hygiene both ways, then bodies streamed both ways.

Rules (docs/requests.md, "Forwarding"): hop-by-hop headers and every header named in Connection
are removed both ways; method-override headers and client copies of identity headers never
reach the upstream; X-Forwarded-* are set from the real peer, trusting the client's own only
when the peer is a configured trusted proxy. Upstream failures become 502/504 here, in one place.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Protocol, overload

from gateway.asgi import ClientDisconnected
from gateway.errors import BadGateway, GatewayTimeout, InvalidRequest
from gateway.identity import NAMES as IDENTITY
from gateway.settings import ProxySettings
from gateway.tables import Api, Forwarding
from gateway.types import Headers, Receive, Scope, Send
from gateway.upstream import UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse, UpstreamTimeout

logger = logging.getLogger("gateway.proxy")

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
METHOD_OVERRIDE = frozenset({b"x-http-method-override", b"x-method-override", b"x-http-method"})
# set by the gateway from what it saw itself; a client's copy is believed only from a trusted proxy
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"})
# the ASGI server already answered `Expect: 100-continue` when the body was first read
_REQUEST_ONLY_DROP = frozenset({b"host", b"expect"})
_PARTIAL = frozenset({b"range", b"if-range"})
# every request header the gateway does more with than pass on: one set lookup for the others
_HANDLED = HOP_BY_HOP | METHOD_OVERRIDE | IDENTITY | FORWARDING | _REQUEST_ONLY_DROP | {b"content-length"}


_SCHEMES = {"http": b"http", "https": b"https"}


# what most Connection headers say (nginx's responses, browsers' requests): no other header named
_KEEP_ALIVE = frozenset({b"keep-alive", b"Keep-Alive"})


def _named_by_connection(values: list[bytes]) -> frozenset[bytes]:
    """The header names Connection values list, besides the hop-by-hop ones dropped anyway
    (`Connection: keep-alive` names nothing more)."""
    if len(values) == 1 and values[0] in _KEEP_ALIVE:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(b",") if token.strip()) - HOP_BY_HOP


def _is_trusted(peer: str | None, settings: ProxySettings) -> bool:
    if peer is None:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in settings.trusted_proxies)


def _pass_underscored(name: bytes, policy: str) -> bool:
    """Whether a request header whose name holds '_' is passed on (`proxy.underscore_headers`).

    WSGI, Rack and CGI upstreams read '_' and '-' as the same key, so such a name can stand in
    for a header the gateway sets or strips; nginx drops them by default.
    :raises InvalidRequest: the policy is `refuse`.
    """
    if policy == "refuse":
        shown = name.decode("latin-1")[:100]
        raise InvalidRequest(f"header name {shown!r} holds '_', which upstreams may read as '-': rename it")
    # even passed, a twin of a header the gateway sets or strips never is
    return policy == "pass" and name.replace(b"_", b"-") not in _HANDLED


def upstream_request_headers(
    scope: Scope, settings: ProxySettings, authority: bytes, identity: Sequence[tuple[bytes, bytes]]
) -> tuple[Headers, bool, int | None]:
    """The headers to send upstream (framing left to the upstream client), whether the request
    has a body, and its length when the client declared one.

    :raises InvalidRequest: a Content-Length that is not one non-negative number.
    """
    found = _upstream_request_headers(scope, settings, authority, identity, None)
    if found is None:  # a Connection header naming other headers: once more, knowing them all
        values = [value for name, value in scope["headers"] if name.lower() == b"connection"]
        found = _upstream_request_headers(scope, settings, authority, identity, _named_by_connection(values))
    return found


# typed: None only while the names Connection headers list are not known
@overload
def _upstream_request_headers(
    scope: Scope, settings: ProxySettings, authority: bytes, identity: Sequence[tuple[bytes, bytes]], listed: None
) -> tuple[Headers, bool, int | None] | None: ...


@overload
def _upstream_request_headers(
    scope: Scope, settings: ProxySettings, authority: bytes, identity: Sequence[tuple[bytes, bytes]], listed: frozenset[bytes]
) -> tuple[Headers, bool, int | None]: ...


def _upstream_request_headers(
    scope: Scope, settings: ProxySettings, authority: bytes, identity: Sequence[tuple[bytes, bytes]], listed: frozenset[bytes] | None
) -> tuple[Headers, bool, int | None] | None:
    """One pass over the request headers; None if it meets a Connection header that names other
    headers while `listed` (the names every Connection header lists) is not known yet."""
    headers: Headers = scope["headers"]
    client = scope.get("client")
    peer = client[0] if client else None
    trusted = bool(settings.trusted_proxies) and _is_trusted(peer, settings)  # no call when none is configured
    outgoing: Headers = []
    forwarded_for: list[bytes] = []
    scheme = scope.get("scheme", "http")
    forwarded_proto = _SCHEMES.get(scheme) or scheme.encode("ascii")
    host = b""
    chunked = False
    length: int | None = None
    for name, value in headers:
        name = name.lower()
        if name not in _HANDLED and not (listed and name in listed):
            # 0x5F is '_': bytes membership of an int is a byte test, of b"_" a failed int conversion first
            if 0x5F not in name or _pass_underscored(name, settings.underscore_headers):
                outgoing.append((name, value))
            continue
        if listed is None and name == b"connection" and _named_by_connection([value]):
            return None
        if name == b"content-length":
            if length is not None or not value.strip().isdigit():
                raise InvalidRequest("Content-Length must be a single non-negative number")
            length = int(value)
            continue
        if name == b"transfer-encoding":
            chunked = True
        if name in HOP_BY_HOP or (listed and name in listed) or name in METHOD_OVERRIDE or name in IDENTITY:
            continue
        if name in _REQUEST_ONLY_DROP:
            if name == b"host":
                host = value
            continue
        if name in FORWARDING:
            if not trusted:
                continue
            if name == b"x-forwarded-for":
                forwarded_for.append(value)
                continue
            if name == b"x-forwarded-proto":
                forwarded_proto = value
                continue
        outgoing.append((name, value))
    if peer is not None:
        forwarded_for.append(peer.encode("ascii"))
    outgoing.append((b"host", authority))
    if forwarded_for:
        outgoing.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    outgoing.append((b"x-forwarded-proto", forwarded_proto))
    if host and not (trusted and any(name == b"x-forwarded-host" for name, _ in outgoing)):
        outgoing.append((b"x-forwarded-host", host))
    outgoing.extend(identity)
    has_body = chunked or bool(length)
    return outgoing, has_body, None if chunked else length


def downstream_response_headers(headers: Headers) -> Headers:
    """The upstream's response headers without hop-by-hop ones (names lowercased, as upstream
    clients give them)."""
    kept: Headers = []
    connection: list[bytes] = []
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"connection":
                connection.append(value)
            continue
        kept.append((name, value))
    listed = _named_by_connection(connection) if connection else None
    if listed:
        return [(name, value) for name, value in kept if name not in listed]
    return kept


def _whole_answer(headers: Headers, identity_only: bool) -> Headers:
    """Request headers that ask for the whole answer: without Range and If-Range (a slice cannot
    be rewritten), and, when it is rewritten, `Accept-Encoding: identity`, so that an upstream
    need not pick a coding the gateway could not undo."""
    kept = [(name, value) for name, value in headers if name not in _PARTIAL and not (identity_only and name == b"accept-encoding")]
    return [*kept, (b"accept-encoding", b"identity")] if identity_only else kept


class _RequestBody:
    """The client's request body, chunk by chunk. An iterator object, not an async generator:
    the upstream client may stop early (an upstream that answers first), and an unfinished
    generator costs the loop a finalizer task."""

    __slots__ = ("_receive", "_more")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._more = True

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        while self._more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("client disconnected before its request body was complete")
            self._more = message.get("more_body", False)
            body: bytes = message.get("body", b"")
            if body:
                return body
        raise StopAsyncIteration


def _refusal_for(api: Api, exc: UpstreamError) -> GatewayTimeout | BadGateway:
    """The answer to an upstream failure met before anything was sent to the client: the one place
    upstream client errors become 504 and 502."""
    if isinstance(exc, UpstreamTimeout):
        logger.warning("upstream of %s timed out: %s", api.name, exc)
        return GatewayTimeout(f"the upstream of {api.name} did not answer in time")
    logger.warning("upstream of %s failed: %s", api.name, exc)
    return BadGateway(f"the upstream of {api.name} could not be reached or answered badly")


class _Replay:
    """A request body the gateway holds whole (an exchange read or rewrote it), sent as one chunk."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> bytes:
        body, self._body = self._body, None
        if body is None:
            raise StopAsyncIteration
        return body


class _DisconnectWatch:
    """Cancels the task that streams a response once its client has gone away.

    uvicorn's and granian's `send` return quietly once the peer is gone, and an upstream between
    events sends nothing to forward: `receive` saying `http.disconnect` is the one sign. Started
    only once the upstream client reads no more of the request body, so that no one else is
    reading `receive`.
    """

    __slots__ = ("gone", "task")

    def __init__(self, receive: Receive, streaming: asyncio.Task[object]) -> None:
        self.gone = False
        self.task = asyncio.ensure_future(self._watch(receive, streaming))

    async def _watch(self, receive: Receive, streaming: asyncio.Task[object]) -> None:
        message = await receive()
        if message["type"] != "http.disconnect":
            # the one message a request sent whole may have left: the empty end of its body (the
            # pool stops at the declared length, and granian ends a body with an empty message),
            # or the request itself when it had none; after it, receive() waits for the disconnect
            message = await receive()
        if message["type"] == "http.disconnect":
            self.gone = True
            streaming.cancel()


async def _stream_rest(chunks: AsyncIterator[bytes], response: UpstreamResponse, receive: Receive, send: Send) -> None:
    """Send the chunks after a response's first one, and its end; or stop at once, quietly,
    when the client goes away (the caller closes the response unread: never pooled)."""
    streaming = asyncio.current_task()
    assert streaming is not None
    # while the upstream client still reads `receive` for the request body (an upstream that
    # answered before the body's end), a second reader would take its messages: no watch then
    watch = _DisconnectWatch(receive, streaming) if response.request_sent else None
    last = b""
    try:
        async for chunk in chunks:
            if response.finished:
                last = chunk
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except asyncio.CancelledError:
        # the watch's cancellation and nobody else's (a server shutting down): the client is gone
        if watch is not None and watch.gone and streaming.uncancel() == 0:
            return
        raise
    finally:
        if watch is not None:
            # before the last send: once the response is complete, `receive` says http.disconnect
            watch.task.cancel()
    await send({"type": "http.response.body", "body": last, "more_body": False})


class Note(Protocol):
    """Where the forwarder notes the upstream's answer for the access log and the metrics
    (`access.Record`): its status as sent on, and the upstream's time to answer."""

    status: int
    upstream_seconds: float | None


class Forwarder:
    def __init__(self, client: UpstreamClient, settings: ProxySettings) -> None:
        self.client = client
        self.settings = settings

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, api: Api, target: bytes, identity: Sequence[tuple[bytes, bytes]],
        forwarding: Forwarding | None = None, record: Note | None = None,
    ) -> None:
        """Send the request to `api`'s upstream and stream the answer back. A client that goes
        away while the answer streams ends the exchange at once, quietly.

        :param forwarding: what the route's exchange decided (a body to send instead of the
            client's, a rewrite of the answer); None for the usual unchanged exchange.
        :param record: where the upstream's time to answer is noted (metrics, access log); None: not timed.
        :raises BadGateway, GatewayTimeout: before anything was sent to the client. A failure
            after the response started is re-raised as is, so the server aborts the connection
            rather than end a truncated body as if it were complete.
        """
        headers, has_body, length = upstream_request_headers(scope, self.settings, api.upstream.authority, identity)
        if forwarding is not None and (forwarding.whole or forwarding.rewrite is not None):
            headers = _whole_answer(headers, identity_only=forwarding.rewrite is not None)
        body: AsyncIterator[bytes] | None = _RequestBody(receive) if has_body else None
        if forwarding is not None and forwarding.body is not None:
            body, length = (_Replay(forwarding.body) if forwarding.body else None), len(forwarding.body)
        if forwarding is not None and forwarding.query is not None:
            target = target.partition(b"?")[0] + (b"?" + forwarding.query if forwarding.query else b"")
        # positional: keywords cost a dataclass's __init__ more, once per request
        request = UpstreamRequest(api.upstream.origin, scope["method"], target, headers, body, length)
        started = time.perf_counter() if record is not None else 0.0
        try:
            response = await self.client.send(request)
        except UpstreamError as exc:
            raise _refusal_for(api, exc) from exc
        finally:
            if record is not None:
                record.upstream_seconds = time.perf_counter() - started
        try:
            if forwarding is not None and forwarding.rewrite is not None:
                await self._send_rewritten(response, scope, send, api, forwarding, record)
                return
            if record is not None:
                record.status = response.status
            await send({
                "type": "http.response.start",
                "status": response.status,
                "headers": downstream_response_headers(response.headers),
            })
            chunks = response.body()
            async for chunk in chunks:
                if response.finished:
                    # the last chunk ends the response: one send instead of two
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                break
            else:  # no body at all
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            # more than one chunk (a stream, maybe endless): from here the client may go away
            await _stream_rest(chunks, response, receive, send)
        finally:
            await response.aclose()

    async def _send_rewritten(
        self, response: UpstreamResponse, scope: Scope, send: Send, api: Api, forwarding: Forwarding, record: Note | None,
    ) -> None:
        """The answer read whole (bounded), rewritten, and sent with its own length."""
        assert forwarding.rewrite is not None
        chunks: list[bytes] = []
        size = 0
        limit = self.settings.max_rewritten_response
        try:
            async for chunk in response.body():
                size += len(chunk)
                if size > limit:
                    raise BadGateway(f"the answer of {api.name}'s upstream is larger than {limit} bytes, the most the gateway rewrites (proxy.max_rewritten_response)")
                chunks.append(chunk)
        except UpstreamError as exc:
            raise _refusal_for(api, exc) from exc
        headers = [(name, value) for name, value in downstream_response_headers(response.headers) if name != b"content-length"]
        status, headers, body = forwarding.rewrite(response.status, headers, b"".join(chunks), limit)
        if scope["method"] != "HEAD" and status not in (204, 304):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        if record is not None:
            record.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
