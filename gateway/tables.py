"""The compiled route tables' values: where an API's requests go, and each route of it. Frozen,
built by the loader, shared by every request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.catalog import Catalog
from gateway.claims import ClaimCondition
from gateway.scopes import Requirement
from gateway.types import Origin

if TYPE_CHECKING:
    from gateway.exchange import Exchange


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
    source: str  # file:line of the identifier


@dataclass(frozen=True, slots=True)
class Api:
    """One route table: an upstream API behind a path prefix."""

    name: str
    upstream: Upstream
    prefix: tuple[str, ...]
    catalog: Catalog
    source: str  # the table's file
    resource: ProtectedResource | None = None  # None: the table publishes no RFC 9728 metadata
    issuers: frozenset[str] | None = None  # the issuers whose tokens its routes accept; None: all


@dataclass(frozen=True, slots=True)
class Route:
    api: Api
    method: str
    template: str
    requirement: Requirement
    # (name, index into the full path's segments) for each `{name}`
    params: tuple[tuple[str, int], ...]
    source: str  # file:line
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
