"""The gateway's settings as frozen values, each with its default in one place (docs/configuration.md
documents the same defaults). Built by `gateway.loading`; read by every step without
importing a loader."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    store: str | None = None  # sqlite:////abs/path, sqlite:///relative/to/gateway.yaml, redis://...; None: no store
    refresh: float = 1.0  # seconds a process may serve a stale view
    base: Path = Path(".")  # the folder a relative sqlite path is taken from (gateway.yaml's)


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
    tokens: TokenSettings = field(default_factory=TokenSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    grants: GrantSettings = field(default_factory=GrantSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    decision: DecisionSettings = field(default_factory=DecisionSettings)
    files: tuple[Path, ...] = ()  # every file and folder it was read from (a reload watches them)
    warnings: tuple[str, ...] = ()  # `file:line: warning: ...` of gateway.yaml (a key left out); the tables' are linted
