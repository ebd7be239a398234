import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway.loading import ConfigError, load_config
from gateway.scopes import Access
from tests.support import KEYS, write_config

GOOD_HEAD = "name: t\nupstream: http://up.test/v3\nprefix: /p\n"

# (route table text, line of the problem, words the message must hold)
BROKEN_TABLES = [
    (GOOD_HEAD + "routes:\n  GET /a: s\n  FETCH /b: s\n", 6, "unknown method 'FETCH'"),
    (GOOD_HEAD + "routes:\n  get /a: s\n", 5, "unknown method 'get'"),
    (GOOD_HEAD + "routes:\n  GET a/b: s\n", 5, "must start with '/'"),
    (GOOD_HEAD + "routes:\n  GET /a//b: s\n", 5, "empty segment"),
    (GOOD_HEAD + "routes:\n  GET /a/: s\n", 5, "empty segment"),
    (GOOD_HEAD + "routes:\n  GET /a/{id: s\n", 5, "a parameter is a whole segment"),
    (GOOD_HEAD + "routes:\n  GET /a/x{id}: s\n", 5, "a parameter is a whole segment"),
    (GOOD_HEAD + "routes:\n  GET /a/{}: s\n", 5, "a parameter is a whole segment"),
    (GOOD_HEAD + "routes:\n  GET /a/{id}/{id}: s\n", 5, "appears twice"),
    (GOOD_HEAD + "routes:\n  GET /a/../b: s\n", 5, "dot segments"),
    (GOOD_HEAD + "routes:\n  GET /a/%2F: s\n", 5, "cannot hold"),
    (GOOD_HEAD + "routes:\n  GET: s\n", 5, "must be 'METHOD /path/template'"),
    (GOOD_HEAD + "routes:\n  GET /a: s\n  GET /a: t\n", 6, "duplicate key 'GET /a' (first at line 5)"),
    (GOOD_HEAD + "routes:\n  GET /a/{x}: s\n  GET /a/{y}: t\n", 6, "same method and path as GET /a/{x}"),
    (GOOD_HEAD + "routes:\n  GET /a: [s, [t, [u]]]\n", 5, "nest only one level"),
    (GOOD_HEAD + "routes:\n  GET /a: []\n", 5, "requirement must be"),
    (GOOD_HEAD + "routes:\n  GET /a: [[]]\n", 5, "at least one scope"),
    (GOOD_HEAD + "routes:\n  GET /a: {x: 1}\n", 5, "unknown key 'x'"),
    (GOOD_HEAD + "routes:\n  GET /a: 42\n", 5, "scope must be a string"),
    (GOOD_HEAD + "routes:\n  GET /a: true\n", 5, "scope must be a string"),
    (GOOD_HEAD + "routes:\n  GET /a: read write\n", 5, "holds a space"),
    (GOOD_HEAD + "routes:\n  GET /a: [public, s]\n", 5, "stands alone"),
    (GOOD_HEAD + "routes:\n  GET /a: 'a\"b'\n", 5, "not a valid scope"),
    (GOOD_HEAD + "routes:\n  GET /a: null\n", 5, "scope must be a string"),
    (GOOD_HEAD + "scopes:\n  s:\n    implies: [ghost]\nroutes:\n  GET /a: s\n", 6, "'ghost' is not in this table's scopes catalog"),
    (GOOD_HEAD + "scopes:\n  s:\n    implies: []\nroutes:\n  GET /a: s\n", 6, "non-empty list"),
    (GOOD_HEAD + "scopes:\n  s:\n    implies: [t]\n  t:\n    implies: [s]\nroutes:\n  GET /a: s\n", 6, "implication cycle s -> t -> s"),
    (GOOD_HEAD + "scopes:\n  s:\n    implies: [s]\nroutes:\n  GET /a: s\n", 6, "implication cycle s -> s"),
    (GOOD_HEAD + "scopes:\n  s:\n    inherits: [t]\nroutes:\n  GET /a: s\n", 6, "unknown key 'inherits'"),
    (GOOD_HEAD + "routes:\n  GET /a: s\nextra: 1\n", 6, "unknown key 'extra'"),
    ("name: t\nroutes:\n  GET /a: s\n", 1, "missing key 'upstream'"),
    ("name: t\nupstream: ftp://x\nroutes:\n  GET /a: s\n", 2, "http:// or https://"),
    ("name: t\nupstream: http://x/?q=1\nroutes:\n  GET /a: s\n", 2, "must not carry a query"),
    ("name: t\nupstream: http://x:99999\nroutes:\n  GET /a: s\n", 2, "invalid port"),
    ("name: 'a b'\nupstream: http://x\nroutes:\n  GET /a: s\n", 1, "may hold only"),
    ("name: t\nupstream: http://x\nprefix: /p/{id}\nroutes:\n  GET /a: s\n", 3, "literal segments"),
    ("name: t\nupstream: http://x\nprefix: p\nroutes:\n  GET /a: s\n", 3, "must start with '/'"),
    ("name: t\nupstream: http://x\nroutes: [GET /a]\n", 3, "routes must be a mapping"),
    ("- a\n- b\n", 1, "route table must be a mapping"),
    ("name: t\n  bad: indent\n", 2, "invalid YAML"),
    ("", 1, "file is empty"),
]


@pytest.mark.parametrize(("text", "line", "message"), BROKEN_TABLES)
def test_broken_route_tables_name_file_line_and_problem(tmp_path: Path, text: str, line: int, message: str) -> None:
    config = write_config(tmp_path, table=text)
    with pytest.raises(ConfigError) as error:
        load_config(config)
    shown = [str(problem) for problem in error.value.problems]
    expected_file = str(tmp_path / "routes" / "payments.yaml")
    assert any(text.startswith(f"{expected_file}:{line}: ") and message in text for text in shown), shown


BROKEN_GATEWAY = [
    ("routes: routes/\ntokens:\n  jwks_file: {keys}/jwks.json\n  algorithms: [none]\n", 4, "'none' is never accepted"),
    ("routes: routes/\ntokens:\n  jwks_file: {keys}/jwks.json\n  algorithms: [RS256, HS256]\n", 4, "needs a shared secret"),
    ("routes: routes/\ntokens:\n  jwks_file: {keys}/jwks.json\n  algorithms: [RS1]\n", 4, "unknown algorithm 'RS1'"),
    ("routes: routes/\ntokens:\n  jwks_file: {keys}/missing.json\n", 3, "cannot read"),
    ("routes: routes/\ntokens:\n  jwks_file: {keys}/rsa.pub.pem\n", 3, "jwks_file"),
    ("routes: routes/\ntokens:\n  public_keys: [{keys}/rsa-short.pub.pem]\n", 3, "too short"),
    ("routes: routes/\ntokens:\n  public_keys: [{keys}/jwks.json]\n", 3, "not a PEM public key"),
    ("routes: routes/\ntokens:\n  jwks_url: file:///etc/passwd\n", 3, "http(s) URL"),
    ("routes: routes/\ntokens:\n  jwks_file: {keys}/jwks.json\n  leeway: -1\n", 4, "number >= 0"),
    ("routes: routes/\ntokens:\n  jwks_file: {keys}/jwks.json\n  issuer: x\n  audiance: y\n", 5, "unknown key 'audiance'"),
    ("routes: routes/\ntokens:\n  algorithms: [HS256]\n  hmac_secret_file: {keys}/short.secret\n", 4, "at least 32"),
    ("routes: routes/\ntokens:\n  hmac_secret_file: {keys}/hmac.secret\n", 3, "lists no HS256"),
    ("routes: routes/\n", 1, "no key is configured"),
    ("routes: nowhere/\ntokens:\n  jwks_file: {keys}/jwks.json\n", 1, "does not exist"),
    ("tokens:\n  jwks_file: {keys}/jwks.json\n", 1, "missing key 'routes'"),
    ("routes: routes/\nproxy:\n  read_timeout: 0\n", 3, "number >= 0.001"),
    ("routes: routes/\nproxy:\n  trusted_proxies: [10.0.0.0/33]\n", 3, "not an IP address"),
    ("routes: routes/\nlisten: 1\n", 2, "unknown key 'listen'"),
    ("routes: routes/\nproxy:\n  ca_file: {keys}/missing-ca.pem\n", 3, "does not exist"),
    ("routes: routes/\nproxy:\n  client: aiohttp\n", 3, "pool or httpx"),
    ("routes: routes/\nproxy:\n  max_connections: 0\n", 3, "integer >= 1"),
    ("routes: routes/\nproxy:\n  underscore_headers: allow\n", 3, "drop or refuse or pass"),
    ("routes: routes/\nlimits:\n  max_uri: 0\n", 3, "limits.max_uri must be an integer >= 1"),
    ("routes: routes/\nlimits:\n  max_headers: many\n", 3, "limits.max_headers must be an integer >= 1"),
    ("routes: routes/\nlimits:\n  max_body: 1\n", 3, "unknown key 'max_body'"),
    ("routes: routes/\nproxy:\n  client: httpx\n  ca_file: {keys}/jwks.json\n", 4, "proxy.ca_file is not supported by client: httpx"),
    ("routes: routes/\nproxy:\n  client: httpx\n  total_timeout: 5\n", 4, "proxy.total_timeout is not supported by client: httpx"),
    ("routes: routes/\nproxy:\n  client: httpx\n  max_connections: 5\n", 4, "proxy.max_connections is not supported by client: httpx"),
    ("routes: routes/\nproxy:\n  client: httpx\n  idle_timeout: 5\n", 4, "proxy.idle_timeout is not supported by client: httpx"),
    ("routes: routes/\nproxy:\n  ca_file: {keys}/rsa.pem\n", 3, "rsa.pem is not a PEM bundle of CA certificates"),
]


@pytest.mark.parametrize(("text", "line", "message"), BROKEN_GATEWAY)
def test_broken_gateway_configs_name_file_line_and_problem(tmp_path: Path, text: str, line: int, message: str) -> None:
    (tmp_path / "short.secret").write_text("too-short")
    config = write_config(tmp_path)
    config.write_text(text.format(keys=KEYS).replace(f"{KEYS}/short.secret", str(tmp_path / "short.secret")))
    with pytest.raises(ConfigError) as error:
        load_config(config)
    shown = [str(problem) for problem in error.value.problems]
    assert any(text.startswith(f"{config}:{line}: ") and message in text for text in shown), shown


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    config = write_config(tmp_path, table=GOOD_HEAD + "routes:\n  FETCH /a: s\n  GET /b//c: s\n  GET /d: [[]]\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert [problem.line for problem in error.value.problems] == [5, 6, 7]


def test_every_problem_of_gateway_yaml_is_reported_in_line_order_and_nothing_that_follows_from_one(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(
        "routes: routes/\n"  # 1
        "tokens:\n"  # 2
        "  issuer: ''\n"  # 3: empty
        "  algorithms: [RS256, none, XX512]\n"  # 4: two problems, one line
        f"  jwks_file: {tmp_path / 'missing.json'}\n"  # 5: unreadable: no "no key is configured" follows
        "  leeway: -1\n"  # 6
        "proxy:\n"  # 7
        "  read_timeout: 0\n"  # 8
        "  client: aiohttp\n"  # 9
        "  trusted_proxies: [10.0.0.0/8, not-an-ip, 300.1.1.1]\n"  # 10: two problems
        "limits:\n"  # 11
        "  max_uri: -5\n"  # 12
    )
    with pytest.raises(ConfigError) as error:
        load_config(config)
    shown = [(problem.line, problem.message) for problem in error.value.problems]
    assert [line for line, _ in shown] == [3, 4, 4, 5, 6, 8, 9, 10, 10, 12], shown
    assert not any("no key is configured" in message for _, message in shown)
    assert "'none' is never accepted" in shown[1][1] and "'XX512'" in shown[2][1]
    assert "'not-an-ip'" in shown[7][1] and "'300.1.1.1'" in shown[8][1]


def test_a_table_and_gateway_yaml_report_their_problems_file_by_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, table="name: 'a b'\nupstream: ftp://x\nprefix: p\nroutes:\n  FETCH /a: s\n  GET /b: [[]]\n")
    config.write_text(config.read_text() + "proxy:\n  read_timeout: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    shown = [(Path(problem.file).name, problem.line) for problem in error.value.problems]
    assert shown == [("payments.yaml", 1), ("payments.yaml", 2), ("payments.yaml", 3), ("payments.yaml", 5), ("payments.yaml", 6), ("gateway.yaml", 8)], shown


def test_limits_and_underscore_headers_are_read(tmp_path: Path) -> None:
    config = write_config(tmp_path, proxy="proxy:\n  underscore_headers: refuse\nlimits:\n  max_uri: 1000\n  max_headers: 20\n")
    loaded = load_config(config)
    assert (loaded.limits.max_uri, loaded.limits.max_headers, loaded.proxy.underscore_headers) == (1000, 20, "refuse")
    defaults = load_config(write_config(tmp_path))
    assert (defaults.limits.max_uri, defaults.limits.max_headers, defaults.proxy.underscore_headers) == (8192, 100, "drop")


def test_duplicate_routes_across_files_name_both_places(tmp_path: Path) -> None:
    config = write_config(tmp_path, table="name: a\nupstream: http://a\nprefix: /p\nroutes:\n  GET /x/{id}: s\n")
    (tmp_path / "routes" / "zz.yaml").write_text("name: b\nupstream: http://b\nroutes:\n  GET /p/x/{other}: s\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    [problem] = error.value.problems
    assert problem.file.endswith("zz.yaml") and problem.line == 4
    assert "payments.yaml:5" in problem.message


def test_the_worked_example_of_the_design_loads(tmp_path: Path) -> None:
    config = write_config(tmp_path, table="""\
name: adyen-management
upstream: http://management.internal:8080/v3
prefix: /adyen
scopes:
  psp.webhook:read:
  psp.webhook:write:
    implies: [psp.webhook:read]
  psp.accountsettings:write:
  psp.admin:
  psp:paybylink:write:
  psp.onlinepayment.tokenization:write:
  a:
  b:
  c:
routes:
  GET /merchants/{merchantId}/webhooks: psp.webhook:read
  POST /merchants/{merchantId}/webhooks: psp.webhook:write
  GET /merchants/{merchantId}: [psp.accountsettings:write, psp.admin]
  POST /paymentLinks: [[psp:paybylink:write, psp.onlinepayment.tokenization:write]]
  GET /status: public
  GET /me: authenticated
  GET /options: {scopes: [a, [b, c]]}
""")
    loaded = load_config(config)
    routes = {f"{r.method} {r.template}": r.requirement for r in loaded.tables.routes}
    assert routes["GET /merchants/{merchantId}"].alternatives == (frozenset({"psp.accountsettings:write"}), frozenset({"psp.admin"}))
    assert routes["POST /paymentLinks"].alternatives == (frozenset({"psp:paybylink:write", "psp.onlinepayment.tokenization:write"}),)
    assert routes["GET /status"].access is Access.PUBLIC
    assert routes["GET /me"].access is Access.AUTHENTICATED
    assert routes["GET /options"].alternatives == (frozenset({"a"}), frozenset({"b", "c"}))
    api = loaded.tables.apis[0]
    assert api.upstream.base_path == b"/v3" and api.upstream.origin.port == 8080 and api.prefix == ("adyen",)
    assert api.catalog.implied == {"psp.webhook:write": frozenset({"psp.webhook:read"})}
    assert loaded.tokens.leeway == 5 and loaded.proxy.read_timeout == 30


def test_defaults_are_documented_values(tmp_path: Path) -> None:
    loaded = load_config(write_config(tmp_path, tokens=f"tokens:\n  jwks_file: {KEYS / 'jwks.json'}\n"))
    assert loaded.tokens.algorithms[:1] == ("RS256",) and "HS256" not in loaded.tokens.algorithms
    assert loaded.tokens.leeway == 0 and loaded.tokens.scope_claims == ("scope", "scp")
    assert (loaded.proxy.connect_timeout, loaded.proxy.read_timeout, loaded.proxy.trusted_proxies) == (5, 30, ())


def test_a_table_of_public_routes_needs_no_keys(tmp_path: Path) -> None:
    config = write_config(tmp_path, table="name: t\nupstream: http://x\nroutes:\n  GET /status: public\n", tokens="")
    assert load_config(config).tables.needs_tokens() is False


# --- keys: one no allowed algorithm can use, and a file given under the wrong key ----------------

def key_files(folder: Path) -> None:
    """Beside the test keys: JWKS documents of one kind each, and files a user might mistake."""
    document = json.loads((KEYS / "jwks.json").read_text())
    (folder / "rsa.jwks.json").write_text(json.dumps({"keys": [key for key in document["keys"] if key["kty"] == "RSA"]}))
    (folder / "ec.jwks.json").write_text(json.dumps({"keys": [key for key in document["keys"] if key["kty"] == "EC"]}))
    (folder / "one.jwk.json").write_text(json.dumps(document["keys"][0]))
    private = serialization.load_pem_private_key((KEYS / "rsa.pem").read_bytes(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())  # type: ignore[union-attr]
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .sign(private, hashes.SHA256()))  # type: ignore[arg-type]
    (folder / "idp.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def tokens(lines: str) -> str:
    return "routes: routes/\ntokens:\n" + "".join(f"  {line}\n" for line in lines.split("; "))


# (gateway.yaml's tokens lines, the line of the problem, words the message must hold); {keys} is
# the test keys' folder, {here} the config's
UNUSABLE_KEYS = [
    ("algorithms: [RS256]; public_keys: [{keys}/ec.pub.pem]", 4, "an EC P-256 key (ES256) verifies no algorithm tokens.algorithms allows (RS256)"),
    ("algorithms: [ES256]; public_keys: [{keys}/rsa.pub.pem]", 4, "an RSA key of 2048 bits (PS256, PS384, PS512, RS256, RS384, RS512) verifies no algorithm"),
    ("algorithms: [ES256]; public_keys: [{keys}/ec384.pub.pem]", 4, "an EC P-384 key (ES384) verifies no algorithm tokens.algorithms allows (ES256)"),
    ("algorithms: [RS256, RS384, PS256]; public_keys: [{keys}/ed25519.pub.pem]", 4, "an Ed25519 key (EdDSA) verifies no algorithm"),
    ("algorithms: [RS256]; public_keys:; - {keys}/rsa.pub.pem; - {keys}/ed25519.pub.pem", 6, "an Ed25519 key (EdDSA)"),
    ("algorithms: [ES256]; jwks_file: {here}/rsa.jwks.json", 4, "rsa.jwks.json: no key is usable, so every token would be refused: key (kid 'rsa-1'): an RSA key"),
    ("algorithms: [RS384]; jwks_file: {here}/rsa.jwks.json", 4, "kid 'rsa-1'): an RSA key of 2048 bits (RS256) verifies no algorithm"),  # its JWK's alg
    ("algorithms: [RS256, PS256]; jwks_file: {here}/ec.jwks.json", 4, "kid 'ec-1'): an EC P-256 key (ES256) verifies no algorithm"),
    ("algorithms: [EdDSA]; jwks_file: {keys}/jwks.json", 4, "so every token would be refused"),
    ("algorithms: [RS256]; hmac_secret_file: {keys}/hmac.secret", 4, "lists no HS256/HS384/HS512"),
    ("hmac_secret_file: {keys}/hmac.secret", 3, "lists no HS256/HS384/HS512"),  # not among the defaults
]

WRONG_FILES = [
    ("jwks_file: {keys}/rsa.pub.pem", 3, "is a PEM file, not a JWKS (JSON); list a PEM public key under tokens.public_keys"),
    ("jwks_file: {keys}/ec.pem", 3, "is a PEM file, not a JWKS"),
    ("jwks_file: {here}/idp.crt", 3, "is a PEM file, not a JWKS"),
    ("jwks_file: {here}/one.jwk.json", 3, 'a single JWK, not a JWKS document: wrap it as {"keys": [...]}'),
    ("public_keys: [{keys}/jwks.json]", 3, "is JSON (a JWKS?), not a PEM public key; give a JWKS as tokens.jwks_file"),
    ("public_keys: [{here}/one.jwk.json]", 3, "is JSON (a JWKS?), not a PEM public key"),
    ("public_keys: [{here}/idp.crt]", 3, "is a certificate, not a public key"),
    ("public_keys: [{keys}/rsa.pem]", 3, "is a private key; give its public key only"),
]


@pytest.mark.parametrize(("lines", "line", "message"), UNUSABLE_KEYS + WRONG_FILES)
def test_a_key_that_cannot_serve_is_an_error_at_its_line(tmp_path: Path, lines: str, line: int, message: str) -> None:
    key_files(tmp_path)
    config = write_config(tmp_path)
    config.write_text(tokens(lines.format(keys=KEYS, here=tmp_path)))
    with pytest.raises(ConfigError) as error:
        load_config(config)
    shown = [str(problem) for problem in error.value.problems]
    assert any(text.startswith(f"{config}:{line}: ") and message in text for text in shown), shown


@pytest.mark.parametrize(("lines", "kids"), [
    ("algorithms: [RS256]; jwks_file: {keys}/jwks.json", ["rsa-1"]),
    ("algorithms: [ES256]; jwks_file: {keys}/jwks.json", ["ec-1"]),
    ("jwks_file: {keys}/jwks.json", ["rsa-1", "ec-1"]),
    ("algorithms: [ES256]; public_keys: [{keys}/ec.pub.pem]", [None]),
    ("algorithms: [EdDSA]; public_keys: [{keys}/ed25519.pub.pem]", [None]),
])
def test_usable_keys_load(tmp_path: Path, lines: str, kids: list[str | None]) -> None:
    config = write_config(tmp_path)
    config.write_text(tokens(lines.format(keys=KEYS)))
    assert [key.kid for key in load_config(config).tokens.static_keys] == kids


def test_a_jwks_s_keys_no_allowed_algorithm_can_use_are_left_out_with_a_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(tokens(f"algorithms: [RS256]; jwks_file: {KEYS}/jwks.json"))
    loaded = load_config(config)
    assert [key.kid for key in loaded.tokens.static_keys] == ["rsa-1"]
    assert loaded.warnings == ((
        f"{config}:4: warning: tokens.jwks_file {KEYS}/jwks.json: key (kid 'ec-1'): an EC P-256 key (ES256) verifies no algorithm "
        "tokens.algorithms allows (RS256), left out"
    ),)
