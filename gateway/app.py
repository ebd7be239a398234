"""The ASGI app: where the steps meet, in one short function (`Gateway.__call__`)."""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import quote

from gateway import head
from gateway.access import METADATA, REQUEST_ID, Observer, Record
from gateway.asgi import ClientDisconnected
from gateway.errors import FramingInvalidRequest, NotFound, Refusal
from gateway.keys import KeyStore
from gateway.metrics import Recorder
from gateway.pipeline import Outcome, answer, decide
from gateway.routing import RouteMatch
from gateway.runtime import Runtime
from gateway.settings import Config
from gateway.types import Headers, Receive, Scope, Send
from gateway.upstream import UpstreamClient

logger = logging.getLogger("gateway")
# the methods an RFC 9728 document is served to; any other is answered as an unknown path (404)
_READS = ("GET", "HEAD")


def raw_path(scope: Scope) -> bytes:
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        # a server without raw_path: re-encode the decoded path, so what is matched is what is sent
        return quote(scope["path"], safe="/!$&'()*+,;=:@").encode("ascii")
    # some servers include the query string in raw_path
    return raw.partition(b"?")[0]


class Service(Protocol):
    """Something that runs beside the requests while the app serves (the reloader)."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class Gateway:
    """The gateway as an ASGI app.

    :param config: a loaded `Config`; `swap` replaces what it built, whole.
    :param upstream: the upstream client; by default the one `config.proxy` names.
    :param keys: the key store; by default one built from `config.tokens`.
    :param metrics: this process's metrics recorder (`gateway.metrics.enable`); None: not counted.
    :param access_log: log a line per request (`gateway.access`), with its request id.
    """

    mode = "proxy"  # how its config is loaded (`load_config`), at start and on each reload

    def __init__(
        self, config: Config, *, upstream: UpstreamClient | None = None, keys: KeyStore | None = None,
        metrics: Recorder | None = None, access_log: bool = False,
    ) -> None:
        self.runtime = Runtime.build(config, upstream=upstream, keys=keys, metrics=metrics)
        self.services: list[Service] = []  # started after the runtime, stopped before it
        # None unless metrics or the access log are on: then a request pays one check for them
        self.observer = Observer(metrics, access_log) if metrics is not None or access_log else None

    def swap(self, runtime: Runtime) -> Runtime:
        """Serve new requests with `runtime`; requests in flight finish with the one they started
        with. Returns that one, for the caller to close once they are done."""
        previous, self.runtime = self.runtime, runtime
        return previous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # an HTTP request is handled here rather than in a method of its own: every coroutine
        # between the server and the upstream's answer is resumed at each step of the exchange
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        runtime = self.runtime  # read once: `swap` replaces it, and this request keeps its own
        method = scope["method"]
        path = raw_path(scope)
        query = scope.get("query_string", b"")
        observer = self.observer
        record = None
        if observer is not None:
            record = observer.begin(scope)
        outcome = Outcome()
        forwarded = False
        reason = "forwarded"
        try:
            authorization = head.check(scope, path, query, runtime.limits)
            await decide(outcome, runtime, method, path, query, authorization, scope, receive)
            identity = outcome.identity
            if record is not None and record.id_header is not None:
                identity = [*identity, record.id_header]
            forwarded = True
            if outcome.shadow is None:
                match = outcome.match
                assert match is not None
                await runtime.forwarder.forward(scope, receive, send, match.route.api, match.upstream_target, identity, outcome.forwarding, record)
            else:  # its table is in shadow mode: forwarded instead of refused
                shadow = outcome.shadow
                await runtime.forwarder.forward(scope, receive, send, shadow.api, shadow.target, identity, outcome.forwarding, record)
        except Refusal as refusal:
            # debug, as Envoy's RBAC denials: a line per refused request would let anyone fill the log
            logger.debug("%s %s refused: %d %s: %s", method, scope.get("path"), refusal.status, refusal.error, refusal.description)
            match = outcome.match
            if match is None and isinstance(refusal, NotFound) and method in _READS:
                # no route: an RFC 9728 document is looked up only now, costing routed requests nothing
                document = runtime.tables.documents.get(path)
                if document is not None:
                    reason = METADATA
                    await _document(send, document, method, record)
                    return
            reason = refusal.error
            await _answer(send, refusal, match, record)
        except ClientDisconnected:
            # granian reports a malformed chunked body as a disconnect too: if the client is still
            # there, it gets a 400; if it is gone, the answer goes nowhere
            logger.info("%s %s: the request body ended early or was malformed", method, scope.get("path"))
            framing = FramingInvalidRequest("the request body ended before it was complete, or its chunked framing is malformed")
            reason = framing.error
            await _answer(send, framing, outcome.match, record)
        finally:
            if record is not None:
                record.observer.finish(record, method, path, outcome, forwarded, reason)

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
                try:
                    await self.runtime.start()
                    for service in self.services:
                        await service.start()
                    if self.observer is not None and self.observer.metrics is not None:
                        self.observer.metrics.start()
                except Exception as exc:
                    # the server logs the reason and exits non-zero, as starlette's Router does
                    await send({"type": "lifespan.startup.failed", "message": f"the gateway cannot start: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for service in self.services:
                    await service.aclose()
                await self.runtime.aclose()
                if self.observer is not None and self.observer.metrics is not None:
                    await self.observer.metrics.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer(send: Send, refusal: Refusal, match: RouteMatch | None, record: Record | None = None) -> None:
    status, headers, body = answer(refusal, match)
    await respond(send, status, headers, body, record)


async def _document(send: Send, document: bytes, method: str, record: Record | None) -> None:
    """An RFC 9728 document: public, and readable by a browser client on another origin."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(document)).encode("ascii")),
        (b"access-control-allow-origin", b"*"),
    ]
    await respond(send, 200, headers, b"" if method == "HEAD" else document, record)


async def respond(send: Send, status: int, headers: Headers, body: bytes, record: Record | None) -> None:
    if record is not None:
        record.status = status
        if record.request_id is not None:
            headers.append((REQUEST_ID, record.request_id.encode("ascii")))
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except OSError:
        pass  # the client is gone (granian raises where uvicorn returns quietly)
