"""RFC 7662 token introspection, for bearer tokens that are not JWTs: the `opaque` issuer's
endpoint says whether a token is active and what it holds; its answer's members then count as a
JWT's claims do.

An endpoint that cannot answer is never read as "inactive" or "active": the request gets 503
(`TemporarilyUnavailable`), and nothing is cached. Answers are cached under a SHA-256 of the
token (never the token), at most the entry's `cache` seconds and never past the token's `exp`.
The token and the client secret are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import httpx

from gateway.errors import InvalidToken, TemporarilyUnavailable
from gateway.keys import read_bounded
from gateway.settings import IntrospectionSettings, TokenSettings
from gateway.tokens import (
    VerifiedToken,
    check_claims,
    header_safe,
    number,
    scopes_from_claims,
)

logger = logging.getLogger("gateway.introspection")

TIMEOUT = 5.0  # seconds for the whole exchange: connect, answer and body
MAX_ANSWER_BYTES = 64 * 1024
RETRY_AFTER = 5  # seconds a client is told to wait when the endpoint cannot answer


class Unanswered(Exception):
    """The endpoint gave no usable answer (the reason, in words, holds neither token nor secret)."""


class Introspector:
    """Introspects opaque tokens at one issuer's endpoint, remembering answers (bounded, LRU).

    :param clock: the time answers are cached by (a test's fake clock); `exp` is judged by it too.
    """

    def __init__(self, settings: TokenSettings, *, cache_size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        assert settings.introspection is not None
        self.settings = settings
        self.endpoint: IntrospectionSettings = settings.introspection
        self.cache_size = cache_size
        self.clock = clock
        self._cache: OrderedDict[bytes, VerifiedToken] = OrderedDict()
        # RFC 6749 2.3.1: client_secret_basic form-encodes id and secret before Basic does
        self._auth = httpx.BasicAuth(quote_plus(self.endpoint.client_id), quote_plus(self.endpoint.client_secret))

    async def introspect(self, token: str) -> VerifiedToken:
        """The verified token the endpoint vouches for.

        :raises InvalidToken: not active, or its claims fail the entry's rules (401).
        :raises TemporarilyUnavailable: the endpoint cannot answer (503; not cached).
        """
        key = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None:
            if cached.expires_at > now:
                self._cache.move_to_end(key)
                return VerifiedToken(cached.scopes, cached.subject, cached.client, cached.expires_at, cached.payload, True, cached.issuer,
                                     cached.grant_type_claim)
            del self._cache[key]
        try:
            answer = await self._ask(token)
        except Unanswered as reason:
            logger.warning("introspection at %s failed: %s", self.endpoint.url, reason)
            raise TemporarilyUnavailable(
                f"the token cannot be checked right now (its issuer's introspection endpoint did not answer); retry in {RETRY_AFTER} s",
                retry_after=RETRY_AFTER,
            ) from None
        verified = self._verified(answer, now)
        if self.endpoint.cache > 0 and self.cache_size:
            # never past exp: the answer was true until then at most
            until = min(verified.expires_at, now + self.endpoint.cache)
            self._cache[key] = VerifiedToken(verified.scopes, verified.subject, verified.client, until, verified.payload, False,
                                             verified.issuer, verified.grant_type_claim)
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return verified

    def _verified(self, answer: dict[str, Any], now: float) -> VerifiedToken:
        if answer["active"] is not True:
            raise InvalidToken("token is not active (its issuer's introspection endpoint says so: revoked, expired or unknown)")
        claims = {name: value for name, value in answer.items() if name != "active"}
        issuer = self.settings.issuer
        if issuer is not None:
            claims.setdefault("iss", issuer)  # absent: the introspecting issuer vouches for its own tokens
        token_type = claims.get("token_type")
        if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
            raise InvalidToken(f"token is not a bearer access token (introspection says token_type {str(token_type)[:40]!r})")
        check_claims(claims, self.settings, exp_required=False, now=now)
        expires = number(claims, "exp")
        return VerifiedToken(
            scopes=scopes_from_claims(claims, self.settings.scope_claims),
            subject=header_safe(claims.get("sub"), "sub"),
            client=header_safe(claims.get("client_id"), "client_id"),
            expires_at=float("inf") if expires is None else expires,
            payload=json.dumps(claims).encode(),
            issuer=issuer,
            grant_type_claim=self.settings.grant_type_claim,
        )

    async def _ask(self, token: str) -> dict[str, Any]:
        """The endpoint's answer: a JSON object with a boolean `active`.

        :raises Unanswered: no such answer within `TIMEOUT`.
        """
        try:
            # httpx's timeout bounds each read, not the whole: a drip-fed answer would hold the request
            async with asyncio.timeout(TIMEOUT):
                body = await self._post(token)
        except TimeoutError:
            raise Unanswered(f"no complete answer within {TIMEOUT:g} s") from None
        except httpx.HTTPError as exc:
            raise Unanswered(f"{type(exc).__name__}: {exc}") from None
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            raise Unanswered("the answer is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise Unanswered("the answer is not a JSON object with a boolean 'active'")
        return answer

    async def _post(self, token: str) -> bytes:
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        data = {"token": token, "token_type_hint": "access_token"}
        async with (
            httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client,
            client.stream("POST", self.endpoint.url, data=data, headers=headers, auth=self._auth) as response,
        ):
            try:
                return await read_bounded(response, MAX_ANSWER_BYTES, "64 KiB")
            except ValueError as exc:
                raise Unanswered(str(exc)) from None
