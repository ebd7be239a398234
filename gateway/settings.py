"""The gateway's settings as frozen values, each with its default in one place (docs/configuration.md
documents the same defaults). Built by `gateway.loading`; read by every step without
importing a loader."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.grants.urls import StoreAddress
from gateway.tables import Tables

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
UPSTREAM_CLIENTS = ("pool", "httpx")
UNDERSCORE_HEADERS = ("drop", "refuse", "pass")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key tokens are verified with, as configured or as a JWKS served it (`gateway.keys` reads them)."""

    kid: str | None
    algorithms: frozenset[str]  # the token `alg` values this key may verify
    key: Any  # a cryptography public key, or the HMAC secret as bytes
    origin: str


@dataclass(frozen=True, slots=True)
class TokenSettings:
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwks_url: str | None = None
    static_keys: tuple[VerificationKey, ...] = ()
    leeway: float = 0.0
    scope_claims: tuple[str, ...] = ("scope", "scp")
    jwks_refetch_interval: float = 30.0
    jwks_max_age: float = 600.0
    cache_size: int = 10_000
    grant_type_claim: str = "gty"  # the claim naming the token's grant type (Auth0's; see docs/route-tables.md)
    introspection: IntrospectionSettings | None = None  # RFC 7662, for opaque tokens (see Issuers.opaque)


@dataclass(frozen=True, slots=True)
class IntrospectionSettings:
    url: str
    client_id: str
    client_secret: str = field(repr=False)  # read from client_secret_file; never shown
    cache: float = 60.0  # seconds an answer may be reused (never past the token's exp)


@dataclass(frozen=True, slots=True)
class Issuers:
    """Every authorization server whose tokens count: one `TokenSettings` each (the single form of
    `tokens:` is a one-entry list). A token's unverified `iss` picks its entry."""

    entries: tuple[TokenSettings, ...] = (TokenSettings(),)
    opaque: str | None = None  # the issuer that introspects tokens that are not JWTs; None: none are
    cache_size: int = 10_000  # verified tokens remembered, all issuers together

    def opaque_entry(self) -> TokenSettings | None:
        """The entry that introspects opaque tokens (in the single form, its one entry, when it
        has `introspection`)."""
        for entry in self.entries:
            if entry.introspection is not None and (self.opaque is None or entry.issuer == self.opaque):
                return entry
        return None


@dataclass(frozen=True, slots=True)
class ProxySettings:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    total_timeout: float = 0.0  # 0: no limit on the whole exchange
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    client: str = "pool"  # "pool" (asyncio protocols + httptools, the default) or "httpx" (mockable with respx)
    max_connections: int = 1024  # per upstream (Envoy's default); requests past it wait in line
    idle_timeout: float = 30.0
    ca_file: Path | None = None
    underscore_headers: str = "drop"  # request header names with '_': drop (nginx's default), refuse (400) or pass
    # answer bytes buffered for a rewrite (response_fields, GraphQL filter mode); a longer one is a 502
    max_rewritten_response: int = 1 << 20


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_uri: int = 8192  # bytes of request target (nginx's and Apache's default) -> 414
    max_headers: int = 100  # request header fields (Envoy's default) -> 431


@dataclass(frozen=True, slots=True)
class GrantSettings:
    store: StoreAddress | None = None  # parsed from sqlite:////abs/path, sqlite:///relative/to/gateway.yaml, redis://...; None: no store
    refresh: float = 1.0  # seconds a process may serve a stale view


@dataclass(frozen=True, slots=True)
class AdminSettings:
    listen: tuple[str, int] | None = None  # (host, port) of the admin listener; None: off
    token_file: Path | None = None  # holds the bearer token every admin path but health needs
    metrics: bool = True  # with `listen` set: serving processes count, and /metrics shows it


# peers whose X-Original-* / X-Forwarded-* a decision listener believes, unless the config names others
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
MODES = ("proxy", "decision")


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    # the front proxies allowed to ask (their original method and target are believed); others get 400
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = LOOPBACK


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    tables: Tables
    tokens: TokenSettings = field(default_factory=TokenSettings)  # the first issuer's (`token mint`'s default)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    grants: GrantSettings = field(default_factory=GrantSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    decision: DecisionSettings = field(default_factory=DecisionSettings)
    files: tuple[Path, ...] = ()  # every file and folder it was read from (a reload watches them)
    warnings: tuple[str, ...] = ()  # `file:line: warning: ...` of gateway.yaml (a key left out); the tables' are linted
    issuers: Issuers | None = None  # every issuer; None: `tokens` alone

    def __post_init__(self) -> None:
        if self.issuers is None:
            object.__setattr__(self, "issuers", Issuers((self.tokens,), cache_size=self.tokens.cache_size))

    @property
    def identity(self) -> Issuers:
        assert self.issuers is not None  # set by __post_init__
        return self.issuers
