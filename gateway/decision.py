"""The decision: pure functions of (compiled tables, request line, verified token).

`route()` canonicalises the path and finds the route (400 / 404); `authorize()` works out the
caller's effective scopes and checks the route's requirement (403). Neither touches sockets, so
the CLI's `explain` and the tests call exactly what the gateway runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.routing import Tables
from gateway.errors import Forbidden, NotFound
from gateway.paths import CanonicalPath, canonicalise
from gateway.tables import Route
from gateway.scopes import Access
from gateway.tokens import VerifiedToken


# per-request values are not frozen: a frozen dataclass's __init__ costs four times as much
@dataclass(slots=True)
class RouteMatch:
    route: Route
    path: CanonicalPath
    # what goes on the upstream's request line: its base path, the raw path after the prefix, the query
    upstream_target: bytes

    @property
    def params(self) -> dict[str, str]:
        """The template's `{name}` values, decoded (only explanations need them)."""
        return self.route.bind(self.path.segments)


@dataclass(slots=True)
class Grant:
    """An allowed request: who is calling and with which effective scopes."""

    subject: str | None
    client: str | None
    scopes: frozenset[str]


def route(tables: Tables, method: str, raw_path: bytes, query_string: bytes = b"") -> RouteMatch:
    """Find the route for a request line.

    :raises InvalidRequest: the path is ambiguous.
    :raises NotFound: no route for this method and path (deny by default).
    """
    path = canonicalise(raw_path)
    matched = tables.trie.match(method, path.segments)
    if matched is None:
        raise NotFound(f"no route for {method} {raw_path.decode('ascii', 'backslashreplace')}")
    target = matched.api.upstream.base_path + path.raw_tail(len(matched.api.prefix))
    if query_string:
        target += b"?" + query_string
    return RouteMatch(matched, path, target)


def authorize(match: RouteMatch, token: VerifiedToken) -> Grant:
    """Check a verified token against the matched route's requirement.

    :raises Forbidden: the token's effective scopes do not meet the requirement.
    """
    effective = match.route.api.catalog.effective(token.scopes)
    requirement = match.route.requirement
    if not requirement.met_by(effective):
        held = " ".join(sorted(effective)) or "no scopes"
        raise Forbidden(
            f"{match.route.method} {match.route.template} requires {requirement.describe()}; the token grants {held}",
            scope=requirement.first_alternative(),
            required=[sorted(alternative) for alternative in requirement.alternatives],
        )
    return Grant(token.subject, token.client, effective)


def is_public(match: RouteMatch) -> bool:
    return match.route.requirement.access is Access.PUBLIC
