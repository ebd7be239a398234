"""The token parser and checks are written by hand (pyjwt's `decode` re-validated every base64
character in Python, most of a first-seen token's cost): every token pyjwt refuses, the gateway
refuses too. Each crafted token below carries a valid signature over exactly what it holds, so a
refusal comes from the rule the case is about, not from the signature."""

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.errors import InvalidToken
from gateway.keys import KeyStore
from gateway.loading import load_config
from gateway.settings import DEFAULT_ALGORITHMS
from gateway.tokens import TokenVerifier
from tests.support import AUDIENCE, ISSUER, KEYS, private_key, write_config

pytestmark = pytest.mark.anyio
JWKS = jwt.PyJWKSet.from_dict(json.loads((KEYS / "jwks.json").read_text()))
LEEWAY = 5


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300, "scope": "a"}
    body.update(changes)
    return {name: value for name, value in body.items() if value is not DROP}


DROP = object()


def sign(signing_input: str, algorithm: str = "RS256", key: str = "rsa") -> str:
    """The base64url signature of `signing_input` as it stands (padding, odd characters and all)."""
    if algorithm == "none":
        return ""
    signer = jwt.algorithms.get_default_algorithms()[algorithm]
    secret = (KEYS / "rsa.pub.pem").read_bytes() if algorithm.startswith("HS") else private_key(key)
    return b64(signer.sign(signing_input.encode("latin-1"), secret))


def craft(header: Any = None, payload: Any = None, *, raw_header: str | None = None, raw_payload: str | None = None,
          algorithm: str | None = None, key: str = "rsa", signature: Callable[[str], str] | None = None) -> str:
    """A token from a header and claims (JSON-encoded here) or from raw segments, signed over exactly
    its first two segments."""
    header = {"alg": "RS256", "kid": "rsa-1"} if header is None else header
    head = raw_header if raw_header is not None else b64(json.dumps(header).encode())
    body = raw_payload if raw_payload is not None else b64(json.dumps(claims() if payload is None else payload).encode())
    signing_input = f"{head}.{body}"
    alg = algorithm or (header.get("alg") if isinstance(header, dict) and isinstance(header.get("alg"), str) else "RS256")
    return f"{signing_input}.{signature(signing_input) if signature else sign(signing_input, alg, key)}"


def padded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def standard_base64_payload() -> str:
    """Valid claims in base64's alphabet, holding a '+' or '/' (which base64url spells '-', '_')."""
    for n in range(1, 9):
        encoded = base64.b64encode(json.dumps(claims(sub="?" * n)).encode()).rstrip(b"=").decode()
        if "+" in encoded or "/" in encoded:
            return encoded
    raise AssertionError("no sub gave a '+' or '/'")


ES = {"alg": "ES256", "kid": "ec-1"}
OK = b64(json.dumps(claims()).encode())
# (case, token maker, the gateway accepts it): pyjwt's verdict is worked out when the test runs
CASES: list[tuple[str, Callable[[], str], bool]] = [
    ("valid RS256", lambda: craft(), True),
    ("valid ES256", lambda: craft(ES, key="ec"), True),
    ("no kid: every key of the algorithm is tried", lambda: craft({"alg": "RS256"}), True),
    ("extra header members (typ, jku) are ignored", lambda: craft({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt", "jku": "https://evil.test"}), True),
    ("padding on the header", lambda: craft(raw_header=padded(b'{"alg": "RS256", "kid": "rsa-1"}')), True),
    ("padding on the payload", lambda: craft(raw_payload=padded(json.dumps(claims(sub="u")).encode())), True),
    ("padding on the signature", lambda: craft(signature=lambda signing_input: sign(signing_input) + "=="), True),
    ("duplicate claim: the last one counts, as in json.loads", lambda: craft(raw_payload=b64(json.dumps(claims())[:-1].encode() + b', "scope": "b"}')), True),
    ("duplicate exp, the last one expired", lambda: craft(raw_payload=b64(json.dumps(claims())[:-1].encode() + b', "exp": 1000}')), False),
    ("whitespace around the JSON", lambda: craft(raw_payload=b64(b" \n" + json.dumps(claims()).encode() + b"\t ")), True),
    ("audience in a list", lambda: craft(payload=claims(aud=["other", AUDIENCE])), True),
    ("alg none, no signature", lambda: craft({"alg": "none", "kid": "rsa-1"}), False),
    ("alg None", lambda: craft({"alg": "None", "kid": "rsa-1"}, signature=lambda _: ""), False),
    ("HS256 keyed with the RSA public key", lambda: craft({"alg": "HS256", "kid": "rsa-1"}), False),
    ("alg missing", lambda: craft({"kid": "rsa-1"}), False),
    ("alg a list", lambda: craft({"alg": ["RS256"], "kid": "rsa-1"}), False),
    ("alg of another key type (ES256 header, RSA kid)", lambda: craft({"alg": "ES256", "kid": "rsa-1"}, key="ec"), False),
    ("crit header", lambda: craft({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}), False),
    ("b64 false", lambda: craft({"alg": "RS256", "kid": "rsa-1", "b64": False, "crit": ["b64"]}), False),
    ("b64 false without crit", lambda: craft({"alg": "RS256", "kid": "rsa-1", "b64": False}), False),
    ("kid a number", lambda: craft({"alg": "RS256", "kid": 1}), False),
    ("kid unknown", lambda: craft({"alg": "RS256", "kid": "nope"}), False),
    ("signed by another key", lambda: craft(key="rsa-other"), False),
    ("signature cut short", lambda: craft(signature=lambda signing_input: sign(signing_input)[:-4]), False),
    ("signature empty", lambda: craft(signature=lambda _: ""), False),
    ("ES256 signature of the wrong length", lambda: craft(ES, key="ec", signature=lambda s: sign(s, "ES256", "ec") + "AAAA"), False),
    ("three padding characters", lambda: craft(raw_payload=OK + "==="), False),
    ("padding inside a segment", lambda: craft(raw_payload=OK[:8] + "==" + OK[8:]), False),
    ("leading padding", lambda: craft(raw_payload="==" + OK), False),
    ("'+' or '/' of base64, not base64url", lambda: craft(raw_payload=standard_base64_payload()), False),
    ("a character outside base64", lambda: craft(raw_payload=OK[:8] + "!" + OK[8:]), False),
    ("a newline inside a segment", lambda: craft(raw_payload=OK[:8] + "\n" + OK[8:]), False),
    ("a non-ASCII character", lambda: craft(raw_payload=OK[:8] + "é" + OK[8:]), False),
    ("a segment of impossible length", lambda: craft(raw_payload=OK + "A" * (1 + (-len(OK) - 1) % 4)), False),
    ("empty payload", lambda: craft(raw_payload=""), False),
    ("payload not JSON", lambda: craft(raw_payload=b64(b"not json")), False),
    ("payload a JSON array", lambda: craft(raw_payload=b64(b'["exp"]')), False),
    ("payload a JSON string", lambda: craft(raw_payload=b64(b'"claims"')), False),
    ("payload JSON then more", lambda: craft(raw_payload=b64(json.dumps(claims()).encode() + b" {}")), False),
    ("payload in UTF-16 (JSON is UTF-8)", lambda: craft(raw_payload=b64(json.dumps(claims()).encode("utf-16"))), False),
    ("payload with a byte-order mark", lambda: craft(raw_payload=b64(b"\xef\xbb\xbf" + json.dumps(claims()).encode())), False),
    ("payload not UTF-8", lambda: craft(raw_payload=b64(json.dumps(claims(sub="x")).encode().replace(b'"x"', b'"\xff"'))), False),
    ("payload nested too deep", lambda: craft(raw_payload=b64(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")), False),
    ("header not JSON", lambda: craft(raw_header=b64(b"RS256")), False),
    ("header a JSON array", lambda: craft(raw_header=b64(b'["RS256"]')), False),
    ("two segments", lambda: craft().rpartition(".")[0], False),
    ("four segments", lambda: craft() + ".e30", False),
    ("exp missing", lambda: craft(payload=claims(exp=DROP)), False),
    ("exp a string", lambda: craft(payload=claims(exp=str(int(time.time()) + 300))), False),
    ("exp NaN", lambda: craft(raw_payload=b64(json.dumps(claims())[:-1].encode() + b', "exp": NaN}')), False),
    ("expired beyond the leeway", lambda: craft(payload=claims(exp=int(time.time()) - 60)), False),
    ("nbf in the future", lambda: craft(payload=claims(nbf=int(time.time()) + 120)), False),
    ("iat in the future", lambda: craft(payload=claims(iat=int(time.time()) + 120)), False),
    ("iss wrong", lambda: craft(payload=claims(iss="https://evil.test")), False),
    ("iss missing", lambda: craft(payload=claims(iss=DROP)), False),
    ("aud wrong", lambda: craft(payload=claims(aud="other")), False),
    ("aud missing", lambda: craft(payload=claims(aud=DROP)), False),
    ("aud a number", lambda: craft(payload=claims(aud=1)), False),
]


def pyjwt_accepts(token: str) -> bool:
    """What `jwt.decode` makes of the token with the same keys and rules (a key chosen by kid)."""
    try:
        header = jwt.get_unverified_header(token)
        candidates = [key for key in JWKS.keys if header.get("kid") is None or key.key_id == header.get("kid")]
        for key in candidates:
            try:
                jwt.decode(token, key.key, algorithms=list(DEFAULT_ALGORITHMS), audience=AUDIENCE, issuer=ISSUER, leeway=LEEWAY,
                           options={"require": ["exp", "iss", "aud"]})
                return True
            except jwt.InvalidSignatureError:
                continue
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return False
    return False


@pytest.fixture
def verifier(tmp_path: Path) -> TokenVerifier:
    tokens = f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n  leeway: {LEEWAY}\n"
    settings = load_config(write_config(tmp_path, tokens=tokens)).tokens
    return TokenVerifier(settings, KeyStore(settings.static_keys))


async def gateway_accepts(verifier: TokenVerifier, token: str) -> bool:
    try:
        await verifier.verify(token)
    except InvalidToken:
        return False
    return True


@pytest.mark.parametrize(("case", "make", "accepted"), CASES, ids=[case for case, _, _ in CASES])
async def test_what_pyjwt_refuses_the_gateway_refuses(verifier: TokenVerifier, case: str, make: Callable[[], str], accepted: bool) -> None:
    token = make()
    ours = await gateway_accepts(verifier, token)
    assert ours is accepted, f"{case}: the gateway {'accepts' if ours else 'refuses'} it"
    if not pyjwt_accepts(token):
        assert not ours, f"{case}: pyjwt refuses it, the gateway accepts it"


def test_the_table_holds_cases_pyjwt_refuses_and_accepts() -> None:
    verdicts = {case: pyjwt_accepts(make()) for case, make, _ in CASES}
    assert sum(verdicts.values()) >= 8 and sum(not verdict for verdict in verdicts.values()) >= 30, verdicts
