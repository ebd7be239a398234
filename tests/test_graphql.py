"""GraphQL routes (docs/route-tables.md, "GraphQL routes"), through the real ASGI app in front of a real
GraphQL server on loopback (graphql-core executing tests/graphql/bank.graphql): every bypass
attempt of the catalogue is refused with its status and nothing reaches the upstream, and every
allowed request reaches it byte for byte."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from gateway.app import Gateway
from gateway.loading import load_config
from tests.graphql_support import ACCOUNTS_ROOT, ACCOUNTS_SDL, SDL, GraphQLUpstream
from tests.support import mint, raw_exchange, request_bytes, write_config

pytestmark = pytest.mark.anyio

TABLE = """\
name: bank
upstream: {upstream}
scopes:
  LIST_PAYMENT:
  LIST_OFFERS:
  MAKE_DEPOSIT:
  REVEAL_CARD:
  READ_EMAIL:
  ADMIN:
  SCHEMA_READ:
routes:
  POST /graphql: &bank
    scopes: authenticated
    graphql:
      schema: bank.graphql
      mode: reject
      fields:
        Query.offers: LIST_OFFERS
        Query.status: public
        Mutation.revealCard: REVEAL_CARD
      limits: {bytes: 4096, depth: 4, aliases: 3, root_fields: 4, batch: 3}
      persisted_queries: persisted.json
  GET /graphql: *bank
  POST /introspectable: {scopes: authenticated, graphql: {schema: bank.graphql, introspection: SCHEMA_READ, fields: {Query.status: public}}}
  POST /public: {scopes: public, graphql: {schema: bank.graphql, fields: {Query.status: public}}}
  POST /schemaless: {scopes: authenticated, graphql: {fields: {Query.status: public, Query.payments: LIST_PAYMENT, Mutation.makeDeposit: MAKE_DEPOSIT}}}
"""
PERSISTED_ALLOWED = "query Status { status }"
PERSISTED_FORBIDDEN = "query Payments { payments { id } }"


@functools.cache
def token(scopes: str) -> str:
    """A token of these scopes, minted once (minting costs tens of milliseconds); valid for an hour,
    longer than the whole suite runs."""
    return mint(scopes, lifetime=3600)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def bank() -> Iterator[GraphQLUpstream]:
    server = GraphQLUpstream()
    server.persisted = {sha(text): text for text in (PERSISTED_ALLOWED, PERSISTED_FORBIDDEN)}
    yield server
    server.close()


def write_bank(folder: Path, upstream: str, table: str = TABLE) -> Path:
    config = write_config(folder, upstream=upstream, table=table)
    shutil.copy(SDL, folder / "routes" / "bank.graphql")
    operations = [{"id": sha(body), "name": name, "type": "query", "body": body} for name, body in (("Status", PERSISTED_ALLOWED), ("Payments", PERSISTED_FORBIDDEN))]
    (folder / "routes" / "persisted.json").write_text(json.dumps({"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}))
    return config


class Client:
    """The gateway for one test, asked over ASGI."""

    def __init__(self, app: Gateway) -> None:
        self.app = app

    async def send(self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None, scopes: str | None = "") -> httpx.Response:
        sent = dict(headers or {})
        if scopes is not None:
            sent["authorization"] = f"Bearer {token(scopes)}"
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            return await client.request(method, target, content=body, headers=sent)


@pytest.fixture
async def gateway(tmp_path: Path, bank: GraphQLUpstream) -> Any:
    bank.received.clear()
    app = Gateway(load_config(write_bank(tmp_path, bank.url)))
    await app.runtime.start()
    yield Client(app)
    await app.runtime.aclose()


JSON = {"content-type": "application/json"}


def body(query: str | None = None, **members: Any) -> bytes:
    if query is not None:
        members = {"query": query, **members}
    return json.dumps(members).encode()


def get(query: str, **params: str) -> str:
    return "/graphql?" + urlencode({"query": query, **params})


# (name, method, target, body, headers, scopes, status, error)
REFUSED: list[tuple[str, str, str, bytes, dict[str, str], str, int, str]] = [
    # aliases, fragments, directives: the field that can run is checked, however it is written
    ("alias of a forbidden root field", "POST", "/graphql", body("{ p: payments { id } }"), JSON, "", 403, "forbidden"),
    ("alias of a forbidden nested field", "POST", "/graphql", body("{ payments { id c: cardNumber } }"), JSON, "LIST_PAYMENT", 403, "forbidden"),
    ("named fragment", "POST", "/graphql", body("{ ...F } fragment F on Query { payments { id } }"), JSON, "", 403, "forbidden"),
    ("inline fragment", "POST", "/graphql", body("{ ... on Query { payments { id } } }"), JSON, "", 403, "forbidden"),
    ("nested fragments", "POST", "/graphql", body("{ ...A } fragment A on Query { ...B } fragment B on Query { me { ...C } } fragment C on User { email }"), JSON, "", 403, "forbidden"),
    ("a type's requirement through an interface", "POST", "/graphql", body('{ node(id: "c1") { ... on Card { number } } }'), JSON, "", 403, "forbidden"),
    ("an interface field any implementation guards", "POST", "/graphql", body('{ node(id: "u1") { id } }'), JSON, "", 403, "forbidden"),
    ("@skip(if: true) counts as selected", "POST", "/graphql", body("{ status payments @skip(if: true) { id } }"), JSON, "", 403, "forbidden"),
    ("@include(if: false) counts as selected", "POST", "/graphql", body("{ status payments @include(if: false) { id } }"), JSON, "", 403, "forbidden"),
    ("a root field covered by nothing", "POST", "/graphql", body("{ unguarded }"), JSON, "ADMIN", 403, "forbidden"),
    ("a mutation without its scope", "POST", "/graphql", body("mutation { makeDeposit(amount: 5) { id } }"), JSON, "LIST_PAYMENT", 403, "forbidden"),
    ("a subscription without its scope", "POST", "/graphql", body("subscription { deposits { id } }"), JSON, "", 403, "forbidden"),
    ("a field of the route's fields: without its scope", "POST", "/graphql", body('mutation { revealCard(id: "c1") { id } }'), JSON, "", 403, "forbidden"),
    # introspection is off unless the route names a requirement
    ("introspection", "POST", "/graphql", body("{ __schema { types { name } } }"), JSON, "ADMIN", 403, "forbidden"),
    ("aliased introspection", "POST", "/graphql", body("{ s: __schema { queryType { name } } }"), JSON, "ADMIN", 403, "forbidden"),
    ("introspection inside a fragment", "POST", "/graphql", body('{ ...I } fragment I on Query { __type(name: "User") { name } }'), JSON, "ADMIN", 403, "forbidden"),
    ("introspection without its requirement", "POST", "/introspectable", body("{ __schema { queryType { name } } }"), JSON, "ADMIN", 403, "forbidden"),
    # which operation runs
    ("several operations and no operationName", "POST", "/graphql", body("query A { status } mutation B { makeDeposit(amount: 1) { id } }"), JSON, "MAKE_DEPOSIT", 400, "invalid_request"),
    ("an operationName that matches none", "POST", "/graphql", body("query A { status }", operationName="B"), JSON, "", 400, "invalid_request"),
    ("the operation named is the one checked", "POST", "/graphql", body("query A { status } mutation B { makeDeposit(amount: 1) { id } }", operationName="B"), JSON, "", 403, "forbidden"),
    ("a batch with one refused operation", "POST", "/graphql", json.dumps([{"query": "{ status }"}, {"query": "{ payments { id } }"}]).encode(), JSON, "", 403, "forbidden"),
    ("a batch over the limit", "POST", "/graphql", json.dumps([{"query": "{ status }"}] * 4).encode(), JSON, "", 400, "invalid_request"),
    ("an empty batch", "POST", "/graphql", b"[]", JSON, "", 400, "invalid_request"),
    ("a mutation over GET", "GET", get("mutation { makeDeposit(amount: 1) { id } }"), b"", {}, "MAKE_DEPOSIT", 400, "invalid_request"),
    ("a subscription over GET", "GET", get("subscription { deposits { id } }"), b"", {}, "MAKE_DEPOSIT", 400, "invalid_request"),
    ("a mutation over GET chosen by operationName", "GET", get("query A { status } mutation B { makeDeposit(amount: 1) { id } }", operationName="B"), b"", {}, "MAKE_DEPOSIT", 400, "invalid_request"),
    ("a forbidden query over GET", "GET", get("{ payments { id } }"), b"", {}, "", 403, "forbidden"),
    # the envelope: what the gateway reads is what the upstream reads, or nothing passes
    ("a form body", "POST", "/graphql", b"query=%7Bstatus%7D", {"content-type": "application/x-www-form-urlencoded"}, "", 415, "invalid_request"),
    ("a text/plain body", "POST", "/graphql", body("{ status }"), {"content-type": "text/plain"}, "", 415, "invalid_request"),
    ("no content type", "POST", "/graphql", body("{ status }"), {}, "", 415, "invalid_request"),
    ("a multipart body", "POST", "/graphql", b"--x--", {"content-type": "multipart/form-data; boundary=x"}, "", 415, "invalid_request"),
    ("JSON in another charset", "POST", "/graphql", body("{ status }"), {"content-type": "application/json; charset=latin-1"}, "", 415, "invalid_request"),
    ("a compressed body", "POST", "/graphql", body("{ status }"), {**JSON, "content-encoding": "gzip"}, "", 415, "invalid_request"),
    ("invalid JSON", "POST", "/graphql", b'{"query": "{ status }"', JSON, "", 400, "invalid_request"),
    ("JSON that is not UTF-8", "POST", "/graphql", b'{"query": "{ status \xff }"}', JSON, "", 400, "invalid_request"),
    ("a JSON string, not an object", "POST", "/graphql", b'"{ status }"', JSON, "", 400, "invalid_request"),
    ("query not a string", "POST", "/graphql", b'{"query": ["{ status }"]}', JSON, "", 400, "invalid_request"),
    ("variables not an object", "POST", "/graphql", body("{ status }", variables="{}"), JSON, "", 400, "invalid_request"),
    ("a duplicated JSON key", "POST", "/graphql", b'{"query": "{ status }", "query": "{ payments { id } }"}', JSON, "", 400, "invalid_request"),
    ("a duplicated key inside variables", "POST", "/graphql", b'{"query": "{ status }", "variables": {"a": 1, "a": 2}}', JSON, "", 400, "invalid_request"),
    ("an unknown member (a document id)", "POST", "/graphql", body("{ status }", documentId="abc"), JSON, "", 400, "invalid_request"),
    ("a query in the URL of a POST", "POST", "/graphql?" + urlencode({"query": "{ payments { id } }"}), body("{ status }"), JSON, "", 400, "invalid_request"),
    ("a GET naming query twice", "GET", "/graphql?query=%7Bstatus%7D&query=%7Bpayments%7Bid%7D%7D", b"", {}, "", 400, "invalid_request"),
    ("a GET with a raw ';'", "GET", "/graphql?query=%7Bstatus%7D&x=1;query=%7Bpayments%7Bid%7D%7D", b"", {}, "", 400, "invalid_request"),
    ("a GET query over limits.bytes", "GET", get("{ status }", variables=json.dumps({"pad": "x" * 5000})), b"", {}, "", 400, "invalid_request"),
    ("a GET with a body", "GET", get("{ status }"), b"{}", {}, "", 400, "invalid_request"),
    ("a GET without a query", "GET", "/graphql", b"", {}, "", 400, "invalid_request"),
    ("no query at all", "POST", "/graphql", body(variables={}), JSON, "", 400, "invalid_request"),
    # persisted queries
    ("a hash-only query the manifest lacks", "POST", "/graphql", body(extensions={"persistedQuery": {"version": 1, "sha256Hash": sha("{ payments { id } }")}}), JSON, "LIST_PAYMENT", 400, "invalid_request"),
    ("a hash that is not the query's", "POST", "/graphql", body("{ payments { id } }", extensions={"persistedQuery": {"version": 1, "sha256Hash": sha(PERSISTED_ALLOWED)}}), JSON, "", 400, "invalid_request"),
    ("a hash of another query than the one sent", "POST", "/graphql", body("{ status }", extensions={"persistedQuery": {"version": 1, "sha256Hash": sha(PERSISTED_FORBIDDEN)}}), JSON, "", 400, "invalid_request"),
    ("a persisted query the caller may not run", "POST", "/graphql", body(extensions={"persistedQuery": {"version": 1, "sha256Hash": sha(PERSISTED_FORBIDDEN)}}), JSON, "", 403, "forbidden"),
    ("a malformed hash", "POST", "/graphql", body(extensions={"persistedQuery": {"version": 1, "sha256Hash": "abc"}}), JSON, "", 400, "invalid_request"),
    # documents: parsed and validated, never matched as text
    ("an unknown field", "POST", "/graphql", body("{ status secrets }"), JSON, "", 400, "invalid_request"),
    ("a syntax error", "POST", "/graphql", body("{ status "), JSON, "", 400, "invalid_request"),
    ("an empty selection", "POST", "/graphql", body("{ }"), JSON, "", 400, "invalid_request"),
    ("cyclic fragments", "POST", "/graphql", body("{ me { ...A } } fragment A on User { friends { ...B } } fragment B on User { friends { ...A } }"), JSON, "", 400, "invalid_request"),
    # abuse limits
    ("a body over limits.bytes", "POST", "/graphql", body("{ status }", variables={"pad": "x" * 5000}), JSON, "", 400, "invalid_request"),
    ("fields nested deeper than limits.depth", "POST", "/graphql", body("{ me { friends { friends { friends { name } } } } }"), JSON, "", 400, "invalid_request"),
    ("depth through fragments", "POST", "/graphql", body("{ me { ...F } } fragment F on User { friends { friends { friends { id } } } }"), JSON, "", 400, "invalid_request"),
    ("more aliases than limits.aliases", "POST", "/graphql", body("{ a: status b: status c: status d: status }"), JSON, "", 400, "invalid_request"),
    ("more root fields than limits.root_fields", "POST", "/graphql", body("{ status status status status status }"), JSON, "", 400, "invalid_request"),
    ("fragments that expand exponentially", "POST", "/graphql", body(
        "{ me { ...F0 } } " + " ".join(f"fragment F{i} on User {{ ...F{i + 1} friends {{ id }} ...F{i + 1} }}" for i in range(24)) + " fragment F24 on User { id }"
    ), JSON, "", 400, "invalid_request"),
]


@pytest.mark.parametrize(("name", "method", "target", "content", "headers", "scopes", "status", "error"), REFUSED, ids=[row[0] for row in REFUSED])
async def test_a_bypass_attempt_is_refused_and_never_reaches_the_upstream(
    gateway: Client, bank: GraphQLUpstream, name: str, method: str, target: str, content: bytes, headers: dict[str, str], scopes: str, status: int, error: str,
) -> None:
    response = await gateway.send(method, target, content, headers, scopes)
    answer = response.json()
    assert (response.status_code, answer["error"]) == (status, error), answer
    assert answer["error_description"] and answer["errors"] and all(item["message"] and item["extensions"]["code"] for item in answer["errors"])
    assert bank.received == []


# (name, method, target, body, headers, scopes)
FORWARDED: list[tuple[str, str, str, bytes, dict[str, str], str]] = [
    ("fields the caller may use", "POST", "/graphql", body("{ payments { id amount } offers { title } }"), JSON, "LIST_PAYMENT LIST_OFFERS"),
    ("a nested field with one of its alternatives", "POST", "/graphql", body("{ me { name email } }"), JSON, "ADMIN"),
    ("comments and strings that name forbidden fields", "POST", "/graphql", body('# payments { cardNumber } __schema\nquery makeDeposit { node(id: "cardNumber __schema") { __typename } status }'), JSON, ""),
    ("__typename anywhere", "POST", "/graphql", body("{ __typename me { __typename name } }"), JSON, ""),
    ("a public field", "POST", "/graphql", body("{ status }"), JSON, ""),
    ("the mutation its scope allows", "POST", "/graphql", body("mutation Deposit($amount: Int!) { makeDeposit(amount: $amount) { id amount } }", variables={"amount": 5}), JSON, "MAKE_DEPOSIT"),
    ("the operation named, when the other is forbidden", "POST", "/graphql", body("query A { status } mutation B { makeDeposit(amount: 1) { id } }", operationName="A"), JSON, ""),
    ("a batch of allowed operations", "POST", "/graphql", json.dumps([{"query": "{ status }"}, {"query": "{ payments { id } }"}]).encode(), JSON, "LIST_PAYMENT"),
    ("a document as application/graphql", "POST", "/graphql", b"{ payments { id } }", {"content-type": "application/graphql"}, "LIST_PAYMENT"),
    ("JSON with its charset", "POST", "/graphql", body("{ status }"), {"content-type": "application/json; charset=utf-8"}, ""),
    ("a query over GET", "GET", get("query($n: Int) { payments(first: $n) { id } }", variables='{"n": 1}'), b"", {}, "LIST_PAYMENT"),
    ("a hash-only query the manifest lists", "POST", "/graphql", body(extensions={"persistedQuery": {"version": 1, "sha256Hash": sha(PERSISTED_ALLOWED)}}), JSON, ""),
    ("a query with its own hash", "POST", "/graphql", body("{ status }", extensions={"persistedQuery": {"version": 1, "sha256Hash": sha("{ status }")}}), JSON, ""),
    ("introspection with its requirement", "POST", "/introspectable", body("{ __schema { queryType { name } } }"), JSON, "SCHEMA_READ"),
]


@pytest.mark.parametrize(("name", "method", "target", "content", "headers", "scopes"), FORWARDED, ids=[row[0] for row in FORWARDED])
async def test_an_allowed_request_reaches_the_upstream_byte_for_byte(
    gateway: Client, bank: GraphQLUpstream, name: str, method: str, target: str, content: bytes, headers: dict[str, str], scopes: str,
) -> None:
    response = await gateway.send(method, target, content, headers, scopes)
    assert response.status_code == 200, response.text
    [received] = bank.received
    assert (received.method, received.body) == (method, content)
    assert received.query_string == target.partition("?")[2].encode()
    answer = response.json()
    assert all("errors" not in item for item in (answer if isinstance(answer, list) else [answer])), answer


async def raw(app: Gateway, method: str, target: bytes, headers: list[tuple[bytes, bytes]] | None = None, content: bytes = b"", scopes: str = "") -> tuple[int, dict[str, Any]]:
    """Ask the gateway over ASGI with `target` as its exact bytes (an HTTP client would re-encode it)."""
    path, _, query = target.partition(b"?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http", "path": path.decode(),
        "raw_path": path, "query_string": query, "root_path": "", "client": ("127.0.0.1", 50000), "server": ("gateway.test", 80),
        "headers": [(b"host", b"gateway.test"), (b"authorization", f"Bearer {token(scopes)}".encode()), *(headers or [])],
    }
    messages = [{"type": "http.request", "body": content, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    answer = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return sent[0]["status"], json.loads(answer) if answer else {}


ALLOWED_QUERY = b"query=%7Bstatus%7D"
SMUGGLED = b"%7Bpayments%7Bid%7D%7D"  # {payments{id}}: what a PHP upstream would run
# a parameter beside `query` whose name is not one of the four as written: a server that reads
# names otherwise (PHP drops leading blanks, cuts at NUL, makes `a[]` an array) would run SMUGGLED
ODD_PARAMETERS = [
    b"%20query=" + SMUGGLED, b"+query=" + SMUGGLED, b"%09query=" + SMUGGLED, b"query%00=" + SMUGGLED, b"query%00x=" + SMUGGLED,
    b"Query=" + SMUGGLED, b"QUERY=" + SMUGGLED, b"query[]=" + SMUGGLED, b"query%5B%5D=" + SMUGGLED, b"query[x]=" + SMUGGLED,
    b"query%20=" + SMUGGLED, b"query+=" + SMUGGLED, b"query.=" + SMUGGLED, b"%71uery=" + SMUGGLED, b"q%75ery=" + SMUGGLED,
    b"=" + SMUGGLED, b"", b"query", b"debug", b"foo=bar", b"documentId=abc", b"doc_id=abc", b"operationname=B",
    b"%20operationName=B", b"operationName%00=B", b"variables%00=%7B%7D", b"extensions[persistedQuery]=x",
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_get_parameter_not_named_exactly_as_one_of_the_four_is_refused(gateway: Client, bank: GraphQLUpstream, method: str) -> None:
    for odd in ODD_PARAMETERS:  # one gateway for the whole table: each case is one request
        for target in (b"/graphql?" + odd + b"&" + ALLOWED_QUERY, b"/graphql?" + ALLOWED_QUERY + b"&" + odd):
            status, answer = await raw(gateway.app, method, target, scopes="LIST_PAYMENT")
            assert (status, answer["error"], answer["errors"][0]["extensions"]["code"]) == (400, "invalid_request", "BAD_REQUEST"), (target, answer)
            assert bank.received == [], target


# each would be a valid document (a comment after `#`) or JSON if read leniently
ODD_VALUES = [
    b"query=%7Bstatus%7D%23%zz", b"query=%7Bstatus%7D%23%", b"query=%7Bstatus%7D%23%2", b"query=%7Bstatus%7D%23%u0041", b"query=%7Bstatus%7D%23\xc3\xa9",
    b"query=%7B\tstatus%7D", b"query=%7B status%7D", b"query=%7Bstatus%7D%23%FF", b"query=%7Bstatus%7D&variables=%7B%22a%22%3A%22%zz%22%7D",
    b"query=%7Bstatus%7D&&", b"&query=%7Bstatus%7D",
]


async def test_a_get_value_servers_could_decode_differently_is_refused(gateway: Client, bank: GraphQLUpstream) -> None:
    for query_string in ODD_VALUES:
        status, answer = await raw(gateway.app, "GET", b"/graphql?" + query_string)
        assert (status, answer["error"]) == (400, "invalid_request") and answer["errors"], (query_string, answer)
        assert bank.received == [], query_string


async def test_a_get_with_the_four_parameters_named_as_written_is_forwarded_byte_for_byte(gateway: Client, bank: GraphQLUpstream) -> None:
    query_string = b"extensions=%7B%7D&operationName=A&query=query+A+%7B+status+%7D&variables=%7B%7D"
    status, answer = await raw(gateway.app, "GET", b"/graphql?" + query_string)
    assert (status, answer) == (200, {"data": {"status": "ok"}})
    [received] = bank.received
    assert received.query_string == query_string


ODD_POST_PARAMETERS = [
    b"%20query=" + SMUGGLED, b"+query=" + SMUGGLED, b"query%00=" + SMUGGLED, b"Query=" + SMUGGLED, b"query[]=" + SMUGGLED, b"x=1;query=" + SMUGGLED,
    b"%20operationName=B", b"OperationName=B", b"variables%5B%5D=1", b"%20documentId=abc", b"%71uery=" + SMUGGLED, b"%u0071uery=" + SMUGGLED,
    b"[query]=" + SMUGGLED, b"query[x]=" + SMUGGLED, b"a=1&extensions",
]


async def test_a_post_refuses_a_url_parameter_any_server_reads_as_a_graphql_member(gateway: Client, bank: GraphQLUpstream) -> None:
    for odd in ODD_POST_PARAMETERS:
        status, answer = await raw(gateway.app, "POST", b"/graphql?" + odd, [(b"content-type", b"application/json")], body("{ status }"))
        assert (status, answer["error"]) == (400, "invalid_request"), (odd, answer)
        assert bank.received == [], odd
    status, _ = await raw(gateway.app, "POST", b"/graphql?tenant=t1&queryId=2", [(b"content-type", b"application/json")], body("{ status }"))
    assert status == 200 and len(bank.received) == 1  # other parameters are the upstream's business


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_a_served_gateway_refuses_smuggled_get_parameters_as_the_asgi_app_does(tmp_path: Path, bank: GraphQLUpstream, live_gateway: Any, server: str) -> None:
    bank.received.clear()
    gateway = live_gateway(write_bank(tmp_path, bank.url), server)
    authorization = ("authorization", f"Bearer {token('')}")
    for odd in (b"%20query=", b"query%00=", b"Query=", b"query[]=", b"+query=", b"%71uery="):
        for target in (b"/graphql?" + ALLOWED_QUERY + b"&" + odd + SMUGGLED, b"/graphql?" + odd + SMUGGLED + b"&" + ALLOWED_QUERY):
            response = raw_exchange(gateway.port, request_bytes("GET", target, [authorization]))
            assert (response.status, response.json()["error"], response.json()["errors"][0]["extensions"]["code"]) == (400, "invalid_request", "BAD_REQUEST"), target
    anonymous = raw_exchange(gateway.port, request_bytes("GET", b"/graphql?" + ALLOWED_QUERY))
    assert (anonymous.status, anonymous.json()["errors"][0]["extensions"]["code"]) == (401, "UNAUTHENTICATED")
    assert anonymous.header(b"www-authenticate") == b'Bearer realm="bank"'
    assert bank.received == []
    allowed = raw_exchange(gateway.port, request_bytes("GET", b"/graphql?" + ALLOWED_QUERY, [authorization]))
    assert (allowed.status, allowed.json()) == (200, {"data": {"status": "ok"}})
    assert [request.query_string for request in bank.received] == [ALLOWED_QUERY]


async def test_a_refusal_names_every_refused_field_its_path_and_requirement(gateway: Client, bank: GraphQLUpstream) -> None:
    response = await gateway.send("POST", "/graphql", body("{ status pay: payments { id cardNumber } me { email } open: unguarded }"), JSON, "LIST_PAYMENT")
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == 'Bearer realm="bank", error="insufficient_scope", error_description="' + response.json()["error_description"].replace('"', "'") + '", scope="REVEAL_CARD"'
    assert response.json()["errors"] == [
        {"message": "Payment.cardNumber requires REVEAL_CARD", "path": ["pay", "cardNumber"], "extensions": {"code": "FORBIDDEN", "required": [["REVEAL_CARD"]]}},
        {"message": "User.email requires one of: READ_EMAIL; ADMIN", "path": ["me", "email"], "extensions": {"code": "FORBIDDEN", "required": [["READ_EMAIL"], ["ADMIN"]]}},
        {"message": "Query.unguarded is not allowed on this route", "path": ["open"], "extensions": {"code": "FORBIDDEN", "required": []}},
    ]
    assert bank.received == []


async def test_a_public_route_serves_public_fields_and_answers_401_for_the_others(gateway: Client, bank: GraphQLUpstream) -> None:
    response = await gateway.send("POST", "/public", body("{ status }"), JSON, scopes=None)
    assert response.status_code == 200 and response.json() == {"data": {"status": "ok"}}
    response = await gateway.send("POST", "/public", body("{ status me { name } }"), JSON, scopes=None)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == 'Bearer realm="bank"'
    assert response.json()["errors"][0] == {"message": "Query.me requires a token", "path": ["me"], "extensions": {"code": "UNAUTHENTICATED", "required": []}}
    assert len(bank.received) == 1


# --- every refusal of a GraphQL route is ours and a GraphQL response, whichever step refused it ---------

SHAPED = """\
name: shapes
upstream: {upstream}
scopes:
  LIST_PAYMENT:
  MAKE_DEPOSIT:
  REVEAL_CARD:
  READ_EMAIL:
  ADMIN:
  SMS_ONLY:
    step_up: {acr: [sms], max_age: 300}
rules:
  unknown_scopes: refuse
routes:
  POST /graphql: {scopes: authenticated, graphql: &graphql {schema: bank.graphql, fields: {Query.status: public}}}
  GET /graphql: {scopes: authenticated, graphql: *graphql}
  POST /admin/graphql: {scopes: ADMIN, graphql: *graphql}
  POST /hidden/graphql: {scopes: ADMIN, hide: true, graphql: *graphql}
  POST /users/{userId}/graphql: {scopes: authenticated, user: userId, graphql: *graphql}
  POST /stepup/graphql: {scopes: SMS_ONLY, graphql: *graphql}
  POST /rest: authenticated
"""
STATUS = body("{ status }")
# (name, method, path, Authorization headers, status, error, code, WWW-Authenticate holds)
ROUTE_REFUSALS: list[tuple[str, str, str, list[str], int, str, str, str | None]] = [
    ("no token", "POST", "/graphql", [], 401, "unauthorized", "UNAUTHENTICATED", 'Bearer realm="shapes"'),
    ("no token over GET", "GET", "/graphql?query=%7Bstatus%7D", [], 401, "unauthorized", "UNAUTHENTICATED", 'Bearer realm="shapes"'),
    ("another scheme", "POST", "/graphql", ["Basic YTpi"], 401, "unauthorized", "UNAUTHENTICATED", 'Bearer realm="shapes"'),
    ("a malformed token", "POST", "/graphql", ["Bearer not-a-jwt"], 401, "invalid_token", "UNAUTHENTICATED", 'error="invalid_token"'),
    ("an expired token", "POST", "/graphql", [f"Bearer {mint('', lifetime=-60)}"], 401, "invalid_token", "UNAUTHENTICATED", 'error="invalid_token"'),
    ("two tokens", "POST", "/graphql", [f"Bearer {token('')}", f"Bearer {token('')}"], 400, "invalid_request", "BAD_REQUEST", 'error="invalid_request"'),
    ("a scope the catalog refuses", "POST", "/graphql", [f"Bearer {token('NOPE')}"], 403, "invalid_scope", "FORBIDDEN", 'error="invalid_scope"'),
    ("the route's own requirement", "POST", "/admin/graphql", [f"Bearer {token('LIST_PAYMENT')}"], 403, "forbidden", "FORBIDDEN", 'error="insufficient_scope"'),
    ("a step-up", "POST", "/stepup/graphql", [f"Bearer {token('SMS_ONLY')}"], 401, "insufficient_user_authentication", "UNAUTHENTICATED", 'acr_values="sms"'),
]


@pytest.fixture
async def shaped(tmp_path: Path, bank: GraphQLUpstream) -> Any:
    bank.received.clear()
    config = write_config(tmp_path, upstream=bank.url, table=SHAPED)
    shutil.copy(SDL, tmp_path / "routes" / "bank.graphql")
    app = Gateway(load_config(config))
    await app.runtime.start()
    yield app
    await app.runtime.aclose()


@pytest.mark.parametrize(("name", "method", "path", "credentials", "status", "error", "code", "challenge"), ROUTE_REFUSALS, ids=[row[0] for row in ROUTE_REFUSALS])
async def test_a_graphql_routes_refusal_before_the_fields_is_a_graphql_response_too(
    shaped: Gateway, bank: GraphQLUpstream, name: str, method: str, path: str, credentials: list[str], status: int, error: str, code: str, challenge: str | None,
) -> None:
    headers = [(b"content-type", b"application/json"), *((b"authorization", value.encode()) for value in credentials)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shaped), base_url="http://gateway.test") as client:
        response = await client.request(method, path, content=STATUS if method == "POST" else b"", headers=headers)
    answer = response.json()
    assert (response.status_code, answer["error"]) == (status, error), answer
    [only] = answer["errors"]
    assert only["message"] == answer["error_description"] and only["extensions"]["code"] == code, answer
    if error == "forbidden":
        assert only["extensions"]["required"] == answer["required"] == [["ADMIN"]]
    if challenge is None:
        assert "www-authenticate" not in response.headers
    else:
        assert challenge in response.headers["www-authenticate"] and response.headers["www-authenticate"].startswith('Bearer realm="shapes"')
    assert bank.received == []


@pytest.mark.parametrize(("path", "bearer"), [("/hidden/graphql", token("LIST_PAYMENT")), ("/users/u2/graphql", mint("", lifetime=3600, sub="ana"))], ids=["hidden", "another user's"])
async def test_a_graphql_route_that_hides_answers_404_exactly_as_no_route_does(shaped: Gateway, bank: GraphQLUpstream, path: str, bearer: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shaped), base_url="http://gateway.test") as client:
        hidden = await client.post(path, content=STATUS, headers={**JSON, "authorization": f"Bearer {bearer}"})
        absent = await client.post(path + "x", content=STATUS, headers={**JSON, "authorization": f"Bearer {bearer}"})
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json() == {"error": "not_found", "error_description": f"no route for POST {path}"}
    assert hidden.json()["error_description"] + "x" == absent.json()["error_description"]
    assert [(name, value) for name, value in hidden.headers.items() if name != "content-length"] == [(name, value) for name, value in absent.headers.items() if name != "content-length"]
    assert bank.received == []


async def test_a_refusal_on_a_route_that_is_not_graphql_stays_ours_alone(shaped: Gateway, bank: GraphQLUpstream) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shaped), base_url="http://gateway.test") as client:
        response = await client.post("/rest", content=STATUS)
        missing = await client.post("/nowhere/graphql", content=STATUS)
    assert response.status_code == 401 and set(response.json()) == {"error", "error_description"}
    assert missing.status_code == 404 and set(missing.json()) == {"error", "error_description"}  # no route: no GraphQL route either
    assert bank.received == []


async def test_a_field_refusal_keeps_its_own_errors(shaped: Gateway, bank: GraphQLUpstream) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=shaped), base_url="http://gateway.test") as client:
        response = await client.post("/graphql", content=body("{ payments { id } }"), headers={**JSON, "authorization": f"Bearer {token('')}"})
    assert response.status_code == 403
    assert response.json()["errors"] == [{"message": "Query.payments requires LIST_PAYMENT", "path": ["payments"], "extensions": {"code": "FORBIDDEN", "required": [["LIST_PAYMENT"]]}}]


@pytest.mark.parametrize(("query", "scopes", "status"), [
    ("{ status }", "", 200),
    ("{ payments { id cardNumber } }", "LIST_PAYMENT", 200),  # without an SDL, fields below the root are not checked
    ("{ payments { id } }", "", 403),
    ("mutation { makeDeposit(amount: 1) { id } }", "LIST_PAYMENT", 403),
    ("{ offers { id } }", "LIST_OFFERS", 403),  # a root field the route does not list: deny by default
    ("{ ...F } fragment F on Query { payments { id } }", "", 403),
    ("{ ... on Mutation { makeDeposit(amount: 1) { id } } }", "MAKE_DEPOSIT", 400),  # a fragment on another root type
    ("{ __schema { types { name } } }", "", 403),
    ("{ payments { id __schema { types { name } } } }", "LIST_PAYMENT", 403),  # introspection wherever it is
    ("{ status ...F } fragment G on Query { status }", "", 400),  # still validated: unknown and unused fragments
])
async def test_a_route_without_a_schema_checks_root_fields_and_refuses_unknown_ones(
    gateway: Client, bank: GraphQLUpstream, query: str, scopes: str, status: int,
) -> None:
    response = await gateway.send("POST", "/schemaless", body(query), JSON, scopes)
    assert response.status_code == status, response.text
    assert len(bank.received) == (status == 200)


async def test_a_repeated_document_is_analysed_once_and_decided_for_each_caller(gateway: Client, bank: GraphQLUpstream) -> None:
    route = next(route for route in gateway.app.runtime.tables.routes if route.template == "/graphql" and route.method == "POST")
    document = "query($n: Int) { payments(first: $n) { id } }"
    analysed, read = route.exchange.analyse.cache_info(), route.exchange.read.cache_info()  # the persisted queries were analysed at load
    assert (await gateway.send("POST", "/graphql", body(document, variables={"n": 1}), JSON, "LIST_PAYMENT")).status_code == 200
    assert (await gateway.send("POST", "/graphql", body(document, variables={"n": 1}), JSON, "")).status_code == 403
    assert (await gateway.send("POST", "/graphql", body(document, variables={"n": 2}), JSON, "LIST_PAYMENT")).status_code == 200
    # the same body is read once; the same document under other variables is analysed once
    now = route.exchange.read.cache_info()
    assert (now.misses - read.misses, now.hits - read.hits) == (2, 1)
    now = route.exchange.analyse.cache_info()
    assert (now.misses - analysed.misses, now.hits - analysed.hits) == (1, 1)
    assert len(bank.received) == 2


# --- filter mode: refused fields removed, answered as null with one error each ------------------------


@pytest.fixture
async def filtering(tmp_path: Path, bank: GraphQLUpstream) -> Any:
    bank.received.clear()
    app = Gateway(load_config(write_bank(tmp_path, bank.url, TABLE.replace("mode: reject", "mode: filter"))))
    await app.runtime.start()
    yield Client(app)
    await app.runtime.aclose()


def forwarded_document(bank: GraphQLUpstream) -> dict[str, Any]:
    [received] = bank.received
    return json.loads(received.body)


async def test_filter_mode_removes_a_refused_field_and_answers_it_as_null_with_an_error(filtering: Client, bank: GraphQLUpstream) -> None:
    response = await filtering.send("POST", "/graphql", body("{ payments { id card: cardNumber } }"), JSON, "LIST_PAYMENT")
    assert response.status_code == 200
    assert response.json() == {
        "data": {"payments": [{"id": "p1", "card": None}, {"id": "p2", "card": None}]},
        "errors": [{"message": "Payment.cardNumber requires REVEAL_CARD", "path": ["payments", "card"], "extensions": {"code": "FORBIDDEN", "required": [["REVEAL_CARD"]]}}],
    }
    assert forwarded_document(bank)["query"] == "{\n  payments {\n    id\n  }\n}"


async def test_filter_mode_removes_a_parent_left_empty_and_the_variables_only_removed_fields_used(filtering: Client, bank: GraphQLUpstream) -> None:
    query = "query Q($n: Int, $id: ID!) { status me { email } payments(first: $n) { id } node(id: $id) { __typename } }"
    response = await filtering.send("POST", "/graphql", body(query, operationName="Q", variables={"n": 1, "id": "u1"}), JSON, "")
    assert response.status_code == 200
    assert response.json()["data"] == {"status": "ok", "me": None, "payments": None, "node": {"__typename": "User"}}
    assert [error["path"] for error in response.json()["errors"]] == [["me", "email"], ["payments"]]
    sent = forwarded_document(bank)
    assert sent == {"query": "query Q($id: ID!) {\n  status\n  node(id: $id) {\n    __typename\n  }\n}", "operationName": "Q", "variables": {"id": "u1"}}


async def test_filter_mode_prunes_fragments_and_drops_those_left_empty(filtering: Client, bank: GraphQLUpstream) -> None:
    query = "{ me { ...Public ...Private } } fragment Public on User { name } fragment Private on User { email }"
    response = await filtering.send("POST", "/graphql", body(query), JSON, "")
    assert response.json()["data"] == {"me": {"name": "Ana", "email": None}}
    assert forwarded_document(bank)["query"] == "{\n  me {\n    ...Public\n  }\n}\n\nfragment Public on User {\n  name\n}"


async def test_filter_mode_refuses_a_document_left_empty_as_reject_mode_does(filtering: Client, bank: GraphQLUpstream) -> None:
    response = await filtering.send("POST", "/graphql", body("{ payments { id } unguarded }"), JSON, "")
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert [error["path"] for error in response.json()["errors"]] == [["payments"], ["unguarded"]]
    assert bank.received == []


async def test_filter_mode_rewrites_a_get_query_string_and_an_application_graphql_body(filtering: Client, bank: GraphQLUpstream) -> None:
    response = await filtering.send("GET", get("{ status payments { id } }"), scopes="")
    assert response.json() == {"data": {"status": "ok", "payments": None}, "errors": [
        {"message": "Query.payments requires LIST_PAYMENT", "path": ["payments"], "extensions": {"code": "FORBIDDEN", "required": [["LIST_PAYMENT"]]}}]}
    assert bank.received[0].query_string == urlencode({"query": "{\n  status\n}"}).encode()
    response = await filtering.send("POST", "/graphql", b"{ status payments { id } }", {"content-type": "application/graphql"}, "")
    assert response.json()["data"] == {"status": "ok", "payments": None}
    assert (bank.received[1].content_type, bank.received[1].body) == ("application/graphql", b"{\n  status\n}")


async def test_filter_mode_filters_each_operation_of_a_batch(filtering: Client, bank: GraphQLUpstream) -> None:
    batch = json.dumps([{"query": "{ status }"}, {"query": "{ me { name email } }"}]).encode()
    response = await filtering.send("POST", "/graphql", batch, JSON, "")
    assert response.json() == [{"data": {"status": "ok"}}, {"data": {"me": {"name": "Ana", "email": None}}, "errors": [
        {"message": "User.email requires one of: READ_EMAIL; ADMIN", "path": ["me", "email"], "extensions": {"code": "FORBIDDEN", "required": [["READ_EMAIL"], ["ADMIN"]]}}]}]
    assert forwarded_document(bank) == [{"query": "{ status }"}, {"query": "{\n  me {\n    name\n  }\n}"}]


async def test_filter_mode_forwards_a_persisted_query_it_pruned_as_a_document(filtering: Client, bank: GraphQLUpstream, tmp_path: Path) -> None:
    response = await filtering.send("POST", "/graphql", body("{ status payments { id } }", extensions={"persistedQuery": {"version": 1, "sha256Hash": sha("{ status payments { id } }")}}), JSON, "")
    assert response.json()["data"] == {"status": "ok", "payments": None}
    assert forwarded_document(bank) == {"query": "{\n  status\n}"}  # the hash named the whole document: dropped


# --- fields refused as a route would be: step-up (401) and pending conditions (404) ------------------

WAITING = """\
name: bank
upstream: {upstream}
scopes:
  LIST_PAYMENT:
    step_up: {acr: [sms], max_age: 300}
  LIST_OFFERS:
    suffixes: [optional]
    condition: User must accept the offers' terms
  READ_EMAIL:
  MAKE_DEPOSIT:
  REVEAL_CARD:
  ADMIN:
routes:
  POST /graphql:
    scopes: authenticated
    graphql: {schema: bank.graphql, fields: {Query.offers: LIST_OFFERS}}
  POST /offers/graphql:
    scopes: LIST_OFFERS
    graphql: {schema: bank.graphql, fields: {Query.offers: LIST_OFFERS}}
"""


@pytest.fixture
async def waiting(tmp_path: Path, bank: GraphQLUpstream) -> Any:
    bank.received.clear()
    config = write_config(tmp_path, upstream=bank.url, table=WAITING, proxy="grants:\n  store: sqlite:///grants.db\n  refresh: 0.05\n")
    shutil.copy(SDL, tmp_path / "routes" / "bank.graphql")
    app = Gateway(load_config(config))
    await app.runtime.start()
    yield app
    await app.runtime.aclose()


async def ask_as(app: Gateway, query: str, scopes: str, path: str = "/graphql", **claims: Any) -> httpx.Response:
    token = mint(scopes, lifetime=600, sub="ana", client_id="app", **claims)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as client:
        return await client.post(path, content=body(query), headers={**JSON, "authorization": f"Bearer {token}"})


async def test_a_field_that_counts_after_a_step_up_is_answered_401_with_the_challenge(waiting: Gateway, bank: GraphQLUpstream) -> None:
    refused = await ask_as(waiting, "{ payments { id } }", "LIST_PAYMENT")
    assert (refused.status_code, refused.json()["error"]) == (401, "insufficient_user_authentication")
    assert 'acr_values="sms"' in refused.headers["www-authenticate"] and 'max_age="300"' in refused.headers["www-authenticate"]
    assert refused.json()["errors"][0]["path"] == ["payments"] and not bank.received
    stepped_up = await ask_as(waiting, "{ payments { id } }", "LIST_PAYMENT", acr="sms", auth_time=int(time.time()))
    assert stepped_up.status_code == 200 and len(bank.received) == 1


async def test_a_field_whose_optional_scope_waits_for_its_condition_is_answered_404(waiting: Gateway, bank: GraphQLUpstream) -> None:
    refused = await ask_as(waiting, "{ offers { id } }", "LIST_OFFERS_optional")
    assert (refused.status_code, refused.json()["error"], refused.json()["pending"]) == (404, "not_found", ["LIST_OFFERS"])
    assert not bank.received
    await waiting.runtime.grants.store.set_condition("bank", "ana", "LIST_OFFERS", True)  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    assert (await ask_as(waiting, "{ offers { id } }", "LIST_OFFERS_optional")).status_code == 200 and len(bank.received) == 1


async def test_fields_that_neither_a_step_up_nor_a_condition_would_all_allow_are_forbidden(waiting: Gateway, bank: GraphQLUpstream) -> None:
    both = await ask_as(waiting, "{ payments { id } offers { id } }", "LIST_PAYMENT LIST_OFFERS_optional")
    assert (both.status_code, both.json()["error"]) == (403, "forbidden")
    email = await ask_as(waiting, "{ payments { id } me { email } }", "LIST_PAYMENT")
    assert (email.status_code, email.json()["error"]) == (403, "forbidden")
    assert not bank.received


# --- interfaces: a requirement on Iface.f holds for every implementation's f -------------------------

ACCOUNTS = """\
name: accounts
upstream: {upstream}
scopes:
  READ_SECRET:
  USER_SECRET:
  READ_ID:
routes:
  POST /graphql: {{scopes: authenticated, graphql: &graphql {{schema: accounts.graphql, mode: reject, fields: {{Query.me: public, Query.account: public, Query.node: public, Query.parties: public, Query.status: public{fields}}}}}}}
  POST /public: {{scopes: public, graphql: *graphql}}
"""
ACCOUNT_SECRET = "  id: ID!\n  secret: String\n}\n\ntype User"  # the end of `interface Account`
# (name, the SDL as the gateway reads it, extra `fields:` entries, the field the shapes select,
# scope sets that are each refused (None: no token, on the public route), the scopes that allow)
INTERFACE_REQUIREMENTS: list[tuple[str, str, str, str, list[str | None], str]] = [
    ("@requiresScopes on the interface field", ACCOUNTS_SDL.read_text().replace(ACCOUNT_SECRET, ACCOUNT_SECRET.replace("secret: String", 'secret: String @requiresScopes(scopes: [["READ_SECRET"]])')),
     "", "secret", ["", "USER_SECRET"], "READ_SECRET"),
    ("a fields: entry on the interface field", ACCOUNTS_SDL.read_text(), ", Account.secret: READ_SECRET", "secret", ["", "USER_SECRET"], "READ_SECRET"),
    ("a type-level @requiresScopes on the interface", ACCOUNTS_SDL.read_text().replace("interface Account implements Node {", 'interface Account implements Node @requiresScopes(scopes: [["READ_SECRET"]]) {'),
     "", "secret", ["", "USER_SECRET"], "READ_SECRET"),
    ("@authenticated on the interface field", ACCOUNTS_SDL.read_text().replace(ACCOUNT_SECRET, ACCOUNT_SECRET.replace("secret: String", "secret: String @authenticated")),
     "", "secret", [None], ""),
    ("a requirement on the implementation and on the interface", ACCOUNTS_SDL.read_text().replace(ACCOUNT_SECRET, ACCOUNT_SECRET.replace("secret: String", 'secret: String @requiresScopes(scopes: [["READ_SECRET"]])')),
     ", User.secret: USER_SECRET", "secret", ["", "READ_SECRET", "USER_SECRET"], "READ_SECRET USER_SECRET"),
    ("an interface an interface implements", ACCOUNTS_SDL.read_text(), ", Node.id: READ_ID", "id", ["", "READ_SECRET"], "READ_ID"),
]
# every way of reaching User.secret (or User.id) through what it implements or belongs to
SHAPES = [
    "{{ me {{ {field} }} }}",
    "{{ account {{ {field} }} }}",
    "{{ account {{ ... on User {{ {field} }} }} }}",
    "{{ me {{ ...F }} }} fragment F on User {{ {field} }}",
    "{{ me {{ ...F }} }} fragment F on Account {{ {field} }}",
    "{{ me {{ ... on Node {{ ... on Account {{ {field} }} }} }} }}",
    "{{ parties {{ ... on User {{ {field} }} }} }}",
    "{{ parties {{ ... on Account {{ {field} }} }} }}",
    "{{ parties {{ ...P }} }} fragment P on Party {{ ... on User {{ {field} }} }}",
    '{{ node(id: "u1") {{ ... on User {{ {field} }} }} }}',
    '{{ node(id: "u1") {{ ... on Account {{ {field} }} }} }}',
]


@pytest.fixture(scope="module")
def accounts() -> Iterator[GraphQLUpstream]:
    server = GraphQLUpstream(ACCOUNTS_SDL, ACCOUNTS_ROOT)
    yield server
    server.close()


async def accounts_gateway(folder: Path, upstream: str, sdl: str, fields: str, mode: str = "reject") -> Gateway:
    config = write_config(folder, upstream=upstream, table=ACCOUNTS.format(upstream="{upstream}", fields=fields).replace("mode: reject", f"mode: {mode}"))
    (folder / "routes" / "accounts.graphql").write_text(sdl)
    app = Gateway(load_config(config))
    await app.runtime.start()
    return app


@pytest.mark.parametrize(("name", "sdl", "fields", "field", "refused", "allowed"), INTERFACE_REQUIREMENTS, ids=[row[0] for row in INTERFACE_REQUIREMENTS])
async def test_an_interface_fields_requirement_holds_for_every_implementation_however_it_is_selected(
    tmp_path: Path, accounts: GraphQLUpstream, name: str, sdl: str, fields: str, field: str, refused: list[str | None], allowed: str,
) -> None:
    app = await accounts_gateway(tmp_path, accounts.url, sdl, fields)
    client = Client(app)
    try:
        for shape in SHAPES:  # one gateway for every shape: each is a request or two
            accounts.received.clear()
            query = body(shape.format(field=field))
            for scopes in refused:
                response = await client.send("POST", "/graphql" if scopes is not None else "/public", query, JSON, scopes)
                expected = (401, "unauthorized") if scopes is None else (403, "forbidden")
                assert (response.status_code, response.json()["error"]) == expected, (shape, scopes, response.text)
                assert any(error["path"][-1] == field for error in response.json()["errors"]), (shape, response.text)
                assert accounts.received == [], shape
            response = await client.send("POST", "/graphql", query, JSON, allowed)
            assert response.status_code == 200 and "errors" not in response.json(), (shape, response.text)
            assert len(accounts.received) == 1, shape
    finally:
        await app.runtime.aclose()


async def test_an_interface_field_needs_what_an_interface_between_it_and_an_implementation_needs(tmp_path: Path, accounts: GraphQLUpstream) -> None:
    # Node.id may be answered by a User, whose id is Account.id too
    accounts.received.clear()
    app = await accounts_gateway(tmp_path, accounts.url, ACCOUNTS_SDL.read_text(), ", Account.id: READ_ID")
    try:
        for query in ('{ node(id: "u1") { id } }', '{ node(id: "u1") { ...N } } fragment N on Node { id }'):
            response = await Client(app).send("POST", "/graphql", body(query), JSON, "READ_SECRET")
            assert (response.status_code, response.json()["errors"][0]["message"]) == (403, "Node.id requires READ_ID"), response.text
            assert accounts.received == []
            assert (await Client(app).send("POST", "/graphql", body(query), JSON, "READ_ID")).status_code == 200
            accounts.received.clear()
    finally:
        await app.runtime.aclose()


async def test_filter_mode_removes_an_implementations_field_the_interface_guards(tmp_path: Path, accounts: GraphQLUpstream) -> None:
    accounts.received.clear()
    sdl, fields = INTERFACE_REQUIREMENTS[0][1], ", Node.id: READ_ID"
    app = await accounts_gateway(tmp_path, accounts.url, sdl, fields, mode="filter")
    try:
        query = "{ me { name secret } account { ... on User { id secret } } parties { ... on Org { title } } status }"
        response = await Client(app).send("POST", "/graphql", body(query), JSON, "")
        assert response.status_code == 200, response.text
        assert response.json()["data"] == {"me": {"name": "Ana", "secret": None}, "account": None, "parties": [{}, {"title": "Bank"}], "status": "ok"}
        assert sorted(error["path"] for error in response.json()["errors"]) == [["account", "id"], ["account", "secret"], ["me", "secret"]]
        [received] = accounts.received
        assert json.loads(received.body)["query"] == "{\n  me {\n    name\n  }\n  parties {\n    ... on Org {\n      title\n    }\n  }\n  status\n}"
    finally:
        await app.runtime.aclose()


async def test_a_graphql_routes_own_404_for_a_pending_condition_is_a_graphql_response_too(waiting: Gateway, bank: GraphQLUpstream) -> None:
    refused = await ask_as(waiting, "{ status }", "LIST_OFFERS_optional", path="/offers/graphql")
    answer = refused.json()
    assert (refused.status_code, answer["error"], answer["pending"]) == (404, "not_found", ["LIST_OFFERS"])
    assert answer["errors"] == [{"message": answer["error_description"], "extensions": {"code": "NOT_FOUND"}}]
    assert not bank.received
