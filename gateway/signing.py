"""Signing keys and the tokens they sign, for trials and tests, never for serving: throwaway keys
made fresh in memory (`gateway test`, the pytest plugin), and key files (`gateway keys init`,
`gateway token mint`, `gateway demo`). A key is made for an algorithm the config accepts, so the
tokens it signs meet the same verification as the identity provider's."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.keys import HMAC_ALGORITHMS, MIN_RSA_BITS, RSA_ALGORITHMS, VerificationKey, key_from_secret

_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_SIGNERS = jwt.algorithms.get_default_algorithms()
SIGNING_ALGORITHMS = RSA_ALGORITHMS | HMAC_ALGORITHMS | frozenset(_CURVES) | {"EdDSA"}
KEY_FILE_ALGORITHMS = ("RS256", "ES256", "EdDSA")  # what `gateway keys init` makes
# the members RFC 7638 hashes, per key type
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key (or an HMAC secret) and the algorithm and `kid` it signs with."""

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


def throwaway_key(algorithms: Iterable[str], kid: str = "throwaway-1") -> SigningKey:
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
def _make(algorithm: str, kid: str) -> SigningKey:
    return SigningKey(algorithm, kid, _new_private(algorithm))


def _new_private(algorithm: str) -> Any:
    if algorithm in RSA_ALGORITHMS:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm in _CURVES:
        return ec.generate_private_key(_CURVES[algorithm]())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return secrets.token_bytes(64)


def thumbprint(public_key: Any) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256) of a public key: a `kid` that names the key itself."""
    jwk = _public_jwk(public_key)
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _public_jwk(public_key: Any) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return _SIGNERS["RS256"].to_jwk(public_key, as_dict=True)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _SIGNERS["ES256"].to_jwk(public_key, as_dict=True)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return _SIGNERS["EdDSA"].to_jwk(public_key, as_dict=True)
    raise ValueError(f"a {type(public_key).__name__} cannot sign tokens here (RSA, EC P-256/384/521 or Ed25519 can)")


def init_key_files(folder: Path, algorithm: str) -> SigningKey:
    """Make a key for `algorithm` and write it to `folder` as `private.pem` (readable by its owner
    only) and `jwks.json` (the public half, for `tokens.jwks_file`), its `kid` the key's thumbprint.

    :raises FileExistsError: `private.pem` is there already (a key is never overwritten).
    """
    private = _new_private(algorithm)
    folder.mkdir(parents=True, exist_ok=True)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # O_EXCL: an existing key (perhaps one tokens in use were signed with) is left as it is
    descriptor = os.open(folder / "private.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    key = SigningKey(algorithm, thumbprint(private.public_key()), private)
    (folder / "jwks.json").write_text(json.dumps({"keys": [key.jwk()]}, indent=2) + "\n")
    return key


def read_key_file(path: Path) -> SigningKey:
    """The signing key in a PEM private key file, with the algorithm its type signs with and its
    thumbprint as `kid`.

    :raises OSError: the file cannot be read.
    :raises ValueError: it holds no unencrypted private key that can sign tokens.
    """
    data = path.read_bytes()
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{path}: the private key is encrypted; give an unencrypted one") from None
    except ValueError:
        raise ValueError(f"{path}: not a PEM private key (gateway keys init writes one)") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise ValueError(f"{path}: an RSA key of {private.key_size} bits is too short: the gateway verifies with {MIN_RSA_BITS} bits or more")
        algorithm = "RS256"
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        algorithm = next((name for name, curve in _CURVES.items() if curve().name == private.curve.name), "")
        if not algorithm:
            raise ValueError(f"{path}: an EC key on curve {private.curve.name} cannot sign tokens here (P-256, P-384 or P-521 can)")
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        algorithm = "EdDSA"
    else:
        algorithm = ""
    if not algorithm:
        raise ValueError(f"{path}: a {type(private).__name__} cannot sign tokens here (RSA, EC P-256/384/521 or Ed25519 can)")
    return SigningKey(algorithm, thumbprint(private.public_key()), private)
