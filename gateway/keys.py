"""Key material for token verification: JWKS documents, PEM public keys, an HMAC secret, and a
remote JWKS kept fresh without ever trusting the token to choose how it is checked.

Each key carries the algorithms it may verify, decided from its own type (and its JWK `alg`,
when present), never from the token: an RSA key never checks an HMAC token, a P-256 key never
an ES384 one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.settings import VerificationKey
from gateway.types import UNCOUNTED, Metrics

logger = logging.getLogger("gateway.keys")

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}  # as a JWK's `crv` names them
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(_EC_ALGORITHMS.values()) | {"EdDSA"}
MIN_RSA_BITS = 2048
_MIN_HMAC_BYTES = 32
_MAX_JWKS_BYTES = 1 << 20


def _algorithms_for(public_key: Any) -> frozenset[str]:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {public_key.key_size} bits is too short (at least {MIN_RSA_BITS})")
        return RSA_ALGORITHMS
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(public_key.curve.name)
        if algorithm is None:
            raise ValueError(f"elliptic curve {public_key.curve.name} is not supported")
        return frozenset({algorithm})
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return frozenset({"EdDSA"})
    raise ValueError(f"unsupported key type {type(public_key).__name__}")


def kind(key: VerificationKey) -> str:
    """What a key is, in words, for messages: `an EC P-256 key (ES256)`."""
    if isinstance(key.key, bytes):
        what = "an HMAC secret"
    elif isinstance(key.key, rsa.RSAPublicKey):
        what = f"an RSA key of {key.key.key_size} bits"
    elif isinstance(key.key, ec.EllipticCurvePublicKey):
        what = f"an EC {_CURVES.get(key.key.curve.name, key.key.curve.name)} key"
    elif isinstance(key.key, ed25519.Ed25519PublicKey):
        what = "an Ed25519 key"
    elif isinstance(key.key, ed448.Ed448PublicKey):
        what = "an Ed448 key"
    else:
        what = "a key"
    return f"{what} ({', '.join(sorted(key.algorithms)) or 'no algorithm'})"


def unusable(key: VerificationKey, allowed: Iterable[str]) -> str | None:
    """Why no token can be verified with `key` under the `allowed` algorithms (the config's
    `tokens.algorithms`), or None when one can."""
    allowed = tuple(allowed)
    if key.algorithms & frozenset(allowed):
        return None
    return f"{kind(key)} verifies no algorithm tokens.algorithms allows ({', '.join(allowed) or 'none'})"


def usable_keys(keys: Iterable[VerificationKey], allowed: Iterable[str]) -> tuple[list[VerificationKey], list[str]]:
    """The keys some `allowed` algorithm can use, and one warning per key that none can.

    :raises ValueError: none can: every token would be refused.
    """
    allowed = tuple(allowed)
    kept: list[VerificationKey] = []
    left_out: list[str] = []
    for key in keys:
        why = unusable(key, allowed)
        if why is None:
            kept.append(key)
        else:
            left_out.append(f"key{'' if key.kid is None else f' (kid {key.kid!r})'}: {why}")
    if not kept:
        raise ValueError(f"no key is usable, so every token would be refused: {'; '.join(left_out)}")
    return kept, left_out


def jwks_document(data: bytes) -> Any:
    """The JSON document of a JWKS file or answer.

    :raises ValueError: not JSON; a PEM file is told apart, so the message can point at `public_keys`.
    """
    if data.lstrip().startswith(b"-----BEGIN"):
        raise ValueError("this is a PEM file, not a JWKS (JSON); list a PEM public key under tokens.public_keys")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None


def _public(key: Any) -> Any:
    # a JWKS or PEM that carries a private key still only ever verifies
    return key.public_key() if hasattr(key, "public_key") else key


def keys_from_jwks(document: Any, origin: str) -> tuple[list[VerificationKey], list[str]]:
    """The usable signature keys of a JWKS document, and one warning per key left out.

    :raises ValueError: the document is not a JWKS or holds no usable key.
    """
    if isinstance(document, Mapping) and "kty" in document and "keys" not in document:
        raise ValueError('a single JWK, not a JWKS document: wrap it as {"keys": [...]}')
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWKS document (expected {"keys": [...]})')
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    for index, jwk in enumerate(document["keys"]):
        label = f"key {index}" + (f' (kid "{jwk.get("kid")}")' if isinstance(jwk, Mapping) and "kid" in jwk else "")
        try:
            if not isinstance(jwk, Mapping):
                raise ValueError("not an object")
            if jwk.get("use", "sig") != "sig":
                raise ValueError(f'"use" is {jwk.get("use")!r}, not "sig"')
            if jwk.get("kty") == "oct":
                raise ValueError("symmetric keys are never taken from a JWKS; configure hmac_secret_file")
            if "kid" in jwk and not isinstance(jwk["kid"], str):
                raise ValueError('"kid" must be a string')
            public_key = _public(jwt.PyJWK(dict(jwk)).key)
            algorithms = _algorithms_for(public_key)
            if "alg" in jwk:
                if jwk["alg"] not in algorithms:
                    raise ValueError(f'"alg" {jwk["alg"]!r} does not fit a key of this type')
                algorithms = frozenset({jwk["alg"]})
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            skipped.append(f"{origin}: {label} left out: {exc}")
            continue
        keys.append(VerificationKey(jwk.get("kid"), algorithms, public_key, origin))
    if not keys:
        raise ValueError("no usable signature key" + (": " + "; ".join(skipped) if skipped else ""))
    return keys, skipped


def key_from_pem(data: bytes, origin: str) -> VerificationKey:
    """:raises ValueError: not a PEM public key of a supported type and size."""
    start = data.lstrip()
    if start.startswith((b"{", b"[")):
        raise ValueError("this is JSON (a JWKS?), not a PEM public key; give a JWKS as tokens.jwks_file")
    if start.startswith(b"-----BEGIN CERTIFICATE-----"):
        raise ValueError("this is a certificate, not a public key; extract its key with: openssl x509 -pubkey -noout -in FILE")
    if b"PRIVATE KEY-----" in start[:64]:
        raise ValueError("this is a private key; give its public key only (openssl pkey -pubout -in FILE)")
    try:
        public_key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    return VerificationKey(None, _algorithms_for(public_key), public_key, origin)


def key_from_secret(secret: bytes, algorithms: Iterable[str], origin: str) -> VerificationKey:
    """:raises ValueError: the secret is too short to be a safe HMAC key."""
    if len(secret) < _MIN_HMAC_BYTES:
        raise ValueError(f"HMAC secret has {len(secret)} bytes; at least {_MIN_HMAC_BYTES} are required")
    return VerificationKey(None, frozenset(algorithms) & HMAC_ALGORITHMS, secret, origin)


def _fingerprint(keys: Iterable[VerificationKey]) -> frozenset[tuple[object, ...]]:
    return frozenset(
        (key.kid, key.algorithms, key.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        for key in keys
    )


class KeySet:
    """An immutable set of keys, indexed by kid."""

    __slots__ = ("keys", "_by_kid", "_without_kid", "_prepared")

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self.keys = tuple(keys)
        self._by_kid: dict[str, tuple[VerificationKey, ...]] = {}
        for key in self.keys:
            if key.kid is not None:
                self._by_kid[key.kid] = (*self._by_kid.get(key.kid, ()), key)
        self._without_kid = tuple(key for key in self.keys if key.kid is None)
        # the candidates of every (known kid or none, algorithm), worked out once: a first-seen
        # token only looks them up. An unknown kid is not remembered (the token chooses it).
        algorithms = {algorithm for key in self.keys for algorithm in key.algorithms}
        self._prepared = {
            (kid, algorithm): self._select(kid, algorithm) for kid in (None, *self._by_kid) for algorithm in algorithms
        }

    def knows(self, kid: str) -> bool:
        return kid in self._by_kid

    def candidates(self, kid: str | None, algorithm: str) -> tuple[VerificationKey, ...]:
        """Keys that may verify a token with this header: its kid's keys, else keys without a kid
        (PEM, HMAC); with no kid in the token, every key."""
        prepared = self._prepared.get((kid, algorithm))
        return self._select(kid, algorithm) if prepared is None else prepared

    def _select(self, kid: str | None, algorithm: str) -> tuple[VerificationKey, ...]:
        if kid is not None and kid in self._by_kid:
            pool = self._by_kid[kid]
        elif kid is not None:
            pool = self._without_kid
        else:
            pool = self.keys
        return tuple(key for key in pool if algorithm in key.algorithms)


async def read_bounded(response: httpx.Response, limit: int, size: str) -> bytes:
    """The body of a 200 answer on the control plane (a JWKS, an introspection answer), read as it
    arrives and given up as soon as it outgrows `limit` bytes (`size` in words), so an endless or
    huge answer costs no more memory than the bound. The request asked for `identity`: a
    compressed answer could grow past the bound inside one decoded chunk.

    :raises ValueError: another status, an encoding, or a body over the bound.
    """
    if response.status_code != 200:
        raise ValueError(f"status {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ValueError(f"answer is {encoding[:20]!r}-encoded, although only identity was accepted")
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ValueError(f"answer larger than {size} (Content-Length {declared})")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise ValueError(f"answer larger than {size}")
    return bytes(body)


class KeyStore:
    """Static keys plus, when `jwks_url` is set, a remote JWKS that is fetched at start, again when
    older than `max_age`, and again on an unknown kid at most once per `refetch_interval`. A fetch
    gets `fetch_timeout` seconds in all (connect, headers and body) and 1 MiB of body; a failed
    fetch keeps the last good keys, and so does one whose keys no allowed algorithm can use.
    `generation` changes whenever the usable keys change."""

    def __init__(
        self,
        static_keys: Iterable[VerificationKey],
        jwks_url: str | None = None,
        *,
        algorithms: Iterable[str] | None = None,  # tokens.algorithms; None: any a key supports
        refetch_interval: float = 30.0,
        max_age: float = 600.0,
        fetch_timeout: float = 5.0,
        metrics: Metrics = UNCOUNTED,  # where each JWKS fetch is counted
    ) -> None:
        self._static = tuple(static_keys)
        self.metrics = metrics
        self.jwks_url = jwks_url
        self.algorithms = None if algorithms is None else tuple(algorithms)
        self.refetch_interval = refetch_interval
        self.max_age = max_age
        self._fetch_timeout = fetch_timeout
        self.keys = KeySet(self._static)
        self.generation = 0
        self.last_error: str | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._remote_fingerprint: frozenset[tuple[object, ...]] = frozenset()
        self.owner: IssuerKeys | None = None  # told of every change, so one check covers every issuer

    async def start(self) -> None:
        if self.jwks_url:
            await self.refresh(force=True)

    async def aclose(self) -> None:
        if self._background is not None:
            self._background.cancel()

    async def candidates(self, kid: str | None, algorithm: str) -> tuple[VerificationKey, ...]:
        if self.jwks_url:
            now = time.monotonic()
            if self._fetched_at == float("-inf") or (kid is not None and not self.keys.knows(kid)):
                await self.refresh()
            elif now - self._fetched_at > self.max_age and (self._background is None or self._background.done()):
                self._background = asyncio.create_task(self.refresh())
        return self.keys.candidates(kid, algorithm)

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the remote JWKS, unless one was tried less than `refetch_interval` ago or one is
        under way (this call then waits for that one's outcome)."""
        attempted = self._attempted_at
        in_flight = self._lock.locked()
        async with self._lock:
            if in_flight or self._attempted_at != attempted:
                # another task fetched while this one waited: its answer is as fresh as a new one,
                # and a caller waits for one fetch's bound, not for two
                return
            if not force and time.monotonic() - self._attempted_at < self.refetch_interval:
                return
            self._attempted_at = time.monotonic()
            try:
                remote = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                self.metrics.jwks_fetched(False)
                self.last_error = f"JWKS fetch from {self.jwks_url} failed: {exc}"
                logger.warning("%s; keeping %d known keys", self.last_error, len(self.keys.keys))
                return
            self.metrics.jwks_fetched(True)
            self.last_error = None
            self._fetched_at = time.monotonic()
            fingerprint = _fingerprint(remote)
            if fingerprint != self._remote_fingerprint:
                self._remote_fingerprint = fingerprint
                self.keys = KeySet((*self._static, *remote))
                self.generation += 1
                if self.owner is not None:
                    self.owner.generation += 1
                logger.info("JWKS from %s: %d keys", self.jwks_url, len(remote))

    async def _fetch(self) -> list[VerificationKey]:
        assert self.jwks_url is not None
        try:
            # httpx's timeout bounds each read, not the whole: a JWKS drip-fed a byte at a time
            # would hold this fetch, and the refresh lock with it, forever
            async with asyncio.timeout(self._fetch_timeout):
                body = await self._download(self.jwks_url)
        except TimeoutError:
            raise ValueError(f"no complete answer within {self._fetch_timeout:g} s") from None
        origin = f"jwks_url {self.jwks_url}"
        keys, skipped = keys_from_jwks(jwks_document(bytes(body)), origin)
        if self.algorithms is not None:
            keys, left_out = usable_keys(keys, self.algorithms)
            skipped += [f"{origin}: {warning}" for warning in left_out]
        for warning in skipped:
            logger.warning("%s", warning)
        return keys

    async def _download(self, url: str) -> bytes:
        """The JWKS document at `url`, at most `_MAX_JWKS_BYTES` (`read_bounded`)."""
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        async with httpx.AsyncClient(timeout=self._fetch_timeout, trust_env=False) as client:
            async with client.stream("GET", url, headers=headers) as response:
                return await read_bounded(response, _MAX_JWKS_BYTES, "1 MiB")


class IssuerKeys:
    """One `KeyStore` per issuer entry, in the entries' order, started and closed together: a key
    of one issuer never verifies a token naming another (RFC 8725 3.8). `generation` changes
    whenever any store's keys do."""

    def __init__(self, stores: Iterable[KeyStore]) -> None:
        self.stores = tuple(stores)
        self.generation = 0
        for store in self.stores:
            store.owner = self

    @property
    def keys(self) -> KeySet:
        """Every issuer's keys together, for counting them (never for verifying)."""
        return KeySet(key for store in self.stores for key in store.keys.keys)

    @property
    def last_error(self) -> str | None:
        return next((store.last_error for store in self.stores if store.last_error), None)

    async def start(self) -> None:
        await asyncio.gather(*(store.start() for store in self.stores))

    async def aclose(self) -> None:
        for store in self.stores:
            await store.aclose()
