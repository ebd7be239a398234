"""Authentication: a request's credentials to a verified token, with the cache. One step, used
by the app, by `gateway explain` and by whatever else decides on requests (a decision API)."""

from __future__ import annotations

from gateway.credentials import bearer_token, presented
from gateway.introspection import Introspector
from gateway.keys import IssuerKeys, KeyStore
from gateway.settings import Issuers, TokenSettings
from gateway.tokens import TokenVerifier, VerifiedToken, is_jwt
from gateway.types import UNCOUNTED, Metrics


def key_stores(issuers: Issuers, first: KeyStore | None = None, metrics: Metrics = UNCOUNTED) -> IssuerKeys:
    """A key store per issuer entry, counting its JWKS fetches into `metrics`; `first`, when
    given, stands for the first entry's (a test's or the harness's throwaway keys)."""
    return IssuerKeys(
        first if first is not None and index == 0 else KeyStore(
            entry.static_keys, entry.jwks_url, algorithms=entry.algorithms,
            refetch_interval=entry.jwks_refetch_interval, max_age=entry.jwks_max_age, metrics=metrics,
        )
        for index, entry in enumerate(issuers.entries)
    )


class Authenticator:
    """Finds a request's one bearer token and verifies it (RFC 6750 2.1: the Authorization
    header only), remembering verified tokens until their `exp`: a JWT with its issuer's keys, any
    other token at the `opaque` issuer's introspection endpoint, when one is configured."""

    __slots__ = ("introspector", "verifier")

    def __init__(self, settings: TokenSettings | Issuers, keys: KeyStore | IssuerKeys) -> None:
        self.verifier = TokenVerifier(settings, keys)
        issuers = self.verifier.issuers
        opaque = issuers.opaque_entry()
        self.introspector = None if opaque is None else Introspector(opaque, cache_size=issuers.cache_size)

    def recall(self, authorization: list[bytes], query: bytes) -> VerifiedToken | None:
        """The token of a request that presents exactly what an earlier one did, if still valid:
        no parsing and no await, which is what nearly every request needs."""
        credential = presented(authorization, query)
        return None if credential is None else self.verifier.recall(credential)

    async def authenticate(self, authorization: list[bytes], query: bytes) -> VerifiedToken:
        """The request's verified token.

        :param authorization: every Authorization header value the request carried.
        :param query: the raw query string, which must not carry a token.
        :raises Unauthorized: no bearer credentials.
        :raises CredentialsInvalidRequest: several credentials, or a token outside the header.
        :raises InvalidToken: the token is malformed or fails verification.
        :raises TemporarilyUnavailable: an opaque token's introspection endpoint cannot answer.
        """
        token = bearer_token(authorization, query)
        if self.introspector is not None and not is_jwt(token):
            # remembered by the introspector under a hash of the token, never under the token
            return await self.introspector.introspect(token)
        return await self.verifier.verify(token, key=presented(authorization, query))
