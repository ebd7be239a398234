"""Token verification: a bearer JWT checked against configured keys and claims, then cached.

The algorithm list comes from the config, never from the token; the token's header only picks
among keys that may verify that algorithm. The signature is checked by pyjwt's algorithm objects
(its lower-level pieces: `jwt.decode` re-validates every base64 character in Python, which is
most of a first-seen token's cost); the token is parsed once, here, and its registered claims
checked as RFC 7519 and pyjwt do. Every failure is `InvalidToken`, with a description a client
developer can act on.
"""

from __future__ import annotations

import binascii
import functools
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import jwt

from gateway.catalog import CLIENT_CREDENTIALS
from gateway.errors import InvalidToken
from gateway.keys import IssuerKeys, KeyStore
from gateway.scopes import SCOPE_TOKEN
from gateway.settings import Issuers, TokenSettings

# pyjwt's signature algorithms, by JOSE name; the config's allow-list says which may be used
_ALGORITHMS = jwt.algorithms.get_default_algorithms()
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 6749 3.3: scopes are separated by SP alone; any other whitespace or control character
# in a scope string is a malformed token, not a separator
_NOT_SP_SEPARATOR = re.compile(r"[^\S ]|[\x00-\x1f\x7f-\x9f]")
# base64url, with the trailing '=' some issuers add
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_CLIENT_CREDENTIALS_NAMES = frozenset({CLIENT_CREDENTIALS, "client-credentials"})
# distinct JWT header segments kept decoded (an issuer's tokens share one)
_KNOWN_HEADERS_MAX = 256
# a verified token as the cache keeps it: scopes (space-separated), subject, client, exp, the
# claims' JSON, its issuer entry's `issuer` and `grant_type_claim`
_Cached = tuple[str, str | None, str | None, float, bytes, str | None, str | None]


@dataclass(slots=True)
class VerifiedToken:
    """A token whose signature and claims were checked. A recalled token is built afresh from the
    cache's plain values on each request, so it is not frozen (that would cost four times as much)."""

    scopes: frozenset[str]
    subject: str | None
    client: str | None
    expires_at: float
    payload: bytes = b"{}"  # the claims, as the JSON that was signed
    # from the cache of tokens verified before (the metrics count it); the same token either way
    recalled: bool = field(default=False, compare=False)
    issuer: str | None = None  # the issuer entry that vouched for it (None: the single form without `issuer`)
    grant_type_claim: str | None = None  # that entry's tokens.grant_type_claim; None: the caller's


    @property
    def claims(self) -> dict[str, Any]:
        return json.loads(self.payload)  # type: ignore[no-any-return]  # a JSON object: checked when verified

    def grant_type(self, claim: str) -> str:
        """The grant the token was issued by (docs/route-tables.md, "Scope catalogs and rules"): the `claim`'s value,
        with `client-credentials` read as `client_credentials`; without it, client credentials
        when the token has no subject or its subject is its client, else authorization code."""
        claim = self.grant_type_claim or claim
        # the claims are parsed only when the payload may hold the claim: most tokens lack it
        value = self.claims.get(claim) if self.payload.find(b'"%s"' % claim.encode()) >= 0 else None
        if isinstance(value, str) and value:
            return CLIENT_CREDENTIALS if value in _CLIENT_CREDENTIALS_NAMES else value
        if self.subject is None or self.subject == self.client:
            return CLIENT_CREDENTIALS
        return "authorization_code"


@functools.lru_cache(maxsize=1024)  # one frozenset per distinct scope set: users share a few
def _scope_set(scopes: str) -> frozenset[str]:
    return frozenset(scopes.split())


def _when(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp), timezone.utc).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError):
        return repr(timestamp)


class _Parsed(NamedTuple):  # not a frozen dataclass: building one costs three times as much
    header: dict[str, Any]
    claims: dict[str, Any]
    payload: bytes  # the claims' JSON
    signing_input: bytes
    signature: bytes


def is_jwt(token: str) -> bool:
    """Whether a bearer token is a JWT: three base64url segments, the first a JSON object. Any
    other token is opaque, for introspection to judge."""
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        return False
    try:
        return isinstance(json.loads(_b64decode(parts[0].encode("ascii"))), dict)
    except (ValueError, binascii.Error, RecursionError):
        return False


# base64url to base64, with '+' and '/' (base64's, not base64url's) made invalid for strict decoding
_FROM_BASE64URL = bytes.maketrans(b"-_+/", b"+/!!")


def _b64decode(segment: bytes) -> bytes:
    """A base64url segment's bytes, with the trailing '=' some issuers add (at most two).

    :raises binascii.Error: any character outside base64url, '=' elsewhere, or a length no
        encoding has. Strict decoding refuses what the lenient one would skip.
    """
    data = segment.rstrip(b"=")
    if len(segment) - len(data) > 2:
        raise binascii.Error("too much padding")
    return binascii.a2b_base64(data.translate(_FROM_BASE64URL) + b"=" * (-len(data) % 4), strict_mode=True)


_DECODER = json.JSONDecoder()


def _json(data: bytes) -> Any:
    """`json.loads` of UTF-8 JSON (RFC 8259 8.1), without its detour through the encoding of bytes.

    :raises ValueError: not UTF-8, or not one JSON value (JSON's whitespace around it allowed).
    """
    text = data.decode("utf-8").strip(" \t\n\r")
    value, end = _DECODER.raw_decode(text)
    if end != len(text):
        raise ValueError("data after the JSON value")
    return value


def _parse(token: str, known_headers: dict[str, dict[str, Any]]) -> _Parsed:
    """Split and decode a compact JWS once. Nothing in it is trusted until the signature is.

    :param known_headers: header segments already decoded. An issuer's tokens share one header,
        so a first-seen token costs one JSON decode, not two; the header is only ever read.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token: not a compact JWS (header.payload.signature)")
    header_segment, payload_segment, signature_segment = parts
    try:
        header = known_headers.get(header_segment)
        if header is None:
            header = _json(_b64decode(header_segment.encode("ascii")))
            if isinstance(header, dict):
                if len(known_headers) >= _KNOWN_HEADERS_MAX:
                    known_headers.clear()
                known_headers[header_segment] = header
        payload = _b64decode(payload_segment.encode("ascii"))
        signature = _b64decode(signature_segment.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidToken("malformed token: a segment is not base64url") from None
    except (ValueError, RecursionError):
        raise InvalidToken("malformed token: a segment is not base64url-encoded JSON") from None
    try:
        claims = _json(payload)
    except (ValueError, RecursionError):
        raise InvalidToken("malformed token: a segment is not base64url-encoded JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidToken("malformed token: the header and the payload must be JSON objects")
    return _Parsed(header, claims, payload, token.rpartition(".")[0].encode("ascii"), signature)


def number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"claim {name!r} must be a number (seconds since the epoch)")
    try:
        number = float(value)
    except OverflowError:  # an integer past float's range
        number = math.inf
    # json.loads reads NaN, Infinity and 1e400 (as inf): an infinite exp would be cached
    # forever, and NaN passes every comparison
    if not math.isfinite(number):
        raise InvalidToken(f"claim {name!r} must be a finite number (seconds since the epoch), not {number}")
    return number


def header_safe(value: Any, claim: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidToken(f"claim {claim!r} must be a string")
    if _CONTROL.search(value):
        raise InvalidToken(f"claim {claim!r} holds control characters")
    return value


def scopes_from_claims(claims: Mapping[str, Any], claim_names: tuple[str, ...]) -> frozenset[str]:
    """The granted scopes: each named claim as a string of scopes separated by spaces (SP only,
    RFC 6749 3.3; empty items from extra spaces ignored) or a list of strings.

    :raises InvalidToken: a scope claim of another type, a scope string with whitespace or a
        control character other than SP, or a scope that is not a scope-token.
    """
    scopes: set[str] = set()
    for name in claim_names:
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            if _NOT_SP_SEPARATOR.search(value):
                raise InvalidToken(
                    f"claim {name!r} is not a valid scope string: it holds whitespace or a control"
                    " character other than a space, and scopes are separated by spaces only"
                )
            items = [item for item in value.split(" ") if item]
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
    """Verifies bearer JWTs of one or several issuers; remembers verified ones until their `exp`
    (bounded, LRU).

    The token's unverified `iss` picks its issuer's entry (the single form's one entry takes
    every token, and checks `iss` only when it names an issuer); the token is then checked with
    that entry's keys, algorithms and claim rules alone, whatever its `kid` says.
    """

    def __init__(self, settings: TokenSettings | Issuers, keys: KeyStore | IssuerKeys) -> None:
        self.issuers = settings if isinstance(settings, Issuers) else Issuers((settings,), cache_size=settings.cache_size)
        self.keys = keys if isinstance(keys, IssuerKeys) else IssuerKeys((keys,))
        if len(self.keys.stores) != len(self.issuers.entries):
            raise ValueError("one key store per issuer entry")
        self._entries = tuple(zip(self.issuers.entries, self.keys.stores))
        # with several entries, each names its issuer (the loader sees to it)
        self._by_issuer = {entry.issuer: (entry, store) for entry, store in self._entries if entry.issuer is not None}
        self._cache_size = self.issuers.cache_size
        # tokens verified with the key sets of `_generation` (a new key set of any issuer empties
        # it), each as a tuple of strings, bytes and a float (scopes space-separated), which the
        # garbage collector stops tracking: 10,000 cached token objects made its collections
        # take 10-40 ms. The issuer is part of the value: a table's allow-list reads it.
        self._cache: OrderedDict[str | bytes, _Cached] = OrderedDict()
        self._generation = self.keys.generation
        self._known_headers: dict[str, dict[str, Any]] = {}

    def recall(self, key: str | bytes) -> VerifiedToken | None:
        """The token verified earlier under `key`, while its key set and `exp` still hold."""
        if self._generation != self.keys.generation and self._key_set_changed():
            return None
        cached = self._cache.get(key)
        if cached is None:
            return None
        scopes, subject, client, expires_at, payload, issuer, grant_type_claim = cached
        if expires_at <= time.time():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return VerifiedToken(_scope_set(scopes), subject, client, expires_at, payload, True, issuer, grant_type_claim)

    async def verify(self, token: str, *, key: str | bytes | None = None) -> VerifiedToken:
        """Verify `token` unless it was verified before under `key` (by default, the token).

        :param key: what the verified token is remembered under; the gateway passes the whole
            Authorization value, so a repeated request skips parsing it (see `credentials.presented`).
        :raises InvalidToken: with the reason, in words.
        """
        key = token if key is None else key
        verified = self.recall(key)
        if verified is not None:
            return verified
        verified = await self._verify(token)
        if self._cache_size:
            self._key_set_changed()  # perhaps while this one was verified: it was, with the new set
            self._cache[key] = (
                " ".join(sorted(verified.scopes)), verified.subject, verified.client, verified.expires_at, verified.payload,
                verified.issuer, verified.grant_type_claim,
            )
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verified

    def _key_set_changed(self) -> bool:
        """Empty the cache if the key sets are not the ones its tokens were verified with."""
        if self._generation == self.keys.generation:
            return False
        self._cache.clear()
        self._generation = self.keys.generation
        return True

    def _entry(self, claims: dict[str, Any]) -> tuple[TokenSettings, KeyStore]:
        """The issuer entry the token's (still unverified) `iss` names: only its keys may verify it."""
        if len(self._entries) == 1:
            return self._entries[0]  # the single form: its own claim check judges `iss`
        issuer = claims.get("iss")
        if issuer is None:
            raise InvalidToken("token lacks the required claim 'iss'")
        found = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if found is None:
            shown = issuer[:100] if isinstance(issuer, str) else repr(issuer)[:100]
            raise InvalidToken(f"token issuer {shown!r} is not one this gateway trusts")
        return found

    async def _verify(self, token: str) -> VerifiedToken:
        parsed = _parse(token, self._known_headers)
        settings, keys = self._entry(parsed.claims)
        header = parsed.header
        algorithm = header.get("alg")
        if algorithm not in settings.algorithms:
            raise InvalidToken(f"algorithm {algorithm!r} is not accepted (accepted: {', '.join(settings.algorithms)})")
        if "crit" in header or header.get("b64") is False:
            # RFC 7515 4.1.11: extensions a recipient does not understand make the token invalid
            raise InvalidToken("token uses JWS extensions ('crit' or 'b64') the gateway does not accept")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("header 'kid' must be a string")
        candidates = await keys.candidates(kid, algorithm)
        if not candidates:
            if keys.last_error and not keys.keys.keys:
                raise InvalidToken("no signing keys are available to verify tokens right now")
            if kid is not None:
                raise InvalidToken(f'no {algorithm} signing key matches kid "{kid}"')
            raise InvalidToken(f"no configured key can verify {algorithm} tokens")
        verifier = _ALGORITHMS[algorithm]
        if not any(verifier.verify(parsed.signing_input, key.key, parsed.signature) for key in candidates):
            raise InvalidToken("signature verification failed")
        claims = parsed.claims
        check_claims(claims, settings)
        return VerifiedToken(
            scopes=scopes_from_claims(claims, settings.scope_claims),
            subject=header_safe(claims.get("sub"), "sub"),
            client=header_safe(claims.get("client_id", claims.get("azp")), "client_id" if "client_id" in claims else "azp"),
            expires_at=float(claims["exp"]),
            payload=parsed.payload,
            issuer=settings.issuer,
            grant_type_claim=settings.grant_type_claim,
        )


def check_claims(claims: dict[str, Any], settings: TokenSettings, *, exp_required: bool = True, now: float | None = None) -> None:
    """exp (required unless `exp_required` is false), nbf, iat, iss and aud, with the entry's
    leeway (RFC 7519 4.1), at `now` (default: now)."""
    now = time.time() if now is None else now
    leeway = settings.leeway
    expires = number(claims, "exp")
    if expires is None:
        if exp_required:
            raise InvalidToken("token lacks the required claim 'exp'")
    elif expires <= now - leeway:
        raise InvalidToken(f"token expired at {_when(expires)}")
    not_before = number(claims, "nbf")
    if not_before is not None and not_before > now + leeway:
        raise InvalidToken(f"token is not valid yet: not before {_when(not_before)}")
    issued = number(claims, "iat")
    if issued is not None and issued > now + leeway:
        raise InvalidToken(f"token is not valid yet: issued in the future, at {_when(issued)}")
    if settings.issuer is not None:
        if "iss" not in claims:
            raise InvalidToken("token lacks the required claim 'iss'")
        if claims["iss"] != settings.issuer:
            raise InvalidToken(f"token issuer is not {settings.issuer}")
    if settings.audience:
        if "aud" not in claims:
            raise InvalidToken("token lacks the required claim 'aud'")
        audience = claims["aud"]
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            raise InvalidToken("claim 'aud' must be a string or a list of strings")
        if not set(audiences) & set(settings.audience):
            raise InvalidToken(f"token audience is not {' or '.join(settings.audience)}")
    if "jti" in claims and not isinstance(claims["jti"], str):
        raise InvalidToken("claim 'jti' must be a string")
