"""`gateway demo`: the real gateway, loaded from real files, in front of a built-in upstream.

Everything is made fresh in a new folder (an RSA key, its JWKS, gateway.yaml, route tables) and
loaded through the same `load_config` as `gateway serve`. The folder is kept when the demo stops,
so its key can go on minting tokens (`gateway token mint`) for the config it belongs to.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path

import uvicorn

from gateway.app import Gateway
from gateway.loading import load_config
from gateway.server import uvicorn_options
from gateway.signing import init_key_files
from gateway.types import Receive, Scope, Send

_TABLE = """\
name: adyen-management
upstream: http://127.0.0.1:{upstream_port}/v3
prefix: /adyen/management
scopes:
  psp.webhook:read:
    description: View webhook configurations
  psp.webhook:write:
    description: View, create, edit and delete webhook configurations
    implies: [psp.webhook:read]
  psp.accountsettings:write:
    description: Modify merchant account settings
  psp.onlinepayment:write:
    description: Process online payments
routes:
  GET /merchants/{{merchantId}}/webhooks: psp.webhook:read
  GET /merchants/{{merchantId}}/webhooks/{{webhookId}}: psp.webhook:read
  POST /merchants/{{merchantId}}/webhooks/{{webhookId}}/test: psp.webhook:read
  POST /merchants/{{merchantId}}/webhooks: psp.webhook:write
  PATCH /merchants/{{merchantId}}/webhooks/{{webhookId}}: psp.webhook:write
  DELETE /merchants/{{merchantId}}/webhooks/{{webhookId}}: psp.webhook:write
  GET /merchants/{{merchantId}}: [psp.accountsettings:write, psp.onlinepayment:write]
"""

# the scope rules of the five providers of routes/ on one table: Banqup's scope IDs, Moneyhub's exclusive groups,
# Paysera's SMS-confirmed extended scope, and a route on the caller's own user
_BANK_TABLE = """\
name: bank
upstream: http://127.0.0.1:{upstream_port}/v1
prefix: /bank
scopes:
  entity_read:
    description: View entity-related data
    aliases: [3f95524e-70aa-4663-8548-763583e08909]
  transactions:read:all:
    description: All transactions
  transactions:read:in:
    description: All incoming transactions
  balance:
    description: Get balance of user's wallet
  convert_currency:
    description: Make currency conversions (extended scope, confirmed by SMS)
    step_up: {{acr: [sms], max_age: 300}}
  accounts_details:read:
    description: Read account details such as the full account number (enabled per client)
    grants: [client]
rules:
  exclusive:
    - [transactions:read:all, transactions:read:in]
routes:
  GET /entities: entity_read
  GET /transactions: [transactions:read:all, transactions:read:in]
  POST /currency-conversions: convert_currency
  GET /users/{{userId}}/balance: {{scopes: balance, user: userId}}
  GET /accounts/details: accounts_details:read
"""

_GATEWAY = """\
routes: routes/
tokens:
  issuer: https://auth.demo.local
  audience: demo-api
  algorithms: [RS256]
  jwks_file: keys/jwks.json
proxy:
  connect_timeout: 5
  read_timeout: 30
grants:
  store: sqlite:///grants.db
  refresh: 1
"""

_ISSUER, _AUDIENCE = "https://auth.demo.local", "demo-api"


async def echo_upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """The demo upstream: answers every request with what it received, as JSON."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({
        "upstream": "demo",
        "method": scope["method"],
        "path": scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "body_bytes": size,
        "headers": {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]},
    }, indent=2).encode() + b"\n"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def write_demo_files(folder: Path, upstream_port: int) -> dict[str, str]:
    """Write key, JWKS, gateway.yaml and the route table; return demo tokens by name."""
    key = init_key_files(folder / "keys", "RS256")
    (folder / "routes").mkdir()
    (folder / "routes" / "adyen-management.yaml").write_text(_TABLE.format(upstream_port=upstream_port))
    (folder / "routes" / "bank.yaml").write_text(_BANK_TABLE.format(upstream_port=upstream_port))
    (folder / "gateway.yaml").write_text(_GATEWAY)
    now = int(time.time())

    def mint(scope: str, subject: str) -> str:
        claims = {"iss": _ISSUER, "aud": _AUDIENCE, "sub": subject, "client_id": "demo-client",
                  "scope": scope, "iat": now, "exp": now + 12 * 3600}
        return key.sign(claims)

    return {
        "read": mint("psp.webhook:read", "reader@demo"), "write": mint("psp.webhook:write", "writer@demo"),
        "bank": mint("3f95524e-70aa-4663-8548-763583e08909 balance convert_currency transactions:read:in accounts_details:read", "ana@demo"),
        "both": mint("transactions:read:all transactions:read:in", "ana@demo"),
    }


def _instructions(base: str, tokens: dict[str, str], folder: Path) -> str:
    webhooks = f"{base}/adyen/management/merchants/M123/webhooks"
    read = '-H "Authorization: Bearer $READ"'
    write = '-H "Authorization: Bearer $WRITE"'
    return f"""
Demo gateway on {base}, in front of a built-in upstream. Config, tables and keys: {folder}
(kept when the demo stops; delete it when you are done)

Paste these two lines first (demo tokens, valid 12 hours):
  READ={tokens["read"]}
  WRITE={tokens["write"]}

Allowed (200: the upstream echoes what it received, with X-Auth-* identity headers):
  curl -i {read} {webhooks}

Forbidden (403 insufficient_scope: a read token cannot create a webhook):
  curl -i -X POST {read} -H "Content-Type: application/json" -d '{{"url": "https://example.com/hook"}}' {webhooks}

Allowed with the write token (psp.webhook:write):
  curl -i -X POST {write} -H "Content-Type: application/json" -d '{{"url": "https://example.com/hook"}}' {webhooks}

Not found (404: no route, deny by default):
  curl -i {read} {base}/adyen/management/merchants/M123/apiCredentials

No token (401) and a path trick (400):
  curl -i {webhooks}
  curl -i --path-as-is {read} {base}/adyen/management/merchants/M123/webhooks/%2e%2e/secrets

Scope rules, on the /bank table ({folder}/routes/bank.yaml); paste these too:
  BANK={tokens["bank"]}
  BOTH={tokens["both"]}

An alias accepted (200: the token carries Banqup's scope ID 3f95524e-..., the upstream gets entity_read):
  curl -i -H "Authorization: Bearer $BANK" {base}/bank/entities

A rule broken (403 invalid_scope: transactions:read:all and :in are mutually exclusive):
  curl -i -H "Authorization: Bearer $BOTH" {base}/bank/transactions

A step-up needed (401 insufficient_user_authentication, acr_values="sms": convert_currency counts
only after an SMS-confirmed login at most 300 s old):
  curl -i -X POST -H "Authorization: Bearer $BANK" {base}/bank/currency-conversions

Another user's resource (404, as if it did not exist), then the caller's own (200):
  curl -i -H "Authorization: Bearer $BANK" {base}/bank/users/bob@demo/balance
  curl -i -H "Authorization: Bearer $BANK" {base}/bank/users/ana@demo/balance

A live grant (403 until the client grant exists; within a second of adding it, 200):
  curl -i -H "Authorization: Bearer $BANK" {base}/bank/accounts/details
  gateway grants add --config {folder}/gateway.yaml --api bank --client demo-client accounts_details:read
  curl -i -H "Authorization: Bearer $BANK" {base}/bank/accounts/details

Mint a token of your own (other scopes, another user, extra claims; --help lists the options):
  gateway token mint --key {folder}/keys/private.pem --config {folder}/gateway.yaml --scopes "psp.webhook:write" --sub you@demo

Explain a decision, step by step:
  gateway explain --config {folder}/gateway.yaml POST /adyen/management/merchants/M123/webhooks --scopes psp.webhook:read
  gateway explain --config {folder}/gateway.yaml POST /bank/currency-conversions --scopes convert_currency --claims '{{"sub": "ana@demo", "acr": "sms"}}'

Ctrl-C stops both servers.
"""


async def _serve_demo(host: str, port: int) -> int:
    upstream_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    upstream_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    upstream_socket.bind(("127.0.0.1", 0))
    upstream_port = upstream_socket.getsockname()[1]
    # kept: the printed `gateway token mint` and `gateway grants add` commands name its files
    folder = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    tokens = write_demo_files(folder, upstream_port)
    config = load_config(folder / "gateway.yaml")
    upstream = uvicorn.Server(uvicorn.Config(echo_upstream, log_level="warning", lifespan="off"))
    gateway = uvicorn.Server(uvicorn.Config(Gateway(config), host=host, port=port, log_level="info", **uvicorn_options()))
    upstream_task = asyncio.create_task(upstream.serve(sockets=[upstream_socket]))
    while not upstream.started:
        await asyncio.sleep(0.01)
    gateway_task = asyncio.create_task(gateway.serve())
    while not gateway.started and not gateway_task.done():
        await asyncio.sleep(0.01)
    if gateway_task.done():
        upstream.should_exit = True
        await upstream_task
        shutil.rmtree(folder)  # nothing was shown that names it
        print(f"could not listen on {host}:{port}; choose another with --port")
        return 1
    print(_instructions(f"http://{host}:{port}", tokens, folder), flush=True)
    await gateway_task
    upstream.should_exit = True
    await upstream_task
    return 0


def run_demo(host: str = "127.0.0.1", port: int = 8080) -> int:
    try:
        return asyncio.run(_serve_demo(host, port))
    except KeyboardInterrupt:
        return 0
