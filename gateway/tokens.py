"""Token verification: a bearer JWT checked against configured keys and claims, then cached.

The algorithm list comes from the config, never from the token; the token's header only picks
among keys that may verify that algorithm. Every pyjwt error becomes `InvalidToken` here, in
one place, with a description a client developer can act on.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import jwt

from gateway.config import TokenSettings
from gateway.errors import InvalidToken
from gateway.keys import KeyStore
from gateway.scopes import SCOPE_TOKEN


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: Mapping[str, Any]
    scopes: frozenset[str]
    subject: str | None
    client: str | None
    expires_at: float


def _when(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp), timezone.utc).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError):
        return repr(timestamp)


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to pick a key: pyjwt parses and checks the whole token again.
    (pyjwt's get_unverified_header decodes the payload too, which a first-seen token pays twice.)"""
    segment, dot, _ = token.partition(".")
    if not dot:
        raise InvalidToken("malformed token: not a compact JWS (header.payload.signature)")
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidToken("malformed token: the header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed token: the header is not a JSON object")
    return header


def _header_safe(value: Any, claim: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidToken(f"claim {claim!r} must be a string")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidToken(f"claim {claim!r} holds control characters")
    return value


def scopes_from_claims(claims: Mapping[str, Any], claim_names: tuple[str, ...]) -> frozenset[str]:
    """The granted scopes: each named claim as a space-separated string or a list of strings.

    :raises InvalidToken: a scope claim of another type, or a scope that is not a scope-token.
    """
    scopes: set[str] = set()
    for name in claim_names:
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            items = value.split()
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = value
        else:
            raise InvalidToken(f"claim {name!r} must be a space-separated string or a list of strings")
        for item in items:
            if not SCOPE_TOKEN.fullmatch(item):
                raise InvalidToken(f"claim {name!r} holds {item!r}, which is not a valid scope")
        scopes.update(items)
    return frozenset(scopes)


class TokenVerifier:
    """Verifies bearer JWTs; remembers verified ones until their `exp` (bounded, LRU)."""

    def __init__(self, settings: TokenSettings, keys: KeyStore) -> None:
        self.settings = settings
        self.keys = keys
        self._cache: OrderedDict[str, tuple[VerifiedToken, int]] = OrderedDict()
        self._options = {
            "require": ["exp"],
            "verify_aud": bool(settings.audience),
            "verify_iss": settings.issuer is not None,
        }

    async def verify(self, token: str) -> VerifiedToken:
        """:raises InvalidToken: with the reason, in words."""
        cached = self._cache.get(token)
        if cached is not None:
            verified, generation = cached
            if generation == self.keys.generation and verified.expires_at > time.time():
                self._cache.move_to_end(token)
                return verified
            del self._cache[token]
        verified = await self._verify(token)
        if self.settings.cache_size:
            self._cache[token] = (verified, self.keys.generation)
            if len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        return verified

    async def _verify(self, token: str) -> VerifiedToken:
        header = _unverified_header(token)
        algorithm = header.get("alg")
        if algorithm not in self.settings.algorithms:
            raise InvalidToken(f"algorithm {algorithm!r} is not accepted (accepted: {', '.join(self.settings.algorithms)})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("header 'kid' must be a string")
        candidates = await self.keys.candidates(kid, algorithm)
        if not candidates:
            if self.keys.last_error and not self.keys.keys.keys:
                raise InvalidToken("no signing keys are available to verify tokens right now")
            if kid is not None:
                raise InvalidToken(f'no {algorithm} signing key matches kid "{kid}"')
            raise InvalidToken(f"no configured key can verify {algorithm} tokens")
        claims = self._decode(token, algorithm, candidates)
        return VerifiedToken(
            claims=claims,
            scopes=scopes_from_claims(claims, self.settings.scope_claims),
            subject=_header_safe(claims.get("sub"), "sub"),
            client=_header_safe(claims.get("client_id", claims.get("azp")), "client_id" if "client_id" in claims else "azp"),
            expires_at=float(claims["exp"]),
        )

    def _decode(self, token: str, algorithm: str, candidates: tuple[Any, ...]) -> dict[str, Any]:
        for key in candidates:
            try:
                return jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[algorithm],
                    audience=list(self.settings.audience) or None,
                    issuer=self.settings.issuer,
                    leeway=self.settings.leeway,
                    options=self._options,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise InvalidToken(f"token expired at {_when(jwt.decode(token, options={'verify_signature': False}).get('exp'))}") from None
            except jwt.ImmatureSignatureError as exc:
                raise InvalidToken(f"token is not valid yet: {exc}") from None
            except jwt.InvalidAudienceError:
                raise InvalidToken(f"token audience is not {' or '.join(self.settings.audience)}") from None
            except jwt.InvalidIssuerError:
                raise InvalidToken(f"token issuer is not {self.settings.issuer}") from None
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidToken(f"token lacks the required claim {exc.claim!r}") from None
            except jwt.PyJWTError as exc:
                raise InvalidToken(f"token rejected: {exc}") from None
        raise InvalidToken("signature verification failed")
