"""Throwaway signing keys, made fresh in memory, and the tokens they sign: for `gateway demo`,
`gateway test` and the pytest plugin, never for serving. A key is made for an algorithm the
config accepts, so the tokens it signs meet the same verification as the identity provider's."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.keys import HMAC_ALGORITHMS, RSA_ALGORITHMS, VerificationKey, key_from_secret

_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_SIGNERS = jwt.algorithms.get_default_algorithms()
SIGNING_ALGORITHMS = RSA_ALGORITHMS | HMAC_ALGORITHMS | frozenset(_CURVES) | {"EdDSA"}


@dataclass(frozen=True, slots=True)
class ThrowawayKey:
    """A private key (or an HMAC secret) that lives as long as the process."""

    algorithm: str
    kid: str
    private: Any  # a cryptography private key, or the secret as bytes

    def verification_key(self) -> VerificationKey:
        """The key that verifies what this one signs, as the key store holds keys."""
        if self.algorithm in HMAC_ALGORITHMS:
            return key_from_secret(self.private, [self.algorithm], "a throwaway secret")
        return VerificationKey(self.kid, frozenset({self.algorithm}), self.private.public_key(), "a throwaway key")

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK with its `kid`, `use` and `alg`, for a JWKS file."""
        if self.algorithm in HMAC_ALGORITHMS:
            raise ValueError("an HMAC secret is never published in a JWKS")
        jwk: dict[str, Any] = _SIGNERS[self.algorithm].to_jwk(self.private.public_key(), as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg=self.algorithm)
        return jwk

    def sign(self, claims: Mapping[str, Any]) -> str:
        """A JWT of `claims`, signed with this key, its `kid` in the header."""
        return jwt.encode(dict(claims), self.private, algorithm=self.algorithm, headers={"kid": self.kid})


def throwaway_key(algorithms: Iterable[str], kid: str = "throwaway-1") -> ThrowawayKey:
    """A new key for the first of `algorithms` this module can sign with (one per algorithm and
    kid in a process: an RSA key takes a tenth of a second to make).

    :raises ValueError: none of `algorithms` can be signed with.
    """
    algorithms = tuple(algorithms)
    algorithm = next((name for name in algorithms if name in SIGNING_ALGORITHMS), None)
    if algorithm is None:
        raise ValueError(f"no throwaway key can sign for {', '.join(algorithms) or 'no algorithm'} (it can for: {', '.join(sorted(SIGNING_ALGORITHMS))})")
    return _make(algorithm, kid)


@functools.cache
def _make(algorithm: str, kid: str) -> ThrowawayKey:
    private: Any
    if algorithm in RSA_ALGORITHMS:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm in _CURVES:
        private = ec.generate_private_key(_CURVES[algorithm]())
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = secrets.token_bytes(64)
    return ThrowawayKey(algorithm, kid, private)
