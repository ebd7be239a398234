"""The gateway as an ASGI app, driven through httpx.ASGITransport; upstreams mocked with respx."""

import asyncio
import gc
import gzip
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import respx

from gateway.app import Gateway
from gateway.loading import load_config
from tests.support import QUERIES_WITHOUT_TOKEN, QUERY_TOKENS, RecordingUpstream, answer, mint, raw_claims, sign_raw, write_config

pytestmark = pytest.mark.anyio
UPSTREAM = "http://upstream.test:8080"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = Gateway(load_config(write_config(tmp_path, upstream=f"{UPSTREAM}/v3", proxy="proxy:\n  client: httpx\n")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 50000)), base_url="http://gateway.test") as http:
        yield http


@pytest.fixture
def mock_upstream() -> AsyncIterator[respx.Route]:
    with respx.mock(assert_all_called=False) as router:
        yield router.route(host="upstream.test").mock(return_value=httpx.Response(200, json={"upstream": True}))


def bearer(scope: str | None = "psp.webhook:read", **claims: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(scope, **claims)}"}


# (method, path, headers, status, error, WWW-Authenticate must contain)
ANSWERS = [
    ("GET", "/api/merchants/M1/webhooks", bearer(), 200, None, None),
    ("GET", "/api/merchants/M1/webhooks", bearer("psp.webhook:write"), 200, None, None),
    ("GET", "/api/status", {}, 200, None, None),
    ("GET", "/api/status", {"Authorization": "Bearer not-a-token"}, 200, None, None),
    ("GET", "/api/me", bearer(None), 200, None, None),
    ("GET", "/api/merchants/M1/webhooks", {}, 401, "unauthorized", 'Bearer realm="payments"'),
    ("GET", "/api/me", {}, 401, "unauthorized", 'Bearer realm="payments"'),
    ("GET", "/api/merchants/M1/webhooks", {"Authorization": "Basic dTpw"}, 401, "unauthorized", 'Bearer realm="payments"'),
    ("GET", "/api/merchants/M1/webhooks", {"Authorization": "Bearer a.b.c"}, 401, "invalid_token", 'error="invalid_token"'),
    ("GET", "/api/merchants/M1/webhooks", bearer(lifetime=-60), 401, "invalid_token", 'error="invalid_token"'),
    ("GET", "/api/merchants/M1/webhooks", bearer(key="rsa-other"), 401, "invalid_token", 'error="invalid_token"'),
    ("GET", "/api/merchants/M1/webhooks", bearer(aud="other"), 401, "invalid_token", 'error="invalid_token"'),
    ("GET", "/api/merchants/M1/webhooks", {"Authorization": "Bearer a b"}, 400, "invalid_request", 'error="invalid_request"'),
    ("POST", "/api/merchants/M1/webhooks", bearer(), 403, "forbidden", 'error="insufficient_scope", error_description='),
    ("POST", "/api/merchants/M1/webhooks", bearer(), 403, "forbidden", 'scope="psp.webhook:write"'),
    ("GET", "/api/merchants/M1/webhooks/special", bearer(), 403, "forbidden", 'scope="psp.admin"'),
    ("GET", "/api/merchants/M1/secrets", bearer(), 404, "not_found", None),
    ("GET", "/api/merchants/M1/secrets", {}, 404, "not_found", None),
    ("DELETE", "/api/status", {}, 404, "not_found", None),
    ("GET", "/other/merchants/M1/webhooks", bearer(), 404, "not_found", None),
    ("GET", "/api/merchants/M1/webhooks/", bearer(), 400, "invalid_request", None),
    ("GET", "/api/merchants/M1%2Fx/webhooks", bearer(), 400, "invalid_request", None),
]


@pytest.mark.parametrize(("method", "path", "headers", "status", "error", "challenge"), ANSWERS)
async def test_answers_and_refusals(client: httpx.AsyncClient, mock_upstream: respx.Route, method: str, path: str,
                                    headers: dict, status: int, error: str | None, challenge: str | None) -> None:
    response = await client.request(method, path, headers=headers)
    assert response.status_code == status, response.text
    if error is None:
        assert mock_upstream.call_count == 1
        assert response.json() == {"upstream": True}
        return
    assert mock_upstream.call_count == 0, "a refused request reached the upstream"
    body = response.json()
    assert body["error"] == error and body["error_description"]
    assert response.headers["content-type"] == "application/json"
    if challenge is None:
        assert "www-authenticate" not in response.headers
    else:
        assert challenge in response.headers["www-authenticate"]
        assert response.headers["www-authenticate"].startswith('Bearer realm="payments"')


async def test_the_query_token_is_refused_with_a_challenge(client: httpx.AsyncClient, mock_upstream: respx.Route) -> None:
    response = await client.get("/api/merchants/M1/webhooks", params={"access_token": mint()})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert 'error="invalid_request"' in response.headers["www-authenticate"]
    assert mock_upstream.call_count == 0


async def test_a_remembered_authorization_value_still_meets_every_credential_rule(
    client: httpx.AsyncClient, mock_upstream: respx.Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.authentication

    readings = []
    real_bearer_token = gateway.authentication.bearer_token
    monkeypatch.setattr(gateway.authentication, "bearer_token", lambda *args: readings.append(args) or real_bearer_token(*args))
    value = bearer()["Authorization"]
    path = "/api/merchants/M1/webhooks"
    assert (await client.get(path, headers={"Authorization": value})).status_code == 200
    assert (await client.get(path, headers={"Authorization": value})).status_code == 200
    assert len(readings) == 1, "the second request presented a value verified before: no second reading"
    recalled = mock_upstream.calls.last.request.headers
    assert (recalled["x-auth-scopes"], recalled["x-auth-subject"], recalled["x-auth-client"]) == ("psp.webhook:read", "user-1", "client-1")
    # the value remembered, but a token in the query string too, or the value twice: refused as ever
    refused = [
        await client.get(path, params={"access_token": "x"}, headers={"Authorization": value}),
        await client.get(path, headers=[("Authorization", value), ("Authorization", value)]),
    ]
    assert [(response.status_code, response.json()["error"]) for response in refused] == [(400, "invalid_request")] * 2
    assert len(readings) == 3
    # and it grants what it granted, nothing more
    assert (await client.post(path, headers={"Authorization": value})).status_code == 403
    assert mock_upstream.call_count == 2


@pytest.mark.parametrize("query", QUERY_TOKENS, ids=[query.decode("latin-1") for query in QUERY_TOKENS])
async def test_a_query_token_under_any_name_is_refused_even_for_a_remembered_authorization(
    client: httpx.AsyncClient, mock_upstream: respx.Route, query: bytes
) -> None:
    path = "/api/merchants/M1/webhooks"
    value = bearer()["Authorization"]
    assert (await client.get(path, headers={"Authorization": value})).status_code == 200  # now remembered
    for headers in ({"Authorization": value}, {}):
        response = await client.get(f"{path}?{query.decode('latin-1')}", headers=headers)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request"), response.text
        assert "never in the query string" in response.json()["error_description"]
        assert 'error="invalid_request"' in response.headers["www-authenticate"]
    assert mock_upstream.call_count == 1, "a request with a query token reached the upstream"


@pytest.mark.parametrize("query", QUERIES_WITHOUT_TOKEN, ids=[query.decode("latin-1") or "(none)" for query in QUERIES_WITHOUT_TOKEN])
async def test_a_query_without_a_token_parameter_is_forwarded_as_sent(client: httpx.AsyncClient, mock_upstream: respx.Route, query: bytes) -> None:
    value = bearer()["Authorization"]
    for _ in range(2):  # read, then recalled
        response = await client.get(f"/api/merchants/M1/webhooks?{query.decode('latin-1')}", headers={"Authorization": value})
        assert response.status_code == 200, response.text
    assert mock_upstream.calls.last.request.url.query == query


MALFORMED_CLAIMS = [
    (lambda: sign_raw(raw_claims(exp="Infinity", scope='"psp.webhook:read"')), "claim 'exp' must be a finite number"),
    (lambda: sign_raw(raw_claims(exp="1e400", scope='"psp.webhook:read"')), "claim 'exp' must be a finite number"),
    (lambda: sign_raw(raw_claims(nbf="NaN", scope='"psp.webhook:read"')), "claim 'nbf' must be a finite number"),
    (lambda: mint("psp.webhook:read\tpsp.admin"), "claim 'scope' is not a valid scope string"),
    (lambda: mint("psp.webhook:read\u00a0psp.admin"), "claim 'scope' is not a valid scope string"),
]


@pytest.mark.parametrize(("token", "words"), MALFORMED_CLAIMS, ids=["exp Infinity", "exp 1e400", "nbf NaN", "scope tab", "scope nbsp"])
async def test_malformed_claims_are_an_invalid_token(client: httpx.AsyncClient, mock_upstream: respx.Route, token: Callable[[], str], words: str) -> None:
    value = f"Bearer {token()}"
    for _ in range(2):  # and never remembered as verified
        response = await client.get("/api/merchants/M1/webhooks", headers={"Authorization": value})
        assert (response.status_code, response.json()["error"]) == (401, "invalid_token")
        assert words in response.json()["error_description"]
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert mock_upstream.call_count == 0


async def test_forwarded_request_is_the_matched_one_with_identity_headers(client: httpx.AsyncClient, mock_upstream: respx.Route) -> None:
    response = await client.post(
        "/api/merchants/M%41/webhooks?b=2&a=1", content=b'{"url": "x"}',
        headers={**bearer("psp.webhook:write", sub="alice", client_id="shop"), "X-Auth-Subject": "mallory",
                 "X-Auth-Scopes": "everything", "X-Auth-Client": "evil", "X-HTTP-Method-Override": "DELETE",
                 "X-Method-Override": "DELETE", "X-HTTP-Method": "DELETE", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    sent = mock_upstream.calls.last.request
    assert sent.method == "POST" and sent.url.raw_path == b"/v3/merchants/M%41/webhooks?b=2&a=1"
    assert sent.content == b'{"url": "x"}'
    assert sent.headers.get_list("x-auth-subject") == ["alice"]
    assert sent.headers.get_list("x-auth-client") == ["shop"]
    assert sent.headers.get_list("x-auth-scopes") == ["psp.webhook:read psp.webhook:write"]
    for override in ("x-http-method-override", "x-method-override", "x-http-method"):
        assert override not in sent.headers
    assert sent.headers["host"] == "upstream.test:8080"
    assert sent.headers["x-forwarded-host"] == "gateway.test"
    assert sent.headers["x-forwarded-for"] == "203.0.113.9"
    assert sent.headers["x-forwarded-proto"] == "http"
    assert sent.headers["authorization"].startswith("Bearer ")


async def test_public_routes_forward_no_identity_even_if_the_client_sends_one(client: httpx.AsyncClient, mock_upstream: respx.Route) -> None:
    await client.get("/api/status", headers={"X-Auth-Subject": "admin", "X-Auth-Scopes": "psp.admin"})
    sent = mock_upstream.calls.last.request
    assert "x-auth-subject" not in sent.headers and "x-auth-scopes" not in sent.headers


async def test_client_forwarding_headers_are_replaced_by_the_real_peer(client: httpx.AsyncClient, mock_upstream: respx.Route) -> None:
    await client.get("/api/status", headers={"X-Forwarded-For": "10.0.0.1", "X-Forwarded-Host": "evil.test",
                                             "X-Forwarded-Proto": "https", "Forwarded": "for=10.0.0.1", "X-Real-IP": "10.0.0.1"})
    sent = mock_upstream.calls.last.request
    assert sent.headers.get_list("x-forwarded-for") == ["203.0.113.9"]
    assert sent.headers.get_list("x-forwarded-host") == ["gateway.test"]
    assert sent.headers.get_list("x-forwarded-proto") == ["http"]
    assert "forwarded" not in sent.headers and "x-real-ip" not in sent.headers


async def test_a_trusted_proxy_may_pass_on_the_client_address(tmp_path: Path) -> None:
    app = Gateway(load_config(write_config(tmp_path, upstream=UPSTREAM, proxy="proxy:\n  client: httpx\n  trusted_proxies: [203.0.113.0/24]\n")))
    with respx.mock() as router:
        upstream = router.route(host="upstream.test").mock(return_value=httpx.Response(204))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 1)), base_url="http://gw") as http:
            await http.get("/api/status", headers={"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"})
    sent = upstream.calls.last.request
    assert sent.headers["x-forwarded-for"] == "198.51.100.7, 203.0.113.9"
    assert sent.headers["x-forwarded-proto"] == "https"


async def test_hop_by_hop_headers_are_removed_both_ways(client: httpx.AsyncClient, mock_upstream: respx.Route) -> None:
    mock_upstream.return_value = httpx.Response(200, headers=[
        ("Connection", "close, X-Upstream-Private"), ("X-Upstream-Private", "1"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"), ("Trailer", "X-T"), ("Upgrade", "h2c"), ("X-Kept", "yes"),
    ], content=b"ok")
    response = await client.get("/api/status", headers={
        "Connection": "X-Client-Private", "X-Client-Private": "1", "Keep-Alive": "300", "TE": "trailers",
        "Proxy-Authorization": "Basic x", "Upgrade": "websocket", "Proxy-Connection": "keep-alive", "Trailer": "X", "X-Kept": "yes",
    })
    sent = mock_upstream.calls.last.request
    for name in ("connection", "x-client-private", "keep-alive", "te", "proxy-authorization", "upgrade", "proxy-connection", "trailer"):
        assert name not in sent.headers, name
    assert sent.headers["x-kept"] == "yes"
    for name in ("x-upstream-private", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert name not in response.headers, name
    assert response.headers["x-kept"] == "yes" and response.content == b"ok"


async def test_upstream_status_headers_and_body_pass_through(client: httpx.AsyncClient, mock_upstream: respx.Route) -> None:
    mock_upstream.return_value = httpx.Response(418, headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Encoding", "gzip")], content=gzip.compress(b"raw body"))
    async with client.stream("GET", "/api/status") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 418
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == b"raw body"  # passed on still compressed


@pytest.mark.parametrize(("failure", "status", "error"), [
    (httpx.ConnectError("refused"), 502, "bad_gateway"),
    (httpx.ReadError("reset"), 502, "bad_gateway"),
    (httpx.RemoteProtocolError("garbage"), 502, "bad_gateway"),
    (httpx.ConnectTimeout("slow"), 504, "gateway_timeout"),
    (httpx.ReadTimeout("slow"), 504, "gateway_timeout"),
    (httpx.PoolTimeout("busy"), 504, "gateway_timeout"),
])
async def test_upstream_failures_become_502_or_504(client: httpx.AsyncClient, mock_upstream: respx.Route, failure: Exception, status: int, error: str) -> None:
    mock_upstream.side_effect = failure
    response = await client.get("/api/merchants/M1/webhooks", headers=bearer())
    assert response.status_code == status
    assert response.json()["error"] == error
    assert "upstream.test" not in response.text  # the upstream's address is not revealed


async def test_the_request_body_is_streamed_not_buffered(client: httpx.AsyncClient, mock_upstream: respx.Route) -> None:
    chunks = [b"a" * 65536 for _ in range(16)]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = await client.post("/api/echo", content=body())
    assert response.status_code == 200
    assert mock_upstream.calls.last.request.content == b"".join(chunks)


async def call_app(app: Gateway, method: str, path: bytes, token: bytes | None, body: bytes = b"") -> int:
    """One request straight into the ASGI app, as a server would make it; the answer's status."""
    headers = [(b"host", b"gateway.test"), (b"content-length", str(len(body)).encode())]
    if token is not None:
        headers.append((b"authorization", b"Bearer " + token))
    scope = {"type": "http", "method": method, "path": path.decode(), "raw_path": path, "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 5000), "scheme": "http", "http_version": "1.1"}
    statuses: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


# uvloop, the loop both servers run on: the stdlib loop's own transports hold a cycle per
# connection, and this upstream closes every connection
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_requests_leave_no_reference_cycles_and_no_unfinished_generators(tmp_path: Path) -> None:
    # a cycle per request hands every request to the garbage collector, whose pauses showed up
    # as a 20 ms p99 under load; allowed and refused requests alike must be freed by refcounting
    upstream = RecordingUpstream(answer(200, b"x" * 3000, [(b"connection", b"close")]))  # it closes after each answer
    app = Gateway(load_config(write_config(tmp_path, upstream=f"{upstream.url}/v3")))
    read, write = mint(lifetime=600).encode(), mint("psp.webhook:write", lifetime=600).encode()
    requests = [
        ("GET", b"/api/merchants/M1/webhooks", read, b""),
        ("POST", b"/api/merchants/M1/webhooks", write, b'{"url": "https://example.test"}'),
        ("GET", b"/api/merchants/M1/webhooks", None, b""),
        ("POST", b"/api/merchants/M1/webhooks", read, b"{}"),
        ("GET", b"/api/merchants/M1/secrets", read, b""),
        ("GET", b"/api/merchants/M1/webhooks/", read, b""),
        ("GET", b"/api/merchants/M1/webhooks", b"a.b.c", b""),
    ]
    statuses: list[int] = []
    try:
        for request in requests:
            await call_app(app, *request)
        gc.collect()
        # and no async generator left unfinished: each would cost the loop a finalizer task
        firstiter, finalizer = sys.get_asyncgen_hooks()
        finalized: list[object] = []
        sys.set_asyncgen_hooks(firstiter, lambda agen: (finalized.append(agen), finalizer(agen)))
        gc.disable()
        try:
            for _ in range(10):
                for request in requests:
                    statuses.append(await call_app(app, *request))
            assert gc.collect() == 0
        finally:
            gc.enable()
            sys.set_asyncgen_hooks(firstiter, finalizer)
        assert statuses == [200, 200, 401, 403, 404, 400, 401] * 10
        assert finalized == []
    finally:
        await app.runtime.aclose()
        upstream.close()


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_new_callers_leave_nothing_for_the_collector_to_walk(tmp_path: Path) -> None:
    # what the gateway keeps per caller (the verified-token cache) must be invisible to the
    # collector: kept objects it tracks make every collection longer and more frequent, and a
    # stream of first-seen tokens with new subjects is the normal case for a busy API
    upstream = RecordingUpstream(answer(200, b"ok", [(b"connection", b"close")]))
    app = Gateway(load_config(write_config(tmp_path, upstream=f"{upstream.url}/v3")))
    tokens = [mint(lifetime=600, sub=f"user-{n}", client_id=f"client-{n}").encode() for n in range(130)]
    statuses: list[int] = []
    try:
        for token in tokens[:30]:
            statuses.append(await call_app(app, "GET", b"/api/merchants/M1/webhooks", token))
        upstream.received.clear()  # what the test's upstream records is not the gateway's
        gc.collect()
        before = len(gc.get_objects())
        for token in tokens[30:]:
            statuses.append(await call_app(app, "GET", b"/api/merchants/M1/webhooks", token))
        upstream.received.clear()
        # the upstream closes each connection: let the loop hear of the last ones (a busy machine
        # delays it) so the count is of what the gateway keeps, not of what it has yet to free
        await asyncio.sleep(0.2)
        gc.collect()
        assert len(gc.get_objects()) - before < 20  # not one or more per new caller
        assert statuses == [200] * 130
    finally:
        await app.runtime.aclose()
        upstream.close()
