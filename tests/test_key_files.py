"""`gateway keys init` and `gateway token mint`: a key a newcomer makes, and tokens it signs that a
real gateway (loaded from the files keys init wrote) accepts. Run in process: the console script
is the same `main`."""

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.app import Gateway
from gateway.cli import main
from gateway.loading import load_config
from gateway.signing import thumbprint

pytestmark = pytest.mark.anyio

TABLE = """\
name: notes
upstream: http://notes.test
routes:
  GET /notes: notes:read
  POST /notes: notes:write
"""


def gateway_yaml(folder: Path, algorithms: str = "[RS256, ES256, EdDSA]", extra: str = "") -> Path:
    (folder / "routes").mkdir(exist_ok=True)
    (folder / "routes" / "notes.yaml").write_text(TABLE)
    config = folder / "gateway.yaml"
    config.write_text(f"routes: routes/\ntokens:\n  issuer: https://id.example\n  audience: [notes-api, other-api]\n"
                      f"  algorithms: {algorithms}\n  jwks_file: keys/jwks.json\n{extra}proxy:\n  client: httpx\n")
    return config


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


async def get(config: Path, token: str, method: str = "GET") -> httpx.Response:
    with respx.mock(assert_all_called=False) as upstream:
        upstream.route(host="notes.test").respond(200, json={"notes": []})
        transport = httpx.ASGITransport(app=Gateway(load_config(config)))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            return await client.request(method, "/notes", headers={"Authorization": f"Bearer {token}"})


def test_the_thumbprint_is_rfc_7638s() -> None:
    # RFC 7638 section 3.1: this RSA key's thumbprint
    jwk = {"kty": "RSA", "e": "AQAB", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64"
        "tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
        "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")}
    public = jwt.algorithms.RSAAlgorithm.from_jwk(jwk)
    assert thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_a_minted_token_passes_a_gateway_that_reads_the_jwks_keys_init_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, algorithm: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    config = gateway_yaml(tmp_path)
    status, out, _ = run(capsys, "keys", "init", "--alg", algorithm)
    assert status == 0 and "keys/private.pem" in out
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "private.pem").st_mode) == 0o600
    (jwk,) = json.loads((tmp_path / "keys" / "jwks.json").read_text())["keys"]
    assert "d" not in jwk and jwk["alg"] == algorithm

    status, out, err = run(capsys, "token", "mint", "--key", "keys/private.pem", "--scopes", "notes:read", "--sub", "ana", "--client", "app")
    assert status == 0 and err == ""
    token = out.strip()
    header, claims = jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == algorithm and header["kid"] == jwk["kid"] == thumbprint(jwt.PyJWK(jwk).key)
    # the config's issuer and first audience (gateway.yaml read from the current folder)
    assert claims["iss"] == "https://id.example" and claims["aud"] == "notes-api"
    assert claims["sub"] == "ana" and claims["client_id"] == "app" and claims["exp"] - claims["iat"] == 3600

    allowed = await get(config, token)
    assert allowed.status_code == 200, allowed.text
    refused = await get(config, token, "POST")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"


async def test_mint_follows_the_config_given_and_its_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = gateway_yaml(tmp_path, extra="  scope_claims: [scp]\n")
    assert run(capsys, "keys", "init", "--dir", str(tmp_path / "keys"))[0] == 0
    key = str(tmp_path / "keys" / "private.pem")
    status, out, _ = run(capsys, "token", "mint", "--key", key, "--config", str(config), "--scopes", "notes:read notes:write",
                         "--ttl", "60", "--claims", '{"acr": "sms", "sub": "bob"}')
    assert status == 0
    claims = jwt.decode(out.strip(), options={"verify_signature": False})
    assert claims["scp"] == "notes:read notes:write" and "scope" not in claims
    assert claims["sub"] == "bob" and claims["acr"] == "sms" and claims["exp"] - claims["iat"] == 60
    assert (await get(config, out.strip(), "POST")).status_code == 200

    # --issuer names another issuer: the gateway, which expects its own, refuses the token
    status, out, _ = run(capsys, "token", "mint", "--key", key, "--config", str(config), "--issuer", "https://elsewhere", "--scopes", "notes:read")
    assert status == 0 and jwt.decode(out.strip(), options={"verify_signature": False})["iss"] == "https://elsewhere"
    refused = await get(config, out.strip())
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"


def test_keys_init_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "keys"
    assert run(capsys, "keys", "init", "--dir", str(folder))[0] == 0
    before = (folder / "private.pem").read_bytes(), (folder / "jwks.json").read_bytes()
    status, out, err = run(capsys, "keys", "init", "--dir", str(folder), "--alg", "ES256")
    assert status == 2 and out == "" and "private.pem exists already" in err
    assert ((folder / "private.pem").read_bytes(), (folder / "jwks.json").read_bytes()) == before


@pytest.mark.parametrize(("options", "message"), [
    (["--claims", "{not json"], "--claims: not JSON"),
    (["--claims", "[1, 2]"], "--claims: a JSON object"),
    (["--claims", '{"exp": NaN}'], "--claims: NaN and Infinity"),
    (["--claims", '{"exp": Infinity}'], "--claims: NaN and Infinity"),
    (["--ttl", "nan"], "--ttl: a number of seconds above 0"),
    (["--ttl", "inf"], "--ttl: a number of seconds above 0"),
    (["--ttl", "-60"], "--ttl: a number of seconds above 0"),
    (["--ttl", "0"], "--ttl: a number of seconds above 0"),
    (["--ttl", "1e12"], "at most 315360000"),
    (["--key", "missing.pem"], "--key missing.pem: No such file or directory"),
    (["--key", "keys/jwks.json"], "not a PEM private key"),
    (["--key", "keys"], "--key keys:"),
    (["--config", "nowhere.yaml"], "no nowhere.yaml in "),
])
def test_mint_refuses_what_would_make_a_wrong_token_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, options: list[str], message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    gateway_yaml(tmp_path)
    assert run(capsys, "keys", "init")[0] == 0
    arguments = ["token", "mint", "--key", "keys/private.pem", *options]
    status, out, err = run(capsys, *arguments)
    assert (status, out) == (2, ""), out
    assert message in err


@pytest.mark.parametrize(("key", "message"), [
    (rsa.generate_private_key(public_exponent=65537, key_size=1024), "an RSA key of 1024 bits is too short"),
    (ec.generate_private_key(ec.SECP256K1()), "an EC key on curve secp256k1 cannot sign tokens here"),
])
def test_mint_refuses_a_key_the_gateway_would_not_verify_with(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any, message: str) -> None:
    pem = tmp_path / "weak.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    status, out, err = run(capsys, "token", "mint", "--key", str(pem))
    assert (status, out) == (2, "") and message in err, err


def test_mint_refuses_an_encrypted_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "locked.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")))
    status, out, err = run(capsys, "token", "mint", "--key", str(pem))
    assert (status, out) == (2, "") and "the private key is encrypted" in err


def test_mint_refuses_a_key_the_config_does_not_accept(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gateway_yaml(tmp_path, algorithms="[RS256]")
    assert run(capsys, "keys", "init")[0] == 0
    assert run(capsys, "keys", "init", "--dir", "other", "--alg", "EdDSA")[0] == 0
    status, out, err = run(capsys, "token", "mint", "--key", "other/private.pem")
    assert (status, out) == (2, "")
    assert "other/private.pem signs EdDSA, which tokens.algorithms of gateway.yaml does not accept (RS256)" in err


def test_mint_says_why_the_config_does_not_load_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gateway_yaml(tmp_path, algorithms="[RS256]")
    assert run(capsys, "keys", "init", "--alg", "EdDSA")[0] == 0  # the config's only key: one RS256 cannot use
    status, out, err = run(capsys, "token", "mint", "--key", "keys/private.pem")
    assert (status, out) == (2, "")
    assert "gateway.yaml:6: tokens.jwks_file keys/jwks.json: no key is usable" in err


def test_mint_warns_when_the_config_does_not_hold_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gateway_yaml(tmp_path)
    assert run(capsys, "keys", "init")[0] == 0
    assert run(capsys, "keys", "init", "--dir", "other")[0] == 0
    status, out, err = run(capsys, "token", "mint", "--key", "other/private.pem")
    assert status == 0 and out.count(".") == 2
    assert "no key of gateway.yaml has kid" in err and "will refuse this token" in err


def test_mint_without_a_config_signs_only_what_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "keys", "init")[0] == 0
    status, out, _ = run(capsys, "token", "mint", "--key", "keys/private.pem", "--issuer", "https://id.example")
    claims = jwt.decode(out.strip(), options={"verify_signature": False})
    assert status == 0 and claims["iss"] == "https://id.example" and "aud" not in claims
