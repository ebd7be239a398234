"""Routes that act between the decision and the forwarder: they may read the request body
(refuse it, or rewrite it) and rewrite the response. GraphQL operations and REST
`response_fields` build on this seam; a route without an exchange costs one attribute check.

    request allowed by its route -> exchange.prepare(scope, body, grant) -> Forwarding
                                    (or a Refusal)      the forwarder sends `body` and, with
                                                        `rewrite`, buffers the answer and
                                                        rewrites it before the client sees it
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.errors import InvalidRequest
from gateway.scopes import Requirement
from gateway.types import Headers, Receive, Scope

if TYPE_CHECKING:
    from gateway.decision import Grant

# the response, as (status, headers without hop-by-hop ones, whole body, the most bytes it may hold
# once decoded), to what the client gets
Rewrite = Callable[[int, Headers, bytes, int], tuple[int, Headers, bytes]]


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


@dataclass(slots=True)
class Forwarding:
    """What a route's exchange decided for one allowed request."""

    body: bytes | None = None  # the request body to send instead of the client's; None: the client's, streamed
    # None: the answer streams unchanged; else it is buffered, up to `proxy.max_rewritten_response`
    # bytes (a longer answer is a 502), and rewritten
    rewrite: Rewrite | None = None
    query: bytes | None = None  # the query string to send instead of the client's; None: the client's
    # the upstream is asked for the whole answer (Range and If-Range are not forwarded), as it
    # always is with `rewrite`
    whole: bool = False


class Exchange(Protocol):
    """A route's work between the decision and the forwarder."""

    # read-only members: a frozen dataclass's fields satisfy them
    @property
    def body_limit(self) -> int | None:
        """Request bytes read whole before `prepare`, at most; None: `prepare` gets no body and
        the client's streams to the upstream."""
        ...

    @property
    def requirements(self) -> Mapping[str, Requirement]:
        """What it checks below the route (a response member, a GraphQL field) -> its requirement."""
        ...

    async def prepare(self, scope: Scope, body: bytes | None, grant: Grant | None) -> Forwarding:
        """How to forward this request.

        :raises Refusal: to answer the request instead of forwarding it.
        """
        ...


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused past `limit` bytes.

    :raises InvalidRequest: the body is longer than `limit`.
    :raises ClientDisconnected: the client went away first.
    """
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected before its request body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(f"the request body is larger than {limit} bytes, the most this route reads")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
