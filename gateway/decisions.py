"""Decision mode (`gateway serve --mode decision`): the gateway as the authorization service of a
proxy already at the edge. The front proxy asks, the gateway answers, the front proxy forwards.

    GET /nginx          nginx auth_request           X-Original-Method, X-Original-URI
    GET /forward-auth   Traefik, Caddy forward_auth  X-Forwarded-Method, X-Forwarded-Uri
    ANY /envoy/<target> Envoy ext_authz (HTTP)       the request's own method, the rest of its path and query

The decision is `pipeline.decide` on the original target as the front proxy received it: the same
canonicalisation and route match as proxy mode. Allowed: 200, no body, the identity headers.
Refused: proxy mode's answer as it is; for nginx, whose auth_request takes only 401 and 403 (and
drops the body), 401 or 403 with the real answer in `X-Auth-*` headers (docs/decision-mode.md).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re

from gateway import head
from gateway.app import Gateway, raw_path, respond
from gateway.errors import InvalidRequest, NotFound, Refusal, UriTooLong
from gateway.pipeline import Outcome, answer, decide
from gateway.types import Headers, Receive, Scope, Send

logger = logging.getLogger("gateway")

NGINX = b"/nginx"
FORWARD_AUTH = b"/forward-auth"
ENVOY = b"/envoy"
# the request's original method and target, by endpoint
_ORIGINAL = {
    NGINX: (b"x-original-method", b"x-original-uri"),
    FORWARD_AUTH: (b"x-forwarded-method", b"x-forwarded-uri"),
}
# RFC 9110 5.6.2: a method is a token
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# the real answer, for nginx's `auth_request_set`
AUTH_STATUS = b"x-auth-status"
AUTH_ERROR = b"x-auth-error"
AUTH_ERROR_DESCRIPTION = b"x-auth-error-description"
AUTH_REFUSAL = b"x-auth-refusal"
_UNSAFE = re.compile(r"[^\x20-\x7e]")


class DecisionGateway(Gateway):
    """The gateway as a decision service: every part of `Gateway` (reloads, the access log,
    metrics, lifespan), answering the pipeline's outcome instead of forwarding on it."""

    mode = "decision"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        runtime = self.runtime  # read once: `swap` replaces it, and this request keeps its own
        own_path = raw_path(scope)
        nginx = own_path == NGINX
        method = scope["method"]
        path = own_path
        observer = self.observer
        record = None if observer is None else observer.begin(scope)
        outcome = Outcome()
        allowed = False
        reason = "forwarded"
        try:
            # the decision request's own head is checked as proxy mode checks a request's
            authorization = head.check(scope, own_path, scope.get("query_string", b""), runtime.limits)
            if not _trusted(scope, runtime.config.decision.trusted_proxies):
                peer = scope.get("client")
                shown = peer[0] if peer else "unknown"
                raise InvalidRequest(f"the peer {shown} is not a trusted proxy (decision.trusted_proxies): no decision is taken for it")
            method, target = _original(scope, own_path)
            path, _, query = target.partition(b"?")
            if len(target) > runtime.limits.max_uri:
                raise UriTooLong(f"the original request target is {len(target)} bytes long; at most {runtime.limits.max_uri} are accepted")
            await decide(outcome, runtime, method, path, query, authorization)
            allowed = True
            headers = [*outcome.identity, (b"content-length", b"0")]
            await respond(send, 200, headers, b"", record)
        except Refusal as refusal:
            logger.debug("%s %s refused: %d %s: %s", method, path.decode("ascii", "backslashreplace"), refusal.status, refusal.error,
                         refusal.description)
            reason = refusal.error
            status, headers, body = answer(refusal, outcome.match)
            if nginx:
                status, headers = _for_nginx(refusal, status, headers, body)
                # auth_request reads no body: one here would close nginx's keep-alive connection
                body = b""
            await respond(send, status, headers, body, record)
        finally:
            if record is not None:
                record.observer.finish(record, method, path, outcome, allowed, reason)


def _trusted(scope: Scope, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether the peer is one of the front proxies allowed to ask (no peer address: not)."""
    peer = scope.get("client")
    if not peer:
        return False
    return _trusted_address(peer[0], networks)


# a front proxy asks from a few addresses, and parsing one costs a fifth of a refusal's own time
@functools.lru_cache(maxsize=1024)
def _trusted_address(peer: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _original(scope: Scope, own_path: bytes) -> tuple[str, bytes]:
    """The original request's method and target (path and query, raw), as the front proxy received it.

    :raises NotFound: no decision endpoint at this path.
    :raises InvalidRequest: the original method or target is missing, given twice, or not one a
        request line could carry (a `#`, not origin-form).
    """
    names = _ORIGINAL.get(own_path)
    if names is not None:
        # the endpoint's own method and query string do not count (Caddy appends the client's query)
        method = _one(scope["headers"], names[0])
        target = _one(scope["headers"], names[1])
    elif own_path.startswith(ENVOY + b"/"):
        method = scope["method"].encode("ascii")
        target = own_path[len(ENVOY):]
        query = scope.get("query_string", b"")
        if query:
            target += b"?" + query
    else:
        raise NotFound(f"no decision endpoint at {own_path.decode('ascii', 'backslashreplace')}: ask /nginx, /forward-auth or /envoy/<target>")
    if not _METHOD.fullmatch(method):
        raise InvalidRequest(f"the original method {method.decode('latin-1')[:40]!r} is not an HTTP method")
    if b"#" in target:
        raise InvalidRequest("the original request target holds a '#': a fragment is never sent, so the target is ambiguous")
    if not target.startswith(b"/"):
        raise InvalidRequest(f"the original request target {target.decode('latin-1')[:100]!r} is not a path (origin-form, starting with '/')")
    return method.decode("ascii"), target


def _one(headers: Headers, name: bytes) -> bytes:
    """:raises InvalidRequest: the header is missing, or given more than once."""
    values = [value for header, value in headers if header == name]
    if len(values) != 1:
        shown = name.decode("ascii").title().replace("Uri", "URI")
        raise InvalidRequest(f"the decision request must carry one {shown} header (it carries {len(values)}): no decision is taken without it")
    return values[0]


def _for_nginx(refusal: Refusal, status: int, headers: Headers, body: bytes) -> tuple[int, Headers]:
    """nginx's auth_request takes 401 and 403 only (anything else is a 500) and drops the body: the
    real answer travels in headers, for the shipped config to give the client as it is."""
    headers = [*(header for header in headers if header[0] != b"content-length"), (b"content-length", b"0"), (AUTH_STATUS, b"%d" % status), (AUTH_ERROR, refusal.error.encode("ascii")),
               (AUTH_ERROR_DESCRIPTION, header_safe(refusal.description)), (AUTH_REFUSAL, body)]
    return (401 if status == 401 else 403), headers


def header_safe(text: str) -> bytes:
    """`text` as a header value: visible ASCII and spaces, anything else as `\\uXXXX` or `?`."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    return _UNSAFE.sub("?", escaped).encode("ascii")

