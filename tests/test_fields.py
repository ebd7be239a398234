"""REST response fields (docs/route-tables.md, "Response fields"): members of a JSON answer removed for
callers that lack their requirement, through the real ASGI app in front of a loopback upstream."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.loading import ConfigError, load_config
from tests.support import RecordingUpstream, answer, mint, write_config
from tests.test_runtime import call

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
    upstream = RecordingUpstream(answer(200, body, headers or [(b"content-type", b"application/json")]))
    app = Gateway(load_config(write_config(tmp_path, upstream=upstream.url, table=TABLE)))
    try:
        status, sent, received = await call(app, "GET", "/w/me", mint(scopes, lifetime=600))
        return status, dict(sent), received
    finally:
        await app.runtime.aclose()
        upstream.close()


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


@pytest.mark.parametrize(("body", "headers", "status"), [
    (b"email: ana@example.test", [(b"content-type", b"text/plain")], 200),  # not JSON: unchanged
    (b'["email"]', [(b"content-type", b"application/json")], 200),  # not an object: no members
    (b'{"email": "x", ', [(b"content-type", b"application/json")], 502),  # says JSON, is not: never passed
    (b"\x00\x01", [(b"content-type", b"application/json"), (b"content-encoding", b"br")], 502),  # cannot be undone
    (b"not gzip", [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")], 502),
])
async def test_answers_that_cannot_be_filtered(tmp_path: Path, body: bytes, headers: list[tuple[bytes, bytes]], status: int) -> None:
    got, _, received = await ask(tmp_path, "phone", body, headers)
    assert got == status
    if status == 200:
        assert received == body
    else:
        assert json.loads(received)["error"] == "bad_gateway" and b"ana@" not in received


async def test_an_answer_over_the_bound_is_a_502_never_a_cut_one(tmp_path: Path) -> None:
    big = json.dumps({"email": "x", "pad": "p" * (1 << 20)}).encode()
    status, _, body = await ask(tmp_path, "phone", big)
    assert status == 502 and json.loads(body)["error"] == "bad_gateway"


def test_response_fields_are_checked_at_load(tmp_path: Path) -> None:
    table = TABLE.replace("address: [address, identity]", "address: adress")
    with pytest.raises(ConfigError, match="response_fields.address: 'adress' is not in this table's scopes catalog"):
        load_config(write_config(tmp_path, upstream="http://up.test", table=table))
