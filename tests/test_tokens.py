import base64
import gc
import json
import time
from pathlib import Path

import httpx
import pytest
import respx

from gateway.errors import InvalidToken
from gateway.keys import KeyStore, key_from_pem, key_from_secret
from gateway.loading import load_config
from gateway.settings import TokenSettings
from gateway.tokens import TokenVerifier
from tests.support import AUDIENCE, ISSUER, KEYS, Clock, mint, raw_claims, sign_raw, write_config

pytestmark = pytest.mark.anyio
JWKS = json.loads((KEYS / "jwks.json").read_text())


def verifier_for(tmp_path: Path, tokens_yaml: str) -> TokenVerifier:
    settings = load_config(write_config(tmp_path, tokens=tokens_yaml)).tokens
    return TokenVerifier(settings, KeyStore(settings.static_keys, settings.jwks_url, refetch_interval=settings.jwks_refetch_interval))


@pytest.fixture
def verifier(tmp_path: Path) -> TokenVerifier:
    return verifier_for(tmp_path, f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n  leeway: 5\n")


async def test_a_valid_token_yields_its_scopes_subject_and_client(verifier: TokenVerifier) -> None:
    verified = await verifier.verify(mint("a b c"))
    assert verified.scopes == {"a", "b", "c"}
    assert (verified.subject, verified.client) == ("user-1", "client-1")


async def test_an_ec_key_from_the_jwks_verifies_es256(verifier: TokenVerifier) -> None:
    assert (await verifier.verify(mint("a", key="ec", algorithm="ES256", kid="ec-1"))).scopes == {"a"}


class _FromNow(int):
    """A claim time given as seconds from when the test mints the token."""

    def __add__(self, seconds: object) -> "_FromNow":
        return _FromNow(int(self) + int(seconds))  # type: ignore[call-overload]


FROM_NOW = _FromNow(0)


FORGERIES = [
    ("signed by another key", dict(key="rsa-other"), "signature verification failed"),
    ("kid of an unknown key", dict(kid="nope"), 'no RS256 signing key matches kid "nope"'),
    ("EC token claiming the RSA kid", dict(key="ec", algorithm="ES256", kid="rsa-1"), 'no ES256 signing key matches kid "rsa-1"'),
    ("ES384 with a P-256 kid", dict(key="ec384", algorithm="ES384", kid="ec-1"), 'no ES384 signing key matches kid "ec-1"'),
    ("expired", dict(lifetime=-60), "token expired at"),
    ("expired within leeway", dict(lifetime=-3), None),
    # times from now, made when the test runs (a table's own time.time() is the collection's)
    ("not yet valid", dict(nbf=FROM_NOW + 120), "not valid yet"),
    ("nbf within leeway", dict(nbf=FROM_NOW + 3), None),
    ("issued in the future", dict(iat=FROM_NOW + 120), "not valid yet"),
    ("wrong issuer", dict(iss="https://evil.test"), f"issuer is not {ISSUER}"),
    ("wrong audience", dict(aud="other-api"), f"audience is not {AUDIENCE}"),
    ("audience list without ours", dict(aud=["a", "b"]), "audience is not"),
    ("audience list with ours", dict(aud=["a", AUDIENCE]), None),
    ("no exp", dict(drop=("exp",)), "lacks the required claim 'exp'"),
    ("no aud", dict(drop=("aud",)), "lacks the required claim 'aud'"),
    ("no iss", dict(drop=("iss",)), "lacks the required claim 'iss'"),
    ("scope of the wrong type", dict(scope=None, scp={"a": 1}), "must be a space-separated string or a list"),
    ("scope with a control character", dict(scope="a\x01b"), "not a valid scope"),
    ("sub with CR LF", dict(sub="x\r\nX-Auth-Scopes: admin"), "control characters"),
    ("sub of the wrong type", dict(sub=42), "claim 'sub' must be a string"),
    ("exp not a number", dict(exp="tomorrow"), "claim 'exp' must be a number"),
    ("exp a boolean", dict(exp=True), "claim 'exp' must be a number"),
    ("aud of the wrong type", dict(aud={"a": 1}), "claim 'aud' must be a string or a list"),
    ("jti of the wrong type", dict(jti=7), "claim 'jti' must be a string"),
    ("crit extension", dict(headers={"crit": ["exp"]}), "JWS extensions"),
]


@pytest.mark.parametrize(("case", "mint_args", "words"), FORGERIES, ids=[case for case, _, _ in FORGERIES])
async def test_forged_expired_and_misaddressed_tokens_are_refused(verifier: TokenVerifier, case: str, mint_args: dict, words: str | None) -> None:
    now = int(time.time())
    token = mint(**{"scope": "a", **{name: now + value if isinstance(value, _FromNow) else value for name, value in mint_args.items()}})
    if words is None:
        assert (await verifier.verify(token)).subject is not None
        return
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(token)
    assert words in refused.value.description


NOT_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", NOT_FINITE, ids=["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "10**400"])
async def test_time_claims_must_be_finite_numbers(verifier: TokenVerifier, claim: str, value: str) -> None:
    # json.loads reads NaN and Infinity, and 1e400 as inf: an infinite exp was cached forever
    token = sign_raw(raw_claims(**{claim: value}))
    with pytest.raises(InvalidToken, match=f"claim '{claim}' must be a finite number"):
        await verifier.verify(token)
    assert not verifier._cache


async def test_finite_time_claims_written_as_floats_are_accepted(verifier: TokenVerifier) -> None:
    now = time.time()
    token = sign_raw(raw_claims(exp=repr(now + 300.5), nbf=repr(now - 1.5), iat=repr(now - 1.5)))
    assert (await verifier.verify(token)).expires_at == now + 300.5


SCOPE_SEPARATORS_REFUSED = ["\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x00", "\x7f", "\x85",
                            "\xa0", "\u1680", "\u2000", "\u2028", "\u2029", "\u202f", "\u3000"]


@pytest.mark.parametrize("separator", SCOPE_SEPARATORS_REFUSED, ids=[repr(separator) for separator in SCOPE_SEPARATORS_REFUSED])
@pytest.mark.parametrize("claim", ["scope", "scp"])
@pytest.mark.parametrize("where", ["between", "leading", "trailing"])
async def test_a_scope_string_is_split_on_spaces_only(verifier: TokenVerifier, claim: str, separator: str, where: str) -> None:
    value = {"between": f"a{separator}b", "leading": f"{separator}a b", "trailing": f"a b{separator}"}[where]
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(mint(**{"scope": None, claim: value}))
    assert f"claim '{claim}' is not a valid scope string" in refused.value.description


@pytest.mark.parametrize("value", [" a b", "a b ", "a  b", "  a   b  "])
async def test_extra_spaces_in_a_scope_string_are_ignored(verifier: TokenVerifier, value: str) -> None:
    assert (await verifier.verify(mint(value))).scopes == {"a", "b"}


@pytest.mark.parametrize("items", [["a\tb"], ["a", "b c"], ["a", ""], ["a\xa0"]])
async def test_each_item_of_a_scope_list_is_one_scope(verifier: TokenVerifier, items: list[str]) -> None:
    with pytest.raises(InvalidToken, match="claim 'scope' holds .*, which is not a valid scope"):
        await verifier.verify(mint(items))


def _b64(data: dict) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_alg_none_is_refused_even_without_a_signature(verifier: TokenVerifier) -> None:
    token = _b64({"alg": "none", "kid": "rsa-1"}) + "." + _b64({"iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 60, "scope": "a"}) + "."
    with pytest.raises(InvalidToken, match="algorithm 'none' is not accepted"):
        await verifier.verify(token)


async def test_hmac_signed_with_the_public_key_is_refused(verifier: TokenVerifier) -> None:
    # the classic algorithm confusion: HS256 "signed" with the RSA public key as the secret
    import hashlib
    import hmac

    body = _b64({"alg": "HS256", "kid": "rsa-1"}) + "." + _b64({"iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 60, "scope": "admin"})
    signature = hmac.new((KEYS / "rsa.pub.pem").read_bytes(), body.encode(), hashlib.sha256).digest()
    import base64

    token = body + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="algorithm 'HS256' is not accepted"):
        await verifier.verify(token)


async def test_padded_segments_are_accepted_as_some_issuers_sign_them(verifier: TokenVerifier) -> None:
    import jwt

    from tests.support import private_key

    header, payload, _ = mint("a").split(".")
    signing_input = header + "=" * (-len(header) % 4) + "." + payload + "=" * (-len(payload) % 4)
    signature = jwt.algorithms.get_default_algorithms()["RS256"].sign(signing_input.encode(), private_key("rsa"))
    token = signing_input + "." + base64.urlsafe_b64encode(signature).decode()
    assert "=" in token
    assert (await verifier.verify(token)).scopes == {"a"}


@pytest.mark.parametrize("token", ["abc", "a.b.c", "e30.e30.", "a.b.c.d", "e30.e30!.c2ln", "W10.e30.c2ln", _b64({"alg": "RS256"}) + ".bm90anNvbg.c2ln"])
async def test_malformed_tokens_are_refused(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


async def test_the_algorithm_allow_list_comes_from_config(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  algorithms: [ES256]\n  jwks_file: {KEYS / 'jwks.json'}\n")
    with pytest.raises(InvalidToken, match="algorithm 'RS256' is not accepted"):
        await verifier.verify(mint())
    assert (await verifier.verify(mint("a", key="ec", algorithm="ES256", kid="ec-1"))).scopes == {"a"}


async def test_pem_public_keys_verify_tokens_with_any_or_no_kid(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  public_keys: [{KEYS / 'rsa.pub.pem'}, {KEYS / 'ec.pub.pem'}]\n")
    assert (await verifier.verify(mint("a", kid=None))).scopes == {"a"}
    assert (await verifier.verify(mint("b", key="ec", algorithm="ES256", kid="anything"))).scopes == {"b"}
    with pytest.raises(InvalidToken, match="signature verification failed"):
        await verifier.verify(mint("a", key="rsa-other", kid=None))


async def test_hmac_only_when_a_shared_secret_is_configured(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  algorithms: [HS256, RS256]\n  hmac_secret_file: {KEYS / 'hmac.secret'}\n  jwks_file: {KEYS / 'jwks.json'}\n")
    assert (await verifier.verify(mint("a", algorithm="HS256", kid=None))).scopes == {"a"}
    assert (await verifier.verify(mint("b"))).scopes == {"b"}


@pytest.mark.parametrize(("claims", "scopes"), [
    (dict(scope="a b"), {"a", "b"}),
    (dict(scope=["a", "b"]), {"a", "b"}),
    (dict(scope=None, scp="a b"), {"a", "b"}),
    (dict(scope=None, scp=["a", "b"]), {"a", "b"}),
    (dict(scope="a", scp=["b"]), {"a", "b"}),
    (dict(scope=None), set()),
    (dict(scope=""), set()),
])
async def test_scopes_come_from_scope_or_scp(verifier: TokenVerifier, claims: dict, scopes: set) -> None:
    assert (await verifier.verify(mint(**claims))).scopes == scopes


async def test_scope_claim_names_are_configurable(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n  scope_claims: [permissions]\n")
    assert (await verifier.verify(mint("ignored", permissions=["p:read"]))).scopes == {"p:read"}


async def test_client_falls_back_to_azp(verifier: TokenVerifier) -> None:
    assert (await verifier.verify(mint(drop=("client_id",), azp="web-app"))).client == "web-app"


async def test_verified_tokens_are_cached_but_never_past_exp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock().install(monkeypatch, "gateway.tokens")
    verifier = verifier_for(tmp_path, f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n  leeway: 0\n")
    verifications = []
    real_verify = verifier._verify

    async def counting(token: str):
        verifications.append(token)
        return await real_verify(token)

    verifier._verify = counting  # type: ignore[method-assign]
    token = mint(lifetime=2.5)
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first and len(verifications) == 1
    clock.advance(max(0.0, first.expires_at - time.time()) + 0.1)
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)
    assert len(verifications) == 2


async def test_a_token_is_remembered_under_the_key_it_was_verified_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock().install(monkeypatch, "gateway.tokens")
    verifier = verifier_for(tmp_path, f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n  leeway: 0\n")
    token = mint(lifetime=2.5)
    presented = b"Bearer " + token.encode()
    first = await verifier.verify(token, key=presented)
    assert verifier.recall(presented) == first
    assert verifier.recall(token) is None, "remembered under its key only"
    assert verifier.recall(b"Bearer  " + token.encode()) is None
    clock.advance(max(0.0, first.expires_at - time.time()) + 0.1)
    assert verifier.recall(presented) is None
    assert presented not in verifier._cache


async def test_cached_tokens_leave_the_garbage_collector_nothing_to_walk(verifier: TokenVerifier) -> None:
    # a churning cache of 10,000 tokens held as objects made collections of 10-40 ms
    tokens = [mint(f"s{index % 3}", sub=f"user-{index}", aud=[AUDIENCE, "other"]) for index in range(100)]
    for token in tokens:
        await verifier.verify(token, key=b"Bearer " + token.encode())
    gc.collect()
    assert len(verifier._cache) == 100
    assert not [entry for entry in verifier._cache.values() if gc.is_tracked(entry)]
    first, fourth = (verifier.recall(b"Bearer " + token.encode()) for token in (tokens[0], tokens[3]))
    assert first is not None and fourth is not None
    assert first.scopes is fourth.scopes == {"s0"}, "one frozenset per distinct scope set"
    assert (first.subject, fourth.subject) == ("user-0", "user-3")
    assert first.claims["aud"] == [AUDIENCE, "other"]


async def test_the_cache_is_bounded(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n  cache_size: 3\n")
    tokens = [mint(f"s{i}") for i in range(5)]
    for token in tokens:
        await verifier.verify(token)
    assert list(verifier._cache) == tokens[2:]


async def test_a_known_header_is_decoded_once_and_vouches_for_nothing(verifier: TokenVerifier) -> None:
    good = mint("a")
    assert (await verifier.verify(good)).scopes == {"a"}
    header = good.split(".")[0]
    assert list(verifier._known_headers) == [header]
    forged = mint("a", key="rsa-other")  # the same header segment, signed by someone else
    assert forged.split(".")[0] == header
    with pytest.raises(InvalidToken, match="signature verification failed"):
        await verifier.verify(forged)
    with pytest.raises(InvalidToken, match="not base64url"):
        await verifier.verify(header + ".e30!.c2ln")


async def test_the_known_headers_are_bounded(verifier: TokenVerifier) -> None:
    for n in range(600):
        with pytest.raises(InvalidToken):
            await verifier.verify(_b64({"alg": "RS256", "kid": f"k{n}"}) + ".e30.c2ln")
        assert len(verifier._known_headers) <= 256


async def test_refused_tokens_are_not_cached(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken):
        await verifier.verify(mint(key="rsa-other"))
    assert not verifier._cache


JWKS_URL = "https://idp.test/jwks"


def remote_verifier(refetch_interval: float = 30) -> TokenVerifier:
    settings = TokenSettings(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=JWKS_URL, jwks_refetch_interval=refetch_interval)
    return TokenVerifier(settings, KeyStore((), JWKS_URL, refetch_interval=refetch_interval))


@respx.mock
async def test_a_remote_jwks_is_fetched_then_served_from_memory() -> None:
    endpoint = respx.get(JWKS_URL).mock(return_value=httpx.Response(200, json=JWKS))
    verifier = remote_verifier()
    await verifier.keys.start()
    for scope in ("a", "b", "c"):
        assert (await verifier.verify(mint(scope))).scopes == {scope}
    assert endpoint.call_count == 1


@respx.mock
async def test_an_unknown_kid_refetches_at_most_once_per_interval() -> None:
    rotated = {"keys": [*JWKS["keys"], {**JWKS["keys"][0], "kid": "rsa-2"}]}
    endpoint = respx.get(JWKS_URL).mock(side_effect=[httpx.Response(200, json=JWKS), httpx.Response(200, json=rotated)])
    verifier = remote_verifier(refetch_interval=0)
    await verifier.keys.start()
    assert (await verifier.verify(mint("a", kid="rsa-2"))).scopes == {"a"}  # picked up by the refetch
    assert endpoint.call_count == 2

    endpoint.side_effect = None
    endpoint.return_value = httpx.Response(200, json=rotated)
    verifier.keys.stores[0].refetch_interval = 3600
    for _ in range(5):
        with pytest.raises(InvalidToken, match='kid "rsa-9"'):
            await verifier.verify(mint("a", kid="rsa-9"))
    assert endpoint.call_count == 2  # a flood of unknown kids does not hammer the IdP


@respx.mock
async def test_a_failing_jwks_endpoint_keeps_the_last_good_keys() -> None:
    endpoint = respx.get(JWKS_URL).mock(side_effect=[httpx.Response(200, json=JWKS), httpx.Response(500), httpx.ConnectError("down")])
    verifier = remote_verifier(refetch_interval=0)
    await verifier.keys.start()
    await verifier.keys.stores[0].refresh()
    await verifier.keys.stores[0].refresh()
    assert endpoint.call_count == 3 and "failed" in (verifier.keys.stores[0].last_error or "")
    assert (await verifier.verify(mint("a"))).scopes == {"a"}


@respx.mock
async def test_with_no_keys_ever_fetched_tokens_are_refused() -> None:
    respx.get(JWKS_URL).mock(return_value=httpx.Response(503))
    verifier = remote_verifier()
    await verifier.keys.start()
    with pytest.raises(InvalidToken, match="no signing keys are available"):
        await verifier.verify(mint("a"))


@respx.mock
async def test_a_rotated_out_key_stops_verifying_even_cached_tokens() -> None:
    only_ec = {"keys": [JWKS["keys"][1]]}
    respx.get(JWKS_URL).mock(side_effect=[httpx.Response(200, json=JWKS)] + [httpx.Response(200, json=only_ec)] * 2)
    verifier = remote_verifier(refetch_interval=0)
    await verifier.keys.start()
    token = mint("a")
    await verifier.verify(token)
    await verifier.verify(token, key=b"Bearer " + token.encode())
    await verifier.keys.stores[0].refresh()
    assert verifier.recall(b"Bearer " + token.encode()) is None
    with pytest.raises(InvalidToken, match='kid "rsa-1"'):
        await verifier.verify(token)


@respx.mock
async def test_a_token_verified_while_the_keys_change_is_kept_and_none_from_before() -> None:
    only_rsa, only_ec = {"keys": [JWKS["keys"][0]]}, {"keys": [JWKS["keys"][1]]}
    respx.get(JWKS_URL).mock(side_effect=[httpx.Response(200, json=only_rsa)] + [httpx.Response(200, json=only_ec)] * 2)
    verifier = remote_verifier(refetch_interval=0)
    await verifier.keys.start()
    before = mint("a")
    await verifier.verify(before)
    during = mint("b", key="ec", algorithm="ES256", kid="ec-1")  # an unknown kid: the JWKS is fetched again
    verified = await verifier.verify(during)
    assert verifier.recall(during) == verified
    assert verifier.recall(before) is None and list(verifier._cache) == [during]


def test_symmetric_keys_are_never_taken_from_a_jwks() -> None:
    from gateway.keys import keys_from_jwks

    with pytest.raises(ValueError, match="symmetric keys are never taken"):
        keys_from_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "test")


def test_a_jwk_alg_narrows_what_the_key_verifies() -> None:
    from gateway.keys import keys_from_jwks

    [key], _ = keys_from_jwks({"keys": [JWKS["keys"][0]]}, "test")
    assert key.algorithms == {"RS256"}
    _, skipped = keys_from_jwks({"keys": [JWKS["keys"][1], {**JWKS["keys"][0], "alg": "ES256"}]}, "test")
    assert skipped == ['test: key 1 (kid "rsa-1") left out: Not an Elliptic curve key']


def test_key_loading_refuses_weak_keys() -> None:
    with pytest.raises(ValueError, match="too short"):
        key_from_pem((KEYS / "rsa-short.pub.pem").read_bytes(), "test")
    with pytest.raises(ValueError, match="at least 32"):
        key_from_secret(b"short", ["HS256"], "test")
