"""What the benchmark generates before it starts anything: keys, tokens and the config files of
every target (gateway, nginx, HAProxy). Everything is written into one temporary work dir."""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://auth.bench"
AUDIENCE = "bench-api"
KID = "bench-key-1"
TOKEN_LIFETIME = 2 * 3600
CACHE_SIZE = 10_000  # run.py sizes the first_seen token pool from the same number

PREFIX = "/adyen/management"
WEBHOOKS_PATH = f"{PREFIX}/merchants/M123/webhooks"
UNKNOWN_PATH = f"{PREFIX}/merchants/M123/secrets"
READ_SCOPE = "psp.webhook:read"
WRITE_SCOPE = "psp.webhook:write"

# The route table every token-checking target enforces (the gateway reads it; naive_proxy.py and
# the HAProxy config below implement the same rules by hand).
MANAGEMENT_ROUTES = """\
name: adyen-management
upstream: http://127.0.0.1:{upstream_port}/v3
prefix: /adyen/management
scopes:
  psp.webhook:read:
  psp.webhook:write:
    implies: [psp.webhook:read]
  psp.onlinepayment:write:
  psp.accountsettings:write:
routes:
  GET /merchants/{{merchantId}}/webhooks: psp.webhook:read
  POST /merchants/{{merchantId}}/webhooks: psp.webhook:write
  GET /merchants/{{merchantId}}/webhooks/{{webhookId}}: psp.webhook:read
  PATCH /merchants/{{merchantId}}/webhooks/{{webhookId}}: psp.webhook:write
  DELETE /merchants/{{merchantId}}/webhooks/{{webhookId}}: psp.webhook:write
  POST /me/allowedOrigins: psp.onlinepayment:write
  GET /merchants/{{merchantId}}: [psp.accountsettings:write, psp.onlinepayment:write]
"""
MANAGEMENT_ROUTE_COUNT = 7

# A Moneyhub-style table with its rules in play on every request: an exclusive group, a scope
# that requires another, a parameterised scope bound to the path, and a route on the caller's user
RULES_ROUTES = """\
name: bank
upstream: http://127.0.0.1:{upstream_port}/v3
prefix: /bank
scopes:
  transactions:read:all:
  transactions:read:in:
  transactions:write:
    requires: [transactions:read:all, transactions:read:in]
  id:{{bank_id}}:
  id:all:
rules:
  exclusive:
    - ["id:{{bank_id}}", id:all]
    - [transactions:read:all, transactions:read:in]
routes:
  GET /users/{{userId}}/banks/{{bankId}}/transactions: {{scopes: [[transactions:read:in, "id:{{bankId}}"]], user: userId}}
"""
RULES_PATH = "/bank/users/bench-user/banks/B1/transactions"
BENCH_ROUTE_COUNT = MANAGEMENT_ROUTE_COUNT + 1  # every gateway config has both tables

# Live grants in play: a scope that counts while the client grant and the
# user grant are both active in the grant store (Fluz's rule), read from the view in memory
GRANTS_ROUTES = """\
name: ledger
upstream: http://127.0.0.1:{upstream_port}/v3
prefix: /ledger
scopes:
  accounts_details:read:
    grants: [client, user]
routes:
  GET /accounts/{{accountId}}/details: accounts_details:read
"""
GRANTS_PATH = "/ledger/accounts/A1/details"
GRANTS_SCOPE = "accounts_details:read"
RULES_SCOPE = "transactions:read:in transactions:write id:B1"

# A GraphQL route beside the REST ones: the same webhooks behind POST /graphql,
# with an SDL, so a repeated document costs a cache lookup and the field checks
GRAPHQL_ROUTES = """\
name: webhooks-graphql
upstream: http://127.0.0.1:{upstream_port}/v3
prefix: /gql
routes:
  POST /graphql:
    scopes: authenticated
    graphql:
      schema: webhooks.graphql
      fields:
        Query.webhooks: psp.webhook:read
"""
GRAPHQL_SCHEMA = """\
type Query { webhooks(merchantId: ID!): [Webhook!]! }
type Webhook { id: ID! url: String active: Boolean secret: String @requiresScopes(scopes: [["psp.webhook:write"]]) }
"""
GRAPHQL_PATH = "/gql/graphql"
GRAPHQL_BODY = b'{"query":"query Webhooks($merchant: ID!) { webhooks(merchantId: $merchant) { id url active } }","variables":{"merchant":"M123"}}'


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass
class Keys:
    private_pem: bytes
    public_pem: bytes
    jwks: dict
    forger_pem: bytes  # another key, for tokens that must be refused


def make_keys() -> Keys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e), "kid": KID, "use": "sig", "alg": "RS256"}
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Keys(_private_pem(key), public_pem, {"keys": [jwk]}, _private_pem(forger))


def claims(scope: str, subject: str = "bench-user", now: int | None = None, lifetime: int = TOKEN_LIFETIME, **extra) -> dict:
    now = int(time.time()) if now is None else now
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "client_id": "bench-client", "scope": scope,
            "iat": now, "exp": now + lifetime}
    body.update(extra)
    return body


def sign(private_key, body: dict, kid: str = KID) -> str:
    """An RS256 JWT; `private_key` is PEM bytes or a loaded key (faster for many tokens)."""
    return jwt.encode(body, private_key, algorithm="RS256", headers={"kid": kid})


@dataclass
class Tokens:
    read: str
    write: str
    rules: str = ""  # for the rules table: an exclusive group, a dependency, a bank and a user in play
    grants: str = ""  # for the live-grants table


def make_tokens(keys: Keys) -> Tokens:
    return Tokens(
        read=sign(keys.private_pem, claims(READ_SCOPE)), write=sign(keys.private_pem, claims(WRITE_SCOPE)),
        rules=sign(keys.private_pem, claims(RULES_SCOPE)), grants=sign(keys.private_pem, claims(GRANTS_SCOPE)),
    )


def refusal_tokens(keys: Keys) -> dict[str, str]:
    """Tokens every target must refuse with 401 (or 403 for the scope case): the sanity check."""
    now = int(time.time())
    header, payload, signature = sign(keys.private_pem, claims(READ_SCOPE)).split(".")
    widened = base64.urlsafe_b64encode(json.dumps(claims(WRITE_SCOPE, now=now)).encode()).rstrip(b"=").decode()
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return {
        "forged": sign(keys.forger_pem, claims(WRITE_SCOPE)),
        "expired": sign(keys.private_pem, claims(READ_SCOPE, now=now - 7200, lifetime=3600)),
        "wrong_audience": sign(keys.private_pem, claims(READ_SCOPE, aud="someone-else")),
        "wrong_issuer": sign(keys.private_pem, claims(READ_SCOPE, iss="https://evil.example")),
        "tampered": f"{header}.{widened}.{signature}",
        "alg_none": f"{unsigned_header}.{payload}.",
        "other_scope": sign(keys.private_pem, claims("psp.onlinepayment:write")),
    }


# --- first_seen: many distinct tokens, minted in parallel (one RSA signature is ~1 ms) ---

_MINT_KEY = None


def _mint_init(private_pem: bytes) -> None:
    # parse the PEM once per worker: loading an RSA key costs far more than one signature
    global _MINT_KEY
    _MINT_KEY = serialization.load_pem_private_key(private_pem, password=None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool ends its workers with SIGTERM: no traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops the pool


def _mint_range(bounds: tuple[int, int, int]) -> list[str]:
    start, stop, now = bounds
    return [sign(_MINT_KEY, claims(READ_SCOPE, subject=f"user-{i}", now=now, jti=f"first-seen-{i}")) for i in range(start, stop)]


def mint_distinct_tokens(private_pem: bytes, count: int, path: Path) -> float:
    """Write `count` distinct read tokens to `path`, one a line; returns the seconds it took."""
    started = time.monotonic()
    now = int(time.time())
    step = max(1, count // 64)
    chunks = [(start, min(count, start + step), now) for start in range(0, count, step)]
    with multiprocessing.Pool(os.cpu_count() or 1, initializer=_mint_init, initargs=(private_pem,)) as pool:
        tokens = [token for part in pool.map(_mint_range, chunks) for token in part]
    path.write_text("\n".join(tokens) + "\n")
    return time.monotonic() - started


# --- gateway config ---

def write_gateway_config(
    directory: Path, keys: Keys, upstream_port: int, generated_routes: int = 0, cache_size: int = CACHE_SIZE, grants: bool = False,
    graphql: bool = False,
    admin_port: int | None = None, shadow: bool = False, issuers: int = 1,
) -> Path:
    """gateway.yaml + routes/ in `directory`; `generated_routes` extra routes go in a second table;
    with `admin_port`, the admin listener, and so the metrics, are on; with `shadow`, the
    management table is in shadow mode; with `issuers` above 1, the tokens section lists that
    many issuer entries (the bench's tokens name the first)."""
    (directory / "routes").mkdir(parents=True, exist_ok=True)
    (directory / "keys").mkdir(exist_ok=True)
    (directory / "keys" / "jwks.json").write_text(json.dumps(keys.jwks))
    management = MANAGEMENT_ROUTES.format(upstream_port=upstream_port)
    if shadow:
        management = management.replace("\nprefix:", "\nmode: shadow\nprefix:", 1)
    (directory / "routes" / "adyen-management.yaml").write_text(management)
    (directory / "routes" / "bank.yaml").write_text(RULES_ROUTES.format(upstream_port=upstream_port))
    store = ""
    if grants:
        (directory / "routes" / "ledger.yaml").write_text(GRANTS_ROUTES.format(upstream_port=upstream_port))
        store = "grants:\n  store: sqlite:///grants.db\n"
        asyncio.run(_seed_grants(directory / "grants.db"))
    if graphql:
        (directory / "routes" / "webhooks-graphql.yaml").write_text(GRAPHQL_ROUTES.format(upstream_port=upstream_port))
        (directory / "routes" / "webhooks.graphql").write_text(GRAPHQL_SCHEMA)
    if generated_routes:
        lines = [f"  GET /generated/r{i}/items/{{id}}: s{i}" for i in range(generated_routes)]
        table = f"name: generated\nupstream: http://127.0.0.1:{upstream_port}/v3\nprefix: /generated-api\nroutes:\n" + "\n".join(lines) + "\n"
        (directory / "routes" / "generated.yaml").write_text(table)
    if admin_port is not None:
        (directory / "admin.token").write_text("bench-admin-token-0123456789\n")
        store += f"admin:\n  listen: 127.0.0.1:{admin_port}\n  token_file: admin.token\n"
    config = directory / "gateway.yaml"
    tokens = f"  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  algorithms: [RS256]\n  jwks_file: keys/jwks.json\n"
    if issuers > 1:
        entries = [tokens] + [tokens.replace(ISSUER, f"https://auth{n}.bench") for n in range(2, issuers + 1)]
        tokens = "  issuers:\n" + "".join("    - " + entry[2:].replace("\n  ", "\n      ") for entry in entries)
    config.write_text(f"""\
routes: routes/
tokens:
{tokens}  cache_size: {cache_size}
proxy:
  connect_timeout: 5
  read_timeout: 30
{store}""")
    return config


async def _seed_grants(path: Path) -> None:
    """The ledger's grants for the bench's client and user, active, in a real SQLite store."""
    from gateway.grants.sqlite import SQLiteStore

    store = SQLiteStore(path)
    try:
        await store.put_grant("ledger", "bench-client", None, GRANTS_SCOPE, None)
        await store.put_grant("ledger", "bench-client", "bench-user", GRANTS_SCOPE, None)
    finally:
        await store.aclose()


# --- nginx ---

def _nginx_common(directory: Path, name: str) -> str:
    # Own pid, logs and temp dirs so nothing collides with a system nginx or another run.
    temp = directory / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    return f"""\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {directory}/{name}.pid;
error_log {directory}/{name}-error.log warn;
events {{ worker_connections 8192; }}
"""


def _nginx_http_common(directory: Path, name: str) -> str:
    temp = directory / f"{name}-temp"
    return f"""\
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_max_body_size 0;
"""


def write_upstream_nginx(directory: Path, port: int, sink_port: int) -> Path:
    """The upstream: `{"ok":true}` for any path and method (`return` discards request bodies);
    requests marked X-Bench-Upload go on to sink.py, which reads the whole body first."""
    config = directory / "upstream-nginx.conf"
    config.write_text(_nginx_common(directory, "upstream") + f"""\
http {{
{_nginx_http_common(directory, "upstream")}
    upstream bench_sink {{
        server 127.0.0.1:{sink_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        location / {{
            if ($http_x_bench_upload) {{ rewrite ^ /bench-upload-sink last; }}
            return 200 '{{"ok":true}}';
        }}
        location = /bench-upload-sink {{
            internal;
            proxy_pass http://bench_sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
        }}
    }}
}}
""")
    return config


def write_proxy_nginx(directory: Path, port: int, upstream_port: int) -> Path:
    """nginx as a plain reverse proxy (no token checks) with a keep-alive pool to the upstream."""
    config = directory / "proxy-nginx.conf"
    config.write_text(_nginx_common(directory, "proxy") + f"""\
http {{
{_nginx_http_common(directory, "proxy")}
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location {PREFIX}/ {{
            proxy_pass http://bench_upstream/v3/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # stream uploads through, as the gateway does, instead of spooling them to disk
            proxy_request_buffering off;
        }}
    }}
}}
""")
    return config


def write_decision_nginx(directory: Path, port: int, decision_port: int, upstream_port: int) -> Path:
    """nginx in front of the decision listener: the shipped examples/nginx/scope-gateway.conf (every
    request asked about with auth_request, then proxy_pass), its addresses replaced by the bench's."""
    example = (Path(__file__).resolve().parent.parent / "examples" / "nginx" / "scope-gateway.conf").read_text()
    site = directory / "decision-nginx-site.conf"
    site.write_text(example.replace("127.0.0.1:8081", f"127.0.0.1:{decision_port}").replace("127.0.0.1:9000", f"127.0.0.1:{upstream_port}")
                    .replace("listen 8080;", f"listen 127.0.0.1:{port} backlog=4096;"))
    config = directory / "decision-nginx.conf"
    config.write_text(_nginx_common(directory, "decision") + f"""\
http {{
{_nginx_http_common(directory, "decision")}
    include {site};
}}
""")
    return config


# --- HAProxy ---

_JSON = "content-type application/json"


def _refuse(status: int, error: str, condition: str) -> str:
    return f"    http-request return status {status} {_JSON} string '{{\"error\":\"{error}\"}}' {condition}"


def write_haproxy(directory: Path, port: int, upstream_port: int, threads: int, public_pem: Path) -> Path:
    """HAProxy verifying the same RS256 tokens (jwt_verify against the PEM) and the same routes."""
    config = directory / f"haproxy-{threads}t.cfg"
    verify = f'var(txn.bearer),jwt_verify("RS256","{public_pem}") -m int 1'
    issuer = f"var(txn.bearer),jwt_payload_query('$.iss') -m str {ISSUER}"
    audience = f"var(txn.bearer),jwt_payload_query('$.aud') -m str {AUDIENCE}"
    scope_acls = "\n".join(
        f"    acl has_{name} var(txn.scope) -m reg '(^| ){pattern}( |$)'"
        for name, pattern in [
            ("webhook_read", r"psp\.webhook:(read|write)"),  # write implies read, as in the gateway's catalog
            ("webhook_write", r"psp\.webhook:write"),
            ("onlinepayment_write", r"psp\.onlinepayment:write"),
            ("accountsettings_write", r"psp\.accountsettings:write"),
        ]
    )
    refusals_403 = "\n".join([
        _refuse(403, "forbidden", "if { var(txn.need) -m str webhook_read } !has_webhook_read"),
        _refuse(403, "forbidden", "if { var(txn.need) -m str webhook_write } !has_webhook_write"),
        _refuse(403, "forbidden", "if { var(txn.need) -m str onlinepayment_write } !has_onlinepayment_write"),
        _refuse(403, "forbidden", "if { var(txn.need) -m str merchant_read } !has_onlinepayment_write !has_accountsettings_write"),
    ])
    text = f"""\
global
    nbthread {threads}
    maxconn 8000

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 60s

frontend bench
    bind 127.0.0.1:{port}
    # route table: the gateway's templates; anything else is 404 (checked first, as the gateway does)
    acl route_webhooks path_reg ^{PREFIX}/merchants/[^/]+/webhooks$
    acl route_webhook path_reg ^{PREFIX}/merchants/[^/]+/webhooks/[^/]+$
    acl route_origins path {PREFIX}/me/allowedOrigins
    acl route_merchant path_reg ^{PREFIX}/merchants/[^/]+$
    http-request set-var(txn.need) str(webhook_read) if route_webhooks METH_GET
    http-request set-var(txn.need) str(webhook_write) if route_webhooks {{ method POST }}
    http-request set-var(txn.need) str(webhook_read) if route_webhook METH_GET
    http-request set-var(txn.need) str(webhook_write) if route_webhook {{ method PATCH DELETE }}
    http-request set-var(txn.need) str(onlinepayment_write) if route_origins {{ method POST }}
    http-request set-var(txn.need) str(merchant_read) if route_merchant METH_GET
{_refuse(404, "not_found", "unless { var(txn.need) -m found }")}
    # credential: a Bearer token, RS256 with our kid, valid signature, exp in the future, iss, aud
    http-request set-var(txn.bearer) http_auth_bearer
{_refuse(401, "unauthorized", "unless { var(txn.bearer) -m found }")}
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request set-var(txn.kid) var(txn.bearer),jwt_header_query('$.kid')
{_refuse(401, "invalid_token", f"unless {{ var(txn.alg) -m str RS256 }} {{ var(txn.kid) -m str {KID} }}")}
{_refuse(401, "invalid_token", f"unless {{ {verify} }}")}
    http-request set-var(txn.now) date()
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
{_refuse(401, "invalid_token", "unless { var(txn.exp),sub(txn.now) -m int gt 0 }")}
{_refuse(401, "invalid_token", f"unless {{ {issuer} }} {{ {audience} }}")}
    # scopes
    http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('$.scope')
{scope_acls}
{refusals_403}
    # identity headers for the upstream, as the gateway sends them
    http-request set-header X-Auth-Subject %[var(txn.bearer),jwt_payload_query('$.sub')]
    http-request set-header X-Auth-Client %[var(txn.bearer),jwt_payload_query('$.client_id')]
    http-request set-header X-Auth-Scopes %[var(txn.scope)]
    http-request replace-path ^{PREFIX}(/.*)$ /v3\\1
    default_backend upstream

backend upstream
    http-reuse always
    server upstream 127.0.0.1:{upstream_port}
"""
    config.write_text(text)
    return config
