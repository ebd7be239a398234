"""Real nginx and Caddy in front of `gateway serve --mode decision`, each run from its shipped
example (examples/, only ports and paths replaced), beside proxy mode on the same tables: what
nginx's or Caddy's client gets is what proxy mode's client gets, an allowed request reaches the
upstream with the gateway's identity headers only, and a path trick is refused or decided on
exactly the target that is forwarded. Traefik's and Envoy's HTTP contracts (their binaries are not
packaged here) are tested with the requests their documentation says they send."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.app import Gateway
from gateway.loading import load_config
from tests.support import (
    EXAMPLE_DECISION,
    EXAMPLES,
    FrontProxy,
    GatewayProcess,
    LiveServer,
    RawResponse,
    Received,
    RecordingUpstream,
    Tap,
    answer,
    mint,
    raw_exchange,
    write_config,
)

TABLE = """\
name: payments
upstream: {upstream}
prefix: /api
scopes:
  read:
  admin:
  balance:
  convert:
    step_up: {acr: [sms], max_age: 300}
  id:all:
  id:api:
rules:
  exclusive:
    - [id:all, id:api]
routes:
  GET /items/{itemId}: read
  POST /items/{itemId}: read
  GET /status: public
  POST /convert: convert
  DELETE /stores/{storeId}: {scopes: admin, hide: true}
  GET /users/{userId}/balance: {scopes: balance, user: userId}
"""
READ = mint("read", lifetime=3600)
IDENTITY = (b"x-auth-subject", b"x-auth-client", b"x-auth-scopes")
# what a client sends to pass for someone else: none of it may reach the upstream
FORGED = [("X-Auth-Subject", "admin"), ("X-Auth-Client", "root-client"), ("X-Auth-Scopes", "admin balance"),
          ("X-Auth-Status", "200"), ("X-Original-URI", "/api/status"), ("X-Original-Method", "GET"),
          ("X-Forwarded-Uri", "/api/status"), ("X-Forwarded-Method", "GET")]

_ids = itertools.count()


class Site:
    """The module's moving parts: one upstream, the decision listener (behind a tap that keeps
    what it was asked), proxy mode on the same tables, and the two front proxies."""

    def __init__(self, folder: Path) -> None:
        # `connection: close`: a front proxy never reuses a connection this one-shot upstream closes
        self.upstream = RecordingUpstream(answer(headers=[(b"content-type", b"application/json"), (b"connection", b"close")]))
        config = write_config(folder, self.upstream.url, table=TABLE)
        # only 127.0.0.1 is trusted: a peer on 127.0.0.2 is a stranger
        config.write_text(config.read_text() + "decision:\n  trusted_proxies: [127.0.0.1/32]\n")
        self.decision = GatewayProcess(config, "uvicorn", ("--mode", "decision"))
        self.tap = Tap(self.decision.port)
        self.proxy = LiveServer(Gateway(load_config(config)))
        self.fronts: dict[str, FrontProxy] = {}
        self.folder = folder

    def front(self, name: str) -> FrontProxy:
        if name not in self.fronts:
            if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists():
                package = {"nginx": "nginx-light", "caddy": "caddy"}[name]
                print(f"{name} is not installed (apt-get install {package}): its front-proxy tests are skipped")
                pytest.skip(f"{name} is not installed (apt-get install {package})")
            self.fronts[name] = FrontProxy(name, self.folder / name, self.tap.port, self.upstream.port)
        return self.fronts[name]

    def received(self, request_id: str) -> list[Received]:
        return [request for request in self.upstream.received if request.header(b"x-request-id") == [request_id.encode()]]

    def close(self) -> None:
        for front in self.fronts.values():
            front.close()
        self.proxy.close()
        self.tap.close()
        self.decision.close()
        self.upstream.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = Site(tmp_path_factory.mktemp("front"))
    yield site
    site.close()


@pytest.fixture(params=["nginx", "caddy"], scope="module")
def front(request: pytest.FixtureRequest, site: Site) -> FrontProxy:
    return site.front(request.param)


def send(port: int, method: str, target: bytes | str, headers: list[tuple[str, str]] = (), *, token: str | None = None,
         source: str | None = None) -> tuple[str, RawResponse]:
    """One request with a fresh X-Request-Id (returned, to find what it caused), as raw bytes."""
    request_id = f"front-{next(_ids)}"
    target = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"host: api.test", b"connection: close", b"x-request-id: " + request_id.encode()]
    if token is not None:
        lines.append(b"authorization: Bearer " + token.encode())
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    if source is None:
        return request_id, raw_exchange(port, data)
    with socket.socket() as connection:
        connection.bind((source, 0))
        connection.settimeout(10)
        connection.connect(("127.0.0.1", port))
        connection.sendall(data)
        return request_id, _read(connection)


def _read(connection: socket.socket) -> RawResponse:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.split(b"\r\n")
    headers = [(name.strip().lower(), value.strip()) for name, _, value in (field.partition(b":") for field in fields)]
    return RawResponse(int(status_line.split()[1]), headers, body)


def refusal(response: RawResponse) -> tuple[int, dict[str, object], list[bytes], list[bytes]]:
    """What a client is told: the status, the JSON body, the challenges, the Retry-After."""
    def values(name: bytes) -> list[bytes]:
        return [value for key, value in response.headers if key.lower() == name]
    return response.status, json.loads(response.body), values(b"www-authenticate"), values(b"retry-after")


# --- nginx and Caddy in front -------------------------------------------------------------------

REFUSALS = [
    ("no token", "GET", "/api/items/1", None, 401, "unauthorized"),
    ("bad token", "GET", "/api/items/1", READ[:-4] + "AAAA", 401, "invalid_token"),
    ("step-up", "POST", "/api/convert", mint("convert"), 401, "insufficient_user_authentication"),
    ("forbidden", "GET", "/api/items/1", mint("admin"), 403, "forbidden"),
    ("invalid scope", "GET", "/api/items/1", mint("read id:all id:api"), 403, "invalid_scope"),
    ("no route", "GET", "/api/nothing", READ, 404, "not_found"),
    ("no route for the method", "PUT", "/api/items/1", READ, 404, "not_found"),
    ("hidden", "DELETE", "/api/stores/s1", READ, 404, "not_found"),
    ("another user's resource", "GET", "/api/users/someone-else/balance", mint("balance"), 404, "not_found"),
    ("outside every table", "GET", "/elsewhere", READ, 404, "not_found"),
    ("encoded slash", "GET", "/api/items/a%2Fb", READ, 400, "invalid_request"),
    ("two tokens", "GET", "/api/items/1?access_token=x", READ, 400, "invalid_request"),
]


@pytest.mark.parametrize(("what", "method", "target", "token", "status", "error"), REFUSALS, ids=[case[0] for case in REFUSALS])
def test_a_refusal_reaches_the_client_as_proxy_mode_gives_it(
    site: Site, front: FrontProxy, what: str, method: str, target: str, token: str | None, status: int, error: str,
) -> None:
    request_id, through = send(front.port, method, target, token=token)
    _, direct = send(site.proxy.port, method, target, token=token)
    assert refusal(direct)[0] == status and refusal(direct)[1]["error"] == error, direct
    assert refusal(through) == refusal(direct), (front.name, through.body)
    assert through.header(b"content-type").startswith(b"application/json")
    assert through.header(b"cache-control") == b"no-store"
    assert not site.received(request_id)
    assert len(site.tap.asked(request_id)) == 1  # decided by the gateway, not by the front proxy


def test_nginx_keeps_its_connections_to_the_gateway_across_refusals(site: Site) -> None:
    """auth_request reads no body of the answer: a refusal with one would close the keep-alive
    connection, and every refused request would pay a new connection to the gateway (a third of
    the throughput, measured). The body travels in X-Auth-Refusal, the answer itself has none."""
    nginx = site.front("nginx")
    send(nginx.port, "GET", "/api/items/1")  # the pool holds a connection from here on
    before = site.tap.connections
    for _ in range(10):
        _, response = send(nginx.port, "GET", "/api/items/1")
        assert response.status == 401
    assert site.tap.connections - before <= 1


@pytest.mark.parametrize("target", ["/api/items/1?x=1", "/api/status"])
def test_an_allowed_request_reaches_the_upstream_with_the_gateways_identity_only(site: Site, front: FrontProxy, target: str) -> None:
    request_id, through = send(front.port, "GET", target, FORGED, token=READ)
    assert through.status == 200, through.body
    [received] = site.received(request_id)
    assert received.target == target.encode()
    # proxy mode's identity headers for the same request (none on a public route), and nothing else
    # of the client's forgeries
    proxy_id, direct = send(site.proxy.port, "GET", target, token=READ)
    assert direct.status == 200
    [forwarded] = site.received(proxy_id)
    identity = {name: forwarded.header(name) for name in IDENTITY}
    assert {name: received.header(name) for name in IDENTITY} == identity
    if target == "/api/status":
        assert identity == {name: [] for name in IDENTITY}
    else:
        assert identity[b"x-auth-subject"] == [b"user-1"] and identity[b"x-auth-scopes"] == [b"read"]
    assert [name for name, _ in received.headers if name.lower().startswith(b"x-auth-") and name.lower() not in IDENTITY] == []
    if front.name == "nginx":  # what nginx tells the gateway stays between them
        assert received.header(b"x-original-uri") == received.header(b"x-original-method") == []


def test_a_client_sent_original_target_never_decides(site: Site, front: FrontProxy) -> None:
    """The client names a public path in every header a front proxy could take the target from."""
    request_id, through = send(front.port, "GET", "/api/items/1", FORGED)
    assert through.status == 401
    assert not site.received(request_id)


def test_a_post_body_reaches_the_upstream_and_not_the_gateway(site: Site, front: FrontProxy) -> None:
    request_id = f"front-{next(_ids)}"
    body = b'{"amount": 1}'
    request = (b"POST /api/items/1 HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\ncontent-type: application/json\r\n"
               b"x-request-id: " + request_id.encode() + b"\r\nauthorization: Bearer " + READ.encode() +
               b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    assert raw_exchange(front.port, request).status == 200
    [received] = site.received(request_id)
    assert (received.method, received.body) == (b"POST", body)


# Each is refused, or decided on exactly the target the upstream receives.
TRICKS = [
    "/api/items/1/../2", "/api/nothing/../items/1", "/api/items/%2e%2e/items/1", "/api/%2e%2e/api/items/1", "/api/items/%2E",
    "/api//items/1", "//api/items/1", "/api/items/a%2Fb", "/api/items/a%2fb", "/api/items/a%5Cb", "/api/items/a%00b",
    "/api/items/1;x=y", "/api/items;x=y/1", "/api/items/1#frag", "/api/items/1%23frag", "/api/items/%252e%252e",
    "/api/items/1?next=/../admin", "/api/items/.%2e/1", "/api/./items/1", "/api/items/1/",
]


@pytest.mark.parametrize("target", TRICKS)
def test_a_path_trick_is_refused_or_decided_on_exactly_the_forwarded_target(site: Site, front: FrontProxy, target: str) -> None:
    request_id, through = send(front.port, "GET", target, token=READ)
    received = site.received(request_id)
    asked = site.tap.asked(request_id)
    original = [headers.get(b"x-original-uri", headers.get(b"x-forwarded-uri")) for headers in asked]
    if received:
        assert through.status == 200
        assert original == [received[0].target], f"{front.name} decided on {original} and forwarded {received[0].target!r}"
    else:
        assert 400 <= through.status < 500, through
    if asked and b"#" not in original[0]:
        # what the gateway answered for it is what proxy mode answers for that target
        _, direct = send(site.proxy.port, "GET", original[0], token=READ)
        assert through.status == direct.status, (front.name, original[0], through.body, direct.body)


# --- the decision listener asked directly: an untrusted peer, a missing target --------------------

def test_an_untrusted_peer_is_refused_invalid_request_on_every_endpoint(site: Site) -> None:
    port = site.decision.port
    _, nginx = send(port, "GET", "/nginx", [("X-Original-Method", "GET"), ("X-Original-URI", "/api/items/1")], token=READ, source="127.0.0.2")
    assert (nginx.status, nginx.header(b"x-auth-status"), nginx.header(b"x-auth-error")) == (403, b"400", b"invalid_request")
    assert json.loads(nginx.header(b"x-auth-refusal"))["error"] == "invalid_request"
    _, forward = send(port, "GET", "/forward-auth", [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/api/items/1")], token=READ,
                      source="127.0.0.2")
    _, envoy = send(port, "GET", "/envoy/api/items/1", token=READ, source="127.0.0.2")
    for response in (forward, envoy):
        assert (response.status, response.json()["error"]) == (400, "invalid_request")
    # the same questions from the trusted peer are allowed: the peer alone made the difference
    _, trusted = send(port, "GET", "/envoy/api/items/1", token=READ)
    assert trusted.status == 200


@pytest.mark.parametrize(("endpoint", "headers"), [
    ("/nginx", [("X-Original-Method", "GET"), ("X-Original-URI", "/api/items/1#x")]),
    ("/forward-auth", [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/api/items/1#x")]),
])
def test_a_target_with_a_fragment_is_refused_invalid_request(site: Site, endpoint: str, headers: list[tuple[str, str]]) -> None:
    """nginx's $request_uri keeps a `#` the client sent; a fragment is never sent, so the target is
    ambiguous. (Caddy and Traefik escape it as %23 in both the question and the forwarded target.)"""
    _, response = send(site.decision.port, "GET", endpoint, headers, token=READ)
    status = int(response.header(b"x-auth-status") or response.status)
    assert (status, json.loads(response.header(b"x-auth-refusal") or response.body)["error"]) == (400, "invalid_request")


@pytest.mark.parametrize("missing", ["method", "target", "both"])
def test_a_question_without_the_original_request_is_refused_invalid_request(site: Site, missing: str) -> None:
    port = site.decision.port
    nginx_headers = [("X-Original-Method", "GET"), ("X-Original-URI", "/api/items/1")]
    forward_headers = [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/api/items/1")]
    keep = {"method": 1, "target": 0, "both": None}[missing]
    _, nginx = send(port, "GET", "/nginx", [nginx_headers[keep]] if keep is not None else [], token=READ)
    assert (nginx.status, nginx.header(b"x-auth-status"), nginx.header(b"x-auth-error")) == (403, b"400", b"invalid_request")
    _, forward = send(port, "GET", "/forward-auth", [forward_headers[keep]] if keep is not None else [], token=READ)
    assert (forward.status, forward.json()["error"]) == (400, "invalid_request")


# --- Traefik and Envoy: the requests they send, as their documentation gives them -----------------

def traefik_request(method: str, target: str, token: str | None, extra: list[tuple[str, str]] = ()) -> tuple[str, list[tuple[str, str]]]:
    """Traefik's forwardAuth (trustForwardHeader: false): a GET to the address with the client's
    headers (hop-by-hop ones removed) and X-Forwarded-For, -Method, -Proto, -Host and -Uri set from
    the request itself, replacing any the client sent."""
    headers = [(name, value) for name, value in extra if not name.lower().startswith("x-forwarded-")]
    headers += [("User-Agent", "curl/8"), ("Accept-Encoding", "gzip"), ("X-Forwarded-For", "192.0.2.7"),
                ("X-Forwarded-Method", method), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "api.test"),
                ("X-Forwarded-Uri", target)]
    return "/forward-auth", headers


def envoy_request(target: str, extra: list[tuple[str, str]] = ()) -> tuple[str, list[tuple[str, str]]]:
    """Envoy's ext_authz HTTP service (path_prefix /envoy): the client's method, the prefix and the
    client's path and query, Host, Authorization, Content-Length 0, and the allowed_headers
    (x-request-id in the example); nothing else of the client's."""
    return "/envoy" + target, [("content-length", "0"), ("x-envoy-expected-rq-timeout-ms", "1000"), *extra]


CONTRACT_CASES = [(what, method, target, token) for what, method, target, token, _, _ in REFUSALS] + [
    ("allowed", "GET", "/api/items/1?x=1", READ), ("public", "GET", "/api/status", None),
    ("dot segment", "GET", "/api/nothing/../items/1", READ),
]


@pytest.mark.parametrize("proxy", ["traefik", "envoy"])
@pytest.mark.parametrize(("what", "method", "target", "token"), CONTRACT_CASES, ids=[case[0] for case in CONTRACT_CASES])
def test_traefik_and_envoy_pass_on_proxy_modes_answer(site: Site, proxy: str, what: str, method: str, target: str, token: str | None) -> None:
    if proxy == "traefik":
        path, headers = traefik_request(method, target, token, FORGED)
        _, answer_ = send(site.decision.port, "GET", path, headers, token=token)
    else:
        path, headers = envoy_request(target)
        _, answer_ = send(site.decision.port, method, path, headers, token=token)
    proxy_id, direct = send(site.proxy.port, method, target, token=token)
    if direct.status == 200:
        assert (answer_.status, answer_.body) == (200, b"")
        forwarded = site.received(proxy_id)
        for name in IDENTITY:
            expected = forwarded[0].header(name) if forwarded else []
            assert [value for key, value in answer_.headers if key == name] == expected, name
    else:
        assert refusal(answer_) == refusal(direct)
        assert answer_.header(b"x-auth-status") is None  # the nginx form is for /nginx alone


def test_the_traefik_and_envoy_examples_send_what_the_contract_tests_send() -> None:
    """Their binaries are not packaged here: the shipped configs are read for the settings the
    requests above assume."""
    traefik = yaml.safe_load((EXAMPLES / "traefik" / "dynamic.yml").read_text())["http"]
    auth = traefik["middlewares"]["scope-gateway"]["forwardAuth"]
    assert auth["address"] == f"http://{EXAMPLE_DECISION}/forward-auth" and auth["trustForwardHeader"] is False
    assert sorted(name.lower() for name in auth["authResponseHeaders"]) == sorted(name.decode() for name in IDENTITY)
    assert traefik["routers"]["api"]["middlewares"] == ["scope-gateway"] and traefik["routers"]["api"]["rule"] == "PathPrefix(`/`)"

    envoy = yaml.safe_load((EXAMPLES / "envoy" / "envoy.yaml").read_text())["static_resources"]
    manager = envoy["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert (manager["normalize_path"], manager["merge_slashes"], manager["path_with_escaped_slashes_action"]) == (True, True, "REJECT_REQUEST")
    filters = {entry["name"]: entry["typed_config"] for entry in manager["http_filters"]}
    assert list(filters)[-1] == "envoy.filters.http.router"
    assert list(filters).index("envoy.filters.http.header_mutation") < list(filters).index("envoy.filters.http.ext_authz")
    removed = [mutation["remove"] for mutation in filters["envoy.filters.http.header_mutation"]["mutations"]["request_mutations"]]
    assert sorted(removed) == sorted(name.decode() for name in IDENTITY)
    ext_authz = filters["envoy.filters.http.ext_authz"]
    assert ext_authz["failure_mode_allow"] is False and ext_authz["http_service"]["path_prefix"] == "/envoy"
    upstream = ext_authz["http_service"]["authorization_response"]["allowed_upstream_headers"]["patterns"]
    assert sorted(pattern["exact"] for pattern in upstream) == sorted(name.decode() for name in IDENTITY)
    assert [pattern["exact"] for pattern in ext_authz["allowed_headers"]["patterns"]] == ["x-request-id"]
    cluster = next(cluster for cluster in envoy["clusters"] if cluster["name"] == ext_authz["http_service"]["server_uri"]["cluster"])
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert f"{address['address']}:{address['port_value']}" == EXAMPLE_DECISION
