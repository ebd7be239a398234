"""What a request uses, as one object a reload can replace whole (`Gateway.swap`): the config,
its key store, the authenticator and the forwarder. The app reads it once per request, so a swap
never changes the config under a request in flight.

A reload builds the next runtime with `successor`, which keeps every part whose settings did not
change: editing a table keeps the verified-token cache, the grant views and the upstream
connections; changing a key source or the token rules starts them afresh.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.authentication import Authenticator, key_stores
from gateway.grants.live import LiveGrants, open_store
from gateway.keys import IssuerKeys, KeyStore
from gateway.pool import PooledUpstream
from gateway.proxy import Forwarder
from gateway.settings import Config, Issuers, LimitSettings, ProxySettings
from gateway.tables import Tables
from gateway.types import UNCOUNTED, Metrics
from gateway.upstream import HttpxUpstream, UpstreamClient


def upstream_client(settings: ProxySettings) -> UpstreamClient:
    if settings.client == "httpx":
        return HttpxUpstream(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
    return PooledUpstream(
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
        total_timeout=settings.total_timeout, max_connections=settings.max_connections,
        idle_timeout=settings.idle_timeout, ca_file=str(settings.ca_file) if settings.ca_file else None,
    )


def _same_keys(old: Issuers, new: Issuers) -> bool:
    def sources(issuers: Issuers) -> list[tuple[object, ...]]:
        return [(entry.static_keys, entry.jwks_url, entry.algorithms, entry.jwks_refetch_interval, entry.jwks_max_age) for entry in issuers.entries]
    return sources(old) == sources(new)


def _same_client(old: ProxySettings, new: ProxySettings) -> bool:
    # a CA file is read again on every reload: the same path may hold a rotated bundle
    fields = ("client", "connect_timeout", "read_timeout", "total_timeout", "max_connections", "idle_timeout", "ca_file")
    return new.ca_file is None and all(getattr(old, name) == getattr(new, name) for name in fields)


# weakref_slot: a reload closes what only the old runtime used once no request holds it any more
@dataclass(frozen=True, slots=True, weakref_slot=True)
class Runtime:
    config: Config
    keys: IssuerKeys  # one key store per issuer entry
    authenticator: Authenticator
    upstream: UpstreamClient
    forwarder: Forwarder
    # what every request reads of the config, one attribute away
    tables: Tables
    limits: LimitSettings
    grant_type_claim: str
    grants: LiveGrants | None  # the grant store's views; None: no store configured
    metrics: Metrics  # where the parts it makes count (JWKS fetches, grant-store errors)

    @classmethod
    def build(
        cls, config: Config, *, upstream: UpstreamClient | None = None, keys: KeyStore | IssuerKeys | None = None,
        authenticator: Authenticator | None = None, grants: LiveGrants | None = None, metrics: Metrics | None = None,
    ) -> Runtime:
        """The runtime of `config`; each part given replaces the one it would make (a reload's
        kept parts, or a test's: a `KeyStore` stands for the first issuer's keys). The parts it
        makes count into `metrics` (None: not counted)."""
        tokens = config.tokens
        metrics = UNCOUNTED if metrics is None else metrics
        if not isinstance(keys, IssuerKeys):
            keys = key_stores(config.identity, keys, metrics)
        upstream = upstream or upstream_client(config.proxy)
        if grants is None and config.grants.store is not None:
            grants = LiveGrants(open_store(config.grants.store), config.grants.refresh, metrics=metrics)
        return cls(
            config, keys, authenticator or Authenticator(config.identity, keys), upstream, Forwarder(upstream, config.proxy),
            config.tables, config.limits, tokens.grant_type_claim, grants, metrics,
        )

    def successor(self, config: Config) -> Runtime:
        """The runtime of a reloaded `config`, sharing each part of this one whose settings are
        the same (see the module's docstring)."""
        old = self.config
        keys = self.keys if _same_keys(old.identity, config.identity) else None
        # the cache holds what the old keys and claim rules accepted: kept only if both are the same
        authenticator = self.authenticator if keys is not None and old.identity == config.identity else None
        upstream = self.upstream if _same_client(old.proxy, config.proxy) else None
        grants = self.grants if old.grants == config.grants else None
        return Runtime.build(config, upstream=upstream, keys=keys, authenticator=authenticator, grants=grants, metrics=self.metrics)

    @property
    def parts(self) -> tuple[Any, ...]:
        """What it holds open: its upstream client, key store and grant views."""
        return (self.upstream, self.keys) if self.grants is None else (self.upstream, self.keys, self.grants)

    async def start(self, previous: Runtime | None = None) -> None:
        """Make it ready to serve: the JWKS fetched, the upstream client's CA bundle loaded, the
        grant store's version read and polled (a store that does not answer is not fatal: the
        requests that need it get 503 until it does). Parts shared with `previous` already are.

        :raises Exception: whatever keeps it from serving; the app reports it as a failed start.
        """
        started = () if previous is None else previous.parts
        for part in self.parts:
            if not _among(part, started):
                await part.start()

    async def aclose(self, keep: Iterable[Any] = ()) -> None:
        """Close its parts, except those in `keep` (still used by another runtime)."""
        kept = tuple(keep)
        for part in self.parts:
            if not _among(part, kept):
                await part.aclose()


def _among(part: Any, parts: tuple[Any, ...]) -> bool:
    return any(part is other for other in parts)
