"""REST response fields (docs/route-tables.md, "Response fields"): members of a JSON answer removed for
callers that lack their requirement, through the real ASGI app in front of a loopback upstream."""

from __future__ import annotations

import gzip
import json
import socket
import zlib
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.loading import ConfigError, load_config
from gateway.types import Headers
from tests.support import (
    Behaviour,
    Received,
    RecordingUpstream,
    answer,
    mint,
    raw_exchange,
    request_bytes,
    start_gateway,
    write_config,
)

pytestmark = pytest.mark.anyio
PROFILE = {"id": 7, "email": "ana@example.test", "phone": "+370600", "address": {"city": "Vilnius"}, "locale": "lt"}
TABLE = """\
name: wallet
upstream: {upstream}
prefix: /w
scopes:
  email:
  phone:
  address:
  full_name:
  identity:
routes:
  GET /me: {scopes: authenticated, response_fields: {email: email, phone: phone, address: [address, identity]}}
"""


async def ask(tmp_path: Path, scopes: str, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
    status, sent, received, _ = await exchange(tmp_path, scopes, answer(200, body, headers or [(b"content-type", b"application/json")]))
    return status, dict(sent), received


async def exchange(
    tmp_path: Path, scopes: str, behaviour: Behaviour, method: str = "GET", request_headers: Headers = (),
) -> tuple[int, Headers, bytes, list[Received]]:
    """One request through the real app to a loopback upstream: the client's status, headers and
    body, and what the upstream received."""
    upstream = RecordingUpstream(behaviour)
    app = Gateway(load_config(write_config(tmp_path, upstream=upstream.url, table=TABLE)))
    headers = [(b"host", b"gateway.test"), (b"authorization", b"Bearer " + mint(scopes, lifetime=600).encode()), *request_headers]
    scope = {"type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": "/w/me", "raw_path": b"/w/me",
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])
    got: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got.update(status=message["status"], headers=message["headers"])
        else:
            got["body"] += message.get("body", b"")

    try:
        await app(scope, receive, send)
    finally:
        await app.runtime.aclose()
        upstream.close()
    return got["status"], got["headers"], got["body"], upstream.received


def head_only(status: int, headers: list[tuple[bytes, bytes]]) -> Behaviour:
    """An answer without a body, whatever its headers say (to HEAD, a 304, a 204)."""
    def respond(request: Received, connection: socket.socket) -> None:
        connection.sendall(b"\r\n".join([b"HTTP/1.1 %d X" % status, *(name + b": " + value for name, value in headers)]) + b"\r\n\r\n")
    return respond


def assert_refused(status: int, body: bytes) -> None:
    """A 502 of the gateway's own, holding nothing of the upstream's answer."""
    assert status == 502 and json.loads(body)["error"] == "bad_gateway", body
    assert b"ana@" not in body and b"+370" not in body


@pytest.mark.parametrize(("scopes", "members"), [
    ("email", {"id", "email", "locale"}),
    ("phone identity", {"id", "phone", "address", "locale"}),
    ("address", {"id", "address", "locale"}),
    ("", {"id", "locale"}),
])
async def test_members_the_caller_may_not_see_are_removed(tmp_path: Path, scopes: str, members: set[str]) -> None:
    status, headers, body = await ask(tmp_path, scopes, json.dumps(PROFILE).encode())
    assert status == 200 and set(json.loads(body)) == members
    assert headers[b"content-length"] == b"%d" % len(body)


async def test_a_caller_who_may_see_everything_gets_the_answer_byte_for_byte(tmp_path: Path) -> None:
    original = json.dumps(PROFILE, indent=1).encode()
    assert (await ask(tmp_path, "email phone address", original))[2] == original


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_json_answer_is_filtered_and_sent_uncompressed(tmp_path: Path, coding: str) -> None:
    raw = json.dumps(PROFILE).encode()
    compressed = gzip.compress(raw) if coding == "gzip" else zlib.compress(raw)
    status, headers, body = await ask(tmp_path, "email", compressed, [(b"content-type", b"application/json"), (b"content-encoding", coding.encode())])
    assert status == 200 and set(json.loads(body)) == {"id", "email", "locale"}
    assert b"content-encoding" not in headers


async def test_an_answer_over_the_bound_is_a_502_never_a_cut_one(tmp_path: Path) -> None:
    big = json.dumps({"email": "x", "pad": "p" * (1 << 20)}).encode()
    status, _, body = await ask(tmp_path, "phone", big)
    assert status == 502 and json.loads(body)["error"] == "bad_gateway"


def test_response_fields_are_checked_at_load(tmp_path: Path) -> None:
    table = TABLE.replace("address: [address, identity]", "address: adress")
    with pytest.raises(ConfigError, match="response_fields.address: 'adress' is not in this table's scopes catalog"):
        load_config(write_config(tmp_path, upstream="http://up.test", table=table))


# --- fail closed: a caller who may not see a member never gets it, whatever the answer looks like --

SECRET = json.dumps(PROFILE).encode()
JSON = (b"content-type", b"application/json")


@pytest.mark.parametrize("headers", [
    [(b"content-type", b"text/json")],
    [(b"content-type", b"text/plain")],
    [(b"content-type", b"text/html; charset=utf-8")],
    [(b"content-type", b"application/x-ndjson")],
    [(b"content-type", b"application/octet-stream")],
    [(b"content-type", b"application/jsonx")],
    [(b"x-note", b"no Content-Type at all")],
    [JSON, (b"content-type", b"text/plain")],  # two labels: which one would the client believe?
    [(b"content-type", b"text/plain"), JSON],
], ids=lambda headers: repr(headers))
async def test_an_answer_not_labelled_json_is_a_502_for_a_caller_who_may_not_see_everything(tmp_path: Path, headers: list[tuple[bytes, bytes]]) -> None:
    assert_refused(*(await ask(tmp_path, "email", SECRET, headers))[::2])


@pytest.mark.parametrize("headers", [[(b"content-type", b"text/plain")], [(b"x-note", b"no Content-Type")]])
async def test_any_answer_passes_whole_to_a_caller_who_may_see_everything(tmp_path: Path, headers: list[tuple[bytes, bytes]]) -> None:
    status, _, body = await ask(tmp_path, "email phone address", SECRET, headers)
    assert status == 200 and body == SECRET


@pytest.mark.parametrize("body", [
    json.dumps([PROFILE, PROFILE]).encode(),  # a top-level array: its elements are not members
    json.dumps([[PROFILE]]).encode(),
    b'"ana@example.test"',
    b"null",
    b"42",
], ids=["array", "nested array", "string", "null", "number"])
async def test_a_json_answer_that_is_not_an_object_is_a_502(tmp_path: Path, body: bytes) -> None:
    assert_refused(*(await ask(tmp_path, "email", body))[::2])


@pytest.mark.parametrize("body", [
    b'{"email": "ana@example.test", ',  # cut short
    b'{"email": "ana@example.test"} {"phone": "+370600"}',  # two documents
    b'{"phone": "+370600", "n": NaN}',  # not JSON, though Python reads it
    b'{"phone": "+370600", "n": Infinity}',
    b'{"phone": "+370600", "n": 1e400}',  # read as infinity: cannot be written back
    b'\xef\xbb\xbf{"phone": "+370600"}',  # a byte order mark
    '{"phone": "+370600"}'.encode("utf-16"),
    b'{"phone": "+370600\xff"}',  # not UTF-8
    b"[" * 100_000 + b"]" * 100_000,
], ids=["cut", "two documents", "NaN", "Infinity", "1e400", "BOM", "UTF-16", "bad UTF-8", "deep"])
async def test_an_answer_that_does_not_read_as_json_is_a_502(tmp_path: Path, body: bytes) -> None:
    assert_refused(*(await ask(tmp_path, "email", body))[::2])


@pytest.mark.parametrize("body", [
    b'{"id": 7, "phone": "+370600", "phone": "+370601"}',  # twice: both copies go
    b'{"id": 7, "\\u0070hone": "+370600"}',  # escaped: the same member
    b'{"id": 7,\n  "phone" :\t"+370600"\n}',
])
async def test_a_member_is_removed_however_it_is_written(tmp_path: Path, body: bytes) -> None:
    status, headers, received = await ask(tmp_path, "email", body)
    assert status == 200 and json.loads(received) == {"id": 7}
    assert b"+370" not in received and headers[b"content-length"] == b"%d" % len(received)


@pytest.mark.parametrize("codings", [
    [(b"content-encoding", b"br")],
    [(b"content-encoding", b"zstd")],
    [(b"content-encoding", b"compress")],
    [(b"content-encoding", b"gzip, br")],
    [(b"content-encoding", b"gzip, gzip")],
    [(b"content-encoding", b"gzip"), (b"content-encoding", b"gzip")],
])
async def test_an_answer_in_a_coding_the_gateway_cannot_undo_is_a_502(tmp_path: Path, codings: list[tuple[bytes, bytes]]) -> None:
    assert_refused(*(await ask(tmp_path, "email", gzip.compress(SECRET), [JSON, *codings]))[::2])


@pytest.mark.parametrize("body", [
    b"not gzip",
    gzip.compress(SECRET)[:-12],  # cut short
    gzip.compress(json.dumps({"id": 1}).encode()) + gzip.compress(SECRET),  # a second member the client would read
], ids=["garbage", "cut", "two members"])
async def test_a_broken_gzip_answer_is_a_502(tmp_path: Path, body: bytes) -> None:
    assert_refused(*(await ask(tmp_path, "email", body, [JSON, (b"content-encoding", b"gzip")]))[::2])


async def test_a_partial_answer_is_a_502_even_when_the_upstream_sends_one_unasked(tmp_path: Path) -> None:
    part = SECRET[10:40]
    headers = [JSON, (b"content-range", b"bytes 10-39/%d" % len(SECRET))]
    status, _, body, received = await exchange(tmp_path, "email", answer(206, part, headers), request_headers=[(b"range", b"bytes=10-39")])
    assert_refused(status, body)
    assert received[0].header(b"range") == []


async def test_content_range_on_a_200_is_a_502(tmp_path: Path) -> None:
    status, _, body = await ask(tmp_path, "email", SECRET, [JSON, (b"content-range", b"bytes 0-10/99")])
    assert_refused(status, body)


@pytest.mark.parametrize("scopes", ["email", "email phone address"])
async def test_range_and_if_range_never_reach_the_upstream_of_such_a_route(tmp_path: Path, scopes: str) -> None:
    asked = [(b"range", b"bytes=10-39"), (b"if-range", b'"v1"'), (b"Range", b"bytes=0-1")]
    status, headers, body, received = await exchange(tmp_path, scopes, answer(200, SECRET, [JSON]), request_headers=asked)
    assert status == 200 and json.loads(body)["email"] == "ana@example.test"
    assert received[0].header(b"range") == [] and received[0].header(b"if-range") == []
    assert dict(headers)[b"content-length"] == b"%d" % len(body)


async def test_a_filtered_answer_is_asked_for_uncompressed(tmp_path: Path) -> None:
    _, _, _, received = await exchange(tmp_path, "email", answer(200, SECRET, [JSON]), request_headers=[(b"accept-encoding", b"br, gzip")])
    assert received[0].header(b"accept-encoding") == [b"identity"]


async def test_a_caller_who_may_see_everything_keeps_their_accept_encoding(tmp_path: Path) -> None:
    _, _, _, received = await exchange(tmp_path, "email phone address", answer(200, SECRET, [JSON]), request_headers=[(b"accept-encoding", b"br")])
    assert received[0].header(b"accept-encoding") == [b"br"]


async def test_head_tells_no_length_of_the_unfiltered_answer(tmp_path: Path) -> None:
    upstream_headers = [JSON, (b"content-length", b"%d" % len(SECRET)), (b"etag", b'"v1"')]
    status, headers, body, received = await exchange(tmp_path, "email", head_only(200, upstream_headers), method="HEAD")
    assert status == 200 and body == b"" and received[0].method == b"HEAD"
    assert b"content-length" not in dict(headers) and dict(headers)[b"content-type"] == b"application/json"


@pytest.mark.parametrize("status", [204, 304])
async def test_an_answer_without_a_body_passes_without_a_length(tmp_path: Path, status: int) -> None:
    got, headers, body, _ = await exchange(tmp_path, "email", head_only(status, [(b"etag", b'"v1"')]),
                                           request_headers=[(b"if-none-match", b'"v1"')])
    assert got == status and body == b"" and b"content-length" not in dict(headers)


@pytest.mark.parametrize("status", [400, 404, 500])
async def test_an_error_answer_is_filtered_too(tmp_path: Path, status: int) -> None:
    error = json.dumps({"error": "nope", "email": "ana@example.test", "phone": "+370600"}).encode()
    got, headers, body, _ = await exchange(tmp_path, "email", answer(status, error, [JSON]))
    assert got == status and json.loads(body) == {"error": "nope", "email": "ana@example.test"}
    assert dict(headers)[b"content-length"] == b"%d" % len(body)


async def test_an_error_answer_that_is_not_json_is_a_502(tmp_path: Path) -> None:
    page = b"<html>phone: +370600</html>"
    status, _, body, _ = await exchange(tmp_path, "email", answer(500, page, [(b"content-type", b"text/html")]))
    assert_refused(status, body)


async def test_an_empty_answer_passes_empty(tmp_path: Path) -> None:
    status, headers, body = await ask(tmp_path, "email", b"", [JSON])
    assert status == 200 and body == b"" and headers[b"content-length"] == b"0"


@pytest.mark.parametrize("media_type", [b"application/problem+json", b"Application/JSON; charset=utf-8"])
async def test_json_media_types_are_filtered(tmp_path: Path, media_type: bytes) -> None:
    status, _, body = await ask(tmp_path, "email", SECRET, [(b"content-type", media_type)])
    assert status == 200 and set(json.loads(body)) == {"id", "email", "locale"}


async def test_digests_of_the_unfiltered_answer_are_not_passed_on(tmp_path: Path) -> None:
    digests = [JSON, (b"content-md5", b"abc"), (b"digest", b"sha-256=abc"), (b"content-digest", b"sha-256=:abc:")]
    _, headers, _ = await ask(tmp_path, "email", SECRET, digests)
    assert not {b"content-md5", b"digest", b"content-digest"} & headers.keys()


def by_case(request: Received, connection: socket.socket) -> None:
    """The upstream of the served gateway: what it answers depends on the request."""
    case = (request.header(b"x-case") or [b""])[0]
    if request.method == b"HEAD":
        head_only(200, [JSON, (b"content-length", b"%d" % len(SECRET))])(request, connection)
    elif case == b"206":
        answer(206, SECRET[:30], [JSON, (b"content-range", b"bytes 0-29/%d" % len(SECRET))])(request, connection)
    elif case == b"text":
        answer(200, SECRET, [(b"content-type", b"text/plain")])(request, connection)
    else:
        answer(200, SECRET, [JSON])(request, connection)


def raw_head(port: int, request: bytes) -> bytes:
    """The bytes a HEAD request gets back, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        received = b""
        while data := connection.recv(65536):
            received += data
    return received


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_a_served_gateway_never_passes_a_member_on(tmp_path: Path, server: str) -> None:
    upstream = RecordingUpstream(by_case)
    served = start_gateway(write_config(tmp_path, upstream=upstream.url, table=TABLE), server)
    token = ("authorization", f"Bearer {mint('email', lifetime=600)}")
    try:
        ranged = raw_exchange(served.port, request_bytes("GET", "/w/me", [token, ("range", "bytes=0-5"), ("if-range", '"v1"')]))
        assert ranged.status == 200 and json.loads(ranged.body) == {"id": 7, "email": "ana@example.test", "locale": "lt"}
        assert ranged.header(b"content-length") == b"%d" % len(ranged.body)
        assert upstream.received[-1].header(b"range") == [] and upstream.received[-1].header(b"if-range") == []
        for case in ("206", "text"):
            refused = raw_exchange(served.port, request_bytes("GET", "/w/me", [token, ("x-case", case)]))
            assert_refused(refused.status, refused.body)
        head, _, body = raw_head(served.port, request_bytes("HEAD", "/w/me", [token])).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b""
        assert b"content-length: %d" % len(SECRET) not in head.lower()
    finally:
        served.close()
        upstream.close()
