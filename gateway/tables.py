"""The compiled route tables' values: where an API's requests go, each route of it, what a route
may do between the decision and the forwarder (its `Exchange`), and every route compiled into a
segment trie. Frozen, built by the loader, shared by every request.

The trie's lookup cost follows the path's depth, never the number of routes. At each segment a
literal child is tried before the parameter child, so the most specific template wins whatever
order the tables were written in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.catalog import Catalog
from gateway.claims import ClaimCondition
from gateway.scopes import Access, Allowed, Requirement
from gateway.types import Headers, Origin, Position, Scope

# the response, as (status, headers without hop-by-hop ones, whole body, the most bytes it may hold
# once decoded), to what the client gets
Rewrite = Callable[[int, Headers, bytes, int], tuple[int, Headers, bytes]]


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
    """A route's work between the decision and the forwarder (GraphQL operations, response
    fields): it may read the request body (refuse it, or rewrite it) and rewrite the response.

        request allowed by its route -> exchange.prepare(scope, body, allowed) -> Forwarding
                                        (or `Unmet`, judged by the decision;  the forwarder sends
                                        or another Refusal)                   `body` and, with
                                                                              `rewrite`, rewrites
                                                                              the answer
    """

    # read-only members: a frozen dataclass's fields satisfy them
    @property
    def option(self) -> str:
        """What the option is called in a table (`graphql`, `response_fields`): for messages."""
        ...

    @property
    def body_limit(self) -> int | None:
        """Request bytes read whole before `prepare`, at most; None: `prepare` gets no body and
        the client's streams to the upstream."""
        ...

    @property
    def requirements(self) -> Mapping[str, Requirement]:
        """What it checks below the route (a response member, a GraphQL field) -> its requirement."""
        ...

    @property
    def graphql(self) -> bool:
        """Its refusals are answered as GraphQL responses (with `errors`), whichever step refused."""
        ...

    async def prepare(self, scope: Scope, body: bytes | None, allowed: Allowed | None) -> Forwarding:
        """How to forward this request (`allowed` None: a public route, called without a token).

        :raises Unmet: requirements it found below the route that `allowed` does not meet.
        :raises Refusal: to answer the request instead of forwarding it.
        """
        ...

    async def describe(self, scope: Scope, body: bytes | None, allowed: Allowed | None) -> list[str]:
        """What it checks of this request and what it makes of it, in words (`gateway explain`)."""
        ...


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where an API's allowed requests go, split once at load time."""

    url: str
    origin: Origin
    base_path: bytes  # without trailing '/', prepended to the forwarded path
    authority: bytes  # the Host header the upstream gets

    @classmethod
    def build(cls, url: str, scheme: str, host: str, port: int, base_path: bytes) -> Upstream:
        shown = f"[{host}]" if ":" in host else host
        if port != (443 if scheme == "https" else 80):
            shown = f"{shown}:{port}"
        return cls(url=url, origin=Origin(scheme, host, port), base_path=base_path, authority=shown.encode("ascii"))


@dataclass(frozen=True, slots=True)
class ProtectedResource:
    """A table's `resource:` block: its RFC 9728 metadata, worked out once at load time."""

    identifier: str  # the resource identifier, as written: the document's `resource`
    metadata_url: str  # on the identifier's origin: what every 401 of the table names
    metadata_path: bytes  # where the proxy port serves the document
    document: bytes  # the JSON document itself
    source: Position  # of the identifier


@dataclass(frozen=True, slots=True)
class Api:
    """One route table: an upstream API behind a path prefix."""

    name: str
    upstream: Upstream
    prefix: tuple[str, ...]
    catalog: Catalog
    source: Position  # the table's file, at its `routes:` key
    resource: ProtectedResource | None = None  # None: the table publishes no RFC 9728 metadata
    issuers: frozenset[str] | None = None  # the issuers whose tokens its routes accept; None: all
    # where the table says `mode: shadow` (None: it enforces): it decides as usual, and forwards
    # what it would refuse (docs/route-tables.md)
    shadow: Position | None = None


@dataclass(frozen=True, slots=True)
class Route:
    api: Api
    method: str
    template: str
    requirement: Requirement
    # (name, index into the full path's segments) for each `{name}`
    params: tuple[tuple[str, int], ...]
    source: Position
    # the full path's segments as the trie holds them (prefix included), None for each `{name}`
    shape: tuple[str | None, ...] = ()
    # the path parameter naming the user the route acts on (`user:`); None: no user
    user: str | None = None
    hide: bool = False  # refused callers get 404, as if the route did not exist
    claims: tuple[ClaimCondition, ...] = ()  # `claims:`: unmet, the caller gets 404
    # what the route does between the decision and the forwarder (GraphQL, response fields); None: nothing
    exchange: Exchange | None = None
    # no user binding, claim condition, path parameter in the requirement or issuer allow-list: the decision's shortcut applies
    plain: bool = True
    # a decision here may need the grant store (its catalog has live scopes, or it acts on a user)
    live: bool = False

    def bind(self, segments: tuple[str, ...]) -> dict[str, str]:
        return {name: segments[index] for name, index in self.params}


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    routes: dict[str, Route] = field(default_factory=dict)


def _route_at(node: _Node, method: str) -> Route | None:
    route = node.routes.get(method)
    if route is None and method == "HEAD":
        route = node.routes.get("GET")
    return route


class RouteTrie:
    """All routes of all tables, keyed by full path (prefix included). Built once, never edited."""

    __slots__ = ("_root", "count")

    def __init__(self, entries: Iterable[tuple[tuple[str | None, ...], Route]]) -> None:
        self._root = _Node()
        self.count = 0
        for shape, route in entries:
            node = self._root
            for segment in shape:
                if segment is None:
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.literals.setdefault(segment, _Node())
            if route.method in node.routes:
                raise ValueError(f"duplicate of {node.routes[route.method].source}")
            node.routes[route.method] = route
            self.count += 1

    def match(self, method: str, segments: tuple[str, ...]) -> Route | None:
        """The most specific route for `method` and decoded `segments`, or None."""
        # the walk's first descent (a literal child where there is one), without recursion: it
        # is the answer whenever it ends on a route, which is nearly always
        node = self._root
        for segment in segments:
            child = node.literals.get(segment)
            node = child if child is not None else node.param  # type: ignore[assignment]  # None only until the check below breaks out
            if node is None:
                break
        else:
            route = _route_at(node, method)
            if route is not None:
                return route
        return self._walk(self._root, method, segments, 0)

    def _walk(self, node: _Node, method: str, segments: tuple[str, ...], depth: int) -> Route | None:
        if depth == len(segments):
            return _route_at(node, method)
        child = node.literals.get(segments[depth])
        if child is not None:
            route = self._walk(child, method, segments, depth + 1)
            if route is not None:
                return route
        if node.param is not None:
            return self._walk(node.param, method, segments, depth + 1)
        return None

    def candidates(self, segments: tuple[str, ...]) -> tuple[Route, ...]:
        """Every route whose template matches `segments`, whatever its method, most specific
        first (the order `match` tries them in). For explanations: `match` does not use it."""
        found: list[Route] = []

        def walk(node: _Node, depth: int) -> None:
            if depth == len(segments):
                found.extend(node.routes.values())
                return
            child = node.literals.get(segments[depth])
            if child is not None:
                walk(child, depth + 1)
            if node.param is not None:
                walk(node.param, depth + 1)

        walk(self._root, 0)
        return tuple(found)

    def overtaking(self, route: Route) -> Iterator[Route]:
        """The routes of `route`'s method that may take some of its paths: at the first segment
        where the two templates differ, theirs is a literal and `route`'s a parameter. For
        `gateway check`'s warnings: `match` does not use it."""
        return self._overtaking(self._root, route, 0, False)

    def _overtaking(self, node: _Node, route: Route, depth: int, won: bool) -> Iterator[Route]:
        shape = route.shape
        if depth == len(shape):
            other = node.routes.get(route.method)
            if won and other is not None:
                yield other
            return
        segment = shape[depth]
        if segment is None:
            if node.param is not None:
                yield from self._overtaking(node.param, route, depth + 1, won)
            for child in node.literals.values():
                yield from self._overtaking(child, route, depth + 1, True)
        else:
            if segment in node.literals:
                yield from self._overtaking(node.literals[segment], route, depth + 1, won)
            if won and node.param is not None:
                yield from self._overtaking(node.param, route, depth + 1, True)


@dataclass(frozen=True)
class Tables:
    """Every route of every table, compiled. Swapped whole, never edited."""

    apis: tuple[Api, ...]
    trie: RouteTrie
    routes: tuple[Route, ...]
    # the RFC 9728 documents the tables publish, by raw request path; read only when no route matched
    documents: Mapping[bytes, bytes] = field(default_factory=dict)
    # each table's prefix -> the table; None where several tables share it
    _prefixes: dict[tuple[str, ...], Api | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prefixes: dict[tuple[str, ...], Api | None] = {}
        for api in self.apis:
            prefixes[api.prefix] = None if api.prefix in prefixes else api
        object.__setattr__(self, "_prefixes", prefixes)

    def owner(self, segments: tuple[str, ...]) -> Api | None:
        """The table whose prefix is the longest one `segments` start with; None: outside every
        table's prefix, or under a prefix several tables share (then no one table owns the path).
        Only a request no route matches asks it."""
        prefixes = self._prefixes
        for length in range(len(segments), -1, -1):
            if segments[:length] in prefixes:
                return prefixes[segments[:length]]
        return None

    def candidates(self, segments: tuple[str, ...]) -> tuple[Route, ...]:
        """Every route whose template matches `segments`, any method, most specific first."""
        return self.trie.candidates(segments)

    def needs_tokens(self) -> bool:
        return any(route.requirement.access is not Access.PUBLIC for route in self.routes)
