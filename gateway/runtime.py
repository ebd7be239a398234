"""What a request uses, as one object a reload can replace whole (`Gateway.swap`): the config,
its key store, the authenticator and the forwarder. The app reads it once per request, so a swap
never changes the config under a request in flight."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.authentication import Authenticator
from gateway.grants.live import LiveGrants, open_store
from gateway.keys import KeyStore
from gateway.pool import PooledUpstream
from gateway.proxy import Forwarder
from gateway.routing import Tables
from gateway.settings import Config, LimitSettings, ProxySettings
from gateway.upstream import HttpxUpstream, UpstreamClient


def upstream_client(settings: ProxySettings) -> UpstreamClient:
    if settings.client == "httpx":
        return HttpxUpstream(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
    return PooledUpstream(
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
        total_timeout=settings.total_timeout, max_connections=settings.max_connections,
        idle_timeout=settings.idle_timeout, ca_file=str(settings.ca_file) if settings.ca_file else None,
    )


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    keys: KeyStore
    authenticator: Authenticator
    upstream: UpstreamClient
    forwarder: Forwarder
    # what every request reads of the config, one attribute away
    tables: Tables
    limits: LimitSettings
    grant_type_claim: str
    grants: LiveGrants | None  # the grant store's views; None: no store configured

    @classmethod
    def build(cls, config: Config, *, upstream: UpstreamClient | None = None, keys: KeyStore | None = None) -> Runtime:
        """The runtime of `config`; `upstream` and `keys` replace the ones it would make (tests)."""
        tokens = config.tokens
        keys = keys or KeyStore(
            tokens.static_keys, tokens.jwks_url,
            refetch_interval=tokens.jwks_refetch_interval, max_age=tokens.jwks_max_age,
        )
        upstream = upstream or upstream_client(config.proxy)
        grants = None
        if config.grants.store is not None:
            grants = LiveGrants(open_store(config.grants.store, config.grants.base), config.grants.refresh)
        return cls(
            config, keys, Authenticator(tokens, keys), upstream, Forwarder(upstream, config.proxy),
            config.tables, config.limits, tokens.grant_type_claim, grants,
        )

    async def start(self) -> None:
        """Make it ready to serve: the JWKS fetched, the upstream client's CA bundle loaded, the
        grant store's version read and polled (a store that does not answer is not fatal: the
        requests that need it get 503 until it does).

        :raises Exception: whatever keeps it from serving; the app reports it as a failed start.
        """
        await self.upstream.start()
        await self.keys.start()
        if self.grants is not None:
            await self.grants.start()

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.keys.aclose()
        if self.grants is not None:
            await self.grants.aclose()
