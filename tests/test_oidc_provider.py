"""Against real authorization servers nobody here wrote: node-oidc-provider (tests/oidc) as two
issuers on loopback, issuing JWT access tokens (RFC 9068, resource indicators) and opaque tokens
answered by its introspection endpoint, each carrying the client's org_id. Tokens are obtained
over HTTP with client_credentials, as a client would; the gateway runs over ASGI in front of a
real loopback upstream. Nothing is mocked.

Needs Node.js and `npm ci --prefix tests/oidc`; without them, every test here is skipped, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.app import Gateway
from gateway.loading import load_config
from tests.support import RecordingUpstream

pytestmark = pytest.mark.anyio
FIXTURE = Path(__file__).parent / "oidc"
INSTALL = "npm ci --prefix tests/oidc"
JWT_RESOURCE = "https://api.test/jwt"
OPAQUE_RESOURCE = "https://api.test/opaque"
AUDIENCE = "payments-api"
CACHE = 30  # seconds an introspection answer is reused


def _unavailable() -> str | None:
    if shutil.which("node") is None:
        return f"node is not installed: these tests need Node.js 20+ and `{INSTALL}`"
    if not (FIXTURE / "node_modules" / "oidc-provider" / "package.json").is_file():
        return f"node-oidc-provider is not installed: run `{INSTALL}`"
    return None


class Providers:
    """The node process running issuers A and B (tests/oidc/providers.mjs)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process = subprocess.Popen(
            ["node", str(FIXTURE / "providers.mjs"), str(folder)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.process.stdout.readline() if self.process.stdout else ""), daemon=True)
        reader.start()
        reader.join(30)
        if not ready or not ready[0].startswith('{"ready":true'):
            self.stop()
            raise RuntimeError(f"node-oidc-provider did not start: {ready}")
        self.url = {issuer["name"]: issuer["url"] for issuer in json.loads(ready[0])["issuers"]}

    def token(self, issuer: str, resource: str, client: str = "acme-app", scope: str = "reports:read") -> str:
        """An access token, obtained as a client obtains one: client_credentials at the token endpoint."""
        answer = httpx.post(
            f"{self.url[issuer]}/token", auth=(client, client.replace("-app", "-secret")),
            data={"grant_type": "client_credentials", "scope": scope, "resource": resource},
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["access_token"]  # type: ignore[no-any-return]

    def revoke(self, issuer: str, token: str, client: str = "acme-app") -> None:
        answer = httpx.post(f"{self.url[issuer]}/token/revocation", auth=(client, client.replace("-app", "-secret")), data={"token": token})
        assert answer.status_code == 200, answer.text

    def rotate(self, issuer: str) -> str:
        """A new signing key at the issuer, the old one retired; the new kid."""
        return httpx.post(f"{self.url[issuer]}/admin/rotate").json()["kid"]  # type: ignore[no-any-return]

    def private_key(self, issuer: str) -> tuple[Any, str]:
        """The issuer's signing key and kid: what someone holding that issuer's key could sign with."""
        [jwk] = json.loads((self.folder / f"{issuer}.private.jwks.json").read_text())["keys"]
        return jwt.algorithms.RSAAlgorithm.from_jwk(jwk), jwk["kid"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def providers(tmp_path: Path) -> Iterator[Providers]:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    running = Providers(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def gateway_config(tmp_path: Path, providers: Providers, upstream: RecordingUpstream, *, table_issuers: str | None = None) -> Path:
    (tmp_path / "gateway.secret").write_text("gateway-secret\n")
    (tmp_path / "routes").mkdir()
    head = f"issuers: [{table_issuers}]\n" if table_issuers else ""
    (tmp_path / "routes" / "reports.yaml").write_text(f"""\
name: reports
upstream: {upstream.url}
{head}routes:
  GET /orgs/{{orgId}}/reports: {{scopes: reports:read, claims: {{org_id: "{{orgId}}"}}}}
  POST /orgs/{{orgId}}/reports: {{scopes: reports:write, claims: {{org_id: "{{orgId}}"}}}}
""")
    a, b = providers.url["a"], providers.url["b"]
    (tmp_path / "gateway.yaml").write_text(f"""\
routes: routes/
tokens:
  issuers:
    - issuer: {a}
      audience: {AUDIENCE}
      algorithms: [RS256]
      jwks_url: {a}/jwks
      jwks_refetch_interval: 0
      introspection:
        url: {a}/token/introspection
        client_id: gateway
        client_secret_file: gateway.secret
        cache: {CACHE}
    - issuer: {b}
      audience: {AUDIENCE}
      algorithms: [RS256]
      jwks_url: {b}/jwks
      jwks_refetch_interval: 0
  opaque: {a}
""")
    return tmp_path / "gateway.yaml"


@pytest.fixture
async def serve(tmp_path: Path, providers: Providers, upstream: RecordingUpstream) -> AsyncIterator[Any]:
    """`serve(table_issuers=None)`: the gateway started (JWKS fetched), and an httpx client on it."""
    started: list[tuple[Gateway, httpx.AsyncClient]] = []

    async def start(table_issuers: str | None = None) -> tuple[Gateway, httpx.AsyncClient]:
        app = Gateway(load_config(gateway_config(tmp_path, providers, upstream, table_issuers=table_issuers)))
        await app.runtime.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        started.append((app, client))
        return app, client

    yield start
    for app, client in started:
        await client.aclose()
        await app.runtime.aclose()


async def get(client: httpx.AsyncClient, token: str, org: str = "acme") -> httpx.Response:
    return await client.get(f"/orgs/{org}/reports", headers={"Authorization": f"Bearer {token}"})


async def test_both_issuers_jwt_and_opaque_tokens_are_accepted(serve: Any, providers: Providers, upstream: RecordingUpstream) -> None:
    _, client = await serve()
    tokens = {
        "a-jwt": providers.token("a", JWT_RESOURCE), "b-jwt": providers.token("b", JWT_RESOURCE),
        "a-opaque": providers.token("a", OPAQUE_RESOURCE),
    }
    assert tokens["a-jwt"].count(".") == 2 and tokens["a-opaque"].count(".") == 0  # what the server issued
    for name, token in tokens.items():
        answer = await get(client, token)
        assert answer.status_code == 200, (name, answer.text)
    assert [received.header(b"x-auth-client") for received in upstream.received] == [[b"acme-app"]] * 3
    # B's opaque tokens are not A's to vouch for: introspected at A, they are not active there
    refused = await get(client, providers.token("b", OPAQUE_RESOURCE))
    assert refused.status_code == 401 and "not active" in refused.json()["error_description"]


async def test_the_custom_claim_binds_the_tenant(serve: Any, providers: Providers, upstream: RecordingUpstream) -> None:
    _, client = await serve()
    for token in (providers.token("a", JWT_RESOURCE, "evil-app"), providers.token("b", JWT_RESOURCE, "evil-app"),
                  providers.token("a", OPAQUE_RESOURCE, "evil-app")):
        assert (await get(client, token, "acme")).status_code == 404  # another tenant: as if nothing were there
        assert (await get(client, token, "evil")).status_code == 200
    # before the scope requirement: another tenant learns nothing even where it lacks the scope
    write = await client.post("/orgs/acme/reports", headers={"Authorization": f"Bearer {providers.token('a', JWT_RESOURCE, 'evil-app')}"})
    assert write.status_code == 404
    own = await client.post("/orgs/evil/reports", headers={"Authorization": f"Bearer {providers.token('a', JWT_RESOURCE, 'evil-app')}"})
    assert own.status_code == 403 and own.json()["error"] == "forbidden"
    assert len(upstream.received) == 3


async def test_a_table_accepts_only_the_issuers_it_lists(serve: Any, providers: Providers, upstream: RecordingUpstream) -> None:
    _, client = await serve(table_issuers=providers.url["b"])
    for token in (providers.token("a", JWT_RESOURCE), providers.token("a", OPAQUE_RESOURCE)):
        refused = await get(client, token)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    assert (await get(client, providers.token("b", JWT_RESOURCE))).status_code == 200
    assert len(upstream.received) == 1


async def test_a_token_naming_one_issuer_signed_with_another_s_key_of_the_same_kid_is_refused(
    serve: Any, providers: Providers, upstream: RecordingUpstream,
) -> None:
    _, client = await serve()
    real = jwt.decode(providers.token("a", JWT_RESOURCE), options={"verify_signature": False})
    b_key, b_kid = providers.private_key("b")
    a_key, a_kid = providers.private_key("a")
    assert a_kid == b_kid  # both servers sign under kid k1
    forged = jwt.encode(real, b_key, algorithm="RS256", headers={"kid": b_kid, "typ": "at+jwt"})
    refused = await get(client, forged)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    assert "signature verification failed" in refused.json()["error_description"]
    # the same claims signed with A's own key pass: the signer alone made the difference
    assert (await get(client, jwt.encode(real, a_key, algorithm="RS256", headers={"kid": a_kid, "typ": "at+jwt"}))).status_code == 200
    assert len(upstream.received) == 1


async def test_a_key_rotated_at_the_server_is_followed(serve: Any, providers: Providers) -> None:
    _, client = await serve()
    before = providers.token("a", JWT_RESOURCE)
    assert (await get(client, before)).status_code == 200
    assert providers.rotate("a") == "k2"
    after = providers.token("a", JWT_RESOURCE)
    assert jwt.get_unverified_header(after)["kid"] == "k2"
    assert (await get(client, after)).status_code == 200  # an unknown kid: A's JWKS fetched again
    # the retired key verifies nothing any more, not even a token remembered from before
    refused = await get(client, before)
    assert refused.status_code == 401 and 'kid "k1"' in refused.json()["error_description"]
    assert (await get(client, providers.token("b", JWT_RESOURCE))).status_code == 200  # B untouched


async def test_revocation_is_seen_through_introspection_once_the_cache_time_is_over(serve: Any, providers: Providers) -> None:
    app, client = await serve()
    introspector = app.runtime.authenticator.introspector
    token = providers.token("a", OPAQUE_RESOURCE)
    now = time.time()  # after the token was issued: its iat is never in the clock's future
    introspector.clock = lambda: now  # a fake clock: no sleeping through the cache time
    assert (await get(client, token)).status_code == 200
    providers.revoke("a", token)
    assert (await get(client, token)).status_code == 200  # within the cache time, as configured
    now += CACHE + 1
    refused = await get(client, token)
    assert refused.status_code == 401 and "not active" in refused.json()["error_description"]


async def test_a_stopped_server_gives_503_for_opaque_tokens_never_a_guess(serve: Any, providers: Providers, upstream: RecordingUpstream) -> None:
    _, client = await serve()
    jwt_token, opaque = providers.token("a", JWT_RESOURCE), providers.token("a", OPAQUE_RESOURCE)
    providers.stop()
    failed = await get(client, opaque)
    assert failed.status_code == 503 and failed.json()["error"] == "temporarily_unavailable"
    assert failed.headers["retry-after"].isdigit()
    assert (await get(client, jwt_token)).status_code == 200  # JWTs need only the keys already fetched
    assert len(upstream.received) == 1
