"""The access log (docs/operating.md, "Logs"): one line per request, forwarded or refused, with
every field; `--log-format json` for every line of `gateway serve`; the request id taken, made
and passed upstream; never a token, at any level."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.loading import load_config
from gateway.logs import JsonFormatter, TextFormatter
from tests.processes import GATEWAY, serving
from tests.support import RecordingUpstream, mint, raw_exchange, request_bytes, write_config

pytestmark = pytest.mark.anyio
FIELDS = {"request_id", "method", "path", "api", "route", "decision", "reason", "status", "duration_ms", "upstream_ms", "subject", "client"}
WEBHOOKS = "/merchants/{merchantId}/webhooks"


@pytest.fixture
async def gateway(tmp_path: Path, upstream: RecordingUpstream) -> AsyncIterator[httpx.AsyncClient]:
    app = Gateway(load_config(write_config(tmp_path, upstream=upstream.url)), access_log=True)
    await app.runtime.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as client:
        yield client
    await app.runtime.aclose()


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [record.fields for record in caplog.records if record.name == "gateway.access"]  # type: ignore[attr-defined]


async def test_a_client_request_id_is_logged_and_passed_upstream_unchanged(gateway: httpx.AsyncClient, upstream: RecordingUpstream,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.access")
    sent = "req-4f1c:9/Z~!"
    answer = await gateway.get("/api/merchants/M1/webhooks", headers={"Authorization": f"Bearer {mint()}", "X-Request-Id": sent})
    assert answer.status_code == 200
    assert upstream.received[0].header(b"x-request-id") == [sent.encode()]
    assert "x-request-id" not in answer.headers  # the upstream's answer passes unchanged
    [line] = access_lines(caplog)
    assert line["request_id"] == sent


async def test_a_request_without_one_gets_one_made_and_sent_upstream(gateway: httpx.AsyncClient, upstream: RecordingUpstream,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.access")
    for _ in range(2):
        assert (await gateway.get("/api/status")).status_code == 200
    made = [received.header(b"x-request-id") for received in upstream.received]
    assert [len(ids) for ids in made] == [1, 1] and made[0] != made[1]
    assert [line["request_id"] for line in access_lines(caplog)] == [ids[0].decode() for ids in made]


@pytest.mark.parametrize("headers", [
    [("X-Request-Id", "x" * 201)],
    [("X-Request-Id", "has space")],
    [("X-Request-Id", "tab\there")],
    [("X-Request-Id", "caf\u00e9")],
    [("X-Request-Id", "")],
    [("X-Request-Id", "one"), ("X-Request-Id", "two")],
])
async def test_a_request_id_that_is_not_one_short_visible_value_is_replaced(gateway: httpx.AsyncClient, upstream: RecordingUpstream,
                                                                            caplog: pytest.LogCaptureFixture, headers: list[tuple[str, str]]) -> None:
    caplog.set_level(logging.INFO, "gateway.access")
    encoded = [(name.encode(), value.encode("utf-8")) for name, value in headers]
    assert (await gateway.get("/api/status", headers=encoded)).status_code == 200
    [ids] = [received.header(b"x-request-id") for received in upstream.received]
    [line] = access_lines(caplog)
    assert ids == [line["request_id"].encode()]
    assert line["request_id"] not in [value for _, value in headers]


async def test_the_gateway_s_own_answers_carry_the_request_id(gateway: httpx.AsyncClient, upstream: RecordingUpstream,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.access")
    refused = await gateway.get("/api/merchants/M1/webhooks", headers={"X-Request-Id": "abc-123"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "abc-123"
    made = await gateway.get("/api/nowhere")
    assert made.status_code == 404 and made.headers["x-request-id"] == access_lines(caplog)[1]["request_id"]
    assert upstream.received == []


async def test_without_the_access_log_the_request_id_is_left_alone(tmp_path: Path, upstream: RecordingUpstream) -> None:
    app = Gateway(load_config(write_config(tmp_path, upstream=upstream.url)))
    await app.runtime.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as client:
        assert (await client.get("/api/status", headers={"X-Request-Id": "has space"})).status_code == 200
        assert (await client.get("/api/status")).status_code == 200
        assert "x-request-id" not in (await client.get("/api/nowhere")).headers
    await app.runtime.aclose()
    assert [received.header(b"x-request-id") for received in upstream.received] == [[b"has space"], []]


async def test_each_line_says_what_was_decided_and_why(gateway: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.access")
    token = {"Authorization": f"Bearer {mint(client_id='shop-7', sub='ana')}"}
    assert (await gateway.get("/api/merchants/M1/webhooks?page=2&secret=s3", headers=token)).status_code == 200
    assert (await gateway.post("/api/merchants/M1/webhooks", headers=token)).status_code == 403
    assert (await gateway.get("/api/merchants/M1/webhooks")).status_code == 401
    assert (await gateway.get("/api/merchants/M1%2Fx/webhooks")).status_code == 400
    lines = access_lines(caplog)
    assert all(set(line) == FIELDS for line in lines)
    shown = [{name: line[name] for name in ("method", "path", "api", "route", "decision", "reason", "status", "subject", "client")} for line in lines]
    assert shown == [
        {"method": "GET", "path": "/api/merchants/M1/webhooks", "api": "payments", "route": WEBHOOKS, "decision": "forward",
         "reason": "forwarded", "status": 200, "subject": "ana", "client": "shop-7"},
        {"method": "POST", "path": "/api/merchants/M1/webhooks", "api": "payments", "route": WEBHOOKS, "decision": "refuse",
         "reason": "forbidden", "status": 403, "subject": "ana", "client": "shop-7"},
        {"method": "GET", "path": "/api/merchants/M1/webhooks", "api": "payments", "route": WEBHOOKS, "decision": "refuse",
         "reason": "unauthorized", "status": 401, "subject": None, "client": None},
        {"method": "GET", "path": "/api/merchants/M1%2Fx/webhooks", "api": None, "route": None, "decision": "refuse",
         "reason": "invalid_request", "status": 400, "subject": None, "client": None},
    ]
    assert lines[0]["upstream_ms"] >= 0 and lines[0]["duration_ms"] >= lines[0]["upstream_ms"]
    assert [line["upstream_ms"] for line in lines[1:]] == [None, None, None]


def test_json_lines_parse_and_carry_every_field(tmp_path: Path) -> None:
    output: list[str] = []
    with serving(tmp_path, "--access-log", "--log-format", "json", output=output) as (base, upstream):
        token = {"Authorization": f"Bearer {mint()}", "X-Request-Id": "trace-1"}
        assert httpx.get(f"{base}/api/merchants/M1/webhooks", headers=token).status_code == 200
        assert httpx.get(f"{base}/api/merchants/M1/secrets").status_code == 404
        port = int(base.rsplit(":", 1)[1])
        # refused by the request head's checks, before any route is looked for
        assert raw_exchange(port, request_bytes("GET", "/api/status", [("host", "second.test")])).status == 400
    lines = [json.loads(line) for line in output[0].splitlines() if line.strip()]
    assert {"uvicorn.error", "gateway.access"} <= {line["logger"] for line in lines}
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert [(line["request_id"] == "trace-1", line["decision"], line["reason"], line["status"]) for line in access] == [
        (True, "forward", "forwarded", 200), (False, "refuse", "not_found", 404), (False, "refuse", "invalid_request", 400),
    ]
    assert all(FIELDS <= set(line) and line["level"] == "info" for line in access)
    assert upstream.received[0].header(b"x-request-id") == [b"trace-1"]


# tokens that reach every place a token might be written: a good one, one refused in the query,
# a forged one, an expired one, one without the scope, and a token-shaped string that is not one
@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_no_token_is_ever_logged(tmp_path: Path, server: str) -> None:
    good, expired, narrow = mint(), mint(lifetime=-60), mint("psp.other")
    forged = good.rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
    garbage = "eyJub3QiOiJhIHRva2VuIn0.garbage-token-material-0123456789"
    output: list[str] = []
    with serving(tmp_path, "--server", server, "--access-log", "--log-level", "debug", output=output) as (base, _):
        path = f"{base}/api/merchants/M1/webhooks"
        for token in (good, forged, expired, narrow, garbage):
            httpx.get(path, headers={"Authorization": f"Bearer {token}"})
            httpx.post(path, headers={"Authorization": f"Bearer {token}"})
        assert httpx.get(f"{path}?access_token={good}").status_code == 400
        assert httpx.get(f"{path}?access_token={garbage}").status_code == 400
        assert httpx.get(path, headers={"Authorization": f"Bearer {good}", "Cookie": f"access_token={narrow}"}).status_code == 200
    logged = output[0]
    assert logged.count("gateway.access") >= 13 and "refused: 401 invalid_token" in logged, logged
    for token in (good, forged, expired, narrow, garbage):
        for part in {token, *token.split(".")} - {good.split(".")[0]}:  # the header segment is shared and says nothing
            assert part not in logged, f"a token's part {part[:20]}... was logged"


def test_the_text_format_puts_fields_after_the_message() -> None:
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "GET %s %d", ("/a", 200), None)
    record.fields = {"request_id": "r-1", "path": "/a b", "api": None, "status": 200, "quote": 'say "x"'}
    assert TextFormatter().format(record) == 'INFO gateway.access: GET /a 200 request_id=r-1 path="/a b" api=- status=200 quote="say \\"x\\""'


def test_the_json_format_is_one_object_per_line_with_the_exception() -> None:
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        import sys

        record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "failed: %s", ("x",), sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert (line["level"], line["logger"], line["message"]) == ("error", "gateway", "failed: x")
    assert line["time"].endswith("Z") and "ValueError: broken\nacross lines" in line["exception"]


def test_serve_says_which_log_formats_exist() -> None:
    done = subprocess.run([GATEWAY, "serve", "--log-format", "xml"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice: 'xml' (choose from 'text', 'json')" in done.stderr


# --- log injection: a record is one line whatever a client puts into its values ------------------

UNSAFE = ["\n", "\r", "\x1b", "\x85", "\u2028", "\u2029", "\x00", "\x7f", "\x9b", "\t", "\x0b", "\x0c", "\x1c", "\udcff"]
FORGED = "INFO gateway.access: GET /api/forged 200"


def formatted(formatter: logging.Formatter, value: str) -> str:
    """A line whose message, field name and field value all hold `value`."""
    record = logging.LogRecord("gateway.app", logging.DEBUG, __file__, 1, "GET %s refused", (f"/a{value}{FORGED}",), None)
    record.fields = {"path": f"/a{value}{FORGED}", f"na{value}me": 1}
    return formatter.format(record)


@pytest.mark.parametrize("value", UNSAFE, ids=repr)
@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_a_logged_value_never_breaks_its_line(formatter: type[logging.Formatter], value: str) -> None:
    line = formatted(formatter(), value)
    # splitlines() breaks at every line end any reader knows: \n, \r, \v, \f, \x1c-\x1e, NEL, LS, PS
    assert len(line.splitlines()) == 1 and value not in line, repr(line)
    assert all(character.isprintable() for character in line), repr(line)
    if formatter is JsonFormatter:
        parsed = json.loads(line)  # escaped, not changed: the value reads back as it was
        assert parsed["message"] == f"GET /a{value}{FORGED} refused" and parsed["path"] == f"/a{value}{FORGED}"


def test_the_text_format_shows_each_escape() -> None:
    record = logging.LogRecord("gateway", logging.INFO, __file__, 1, "%s", ("a\nb\rc\x1bd\x85e\u2028f\u2029g\x00h",), None)
    assert TextFormatter().format(record) == "INFO gateway: a\\nb\\rc\\x1bd\\x85e\\u2028f\\u2029g\\x00h"


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_an_exception_message_cannot_forge_a_record(formatter: type[logging.Formatter]) -> None:
    try:
        raise ValueError(f"bad\n{FORGED}\u2028{FORGED}\x85")
    except ValueError:
        import sys

        record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter().format(record).split("\n")
    assert all(line.isprintable() for line in lines)
    # the record's own line, then (text) the traceback's, each indented
    assert lines[0].startswith(("ERROR gateway: failed", '{"time"')) and all(line.startswith("    ") for line in lines[1:])


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_refused_request_s_path_cannot_forge_a_log_line(tmp_path: Path, upstream: RecordingUpstream, log_format: str) -> None:
    app = Gateway(load_config(write_config(tmp_path, upstream=upstream.url)), access_log=True)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    gateway_logger = logging.getLogger("gateway")
    level = gateway_logger.level
    gateway_logger.addHandler(handler)
    gateway_logger.setLevel(logging.DEBUG)
    # not also to pytest's capture, which keeps the raw surrogates: a pytest-xdist worker cannot send them
    gateway_logger.propagate = False
    try:
        for value in UNSAFE:
            # as the server decoded it: %0A and friends, or raw bytes granian passes on
            path = f"/api/merchants/M1{value}{FORGED}/webhooks"
            scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
                     "raw_path": path.encode("utf-8", "surrogateescape"), "query_string": b"", "headers": [(b"host", b"gateway.test")],
                     "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
                sent.append(message)

            await app(scope, receive, send)
            assert sent[0]["status"] in (400, 401, 404)
    finally:
        gateway_logger.removeHandler(handler)
        gateway_logger.setLevel(level)
        gateway_logger.propagate = True
        await app.runtime.aclose()
    lines = stream.getvalue().split("\n")[:-1]
    for line in lines:
        assert len(line.splitlines()) == 1 and line.isprintable(), repr(line)
    if log_format == "json":
        loggers = [(parsed["level"], parsed["logger"]) for parsed in map(json.loads, lines)]
    else:
        loggers = [tuple(line.split(":")[0].lower().split(" ")) for line in lines]
    assert loggers == [("debug", "gateway"), ("info", "gateway.access")] * len(UNSAFE), lines  # a line each, no more


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_no_request_forges_a_line_of_a_served_log(tmp_path: Path, server: str, log_format: str) -> None:
    output: list[str] = []
    targets = [b"/api/x%0A" + FORGED.replace(" ", "%20").encode(), b"/api/x%0D%0Ay", b"/api/x%1B[31my", b"/api/x%C2%85y",
               b"/api/x%E2%80%A8y", b"/api/x%E2%80%A9y", b"/api/x%00y", b"/api/x\xe2\x80\xa8y", b"/api/x\xc2\x85y"]
    with serving(tmp_path, "--server", server, "--access-log", "--log-level", "debug", "--log-format", log_format, output=output) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        for target in targets:
            raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n\r\n")
    # read as bytes would be: no line end of any kind but the records' own
    lines = [line for line in output[0].split("\n") if line.strip()]
    assert sum("gateway.access" in line for line in lines) >= len(targets) - 2, output[0]  # a server may refuse raw bytes itself
    for line in lines:
        assert len(line.splitlines()) == 1 and line.isprintable(), repr(line)
        assert not line.startswith(FORGED)
        if log_format == "json":
            json.loads(line)
